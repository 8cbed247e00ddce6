//! The controller's decisions: table tests, then a sweep over report sets.

use super::*;
use crate::cluster::testing::{adopting, bootstrapped, promoting_n2, three_members};
use crate::cluster::{apply, PendingKind, SyncMode};

fn booted() -> ClusterState {
    bootstrapped("n1")
}

fn failing_over() -> ClusterState {
    let mut s = booted();
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
    s
}

fn report(generation: u64, pg: PgRole, final_position: Option<(u64, u32)>) -> Report {
    Report {
        generation: Generation(generation),
        pg,
        streaming: pg == PgRole::Standby && final_position.is_none(),
        timeline: Some(Timeline(1)),
        lsn: Some(100),
        standby_flush: BTreeMap::new(),
        final_position: final_position.map(|(at, tl)| (at, Timeline(tl))),
        reason: String::new(),
        sync_applied: None,
        pending_restart: false,
    }
}

fn voters() -> BTreeSet<String> {
    ["n1", "n2", "n3"].map(String::from).into()
}

fn decide_with(
    me: &str,
    s: &ClusterState,
    reports: &BTreeMap<String, Report>,
    expired: Option<u64>,
) -> ControllerDecision {
    decide(&ControllerInput {
        me,
        state: s,
        reports,
        lease_expired_ms: expired,
        voters: &voters(),
        pending_ms: 0,
        now_unix_ms: 0,
        below_quorum_ms: 0,
    })
}

fn switching_over() -> ClusterState {
    let mut s = booted();
    apply(
        &mut s,
        &Command::BeginSwitchover {
            generation: Generation(1),
            to: "n2".into(),
            reason: "planned".into(),
        },
    )
    .unwrap();
    s
}

fn standby_at(generation: u64, lsn: u64) -> Report {
    Report {
        lsn: Some(lsn),
        standby_flush: BTreeMap::new(),
        ..report(generation, PgRole::Standby, None)
    }
}

#[test]
fn switchover_promotes_the_target_once_it_has_the_shutdown_checkpoint() {
    let mut s = switching_over();
    let mut reports = BTreeMap::from([("n2".to_string(), standby_at(2, 500))]);
    let d = decide_with("n3", &s, &reports, None);
    assert_eq!(d.action, None, "the old primary has not stopped: {}", d.reason);
    apply(
        &mut s,
        &Command::SwitchoverStopped {
            generation: Generation(2),
            node: "n1".into(),
            lsn: 500,
        },
    )
    .unwrap();
    let d = decide_with("n3", &s, &reports, None);
    assert_eq!(
        d.action, None,
        "n2 has not received past the checkpoint record: {}",
        d.reason
    );
    reports.insert("n2".into(), standby_at(2, 600));
    assert_eq!(
        decide_with("n3", &s, &reports, None).action,
        Some(ControllerAction::Propose(Command::Promote {
            generation: Generation(2),
            node: "n2".into()
        }))
    );
}

/// `switching_over()` with n1 stopped cleanly at 500.
fn drained() -> ClusterState {
    let mut s = switching_over();
    apply(
        &mut s,
        &Command::SwitchoverStopped {
            generation: Generation(2),
            node: "n1".into(),
            lsn: 500,
        },
    )
    .unwrap();
    s
}

fn promote(node: &str) -> Option<ControllerAction> {
    Some(ControllerAction::Propose(Command::Promote {
        generation: Generation(2),
        node: node.into(),
    }))
}

#[test]
fn a_switchover_whose_target_stopped_promotes_another_standby_that_holds_everything() {
    let s = drained();
    let none = BTreeMap::new();
    let all = voters();
    let at = |pending_ms| ControllerInput {
        me: "n3",
        state: &s,
        reports: &none,
        lease_expired_ms: None,
        voters: &all,
        pending_ms,
        now_unix_ms: 0,
        below_quorum_ms: 0,
    };
    // n2 (the target) still looks like a standby, behind; n3 has received past 500.
    let reports = BTreeMap::from([
        ("n2".to_string(), standby_at(2, 400)),
        ("n3".to_string(), standby_at(2, 600)),
    ]);
    let d = decide(&ControllerInput {
        reports: &reports,
        ..at(0)
    });
    assert_eq!(d.action, None, "the target gets a lease to catch up: {}", d.reason);
    let d = decide(&ControllerInput {
        reports: &reports,
        ..at(s.ha.lease_ms + 1)
    });
    assert_eq!(d.action, promote("n3"), "{}", d.reason);
    assert!(d.reason.contains("instead"), "{}", d.reason);
    // A target that has not reported under the new generation yet is not down at once
    // (another standby reporting first took a switchover from a live target in CI), but
    // is after half a lease.
    let silent = BTreeMap::from([("n3".to_string(), standby_at(2, 600))]);
    let d = decide(&ControllerInput {
        reports: &silent,
        ..at(0)
    });
    assert_eq!(d.action, None, "{}", d.reason);
    let d = decide(&ControllerInput {
        reports: &silent,
        ..at(s.ha.lease_ms / 2 + 1)
    });
    assert_eq!(d.action, promote("n3"), "{}", d.reason);
    // A target that reports itself stopped is not waited for.
    let stopped = BTreeMap::from([
        ("n2".to_string(), report(2, PgRole::Stopped, None)),
        ("n3".to_string(), standby_at(2, 600)),
    ]);
    let d = decide(&ControllerInput {
        reports: &stopped,
        ..at(0)
    });
    assert_eq!(d.action, promote("n3"), "{}", d.reason);
    // ... and the state accepts it: the old primary's WAL is all on n3.
    let mut applied = s.clone();
    apply(
        &mut applied,
        &Command::Promote {
            generation: Generation(2),
            node: "n3".into(),
        },
    )
    .unwrap();
    assert_eq!(applied.pending.unwrap().candidate.as_deref(), Some("n3"));
}

