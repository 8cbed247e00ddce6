//! The agent's table: one test per interesting row, then an exhaustive sweep
//! over every combination of state, local PostgreSQL, lease and timers that
//! asserts the safety invariants of DESIGN §7 L0.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::cluster::testing::{adopting, three_members};
use crate::cluster::{apply, Command};
use crate::decide::table::{self, Column, Kind, Row};
use crate::postgres::Replica;

fn boot(node: &str) -> Vec<Command> {
    vec![
        Command::ChooseBootstrap { node: node.into() },
        Command::Bootstrap {
            node: node.into(),
            system_identifier: 9,
        },
    ]
}

fn failover() -> Command {
    Command::BeginFailover {
        generation: Generation(1),
        to: None,
        forced: false,
        reason: "lease expired".into(),
    }
}

fn promote(node: &str) -> Command {
    Command::Promote {
        generation: Generation(2),
        node: node.into(),
    }
}

/// Named states covering every `Wanted` row, with and without pause.
fn states() -> Vec<(&'static str, ClusterState)> {
    let mut out = vec![
        ("uninitialized", ClusterState::default()),
        ("initialized", three_members(&[])),
        (
            "n1 chosen",
            three_members(&[Command::ChooseBootstrap { node: "n1".into() }]),
        ),
        (
            "n2 chosen",
            three_members(&[Command::ChooseBootstrap { node: "n2".into() }]),
        ),
        ("n1 primary", three_members(&boot("n1"))),
        ("n1 primary, n3 cascades from n2", cascading()),
        ("n2 primary", three_members(&boot("n2"))),
        (
            "failover from n1",
            three_members(&[boot("n1"), vec![failover()]].concat()),
        ),
        (
            "failover from n2",
            three_members(&[boot("n2"), vec![failover()]].concat()),
        ),
        (
            "n1 candidate",
            three_members(&[boot("n2"), vec![failover(), promote("n1")]].concat()),
        ),
        (
            "n3 candidate",
            three_members(&[boot("n2"), vec![failover(), promote("n3")]].concat()),
        ),
    ];
    let switchover = Command::BeginSwitchover {
        generation: Generation(1),
        to: "n2".into(),
        reason: "planned".into(),
    };
    let stopped = Command::SwitchoverStopped {
        generation: Generation(2),
        node: "n1".into(),
        lsn: 0x500,
    };
    let recorded = Command::RecordTimeline {
        generation: Generation(2),
        node: "n2".into(),
        timeline: Timeline(2),
        switch_lsn: Some(crate::types::Lsn(0x600)),
        parent_timeline: Some(Timeline(1)),
    };
    out.extend([
        (
            "switchover n1 to n2",
            three_members(&[boot("n1"), vec![switchover.clone()]].concat()),
        ),
        (
            "switchover, n1 stopped",
            three_members(&[boot("n1"), vec![switchover.clone(), stopped.clone()]].concat()),
        ),
        (
            "switchover, n2 candidate",
            three_members(&[boot("n1"), vec![switchover.clone(), stopped.clone(), promote("n2")]].concat()),
        ),
        (
            "after switchover to n2",
            three_members(&[boot("n1"), vec![switchover, stopped, promote("n2"), recorded.clone()]].concat()),
        ),
        (
            "failover from n2 after n1",
            three_members(
                &[
                    boot("n1"),
                    vec![
                        failover(),
                        promote("n2"),
                        recorded,
                        Command::BeginFailover {
                            generation: Generation(2),
                            to: None,
                            forced: false,
                            reason: "lease expired".into(),
                        },
                    ],
                ]
                .concat(),
            ),
        ),
    ]);
    let adopted = Command::Adopted {
        node: "n1".into(),
        system_identifier: 9,
        timeline: Timeline(3),
    };
    out.extend([
        ("adopting n1", adopting("n1", &[])),
        ("adopted n1", adopting("n1", std::slice::from_ref(&adopted))),
        ("failover from adopted n1", adopting("n1", &[adopted, failover()])),
    ]);
    let paused: Vec<_> = out
        .iter()
        .filter(|(_, s)| s.initialized)
        .map(|(n, s)| {
            let mut p = s.clone();
            p.paused = true;
            (*n, p)
        })
        .collect();
    out.extend(paused);
    out
}

fn pg(in_recovery: bool, conninfo: &str, walreceiver: Option<&str>) -> PgState {
    PgState {
        in_recovery,
        timeline: Some(Timeline(1)),
        write_lsn: (!in_recovery).then_some(100),
        receive_lsn: in_recovery.then_some(90),
        replay_lsn: in_recovery.then_some(80),
        walreceiver: walreceiver.map(String::from),
        primary_conninfo: conninfo.into(),
        replication: vec![Replica {
            application_name: "n3".into(),
            state: "streaming".into(),
            sync_state: "quorum".into(),
            flush_lsn: Some(100),
        }],
        // A primary keeps the others' slots; a standby none (nobody cascades from it).
        idle_slots: vec![],
        slots: if in_recovery {
            vec![]
        } else {
            vec!["raftpg_n2".into(), "raftpg_n3".into()]
        },
        sync_names: String::new(),
        pending_restart: vec![],
        timeline_pinned: false,
    }
}

/// Where the tests' standbys stream from, and the `primary_conninfo` that says so.
static UP: std::sync::LazyLock<Upstream> = std::sync::LazyLock::new(|| Upstream {
    host: "n-primary".into(),
    port: 5432,
    user: "replicator".into(),
    application_name: "n3".into(),
    passfile: None,
    ssl_root_cert: None,
    slot: true,
});
static WANT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| conf::conninfo(&UP));

/// The actions that write the configuration, as `input` makes them carry `UP`.
fn start_standby() -> Action {
    Action::StartStandby {
        upstream: Some(UP.clone()),
    }
}

fn reconfigure() -> Action {
    Action::Reconfigure {
        upstream: Some(UP.clone()),
    }
}

fn reload() -> Action {
    Action::Reload {
        upstream: Some(UP.clone()),
    }
}

fn locals() -> Vec<Local> {
    let ctl = |state: &str| Controldata {
        state: state.into(),
        timeline: Some(Timeline(1)),
        checkpoint_lsn: Some(0x500),
        system_identifier: Some(9),
        wal_segment_size: Some(16 << 20),
        from_backup: false,
        ..Controldata::default()
    };
    vec![
        Local::NoData,
        Local::Stopped { control: None },
        Local::Stopped {
            control: Some(ctl("shut down in recovery")),
        },
        Local::Stopped {
            control: Some(ctl("in production")),
        },
        Local::Stopped {
            control: Some(Controldata {
                from_backup: true,
                ..ctl("in production")
            }),
        },
        Local::Stopped {
            control: Some(ctl("shut down")),
        },
        // Rewound onto a primary that moved on: consistent only past the sweep's WAL end.
        Local::Stopped {
            control: Some(Controldata {
                min_recovery: Some(0x700),
                min_recovery_timeline: Some(Timeline(1)),
                ..ctl("in archive recovery")
            }),
        },
        // A database of another system (adoption: a member's old data).
        Local::Stopped {
            control: Some(Controldata {
                system_identifier: Some(7),
                ..ctl("shut down")
            }),
        },
        Local::Primary(pg(false, "", None)),
        Local::Standby(pg(true, &WANT, Some("streaming"))),
        Local::Standby(pg(true, &WANT, None)),
        Local::Standby(pg(true, "host=elsewhere", Some("streaming"))),
        Local::Standby(pg(true, "", None)),
        Local::Standby(pg(true, "", Some("stopping"))),
        Local::Unknown("connection refused".into()),
        Local::Standby(PgState {
            timeline: None,
            ..pg(true, "", None)
        }),
        Local::Standby(PgState {
            timeline_pinned: true,
            ..pg(true, &WANT, None)
        }),
    ]
}

