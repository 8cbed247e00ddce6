//! Membership changes (library API; `raftpg ctl member` builds on it).
//!
//! Raft membership goes through openraft's joint consensus; the member's
//! names, addresses and tags go through the replicated state. Both must be
//! called on the Raft leader, which is how openraft orders membership changes.

use std::collections::BTreeSet;

use openraft::{BasicNode, ChangeMembers};

use super::{Node, ProposeError, PROPOSE_TIMEOUT};
use crate::cluster::{Command, Member};

/// How long a joint-consensus change may take to commit. A leader cut off from the
/// majority (it does not know yet that it was deposed) never commits one: the caller gets
/// an error in place of a request that hangs.
pub const MEMBERSHIP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("this node is not the Raft leader{}; send the request there", .0.as_ref().map(|l| format!(" (the leader is {l})")).unwrap_or_default())]
    NotLeader(Option<String>),
    #[error("unknown member '{0}'")]
    UnknownMember(String),
    #[error("membership change failed: {0}")]
    Raft(String),
    #[error(transparent)]
    Propose(#[from] ProposeError),
}

impl Node {
    fn leader_hint(&self) -> Option<String> {
        let m = self.metrics();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id).map(|n| n.addr.clone());
        Some(format!(
            "node {id}{}",
            node.map(|a| format!(" at {a}")).unwrap_or_default()
        ))
    }

    fn raft_err(&self, e: impl std::fmt::Display + HasForward) -> MembershipError {
        if e.is_forward() {
            MembershipError::NotLeader(self.leader_hint())
        } else {
            MembershipError::Raft(e.to_string())
        }
    }

    /// Records `member` (as a replica that stays outside the quorum, with `replica`) and
    /// adds it as a Raft learner; returns once it has caught up with the log.
    pub async fn add_learner(&self, member: Member, replica: bool) -> Result<(), MembershipError> {
        let node = BasicNode::new(member.raft_addr.clone());
        self.raft
            .add_learner(member.id, node, true)
            .await
            .map_err(|e| self.raft_err(e))?;
        let cmd = if replica {
            Command::AddReplica { member }
        } else {
            Command::AddMember { member }
        };
        self.propose(cmd, PROPOSE_TIMEOUT).await?;
        Ok(())
    }

    /// Turns the learner `name` into a voter (joint consensus).
    pub async fn promote_voter(&self, name: &str) -> Result<(), MembershipError> {
        let id = self.member_id(name)?;
        let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
        self.change_membership(change).await?;
        tracing::info!(member = name, id, "member promoted to Raft voter");
        Ok(())
    }

    /// Removes `name` from the Raft membership and then from the replicated state.
    pub async fn remove_member(&self, name: &str) -> Result<(), MembershipError> {
        let id = self.member_id(name)?;
        // The state's rules first (the last synchronous standby, a member a failover's
        // election must hear): refused after the Raft membership changed, the member would
        // be a Raft voter no more and a member of the state still.
        let cmd = Command::RemoveMember { name: name.to_string() };
        crate::cluster::apply(&mut (*self.state().state).clone(), &cmd).map_err(ProposeError::Rejected)?;
        let ids = BTreeSet::from([id]);
        let voters: BTreeSet<u64> = self.raft.voter_ids().collect();
        let change = if voters.contains(&id) {
            ChangeMembers::RemoveVoters(ids)
        } else {
            ChangeMembers::RemoveNodes(ids)
        };
        self.change_membership(change).await?;
        self.propose(cmd, PROPOSE_TIMEOUT).await?;
        tracing::info!(member = name, id, "member removed");
        Ok(())
    }

    /// openraft's `change_membership`, bounded by [`MEMBERSHIP_TIMEOUT`].
    async fn change_membership(&self, change: ChangeMembers<u64, BasicNode>) -> Result<(), MembershipError> {
        match tokio::time::timeout(MEMBERSHIP_TIMEOUT, self.raft.change_membership(change, false)).await {
            Ok(done) => done.map(|_| ()).map_err(|e| self.raft_err(e)),
            Err(_) => Err(ProposeError::Unknown {
                waited: MEMBERSHIP_TIMEOUT,
            }
            .into()),
        }
    }

    fn member_id(&self, name: &str) -> Result<u64, MembershipError> {
        self.state()
            .state
            .member(name)
            .map(|m| m.id)
            .ok_or_else(|| MembershipError::UnknownMember(name.to_string()))
    }
}

/// Whether an openraft error means "ask the leader".
pub trait HasForward {
    fn is_forward(&self) -> bool;
}

impl<E> HasForward for openraft::errors::RaftError<crate::raft::TypeConfig, E>
where
    E: openraft::TryAsRef<openraft::errors::ForwardToLeader<crate::raft::TypeConfig>> + std::error::Error,
{
    fn is_forward(&self) -> bool {
        self.forward_to_leader().is_some()
    }
}
