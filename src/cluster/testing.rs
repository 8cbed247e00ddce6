//! Test fixtures shared by the pure tests of `cluster/` and `decide/`.

use super::{apply, ClusterState, Command, Member, Rejection, Tags};
use crate::types::Generation;

/// Applies `cmd`, which must be refused, and asserts that the refusal left the state
/// exactly as it was.
pub fn rejected(s: &mut ClusterState, cmd: Command) -> Rejection {
    let before = s.clone();
    let err = apply(s, &cmd).unwrap_err();
    assert_eq!(*s, before, "a rejected command changed the state: {cmd}");
    err
}

/// Member `name` with Raft id `id` and the demo's loopback addresses.
pub fn member(name: &str, id: u64) -> Member {
    Member {
        name: name.into(),
        id,
        raft_addr: format!("127.0.0.1:{}", 15500 + id),
        grpc_addr: format!("127.0.0.1:{}", 15600 + id),
        pg_addr: format!("127.0.0.1:{}", 15400 + id),
        http_addr: format!("127.0.0.1:{}", 15700 + id),
        tags: Tags::default(),
    }
}

/// A state initialised with members n1, n2, n3, then `cmds` applied (each must be accepted).
/// Members n1, n2, n3, formed to adopt `adopt`'s existing database, then `cmds`.
pub fn adopting(adopt: &str, cmds: &[Command]) -> ClusterState {
    let mut s = ClusterState::default();
    let init = Command::InitAdopting {
        members: vec![member("n1", 1), member("n2", 2), member("n3", 3)],
        adopt: adopt.into(),
    };
    apply(&mut s, &init).unwrap();
    for c in cmds {
        apply(&mut s, c).unwrap();
    }
    s
}

pub fn three_members(cmds: &[Command]) -> ClusterState {
    let mut s = ClusterState::default();
    let init = Command::Init {
        members: vec![member("n1", 1), member("n2", 2), member("n3", 3)],
    };
    apply(&mut s, &init).unwrap();
    for c in cmds {
        apply(&mut s, c).unwrap();
    }
    s
}

/// `ctl config set synchronous_mode=<mode>`, which must be accepted.
pub fn set_sync_mode(s: &mut ClusterState, mode: &str) {
    let set = Command::SetConfig {
        key: "synchronous_mode".into(),
        value: Some(mode.into()),
    };
    apply(s, &set).unwrap();
}

/// Members n1, n2, n3 with `primary` bootstrapped as the first primary (generation 1).
pub fn bootstrapped(primary: &str) -> ClusterState {
    three_members(&[
        Command::ChooseBootstrap { node: primary.into() },
        Command::Bootstrap {
            node: primary.into(),
            system_identifier: 1,
        },
    ])
}

/// n1 primary with `synchronous_mode = mode`, then a failover whose candidate n2 was told
/// to promote (generation 2) and has not recorded its timeline.
pub fn promoting_n2(mode: &str) -> ClusterState {
    let mut s = bootstrapped("n1");
    set_sync_mode(&mut s, mode);
    let cmds = [
        Command::BeginFailover {
            generation: Generation(1),
            to: None,
            forced: false,
            reason: "lease".into(),
        },
        Command::Promote {
            generation: Generation(2),
            node: "n2".into(),
        },
    ];
    for c in &cmds {
        apply(&mut s, c).unwrap();
    }
    s
}
