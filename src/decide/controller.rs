//! The controller's decisions, taken on the Raft leader only: choose the node
//! that bootstraps, fence an expired primary, promote the best candidate,
//! keep the sync set, and keep Raft leadership off the primary.
//!
//! Inputs are the applied state and the agents' last reports (volatile, kept in
//! the leader's memory). The lease clock is read by the effects layer and comes
//! in as "expired for this long", so this stays free of clocks.

use std::collections::BTreeMap;

use crate::cluster::{ClusterState, Command};
use crate::decide::election::{elect, Election, ElectionInput, FinalReport};

/// What an agent last said about its PostgreSQL.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// The generation of the agent's applied state when it reported.
    pub generation: u64,
    pub pg: PgRole,
    /// A standby streaming from the current primary.
    pub streaming: bool,
    pub timeline: Option<u32>,
    /// Primary: write position; standby: flushed (received) position.
    pub lsn: Option<u64>,
    /// After streaming from the fenced primary stopped: (flush LSN, timeline), under `generation`.
    pub final_position: Option<(u64, u32)>,
    /// The agent's last decision, for `ctl list`.
    pub reason: String,
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

#[derive(Clone, Debug)]
pub struct ControllerInput<'a> {
    /// The Raft leader's member name.
    pub me: &'a str,
    pub state: &'a ClusterState,
    /// Fresh reports by member name; a member without one is Unknown.
    pub reports: &'a BTreeMap<String, Report>,
    /// The primary's lease has been without renewal past the controller's deadline for this long.
    pub lease_expired_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControllerAction {
    Propose(Command),
    /// Hand Raft leadership to this member.
    TransferLeader(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerDecision {
    pub action: Option<ControllerAction>,
    pub reason: String,
}

fn idle(reason: impl Into<String>) -> ControllerDecision {
    ControllerDecision {
        action: None,
        reason: reason.into(),
    }
}

fn act(action: ControllerAction, reason: impl Into<String>) -> ControllerDecision {
    ControllerDecision {
        action: Some(action),
        reason: reason.into(),
    }
}

pub fn decide(i: &ControllerInput) -> ControllerDecision {
    let s = i.state;
    if !s.initialized {
        return idle("the cluster state is not initialised yet");
    }
    if let Some(p) = &s.pending {
        return match &p.candidate {
            Some(c) => idle(format!("waiting for {c} to promote and record its timeline")),
            None => choose_candidate(i),
        };
    }
    let Some(primary) = &s.primary else {
        return bootstrap(i);
    };
    if s.paused {
        return idle(format!("paused: {} stays primary whatever happens", primary.node));
    }
    if let Some(ms) = i.lease_expired_ms {
        return act(
            ControllerAction::Propose(Command::BeginFailover {
                generation: s.generation,
                to: None,
                forced: false,
                reason: format!("{} did not renew its lease for {ms} ms", primary.node),
            }),
            format!("{}'s lease expired: fencing generation {}", primary.node, s.generation),
        );
    }
    let want_sync = match s.sync_quorum() {
        0 => Default::default(),
        _ => s.others(&primary.node),
    };
    if s.sync_standbys != want_sync {
        return act(
            ControllerAction::Propose(Command::SetSyncStandbys {
                generation: s.generation,
                standbys: want_sync.into_iter().collect(),
            }),
            "the members changed: recording the new synchronous set",
        );
    }
    if primary.node == i.me {
        let target = i
            .reports
            .iter()
            .filter(|(n, r)| *n != i.me && r.streaming && r.generation == s.generation)
            .map(|(n, _)| n)
            .min_by_key(|n| s.member(n).map_or(u64::MAX, |m| m.id));
        if let Some(t) = target {
            return act(
                ControllerAction::TransferLeader(t.clone()),
                format!("moving Raft leadership off the primary to {t}, so a primary crash needs no election"),
            );
        }
    }
    idle(format!(
        "{} is the primary of generation {} and holds its lease",
        primary.node, s.generation
    ))
}

fn bootstrap(i: &ControllerInput) -> ControllerDecision {
    let s = i.state;
    if let Some(b) = &s.bootstrap_node {
        return idle(format!("waiting for {b} to bootstrap"));
    }
    let chosen = s
        .members
        .values()
        .filter(|m| !m.tags.nofailover)
        .filter(|m| i.reports.get(&m.name).is_some_and(|r| r.pg == PgRole::NoData))
        .min_by_key(|m| m.id);
    match chosen {
        Some(m) => act(
            ControllerAction::Propose(Command::ChooseBootstrap { node: m.name.clone() }),
            format!(
                "{} has an empty data directory and the lowest id: it bootstraps",
                m.name
            ),
        ),
        None => idle("no member without nofailover has reported an empty data directory yet"),
    }
}

fn choose_candidate(i: &ControllerInput) -> ControllerDecision {
    let s = i.state;
    let p = s.pending.as_ref().expect("called with a pending change");
    let standbys = s
        .members
        .values()
        .filter(|m| p.from.as_deref() != Some(m.name.as_str()))
        .map(|m| {
            let report = i
                .reports
                .get(&m.name)
                .filter(|r| r.generation == s.generation)
                .and_then(|r| r.final_position)
                .map(|(flush_lsn, timeline)| FinalReport {
                    flush_lsn,
                    timeline,
                    tags: m.tags.clone(),
                });
            (m.name.as_str(), report)
        })
        .collect();
    let last_primary_lsn = p
        .from
        .as_ref()
        .and_then(|f| i.reports.get(f))
        .filter(|r| r.pg == PgRole::Primary)
        .and_then(|r| r.lsn);
    let input = ElectionInput {
        standbys,
        sync_mode: s.ha.synchronous_mode,
        sync_quorum: s.sync_quorum(),
        last_primary_lsn,
        maximum_lag_bytes: s.ha.maximum_lag_on_failover_bytes,
        requested: p.to.as_deref(),
        forced: p.forced,
    };
    match elect(&input) {
        Election::Promote { node, reason } => act(
            ControllerAction::Propose(Command::Promote {
                generation: s.generation,
                node,
            }),
            reason,
        ),
        Election::Wait { reason } | Election::Refuse { reason } => idle(reason),
    }
}

#[cfg(test)]
#[path = "controller_tests.rs"]
mod tests;