/// A position past the shutdown checkpoint counts only on the old primary's timeline: a
/// member whose WAL diverged earlier can be further along its own line. Simulation seed
/// 3104532 (an operator, pauses, switchovers and delays) promoted such a member, a fenced
/// primary of an older generation, without an acknowledged write.
#[test]
fn a_switchover_promotes_no_standby_whose_position_is_on_another_timeline() {
    let s = drained();
    let all = voters();
    assert_eq!(s.history.last().map(|h| h.timeline), Some(Timeline(1)));
    for timeline in [None, Some(Timeline::NONE), Some(Timeline(2))] {
        let off = Report {
            timeline,
            ..standby_at(2, 600)
        };
        for (target, other) in [
            (off.clone(), report(2, PgRole::Stopped, None)),
            (report(2, PgRole::Stopped, None), off),
        ] {
            let reports = BTreeMap::from([("n2".to_string(), target), ("n3".to_string(), other)]);
            for pending_ms in [0, s.ha.lease_ms + 1] {
                let d = decide(&ControllerInput {
                    me: "n3",
                    state: &s,
                    reports: &reports,
                    lease_expired_ms: None,
                    voters: &all,
                    pending_ms,
                    now_unix_ms: 0,
                    below_quorum_ms: 0,
                });
                assert_eq!(d.action, None, "{timeline:?} {pending_ms}: {}", d.reason);
            }
        }
    }
}

#[test]
fn a_switchover_never_promotes_a_standby_short_of_the_shutdown_checkpoint() {
    let s = drained();
    for (n2, n3) in [(400, 500), (400, 450), (100, 100)] {
        for pending_ms in [0, s.ha.lease_ms + 1] {
            let reports = BTreeMap::from([
                ("n2".to_string(), report(2, PgRole::Stopped, None)),
                ("n3".to_string(), standby_at(2, n3)),
                ("n1".to_string(), standby_at(2, n2)),
            ]);
            let d = decide(&ControllerInput {
                me: "n3",
                state: &s,
                reports: &reports,
                lease_expired_ms: None,
                voters: &voters(),
                pending_ms,
                now_unix_ms: 0,
                below_quorum_ms: 0,
            });
            assert_eq!(d.action, None, "n3 at {n3}, stop at 500: {}", d.reason);
        }
    }
    // Before the old primary stopped, only the target may promote, whoever is ahead.
    let early = switching_over();
    let reports = BTreeMap::from([("n3".to_string(), standby_at(2, 900))]);
    let d = decide_with("n3", &early, &reports, None);
    assert_eq!(d.action, None, "{}", d.reason);
    let mut refused = early.clone();
    assert!(apply(
        &mut refused,
        &Command::Promote {
            generation: Generation(2),
            node: "n3".into()
        }
    )
    .is_err());
}

#[test]
fn a_stalled_switchover_becomes_a_failover() {
    let s = switching_over();
    let reports = BTreeMap::from([("n2".to_string(), standby_at(2, 500))]);
    let d = decide(&ControllerInput {
        me: "n3",
        state: &s,
        reports: &reports,
        lease_expired_ms: None,
        voters: &voters(),
        pending_ms: switchover_timeout_ms(s.ha.lease_ms) + 1,
        now_unix_ms: 0,
        below_quorum_ms: 0,
    });
    let Some(ControllerAction::Propose(
        cmd @ Command::BeginFailover {
            generation: Generation(2),
            to: None,
            ..
        },
    )) = &d.action
    else {
        panic!("{d:?}");
    };
    let mut after = s.clone();
    apply(&mut after, cmd).unwrap();
    let p = after.pending.as_ref().unwrap();
    assert_eq!(
        (p.kind, p.from.as_deref(), after.generation),
        (PendingKind::Failover, Some("n1"), Generation(3))
    );
}

#[test]
fn a_learner_joins_the_sync_set_only_as_a_streaming_voter() {
    let mut s = booted();
    apply(
        &mut s,
        &Command::AddMember {
            member: crate::cluster::testing::member("n4", 4),
        },
    )
    .unwrap();
    let mut reports = BTreeMap::from([("n4".to_string(), report(1, PgRole::Standby, None))]);
    assert_eq!(decide_with("n2", &s, &reports, None).action, None, "n4 is a learner");
    let mut v = voters();
    v.insert("n4".into());
    let input = |reports: &BTreeMap<String, Report>, s: &ClusterState| {
        decide(&ControllerInput {
            me: "n2",
            state: s,
            reports,
            lease_expired_ms: None,
            voters: &v,
            pending_ms: 0,
            now_unix_ms: 0,
            below_quorum_ms: 0,
        })
    };
    let d = input(&reports, &s);
    let Some(ControllerAction::Propose(cmd @ Command::SetSyncStandbys { .. })) = &d.action else {
        panic!("{d:?}");
    };
    apply(&mut s, cmd).unwrap();
    assert_eq!((s.sync_quorum(), s.sync_unconfirmed.len()), (2, 1));
    assert_eq!(input(&reports, &s).action, None, "waits for the primary to apply ANY 2");
    let mut primary = report(1, PgRole::Primary, None);
    primary.sync_applied = Some(s.sync_config());
    reports.insert("n1".into(), primary);
    let d = input(&reports, &s);
    let Some(ControllerAction::Propose(cmd @ Command::ConfirmSync { .. })) = &d.action else {
        panic!("{d:?}");
    };
    apply(&mut s, cmd).unwrap();
    assert!(s.sync_unconfirmed.is_empty());
}

#[test]
fn a_scheduled_switchover_starts_when_due_and_only_to_a_streaming_standby() {
    let mut s = booted();
    s.scheduled_switchover = Some(crate::cluster::ScheduledSwitchover {
        from: Some("n1".into()),
        to: "n3".into(),
        at_unix_ms: 1_000,
    });
    let reports = BTreeMap::from([("n3".to_string(), report(1, PgRole::Standby, None))]);
    let at = |now: u64, reports: &BTreeMap<String, Report>| {
        decide(&ControllerInput {
            me: "n2",
            state: &s,
            reports,
            lease_expired_ms: None,
            voters: &voters(),
            pending_ms: 0,
            now_unix_ms: now,
            below_quorum_ms: 0,
        })
        .action
    };
    assert_eq!(at(999, &reports), None);
    assert!(matches!(
        at(1_000, &reports),
        Some(ControllerAction::Propose(Command::BeginSwitchover { generation: Generation(1), ref to, .. })) if to == "n3"
    ));
    assert_eq!(
        at(1_000, &BTreeMap::new()),
        Some(ControllerAction::Propose(Command::CancelScheduledSwitchover))
    );
}

