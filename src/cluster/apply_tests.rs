//! Table tests for every command, accepted and rejected, and a property sweep
//! over random command sequences that checks the state's invariants.

use proptest::prelude::*;

use super::*;
use crate::cluster::testing::{member, rejected, three_members};
use crate::cluster::{state::Tags, SyncConfig, SyncMode, TagChange};

fn initialized() -> ClusterState {
    three_members(&[])
}

fn bootstrapped() -> ClusterState {
    let mut s = initialized();
    apply(
        &mut s,
        &Command::Bootstrap {
            node: "n1".into(),
            system_identifier: 7,
        },
    )
    .unwrap();
    s
}

fn failover(generation: u64) -> Command {
    Command::BeginFailover {
        generation: Generation(generation),
        to: None,
        forced: false,
        reason: "lease expired".into(),
    }
}

fn tag_nofailover(s: &mut ClusterState, name: &str) {
    let tags = Tags {
        nofailover: true,
        failover_priority: 0,
    };
    apply(
        s,
        &Command::SetTags {
            name: name.into(),
            tags,
        },
    )
    .unwrap();
}

#[test]
fn commands_before_init_are_rejected() {
    let mut s = ClusterState::default();
    assert_eq!(rejected(&mut s, Command::Pause), Rejection::NotInitialized);
}

#[test]
fn init_once() {
    let mut s = initialized();
    assert_eq!(s.members.len(), 3);
    assert_eq!(s.revision, 1);
    let again = Command::Init { members: vec![] };
    assert_eq!(rejected(&mut s, again), Rejection::AlreadyInitialized);
}

#[test]
fn init_with_duplicate_ids_is_rejected() {
    let mut s = ClusterState::default();
    let cmd = Command::Init {
        members: vec![member("a", 1), member("b", 1)],
    };
    assert!(matches!(rejected(&mut s, cmd), Rejection::DuplicateId { id: 1, .. }));
}

#[test]
fn add_member_is_idempotent_and_checks_name_and_id() {
    let mut s = initialized();
    apply(
        &mut s,
        &Command::AddMember {
            member: member("n4", 4),
        },
    )
    .unwrap();
    apply(
        &mut s,
        &Command::AddMember {
            member: member("n4", 4),
        },
    )
    .unwrap();
    assert_eq!(s.members.len(), 4);
    let mut other = member("n4", 5);
    other.pg_addr = "elsewhere:1".into();
    assert_eq!(
        rejected(&mut s, Command::AddMember { member: other }),
        Rejection::DuplicateName("n4".into())
    );
    assert!(matches!(
        rejected(
            &mut s,
            Command::AddMember {
                member: member("n5", 2)
            }
        ),
        Rejection::DuplicateId { id: 2, .. }
    ));
}

#[test]
fn remove_member() {
    let mut s = bootstrapped();
    apply(
        &mut s,
        &Command::SetSyncStandbys {
            generation: Generation(1),
            standbys: vec!["n2".into(), "n3".into()],
        },
    )
    .unwrap();
    apply(&mut s, &Command::RemoveMember { name: "n3".into() }).unwrap();
    assert!(!s.members.contains_key("n3"));
    assert!(
        !s.sync_standbys.contains("n3"),
        "a removed member stays out of the sync set"
    );
    assert_eq!(
        rejected(&mut s, Command::RemoveMember { name: "n1".into() }),
        Rejection::IsPrimary("n1".into())
    );
    assert_eq!(
        rejected(&mut s, Command::RemoveMember { name: "zz".into() }),
        Rejection::UnknownMember("zz".into())
    );
}

#[test]
fn set_tags() {
    let mut s = initialized();
    let tags = Tags {
        nofailover: true,
        failover_priority: 3,
    };
    apply(
        &mut s,
        &Command::SetTags {
            name: "n2".into(),
            tags: tags.clone(),
        },
    )
    .unwrap();
    assert_eq!(s.members["n2"].tags, tags);
    let cmd = Command::SetTags {
        name: "nx".into(),
        tags,
    };
    assert_eq!(rejected(&mut s, cmd), Rejection::UnknownMember("nx".into()));
}

#[test]
fn bootstrap_once() {
    let mut s = bootstrapped();
    let p = s.primary.clone().unwrap();
    assert_eq!(
        (p.node.as_str(), p.generation, p.timeline),
        ("n1", Generation(1), Some(Timeline(1)))
    );
    assert_eq!(s.system_identifier, Some(7));
    assert_eq!(s.history.len(), 1);
    let again = Command::Bootstrap {
        node: "n2".into(),
        system_identifier: 8,
    };
    assert_eq!(rejected(&mut s, again), Rejection::AlreadyBootstrapped);
    let mut fresh = initialized();
    let unknown = Command::Bootstrap {
        node: "n9".into(),
        system_identifier: 8,
    };
    assert_eq!(rejected(&mut fresh, unknown), Rejection::UnknownMember("n9".into()));
}

#[test]
fn failover_fences_then_promotes_then_records() {
    let mut s = bootstrapped();
    apply(&mut s, &failover(1)).unwrap();
    assert_eq!(s.generation, Generation(2));
    assert_eq!(s.primary, None, "the old generation is fenced at once");
    assert_eq!(s.pending.as_ref().unwrap().from.as_deref(), Some("n1"));

    apply(
        &mut s,
        &Command::Promote {
            generation: Generation(2),
            node: "n2".into(),
        },
    )
    .unwrap();
    assert_eq!(s.pending.as_ref().unwrap().candidate.as_deref(), Some("n2"));

    let record = Command::RecordTimeline {
        generation: Generation(2),
        node: "n2".into(),
        timeline: Timeline(2),
        switch_lsn: Some(crate::types::Lsn(0x3000060)),
        parent_timeline: None,
    };
    apply(&mut s, &record).unwrap();
    let p = s.primary.clone().unwrap();
    assert_eq!(
        (p.node.as_str(), p.generation, p.timeline),
        ("n2", Generation(2), Some(Timeline(2)))
    );
    assert_eq!(s.pending, None);
    let h = s.history.last().unwrap();
    assert_eq!(
        (h.from.as_deref(), h.to.as_str(), h.timeline),
        (Some("n1"), "n2", Timeline(2))
    );
    assert_eq!(h.reason, "lease expired");

    // A retried record after success is accepted and changes nothing but the revision.
    let before = s.history.clone();
    apply(&mut s, &record).unwrap();
    assert_eq!(s.history, before);
}

#[test]
fn stale_generation_is_rejected_everywhere() {
    let mut s = bootstrapped();
    apply(&mut s, &failover(1)).unwrap();
    let stale = [
        failover(1),
        Command::BeginSwitchover {
            generation: Generation(1),
            to: "n2".into(),
            reason: "x".into(),
        },
        Command::Promote {
            generation: Generation(1),
            node: "n2".into(),
        },
        Command::RecordTimeline {
            generation: Generation(1),
            node: "n2".into(),
            timeline: Timeline(2),
            switch_lsn: None,
            parent_timeline: None,
        },
        Command::SetSyncStandbys {
            generation: Generation(1),
            standbys: vec![],
        },
    ];
    for cmd in stale {
        let err = rejected(&mut s, cmd);
        assert_eq!(
            err,
            Rejection::StaleGeneration {
                expected: Generation(1),
                actual: Generation(2)
            }
        );
    }
}

fn promote(generation: u64, node: &str) -> Command {
    Command::Promote {
        generation: Generation(generation),
        node: node.into(),
    }
}