/// A clone that has not started yet (a backup_label in PGDATA) is started as a standby,
/// never rewound as the primary its control file describes: pg_rewind's single-user crash
/// recovery would write WAL of its own on the source's timeline, which streaming then
/// overwrote along with its checkpoint record (the 300 s tier, zombie-straddle, seed
/// 662009). Whether it is followed or reported from as a fenced member, it counts as a
/// standby.
#[test]
fn a_clone_not_started_yet_starts_as_a_standby_and_is_never_rewound() {
    let s = three_members(&boot("n1"));
    let clone = |from_backup| Local::Stopped {
        control: Some(Controldata {
            state: "in production".into(),
            timeline: Some(Timeline(1)),
            system_identifier: s.system_identifier,
            checkpoint_lsn: Some(0x500),
            wal_segment_size: Some(16 << 20),
            from_backup,
            ..Controldata::default()
        }),
    };
    let d = decide(&input("n3", &s, &clone(true), LeaseView::Expired));
    assert_eq!(d.actions, [start_standby()], "{}", d.reason);
    // Without the label, the same control file is a primary's that crashed: rewound.
    let d = decide(&input("n3", &s, &clone(false), LeaseView::Expired));
    assert!(
        d.actions.contains(&Action::Rewind { source: "n1".into() }),
        "{:?}: {}",
        d.actions,
        d.reason
    );
}

/// A standby that runs another conninfo than the one wanted is reloaded even when the
/// files already say the right one (`Reload`, not `Reconfigure`, which reloads only when
/// they change): a postmaster started before they were rewritten kept streaming from the
/// old upstream for good (CI, stop 30: a replica whose start was abandoned).
#[test]
fn a_standby_running_another_conninfo_is_reloaded_not_only_reconfigured() {
    let mut s = three_members(&boot("n1"));
    s.primary.as_mut().unwrap().timeline = Some(Timeline(1));
    for (running, streaming, want) in [
        ("host=elsewhere", Some("streaming"), [reload()]),
        ("host=elsewhere", None, [reload()]),
        (WANT.as_str(), Some("streaming"), [reconfigure()]),
    ] {
        let local = Local::Standby(pg(true, running, streaming));
        let d = decide(&input("n3", &s, &local, LeaseView::Expired));
        assert_eq!(d.actions, want, "{running} {streaming:?}: {}", d.reason);
    }
    // The slot upkeep that follows a render follows a reload too.
    let stale = vec!["raftpg_old".to_string()];
    let local = Local::Standby(pg(true, "host=elsewhere", Some("streaming")));
    let mut i = input("n3", &s, &local, LeaseView::Expired);
    i.stale_slots = &stale;
    assert_eq!(decide(&i).actions, [reload(), Action::DropSlots(stale.clone())]);
}

#[test]
fn a_standby_pinned_to_its_timeline_for_a_final_report_restarts_to_follow_the_new_one() {
    let mut s = three_members(&boot("n1"));
    s.primary.as_mut().unwrap().timeline = Some(Timeline(2));
    let pinned = Local::Standby(PgState {
        timeline_pinned: true,
        ..pg(true, &WANT, None)
    });
    let d = decide(&input("n3", &s, &pinned, LeaseView::Expired));
    assert_eq!(d.actions, [Action::Stop, start_standby()], "{}", d.reason);
    // Streaming, or on the primary's timeline already: nothing to restart for.
    let streaming = Local::Standby(PgState {
        timeline_pinned: true,
        ..pg(true, &WANT, Some("streaming"))
    });
    assert_eq!(
        decide(&input("n3", &s, &streaming, LeaseView::Expired)).actions,
        [reconfigure()]
    );
    s.primary.as_mut().unwrap().timeline = Some(Timeline(1));
    assert_eq!(
        decide(&input("n3", &s, &pinned, LeaseView::Expired)).actions,
        [reconfigure()]
    );
}

fn input<'a>(me: &'a str, state: &'a ClusterState, local: &'a Local, lease: LeaseView) -> AgentInput<'a> {
    AgentInput {
        me,
        state,
        local,
        lease,
        down_ms: 0,
        not_streaming_ms: 0,
        gate_lsn: None,
        upstream: Some(&UP),
        restart_requested: false,
        reinit_requested: false,
        fenced_hung: false,
        wal_end: None,
        receiver_lingering_ms: 0,
        disk_full: None,
        foreign_conf: false,
        adopt_configured: None,
        stale_slots: &[],
        inconsistent: None,
    }
}

#[test]
fn fresh_chosen_node_bootstraps_and_others_wait() {
    let s = three_members(&[Command::ChooseBootstrap { node: "n1".into() }]);
    let d = decide(&input("n1", &s, &Local::NoData, LeaseView::Acquiring));
    assert_eq!(
        d.actions,
        [
            Action::Initdb,
            Action::StartPrimary { gated: false },
            Action::ProposeBootstrap
        ]
    );
    let d = decide(&input("n2", &s, &Local::NoData, LeaseView::Acquiring));
    assert!(d.actions.is_empty());
    assert_eq!(d.reason, "waiting for n1 to bootstrap the cluster");
}

#[test]
fn standby_without_data_clones_then_starts() {
    let s = three_members(&boot("n1"));
    let d = decide(&input("n2", &s, &Local::NoData, LeaseView::Acquiring));
    assert_eq!(d.actions, [Action::Clone { from: "n1".into() }, start_standby()]);
    assert_eq!(d.reason, "no data directory: cloning from n1");
}

#[test]
fn primary_with_expired_lease_fences_and_tries_to_renew() {
    let s = three_members(&boot("n1"));
    let local = Local::Primary(pg(false, "", None));
    let d = decide(&input("n1", &s, &local, LeaseView::Expired));
    assert_eq!(d.actions, [Action::Fence]);
    assert!(d.renew_lease);
    assert!(
        d.reason.contains("lease as primary of generation 1 expired"),
        "{}",
        d.reason
    );
}

#[test]
fn crashed_primary_restarts_in_place_gated_while_within_the_bound() {
    let s = three_members(&boot("n1"));
    let crashed = Local::Stopped {
        control: Some(Controldata {
            state: "in production".into(),
            timeline: Some(Timeline(1)),
            checkpoint_lsn: Some(0x500),
            system_identifier: Some(9),
            wal_segment_size: Some(16 << 20),
            from_backup: false,
            ..Controldata::default()
        }),
    };
    let mut i = input("n1", &s, &crashed, LeaseView::Held);
    i.down_ms = 500;
    let d = decide(&i);
    assert_eq!(d.actions, [reconfigure(), Action::StartPrimary { gated: true }]);
    assert!(d.renew_lease);
    i.down_ms = s.ha.primary_restart_timeout_ms + 1;
    let d = decide(&i);
    assert!(d.actions.is_empty());
    assert!(
        !d.renew_lease,
        "past the bound the lease lapses so a standby is promoted"
    );
}

#[test]
fn primary_creates_missing_slots_and_drops_those_of_former_members() {
    let s = three_members(&boot("n1"));
    let mut state = pg(false, "", None);
    let local = Local::Primary(state.clone());
    assert_eq!(
        decide(&input("n1", &s, &local, LeaseView::Held)).actions,
        [reconfigure()],
        "every other member has its slot"
    );
    state.slots = vec!["raftpg_n2".into()];
    let local = Local::Primary(state.clone());
    assert_eq!(
        decide(&input("n1", &s, &local, LeaseView::Held)).actions,
        [reconfigure(), Action::EnsureSlots]
    );
    state.slots = vec![
        "raftpg_n2".into(),
        "raftpg_n3".into(),
        "raftpg_gone".into(),
        "backup".into(),
    ];
    let local = Local::Primary(state.clone());
    assert_eq!(
        decide(&input("n1", &s, &local, LeaseView::Held)).actions,
        [reconfigure(), Action::EnsureSlots],
        "a former member's slot is dropped"
    );
    state.slots = vec!["raftpg_n2".into(), "raftpg_n3".into(), "backup".into()];
    let local = Local::Primary(state);
    assert_eq!(
        decide(&input("n1", &s, &local, LeaseView::Held)).actions,
        [reconfigure()],
        "slots raftpg does not own are left alone"
    );
}

/// n1 primary, n3 streams from n2 (`replicatefrom=n2`).
fn cascading() -> ClusterState {
    let mut s = three_members(&boot("n1"));
    apply(
        &mut s,
        &Command::ChangeTags {
            name: "n3".into(),
            changes: vec![crate::cluster::TagChange::ReplicateFrom(Some("n2".into()))],
        },
    )
    .unwrap();
    s
}