#[test]
fn bootstrap_picks_the_lowest_id_with_an_empty_data_directory() {
    let s = three_members(&[]);
    let reports = BTreeMap::from([
        ("n3".to_string(), report(0, PgRole::NoData, None)),
        ("n2".to_string(), report(0, PgRole::NoData, None)),
        ("n1".to_string(), report(0, PgRole::Stopped, None)),
    ]);
    let d = decide_with("n3", &s, &reports, None);
    assert_eq!(
        d.action,
        Some(ControllerAction::Propose(Command::ChooseBootstrap {
            node: "n2".into()
        }))
    );
}

#[test]
fn expired_lease_begins_failover_unless_paused() {
    let mut s = booted();
    let d = decide_with("n2", &s, &BTreeMap::new(), Some(2500));
    let Some(ControllerAction::Propose(Command::BeginFailover {
        generation: Generation(1),
        ..
    })) = d.action
    else {
        panic!("{d:?}");
    };
    s.paused = true;
    assert_eq!(decide_with("n2", &s, &BTreeMap::new(), Some(2500)).action, None);
}

#[test]
fn promotion_waits_for_enough_final_reports_then_takes_the_most_advanced() {
    let s = failing_over();
    let mut reports = BTreeMap::from([("n2".to_string(), report(2, PgRole::Standby, Some((500, 1))))]);
    let d = decide_with("n2", &s, &reports, None);
    assert_eq!(d.action, None, "one of two standbys reported: {}", d.reason);
    reports.insert("n3".into(), report(2, PgRole::Standby, Some((700, 1))));
    let d = decide_with("n2", &s, &reports, None);
    assert_eq!(
        d.action,
        Some(ControllerAction::Propose(Command::Promote {
            generation: Generation(2),
            node: "n3".into()
        }))
    );
}

#[test]
fn a_report_from_an_older_generation_does_not_count() {
    let s = failing_over();
    let reports = BTreeMap::from([
        ("n2".to_string(), report(1, PgRole::Standby, Some((900, 1)))),
        ("n3".to_string(), report(2, PgRole::Standby, Some((700, 1)))),
    ]);
    assert_eq!(decide_with("n2", &s, &reports, None).action, None);
}

#[test]
fn leadership_moves_off_the_primary_to_a_streaming_standby() {
    let s = booted();
    let reports = BTreeMap::from([
        ("n2".to_string(), report(1, PgRole::Stopped, None)),
        ("n3".to_string(), report(1, PgRole::Standby, None)),
    ]);
    assert_eq!(
        decide_with("n1", &s, &reports, None).action,
        Some(ControllerAction::TransferLeader("n3".into()))
    );
    assert_eq!(decide_with("n2", &s, &reports, None).action, None);
}

#[test]
fn async_mode_records_an_empty_sync_set() {
    let mut s = booted();
    s.ha.synchronous_mode = SyncMode::Off;
    let d = decide_with("n2", &s, &BTreeMap::new(), None);
    assert_eq!(
        d.action,
        Some(ControllerAction::Propose(Command::SetSyncStandbys {
            generation: Generation(1),
            standbys: vec![]
        }))
    );
}

/// Every subset of reports (absent, stale generation, no final, final at
/// several positions) for the two standbys: a promotion names a member that
/// reported a final position under the current generation, at the highest
/// position reported, and only once both standbys (s - k + 1 = 2) reported.
#[test]
fn sweep_promotion_never_loses_an_acknowledged_write() {
    let s = failing_over();
    let options: Vec<Option<Report>> = vec![
        None,
        Some(report(1, PgRole::Standby, Some((900, 1)))),
        Some(report(2, PgRole::Standby, None)),
        Some(report(2, PgRole::Unknown, None)),
        Some(report(2, PgRole::Standby, Some((100, 1)))),
        Some(report(2, PgRole::Standby, Some((700, 1)))),
        Some(report(2, PgRole::Standby, Some((700, 2)))),
    ];
    for n2 in &options {
        for n3 in &options {
            for old in [None, Some(report(1, PgRole::Primary, None))] {
                let mut reports = BTreeMap::new();
                for (name, r) in [("n1", &old), ("n2", n2), ("n3", n3)] {
                    if let Some(r) = r {
                        reports.insert(name.to_string(), r.clone());
                    }
                }
                let d = decide_with("n2", &s, &reports, Some(9999));
                let finals: Vec<(u64, Timeline)> = ["n2", "n3"]
                    .iter()
                    .filter_map(|n| reports.get(*n))
                    .filter(|r| r.generation == Generation(2))
                    .filter_map(|r| r.final_position)
                    .collect();
                match &d.action {
                    Some(ControllerAction::Propose(Command::Promote { generation, node })) => {
                        assert_eq!(*generation, Generation(2));
                        assert_eq!(finals.len(), 2, "promoted before enough reports: {d:?} {reports:?}");
                        let chosen = reports[node].final_position.expect("the candidate reported");
                        let best = finals.iter().max_by_key(|(l, t)| (*t, *l)).unwrap();
                        assert_eq!(chosen, *best, "not the most advanced: {d:?} {reports:?}");
                    }
                    None => assert!(!d.reason.is_empty()),
                    other => panic!("unexpected action while failing over: {other:?}"),
                }
            }
        }
    }
}

fn decide_after(s: &ClusterState, reports: &BTreeMap<String, Report>, pending_ms: u64) -> ControllerDecision {
    decide(&ControllerInput {
        me: "n3",
        state: s,
        reports,
        lease_expired_ms: None,
        voters: &voters(),
        pending_ms,
        now_unix_ms: 0,
        below_quorum_ms: 0,
    })
}

