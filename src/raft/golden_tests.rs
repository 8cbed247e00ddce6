//! Golden bytes: the exact encoding of every `Command`, of a snapshot of the cluster
//! state and of a report. postcard tags an enum variant by its position and writes
//! struct fields in order, without names: inserting a variant in the middle, or a field
//! anywhere, changes what stored log entries and snapshots mean, and what a node of the
//! previous release reads from this one during a rolling upgrade. If one of these tests
//! fails, the change broke that compatibility: append new variants at the end instead,
//! and add new data as new variants (README, "Upgrading raftpg").

use std::collections::{BTreeMap, BTreeSet};

use crate::cluster::{apply, ClusterState, Command, Flag, Member, ScheduledSwitchover, SyncConfig, TagChange, Tags};
use crate::decide::controller::{PgRole, Report};
use crate::node::report::ReportRequest;
use crate::raft::codec::{decode, encode};
use crate::types::{Generation, Timeline};

fn member() -> Member {
    Member {
        name: "n1".into(),
        id: 1,
        raft_addr: "10.0.0.1:5433".into(),
        grpc_addr: "10.0.0.1:5434".into(),
        pg_addr: "10.0.0.1:5432".into(),
        http_addr: "10.0.0.1:8008".into(),
        tags: Tags {
            nofailover: false,
            failover_priority: 1,
        },
    }
}

/// One value of every variant, in declaration order.
fn every_command() -> Vec<Command> {
    let sync = SyncConfig {
        standbys: BTreeSet::from(["n2".to_string()]),
        k: 1,
    };
    vec![
        Command::Init {
            members: vec![member()],
        },
        Command::AddMember { member: member() },
        Command::RemoveMember { name: "n3".into() },
        Command::SetTags {
            name: "n2".into(),
            tags: Tags {
                nofailover: true,
                failover_priority: -1,
            },
        },
        Command::ChooseBootstrap { node: "n1".into() },
        Command::Bootstrap {
            node: "n1".into(),
            system_identifier: 7,
        },
        Command::BeginFailover {
            generation: Generation(1),
            to: Some("n2".into()),
            forced: true,
            reason: "r".into(),
        },
        Command::BeginSwitchover {
            generation: Generation(1),
            to: "n2".into(),
            reason: "r".into(),
        },
        Command::SwitchoverStopped {
            generation: Generation(2),
            node: "n1".into(),
            lsn: 0x300_0060,
        },
        Command::Promote {
            generation: Generation(2),
            node: "n2".into(),
        },
        Command::RecordTimeline {
            generation: Generation(2),
            node: "n2".into(),
            timeline: Timeline(2),
            switch_lsn: Some(crate::types::Lsn(0x3000060)),
            parent_timeline: Some(Timeline(1)),
        },
        Command::SetSyncStandbys {
            generation: Generation(2),
            standbys: vec!["n1".into()],
        },
        Command::ConfirmSync {
            generation: Generation(2),
            config: sync,
        },
        Command::Restart { node: "n1".into() },
        Command::Reinit { node: "n3".into() },
        Command::ScheduleSwitchover {
            switchover: ScheduledSwitchover {
                from: Some("n2".into()),
                to: "n1".into(),
                at_unix_ms: 1_700_000_000_000,
            },
        },
        Command::CancelScheduledSwitchover,
        Command::Pause,
        Command::Resume,
        Command::SetConfig {
            key: "lease_ms".into(),
            value: Some("2000".into()),
        },
        Command::InitAdopting {
            members: vec![member()],
            adopt: "n1".into(),
        },
        Command::Adopted {
            node: "n1".into(),
            system_identifier: 7,
            timeline: Timeline(3),
        },
        Command::SetConfigs {
            pairs: vec![("lease_ms".into(), Some("2000".into())), ("ttl".into(), None)],
        },
        Command::VetoCandidate {
            generation: Generation(2),
            node: "n2".into(),
            reason: "r".into(),
        },
        Command::ChangeTags {
            name: "n2".into(),
            changes: vec![
                TagChange::NoFailover(true),
                TagChange::FailoverPriority(-1),
                TagChange::Flag(Flag::NoLoadBalance, true),
            ],
        },
        Command::AddReplica { member: member() },
        Command::AddSlot {
            name: "cdc".into(),
            kind: crate::cluster::SlotKind::Logical {
                plugin: "pgoutput".into(),
                database: "app".into(),
            },
        },
        Command::RemoveSlot {
            name: "cdc".into(),
            reason: "r".into(),
        },
        Command::Degrade {
            generation: Generation(2),
            streaming: vec!["n2".into()],
            at_unix_ms: 1000,
            lsn: None,
        },
        Command::Undegrade {
            generation: Generation(2),
        },
    ]
}

