//! `synchronous_mode = degradable` (issue 16): the rules of the replicated state, the
//! controller and the election, one table each, and a sweep over the windows a failover
//! can meet.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::cluster::testing::{bootstrapped, rejected, set_sync_mode as set_mode};
use crate::cluster::{apply, Rejection};
use crate::decide::election::{elect, Election, ElectionInput, FinalReport};

/// n1 primary of generation 1 with n2 and n3 as its synchronous standbys (`ANY 1`), in
/// degradable mode.
fn degradable() -> ClusterState {
    let mut s = bootstrapped("n1");
    set_mode(&mut s, "degradable");
    s
}

fn degrade(streaming: &[&str]) -> Command {
    Command::Degrade {
        generation: Generation(1),
        streaming: streaming.iter().map(|n| n.to_string()).collect(),
        at_unix_ms: 1_000,
        lsn: None,
    }
}

/// `Degrade` with the primary's position once it runs asynchronously.
fn runs_async_from(lsn: u64) -> Command {
    Command::Degrade {
        generation: Generation(1),
        streaming: vec![],
        at_unix_ms: 2_000,
        lsn: Some(lsn),
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn confirm_current(s: &mut ClusterState) {
    let config = s.sync_config();
    apply(
        s,
        &Command::ConfirmSync {
            generation: Generation(1),
            config,
        },
    )
    .unwrap();
}

#[test]
fn degrade_is_refused_outside_degradable_mode_and_under_another_generation() {
    let mut s = bootstrapped("n1");
    let e = rejected(&mut s, degrade(&[]));
    assert!(
        matches!(&e, Rejection::BadConfig(m) if m.contains("not degradable")),
        "{e}"
    );
    set_mode(&mut s, "degradable");
    let stale = Command::Degrade {
        generation: Generation(0),
        streaming: vec![],
        at_unix_ms: 0,
        lsn: None,
    };
    assert!(matches!(rejected(&mut s, stale), Rejection::StaleGeneration { .. }));
    assert!(matches!(
        rejected(&mut s, degrade(&["nx"])),
        Rejection::UnknownMember(_)
    ));
    assert!(matches!(
        rejected(
            &mut s,
            Command::Undegrade {
                generation: Generation(1)
            }
        ),
        Rejection::BadConfig(_)
    ));
}

#[test]
fn a_degraded_primary_runs_asynchronously_and_keeps_the_quorum_it_left_unconfirmed() {
    let mut s = degradable();
    let quorum = s.sync_config();
    assert_eq!(quorum.k, 1);
    let a = apply(&mut s, &degrade(&["n2"])).unwrap();
    assert!(a.message.contains("may be on n1 alone"), "{}", a.message);
    let d = s.degraded.clone().unwrap();
    assert_eq!(
        (d.generation, d.since_unix_ms, d.streaming, d.restoring),
        (Generation(1), 1_000, set(&["n2"]), false)
    );
    assert_eq!(
        s.sync_config(),
        SyncConfig {
            standbys: set(&["n2", "n3"]),
            k: 0
        }
    );
    assert_eq!(s.sync_unconfirmed, [quorum], "it may still run ANY 1 until it confirms");
    assert!(
        !crate::cluster::candidate_acknowledged_nothing(&s),
        "a degraded candidate may accept writes alone"
    );
    // Confirming the asynchronous configuration leaves the window open.
    confirm_current(&mut s);
    assert!(s.degraded.is_some() && s.sync_unconfirmed.is_empty());
    // The set of those that streamed throughout only shrinks.
    apply(&mut s, &degrade(&["n2", "n3"])).unwrap();
    assert_eq!(
        s.degraded.as_ref().unwrap().streaming,
        set(&["n2"]),
        "n3 missed writes: it never comes back"
    );
    apply(&mut s, &degrade(&["n3"])).unwrap();
    assert!(s.degraded.as_ref().unwrap().streaming.is_empty());
    assert_eq!(
        s.degraded.as_ref().unwrap().since_unix_ms,
        1_000,
        "the window began once"
    );
}

#[test]
fn the_window_ends_only_when_the_primary_confirms_its_quorum() {
    let mut s = degradable();
    apply(&mut s, &degrade(&[])).unwrap();
    apply(&mut s, &runs_async_from(0x800)).unwrap();
    confirm_current(&mut s);
    let async_config = s.sync_config();
    apply(
        &mut s,
        &Command::Undegrade {
            generation: Generation(1),
        },
    )
    .unwrap();
    let d = s.degraded.as_ref().unwrap();
    assert!(d.restoring);
    assert_eq!(
        d.quorum_lsn, None,
        "the quorum may acknowledge writes past 0/800 from now on, which the window's members may lack"
    );
    assert_eq!(s.sync_config().k, 1, "told to run ANY 1 again");
    assert_eq!(
        s.sync_unconfirmed,
        [async_config],
        "the writes of the window are still on n1 alone"
    );
    // Undegrade again is harmless; the asynchronous configuration cannot be confirmed now.
    apply(
        &mut s,
        &Command::Undegrade {
            generation: Generation(1),
        },
    )
    .unwrap();
    let old = Command::ConfirmSync {
        generation: Generation(1),
        config: s.sync_unconfirmed[0].clone(),
    };
    assert!(matches!(rejected(&mut s, old), Rejection::BadConfig(_)));
    confirm_current(&mut s);
    assert_eq!(s.degraded, None);
    assert!(s.sync_unconfirmed.is_empty());
}

#[test]
fn the_window_degrades_again_while_returning_and_ends_with_a_new_primary_or_mode() {
    let mut s = degradable();
    apply(&mut s, &degrade(&["n2"])).unwrap();
    apply(
        &mut s,
        &Command::Undegrade {
            generation: Generation(1),
        },
    )
    .unwrap();
    apply(&mut s, &degrade(&[])).unwrap();
    let d = s.degraded.clone().unwrap();
    assert!(!d.restoring && d.streaming.is_empty() && s.sync_config().k == 0);

    // Back to quorum mode: the primary returns as after Undegrade.
    let mut q = s.clone();
    set_mode(&mut q, "quorum");
    assert!(q.degraded.as_ref().unwrap().restoring);
    assert_eq!(q.sync_config().k, 1);
    // Asynchronous mode has no window: a failover is bounded by maximum_lag_on_failover.
    let mut off = s.clone();
    set_mode(&mut off, "off");
    assert_eq!(off.degraded, None);
    // A removed member leaves the window's set.
    let mut r = degradable();
    apply(&mut r, &degrade(&["n2", "n3"])).unwrap();
    apply(&mut r, &Command::RemoveMember { name: "n3".into() }).unwrap();
    assert_eq!(r.degraded.as_ref().unwrap().streaming, set(&["n2"]));

    // A failover keeps the window for its election; the new primary ends it.
    let mut f = degradable();
    apply(&mut f, &degrade(&["n2"])).unwrap();
    for c in [
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
    ] {
        apply(&mut f, &c).unwrap();
        assert!(f.degraded.is_some(), "{c}");
    }
    // The candidate runs its quorum from its first commit, so, if it dies before recording
    // its timeline, it acknowledged nothing and may be replaced.
    assert_eq!(f.sync_quorum(), 1);
    assert!(crate::cluster::candidate_acknowledged_nothing(&f));
    apply(
        &mut f,
        &Command::RecordTimeline {
            generation: Generation(2),
            node: "n2".into(),
            timeline: Timeline(2),
            switch_lsn: None,
            parent_timeline: None,
        },
    )
    .unwrap();
    assert_eq!(f.degraded, None);
    assert_eq!(f.sync_quorum(), 1, "the new primary runs its quorum");
}

/// A configuration of the window (`ANY 0` of a set) acknowledged writes that may be on
/// the primary alone: returning from it is never carried over by construction, unlike
/// asynchronous mode, which promised nothing.
#[test]
fn returning_from_the_window_waits_for_the_standbys_to_flush() {
    use crate::decide::report::carried_by_construction;
    let quorum = SyncConfig {
        standbys: set(&["n2", "n3"]),
        k: 1,
    };
    let window = SyncConfig {
        standbys: set(&["n2", "n3"]),
        k: 0,
    };
    assert!(!carried_by_construction(&quorum, &window));
    assert!(carried_by_construction(&quorum, &SyncConfig::default()));
    assert!(
        carried_by_construction(&window, &quorum),
        "into the window: nothing to carry"
    );
}

fn standby(streaming: bool) -> Report {
    Report {
        generation: Generation(1),
        pg: PgRole::Standby,
        streaming,
        timeline: Some(Timeline(1)),
        lsn: Some(100),
        standby_flush: BTreeMap::new(),
        final_position: None,
        reason: String::new(),
        sync_applied: None,
        pending_restart: false,
    }
}

fn reports(n2: bool, n3: bool) -> BTreeMap<String, Report> {
    BTreeMap::from([("n2".to_string(), standby(n2)), ("n3".to_string(), standby(n3))])
}

fn decide_at(s: &ClusterState, r: &BTreeMap<String, Report>, below_quorum_ms: u64) -> ControllerDecision {
    decide_pending(s, r, below_quorum_ms, 0)
}

fn decide_pending(
    s: &ClusterState,
    r: &BTreeMap<String, Report>,
    below_quorum_ms: u64,
    pending_ms: u64,
) -> ControllerDecision {
    let voters: BTreeSet<String> = set(&["n1", "n2", "n3"]);
    decide(&ControllerInput {
        me: "n2",
        state: s,
        reports: r,
        lease_expired_ms: None,
        voters: &voters,
        pending_ms,
        now_unix_ms: 5_000,
        below_quorum_ms,
    })
}

fn proposed(d: &ControllerDecision) -> Option<&Command> {
    match &d.action {
        Some(ControllerAction::Propose(c)) => Some(c),
        _ => None,
    }
}

#[test]
fn the_controller_degrades_after_a_lease_without_a_quorum_and_never_in_quorum_mode() {
    let s = degradable();
    let down = reports(false, false);
    assert!(below_quorum(&s, &down));
    assert!(
        !below_quorum(&s, &reports(true, false)),
        "ANY 1: one streaming is a quorum"
    );
    let d = decide_at(&s, &down, s.ha.lease_ms - 1);
    assert!(!matches!(proposed(&d), Some(Command::Degrade { .. })), "{d:?}");
    let d = decide_at(&s, &down, s.ha.lease_ms);
    assert_eq!(
        proposed(&d),
        Some(&Command::Degrade {
            generation: Generation(1),
            streaming: vec![],
            at_unix_ms: 5_000,
            lsn: None,
        }),
        "{d:?}"
    );
    assert!(d.reason.contains("0 of the 1"), "{}", d.reason);
    let quorum = bootstrapped("n1");
    assert!(!below_quorum(&quorum, &down));
    let d = decide_at(&quorum, &down, 60_000);
    assert!(!matches!(proposed(&d), Some(Command::Degrade { .. })), "{d:?}");
}

#[test]
fn the_controller_shrinks_the_window_and_returns_once_the_window_is_confirmed() {
    let mut s = degradable();
    apply(&mut s, &degrade(&["n2"])).unwrap();
    // n2 stops: it may no longer be promoted in this window.
    let d = decide_at(&s, &reports(false, false), 10_000);
    assert!(
        matches!(proposed(&d), Some(Command::Degrade { streaming, lsn: None, .. }) if streaming.is_empty()),
        "{d:?}"
    );
    apply(&mut s, &degrade(&[])).unwrap();
    // The primary shows it runs asynchronously at 0/800: recorded, before it is confirmed.
    let mut back = reports(false, true);
    back.insert("n1".into(), primary_at(0x800, &[("n3", 0x700)], Some(s.sync_config())));
    let d = decide_at(&s, &back, 0);
    assert!(
        matches!(proposed(&d), Some(Command::Degrade { lsn: Some(0x800), .. })),
        "{d:?}"
    );
    // n3 streams again, caught up, but the asynchronous configuration is not confirmed yet:
    // returning now could be confirmed on a report from before the window (A -> B -> A).
    apply(&mut s, &runs_async_from(0x800)).unwrap();
    assert_eq!(s.degraded.as_ref().unwrap().quorum_lsn, Some(0x800));
    let d = decide_at(&s, &back, 0);
    assert!(matches!(proposed(&d), Some(Command::ConfirmSync { .. })), "{d:?}");
    confirm_current(&mut s);
    // Streaming but far behind: the quorum's first commit would wait for all of it.
    back.insert(
        "n1".into(),
        primary_at(0x9000_0000, &[("n3", 0x700)], Some(s.sync_config())),
    );
    let d = decide_at(&s, &back, 0);
    assert_eq!(d.action, None, "{d:?}");
    back.insert(
        "n1".into(),
        primary_at(0x9000_0000, &[("n3", 0x9000_0000 - 100)], Some(s.sync_config())),
    );
    let d = decide_at(&s, &back, 0);
    assert_eq!(
        proposed(&d),
        Some(&Command::Undegrade {
            generation: Generation(1)
        }),
        "{d:?}"
    );
    // Returning, and the quorum is lost again for a lease: degrade again, and the position is
    // recorded anew (the quorum acknowledged writes meanwhile).
    apply(
        &mut s,
        &Command::Undegrade {
            generation: Generation(1),
        },
    )
    .unwrap();
    let d = decide_at(&s, &back, 0);
    assert!(!matches!(proposed(&d), Some(Command::Degrade { .. })), "{d:?}");
    let d = decide_at(&s, &reports(false, false), s.ha.lease_ms);
    assert!(
        matches!(proposed(&d), Some(Command::Degrade { lsn: None, .. })),
        "{d:?}"
    );
    apply(&mut s, &degrade(&[])).unwrap();
    let w = s.degraded.as_ref().unwrap();
    assert!(!w.restoring && w.quorum_lsn.is_none(), "{w:?}");
    apply(&mut s, &runs_async_from(0x9000_1000)).unwrap();
    apply(&mut s, &runs_async_from(0x9999_0000)).unwrap();
    assert_eq!(
        s.degraded.as_ref().unwrap().quorum_lsn,
        Some(0x9000_1000),
        "recorded once"
    );
}

/// The primary's report: its write position, its standbys' flush, the configuration it runs.
fn primary_at(lsn: u64, flush: &[(&str, u64)], applied: Option<SyncConfig>) -> Report {
    Report {
        pg: PgRole::Primary,
        lsn: Some(lsn),
        standby_flush: flush.iter().map(|(n, l)| (n.to_string(), *l)).collect(),
        sync_applied: applied,
        ..standby(false)
    }
}

fn fin(lsn: u64) -> Option<FinalReport> {
    Some(FinalReport {
        flush_lsn: lsn,
        timeline: Timeline(1),
        tags: Tags::default(),
    })
}

fn window(streaming: &[&str]) -> crate::cluster::Degraded {
    crate::cluster::Degraded {
        generation: Generation(1),
        since_unix_ms: 1_000,
        streaming: set(streaming),
        restoring: false,
        quorum_lsn: Some(150),
    }
}

fn election<'a>(
    standbys: &[(&'a str, Option<FinalReport>)],
    d: &'a crate::cluster::Degraded,
    requested: Option<&'a str>,
    forced: bool,
) -> Election {
    elect(&ElectionInput {
        standbys: standbys.iter().cloned().collect(),
        sync_mode: SyncMode::Degradable,
        quorums: vec![SyncConfig {
            standbys: standbys.iter().map(|(n, _)| n.to_string()).collect(),
            k: 0,
        }],
        last_primary_lsn: None,
        maximum_lag_bytes: 0,
        old_primary: Some("n1"),
        fork: None,
        clean_stop: None,
        requested,
        forced,
        degraded: Some(d),
    })
}

#[test]
fn an_election_in_the_window_promotes_only_who_streamed_throughout_and_states_the_loss() {
    let none = window(&[]);
    let e = election(&[("n2", fin(500)), ("n3", fin(400))], &none, None, false);
    assert!(
        matches!(&e, Election::Refuse { reason } if reason.contains("no standby was streaming") && reason.contains("--force")),
        "{e:?}"
    );
    assert!(
        matches!(&e, Election::Refuse { reason } if reason.contains("1970-01-01T00:00:01Z")),
        "{e:?}"
    );
    // n3 is ahead but stopped in the window: n2 is promoted, and the reason says what is lost.
    let n2 = window(&["n2"]);
    let e = election(&[("n2", fin(400)), ("n3", fin(500))], &n2, None, false);
    assert!(
        matches!(&e, Election::Promote { node, reason } if node == "n2" && reason.contains("lost")),
        "{e:?}"
    );
    let behind = election(&[("n2", fin(100)), ("n3", fin(500))], &n2, None, false);
    assert!(
        matches!(&behind, Election::Refuse { reason } if reason.contains("behind 0/96")),
        "n2 lacks what the quorum acknowledged before the window: {behind:?}"
    );
    let unknown = crate::cluster::Degraded {
        quorum_lsn: None,
        ..n2.clone()
    };
    let e = election(&[("n2", fin(400)), ("n3", fin(500))], &unknown, None, false);
    assert!(
        matches!(&e, Election::Refuse { reason } if reason.contains("died before reporting")),
        "{e:?}"
    );
    let e = election(&[("n2", None), ("n3", fin(500))], &n2, None, false);
    assert!(
        matches!(&e, Election::Wait { reason } if reason.contains("[n2]")),
        "{e:?}"
    );
    let e = election(&[("n2", fin(400)), ("n3", fin(500))], &n2, Some("n3"), false);
    assert!(
        matches!(&e, Election::Refuse { reason } if reason.contains("--force")),
        "{e:?}"
    );
    let e = election(&[("n2", fin(400)), ("n3", fin(500))], &none, Some("n3"), true);
    assert!(
        matches!(&e, Election::Promote { node, reason } if node == "n3" && reason.contains("may be lost")),
        "{e:?}"
    );
}

/// Every window over three standbys, every set of final reports (none, behind, ahead) and
/// every requested target: a promotion without `--force` is always of a member that
/// streamed throughout and reported, the most advanced of those, and says what is lost.
#[test]
fn sweep_an_election_in_the_window_never_promotes_one_that_missed_it() {
    let names = ["n2", "n3", "n4"];
    let positions = [None, fin(100), fin(200)];
    for mask in 0u32..8 {
        let streamed: Vec<&str> = (0..3).filter(|b| mask & (1 << b) != 0).map(|b| names[b]).collect();
        let d = window(&streamed);
        for a in &positions {
            for b in &positions {
                for c in &positions {
                    let standbys = [("n2", a.clone()), ("n3", b.clone()), ("n4", c.clone())];
                    for requested in [None, Some("n2"), Some("n3"), Some("n4")] {
                        let e = election(&standbys, &d, requested, false);
                        let Election::Promote { node, reason } = &e else {
                            continue;
                        };
                        assert!(streamed.contains(&node.as_str()), "{streamed:?} {standbys:?}: {e:?}");
                        assert!(reason.contains("lost"), "{reason}");
                        let best = standbys
                            .iter()
                            .filter(|(n, _)| streamed.contains(n))
                            .filter_map(|(_, r)| r.as_ref().map(|r| r.flush_lsn))
                            .max();
                        let mine = standbys
                            .iter()
                            .find(|(n, _)| n == node)
                            .unwrap()
                            .1
                            .as_ref()
                            .unwrap()
                            .flush_lsn;
                        assert!(mine >= 150, "behind where the quorum's writes end: {standbys:?} {e:?}");
                        assert!(
                            requested.is_some() || Some(mine) == best,
                            "{streamed:?} {standbys:?}: {e:?}"
                        );
                        assert!(
                            standbys
                                .iter()
                                .filter(|(n, _)| streamed.contains(n))
                                .all(|(_, r)| r.is_some()),
                            "promoted before every member of the window reported: {standbys:?} {e:?}"
                        );
                    }
                }
            }
        }
    }
}

/// The fenced primary of a window holds every write it acknowledged alone: when no standby
/// may be promoted and it is back, stopped, it is promoted again; a forced failover or a
/// requested target is not overridden.
#[test]
fn the_old_primary_of_a_window_is_promoted_again_once_it_is_back() {
    let mut s = degradable();
    apply(&mut s, &degrade(&[])).unwrap();
    apply(
        &mut s,
        &Command::BeginFailover {
            generation: Generation(1),
            to: None,
            forced: false,
            reason: "lease".into(),
        },
    )
    .unwrap();
    let fin = |lsn| Report {
        generation: Generation(2),
        streaming: false,
        final_position: Some((lsn, Timeline(1))),
        ..standby(false)
    };
    let mut r = BTreeMap::from([("n2".to_string(), fin(400)), ("n3".to_string(), fin(500))]);
    let d = decide_at(&s, &r, 0);
    assert_eq!(d.action, None, "{d:?}");
    assert!(d.reason.contains("no standby was streaming throughout"), "{}", d.reason);
    r.insert(
        "n1".into(),
        Report {
            generation: Generation(2),
            pg: PgRole::Stopped,
            streaming: false,
            ..standby(false)
        },
    );
    let d = decide_at(&s, &r, 0);
    assert_eq!(
        proposed(&d),
        Some(&Command::Promote {
            generation: Generation(2),
            node: "n1".into()
        }),
        "{d:?}"
    );
    // A member that streamed throughout but has not reported yet gets a lease first.
    let mut waiting = s.clone();
    waiting.degraded.as_mut().unwrap().streaming = set(&["n2"]);
    let mut without_n2 = r.clone();
    without_n2.remove("n2");
    let d = decide_pending(&waiting, &without_n2, 0, waiting.ha.lease_ms);
    assert_eq!(d.action, None, "{d:?}");
    let d = decide_pending(&waiting, &without_n2, 0, waiting.ha.lease_ms + 1);
    assert!(
        matches!(proposed(&d), Some(Command::Promote { node, .. }) if node == "n1"),
        "{d:?}"
    );
    // Not while it still looks like a primary (fencing is under way), nor when tagged
    // nofailover.
    r.get_mut("n1").unwrap().pg = PgRole::Primary;
    assert_eq!(decide_at(&s, &r, 0).action, None);
    r.get_mut("n1").unwrap().pg = PgRole::Stopped;
    let mut tagged = s.clone();
    tagged.members.get_mut("n1").unwrap().tags.nofailover = true;
    assert_eq!(decide_at(&tagged, &r, 0).action, None);
}