/// Issue 11's first dead end, at the controller: a candidate that died mid-promotion is
/// replaced after `candidate_timeout_ms`; one that reports progress gets longer.
#[test]
fn a_candidate_that_does_not_finish_its_promotion_is_replaced_in_quorum_mode() {
    let s = promoting_n2("quorum");
    let limit = candidate_timeout_ms(s.ha.lease_ms);
    let silent = BTreeMap::new();
    assert_eq!(decide_after(&s, &silent, limit).action, None, "not before the limit");
    let d = decide_after(&s, &silent, limit + 1);
    let Some(ControllerAction::Propose(
        cmd @ Command::BeginFailover {
            generation: Generation(2),
            ..
        },
    )) = &d.action
    else {
        panic!("{d:?}");
    };
    let mut after = s.clone();
    apply(&mut after, cmd).unwrap();
    let p = after.pending.as_ref().unwrap();
    assert_eq!(
        (after.generation, p.candidate.as_deref(), p.from.as_deref()),
        (Generation(3), None, Some("n1"))
    );
    // The replacement's election needs the fenced primary's quorum again.
    let d = decide_after(&after, &silent, 0);
    assert!(d.reason.contains("waiting for"), "{}", d.reason);

    // A candidate that is replaying or promoted gets CANDIDATE_PROGRESS_FACTOR times longer;
    // one whose PostgreSQL cannot promote does not.
    for (pg, wait) in [
        (PgRole::Standby, limit * CANDIDATE_PROGRESS_FACTOR),
        (PgRole::Primary, limit * CANDIDATE_PROGRESS_FACTOR),
        (PgRole::Stopped, limit),
        (PgRole::NoData, limit),
        (PgRole::Unknown, limit),
    ] {
        let reports = BTreeMap::from([("n2".to_string(), report(2, pg, None))]);
        assert_eq!(decide_after(&s, &reports, wait).action, None, "{pg:?}");
        assert!(
            matches!(
                decide_after(&s, &reports, wait + 1).action,
                Some(ControllerAction::Propose(Command::BeginFailover { .. }))
            ),
            "{pg:?}"
        );
    }
    // A report from another generation is no progress.
    let old = BTreeMap::from([("n2".to_string(), report(1, PgRole::Standby, None))]);
    assert!(decide_after(&s, &old, limit + 1).action.is_some());
}

#[test]
fn in_asynchronous_mode_a_stuck_candidate_waits_for_the_operator() {
    let s = promoting_n2("off");
    let d = decide_after(&s, &BTreeMap::new(), 10 * candidate_timeout_ms(s.ha.lease_ms));
    assert_eq!(d.action, None);
    assert!(d.reason.contains("failover --force"), "{}", d.reason);
}

/// Issue 11's second dead end: a member chosen to bootstrap that died during initdb
/// stalled the cluster forever. Another member with an empty data directory takes over.
#[test]
fn a_member_chosen_to_bootstrap_that_does_not_is_replaced() {
    let s = three_members(&[Command::ChooseBootstrap { node: "n1".into() }]);
    let limit = candidate_timeout_ms(s.ha.lease_ms);
    let empty = |g| report(g, PgRole::NoData, None);
    let others = BTreeMap::from([("n2".to_string(), empty(0)), ("n3".to_string(), empty(0))]);
    assert_eq!(decide_after(&s, &others, limit).action, None, "not before the limit");
    assert_eq!(
        decide_after(&s, &others, limit + 1).action,
        Some(ControllerAction::Propose(Command::ChooseBootstrap {
            node: "n2".into()
        })),
        "silent: replaced by the lowest id with an empty data directory"
    );
    // Running initdb (still empty) or started: given longer. Stuck otherwise.
    for (pg, wait) in [
        (PgRole::NoData, limit * CANDIDATE_PROGRESS_FACTOR),
        (PgRole::Primary, limit * CANDIDATE_PROGRESS_FACTOR),
        (PgRole::Stopped, limit),
        (PgRole::Unknown, limit),
    ] {
        let mut reports = others.clone();
        reports.insert("n1".into(), report(0, pg, None));
        assert_eq!(decide_after(&s, &reports, wait).action, None, "{pg:?}");
        assert!(decide_after(&s, &reports, wait + 1).action.is_some(), "{pg:?}");
    }
    // Nobody else can: it waits, and says so.
    let d = decide_after(&s, &BTreeMap::new(), 10 * limit);
    assert_eq!(d.action, None);
    assert!(d.reason.contains("no other member"), "{}", d.reason);
    // Removing the chosen member clears the choice at once.
    let mut removed = s.clone();
    apply(&mut removed, &Command::RemoveMember { name: "n1".into() }).unwrap();
    assert_eq!(removed.bootstrap_node, None);
    assert_eq!(
        decide_after(&removed, &others, 0).action,
        Some(ControllerAction::Propose(Command::ChooseBootstrap {
            node: "n2".into()
        }))
    );
}

/// Found by the simulation (seed 626): the primary was down past its restart bound and
/// let its lease lapse, but every other member held a database that never streamed from
/// it. The old primary, stopped with all it acknowledged, is promoted again.
#[test]
fn when_no_other_member_holds_anything_the_stopped_old_primary_is_promoted_again() {
    let s = failing_over();
    let nothing = |g| report(g, PgRole::Stopped, Some((0, 0)));
    let mut reports = BTreeMap::from([("n2".to_string(), nothing(2)), ("n3".to_string(), nothing(2))]);
    assert_eq!(
        decide_with("n2", &s, &reports, None).action,
        None,
        "n1 has not reported yet"
    );
    reports.insert("n1".into(), report(2, PgRole::Stopped, None));
    assert_eq!(
        decide_with("n2", &s, &reports, None).action,
        Some(ControllerAction::Propose(Command::Promote {
            generation: Generation(2),
            node: "n1".into()
        }))
    );
    // Not while another member may hold its writes, nor while it may still run.
    reports.insert("n3".into(), report(2, PgRole::Standby, Some((100, 1))));
    assert!(!matches!(
        decide_with("n2", &s, &reports, None).action,
        Some(ControllerAction::Propose(Command::Promote { ref node, .. })) if node == "n1"
    ));
    reports.insert("n3".into(), nothing(2));
    reports.insert("n1".into(), report(2, PgRole::Unknown, None));
    assert_eq!(decide_with("n2", &s, &reports, None).action, None);
}

