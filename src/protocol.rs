//! The messages between an agent and the Raft leader: the report every agent sends (with
//! its lease renewal), and the leader's reply with its view of all members. They travel
//! postcard-encoded, so their layout is fixed by golden tests (`raft::golden_tests`); the
//! rules that make and judge them are pure and live in `decide::report`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cluster::SyncConfig;
use crate::types::{Generation, Timeline};

/// What an agent last said about its PostgreSQL.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// The generation of the agent's applied state when it reported.
    pub generation: Generation,
    pub pg: PgRole,
    /// A standby streaming from the current primary.
    pub streaming: bool,
    pub timeline: Option<Timeline>,
    /// Primary: write position; standby: flushed (received) position.
    pub lsn: Option<u64>,
    /// Primary: each connected standby's flush position (`pg_stat_replication`),
    /// observed together with `lsn`, so that lag needs no second report.
    pub standby_flush: BTreeMap<String, u64>,
    /// After streaming from the fenced primary stopped: (flush LSN, timeline), under `generation`.
    pub final_position: Option<(u64, Timeline)>,
    /// The agent's last decision, for `ctl list`.
    pub reason: String,
    /// Primary: the synchronous configuration PostgreSQL runs, when it is the applied one.
    pub sync_applied: Option<SyncConfig>,
    /// PostgreSQL has parameters changed that take effect only after a restart.
    pub pending_restart: bool,
}

/// The local PostgreSQL as its agent saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PgRole {
    NoData,
    Stopped,
    Primary,
    Standby,
    Unknown,
}

/// The Raft leader's picture of the agents, as it hands it to every reporting node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// Last report per member, with its age in milliseconds when the view was made.
    pub reports: BTreeMap<String, (u64, Report)>,
    /// Milliseconds until the controller may treat the primary's lease as lapsed.
    pub lease_remaining_ms: Option<u64>,
}

impl ClusterView {
    /// The same view `ms` milliseconds later.
    pub fn aged(mut self, ms: u64) -> ClusterView {
        for (age, _) in self.reports.values_mut() {
            *age += ms;
        }
        self.lease_remaining_ms = self.lease_remaining_ms.map(|l| l.saturating_sub(ms));
        self
    }

    /// A new leader's view holds only the reports it received since its election: a
    /// member missing from it keeps its entry from `older` (already aged) while that is
    /// at most `keep_ms` old, so a leader change does not blank out what is known.
    pub fn filled_from(mut self, older: ClusterView, keep_ms: u64) -> ClusterView {
        for (name, (age, report)) in older.reports {
            if age <= keep_ms {
                self.reports.entry(name).or_insert((age, report));
            }
        }
        self
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReportRequest {
    pub node: String,
    pub report: Report,
    /// Renew this node's primary lease for `report.generation`.
    pub renew: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ReportReply {
    Accepted {
        lease_granted: bool,
        /// Every member's last report, so any node can answer status and health checks.
        view: ClusterView,
    },
    /// Not the Raft leader; `leader` is who this node believes is.
    NotLeader { leader: Option<u64> },
}
