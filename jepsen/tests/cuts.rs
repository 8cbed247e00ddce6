//! The partition suite's cuts, on two real namespace hosts: a drop cut makes a connect
//! time out, a reset cut refuses it at once (both ways: the reset of the input hook
//! and the one the output hook sends back to a local connect), a heal lets it through
//! again, and `verify_cut` tells the two apart, so a scenario whose cut did not take
//! fails instead of passing on a fault that never happened; one-way cuts and cuts of some
//! ports only hold as they say. Needs root, as the suite does.

use std::io::ErrorKind;
use std::time::Duration;

use raftpg_jepsen::hosts::{self, Cut, Link};

struct Sweep;

impl Drop for Sweep {
    fn drop(&mut self) {
        let _ = hosts::sweep();
    }
}

/// The error kind of a connect from `from` to `to`, or None when it connected.
fn connect(from: u16, to: u16) -> Option<ErrorKind> {
    hosts::in_netns(from, move || hosts::connect_across(to, Duration::from_secs(2)))
        .unwrap()
        .err()
        .map(|e| e.kind())
}

#[test]
fn reset_cuts_refuse_at_once_drop_cuts_time_out_and_both_are_verified() {
    hosts::require_root().expect("the cut test builds network namespaces: run it as root (CI does)");
    hosts::sweep().unwrap();
    let _sweep = Sweep;
    hosts::setup(2).unwrap();
    hosts::check_traffic(2).unwrap();
    let pairs = [(1, 2)];

    hosts::partition(2, &pairs, Cut::Reset).unwrap();
    hosts::verify_cut(2, &pairs, Cut::Reset).unwrap();
    // Without listeners a healed link refuses too: so the test also asks the verifier,
    // which listens, and a drop must never look like a refusal.
    assert_eq!(
        connect(1, 2),
        Some(ErrorKind::ConnectionRefused),
        "n1 -> n2 across a reset cut"
    );
    assert_eq!(
        connect(2, 1),
        Some(ErrorKind::ConnectionRefused),
        "n2 -> n1 across a reset cut"
    );
    let wrong = hosts::verify_cut(2, &pairs, Cut::Drop).expect_err("a reset cut is not a drop");
    assert!(wrong.to_string().contains("does not hold"), "{wrong:#}");

    hosts::partition(2, &pairs, Cut::Drop).unwrap();
    hosts::verify_cut(2, &pairs, Cut::Drop).unwrap();
    assert_eq!(connect(1, 2), Some(ErrorKind::TimedOut), "n1 -> n2 across a drop cut");
    let wrong = hosts::verify_cut(2, &pairs, Cut::Reset).expect_err("a drop cut is not a reset");
    assert!(wrong.to_string().contains("does not hold"), "{wrong:#}");

    // One way only: the handshake needs both directions, so both connects time out.
    let one_way = [Link {
        from: 1,
        to: 2,
        both_ways: false,
        ports: vec![],
        loss_percent: None,
    }];
    hosts::cut_links(2, &one_way).unwrap();
    hosts::verify_links(2, &one_way).unwrap();
    assert_eq!(
        connect(2, 1),
        Some(ErrorKind::TimedOut),
        "n2 -> n1 across a one-way cut"
    );
    // Some ports only: the check port still connects, and the verifier says so.
    let raft_only = [Link {
        from: 1,
        to: 2,
        both_ways: true,
        ports: vec![7000, 7100],
        loss_percent: None,
    }];
    hosts::cut_links(2, &raft_only).unwrap();
    hosts::verify_links(2, &raft_only).unwrap();
    let wrong = hosts::verify_cut(2, &pairs, Cut::Drop).expect_err("a port-only cut leaves the check port open");
    assert!(wrong.to_string().contains("does not hold"), "{wrong:#}");

    hosts::heal(2).unwrap();
    hosts::verify_cut(2, &[], Cut::Drop).unwrap();
    let stale = hosts::verify_cut(2, &pairs, Cut::Drop).expect_err("a healed link is not cut");
    assert!(stale.to_string().contains("does not hold"), "{stale:#}");
}
