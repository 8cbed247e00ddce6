//! `Command`: the only way the replicated state changes. Each one is a Raft log entry.
//!
//! A command may commit more than once from a client's point of view (a write
//! whose outcome was unknown is retried), so every command is idempotent or a
//! compare-and-set on the generation it was decided under.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::state::{Member, ScheduledSwitchover, SlotKind, SyncConfig, TagChange, Tags};
use crate::types::{Generation, Timeline};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// First command of a new cluster: the members from the configuration.
    Init {
        members: Vec<Member>,
    },
    /// Record a new member (its Raft membership is changed separately).
    AddMember {
        member: Member,
    },
    /// Forget a member; refused for the primary.
    RemoveMember {
        name: String,
    },
    /// Replace a member's tags.
    SetTags {
        name: String,
        tags: Tags,
    },
    /// Choose the member that runs initdb (before any primary exists).
    ChooseBootstrap {
        node: String,
    },
    /// The first primary, after initdb: generation 1, timeline 1.
    Bootstrap {
        node: String,
        system_identifier: u64,
    },
    /// Fence generation `generation` and start an unplanned failover under `generation + 1`.
    BeginFailover {
        generation: Generation,
        to: Option<String>,
        forced: bool,
        reason: String,
    },
    /// Fence generation `generation` and start a planned switchover to `to`.
    BeginSwitchover {
        generation: Generation,
        to: String,
        reason: String,
    },
    /// Switchover: the old primary `node` shut down cleanly; its last checkpoint is at `lsn`.
    SwitchoverStopped {
        generation: Generation,
        node: String,
        lsn: u64,
    },
    /// Tell `node` to promote, under the generation of the pending change.
    Promote {
        generation: Generation,
        node: String,
    },
    /// `node` promoted and is on `timeline`: it becomes the primary.
    RecordTimeline {
        generation: Generation,
        node: String,
        timeline: Timeline,
        /// Where the new timeline forked, and from which timeline (the history file).
        switch_lsn: Option<crate::types::Lsn>,
        parent_timeline: Option<Timeline>,
    },
    /// The members whose flush counts towards the commit quorum.
    SetSyncStandbys {
        generation: Generation,
        standbys: Vec<String>,
    },
    /// The primary runs this synchronous configuration: earlier ones no longer matter.
    ConfirmSync {
        generation: Generation,
        config: SyncConfig,
    },
    /// Ask `node`'s agent to restart its PostgreSQL.
    Restart {
        node: String,
    },
    /// Ask `node`'s agent to discard its data directory and clone it again.
    Reinit {
        node: String,
    },
    /// Run a switchover at a wall-clock time; replaces any scheduled one.
    ScheduleSwitchover {
        switchover: ScheduledSwitchover,
    },
    CancelScheduledSwitchover,
    Pause,
    Resume,
    /// Set one cluster-wide key; `None` removes or restores the default.
    SetConfig {
        key: String,
        value: Option<String>,
    },
    /// `Init` for a cluster that adopts `adopt`'s existing database (`[cluster] adopt`):
    /// that member is the only one that may become the first primary, and no member runs
    /// initdb.
    InitAdopting {
        members: Vec<Member>,
        adopt: String,
    },
    /// The first primary of an adopting cluster: its existing database, on the timeline
    /// it already runs (not timeline 1). Generation 1, with no standby in the quorum yet.
    Adopted {
        node: String,
        system_identifier: u64,
        timeline: Timeline,
    },
    /// Set several cluster-wide keys at once (`ctl config set a=1 b=2`, `ctl edit-config`):
    /// all of them, or none.
    SetConfigs {
        pairs: Vec<(String, Option<String>)>,
    },
    /// The candidate `node` of generation `generation`, still a standby, refuses to promote
    /// (its `pre_promote` hook failed, or its database cannot become consistent from its
    /// own WAL): the change starts again under the next generation, without it.
    VetoCandidate {
        generation: Generation,
        node: String,
        reason: String,
    },
    /// Change some of `name`'s tags (`ctl member tags`), in order; the others stay.
    ChangeTags {
        name: String,
        changes: Vec<TagChange>,
    },
    /// Record a new member that stays a replica (`ctl member add --replica`): a Raft
    /// learner outside the quorum and the synchronous set, never promoted automatically.
    AddReplica {
        member: Member,
    },
    /// Declare a permanent replication slot that every primary keeps (`ctl slots add`).
    AddSlot {
        name: String,
        kind: SlotKind,
    },
    /// Stop keeping a permanent slot (`ctl slots remove`, or its consumer was gone longer
    /// than `slot_ttl_ms`); every primary drops its copy.
    RemoveSlot {
        name: String,
        reason: String,
    },
    /// `synchronous_mode = degradable`: fewer than `k` synchronous standbys have streamed
    /// for a lease, so the primary of `generation` runs asynchronously; `streaming` are
    /// those that still stream. Sent again while degraded, it shrinks that set.
    Degrade {
        generation: Generation,
        streaming: Vec<String>,
        at_unix_ms: u64,
        /// The primary's write position once it runs asynchronously (`Degraded::quorum_lsn`),
        /// when known; recorded once.
        lsn: Option<u64>,
    },
    /// Enough synchronous standbys stream again: the primary of `generation` returns to
    /// its quorum (the window ends once it confirms it).
    Undegrade {
        generation: Generation,
    },
}