#[test]
fn a_cascading_standby_streams_from_its_upstream_whose_slot_keeps_its_wal() {
    let s = cascading();
    assert_eq!(stream_from(&s, "n3", false), Some(("n2", true)));
    assert_eq!(stream_from(&s, "n3", true), Some(("n1", false)), "fallen back: no slot");
    assert_eq!(stream_from(&s, "n2", true), Some(("n1", true)), "not cascading");
    assert_eq!(stream_from(&s, "n1", false), None);
    // n2 keeps n3's slot, the primary only n2's.
    let mut n2 = pg(true, &WANT, Some("streaming"));
    let local = Local::Standby(n2.clone());
    assert_eq!(
        decide(&input("n2", &s, &local, LeaseView::Expired)).actions,
        [reconfigure(), Action::EnsureSlots]
    );
    n2.slots = vec!["raftpg_n3".into()];
    let local = Local::Standby(n2.clone());
    assert_eq!(
        decide(&input("n2", &s, &local, LeaseView::Expired)).actions,
        [reconfigure()]
    );
    let primary = Local::Primary(pg(false, "", None));
    assert_eq!(
        decide(&input("n1", &s, &primary, LeaseView::Held)).actions,
        [reconfigure(), Action::EnsureSlots],
        "the primary drops n3's slot"
    );
    // A standby left with slots from its time as primary drops them.
    let s = three_members(&boot("n1"));
    let mut old = pg(true, &WANT, Some("streaming"));
    old.slots = vec!["raftpg_n1".into(), "raftpg_n3".into(), "backup".into()];
    let local = Local::Standby(old);
    assert_eq!(
        decide(&input("n2", &s, &local, LeaseView::Expired)).actions,
        [reconfigure(), Action::EnsureSlots]
    );
}

#[test]
fn a_cascading_standby_falls_back_to_the_primary_and_tries_its_upstream_again() {
    use super::{CASCADE_FALLBACK_MS as F, CASCADE_RETRY_MS as R};
    let cases = [
        // (cascading, fallen back for, not streaming for) -> streams from the primary
        (false, None, 0, false),
        (false, None, F * 10, false),
        (false, Some(1), 0, false),
        (true, None, 0, false),
        (true, None, F - 1, false),
        (true, None, F, true),
        (true, Some(0), 0, true),
        (true, Some(R - 1), F * 10, true),
        (true, Some(R), 0, false),
    ];
    for (cascading, fallen, not_streaming, want) in cases {
        assert_eq!(
            cascade_falls_back(cascading, fallen, not_streaming),
            want,
            "{cascading} {fallen:?} {not_streaming}"
        );
    }
}

#[test]
fn crash_gate_opens_once_a_standby_holds_the_wal_end() {
    let s = three_members(&boot("n1"));
    let local = Local::Primary(pg(false, "", None));
    let mut i = input("n1", &s, &local, LeaseView::Held);
    i.gate_lsn = Some(100);
    assert!(decide(&i).actions.contains(&Action::OpenGate));
    i.gate_lsn = Some(101);
    let d = decide(&i);
    assert!(!d.actions.contains(&Action::OpenGate));
    assert!(d.reason.contains("clients wait"), "{}", d.reason);
}

#[test]
fn failover_standbys_stop_streaming_then_report_their_final_position() {
    let s = three_members(&[boot("n1"), vec![failover()]].concat());
    let streaming = Local::Standby(pg(true, &WANT, Some("streaming")));
    assert_eq!(
        decide(&input("n2", &s, &streaming, LeaseView::Acquiring)).actions,
        [Action::StopStreaming]
    );
    let stopped = Local::Standby(pg(true, "", None));
    let d = decide(&input("n2", &s, &stopped, LeaseView::Acquiring));
    assert!(d.actions.is_empty());
    assert_eq!(d.final_position, Some((90, Timeline(1))));
}

#[test]
fn old_primary_fences_when_its_generation_is_fenced() {
    let s = three_members(&[boot("n1"), vec![failover()]].concat());
    let local = Local::Primary(pg(false, "", None));
    let d = decide(&input("n1", &s, &local, LeaseView::Held));
    assert_eq!(d.actions, [Action::Fence]);
    assert_eq!(d.reason, "generation 1 was fenced: stopping my PostgreSQL at once");
}

#[test]
fn candidate_promotes_then_records_its_timeline() {
    let s = three_members(&[boot("n2"), vec![failover(), promote("n1")]].concat());
    let standby = Local::Standby(pg(true, "", None));
    let d = decide(&input("n1", &s, &standby, LeaseView::Acquiring));
    assert_eq!(d.actions, [reconfigure(), Action::Promote { candidate: true }]);
    let mut promoted = pg(false, "", None);
    promoted.timeline = Some(Timeline(2));
    let d = decide(&input("n1", &s, &Local::Primary(promoted), LeaseView::Acquiring));
    assert_eq!(
        d.actions,
        [Action::RecordTimeline {
            timeline: Timeline(2),
            write_lsn: Some(100)
        }]
    );
}

/// A candidate rewound onto a primary that moved on during the copy, and was then fenced,
/// has a minimum recovery point past its own WAL: started, it would never be consistent.
/// It declines, and reports its position like any fenced member (finding 17 of
/// docs/jepsen.md, chaos-multi: n3 needed 0/486F750 and held 0/486DA68, and was chosen 79
/// times). Its WAL reaching the point, or a point unknown, starts it as before.
#[test]
fn a_candidate_whose_wal_stops_short_of_consistency_declines() {
    let s = three_members(&[boot("n2"), vec![failover(), promote("n1")]].concat());
    let rewound = |min_recovery| Local::Stopped {
        control: Some(Controldata {
            state: "in archive recovery".into(),
            timeline: Some(Timeline(1)),
            system_identifier: Some(9),
            wal_segment_size: Some(16 << 20),
            min_recovery,
            min_recovery_timeline: Some(Timeline(1)),
            backup_end: min_recovery,
            ..Controldata::default()
        }),
    };
    let short = rewound(Some(0x486_F750));
    let mut i = input("n1", &s, &short, LeaseView::Acquiring);
    i.wal_end = Some((0x486_DA68, Timeline(1)));
    let d = decide(&i);
    let reason = "it cannot become consistent from its own WAL: recovery must reach 0/486F750 and its WAL ends at \
                  0/486DA68 on timeline 1";
    assert_eq!(d.actions, [Action::DeclineCandidacy { reason: reason.into() }]);
    assert_eq!(
        d.reason,
        format!("chosen to promote under generation 2, but {reason}: declining")
    );
    // The same database, as a fenced member, reports the position it holds.
    let d = decide(&AgentInput { me: "n3", ..i.clone() });
    assert_eq!(d.final_position, Some((0x486_DA68, Timeline(1))));
    for (local, wal_end) in [
        (rewound(Some(0x486_F750)), Some((0x486_F750, Timeline(1)))),
        (rewound(Some(0x486_F750)), None),
        (rewound(Some(0)), Some((0x486_DA68, Timeline(1)))),
        (rewound(None), Some((0x486_DA68, Timeline(1)))),
    ] {
        let mut i = input("n1", &s, &local, LeaseView::Acquiring);
        i.wal_end = wal_end;
        assert_eq!(decide(&i).actions, [start_standby()], "{local:?} {wal_end:?}");
    }
}