const GOLDEN_COMMANDS: &[&str] = &[
    // Init
    "0001026e31010d31302e302e302e313a353433330d31302e302e302e313a353433340d31302e302e302e313a353433320d31302e302e302e313a383030380002",
    // AddMember
    "01026e31010d31302e302e302e313a353433330d31302e302e302e313a353433340d31302e302e302e313a353433320d31302e302e302e313a383030380002",
    // RemoveMember
    "02026e33",
    // SetTags
    "03026e320101",
    // ChooseBootstrap
    "04026e31",
    // Bootstrap
    "05026e3107",
    // BeginFailover
    "060101026e32010172",
    // BeginSwitchover
    "0701026e320172",
    // SwitchoverStopped
    "0802026e31e0808018",
    // Promote
    "0902026e32",
    // RecordTimeline
    "0a02026e32020109302f333030303036300101",
    // SetSyncStandbys
    "0b0201026e31",
    // ConfirmSync
    "0c0201026e3201",
    // Restart
    "0d026e31",
    // Reinit
    "0e026e33",
    // ScheduleSwitchover
    "0f01026e32026e3180d095ffbc31",
    // CancelScheduledSwitchover
    "10",
    // Pause
    "11",
    // Resume
    "12",
    // SetConfig
    "13086c656173655f6d73010432303030",
    // InitAdopting
    "1401026e31010d31302e302e302e313a353433330d31302e302e302e313a353433340d31302e302e302e313a353433320d31302e302e302e313a383030380002026e31",
    // Adopted
    "15026e310703",
    // SetConfigs
    "1602086c656173655f6d730104323030300374746c00",
    // VetoCandidate
    "1702026e320172",
    // ChangeTags: n2, [NoFailover(true), FailoverPriority(-1), Flag(NoLoadBalance, true)]
    "18026e320300010101020101",
    // AddReplica: the member of AddMember, under the next tag
    "19026e31010d31302e302e302e313a353433330d31302e302e302e313a353433340d31302e302e302e313a353433320d31302e302e302e313a383030380002",
    // AddSlot: cdc, Logical { pgoutput, app }
    "1a03636463010870676f757470757403617070",
    // RemoveSlot: cdc, "r"
    "1b036364630172",
    // Degrade: generation 2, [n2], at 1000 ms, lsn None
    "1c0201026e32e80700",
    // Undegrade: generation 2
    "1d02",
];

const GOLDEN_SNAPSHOT: &str = concat!(
    "0102026e31026e31010d31302e302e302e313a353433330d31302e302e302e313a353433340d31302e302e302e313a35",
    "3433320d31302e302e302e313a383030380002026e32026e32020d31302e302e302e313a353433330d31302e302e302e",
    "313a353433340d31302e302e302e313a353433320d31302e302e302e313a383030380002000201026e310101026e3201",
    "01000001026e310001026e3200056c656173650000808040d00f904e0108776f726b5f6d656d03384d42010001000009",
    "626f6f74737472617000026e3101010701026e3101026e3201000007",
    // adopt: None, vetoed: {} (appended 2026-12-03), flags: {} (appended 2026-12-03),
    // upstreams: {} (appended 2026-12-03, cascading), slots: {}, slot_ttl_ms: None,
    // degraded: None (appended 2026-12-04), unrecorded_timeline: None (appended 2026-12-07),
    // lease_ms_before: None (appended 2026-12-07)
    "000000000000000000",
);

/// The same snapshot as written before `ClusterState::adopt` existed.
const GOLDEN_SNAPSHOT_BEFORE_ADOPT: &str = concat!(
    "0102026e31026e31010d31302e302e302e313a353433330d31302e302e302e313a353433340d31302e302e302e313a35",
    "3433320d31302e302e302e313a383030380002026e32026e32020d31302e302e302e313a353433330d31302e302e302e",
    "313a353433340d31302e302e302e313a353433320d31302e302e302e313a383030380002000201026e310101026e3201",
    "01000001026e310001026e3200056c656173650000808040d00f904e0108776f726b5f6d656d03384d42010001000009",
    "626f6f74737472617000026e3101010701026e3101026e3201000007",
);

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// A snapshot of the previous release still reads, with the new field empty; a node of
/// the previous release reads this release's snapshot, ignoring the field it does not know.
#[test]
fn a_snapshot_written_before_a_field_was_appended_still_reads() {
    let old = unhex(GOLDEN_SNAPSHOT_BEFORE_ADOPT);
    let s = crate::raft::codec::decode_state(&old, "snapshot").unwrap();
    assert_eq!(s, busy_state());
    assert_eq!(s.adopt, None);
    assert!(s.vetoed.is_empty());
    assert!(s.flags.is_empty());
    assert!(s.upstreams.is_empty());
    assert!(s.slots.is_empty() && s.slot_ttl_ms.is_none());
    assert!(s.degraded.is_none());
    assert!(s.unrecorded_timeline.is_none());
    assert!(s.lease_ms_before.is_none());
    #[derive(serde::Deserialize, PartialEq, Debug)]
    struct Prefix {
        initialized: bool,
    }
    let new = encode(&busy_state());
    assert!(new.starts_with(&old));
    assert!(decode::<Prefix>(&new, "snapshot").unwrap().initialized);
    // Corrupt bytes are still an error, never a padded guess.
    assert!(crate::raft::codec::decode_state(&old[..10], "snapshot").is_err());
}