/// Seed 7206: n2, elected holding n1's acknowledged writes, runs its configuration, but its
/// configuration is confirmed (forgetting that n1 and n2 alone may hold those writes) only
/// once k = 1 of its synchronous standbys flushed past the fork of its timeline.
#[test]
fn a_new_primary_is_confirmed_only_once_its_standbys_passed_its_fork() {
    let mut s = failing_over();
    apply(
        &mut s,
        &Command::Promote {
            generation: Generation(2),
            node: "n2".into(),
        },
    )
    .unwrap();
    let record = Command::RecordTimeline {
        generation: Generation(2),
        node: "n2".into(),
        timeline: Timeline(2),
        switch_lsn: Some(crate::types::Lsn(0x500)),
        parent_timeline: Some(Timeline(1)),
    };
    apply(&mut s, &record).unwrap();
    assert_eq!(s.sync_unconfirmed.len(), 1, "the fork holders");
    let mut primary = report(2, PgRole::Primary, None);
    primary.sync_applied = Some(s.sync_config());
    let confirm = |flushed: &[(&str, u64)]| {
        let mut p = primary.clone();
        p.standby_flush = flushed.iter().map(|(n, l)| (n.to_string(), *l)).collect();
        decide_with("n3", &s, &BTreeMap::from([("n2".to_string(), p)]), None)
    };
    for flushed in [
        &[][..],
        &[("n3", 0x4FF)],
        &[("n1", 0x4FF), ("n3", 0x100)],
        &[("n4", 0x900)],
    ] {
        let d = confirm(flushed);
        assert_eq!(d.action, None, "{flushed:?}");
        assert!(
            d.reason.contains("0 of the 1") && d.reason.contains("0/500"),
            "{}",
            d.reason
        );
    }
    for flushed in [&[("n3", 0x500)][..], &[("n1", 0x900), ("n3", 0x10)]] {
        let d = confirm(flushed);
        assert!(
            matches!(d.action, Some(ControllerAction::Propose(Command::ConfirmSync { .. }))),
            "{flushed:?}: {d:?}"
        );
    }
}

/// Finding 14 of docs/jepsen.md (pause-primary-node, seed 572202): n2 promoted at a fork
/// and was fenced before any standby streamed past it, n1 (the old primary) failed its
/// rewind, and n3 is behind the fork. Only n2 holds the writes acknowledged before the fork:
/// once it is back and stopped, and the election has waited a lease, it is promoted again.
#[test]
fn a_fenced_primary_that_alone_holds_the_fork_is_promoted_again_once_it_is_back() {
    let mut s = failing_over();
    for c in [
        Command::Promote {
            generation: Generation(2),
            node: "n2".into(),
        },
        Command::RecordTimeline {
            generation: Generation(2),
            node: "n2".into(),
            timeline: Timeline(2),
            switch_lsn: Some(crate::types::Lsn(0x500)),
            parent_timeline: Some(Timeline(1)),
        },
        Command::BeginFailover {
            generation: Generation(2),
            to: None,
            forced: false,
            reason: "lease".into(),
        },
    ] {
        apply(&mut s, &c).unwrap();
    }
    assert_eq!(s.generation, Generation(3));
    let promote_n2 = Some(ControllerAction::Propose(Command::Promote {
        generation: Generation(3),
        node: "n2".into(),
    }));
    let lease = s.ha.lease_ms;
    let mut reports = BTreeMap::from([
        ("n1".to_string(), report(3, PgRole::Stopped, Some((0, 0)))),
        ("n3".to_string(), report(3, PgRole::Stopped, Some((0x4F0, 1)))),
    ]);
    for pending_ms in [0, lease, 100 * lease] {
        let d = decide_after(&s, &reports, pending_ms);
        assert_eq!(d.action, None, "n2 has not reported: {pending_ms}");
        assert!(d.reason.contains("waiting for [n1, n2]"), "{}", d.reason);
    }
    // Back, but still fencing (or not observed): nothing yet.
    for pg in [PgRole::Primary, PgRole::Unknown, PgRole::NoData] {
        reports.insert("n2".into(), report(3, pg, None));
        assert_eq!(decide_after(&s, &reports, 100 * lease).action, None, "{pg:?}");
    }
    // Stopped: a lease for the others' reports, then promoted again.
    reports.insert("n2".into(), report(3, PgRole::Stopped, None));
    assert_eq!(decide_after(&s, &reports, lease).action, None);
    let d = decide_after(&s, &reports, lease + 1);
    assert_eq!(d.action, promote_n2, "{}", d.reason);
    assert!(d.reason.contains("n2 is back, stopped"), "{}", d.reason);
    // Started in recovery on its own WAL (a candidate of its own, replaced: the simulation,
    // seed 6596), it is promoted again too; not while it streams from someone.
    let mut recovering = reports.clone();
    recovering.insert("n2".into(), report(3, PgRole::Standby, Some((0x700, 2))));
    assert_eq!(decide_after(&s, &recovering, lease + 1).action, promote_n2);
    let mut streaming = report(3, PgRole::Standby, None);
    streaming.timeline = Some(Timeline(2));
    recovering.insert("n2".into(), streaming);
    assert_eq!(decide_after(&s, &recovering, 100 * lease).action, None);
    // A report of the previous generation is not one of this change.
    let mut stale = reports.clone();
    stale.insert("n2".into(), report(2, PgRole::Stopped, None));
    assert_eq!(decide_after(&s, &stale, 100 * lease).action, None);
    // n3 past the fork holds the prefix too, and is promoted at once instead.
    let mut past = reports.clone();
    past.insert("n3".into(), report(3, PgRole::Stopped, Some((0x600, 2))));
    assert!(matches!(
        decide_after(&s, &past, 0).action,
        Some(ControllerAction::Propose(Command::Promote { ref node, .. })) if node == "n3"
    ));
    // Tagged nofailover, it is not promoted, nor once its pre_promote hook refused (it would
    // be chosen and refuse under every generation); nor against a requested or forced target.
    let mut tagged = s.clone();
    tagged.members.get_mut("n2").unwrap().tags.nofailover = true;
    assert_eq!(decide_after(&tagged, &reports, 100 * lease).action, None);
    let mut vetoed = s.clone();
    vetoed.vetoed.insert("n2".into());
    assert_eq!(decide_after(&vetoed, &reports, 100 * lease).action, None);
    let mut requested = s.clone();
    requested.pending.as_mut().unwrap().to = Some("n3".into());
    assert_ne!(decide_after(&requested, &reports, 100 * lease).action, promote_n2);
    let mut forced = requested.clone();
    forced.pending.as_mut().unwrap().forced = true;
    assert_ne!(decide_after(&forced, &reports, 100 * lease).action, promote_n2);
}