/// Simulation seed 3107967: a candidate promoted, took timeline 2 and died before it
/// recorded it; its replacement took timeline 2 too (only recorded timelines had history
/// files), and the two never streamed from each other. Each replaced candidacy now puts
/// the timeline it may have taken out of reach; one that never promoted (a veto) does not,
/// nor does a failover before any candidate was named.
#[test]
fn a_replaced_candidate_may_have_taken_a_timeline_and_the_next_takes_a_newer_one() {
    let mut s = bootstrapped();
    apply(&mut s, &failover(1)).unwrap();
    apply(&mut s, &failover(2)).unwrap();
    assert_eq!(s.unrecorded_timeline, None, "no candidate was named");
    assert_eq!(s.newest_timeline_taken(), Timeline::FIRST);
    apply(&mut s, &promote(3, "n2")).unwrap();
    apply(&mut s, &failover(3)).unwrap();
    assert_eq!(s.unrecorded_timeline, Some(Timeline(2)));
    apply(&mut s, &promote(4, "n3")).unwrap();
    apply(&mut s, &failover(4)).unwrap();
    assert_eq!(s.unrecorded_timeline, Some(Timeline(3)), "two replaced candidacies");
    apply(&mut s, &promote(5, "n2")).unwrap();
    let veto = Command::VetoCandidate {
        generation: Generation(5),
        node: "n2".into(),
        reason: "pre_promote failed".into(),
    };
    apply(&mut s, &veto).unwrap();
    assert_eq!(s.unrecorded_timeline, Some(Timeline(3)), "a veto never promoted");
    apply(&mut s, &promote(6, "n3")).unwrap();
    let record = Command::RecordTimeline {
        generation: Generation(6),
        node: "n3".into(),
        timeline: Timeline(4),
        switch_lsn: None,
        parent_timeline: Some(Timeline::FIRST),
    };
    apply(&mut s, &record).unwrap();
    assert_eq!(s.newest_timeline_taken(), Timeline(4));
    let files = crate::postgres::recorded_histories(&s.history, s.newest_timeline_taken());
    assert_eq!(files.iter().map(|(t, _)| t.0).collect::<Vec<_>>(), [2, 3, 4]);
    // The next replaced candidate goes past the recorded timeline.
    apply(&mut s, &failover(6)).unwrap();
    apply(&mut s, &promote(7, "n1")).unwrap();
    apply(&mut s, &failover(7)).unwrap();
    assert_eq!(s.unrecorded_timeline, Some(Timeline(5)));
}

#[test]
fn a_second_failover_supersedes_one_without_candidate() {
    let mut s = bootstrapped();
    apply(&mut s, &failover(1)).unwrap();
    apply(&mut s, &failover(2)).unwrap();
    let p = s.pending.clone().unwrap();
    assert_eq!(
        (s.generation, p.from.as_deref()),
        (Generation(3), Some("n1")),
        "the old primary is kept"
    );
}

/// Issue 11's first dead end: a candidate that died between `Promote` and `RecordTimeline`
/// left the failover pending forever. In quorum mode it acknowledged nothing (no standby
/// streams from it before `RecordTimeline`), so a failover replaces it; the configuration
/// the fenced primary ran comes back, so the next election covers its commits again.
#[test]
fn a_candidate_that_never_recorded_its_timeline_is_replaced_in_quorum_mode() {
    let mut s = five_members();
    let fenced_config = s.sync_config();
    assert_eq!((fenced_config.standbys.len(), fenced_config.k), (4, 2));
    apply(&mut s, &failover(1)).unwrap();
    apply(&mut s, &promote(2, "n2")).unwrap();
    assert_eq!(s.sync_standbys, ["n1", "n3", "n4", "n5"].map(String::from).into());
    assert_eq!(
        s.sync_unconfirmed.last(),
        Some(&fenced_config),
        "kept for a replacement"
    );
    assert!(candidate_acknowledged_nothing(&s));
    // A retried Promote changes nothing; another candidate is refused.
    let before = s.clone();
    apply(&mut s, &promote(2, "n2")).unwrap();
    assert_eq!(
        (&s.sync_unconfirmed, &s.sync_standbys),
        (&before.sync_unconfirmed, &before.sync_standbys)
    );
    assert!(
        matches!(rejected(&mut s, promote(2, "n3")), Rejection::NotEligible { why, .. } if why.contains("n2 was already"))
    );
    // The controller replaces it.
    apply(&mut s, &failover(2)).unwrap();
    let p = s.pending.clone().unwrap();
    assert_eq!(
        (s.generation, p.from.as_deref(), p.candidate),
        (Generation(3), Some("n1"), None)
    );
    assert_eq!(
        s.sync_config(),
        fenced_config,
        "the fenced primary's configuration is current again"
    );
    // The old candidate's late record is stale; it may now be removed or re-cloned.
    let late = Command::RecordTimeline {
        generation: Generation(2),
        node: "n2".into(),
        timeline: Timeline(2),
        switch_lsn: None,
        parent_timeline: None,
    };
    assert!(matches!(rejected(&mut s, late), Rejection::StaleGeneration { .. }));
    apply(&mut s, &Command::Reinit { node: "n2".into() }).unwrap();
    // The new candidate completes; its record replaces the unconfirmed configurations by
    // the holders of the writes before its fork.
    apply(&mut s, &promote(3, "n3")).unwrap();
    apply(
        &mut s,
        &Command::RecordTimeline {
            generation: Generation(3),
            node: "n3".into(),
            timeline: Timeline(2),
            switch_lsn: None,
            parent_timeline: Some(Timeline(1)),
        },
    )
    .unwrap();
    assert_eq!(s.primary_name(), Some("n3"));
    assert_eq!(s.sync_unconfirmed, [sync(2, &["n1", "n3"])]);
    assert_eq!(s.history.last().unwrap().from.as_deref(), Some("n1"));
}

#[test]
fn in_asynchronous_mode_only_a_forced_failover_replaces_a_candidate() {
    let mut s = bootstrapped();
    apply(
        &mut s,
        &Command::SetConfig {
            key: "synchronous_mode".into(),
            value: Some("off".into()),
        },
    )
    .unwrap();
    apply(&mut s, &failover(1)).unwrap();
    // The mode the election and the replacement rest on is fixed until the change ends.
    let quorum = Command::SetConfig {
        key: "synchronous_mode".into(),
        value: Some("quorum".into()),
    };
    assert!(matches!(rejected(&mut s, quorum), Rejection::BadConfig(m) if m.contains("in progress")));
    apply(&mut s, &promote(2, "n2")).unwrap();
    assert!(
        !candidate_acknowledged_nothing(&s),
        "k = 0: it may have taken writes alone"
    );
    assert_eq!(rejected(&mut s, failover(2)), Rejection::AlreadyPending);
    let forced = Command::BeginFailover {
        generation: Generation(2),
        to: Some("n3".into()),
        forced: true,
        reason: "operator: n2 is down".into(),
    };
    apply(&mut s, &forced).unwrap();
    let p = s.pending.clone().unwrap();
    assert_eq!(
        (s.generation, p.to.as_deref(), p.forced),
        (Generation(3), Some("n3"), true)
    );
}

/// A retried `RecordTimeline` must not forget a configuration the primary has not confirmed.
#[test]
fn a_retried_record_keeps_unconfirmed_configurations() {
    let mut s = bootstrapped();
    apply(&mut s, &failover(1)).unwrap();
    apply(&mut s, &promote(2, "n2")).unwrap();
    let record = Command::RecordTimeline {
        generation: Generation(2),
        node: "n2".into(),
        timeline: Timeline(2),
        switch_lsn: None,
        parent_timeline: Some(Timeline(1)),
    };
    apply(&mut s, &record).unwrap();
    let set = Command::SetSyncStandbys {
        generation: Generation(2),
        standbys: vec!["n3".into()],
    };
    apply(&mut s, &set).unwrap();
    assert_eq!(
        s.sync_unconfirmed.len(),
        2,
        "the fork holders and n2's first configuration"
    );
    apply(&mut s, &record).unwrap();
    assert_eq!(s.sync_unconfirmed.len(), 2, "still unconfirmed");
}

fn sync(k: usize, standbys: &[&str]) -> crate::cluster::SyncConfig {
    crate::cluster::SyncConfig {
        standbys: standbys.iter().map(|n| n.to_string()).collect(),
        k,
    }
}