/// A standby rewound onto a primary that was fenced before it streamed up to its minimum
/// recovery point, when the next primary's timeline forked off before that point: PostgreSQL
/// refuses to start it ("requested timeline 19 does not contain minimum recovery point
/// 0/CC8E910 on timeline 18", the 300 s tier's chaos-multi at stop 33, where it was started
/// again and again). It is rewound onto the new primary first. A point before the fork, or
/// on the new timeline, starts as before.
#[test]
fn a_standby_whose_minimum_recovery_point_is_off_the_primarys_line_is_rewound() {
    let mut s = three_members(&[boot("n1"), vec![failover(), promote("n2")]].concat());
    apply(
        &mut s,
        &Command::RecordTimeline {
            generation: Generation(2),
            node: "n2".into(),
            timeline: Timeline(2),
            switch_lsn: Some(crate::types::Lsn(0x500)),
            parent_timeline: Some(Timeline(1)),
        },
    )
    .unwrap();
    let rewound = |min_recovery: (u64, u32)| Local::Stopped {
        control: Some(Controldata {
            state: "in archive recovery".into(),
            timeline: Some(Timeline(1)),
            checkpoint_lsn: Some(0x300),
            system_identifier: Some(9),
            wal_segment_size: Some(16 << 20),
            min_recovery: Some(min_recovery.0),
            min_recovery_timeline: Some(Timeline(min_recovery.1)),
            ..Controldata::default()
        }),
    };
    let past_fork = rewound((0x600, 1));
    let d = decide(&input("n3", &s, &past_fork, LeaseView::Expired));
    assert_eq!(d.actions, [Action::Rewind { source: "n2".into() }, start_standby()]);
    assert_eq!(
        d.reason,
        "my standby database must recover to 0/600 on timeline 1 to be consistent, which is not on n2's timeline 2 \
         (rewound onto a primary that was fenced before I streamed that far; if I lack the WAL up to it, pg_rewind \
         fails and I am re-cloned): rewinding, then following it"
    );
    for point in [(0x400, 1), (0x500, 1), (0x600, 2), (0, 0)] {
        let local = rewound(point);
        assert_eq!(
            decide(&input("n3", &s, &local, LeaseView::Expired)).actions,
            [start_standby()],
            "{point:x?}"
        );
    }
    // Started before the primary changed, it runs in recovery and refuses connections until
    // it is consistent, which it never will be on n2's line: stopped and rewound (the
    // simulation, seed 5026 with rewind_race). Only its control file tells.
    let refusing = Local::Unknown("FATAL: the database system is not yet accepting connections".into());
    let Local::Stopped { control: Some(c) } = rewound((0x600, 1)) else {
        unreachable!()
    };
    let mut i = input("n3", &s, &refusing, LeaseView::Expired);
    i.inconsistent = Some(&c);
    let d = decide(&i);
    assert_eq!(
        d.actions,
        [Action::Stop, Action::Rewind { source: "n2".into() }, start_standby()]
    );
    assert!(d.reason.contains("so it cannot become consistent"), "{}", d.reason);
    let Local::Stopped { control: Some(on_line) } = rewound((0x400, 1)) else {
        unreachable!()
    };
    // On the line, it is pointed at n2 to stream what it lacks; not known to be recovering,
    // it is left alone.
    let mut i = input("n3", &s, &refusing, LeaseView::Expired);
    i.inconsistent = Some(&on_line);
    let d = decide(&i);
    assert_eq!(d.actions, [reconfigure()]);
    assert_eq!(
        d.reason,
        "in recovery and not consistent until it reaches 0/400 on timeline 1: following n2"
    );
    i.inconsistent = None;
    assert!(decide(&i).actions.is_empty());
}

#[test]
fn returning_old_primary_is_rewound_and_a_clean_standby_just_starts() {
    let s = three_members(&[boot("n2"), vec![failover(), promote("n1")]].concat());
    let mut s = s;
    apply(
        &mut s,
        &Command::RecordTimeline {
            generation: Generation(2),
            node: "n1".into(),
            timeline: Timeline(2),
            switch_lsn: None,
            parent_timeline: None,
        },
    )
    .unwrap();
    let crashed_primary = Local::Stopped {
        control: Some(Controldata {
            state: "in production".into(),
            timeline: Some(Timeline(1)),
            checkpoint_lsn: Some(0x500),
            system_identifier: Some(9),
            wal_segment_size: Some(16 << 20),
            from_backup: false,
            ..Controldata::default()
        }),
    };
    let d = decide(&input("n2", &s, &crashed_primary, LeaseView::Expired));
    assert_eq!(d.actions, [Action::Rewind { source: "n1".into() }, start_standby()]);
    let clean_standby = Local::Stopped {
        control: Some(Controldata {
            state: "shut down in recovery".into(),
            timeline: Some(Timeline(1)),
            checkpoint_lsn: Some(0x500),
            system_identifier: Some(9),
            wal_segment_size: Some(16 << 20),
            from_backup: false,
            ..Controldata::default()
        }),
    };
    assert_eq!(
        decide(&input("n3", &s, &clean_standby, LeaseView::Expired)).actions,
        [start_standby()]
    );
    let mut diverged = pg(true, &WANT, None);
    diverged.timeline = Some(Timeline(1));
    let local = Local::Standby(diverged);
    let mut i = input("n3", &s, &local, LeaseView::Expired);
    i.not_streaming_ms = DIVERGED_AFTER_MS;
    assert_eq!(
        decide(&i).actions,
        [Action::Stop, Action::Rewind { source: "n1".into() }, start_standby()]
    );
}

#[test]
fn stray_primary_is_fenced_unless_paused() {
    let mut s = three_members(&boot("n1"));
    let local = Local::Primary(pg(false, "", None));
    assert_eq!(
        decide(&input("n2", &s, &local, LeaseView::Expired)).actions,
        [Action::Fence]
    );
    s.paused = true;
    assert!(decide(&input("n2", &s, &local, LeaseView::Expired)).actions.is_empty());
}