/// `[cluster] adopt`: the adopted member is never replaced, however long it takes and
/// whoever has an empty data directory: another member's initdb would start an empty
/// cluster and the adopted database would be cloned away.
#[test]
fn an_adopted_member_is_never_replaced_by_an_initdb() {
    let s = adopting("n2", &[]);
    let limit = candidate_timeout_ms(s.ha.lease_ms);
    let empty = |g| report(g, PgRole::NoData, None);
    let others = BTreeMap::from([("n1".to_string(), empty(0)), ("n3".to_string(), empty(0))]);
    for pending_ms in [0, limit + 1, 100 * limit] {
        let d = decide_after(&s, &others, pending_ms);
        assert_eq!(d.action, None, "{pending_ms}: {}", d.reason);
        assert!(d.reason.contains("waiting for n2 to adopt"), "{}", d.reason);
    }
    // The replicated state refuses it too.
    let mut t = s.clone();
    assert!(apply(&mut t, &Command::ChooseBootstrap { node: "n1".into() }).is_err());
    assert!(apply(&mut t, &Command::RemoveMember { name: "n2".into() }).is_err());
    assert_eq!(t, s);
}

/// `pre_promote`: a candidate that refuses is replaced under the next generation, in
/// either mode (it never promoted), and is never chosen again by the controller; its final
/// report still counts for the quorum.
#[test]
fn a_candidate_vetoed_by_its_pre_promote_hook_is_replaced_and_never_chosen_again() {
    for mode in ["quorum", "off", "degradable"] {
        let mut s = promoting_n2(mode);
        let veto = Command::VetoCandidate {
            generation: Generation(2),
            node: "n2".into(),
            reason: "its pre_promote hook failed: exit status 1".into(),
        };
        apply(&mut s, &veto).unwrap();
        let p = s.pending.clone().unwrap();
        assert_eq!(
            (s.generation, p.candidate, p.from.as_deref()),
            (Generation(3), None, Some("n1")),
            "{mode}"
        );
        assert!(s.vetoed.contains("n2"));
        assert!(
            p.reason
                .contains("n2 refused the promotion: its pre_promote hook failed: exit status 1"),
            "{}",
            p.reason
        );
        // n2 is the most advanced, and reports; n3 holds everything too: n3 is chosen.
        let reports = BTreeMap::from([
            ("n2".to_string(), report(3, PgRole::Standby, Some((200, 1)))),
            ("n3".to_string(), report(3, PgRole::Standby, Some((200, 1)))),
        ]);
        let d = decide_with("n3", &s, &reports, None);
        assert_eq!(
            d.action,
            Some(ControllerAction::Propose(Command::Promote {
                generation: Generation(3),
                node: "n3".into()
            })),
            "{mode}: {}",
            d.reason
        );
        // If only n2 holds the acknowledged writes, nobody is promoted: it says why.
        if mode == "quorum" {
            let behind = BTreeMap::from([
                ("n2".to_string(), report(3, PgRole::Standby, Some((200, 1)))),
                ("n3".to_string(), report(3, PgRole::Standby, Some((100, 1)))),
            ]);
            let d = decide_with("n3", &s, &behind, None);
            assert_eq!(d.action, None, "{}", d.reason);
            assert!(d.reason.contains("pre_promote"), "{}", d.reason);
        }
        // Once a primary is recorded the veto is forgotten.
        apply(
            &mut s,
            &Command::Promote {
                generation: Generation(3),
                node: "n3".into(),
            },
        )
        .unwrap();
        apply(
            &mut s,
            &Command::RecordTimeline {
                generation: Generation(3),
                node: "n3".into(),
                timeline: Timeline(2),
                switch_lsn: None,
                parent_timeline: None,
            },
        )
        .unwrap();
        assert!(s.vetoed.is_empty());
    }
}

#[test]
fn only_the_candidate_can_veto_and_an_operator_can_ask_for_a_vetoed_member_again() {
    let mut s = promoting_n2("quorum");
    for (generation, node) in [(2, "n3"), (1, "n2"), (2, "n1")] {
        let cmd = Command::VetoCandidate {
            generation: Generation(generation),
            node: node.into(),
            reason: "r".into(),
        };
        let before = s.clone();
        assert!(apply(&mut s, &cmd).is_err(), "{cmd}");
        assert_eq!(s, before);
    }
    apply(
        &mut s,
        &Command::VetoCandidate {
            generation: Generation(2),
            node: "n2".into(),
            reason: "r".into(),
        },
    )
    .unwrap();
    apply(
        &mut s,
        &Command::BeginFailover {
            generation: Generation(3),
            to: Some("n2".into()),
            forced: false,
            reason: "operator".into(),
        },
    )
    .unwrap();
    assert!(!s.vetoed.contains("n2"), "the operator's request lifts the veto");
}

