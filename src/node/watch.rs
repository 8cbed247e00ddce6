//! Background watchers: a log line per Raft role change, a warning while no
//! leader is known, and the Raft leader's duties.

use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Node, PROPOSE_TIMEOUT};
use crate::cluster::Command;

/// How often "no leader" is repeated in the log while it lasts.
const NO_LEADER_REPEAT: Duration = Duration::from_secs(5);

/// Logs each change of Raft role, term or leader, and warns while there is no leader.
/// Wakes on a change of role or leader (`server_metrics`, not the full metrics that change
/// with every heartbeat) and every second.
pub async fn log_role_changes(node: Node, mut stop: watch::Receiver<bool>) {
    let mut server = node.raft.server_metrics();
    let mut last: Option<(ServerState, Option<u64>)> = None;
    let no_leader_after = Duration::from_millis(node.cfg.raft.election_timeout_max_ms * 2);
    let mut leaderless_since: Option<Instant> = None;
    let mut warned_at: Option<Instant> = None;
    loop {
        server.borrow_and_update();
        let (state, leader, term, quorum_acked) = {
            let m = node.metrics();
            (m.state, m.current_leader, m.current_term, m.last_quorum_acked)
        };
        if last != Some((state, leader)) {
            let leader_name = leader.map(|id| node.state().state.label_of(id));
            tracing::info!(
                role = ?state, term, leader = leader_name.as_deref().unwrap_or("none"),
                "Raft role: {state:?} in term {term}, leader {}", leader_name.as_deref().unwrap_or("unknown")
            );
            last = Some((state, leader));
        }
        let now = Instant::now();
        let contact = Contact {
            state,
            leader,
            quorum_acked_ago: quorum_acked.map(|t| openraft::Instant::elapsed(&t.into_inner())),
            leader_heard_ago: node.leader_contact.last().map(|t| now - t),
        };
        if contact.working(no_leader_after) {
            leaderless_since = None;
            warned_at = None;
        } else {
            let since = *leaderless_since.get_or_insert(now);
            let due = warned_at.is_none_or(|w| now - w >= NO_LEADER_REPEAT);
            if now - since >= no_leader_after && due && state != ServerState::Shutdown {
                tracing::warn!(
                    "no working Raft leader for {:.1}s: this node cannot commit anything; it cannot reach a majority \
                     of the members (check that they run and that the network between them works)",
                    (now - since).as_secs_f64()
                );
                warned_at = Some(now);
            }
        }
        tokio::select! {
            changed = server.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(NO_LEADER_REPEAT / 5) => {}
            _ = stop.changed() => return,
        }
    }
}

/// What this node knows of its contact with a working Raft group.
struct Contact {
    state: ServerState,
    leader: Option<u64>,
    /// Leader: time since a quorum last acknowledged it.
    quorum_acked_ago: Option<Duration>,
    /// Follower: time since an AppendEntries from a leader last arrived.
    leader_heard_ago: Option<Duration>,
}

impl Contact {
    /// Whether this node is part of a working Raft group right now.
    fn working(&self, within: Duration) -> bool {
        match self.state {
            ServerState::Leader => self.quorum_acked_ago.is_some_and(|d| d < within),
            _ => self.leader.is_some() && self.leader_heard_ago.is_some_and(|d| d < within),
        }
    }
}

/// The `[[members]]` tags `Init` does not carry, committed right after it. Retried for a
/// while: a leader lost in between leaves them unset, which `ctl list` shows and
/// `ctl member tags` mends.
async fn initial_tags(node: &Node) {
    for cmd in node.cfg.initial_tag_changes() {
        for attempt in 1..=25 {
            match node.propose(cmd.clone(), PROPOSE_TIMEOUT).await {
                Ok(c) => {
                    tracing::info!("{cmd}: {}", c.applied.message);
                    break;
                }
                Err(crate::node::ProposeError::Rejected(r)) => {
                    tracing::error!("{cmd} was refused: {r}; set the tags with `raftpg ctl member tags`");
                    break;
                }
                Err(e) if attempt == 25 => {
                    tracing::error!("{cmd} could not be committed: {e}; set the tags with `raftpg ctl member tags`");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

/// On the Raft leader: record the initial members in the replicated state once.
///
/// The controller of the PostgreSQL issue grows out of this loop.
pub async fn leader_duties(node: Node, mut stop: watch::Receiver<bool>) {
    let mut metrics = node.raft.server_metrics();
    let mut applied = node.subscribe();
    loop {
        let is_leader = metrics.borrow_and_update().state == ServerState::Leader;
        let initialized = applied.borrow_and_update().state.initialized;
        if is_leader && !initialized {
            let members = node.cfg.initial_members();
            let cmd = match &node.cfg.cluster.adopt {
                Some(adopt) => Command::InitAdopting {
                    members,
                    adopt: adopt.clone(),
                },
                None => Command::Init { members },
            };
            match node.propose(cmd, PROPOSE_TIMEOUT).await {
                Ok(c) => {
                    tracing::info!(
                        log_index = c.log_index,
                        "cluster state initialised with the configured members"
                    );
                    initial_tags(&node).await;
                }
                Err(e) => {
                    tracing::debug!("initialising the cluster state: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            continue;
        }
        tokio::select! {
            r = metrics.changed() => if r.is_err() { return },
            r = applied.changed() => if r.is_err() { return },
            _ = stop.changed() => return,
        }
    }
}