/// Seed 7206: until the new primary's standbys stream past its fork, the writes acknowledged
/// before it are on the new and the old primary only. The record keeps them as `ANY 2` of the
/// two; only `ConfirmSync` (proposed once k standbys flushed past the fork) ends that.
#[test]
fn a_recorded_timeline_keeps_the_holders_of_the_writes_before_its_fork() {
    let record = |node: &str, g| Command::RecordTimeline {
        generation: g,
        node: node.into(),
        timeline: Timeline(g.0 as u32),
        switch_lsn: Some(crate::types::Lsn(0x3000060)),
        parent_timeline: Some(Timeline(g.0 as u32 - 1)),
    };
    let mut s = bootstrapped();
    assert!(crate::cluster::fork_holders(&s).is_none(), "a bootstrap forks nothing");
    apply(&mut s, &failover(1)).unwrap();
    apply(&mut s, &promote(2, "n2")).unwrap();
    apply(&mut s, &record("n2", Generation(2))).unwrap();
    assert_eq!(s.sync_unconfirmed, [sync(2, &["n1", "n2"])]);
    let confirm = Command::ConfirmSync {
        generation: Generation(2),
        config: s.sync_config(),
    };
    apply(&mut s, &confirm).unwrap();
    assert!(s.sync_unconfirmed.is_empty());

    // The old primary cannot be removed in between (it holds the writes before the fork
    // and joins the new primary's set), so it is a holder.
    apply(&mut s, &failover(2)).unwrap();
    apply(&mut s, &promote(3, "n3")).unwrap();
    assert!(rejected(&mut s, Command::RemoveMember { name: "n2".into() })
        .to_string()
        .contains("old primary"));
    apply(&mut s, &record("n3", Generation(3))).unwrap();
    assert_eq!(s.sync_unconfirmed, [sync(2, &["n2", "n3"])]);

    // Asynchronous mode acknowledges nothing through standbys: nothing to keep.
    let mut s = bootstrapped();
    let off = Command::SetConfig {
        key: "synchronous_mode".into(),
        value: Some("off".into()),
    };
    apply(&mut s, &off).unwrap();
    apply(&mut s, &failover(1)).unwrap();
    apply(&mut s, &promote(2, "n2")).unwrap();
    apply(&mut s, &record("n2", Generation(2))).unwrap();
    assert!(s.sync_unconfirmed.is_empty());
}

fn five_members() -> ClusterState {
    let mut s = bootstrapped();
    for (name, id) in [("n4", 4), ("n5", 5)] {
        apply(
            &mut s,
            &Command::AddMember {
                member: member(name, id),
            },
        )
        .unwrap();
    }
    let standbys = vec!["n2".into(), "n3".into(), "n4".into(), "n5".into()];
    apply(
        &mut s,
        &Command::SetSyncStandbys {
            generation: Generation(1),
            standbys,
        },
    )
    .unwrap();
    let config = s.sync_config();
    apply(
        &mut s,
        &Command::ConfirmSync {
            generation: Generation(1),
            config,
        },
    )
    .unwrap();
    s
}

#[test]
fn promote_rules() {
    let mut s = bootstrapped();
    assert_eq!(
        rejected(
            &mut s,
            Command::Promote {
                generation: Generation(1),
                node: "n2".into()
            }
        ),
        Rejection::NothingPending
    );
    tag_nofailover(&mut s, "n3");
    apply(&mut s, &failover(1)).unwrap();
    assert!(matches!(
        rejected(
            &mut s,
            Command::Promote {
                generation: Generation(2),
                node: "n3".into()
            }
        ),
        Rejection::NotEligible { .. }
    ));
    assert_eq!(
        rejected(
            &mut s,
            Command::Promote {
                generation: Generation(2),
                node: "n9".into()
            }
        ),
        Rejection::UnknownMember("n9".into())
    );
    // Only the promoted candidate may record a timeline.
    let wrong = Command::RecordTimeline {
        generation: Generation(2),
        node: "n2".into(),
        timeline: Timeline(2),
        switch_lsn: None,
        parent_timeline: None,
    };
    assert!(matches!(rejected(&mut s, wrong), Rejection::NotEligible { .. }));
}

#[test]
fn forced_failover_may_promote_nofailover_member() {
    let mut s = bootstrapped();
    tag_nofailover(&mut s, "n3");
    let forced = Command::BeginFailover {
        generation: Generation(1),
        to: Some("n3".into()),
        forced: true,
        reason: "operator".into(),
    };
    apply(&mut s, &forced).unwrap();
    assert!(matches!(
        rejected(
            &mut s,
            Command::Promote {
                generation: Generation(2),
                node: "n2".into()
            }
        ),
        Rejection::NotEligible { .. }
    ));
    apply(
        &mut s,
        &Command::Promote {
            generation: Generation(2),
            node: "n3".into(),
        },
    )
    .unwrap();
}

#[test]
fn switchover_rules() {
    let mut s = initialized();
    let sw = |to: &str| Command::BeginSwitchover {
        generation: Generation(0),
        to: to.into(),
        reason: "planned".into(),
    };
    assert_eq!(rejected(&mut s, sw("n2")), Rejection::NoPrimary);
    let mut s = bootstrapped();
    let sw = |to: &str| Command::BeginSwitchover {
        generation: Generation(1),
        to: to.into(),
        reason: "planned".into(),
    };
    assert!(matches!(rejected(&mut s, sw("n1")), Rejection::NotEligible { .. }));
    assert_eq!(rejected(&mut s, sw("n7")), Rejection::UnknownMember("n7".into()));
    apply(&mut s, &sw("n3")).unwrap();
    let p = s.pending.clone().unwrap();
    assert_eq!(
        (p.kind, p.from.as_deref(), p.to.as_deref()),
        (PendingKind::Switchover, Some("n1"), Some("n3"))
    );
}

#[test]
fn sync_standbys_must_be_members_and_not_primary() {
    let mut s = bootstrapped();
    let set = |v: &[&str]| Command::SetSyncStandbys {
        generation: Generation(1),
        standbys: v.iter().map(|x| x.to_string()).collect(),
    };
    assert_eq!(rejected(&mut s, set(&["n1"])), Rejection::IsPrimary("n1".into()));
    assert_eq!(
        rejected(&mut s, set(&["n2", "nz"])),
        Rejection::UnknownMember("nz".into())
    );
    apply(&mut s, &set(&["n2", "n3"])).unwrap();
    assert_eq!(s.sync_standbys.len(), 2);
    let mut fresh = initialized();
    let early = Command::SetSyncStandbys {
        generation: Generation(0),
        standbys: vec!["n2".into()],
    };
    assert_eq!(rejected(&mut fresh, early), Rejection::NoPrimary);
}

#[test]
fn pause_resume_and_config() {
    let mut s = initialized();
    apply(&mut s, &Command::Pause).unwrap();
    assert!(s.paused);
    apply(&mut s, &Command::Resume).unwrap();
    assert!(!s.paused);
    let set = |k: &str, v: Option<&str>| Command::SetConfig {
        key: k.into(),
        value: v.map(str::to_string),
    };
    apply(&mut s, &set("synchronous_mode", Some("off"))).unwrap();
    assert_eq!(s.ha.synchronous_mode, SyncMode::Off);
    apply(&mut s, &set("postgresql.parameters.work_mem", Some("8MB"))).unwrap();
    assert_eq!(s.config_pairs()["postgresql.parameters.work_mem"], "8MB");
    apply(&mut s, &set("postgresql.parameters.work_mem", None)).unwrap();
    assert!(!s.parameters.contains_key("work_mem"));
    assert!(matches!(
        rejected(&mut s, set("lease_ms", Some("fast"))),
        Rejection::BadConfig(_)
    ));
    assert!(matches!(
        rejected(&mut s, set("bogus", Some("1"))),
        Rejection::BadConfig(_)
    ));
    assert!(matches!(
        rejected(&mut s, set("postgresql.parameters.bad name", Some("1"))),
        Rejection::BadConfig(_)
    ));
}

/// Issue 12: a committed `SetConfig` reaches every node's postgresql.conf, so the state
/// itself refuses what runs commands, loads code or names files, whoever proposed it and
/// whatever the case of the name; names are kept as PostgreSQL reads them.
#[test]
fn the_state_refuses_parameters_outside_the_sandbox_and_hostile_member_names() {
    let mut s = bootstrapped();
    let set = |k: &str, v: Option<&str>| Command::SetConfig {
        key: format!("postgresql.parameters.{k}"),
        value: v.map(str::to_string),
    };
    for name in [
        "archive_command",
        "ARCHIVE_COMMAND",
        "include",
        "shared_preload_libraries",
        "hba_file",
    ] {
        let before = s.clone();
        assert!(
            matches!(rejected(&mut s, set(name, Some("x"))), Rejection::BadConfig(m) if m.contains("cannot be set")),
            "{name}"
        );
        assert_eq!(s, before);
    }
    apply(&mut s, &set("Work_Mem", Some("8MB"))).unwrap();
    apply(&mut s, &set("WORK_MEM", Some("16MB"))).unwrap();
    assert_eq!(s.parameters, [("work_mem".to_string(), "16MB".to_string())].into());
    // A state written before the sandbox may hold a refused name: it can still be reset.
    s.parameters.insert("Archive_Command".into(), "x".into());
    apply(&mut s, &set("archive_command", None)).unwrap();
    assert!(!s.parameters.keys().any(|k| k.eq_ignore_ascii_case("archive_command")));
    // The number of parameters is bounded.
    for i in s.parameters.len()..crate::cluster::params::MAX_PARAMETERS {
        apply(&mut s, &set(&format!("x.p{i}"), Some("1"))).unwrap();
    }
    assert!(matches!(rejected(&mut s, set("x.more", Some("1"))), Rejection::BadConfig(m) if m.contains("reset one")));
    apply(&mut s, &set("x.p150", Some("2"))).unwrap();

    for name in ["a\"b", "x/../y", "", "a\nb"] {
        let add = Command::AddMember {
            member: member(name, 9),
        };
        assert!(
            matches!(rejected(&mut s, add), Rejection::BadConfig(m) if m.contains("not a valid member name")),
            "{name:?}"
        );
    }
}