/// `nosync` (issue 16): a tagged member leaves the synchronous set through the controller,
/// the primary's old configuration is kept until it confirms the new one, a tagged member
/// that streams is never added back, and clearing the tag brings it back.
#[test]
fn a_member_tagged_nosync_leaves_the_sync_set_confirmed_before_forgotten() {
    use crate::cluster::{Flag, TagChange};
    let mut s = booted();
    let tag = |on| Command::ChangeTags {
        name: "n3".into(),
        changes: vec![TagChange::Flag(Flag::NoSync, on)],
    };
    apply(&mut s, &tag(true)).unwrap();
    let mut reports = BTreeMap::from([
        ("n2".to_string(), report(1, PgRole::Standby, None)),
        ("n3".to_string(), report(1, PgRole::Standby, None)),
    ]);
    let old = s.sync_config();
    let d = decide_with("n2", &s, &reports, None);
    let Some(ControllerAction::Propose(cmd @ Command::SetSyncStandbys { standbys, .. })) = &d.action else {
        panic!("{d:?}");
    };
    assert_eq!(standbys, &["n2".to_string()]);
    assert!(d.reason.contains("nosync"), "{}", d.reason);
    apply(&mut s, cmd).unwrap();
    assert_eq!(s.sync_unconfirmed, [old], "ANY 1 (n2, n3) still counts");
    let d = decide_with("n2", &s, &reports, None);
    assert_eq!(d.action, None, "waits for the primary to run ANY 1 (n2): {d:?}");
    // The primary reports it applied once n2 holds what ANY 1 (n2, n3) acknowledged
    // (`report::derive`); then it is confirmed.
    let mut primary = report(1, PgRole::Primary, None);
    primary.sync_applied = Some(s.sync_config());
    reports.insert("n1".into(), primary.clone());
    let d = decide_with("n2", &s, &reports, None);
    let Some(ControllerAction::Propose(cmd @ Command::ConfirmSync { .. })) = &d.action else {
        panic!("{d:?}");
    };
    apply(&mut s, cmd).unwrap();
    assert!(s.sync_unconfirmed.is_empty());
    // n3 streams, and stays out.
    assert_eq!(decide_with("n2", &s, &reports, None).action, None);
    apply(&mut s, &tag(false)).unwrap();
    let d = decide_with("n2", &s, &reports, None);
    let Some(ControllerAction::Propose(Command::SetSyncStandbys { standbys, .. })) = &d.action else {
        panic!("{d:?}");
    };
    assert_eq!(standbys, &["n2".to_string(), "n3".to_string()]);
}

/// While ANY 1 (n2, n3) is unconfirmed after n3 was tagged nosync, an election needs the
/// two reports that configuration needs: n2's alone could miss a write only n3 holds.
#[test]
fn a_failover_right_after_nosync_still_covers_the_configuration_the_primary_ran() {
    use crate::cluster::{Flag, TagChange};
    let mut s = booted();
    for cmd in [
        Command::ChangeTags {
            name: "n3".into(),
            changes: vec![TagChange::Flag(Flag::NoSync, true)],
        },
        Command::SetSyncStandbys {
            generation: Generation(1),
            standbys: vec!["n2".into()],
        },
        Command::BeginFailover {
            generation: Generation(1),
            to: None,
            forced: false,
            reason: "lease".into(),
        },
    ] {
        apply(&mut s, &cmd).unwrap();
    }
    let only_n2 = BTreeMap::from([("n2".to_string(), report(2, PgRole::Standby, Some((500, 1))))]);
    let d = decide_with("n2", &s, &only_n2, None);
    assert_eq!(d.action, None, "{d:?}");
    assert!(d.reason.contains("n3"), "{}", d.reason);
    let mut both = only_n2.clone();
    both.insert("n3".into(), report(2, PgRole::Standby, Some((600, 1))));
    let d = decide_with("n2", &s, &both, None);
    assert!(
        matches!(&d.action, Some(ControllerAction::Propose(Command::Promote { node, .. })) if node == "n3"),
        "n3 holds more: {d:?}"
    );
}

/// A nosync tag never leaves a quorum-mode primary with an empty synchronous set: the
/// tagged member stays while no other member can take its place.
#[test]
fn nosync_never_empties_the_sync_set() {
    use crate::cluster::{Flag, TagChange};
    let mut s = booted();
    apply(
        &mut s,
        &Command::ChangeTags {
            name: "n3".into(),
            changes: vec![TagChange::Flag(Flag::NoSync, true)],
        },
    )
    .unwrap();
    s.sync_standbys = ["n3".to_string()].into();
    // n2 is down (no report): n3 stays.
    let reports = BTreeMap::from([("n3".to_string(), report(1, PgRole::Standby, None))]);
    assert_eq!(decide_with("n2", &s, &reports, None).action, None);
    // n2 streams: it replaces n3.
    let mut reports = reports;
    reports.insert("n2".into(), report(1, PgRole::Standby, None));
    let d = decide_with("n2", &s, &reports, None);
    assert!(
        matches!(&d.action, Some(ControllerAction::Propose(Command::SetSyncStandbys { standbys, .. })) if standbys == &["n2".to_string()]),
        "{d:?}"
    );
}

/// A replica (issue 16) that holds more WAL than every voter is still never chosen by an
/// automatic failover, and its report counts towards no quorum.
#[test]
fn an_automatic_failover_never_promotes_a_replica() {
    let mut s = booted();
    apply(
        &mut s,
        &Command::AddReplica {
            member: crate::cluster::testing::member("n4", 4),
        },
    )
    .unwrap();
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
    let only_replica = BTreeMap::from([("n4".to_string(), report(2, PgRole::Standby, Some((900, 1))))]);
    let d = decide_with("n2", &s, &only_replica, None);
    assert_eq!(d.action, None, "the replica's report covers no quorum: {d:?}");
    let mut reports = only_replica;
    reports.insert("n2".into(), report(2, PgRole::Standby, Some((500, 1))));
    reports.insert("n3".into(), report(2, PgRole::Standby, Some((500, 1))));
    let d = decide_with("n2", &s, &reports, None);
    assert!(
        matches!(&d.action, Some(ControllerAction::Propose(Command::Promote { node, .. })) if node == "n2"),
        "{d:?}"
    );
}