const GOLDEN_REPORT: &str = "026e32020301010101e080801801026e338080801801e08080180101720101026e32010001";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn every_command_encodes_to_its_golden_bytes_and_back() {
    let cmds = every_command();
    let actual: Vec<String> = cmds.iter().map(|c| hex(&encode(c))).collect();
    assert_eq!(
        actual, GOLDEN_COMMANDS,
        "the encoding of a Command changed: stored Raft logs and older nodes would read it differently"
    );
    for c in &cmds {
        let back: Command = decode(&encode(c), "command").unwrap();
        assert_eq!(&back, c);
    }
}

/// The variant tags are positions: the newest variant must stay last, and no variant
/// may be added without a golden value (the `match` fails to compile until it has one).
#[test]
fn the_golden_commands_cover_every_variant_in_order() {
    let position = |c: &Command| match c {
        Command::Init { .. } => 0,
        Command::AddMember { .. } => 1,
        Command::RemoveMember { .. } => 2,
        Command::SetTags { .. } => 3,
        Command::ChooseBootstrap { .. } => 4,
        Command::Bootstrap { .. } => 5,
        Command::BeginFailover { .. } => 6,
        Command::BeginSwitchover { .. } => 7,
        Command::SwitchoverStopped { .. } => 8,
        Command::Promote { .. } => 9,
        Command::RecordTimeline { .. } => 10,
        Command::SetSyncStandbys { .. } => 11,
        Command::ConfirmSync { .. } => 12,
        Command::Restart { .. } => 13,
        Command::Reinit { .. } => 14,
        Command::ScheduleSwitchover { .. } => 15,
        Command::CancelScheduledSwitchover => 16,
        Command::Pause => 17,
        Command::Resume => 18,
        Command::SetConfig { .. } => 19,
        Command::InitAdopting { .. } => 20,
        Command::Adopted { .. } => 21,
        Command::SetConfigs { .. } => 22,
        Command::VetoCandidate { .. } => 23,
        Command::ChangeTags { .. } => 24,
        Command::AddReplica { .. } => 25,
        Command::AddSlot { .. } => 26,
        Command::RemoveSlot { .. } => 27,
        Command::Degrade { .. } => 28,
        Command::Undegrade { .. } => 29,
    };
    for (i, c) in every_command().iter().enumerate() {
        assert_eq!(position(c), i, "{c}");
        assert_eq!(encode(c)[0] as usize, i, "postcard's tag of {c} is its position");
    }
}

/// A snapshot is the whole `ClusterState`: a failover's worth of history, a pending
/// change, unconfirmed configurations, parameters and requests.
fn busy_state() -> ClusterState {
    let mut s = ClusterState::default();
    let mut m2 = member();
    m2.name = "n2".into();
    m2.id = 2;
    let cmds = [
        Command::Init {
            members: vec![member(), m2],
        },
        Command::ChooseBootstrap { node: "n1".into() },
        Command::Bootstrap {
            node: "n1".into(),
            system_identifier: 7,
        },
        Command::SetConfig {
            key: "postgresql.parameters.work_mem".into(),
            value: Some("8MB".into()),
        },
        Command::Restart { node: "n2".into() },
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

#[test]
fn a_snapshot_encodes_to_its_golden_bytes_and_back() {
    let s = busy_state();
    assert_eq!(
        hex(&encode(&s)),
        GOLDEN_SNAPSHOT,
        "the encoding of ClusterState changed"
    );
    let back: ClusterState = decode(&encode(&s), "snapshot").unwrap();
    assert_eq!(back, s);
}

#[test]
fn a_report_encodes_to_its_golden_bytes_and_back() {
    let req = ReportRequest {
        node: "n2".into(),
        report: Report {
            generation: Generation(2),
            pg: PgRole::Standby,
            streaming: true,
            timeline: Some(Timeline(1)),
            lsn: Some(0x300_0060),
            standby_flush: BTreeMap::from([("n3".to_string(), 0x300_0000)]),
            final_position: Some((0x300_0060, Timeline(1))),
            reason: "r".into(),
            sync_applied: Some(SyncConfig {
                standbys: BTreeSet::from(["n2".to_string()]),
                k: 1,
            }),
            pending_restart: false,
        },
        renew: true,
    };
    assert_eq!(hex(&encode(&req)), GOLDEN_REPORT, "the encoding of a report changed");
    let back: ReportRequest = decode(&encode(&req), "report").unwrap();
    assert_eq!(back.report, req.report);
}