fn arb_command() -> impl Strategy<Value = Command> {
    let name = prop::sample::select(vec!["n1", "n2", "n3", "n4", "nx"]).prop_map(str::to_string);
    let generation = 0u64..5;
    prop_oneof![
        (name.clone(), 1u64..6).prop_map(|(n, id)| Command::AddMember { member: member(&n, id) }),
        name.clone().prop_map(|name| Command::RemoveMember { name }),
        (name.clone(), any::<bool>()).prop_map(|(name, nofailover)| Command::SetTags {
            name,
            tags: Tags {
                nofailover,
                failover_priority: 0
            }
        }),
        (name.clone(), any::<bool>(), any::<bool>()).prop_map(|(name, flag, on)| Command::ChangeTags {
            name,
            changes: vec![TagChange::Flag(
                if flag {
                    crate::cluster::Flag::NoSync
                } else {
                    crate::cluster::Flag::NoLoadBalance
                },
                on
            )],
        }),
        (name.clone(), prop::option::of(name.clone())).prop_map(|(name, upstream)| Command::ChangeTags {
            name,
            changes: vec![TagChange::ReplicateFrom(upstream)],
        }),
        name.clone().prop_map(|node| Command::Bootstrap {
            node,
            system_identifier: 1
        }),
        (generation.clone(), prop::option::of(name.clone()), any::<bool>()).prop_map(|(generation, to, forced)| {
            Command::BeginFailover {
                generation: Generation(generation),
                to,
                forced,
                reason: "p".into(),
            }
        }),
        (generation.clone(), name.clone()).prop_map(|(generation, to)| Command::BeginSwitchover {
            generation: Generation(generation),
            to,
            reason: "p".into()
        }),
        (generation.clone(), name.clone()).prop_map(|(generation, node)| Command::Promote {
            generation: Generation(generation),
            node
        }),
        (generation.clone(), name.clone(), 1u32..5).prop_map(|(generation, node, timeline)| {
            Command::RecordTimeline {
                generation: Generation(generation),
                node,
                timeline: Timeline(timeline),
                switch_lsn: None,
                parent_timeline: None,
            }
        }),
        (generation.clone(), prop::collection::vec(name.clone(), 0..3)).prop_map(|(generation, standbys)| {
            Command::SetSyncStandbys {
                generation: Generation(generation),
                standbys,
            }
        }),
        Just(Command::Pause),
        Just(Command::Resume),
        name.clone().prop_map(|node| Command::ChooseBootstrap { node }),
        (generation, name.clone()).prop_map(|(generation, node)| Command::VetoCandidate {
            generation: Generation(generation),
            node,
            reason: "p".into()
        }),
        (name.clone(), 1u32..5).prop_map(|(node, timeline)| Command::Adopted {
            node,
            system_identifier: 1,
            timeline: Timeline(timeline)
        }),
        prop::sample::select(vec!["quorum", "degradable", "off"]).prop_map(|mode| Command::SetConfig {
            key: "synchronous_mode".into(),
            value: Some(mode.into()),
        }),
        (
            0u64..5,
            prop::collection::vec(name.clone(), 0..3),
            prop::option::of(0u64..1000)
        )
            .prop_map(|(generation, streaming, lsn)| Command::Degrade {
                generation: Generation(generation),
                streaming,
                at_unix_ms: 1,
                lsn,
            }),
        (0u64..5).prop_map(|generation| Command::Undegrade {
            generation: Generation(generation)
        }),
        (0u64..5, prop::collection::vec(name, 0..3), 0usize..3).prop_map(|(generation, standbys, k)| {
            Command::ConfirmSync {
                generation: Generation(generation),
                config: SyncConfig {
                    standbys: standbys.into_iter().collect(),
                    k,
                },
            }
        }),
    ]
}

proptest! {
    #[test]
    fn invariants_hold_for_any_command_sequence(cmds in prop::collection::vec(arb_command(), 0..60)) {
        let mut s = initialized();
        let mut accepted = s.revision;
        for cmd in &cmds {
            let before = s.clone();
            match apply(&mut s, cmd) {
                Ok(a) => { accepted += 1; prop_assert_eq!(a.revision, accepted); }
                Err(_) => prop_assert_eq!(&s, &before),
            }
            prop_assert!(s.generation >= before.generation, "generation went backwards");
            if let Some(p) = &s.primary {
                prop_assert_eq!(p.generation, s.generation, "a primary always holds the current generation");
                prop_assert!(s.members.contains_key(&p.node));
                prop_assert!(s.pending.is_none(), "no primary while a change is pending");
                if before.primary.as_ref().map(|b| &b.node) != Some(&p.node) {
                    // A new primary comes only from a promoted candidate or bootstrap.
                    let via_candidate = before.pending.as_ref().and_then(|x| x.candidate.as_ref()) == Some(&p.node);
                    prop_assert!(via_candidate || before.generation == Generation(0));
                }
            }
            for sb in &s.sync_standbys {
                prop_assert!(s.members.contains_key(sb));
                prop_assert!(s.primary_name() != Some(sb.as_str()));
            }
            // Tags belong to members, and nosync always leaves two members that may be
            // synchronous standbys.
            prop_assert!(s.flags.keys().all(|n| s.members.contains_key(n)));
            prop_assert!(s.flags.values().all(|f| !f.is_empty()));
            let restricted = s.members.keys().filter(|n| s.has_flag(n, crate::cluster::Flag::NoSync) || s.upstreams.contains_key(*n)).count();
            let free = s.members.keys().filter(|n| s.may_be_sync(n)).count();
            prop_assert!(restricted == 0 || free >= 2, "{:?} {:?}", s.flags, s.upstreams);
            // replicatefrom names another member, and no chain of them loops.
            for (n, u) in &s.upstreams {
                prop_assert!(s.members.contains_key(n) && s.members.contains_key(u) && n != u, "{:?}", s.upstreams);
                let mut at = u.as_str();
                for _ in 0..s.members.len() {
                    prop_assert!(at != n.as_str(), "a loop through {n}: {:?}", s.upstreams);
                    match s.replicates_from(at) {
                        Some(next) => at = next,
                        None => break,
                    }
                }
            }
            // Every standby has a source, and the primary keeps the slots of all that stream from it.
            if let Some(p) = s.primary_name() {
                for m in s.members.keys().filter(|m| *m != p) {
                    let src = s.source_of(m).expect("a standby has a source");
                    prop_assert!(src != m.as_str() && s.members.contains_key(src));
                    prop_assert!(s.slots_kept_by(src).contains(m));
                }
            }
        }
        prop_assert_eq!(s.revision, accepted);
    }

    /// A degraded window belongs to degradable (or, returning, quorum) mode; while it is
    /// open and not returning the primary runs asynchronously; the set of those that
    /// streamed throughout only shrinks; and it ends only when the primary confirms a
    /// quorum, a new primary is recorded, or the mode becomes asynchronous.
    #[test]
    fn a_degraded_window_keeps_its_rules_under_any_command_sequence(cmds in prop::collection::vec(arb_command(), 0..60)) {
        let mut s = bootstrapped();
        for cmd in &cmds {
            let before = s.clone();
            if apply(&mut s, cmd).is_err() {
                continue;
            }
            let Some(d) = &s.degraded else {
                if before.degraded.is_some() {
                    let ended = matches!(cmd, Command::ConfirmSync { config, .. } if config.k > 0)
                        || matches!(cmd, Command::RecordTimeline { .. })
                        || s.ha.synchronous_mode == SyncMode::Off;
                    prop_assert!(ended, "the window ended on {}", cmd);
                }
                continue;
            };
            prop_assert!(s.ha.synchronous_mode != SyncMode::Off);
            prop_assert!(d.streaming.iter().all(|n| s.members.contains_key(n)));
            // Only the degraded primary runs asynchronously; a candidate of a failover in the
            // window runs its quorum.
            prop_assert_eq!(s.sync_quorum() == 0, !d.restoring && d.generation == s.generation || s.full_quorum() == 0);
            match &before.degraded {
                Some(b) => prop_assert!(d.streaming.is_subset(&b.streaming), "{} grew the window's set", cmd),
                None => prop_assert!(matches!(cmd, Command::Degrade { .. }), "{} opened a window", cmd),
            }
        }
    }

    /// A cluster formed to adopt n1's database: whatever is proposed, nobody else becomes
    /// the first primary, no initdb'd database is recorded, and n1 stays until it is recorded.
    #[test]
    fn an_adopting_cluster_only_ever_starts_from_the_adopted_database(cmds in prop::collection::vec(arb_command(), 0..60)) {
        let mut s = crate::cluster::testing::adopting("n1", &[]);
        for cmd in &cmds {
            let before = s.clone();
            let accepted = apply(&mut s, cmd).is_ok();
            // The first primary: later ones follow the adopted database's switchovers and
            // failovers, where the primary is none between BeginSwitchover and RecordTimeline.
            if accepted && before.system_identifier.is_none() && s.primary.is_some() {
                prop_assert!(matches!(cmd, Command::Adopted { node, .. } if node == "n1"), "{}", cmd);
                prop_assert!(s.sync_standbys.is_empty());
            }
            prop_assert!(!(accepted && matches!(cmd, Command::Bootstrap { .. })), "{}", cmd);
            if s.system_identifier.is_none() {
                prop_assert!(s.members.contains_key("n1"));
                prop_assert_eq!(s.bootstrap_node.as_deref(), Some("n1"));
            }
            prop_assert_eq!(s.adopt.as_deref(), Some("n1"));
        }
    }
}