impl Command {
    /// Whether the command changes who is (or will be) primary; logged at info.
    pub fn is_topology(&self) -> bool {
        !matches!(self, Command::SetConfig { .. } | Command::SetConfigs { .. })
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Init { members } => {
                let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
                write!(f, "init members [{}]", names.join(", "))
            }
            Command::AddMember { member } => write!(f, "add member {} (id {})", member.name, member.id),
            Command::AddReplica { member } => write!(f, "add replica {} (id {})", member.name, member.id),
            Command::RemoveMember { name } => write!(f, "remove member {name}"),
            Command::SetTags { name, tags } => write!(
                f,
                "set tags of {name}: nofailover={} failover_priority={}",
                tags.nofailover, tags.failover_priority
            ),
            Command::ChangeTags { name, changes } => {
                let changes: Vec<String> = changes.iter().map(ToString::to_string).collect();
                write!(f, "change tags of {name}: {}", changes.join(" "))
            }
            Command::AddSlot { name, kind } => match kind {
                SlotKind::Physical => write!(f, "add permanent physical slot {name}"),
                SlotKind::Logical { plugin, database } => {
                    write!(f, "add permanent logical slot {name} ({plugin} in {database})")
                }
            },
            Command::RemoveSlot { name, reason } => write!(f, "remove permanent slot {name}: {reason}"),
            Command::Degrade {
                generation, streaming, ..
            } => write!(
                f,
                "degrade to asynchronous replication (generation {generation}, still streaming: [{}])",
                streaming.join(", ")
            ),
            Command::Undegrade { generation } => {
                write!(f, "return to the synchronous quorum (generation {generation})")
            }
            Command::ChooseBootstrap { node } => write!(f, "choose {node} to run initdb"),
            Command::Bootstrap {
                node,
                system_identifier,
            } => {
                write!(f, "bootstrap {node} as primary (system identifier {system_identifier})")
            }
            Command::BeginFailover {
                generation,
                to,
                forced,
                reason,
            } => {
                write!(f, "begin failover from generation {generation}")?;
                if let Some(to) = to {
                    write!(f, " to {to}")?;
                }
                if *forced {
                    write!(f, " (forced)")?;
                }
                write!(f, ": {reason}")
            }
            Command::BeginSwitchover { generation, to, reason } => {
                write!(f, "begin switchover from generation {generation} to {to}: {reason}")
            }
            Command::SwitchoverStopped { generation, node, lsn } => write!(
                f,
                "{node} stopped cleanly for the switchover of generation {generation} at {}",
                crate::decide::election::lsn(*lsn)
            ),
            Command::ConfirmSync { generation, config } => write!(
                f,
                "confirm sync config ANY {} [{}] (generation {generation})",
                config.k,
                config.standbys.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
            Command::Restart { node } => write!(f, "restart PostgreSQL on {node}"),
            Command::Reinit { node } => write!(f, "re-clone {node}"),
            Command::ScheduleSwitchover { switchover } => write!(
                f,
                "schedule a switchover to {} at {} ms after the epoch",
                switchover.to, switchover.at_unix_ms
            ),
            Command::CancelScheduledSwitchover => write!(f, "cancel the scheduled switchover"),
            Command::Promote { generation, node } => write!(f, "promote {node} under generation {generation}"),
            Command::RecordTimeline {
                generation,
                node,
                timeline,
                ..
            } => {
                write!(
                    f,
                    "record {node} primary on timeline {timeline} (generation {generation})"
                )
            }
            Command::SetSyncStandbys { generation, standbys } => {
                write!(
                    f,
                    "set sync standbys [{}] (generation {generation})",
                    standbys.join(", ")
                )
            }
            Command::Pause => write!(f, "pause"),
            Command::Resume => write!(f, "resume"),
            Command::SetConfig { key, value: Some(v) } => write!(f, "set config {key}={v}"),
            Command::SetConfig { key, value: None } => write!(f, "reset config {key}"),
            Command::SetConfigs { pairs } => {
                let each: Vec<String> = pairs
                    .iter()
                    .map(|(k, v)| match v {
                        Some(v) => format!("{k}={v}"),
                        None => format!("reset {k}"),
                    })
                    .collect();
                write!(f, "set config {}", each.join(", "))
            }
            Command::VetoCandidate {
                generation,
                node,
                reason,
            } => write!(f, "{node} refuses to promote under generation {generation}: {reason}"),
            Command::InitAdopting { members, adopt } => {
                let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
                write!(
                    f,
                    "init members [{}], adopting the database of {adopt}",
                    names.join(", ")
                )
            }
            Command::Adopted {
                node,
                system_identifier,
                timeline,
            } => write!(
                f,
                "{node} adopted as primary on timeline {timeline} (system identifier {system_identifier})"
            ),
        }
    }
}
