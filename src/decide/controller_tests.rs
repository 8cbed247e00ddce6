//! The controller's decisions: table tests, then a sweep over report sets.

use super::*;
use crate::cluster::testing::three_members;
use crate::cluster::{apply, SyncMode};

fn booted() -> ClusterState {
    three_members(&[
        Command::ChooseBootstrap { node: "n1".into() },
        Command::Bootstrap {
            node: "n1".into(),
            system_identifier: 1,
        },
    ])
}

fn failing_over() -> ClusterState {
    let mut s = booted();
    apply(
        &mut s,
        &Command::BeginFailover {
            generation: 1,
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
        generation,
        pg,
        streaming: pg == PgRole::Standby && final_position.is_none(),
        timeline: Some(1),
        lsn: Some(100),
        final_position,
        reason: String::new(),
    }
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
    })
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
    let Some(ControllerAction::Propose(Command::BeginFailover { generation: 1, .. })) = d.action else {
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
            generation: 2,
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
            generation: 1,
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
                let finals: Vec<(u64, u32)> = ["n2", "n3"]
                    .iter()
                    .filter_map(|n| reports.get(*n))
                    .filter(|r| r.generation == 2)
                    .filter_map(|r| r.final_position)
                    .collect();
                match &d.action {
                    Some(ControllerAction::Propose(Command::Promote { generation, node })) => {
                        assert_eq!(*generation, 2);
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