#[test]
fn switchover_stop_restart_reinit_and_sync_confirmation() {
    let mut s = bootstrapped();
    assert!(matches!(
        rejected(&mut s, Command::Reinit { node: "n1".into() }),
        Rejection::IsPrimary(_)
    ));
    apply(&mut s, &Command::Reinit { node: "n2".into() }).unwrap();
    apply(&mut s, &Command::Restart { node: "n1".into() }).unwrap();
    assert_eq!((s.reinits["n2"], s.restarts["n1"]), (1, 1));
    // Shrinking the sync set keeps the old configuration until the primary confirms.
    let before = s.sync_config();
    apply(
        &mut s,
        &Command::SetSyncStandbys {
            generation: Generation(1),
            standbys: vec!["n2".into()],
        },
    )
    .unwrap();
    assert_eq!(s.sync_unconfirmed, [before]);
    let wrong = Command::ConfirmSync {
        generation: Generation(1),
        config: s.sync_unconfirmed[0].clone(),
    };
    assert!(matches!(rejected(&mut s, wrong), Rejection::BadConfig(_)));
    let config = s.sync_config();
    apply(
        &mut s,
        &Command::ConfirmSync {
            generation: Generation(1),
            config,
        },
    )
    .unwrap();
    assert!(s.sync_unconfirmed.is_empty());
    // Only the old primary of a switchover reports its clean stop.
    apply(
        &mut s,
        &Command::BeginSwitchover {
            generation: Generation(1),
            to: "n2".into(),
            reason: "planned".into(),
        },
    )
    .unwrap();
    let stop = |node: &str| Command::SwitchoverStopped {
        generation: Generation(2),
        node: node.into(),
        lsn: 0x500,
    };
    assert!(matches!(rejected(&mut s, stop("n2")), Rejection::NotEligible { .. }));
    apply(&mut s, &stop("n1")).unwrap();
    assert_eq!(s.pending.as_ref().unwrap().stop_lsn, Some(0x500));
}

/// A switchover whose old primary stopped cleanly and whose target, told to promote, never
/// recorded a timeline becomes a failover that keeps where the old primary stopped: the
/// election may promote any member past it (`ElectionInput::clean_stop`).
#[test]
fn a_switchover_turned_failover_keeps_the_old_primarys_clean_stop() {
    let mut s = bootstrapped();
    apply(
        &mut s,
        &Command::BeginSwitchover {
            generation: Generation(1),
            to: "n2".into(),
            reason: "planned".into(),
        },
    )
    .unwrap();
    let stopped = Command::SwitchoverStopped {
        generation: Generation(2),
        node: "n1".into(),
        lsn: 0x500,
    };
    apply(&mut s, &stopped).unwrap();
    apply(&mut s, &promote(2, "n2")).unwrap();
    apply(&mut s, &failover(2)).unwrap();
    let p = s.pending.as_ref().unwrap();
    assert_eq!(
        (p.kind, p.from.as_deref(), p.stop_lsn),
        (PendingKind::Failover, Some("n1"), Some(0x500))
    );
    // And through a second replacement.
    apply(&mut s, &promote(3, "n3")).unwrap();
    apply(&mut s, &failover(3)).unwrap();
    assert_eq!(s.pending.as_ref().unwrap().stop_lsn, Some(0x500));
    // A failover of a primary that did not stop cleanly knows no such position.
    let mut s = bootstrapped();
    apply(&mut s, &failover(1)).unwrap();
    assert_eq!(s.pending.as_ref().unwrap().stop_lsn, None);
}

/// Found by the simulation (seed 844): the member chosen to bootstrap started with the
/// synchronous configuration of a state without a primary (none), so the first primary
/// acknowledged writes on no standby until its next reconfiguration.
#[test]
fn the_member_chosen_to_bootstrap_runs_the_quorum_that_bootstrap_records() {
    let mut s = initialized();
    apply(&mut s, &Command::ChooseBootstrap { node: "n1".into() }).unwrap();
    assert_eq!(s.sync_config().k, 0, "nothing recorded yet");
    let before = s.sync_config_for("n1");
    assert_eq!((before.standbys.len(), before.k), (2, 1));
    assert_eq!(s.sync_config_for("n2"), s.sync_config(), "only the chosen member");
    apply(
        &mut s,
        &Command::Bootstrap {
            node: "n1".into(),
            system_identifier: 7,
        },
    )
    .unwrap();
    assert_eq!(s.sync_config(), before, "what it ran is what Bootstrap records");
    assert_eq!(s.sync_config_for("n1"), before);
}

/// Found by the property sweep: a member removed after the candidate was told to promote
/// came back into the sync set when the candidate was replaced.
#[test]
fn replacing_a_candidate_does_not_bring_back_a_removed_member() {
    let mut s = bootstrapped();
    // Forced: otherwise n2 could not be removed while the change is under way.
    apply(
        &mut s,
        &Command::BeginFailover {
            generation: Generation(1),
            to: Some("n1".into()),
            forced: true,
            reason: "operator".into(),
        },
    )
    .unwrap();
    apply(&mut s, &promote(2, "n1")).unwrap();
    apply(&mut s, &Command::RemoveMember { name: "n2".into() }).unwrap();
    apply(&mut s, &failover(2)).unwrap();
    assert!(!s.sync_standbys.contains("n2"));
    assert!(
        s.sync_unconfirmed.iter().any(|c| c.standbys.contains("n2")),
        "the fenced primary's configuration still counts"
    );
}