/// A -> B -> A: the set never returns to a configuration still unconfirmed, so a report
/// from before the last change ("runs A") can never confirm A and forget B.
#[test]
fn the_sync_set_never_returns_to_a_configuration_still_unconfirmed() {
    use crate::cluster::{Flag, TagChange};
    let mut s = booted();
    let a = s.sync_config();
    let tag = |on| Command::ChangeTags {
        name: "n3".into(),
        changes: vec![TagChange::Flag(Flag::NoSync, on)],
    };
    apply(&mut s, &tag(true)).unwrap();
    let mut reports = BTreeMap::from([
        ("n2".to_string(), report(1, PgRole::Standby, None)),
        ("n3".to_string(), report(1, PgRole::Standby, None)),
    ]);
    let Some(ControllerAction::Propose(cmd)) = decide_with("n2", &s, &reports, None).action else {
        panic!("no SetSyncStandbys");
    };
    apply(&mut s, &cmd).unwrap();
    assert_eq!(s.sync_unconfirmed, std::slice::from_ref(&a));
    apply(&mut s, &tag(false)).unwrap();
    // A stale report that the primary runs A: neither a change back to A nor a confirmation.
    let mut stale = report(1, PgRole::Primary, None);
    stale.sync_applied = Some(a.clone());
    reports.insert("n1".into(), stale);
    let d = decide_with("n2", &s, &reports, None);
    assert_eq!(d.action, None, "{d:?}");
    // The primary runs B: B is confirmed, and only then the set goes back to A.
    let mut fresh = report(1, PgRole::Primary, None);
    fresh.sync_applied = Some(s.sync_config());
    reports.insert("n1".into(), fresh);
    let Some(ControllerAction::Propose(cmd @ Command::ConfirmSync { .. })) =
        decide_with("n2", &s, &reports, None).action
    else {
        panic!("B is not confirmed");
    };
    apply(&mut s, &cmd).unwrap();
    let d = decide_with("n2", &s, &reports, None);
    assert!(
        matches!(&d.action, Some(ControllerAction::Propose(Command::SetSyncStandbys { standbys, .. })) if standbys.len() == 2),
        "{d:?}"
    );
}

#[test]
fn skip_final_reports_promotes_from_stale_positions_only_in_an_open_failover() {
    let s = failing_over();
    let g = s.generation;
    // n2 lags but answers (its last report is of the old generation); n3 holds the last
    // acknowledged writes, but its PostgreSQL hung, so its report has no position.
    let mut hung = report(g.0 - 1, PgRole::Unknown, None);
    hung.lsn = None;
    let reports: BTreeMap<String, Report> =
        [("n2".to_string(), standby_at(g.0 - 1, 100)), ("n3".to_string(), hung)].into();
    let safe = decide_with("n2", &s, &reports, None);
    assert_eq!(
        safe.action, None,
        "the safe controller waits for final reports: {}",
        safe.reason
    );

    let skipped = skip_final_reports(&s, reports.clone());
    assert_eq!(skipped["n2"].final_position, Some((100, Timeline(1))));
    assert_eq!(
        skipped["n3"].final_position,
        Some((0, Timeline::NONE)),
        "no position reads as holding nothing"
    );
    assert!(skipped.values().all(|r| r.generation == g));
    let unsafe_ = decide_with("n2", &s, &skipped, None);
    assert!(
        matches!(&unsafe_.action, Some(ControllerAction::Propose(Command::Promote { node, .. })) if node == "n2"),
        "{unsafe_:?}"
    );

    // Nothing changes outside a failover that has not chosen yet.
    for other in [booted(), switching_over()] {
        assert_eq!(skip_final_reports(&other, reports.clone()), reports);
    }
    let mut chosen = s.clone();
    chosen.pending.as_mut().unwrap().candidate = Some("n3".into());
    assert_eq!(skip_final_reports(&chosen, reports.clone()), reports);
}

/// Finding 17 of docs/jepsen.md (chaos-multi, seed 662009): n3, rewound onto n2 just
/// before n2 was fenced, reported the most advanced position but could not become
/// consistent from its own WAL. It now declines (`VetoCandidate`); its position still
/// counts as the one the winner must reach, so a member behind it is not promoted. The
/// fenced n2, back and stopped, holds every write it acknowledged and is promoted again;
/// until it is back the controller waits; a member that holds n3's position is promoted.
#[test]
fn a_candidate_that_cannot_become_consistent_declines_and_the_fenced_primary_is_promoted_again() {
    let mut s = bootstrapped("n1");
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
        Command::RecordTimeline {
            generation: Generation(2),
            node: "n2".into(),
            timeline: Timeline(2),
            switch_lsn: Some(crate::types::Lsn(0x500)),
            parent_timeline: Some(Timeline(1)),
        },
        Command::BeginFailover {
            generation: Generation(2),
            to: None,
            forced: false,
            reason: "lease".into(),
        },
        Command::Promote {
            generation: Generation(3),
            node: "n3".into(),
        },
        Command::VetoCandidate {
            generation: Generation(3),
            node: "n3".into(),
            reason: "it cannot become consistent from its own WAL: recovery must reach 0/750 and its WAL ends at \
                     0/700 on timeline 2"
                .into(),
        },
    ] {
        apply(&mut s, &c).unwrap();
    }
    let p = s.pending.clone().unwrap();
    assert_eq!(
        (s.generation, p.candidate, p.from.as_deref()),
        (Generation(4), None, Some("n2"))
    );
    assert!(
        p.reason
            .contains("n3 refused the promotion: it cannot become consistent"),
        "{}",
        p.reason
    );
    let lease = s.ha.lease_ms;
    let promote = |node: &str| {
        Some(ControllerAction::Propose(Command::Promote {
            generation: Generation(4),
            node: node.into(),
        }))
    };
    // n3 holds the most; n1 is behind it on the same timeline; n2 has not reported.
    let mut reports = BTreeMap::from([
        ("n1".to_string(), report(4, PgRole::Stopped, Some((0x600, 2)))),
        ("n3".to_string(), report(4, PgRole::Stopped, Some((0x700, 2)))),
    ]);
    for pending_ms in [0, lease, 100 * lease] {
        let d = decide_after(&s, &reports, pending_ms);
        assert_eq!(d.action, None, "{pending_ms}: {}", d.reason);
    }
    // n2 back and stopped: promoted again, losing nothing.
    reports.insert("n2".into(), report(4, PgRole::Stopped, None));
    let d = decide_after(&s, &reports, 0);
    assert_eq!(d.action, promote("n2"), "{}", d.reason);
    assert!(d.reason.contains("n2 is back, stopped"), "{}", d.reason);
    // A member that holds n3's position is promoted instead of waiting for n2.
    reports.remove("n2");
    reports.insert("n1".into(), report(4, PgRole::Stopped, Some((0x700, 2))));
    let d = decide_after(&s, &reports, 0);
    assert_eq!(d.action, promote("n1"), "{}", d.reason);
}
