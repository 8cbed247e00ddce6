//! Proposals from any node: committed locally on the Raft leader, forwarded to it otherwise.

use std::time::Duration;

use tokio::time::Instant;

use crate::cluster::{Applied, Command, Rejection};
use crate::raft::codec::{decode, encode};
use crate::raft::service::ForwardReply;
use crate::raft::wire::{Rpc, Wire};
use crate::raft::Raft;

/// Longest pause between two attempts while no leader is known.
const MAX_RETRY_BACKOFF: Duration = Duration::from_millis(200);

/// A committed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub log_index: u64,
    pub applied: Applied,
}

/// Why a proposal did not commit, by who handles it.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// Committed, and refused by the state: the caller's view was stale or the input wrong.
    #[error("{0}")]
    Rejected(Rejection),
    /// No Raft leader could take the command before the deadline: no quorum, or an election.
    #[error(
        "no Raft leader could commit the command within {waited:?}{}: this node cannot reach a majority \
         of the members, so nothing can be committed; check that a majority of raftpg nodes run and can reach each other",
        .last_leader.as_ref().map(|l| format!(" (last known leader: {l})")).unwrap_or_default()
    )]
    NoLeader {
        waited: Duration,
        last_leader: Option<String>,
    },
    /// The command reached a Raft leader but did not commit before the deadline. It may
    /// still commit later, when the leader reaches a majority again.
    #[error(
        "the command was not committed within {waited:?}: the Raft leader cannot reach a majority of the members; \
         it may still commit if they reconnect, so check the result before retrying"
    )]
    Unknown { waited: Duration },
    /// A leader-only proposal reached a node that is no longer the Raft leader.
    #[error("this node is no longer the Raft leader{}: its decision is dropped", .leader.as_ref().map(|l| format!(" (the leader is node {l})")).unwrap_or_default())]
    NotLeader { leader: Option<u64> },
    /// The Raft node stopped.
    #[error("the Raft node has stopped: {0}")]
    Fatal(String),
}

/// Proposes `cmd` and waits until it is committed and applied, or `timeout` passes.
///
/// The outcome of an attempt that timed out in flight is unknown; commands are
/// idempotent or compare-and-set, so trying again is safe.
pub async fn propose(
    raft: &Raft,
    wire: &dyn Wire,
    cmd: Command,
    timeout: Duration,
    rpc_timeout: Duration,
) -> Result<Committed, ProposeError> {
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_millis(10);
    let mut last_leader = None;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let written = tokio::time::timeout(remaining, raft.client_write(cmd.clone()))
            .await
            .map_err(|_| ProposeError::Unknown { waited: timeout })?;
        let attempt = match written {
            Ok(resp) => return finish(resp.log_id.index, resp.data),
            Err(e) => match e.forward_to_leader() {
                Some(f) => match (f.leader_id, f.leader_node.as_ref()) {
                    (Some(id), Some(node)) if id != *raft.node_id() => {
                        last_leader = Some(format!("node {id} at {}", node.addr));
                        forward(
                            wire,
                            &node.addr,
                            &cmd,
                            deadline.saturating_duration_since(Instant::now()).max(rpc_timeout),
                        )
                        .await
                    }
                    _ => None,
                },
                None => return Err(ProposeError::Fatal(e.to_string())),
            },
        };
        if let Some(result) = attempt {
            return result;
        }
        if Instant::now() + backoff > deadline {
            return Err(ProposeError::NoLeader {
                waited: timeout,
                last_leader,
            });
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_RETRY_BACKOFF);
    }
}

/// Proposes `cmd` only if this node is the Raft leader: never forwarded.
///
/// The controller decides from what it saw as leader (lease renewals, reports).
/// A deposed leader that does not know it yet must not have that stale decision
/// committed by the new leader, as a forwarded proposal would be: a lease that
/// looked expired to it may be renewed every 500 ms through the new leader.
/// Appended locally, the entry carries the term the decision was made in, and
/// commits only if that term's leader still had a majority.
pub async fn propose_as_leader(raft: &Raft, cmd: Command, timeout: Duration) -> Result<Committed, ProposeError> {
    let written = tokio::time::timeout(timeout, raft.client_write(cmd))
        .await
        .map_err(|_| ProposeError::Unknown { waited: timeout })?;
    match written {
        Ok(resp) => finish(resp.log_id.index, resp.data),
        Err(e) => match e.forward_to_leader() {
            Some(f) => Err(ProposeError::NotLeader { leader: f.leader_id }),
            None => Err(ProposeError::Fatal(e.to_string())),
        },
    }
}

fn finish(log_index: u64, result: Result<Applied, Rejection>) -> Result<Committed, ProposeError> {
    match result {
        Ok(applied) => Ok(Committed { log_index, applied }),
        Err(r) => Err(ProposeError::Rejected(r)),
    }
}

/// One forwarding attempt; `None` means "try again" (leader moved or unreachable).
async fn forward(
    wire: &dyn Wire,
    addr: &str,
    cmd: &Command,
    rpc_timeout: Duration,
) -> Option<Result<Committed, ProposeError>> {
    let link = wire.shared(addr).ok()?;
    let reply = match link.call(Rpc::Forward, encode(cmd), rpc_timeout).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%addr, "forwarding to the Raft leader failed ({e}); retrying");
            return None;
        }
    };
    match decode::<ForwardReply>(&reply, "forward reply") {
        Ok(ForwardReply::Committed { log_index, result }) => Some(finish(log_index, result)),
        Ok(ForwardReply::NotLeader { .. }) | Err(_) => None,
    }
}