#[test]
fn an_adopting_cluster_records_the_adopted_database_on_its_own_timeline() {
    use crate::cluster::testing::adopting;
    let mut s = ClusterState::default();
    let members = vec![member("n1", 1), member("n2", 2)];
    assert_eq!(
        rejected(
            &mut s,
            Command::InitAdopting {
                members: members.clone(),
                adopt: "n9".into()
            }
        ),
        Rejection::UnknownMember("n9".into())
    );
    let mut s = adopting("n1", &[]);
    assert_eq!(s.adopt.as_deref(), Some("n1"));
    assert_eq!(s.bootstrap_node.as_deref(), Some("n1"));
    // No initdb'd database, no other member, no removal of the adopted one.
    for cmd in [
        Command::Bootstrap {
            node: "n1".into(),
            system_identifier: 7,
        },
        Command::ChooseBootstrap { node: "n2".into() },
        Command::RemoveMember { name: "n1".into() },
        Command::Adopted {
            node: "n2".into(),
            system_identifier: 7,
            timeline: Timeline(3),
        },
    ] {
        assert!(matches!(rejected(&mut s, cmd), Rejection::BadConfig(_)));
    }
    // The adopted member's first start runs no quorum: nobody else has a copy yet.
    assert_eq!(s.sync_config_for("n1"), crate::cluster::SyncConfig::default());
    apply(
        &mut s,
        &Command::Adopted {
            node: "n1".into(),
            system_identifier: 7,
            timeline: Timeline(3),
        },
    )
    .unwrap();
    let p = s.primary.clone().unwrap();
    assert_eq!(
        (p.node.as_str(), p.generation, p.timeline),
        ("n1", Generation(1), Some(Timeline(3)))
    );
    assert!(s.sync_standbys.is_empty());
    assert_eq!(s.history.len(), 1);
    assert_eq!(s.history[0].timeline, Timeline(3));
    assert!(s.history[0].reason.contains("adopted"));
    // Once: a second adoption is refused.
    let again = Command::Adopted {
        node: "n1".into(),
        system_identifier: 7,
        timeline: Timeline(4),
    };
    assert_eq!(rejected(&mut s, again), Rejection::AlreadyBootstrapped);
    // A cluster formed without adopt cannot adopt.
    let mut plain = initialized();
    assert!(matches!(
        rejected(
            &mut plain,
            Command::Adopted {
                node: "n1".into(),
                system_identifier: 7,
                timeline: Timeline(3)
            }
        ),
        Rejection::BadConfig(_)
    ));
}

fn change_tags(name: &str, changes: &[TagChange]) -> Command {
    Command::ChangeTags {
        name: name.into(),
        changes: changes.to_vec(),
    }
}

#[test]
fn tags_change_at_runtime_in_order_and_only_those_named() {
    use crate::cluster::Flag::{NoLoadBalance, NoSync};
    let mut s = bootstrapped();
    assert!(matches!(
        rejected(&mut s, change_tags("nx", &[TagChange::NoFailover(true)])),
        Rejection::UnknownMember(_)
    ));
    assert!(matches!(
        rejected(&mut s, change_tags("n2", &[])),
        Rejection::BadConfig(_)
    ));
    let a = apply(
        &mut s,
        &change_tags(
            "n2",
            &[
                TagChange::NoFailover(true),
                TagChange::FailoverPriority(3),
                TagChange::Flag(NoLoadBalance, true),
                TagChange::Flag(NoSync, true),
                TagChange::Flag(NoSync, false),
            ],
        ),
    )
    .unwrap();
    assert!(a.message.contains("nofailover=true"), "{}", a.message);
    let m = &s.members["n2"];
    assert_eq!((m.tags.nofailover, m.tags.failover_priority), (true, 3));
    assert!(
        s.has_flag("n2", NoLoadBalance) && !s.has_flag("n2", NoSync),
        "the last change wins"
    );
    // A change leaves the other tags alone; a member without flags has no entry.
    apply(&mut s, &change_tags("n2", &[TagChange::Flag(NoLoadBalance, false)])).unwrap();
    assert_eq!(
        (s.members["n2"].tags.nofailover, s.members["n2"].tags.failover_priority),
        (true, 3)
    );
    assert!(!s.flags.contains_key("n2"));
    // nosync does not touch the sync set itself: the controller's SetSyncStandbys does,
    // under the confirm-before-forget rule.
    let sync = s.sync_standbys.clone();
    apply(&mut s, &change_tags("n3", &[TagChange::Flag(NoSync, true)])).unwrap();
    assert_eq!(s.sync_standbys, sync);
    assert!(s.sync_unconfirmed.is_empty());
}

/// `lease_ms` lowered under a primary: the longer length is kept for a Raft leader that
/// starts its tenure (it cannot know the length of the last grant before it) until a new
/// primary is recorded, whose leases are all granted under the new one.
#[test]
fn a_lowered_lease_is_remembered_until_the_next_primary() {
    let set = |ms: u64| Command::SetConfig {
        key: "lease_ms".into(),
        value: Some(ms.to_string()),
    };
    let mut s = bootstrapped();
    assert_eq!((s.lease_ms_before, s.lease_ceiling_ms()), (None, 2000));
    apply(&mut s, &set(3000)).unwrap();
    assert_eq!(
        (s.lease_ms_before, s.lease_ceiling_ms()),
        (None, 3000),
        "longer: nothing to remember"
    );
    apply(&mut s, &set(1000)).unwrap();
    apply(&mut s, &set(750)).unwrap();
    assert_eq!(
        (s.lease_ms_before, s.lease_ceiling_ms()),
        (Some(3000), 3000),
        "the longest"
    );
    apply(
        &mut s,
        &Command::SetConfigs {
            pairs: vec![("lease_ms".into(), Some("500".into()))],
        },
    )
    .unwrap();
    assert_eq!((s.ha.lease_ms, s.lease_ceiling_ms()), (500, 3000));
    // Not while the change is pending: the old primary may hold its lease still. Nor can
    // the length change then.
    apply(&mut s, &failover(1)).unwrap();
    apply(&mut s, &promote(2, "n2")).unwrap();
    assert_eq!(s.lease_ceiling_ms(), 3000);
    assert!(rejected(&mut s, set(1000)).to_string().contains("in progress"));
    let record = Command::RecordTimeline {
        generation: Generation(2),
        node: "n2".into(),
        timeline: Timeline(2),
        switch_lsn: None,
        parent_timeline: None,
    };
    apply(&mut s, &record).unwrap();
    assert_eq!((s.lease_ms_before, s.lease_ceiling_ms()), (None, 500));
}

/// Found by the simulation with membership changes. Seed 197: n3, the last synchronous
/// standby, was removed while n2, added back, still cloned; the primary then ran `ANY 0`
/// and a write it acknowledged alone was lost at the next failover. Seed 78: a synchronous
/// standby removed during a failover held writes its peer lacked, and the election, no
/// longer counting it, promoted the peer. Seed 6046: the old primary removed during a
/// failover left the candidate with no synchronous standby.
#[test]
fn a_removal_never_empties_the_quorum_nor_drops_a_member_an_election_must_hear() {
    let set_mode = |mode: &str| Command::SetConfig {
        key: "synchronous_mode".into(),
        value: Some(mode.into()),
    };
    // The last synchronous standby stays, in both quorum modes; asynchronous mode has none.
    for (mode, last_may_go) in [("quorum", false), ("degradable", false), ("off", true)] {
        let mut s = bootstrapped();
        apply(&mut s, &set_mode(mode)).unwrap();
        apply(&mut s, &Command::RemoveMember { name: "n3".into() }).unwrap();
        if s.ha.synchronous_mode.is_quorum() {
            assert_eq!(s.sync_config().standbys, ["n2".to_string()].into(), "{mode}");
        }
        match last_may_go {
            true => {
                apply(&mut s, &Command::RemoveMember { name: "n2".into() }).unwrap();
            }
            false => {
                let err = rejected(&mut s, Command::RemoveMember { name: "n2".into() });
                assert!(
                    matches!(&err, Rejection::BadConfig(m) if m.contains("last synchronous standby")),
                    "{mode}: {err}"
                );
            }
        }
    }
    // A member outside the set (added back, still cloning) may go even when one remains.
    let n3_added_back = || {
        let mut s = bootstrapped();
        apply(&mut s, &Command::RemoveMember { name: "n3".into() }).unwrap();
        apply(
            &mut s,
            &Command::AddMember {
                member: member("n3", 3),
            },
        )
        .unwrap();
        s
    };
    let mut s = n3_added_back();
    assert!(!s.sync_standbys.contains("n3"), "it joins once it streams");
    apply(&mut s, &Command::RemoveMember { name: "n3".into() }).unwrap();
    // During a failover, no member of a configuration the election covers may go...
    let mut s = bootstrapped();
    apply(&mut s, &failover(1)).unwrap();
    let err = rejected(&mut s, Command::RemoveMember { name: "n3".into() });
    assert!(
        matches!(&err, Rejection::BadConfig(m) if m.contains("failover of generation 2") && m.contains("final report")),
        "{err}"
    );
    // Nor the old primary, which joins the new primary's set (seed 6046: with the set down to
    // the candidate alone, removing the old primary left the new one with none).
    let mut s = n3_added_back();
    apply(&mut s, &failover(1)).unwrap();
    let err = rejected(&mut s, Command::RemoveMember { name: "n1".into() });
    assert!(
        matches!(&err, Rejection::BadConfig(m) if m.contains("old primary")),
        "{err}"
    );
    apply(&mut s, &promote(2, "n2")).unwrap();
    assert_eq!(s.sync_config().standbys, ["n1".to_string()].into());
    // ... unless it is forced, which accepts the loss, or commits are asynchronous.
    let mut s = bootstrapped();
    apply(
        &mut s,
        &Command::BeginFailover {
            generation: Generation(1),
            to: Some("n2".into()),
            forced: true,
            reason: "operator".into(),
        },
    )
    .unwrap();
    apply(&mut s, &Command::RemoveMember { name: "n3".into() }).unwrap();
    // Asynchronous once the primary confirmed it: until then it may run the quorum it had.
    let mut s = bootstrapped();
    apply(&mut s, &set_mode("off")).unwrap();
    let confirm = Command::ConfirmSync {
        generation: Generation(1),
        config: s.sync_config(),
    };
    apply(&mut s, &failover(1)).unwrap();
    assert!(rejected(&mut s, Command::RemoveMember { name: "n3".into() })
        .to_string()
        .contains("final report"));
    let mut s = bootstrapped();
    apply(&mut s, &set_mode("off")).unwrap();
    apply(&mut s, &confirm).unwrap();
    apply(&mut s, &failover(1)).unwrap();
    apply(&mut s, &Command::RemoveMember { name: "n3".into() }).unwrap();
    apply(&mut s, &Command::RemoveMember { name: "n1".into() }).unwrap();
}