/// Every combination of inputs; the invariants hold in all of them.
#[test]
fn sweep_safety_invariants() {
    let leases = [LeaseView::Held, LeaseView::Acquiring, LeaseView::Expired];
    // Rewound onto a primary fenced before it streamed that far: off most states' lines.
    let short = Controldata {
        state: "in archive recovery".into(),
        timeline: Some(Timeline(1)),
        min_recovery: Some(0x700),
        min_recovery_timeline: Some(Timeline(1)),
        ..Controldata::default()
    };
    let mut cases = 0;
    let mut seen = Seen::new();
    for (name, state) in states() {
        for me in ["n1", "n2", "n3", "n9"] {
            for local in locals() {
                for lease in leases {
                    for down_ms in [0, 1_000_000] {
                        for not_streaming_ms in [0, DIVERGED_AFTER_MS] {
                            for gate_lsn in [None, Some(50), Some(500)] {
                                for want in [None, Some(&*UP)] {
                                    for (restart, reinit, fenced_hung, wal_end, lingering, disk_full, inconsistent) in [
                                        (false, false, false, None, 0, None, None),
                                        (false, false, false, None, 0, None, Some(&short)),
                                        (true, false, false, None, 0, None, None),
                                        (false, true, false, None, 0, None, None),
                                        (false, false, true, None, 0, None, None),
                                        (false, false, false, Some((0x600, Timeline(1))), 0, None, None),
                                        (false, false, false, None, RECEIVER_STOP_MS + 1, None, None),
                                        (false, false, false, None, 0, Some(FULL), None),
                                        (true, false, false, None, 0, Some(FULL), None),
                                        (false, true, false, None, 0, Some(FULL), None),
                                        (false, false, false, Some((0x600, Timeline(1))), 0, Some(FULL), None),
                                    ] {
                                        let stale = ["raftpg_n3".to_string(), "backup".to_string()];
                                        for (foreign_conf, stale_slots) in
                                            [(false, &[][..]), (true, &[][..]), (false, &stale[..])]
                                        {
                                            let i = AgentInput {
                                                me,
                                                state: &state,
                                                local: &local,
                                                lease,
                                                down_ms,
                                                not_streaming_ms,
                                                gate_lsn,
                                                upstream: want,
                                                restart_requested: restart,
                                                reinit_requested: reinit,
                                                fenced_hung,
                                                wal_end,
                                                receiver_lingering_ms: lingering,
                                                disk_full,
                                                foreign_conf,
                                                adopt_configured: None,
                                                stale_slots,
                                                inconsistent,
                                            };
                                            let d = decide(&i);
                                            check(&i, &d, name);
                                            let at =
                                                (Row::of(&wanted(&state, me), lease, state.paused), Column::of(&local));
                                            let cell = seen.entry(at).or_default();
                                            cell.0.extend(d.actions.iter().map(Action::kind));
                                            cell.1 |= d.renew_lease;
                                            cell.2 |= d.final_position.is_some();
                                            cell.3 |= d.actions.is_empty();
                                            cases += 1;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(cases > 100_000, "{cases}");
    the_table_is_exact(&seen);
}

/// Per cell of the table: the kinds of action taken, whether some decision renewed, and
/// whether some sent a final report.
type Seen = BTreeMap<(Row, Column), (BTreeSet<Kind>, bool, bool, bool)>;

/// Every decision of the sweep stayed inside `table::TABLE` (checked cell by cell), and
/// every entry of the table was taken by some decision: the table says exactly what
/// `decide` does. On a mismatch, prints the table the sweep saw, to paste into
/// `src/decide/table.rs` once the change is meant (then the README, see
/// `the_readme_shows_the_agent_table`).
fn the_table_is_exact(seen: &Seen) {
    let mut wrong = Vec::new();
    let mut observed = String::new();
    for r in Row::ALL {
        observed.push_str(&format!("    // {r:?}\n    ["));
        for c in Column::ALL {
            let (kinds, renews, reports, waits) = seen.get(&(r, c)).cloned().unwrap_or_default();
            let kinds: Vec<Kind> = kinds.into_iter().collect();
            let got = format!("cell(&{kinds:?}, {renews}, {reports}, {waits})");
            let want = table::at(r, c);
            if want.actions != kinds.as_slice()
                || want.renews != renews
                || want.reports_final != reports
                || want.waits != waits
            {
                wrong.push(format!("{r:?} x {c:?}: the table says {want:?}, the sweep saw {got}"));
            }
            observed.push_str(&got);
            observed.push_str(", ");
        }
        observed.push_str("],\n");
    }
    assert!(
        wrong.is_empty(),
        "decide and table::TABLE disagree:\n{}\nthe table the sweep saw:\n{observed}",
        wrong.join("\n")
    );
}

fn check(i: &AgentInput, d: &Decision, name: &str) {
    let ctx = || {
        format!(
            "state '{name}', me {}, local {:?}, lease {:?}: {d:?}",
            i.me, i.local, i.lease
        )
    };
    let role = wanted(i.state, i.me);
    let adopter = role == Wanted::Bootstrap && i.state.adopt.as_deref() == Some(i.me);
    assert!(!d.reason.is_empty(), "every decision has a reason: {}", ctx());
    // A database whose WAL stops short of its minimum recovery point is never started or
    // promoted as the candidate: it would never become consistent.
    let short =
        matches!(i.local, Local::Stopped { control: Some(c) } if i.wal_end.is_some_and(|e| c.short_of(e).is_some()));
    if role == Wanted::Candidate && short {
        assert!(
            matches!(d.actions[..], [Action::DeclineCandidacy { .. }]),
            "a candidate short of consistency did not decline: {}",
            ctx()
        );
    }
    // Unknown never leads to a promotion or a start as primary.
    if matches!(i.local, Local::Unknown(_)) {
        assert!(
            !d.actions
                .iter()
                .any(|a| matches!(a, Action::Promote { .. } | Action::StartPrimary { .. })),
            "Unknown acted as primary: {}",
            ctx()
        );
    }
    for a in &d.actions {
        match a {
            // No promotion without the candidacy of the current generation, or the lease.
            Action::Promote { candidate } => {
                assert!(
                    role == Wanted::Candidate
                        || (role == Wanted::Primary && i.lease == LeaseView::Held)
                        || (role == Wanted::Bootstrap && adopter),
                    "promotion without candidacy or lease: {}",
                    ctx()
                );
                // Only the candidate runs pre_promote and has its candidacy confirmed.
                assert_eq!(*candidate, role == Wanted::Candidate, "{}", ctx());
            }
            Action::StartPrimary { .. } => assert!(
                role == Wanted::Bootstrap
                    || (role == Wanted::Primary && (i.lease == LeaseView::Held || i.state.paused)),
                "started as primary without a lease: {}",
                ctx()
            ),
            Action::RecordTimeline { .. } => assert_eq!(role, Wanted::Candidate, "{}", ctx()),
            Action::ProposeBootstrap | Action::Initdb => {
                assert_eq!(role, Wanted::Bootstrap, "{}", ctx());
                assert!(
                    i.state.adopt.is_none(),
                    "initdb in a cluster that adopts a database: {}",
                    ctx()
                );
            }
            Action::AdoptConfig | Action::ProposeAdopted { .. } => assert!(adopter, "{}", ctx()),
            Action::DeclineCandidacy { .. } => {
                assert_eq!(role, Wanted::Candidate, "{}", ctx());
                assert!(short, "declined with a database that can become consistent: {}", ctx());
            }
            Action::OpenGate => assert_eq!(role, Wanted::Primary, "{}", ctx()),
            // Slots are kept by whoever others stream from: a primary, or a standby that
            // others cascade from; never during a primary change.
            Action::EnsureSlots | Action::DropSlots(_) => {
                assert!(matches!(role, Wanted::Primary | Wanted::Standby(_)), "{}", ctx())
            }
            _ => {}
        }
    }
    // A primary whose lease expired is fenced (unless paused).
    if role == Wanted::Primary && i.lease == LeaseView::Expired && !i.state.paused {
        if matches!(i.local, Local::Primary(_) | Local::Unknown(_)) {
            assert_eq!(d.actions, [Action::Fence], "{}", ctx());
        }
        assert!(
            !d.actions
                .iter()
                .any(|a| matches!(a, Action::StartPrimary { .. } | Action::Promote { .. })),
            "{}",
            ctx()
        );
    }
    // A running primary that the state does not name is fenced, unless paused.
    let named = role == Wanted::Primary || role == Wanted::Candidate || role == Wanted::Bootstrap;
    let follower = matches!(role, Wanted::Standby(_) | Wanted::OldPrimary | Wanted::Fenced);
    let draining = i
        .state
        .pending
        .as_ref()
        .is_some_and(|p| p.kind == crate::cluster::PendingKind::Switchover && p.candidate.is_none());
    if matches!(i.local, Local::Primary(_)) && !named && follower && !i.state.paused {
        if draining && role == Wanted::OldPrimary {
            assert!(matches!(d.actions.as_slice(), [Action::CleanStop { .. }]), "{}", ctx());
        } else {
            assert_eq!(d.actions, [Action::Fence], "{}", ctx());
        }
    }
    // Only a switchover's old primary stops cleanly; while it drains, nobody stops streaming.
    for a in &d.actions {
        match a {
            Action::CleanStop { .. } | Action::ReportStopped { .. } => {
                assert!(draining && role == Wanted::OldPrimary, "{}", ctx())
            }
            Action::StopStreaming => assert!(!draining, "{}", ctx()),
            Action::Clone { .. } | Action::Rewind { .. } => assert!(matches!(role, Wanted::Standby(_)), "{}", ctx()),
            _ => {}
        }
        // A clone discards the data directory: only an empty one, another system's, or
        // on request.
        if let Action::Clone { .. } = a {
            let other_system = matches!(i.local, Local::Stopped { control: Some(c) }
                if c.system_identifier.is_some() && c.system_identifier != i.state.system_identifier);
            assert!(
                matches!(i.local, Local::NoData) || other_system || i.reinit_requested,
                "{}",
                ctx()
            );
        }
    }
    // Only a proven commit renews a primary's lease; one that hung and was stopped renews
    // nothing, so the controller fails over instead of racing a restart in place.
    if role == Wanted::Primary && matches!(i.local, Local::Unknown(_)) {
        assert!(!d.renew_lease, "renewed on an unobservable PostgreSQL: {}", ctx());
    }
    if role == Wanted::Primary
        && i.fenced_hung
        && i.lease == LeaseView::Expired
        && !i.state.paused
        && !i.restart_requested
    {
        assert!(!d.renew_lease, "a hung primary asked for its lease back: {}", ctx());
    }
    // During a failover a hung standby is stopped, so it can give its final report.
    if role == Wanted::Fenced && matches!(i.local, Local::Unknown(_)) && !draining {
        assert_eq!(d.actions, [Action::Fence], "{}", ctx());
    }
    // A full disk: a stopped PostgreSQL is not started, rewound or cloned (it would only
    // fail again, in a loop), and a primary lets its lease go so that a standby takes over.
    // A re-clone, which discards the data first, is still done when asked for.
    let down = matches!(i.local, Local::Stopped { .. } | Local::NoData);
    if i.disk_full.is_some() && down && !i.state.paused && !i.reinit_requested {
        if matches!(role, Wanted::Primary | Wanted::Standby(_)) {
            assert!(
                !d.actions.iter().any(|a| matches!(
                    a,
                    Action::StartPrimary { .. }
                        | Action::StartStandby { .. }
                        | Action::Rewind { .. }
                        | Action::Clone { .. }
                )),
                "started on a full disk: {}",
                ctx()
            );
        }
        if role == Wanted::Primary {
            assert!(!d.renew_lease, "kept the lease on a full disk: {}", ctx());
            assert!(d.reason.contains(FULL), "{}", ctx());
        }
    }
    // Only the primary asks for the lease; only a fenced standby reports a final position.
    if d.renew_lease {
        assert_eq!(role, Wanted::Primary, "{}", ctx());
    }
    if d.final_position.is_some() {
        assert!(matches!(role, Wanted::Fenced | Wanted::OldPrimary), "{}", ctx());
        assert!(i.state.pending.is_some());
    }
    // A real position comes only from a standby that stopped streaming, or from a database
    // whose WAL is on a timeline no one recorded (a replaced candidate); "I hold nothing"
    // (timeline 0) only from a member without a standby's database, never the old primary.
    match d.final_position {
        Some((_, Timeline::NONE)) => {
            assert_eq!(role, Wanted::Fenced, "{}", ctx());
            assert!(
                match i.local {
                    Local::NoData => true,
                    Local::Stopped { control: Some(c) } => !c.was_standby(),
                    _ => false,
                },
                "{}",
                ctx()
            );
        }
        Some(at) => assert!(
            matches!(i.local, Local::Standby(pg) if pg.walreceiver.is_none() && pg.timeline.is_some())
                || matches!(i.local, Local::Stopped { control: Some(c) } if c.was_standby() && i.wal_end == Some(at))
                || matches!(i.local, Local::Stopped { control: Some(_) } if i.wal_end == Some(at)
                    && at.1 > i.state.history.iter().map(|h| h.timeline).max().unwrap_or(Timeline(0)))
                || matches!(i.local, Local::Stopped { control: Some(c) } if c.was_primary() && i.wal_end == Some(at)
                    && i.state.history.last().is_some_and(|h| h.from.as_deref() == Some(i.me) && at.1 < h.timeline)),
            "{}",
            ctx()
        ),
        None => {}
    }
    // During a failover every member but the old primary acts or reports: none waits
    // forever (a standby waits only for its receiver to stop, a database it cannot read
    // waits for the operator).
    if role == Wanted::Fenced && !draining && !i.state.paused && d.actions.is_empty() {
        let waits_briefly = match i.local {
            // Only for the receiver to stop (within a bound) or to read its timeline.
            Local::Standby(pg) => i.receiver_lingering_ms <= RECEIVER_STOP_MS || pg.walreceiver.is_none(),
            _ => false,
        };
        assert!(
            d.final_position.is_some() || waits_briefly || matches!(i.local, Local::Stopped { control: None }),
            "a member waits forever during a failover: {}",
            ctx()
        );
    }
}

const FULL: &str = "the filesystem of pg_wal (/data/pg_wal) is full: 3.0 MB free, less than one 16 MB WAL segment";

/// Issue 10 item 8: a primary whose pg_wal filled up is not restarted (it would stop
/// again at once) and stops renewing its lease, saying why; once failed over, it does
/// not rewind or start either, until there is room again.
#[test]
fn a_full_disk_stops_the_restarts_and_lets_the_lease_go() {
    let s = named_state("n1 primary");
    let crashed = stopped("in production", 1, 0x100);
    let mut i = input("n1", &s, &crashed, LeaseView::Held);
    i.disk_full = Some(FULL);
    let d = decide(&i);
    assert!(d.actions.is_empty(), "{d:?}");
    assert!(!d.renew_lease);
    assert!(
        d.reason.contains(FULL) && d.reason.contains("a standby is promoted"),
        "{}",
        d.reason
    );
    // With room again it restarts in place under its lease, as after any crash.
    i.disk_full = None;
    assert_eq!(
        decide(&i).actions,
        [reconfigure(), Action::StartPrimary { gated: true }]
    );
    // Failed over: the old primary waits for room instead of rewinding in a loop.
    let s = named_state("after switchover to n2");
    let mut i = input("n1", &s, &crashed, LeaseView::Expired);
    i.disk_full = Some(FULL);
    let d = decide(&i);
    assert!(d.actions.is_empty(), "{d:?}");
    assert!(
        d.reason.contains(FULL) && d.reason.contains("follow n2"),
        "{}",
        d.reason
    );
    i.disk_full = None;
    assert_eq!(
        decide(&i).actions,
        [Action::Rewind { source: "n2".into() }, start_standby()]
    );
}

fn named_state(name: &str) -> ClusterState {
    states().into_iter().find(|(n, _)| *n == name).expect("named state").1
}

fn stopped(state: &str, timeline: u32, checkpoint: u64) -> Local {
    Local::Stopped {
        control: Some(Controldata {
            state: state.into(),
            timeline: Some(Timeline(timeline)),
            checkpoint_lsn: Some(checkpoint),
            system_identifier: Some(9),
            wal_segment_size: Some(16 << 20),
            from_backup: false,
            ..Controldata::default()
        }),
    }
}

#[test]
fn switchover_old_primary_stops_cleanly_and_says_where_its_wal_ends() {
    let s = named_state("switchover n1 to n2");
    let running = Local::Primary(pg(false, "", None));
    assert_eq!(
        decide(&input("n1", &s, &running, LeaseView::Held)).actions,
        [Action::CleanStop { target: "n2".into() }]
    );
    let down = stopped("shut down", 1, 0x500);
    assert_eq!(
        decide(&input("n1", &s, &down, LeaseView::Expired)).actions,
        [Action::ReportStopped { lsn: 0x500 }]
    );
    let crashed = stopped("in production", 1, 0x500);
    assert!(decide(&input("n1", &s, &crashed, LeaseView::Expired))
        .actions
        .is_empty());
    let s = named_state("switchover, n1 stopped");
    assert!(
        decide(&input("n1", &s, &down, LeaseView::Expired)).actions.is_empty(),
        "reported once"
    );
}

#[test]
fn switchover_standbys_keep_streaming_until_the_target_is_told_to_promote() {
    let streaming = Local::Standby(pg(true, &WANT, Some("streaming")));
    for name in ["switchover n1 to n2", "switchover, n1 stopped"] {
        let s = named_state(name);
        for me in ["n2", "n3"] {
            let d = decide(&input(me, &s, &streaming, LeaseView::Expired));
            assert!(d.actions.is_empty(), "{name} {me}: {d:?}");
        }
    }
    let s = named_state("switchover, n2 candidate");
    assert_eq!(
        decide(&input("n2", &s, &streaming, LeaseView::Expired)).actions,
        [reconfigure(), Action::Promote { candidate: true }]
    );
}

#[test]
fn old_primary_follows_without_rewind_only_when_its_wal_ends_before_the_fork() {
    let s = named_state("after switchover to n2");
    let clean = stopped("shut down", 1, 0x500);
    assert_eq!(
        decide(&input("n1", &s, &clean, LeaseView::Expired)).actions,
        [start_standby()]
    );
    let past_fork = stopped("shut down", 1, 0x700);
    assert_eq!(
        decide(&input("n1", &s, &past_fork, LeaseView::Expired)).actions,
        [Action::Rewind { source: "n2".into() }, start_standby()]
    );
    let crashed = stopped("in production", 1, 0x500);
    assert_eq!(
        decide(&input("n1", &s, &crashed, LeaseView::Expired)).actions,
        [Action::Rewind { source: "n2".into() }, start_standby()]
    );
    assert_eq!(
        decide(&input("n3", &s, &clean, LeaseView::Expired)).actions,
        [Action::Rewind { source: "n2".into() }, start_standby()],
        "n3 was not the old primary: nothing says its WAL ends before the fork"
    );
}

#[test]
fn restart_and_reinit_requests() {
    let mut s = three_members(&boot("n1"));
    // Two restarts of n2 and one of n1 asked, one re-clone of n2: the actions that mark
    // them done carry the counts they serve.
    for cmd in [
        Command::Restart { node: "n2".into() },
        Command::Restart { node: "n2".into() },
        Command::Restart { node: "n1".into() },
        Command::Reinit { node: "n2".into() },
    ] {
        apply(&mut s, &cmd).unwrap();
    }
    let standby = Local::Standby(pg(true, &WANT, Some("streaming")));
    let mut i = input("n2", &s, &standby, LeaseView::Expired);
    i.restart_requested = true;
    assert_eq!(
        decide(&i).actions,
        [Action::Stop, start_standby(), Action::RestartDone { upto: 2 }]
    );
    i.reinit_requested = true;
    assert_eq!(
        decide(&i).actions,
        [
            Action::Fence,
            Action::Clone { from: "n1".into() },
            start_standby(),
            Action::ReinitDone { upto: 1 }
        ]
    );
    let primary = Local::Primary(pg(false, "", None));
    let mut i = input("n1", &s, &primary, LeaseView::Held);
    i.restart_requested = true;
    assert_eq!(
        decide(&i).actions,
        [
            Action::Stop,
            Action::StartPrimary { gated: false },
            Action::RestartDone { upto: 1 }
        ]
    );
    i.lease = LeaseView::Expired;
    assert_eq!(
        decide(&i).actions,
        [Action::Fence],
        "an expired lease wins over a restart"
    );
}

/// Found by the partition suite: the old primary of an earlier generation was rewinding
/// when the next failover began; the rewind and then the clone failed, leaving no
/// database, and the controller waited for its final report forever.
#[test]
fn a_member_without_a_standby_database_reports_that_it_holds_nothing() {
    let s = named_state("failover from n2");
    for local in [
        Local::NoData,
        stopped("in production", 1, 0x500),
        stopped("shut down", 1, 0x500),
    ] {
        let d = decide(&input("n1", &s, &local, LeaseView::Expired));
        assert_eq!(d.final_position, Some((0, Timeline::NONE)), "{local:?}: {d:?}");
        assert!(d.actions.is_empty(), "{local:?}: {d:?}");
    }
    // The old primary itself is not a standby of the fenced generation: it reports nothing.
    let d = decide(&input("n2", &s, &Local::NoData, LeaseView::Expired));
    assert_eq!(d.final_position, None, "{d:?}");
    // A replaced candidate's database, promoted to a timeline the history does not record,
    // holds what it received as a standby: it reports where its WAL ends (found by the
    // simulation, seed 593: it said "nothing", and a standby without an acknowledged
    // write was promoted).
    let promoted = stopped("in production", 1, 0x500);
    let mut i = input("n1", &s, &promoted, LeaseView::Expired);
    let recorded = s.history.iter().map(|h| h.timeline).max().unwrap_or(Timeline(0));
    i.wal_end = Some((0x600, recorded.next()));
    assert_eq!(decide(&i).final_position, Some((0x600, recorded.next())));
    i.wal_end = Some((0x600, recorded));
    assert_eq!(
        decide(&i).final_position,
        Some((0, Timeline::NONE)),
        "on a recorded timeline: an old primary"
    );
    // A standby's stopped database is started in recovery and reports its real position.
    let d = decide(&input(
        "n1",
        &s,
        &stopped("shut down in recovery", 1, 0x500),
        LeaseView::Expired,
    ));
    assert_eq!(d.actions, [start_standby()]);
}

/// A stopped standby reports the end of the WAL on its disk instead of starting: a
/// rewound standby that needs WAL to become consistent would never answer.
#[test]
fn a_stopped_standby_reports_the_wal_on_its_disk() {
    let s = named_state("failover from n2");
    let local = stopped("shut down in recovery", 1, 0x500);
    let mut i = input("n1", &s, &local, LeaseView::Expired);
    i.wal_end = Some((0x4038240, Timeline(2)));
    let d = decide(&i);
    assert_eq!(d.final_position, Some((0x4038240, Timeline(2))), "{d:?}");
    assert!(d.actions.is_empty());
}

/// Found by the partition suite (promote-laggard): a WAL receiver that hangs must not
/// hold the failover hostage once it has had its chance to stop.
#[test]
fn a_hung_wal_receiver_is_stopped_with_postgres_after_a_bound() {
    let s = named_state("failover from n2");
    let local = Local::Standby(pg(true, "", Some("streaming")));
    let mut i = input("n1", &s, &local, LeaseView::Expired);
    assert!(decide(&i).actions.is_empty(), "waits for the receiver at first");
    i.receiver_lingering_ms = RECEIVER_STOP_MS + 1;
    assert_eq!(decide(&i).actions, [Action::Fence]);
}

/// Seed 7206: n1 was primary before n2, which was elected holding n1's acknowledged writes
/// and then failed before its standbys streamed past its fork. n1's database, stopped as a
/// primary's and not rewound since, holds those writes: it reports where its WAL ends, and
/// not that it holds nothing. Rewound part-way (no WAL end read), or on n2's timeline, it
/// does not.
#[test]
fn the_primary_before_the_fenced_one_reports_the_wal_it_wrote() {
    let s = named_state("failover from n2 after n1");
    for state in ["in production", "shut down"] {
        let local = stopped(state, 1, 0x500);
        let mut i = input("n1", &s, &local, LeaseView::Expired);
        i.wal_end = Some((0x700, Timeline(1)));
        let d = decide(&i);
        assert_eq!(d.final_position, Some((0x700, Timeline(1))), "{state}: {d:?}");
        assert!(d.actions.is_empty(), "{d:?}");
        i.wal_end = None;
        assert_eq!(
            decide(&i).final_position,
            Some((0, Timeline::NONE)),
            "{state}: part rewound"
        );
        i.wal_end = Some((0x700, Timeline(2)));
        assert_eq!(
            decide(&i).final_position,
            Some((0, Timeline::NONE)),
            "{state}: on n2's timeline"
        );
    }
    // n3 was never primary: its stopped primary's database (a failed clone's) holds nothing.
    let local = stopped("in production", 1, 0x500);
    let mut i = input("n3", &s, &local, LeaseView::Expired);
    i.wal_end = Some((0x700, Timeline(1)));
    assert_eq!(decide(&i).final_position, Some((0, Timeline::NONE)));
}

fn of_system(state: &str, system: u64) -> Local {
    Local::Stopped {
        control: Some(Controldata {
            state: state.into(),
            timeline: Some(Timeline(2)),
            checkpoint_lsn: Some(0x500),
            system_identifier: Some(system),
            wal_segment_size: Some(16 << 20),
            from_backup: false,
            ..Controldata::default()
        }),
    }
}

#[test]
fn the_adopted_member_takes_over_its_database_without_initdb() {
    let s = adopting("n1", &[]);
    let mut i = input("n1", &s, &Local::NoData, LeaseView::Acquiring);
    // No database: never initdb, it would start an empty cluster.
    let d = decide(&i);
    assert!(d.actions.is_empty(), "{d:?}");
    assert!(d.reason.contains("not running initdb"), "{}", d.reason);
    // Running under its own configuration: stopped cleanly first.
    let running = Local::Primary(pg(false, "", None));
    i.local = &running;
    i.foreign_conf = true;
    assert_eq!(decide(&i).actions, [Action::Stop]);
    let unreachable = Local::Unknown("password authentication failed".into());
    i.local = &unreachable;
    assert_eq!(decide(&i).actions, [Action::Stop]);
    // Stopped: its files taken over, started as primary.
    let primary = of_system("shut down", 9);
    i.local = &primary;
    assert_eq!(
        decide(&i).actions,
        [Action::AdoptConfig, Action::StartPrimary { gated: false }]
    );
    // An unreadable control file: nothing is guessed.
    let unreadable = Local::Stopped { control: None };
    i.local = &unreadable;
    let d = decide(&i);
    assert!(d.actions.is_empty() && d.reason.contains("pg_controldata"), "{d:?}");
    // A standby whose primary is gone: started without one, then promoted.
    let standby = of_system("shut down in recovery", 9);
    i.local = &standby;
    assert_eq!(decide(&i).actions, [Action::AdoptConfig, start_standby()]);
    i.foreign_conf = false;
    let ours = Local::Standby(pg(true, "", None));
    i.local = &ours;
    assert_eq!(decide(&i).actions, [Action::Promote { candidate: false }]);
    // Running under raftpg as primary: recorded with the timeline it runs.
    let mut on_3 = pg(false, "", None);
    on_3.timeline = Some(Timeline(3));
    let adopted = Local::Primary(on_3);
    i.local = &adopted;
    assert_eq!(decide(&i).actions, [Action::ProposeAdopted { timeline: Timeline(3) }]);
    // Under raftpg's configuration but unreachable: waits, never stops it in a loop.
    i.local = &unreachable;
    let d = decide(&i);
    assert!(d.actions.is_empty(), "{d:?}");
    // The others wait.
    let d = decide(&input("n2", &s, &primary, LeaseView::Acquiring));
    assert!(d.actions.is_empty(), "{d:?}");
}

#[test]
fn after_adoption_members_clone_over_another_system_and_keep_their_own() {
    let s = adopting(
        "n1",
        &[Command::Adopted {
            node: "n1".into(),
            system_identifier: 9,
            timeline: Timeline(3),
        }],
    );
    let foreign = of_system("shut down", 7);
    assert_eq!(
        decide(&input("n2", &s, &foreign, LeaseView::Expired)).actions,
        [Action::Clone { from: "n1".into() }, start_standby()]
    );
    // Same system, was a standby: kept, started, rewound only if it diverged.
    let sibling = of_system("shut down in recovery", 9);
    assert_eq!(
        decide(&input("n3", &s, &sibling, LeaseView::Expired)).actions,
        [start_standby()]
    );
}

#[test]
fn a_node_configured_to_adopt_does_nothing_in_a_cluster_formed_without_it() {
    let s = three_members(&boot("n2"));
    let local = of_system("shut down", 7);
    let mut i = input("n1", &s, &local, LeaseView::Expired);
    assert_eq!(
        decide(&i).actions,
        [Action::Clone { from: "n2".into() }, start_standby()]
    );
    i.adopt_configured = Some("n1");
    let d = decide(&i);
    assert!(d.actions.is_empty(), "{d:?}");
    assert!(d.reason.contains("adopt"), "{}", d.reason);
}

fn with_slots(mut s: ClusterState) -> ClusterState {
    use crate::cluster::SlotKind;
    for (name, kind) in [
        ("backup", SlotKind::Physical),
        (
            "cdc",
            SlotKind::Logical {
                plugin: "pgoutput".into(),
                database: "app".into(),
            },
        ),
    ] {
        s.parameters.insert("wal_level".into(), "logical".into());
        apply(
            &mut s,
            &Command::AddSlot {
                name: name.into(),
                kind,
            },
        )
        .unwrap();
    }
    s
}

#[test]
fn every_primary_keeps_the_permanent_slots_and_no_standby_does() {
    let s = with_slots(three_members(&boot("n1")));
    let mut p = pg(false, "", None);
    p.slots = vec!["raftpg_n2".into(), "raftpg_n3".into()];
    let local = Local::Primary(p.clone());
    assert_eq!(
        decide(&input("n1", &s, &local, LeaseView::Held)).actions,
        [reconfigure(), Action::EnsureSlots],
        "missing permanent slots are created"
    );
    p.slots
        .extend(["backup".to_string(), "cdc".to_string(), "theirs".to_string()]);
    let local = Local::Primary(p.clone());
    assert_eq!(
        decide(&input("n1", &s, &local, LeaseView::Held)).actions,
        [reconfigure()],
        "all there; an operator's own slot is left alone"
    );
    // A removed slot is dropped by the primary.
    let mut removed = s.clone();
    apply(
        &mut removed,
        &Command::RemoveSlot {
            name: "cdc".into(),
            reason: "r".into(),
        },
    )
    .unwrap();
    assert_eq!(
        decide(&input("n1", &removed, &local, LeaseView::Held)).actions,
        [reconfigure(), Action::EnsureSlots]
    );
    assert!(!wanted_slots(&removed, "n1", true).contains("cdc"));
    assert!(manages_slot(&removed, "cdc") && !manages_slot(&removed, "theirs"));
    // A standby keeps none: a copy left from its time as primary is dropped.
    let mut sb = pg(true, &WANT, Some("streaming"));
    sb.slots = vec!["backup".into()];
    let local = Local::Standby(sb);
    assert_eq!(
        decide(&input("n2", &s, &local, LeaseView::Expired)).actions,
        [reconfigure(), Action::EnsureSlots]
    );
}

#[test]
fn a_slot_idle_past_the_ttl_is_dropped_and_only_if_raftpg_manages_it() {
    use crate::cluster::DEFAULT_SLOT_TTL_MS as TTL;
    let mut s = with_slots(three_members(&boot("n1")));
    let idle: std::collections::BTreeMap<String, u64> = [
        ("backup", TTL),
        ("cdc", TTL - 1),
        ("raftpg_n3", TTL * 2),
        ("theirs", TTL * 9),
    ]
    .into_iter()
    .map(|(n, ms)| (n.to_string(), ms))
    .collect();
    assert_eq!(stale_slots(&s, &idle), ["backup", "raftpg_n3"]);
    let stale = stale_slots(&s, &idle);
    let local = Local::Primary(pg(false, "", None));
    let mut i = input("n1", &s, &local, LeaseView::Held);
    i.stale_slots = &stale;
    assert_eq!(decide(&i).actions, [reconfigure(), Action::DropSlots(stale.clone())]);
    // A standby drops the stale slot of a member cascading from it too.
    let sb = Local::Standby(pg(true, &WANT, Some("streaming")));
    let mut i = input("n2", &s, &sb, LeaseView::Expired);
    i.stale_slots = &stale;
    assert_eq!(decide(&i).actions, [reconfigure(), Action::DropSlots(stale.clone())]);
    // slot_ttl_ms = 0: never.
    apply(
        &mut s,
        &Command::SetConfig {
            key: "slot_ttl_ms".into(),
            value: Some("0".into()),
        },
    )
    .unwrap();
    assert!(stale_slots(&s, &idle).is_empty());
    apply(
        &mut s,
        &Command::SetConfig {
            key: "slot_ttl_ms".into(),
            value: Some("1000".into()),
        },
    )
    .unwrap();
    assert_eq!(stale_slots(&s, &idle), ["backup", "cdc", "raftpg_n3"]);
    // Never during a failover: only the primary and following standbys act on slots.
    let failing = with_slots(three_members(&[boot("n1"), vec![failover()]].concat()));
    let mut i = input("n1", &failing, &local, LeaseView::Held);
    i.stale_slots = &stale;
    assert!(!decide(&i).actions.iter().any(|a| matches!(a, Action::DropSlots(_))));
}

/// A stopped standby database starts as a standby only when its last checkpoint is on the
/// new primary's line of timelines (the recorded history): one that was promoted by a
/// candidate that was then replaced ends on a sibling timeline, which PostgreSQL refuses to
/// start ("requested timeline does not contain minimum recovery point"): it is rewound
/// (the partition suite's pause-primary-pg-kill-raft-leader looped on the start for ever).
#[test]
fn a_stopped_standby_off_the_primarys_timeline_line_is_rewound_not_started() {
    let s = named_state("after switchover to n2");
    let decide_n3 = |local: Local| decide(&input("n3", &s, &local, LeaseView::Expired)).actions;
    let start = [start_standby()];
    let rewind = [Action::Rewind { source: "n2".into() }, start_standby()];
    assert_eq!(
        decide_n3(stopped("shut down in recovery", 1, 0x500)),
        start,
        "before the fork"
    );
    assert_eq!(
        decide_n3(stopped("shut down in recovery", 1, 0x600)),
        start,
        "at the fork"
    );
    assert_eq!(
        decide_n3(stopped("shut down in recovery", 2, 0x900)),
        start,
        "on the timeline"
    );
    assert_eq!(
        decide_n3(stopped("shut down in recovery", 1, 0x700)),
        rewind,
        "past the fork"
    );
    assert_eq!(
        decide_n3(stopped("in archive recovery", 3, 0x700)),
        rewind,
        "a later sibling"
    );
    // A history that does not know a timeline's parent cannot tell: the start is tried.
    let mut unknown = s.clone();
    for h in &mut unknown.history {
        h.parent_timeline = None;
    }
    let local = stopped("shut down in recovery", 1, 0x700);
    assert_eq!(
        decide(&input("n3", &unknown, &local, LeaseView::Expired)).actions,
        start
    );
}