#[test]
fn nosync_never_leaves_a_primary_without_a_synchronous_standby() {
    use crate::cluster::Flag::NoSync;
    let mut s = bootstrapped();
    apply(&mut s, &change_tags("n3", &[TagChange::Flag(NoSync, true)])).unwrap();
    // Two of three tagged: n1 or n2 as primary would have none.
    let err = rejected(&mut s, change_tags("n2", &[TagChange::Flag(NoSync, true)]));
    assert!(
        matches!(&err, Rejection::BadConfig(m) if m.contains("at least two") && m.contains("n3")),
        "{err}"
    );
    // Removing one of the two untagged members would do the same.
    apply(
        &mut s,
        &Command::AddMember {
            member: member("n4", 4),
        },
    )
    .unwrap();
    apply(&mut s, &change_tags("n4", &[TagChange::Flag(NoSync, true)])).unwrap();
    let err = rejected(&mut s, Command::RemoveMember { name: "n2".into() });
    assert!(
        matches!(&err, Rejection::BadConfig(m) if m.contains("removing n2")),
        "{err}"
    );
    // A tagged member may go, and takes its tags with it.
    apply(&mut s, &Command::RemoveMember { name: "n4".into() }).unwrap();
    assert!(!s.flags.contains_key("n4"));
    // Clearing is always allowed.
    apply(&mut s, &change_tags("n3", &[TagChange::Flag(NoSync, false)])).unwrap();
    assert!(s.flags.is_empty());
}

#[test]
fn a_first_primary_never_counts_a_nosync_member_in_its_quorum() {
    use crate::cluster::Flag::NoSync;
    let mut s = initialized();
    apply(&mut s, &change_tags("n3", &[TagChange::Flag(NoSync, true)])).unwrap();
    apply(&mut s, &Command::ChooseBootstrap { node: "n1".into() }).unwrap();
    let expected = SyncConfig {
        standbys: ["n2".to_string()].into(),
        k: 1,
    };
    assert_eq!(s.sync_config_for("n1"), expected, "the configuration before Bootstrap");
    apply(
        &mut s,
        &Command::Bootstrap {
            node: "n1".into(),
            system_identifier: 7,
        },
    )
    .unwrap();
    assert_eq!(s.sync_config(), expected);
}

#[test]
fn tags_parse_as_an_operator_types_them() {
    use crate::cluster::Flag::{NoLoadBalance, NoSync};
    assert_eq!(TagChange::parse("nosync", "true"), Ok(TagChange::Flag(NoSync, true)));
    assert_eq!(
        TagChange::parse("NoLoadBalance", "off"),
        Ok(TagChange::Flag(NoLoadBalance, false))
    );
    assert_eq!(TagChange::parse("nofailover", "1"), Ok(TagChange::NoFailover(true)));
    assert_eq!(
        TagChange::parse("failover_priority", "-2"),
        Ok(TagChange::FailoverPriority(-2))
    );
    let err = TagChange::parse("nosync", "maybe").unwrap_err();
    assert!(err.contains("true or false"), "{err}");
    let err = TagChange::parse("failover_priority", "high").unwrap_err();
    assert!(err.contains("whole number"), "{err}");
    let err = TagChange::parse("replicate_from", "n2").unwrap_err();
    assert!(
        err.contains("unknown tag") && err.contains("noloadbalance") && err.contains("replicatefrom"),
        "{err}"
    );
    assert_eq!(
        TagChange::parse("replicatefrom", "n2"),
        Ok(TagChange::ReplicateFrom(Some("n2".into())))
    );
    assert_eq!(
        TagChange::parse("replicatefrom", ""),
        Ok(TagChange::ReplicateFrom(None))
    );
    assert_eq!(
        TagChange::parse("replicatefrom", "none"),
        Ok(TagChange::ReplicateFrom(None))
    );
    for c in [
        TagChange::ReplicateFrom(Some("n3".into())),
        TagChange::ReplicateFrom(None),
        TagChange::Flag(NoSync, true),
        TagChange::FailoverPriority(4),
        TagChange::NoFailover(false),
    ] {
        let text = c.to_string();
        let (k, v) = text.split_once('=').unwrap();
        assert_eq!(TagChange::parse(k, v), Ok(c));
    }
}

#[test]
fn a_replica_stays_outside_the_quorum_and_is_promoted_only_when_forced() {
    use crate::cluster::Flag::{NoSync, Replica};
    let mut s = bootstrapped();
    let add = Command::AddReplica {
        member: member("n4", 4),
    };
    let a = apply(&mut s, &add).unwrap();
    assert!(a.message.contains("replica n4"), "{}", a.message);
    assert!(s.has_flag("n4", Replica) && s.never_chosen("n4"));
    apply(&mut s, &add).expect("a retried add is accepted");
    // A member of the quorum cannot be re-added as a replica.
    let err = rejected(
        &mut s,
        Command::AddReplica {
            member: member("n2", 2),
        },
    );
    assert!(matches!(&err, Rejection::BadConfig(m) if m.contains("voter")), "{err}");
    assert!(!s.sync_candidates("n1").contains("n4"));
    // A replica counts for nothing in the nosync rule: n3 nosync leaves n1 and n2.
    apply(&mut s, &change_tags("n3", &[TagChange::Flag(NoSync, true)])).unwrap();
    let err = rejected(&mut s, change_tags("n2", &[TagChange::Flag(NoSync, true)]));
    assert!(
        matches!(&err, Rejection::BadConfig(m) if m.contains("at least two")),
        "{err}"
    );
    // Never the target of a failover unless forced.
    let to_replica = |forced| Command::BeginFailover {
        generation: Generation(1),
        to: Some("n4".into()),
        forced,
        reason: "operator".into(),
    };
    assert!(matches!(
        rejected(&mut s, to_replica(false)),
        Rejection::NotEligible { .. }
    ));
    let mut forced = s.clone();
    apply(&mut forced, &to_replica(true)).unwrap();
    apply(
        &mut forced,
        &Command::Promote {
            generation: Generation(2),
            node: "n4".into(),
        },
    )
    .unwrap();
    // Nor promoted by the controller's unforced choice.
    apply(&mut s, &failover(1)).unwrap();
    let err = rejected(
        &mut s,
        Command::Promote {
            generation: Generation(2),
            node: "n4".into(),
        },
    );
    assert!(
        matches!(&err, Rejection::NotEligible { why, .. } if why.contains("replica")),
        "{err}"
    );
    // Removed, it takes its flag with it.
    let mut s = bootstrapped();
    apply(&mut s, &add).unwrap();
    apply(&mut s, &Command::RemoveMember { name: "n4".into() }).unwrap();
    assert!(s.flags.is_empty());
}

#[test]
fn a_replica_is_never_re_added_as_a_voter_nor_scheduled_for_a_switchover() {
    let mut s = bootstrapped();
    apply(
        &mut s,
        &Command::AddReplica {
            member: member("n4", 4),
        },
    )
    .unwrap();
    let err = rejected(
        &mut s,
        Command::AddMember {
            member: member("n4", 4),
        },
    );
    assert!(
        matches!(&err, Rejection::BadConfig(m) if m.contains("--replica")),
        "{err}"
    );
    tag_nofailover(&mut s, "n3");
    for to in ["n4", "n3"] {
        let cmd = Command::ScheduleSwitchover {
            switchover: crate::cluster::ScheduledSwitchover {
                from: None,
                to: to.into(),
                at_unix_ms: 1,
            },
        };
        assert!(matches!(rejected(&mut s, cmd), Rejection::NotEligible { .. }), "{to}");
    }
}

#[test]
fn a_cascading_member_streams_from_its_upstream_while_that_is_a_standby() {
    let mut s = bootstrapped();
    apply(
        &mut s,
        &Command::AddMember {
            member: member("n4", 4),
        },
    )
    .unwrap();
    assert_eq!(s.source_of("n4"), Some("n1"));
    let a = apply(
        &mut s,
        &change_tags("n4", &[TagChange::ReplicateFrom(Some("n3".into()))]),
    )
    .unwrap();
    assert!(a.message.contains("replicatefrom=n3"), "{}", a.message);
    // n3 keeps n4's slot, the primary no longer does; n4 is no sync candidate.
    assert_eq!(s.source_of("n4"), Some("n3"));
    assert_eq!(s.slots_kept_by("n3"), ["n4".to_string()].into());
    assert_eq!(s.slots_kept_by("n1"), ["n2".to_string(), "n3".to_string()].into());
    assert!(!s.may_be_sync("n4") && !s.sync_candidates("n1").contains("n4"));
    // Its upstream becomes primary: it streams from the primary, which keeps its slot.
    let mut promoted = s.clone();
    promoted.primary.as_mut().unwrap().node = "n3".into();
    assert_eq!(promoted.source_of("n4"), Some("n3"));
    assert!(promoted.slots_kept_by("n3").contains("n4"));
    // A chain is fine; a loop, itself, or a stranger is refused with the way out.
    apply(
        &mut s,
        &change_tags("n3", &[TagChange::ReplicateFrom(Some("n2".into()))]),
    )
    .unwrap();
    assert_eq!(s.source_of("n3"), Some("n2"));
    let err = rejected(
        &mut s,
        change_tags("n2", &[TagChange::ReplicateFrom(Some("n4".into()))]),
    );
    assert!(
        matches!(&err, Rejection::BadConfig(m) if m.contains("n2 -> n4 -> n3 -> n2") && m.contains("loop")),
        "{err}"
    );
    let err = rejected(
        &mut s,
        change_tags("n2", &[TagChange::ReplicateFrom(Some("n2".into()))]),
    );
    assert!(matches!(&err, Rejection::BadConfig(m) if m.contains("itself")), "{err}");
    let err = rejected(
        &mut s,
        change_tags("n2", &[TagChange::ReplicateFrom(Some("nx".into()))]),
    );
    assert!(
        matches!(&err, Rejection::BadConfig(m) if m.contains("no member is called nx")),
        "{err}"
    );
    // n3 and n4 cascade: only n1 and n2 may be synchronous, so neither may cascade too.
    let err = rejected(
        &mut s,
        change_tags("n2", &[TagChange::ReplicateFrom(Some("n1".into()))]),
    );
    assert!(
        matches!(&err, Rejection::BadConfig(m) if m.contains("at least two") && m.contains("replicatefrom")),
        "{err}"
    );
    // The upstream leaves: who streamed from it follows the primary again.
    apply(&mut s, &Command::RemoveMember { name: "n3".into() }).unwrap();
    assert_eq!(s.replicates_from("n4"), None);
    assert_eq!(s.source_of("n4"), Some("n1"));
    assert!(s.may_be_sync("n4"));
    // Clearing the tag is how to stop cascading.
    apply(
        &mut s,
        &change_tags("n4", &[TagChange::ReplicateFrom(Some("n2".into()))]),
    )
    .unwrap();
    apply(&mut s, &change_tags("n4", &[TagChange::ReplicateFrom(None)])).unwrap();
    assert!(s.upstreams.is_empty());
}

#[test]
fn permanent_slots_are_declared_checked_and_removed_through_raft() {
    use crate::cluster::SlotKind;
    let mut s = bootstrapped();
    let add = |name: &str, kind: SlotKind| Command::AddSlot {
        name: name.into(),
        kind,
    };
    let a = apply(&mut s, &add("backup", SlotKind::Physical)).unwrap();
    assert!(a.message.contains("every primary keeps it"), "{}", a.message);
    assert_eq!(s.declared_slots().count(), 1);
    apply(&mut s, &add("backup", SlotKind::Physical)).expect("a retried add is accepted");
    let logical = || SlotKind::Logical {
        plugin: "pgoutput".into(),
        database: "app".into(),
    };
    let err = rejected(&mut s, add("backup", logical()));
    assert!(
        matches!(&err, Rejection::BadConfig(m) if m.contains("slots remove backup")),
        "{err}"
    );
    // A logical slot needs wal_level = logical, and says how to get it.
    let err = rejected(&mut s, add("cdc", logical()));
    assert!(
        matches!(&err, Rejection::BadConfig(m) if m.contains("wal_level=logical")),
        "{err}"
    );
    apply(
        &mut s,
        &Command::SetConfig {
            key: "postgresql.parameters.wal_level".into(),
            value: Some("logical".into()),
        },
    )
    .unwrap();
    let no_plugin = SlotKind::Logical {
        plugin: " ".into(),
        database: "app".into(),
    };
    assert!(matches!(rejected(&mut s, add("cdc", no_plugin)), Rejection::BadConfig(m) if m.contains("--plugin")));
    apply(&mut s, &add("cdc", logical())).unwrap();
    // Names as PostgreSQL takes them, never raftpg's own prefix.
    for bad in ["", "Backup", "a-b", "raftpg_x", &"x".repeat(64)] {
        assert!(
            matches!(rejected(&mut s, add(bad, SlotKind::Physical)), Rejection::BadConfig(_)),
            "{bad}"
        );
    }
    // They must fit max_replication_slots, with one slot per other member.
    apply(
        &mut s,
        &Command::SetConfig {
            key: "postgresql.parameters.max_replication_slots".into(),
            value: Some("4".into()),
        },
    )
    .unwrap();
    let err = rejected(&mut s, add("third", SlotKind::Physical));
    assert!(
        matches!(&err, Rejection::BadConfig(m) if m.contains("max_replication_slots = 4")),
        "{err}"
    );
    // Removed: a tombstone with the reason; a second removal is refused; re-adding revives it.
    let a = apply(
        &mut s,
        &Command::RemoveSlot {
            name: "cdc".into(),
            reason: "gone".into(),
        },
    )
    .unwrap();
    assert!(a.message.contains("gone"), "{}", a.message);
    assert_eq!(s.slots["cdc"].removed.as_deref(), Some("gone"));
    assert_eq!(s.declared_slots().count(), 1);
    assert!(matches!(
        rejected(
            &mut s,
            Command::RemoveSlot {
                name: "cdc".into(),
                reason: "again".into()
            }
        ),
        Rejection::BadConfig(_)
    ));
    apply(&mut s, &add("cdc", logical())).unwrap();
    assert_eq!(s.slots["cdc"].removed, None);
    // slot_ttl_ms: a number of milliseconds, shown by config show, reset to the default.
    assert_eq!(
        s.config_pairs()["slot_ttl_ms"],
        crate::cluster::DEFAULT_SLOT_TTL_MS.to_string()
    );
    let err = rejected(
        &mut s,
        Command::SetConfig {
            key: "slot_ttl_ms".into(),
            value: Some("1h".into()),
        },
    );
    assert!(
        matches!(&err, Rejection::BadConfig(m) if m.contains("milliseconds")),
        "{err}"
    );
    apply(
        &mut s,
        &Command::SetConfig {
            key: "slot_ttl_ms".into(),
            value: Some("60000".into()),
        },
    )
    .unwrap();
    assert_eq!(s.slot_ttl_ms(), 60_000);
    apply(
        &mut s,
        &Command::SetConfig {
            key: "slot_ttl_ms".into(),
            value: None,
        },
    )
    .unwrap();
    assert_eq!(s.slot_ttl_ms, None);
}
