//! The public control service (`proto/control.proto`). Protobuf types stop here.

use tonic::{Request, Response, Status};

use crate::cluster::{ClusterState, Command, Pending, PendingKind};
use crate::node::{Node, ProposeError, PROPOSE_TIMEOUT};
use crate::pb::control as pb;
use crate::pb::control::control_server::Control;

pub struct ControlServer {
    pub node: Node,
}

impl ControlServer {
    async fn commit(&self, cmd: Command) -> Result<Response<pb::CommandReply>, Status> {
        match self.node.propose(cmd, PROPOSE_TIMEOUT).await {
            Ok(c) => Ok(Response::new(pb::CommandReply {
                log_index: c.log_index,
                revision: c.applied.revision,
                message: c.applied.message,
            })),
            Err(e @ ProposeError::Rejected(_)) => Err(Status::failed_precondition(e.to_string())),
            Err(e @ (ProposeError::NoLeader { .. } | ProposeError::Unknown { .. })) => {
                Err(Status::unavailable(e.to_string()))
            }
            Err(e @ ProposeError::Fatal(_)) => Err(Status::internal(e.to_string())),
        }
    }
}

#[tonic::async_trait]
impl Control for ControlServer {
    async fn status(&self, _: Request<pb::StatusRequest>) -> Result<Response<pb::ClusterStatus>, Status> {
        Ok(Response::new(status(&self.node)))
    }

    async fn set_config(&self, req: Request<pb::SetConfigRequest>) -> Result<Response<pb::CommandReply>, Status> {
        let req = req.into_inner();
        if req.key.trim().is_empty() {
            return Err(Status::invalid_argument("key is empty: write key=value"));
        }
        let value = (!req.value.is_empty()).then_some(req.value);
        self.commit(Command::SetConfig { key: req.key, value }).await
    }

    async fn pause(&self, _: Request<pb::PauseRequest>) -> Result<Response<pb::CommandReply>, Status> {
        self.commit(Command::Pause).await
    }

    async fn resume(&self, _: Request<pb::ResumeRequest>) -> Result<Response<pb::CommandReply>, Status> {
        self.commit(Command::Resume).await
    }
}

/// Builds the status message from the applied state and this node's Raft metrics.
pub fn status(node: &Node) -> pb::ClusterStatus {
    let applied = node.state();
    let m = node.metrics();
    let s: &ClusterState = &applied.state;
    let membership = m.membership_config.membership();
    let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    let leader = m.current_leader.map(|id| s.label_of(id));
    pb::ClusterStatus {
        cluster: node.cfg.cluster.name.clone(),
        answered_by: node.name().to_string(),
        node_raft_state: format!("{:?}", m.state).to_lowercase(),
        raft_leader: leader.unwrap_or_default(),
        raft_term: m.current_term,
        applied_index: applied.log_index,
        initialized: s.initialized,
        revision: s.revision,
        generation: s.generation,
        primary: s.primary.as_ref().map(|p| pb::Primary {
            node: p.node.clone(),
            generation: p.generation,
            timeline: p.timeline.unwrap_or(0),
        }),
        paused: s.paused,
        members: s
            .members
            .values()
            .map(|x| pb::Member {
                name: x.name.clone(),
                id: x.id,
                raft_addr: x.raft_addr.clone(),
                grpc_addr: x.grpc_addr.clone(),
                pg_addr: x.pg_addr.clone(),
                http_addr: x.http_addr.clone(),
                nofailover: x.tags.nofailover,
                failover_priority: x.tags.failover_priority,
                raft_role: if voters.contains(&x.id) {
                    "voter".into()
                } else if membership.get_node(&x.id).is_some() {
                    "learner".into()
                } else {
                    String::new()
                },
            })
            .collect(),
        sync_standbys: s.sync_standbys.iter().cloned().collect(),
        config: s.config_pairs().into_iter().collect(),
        history: s
            .history
            .iter()
            .map(|h| pb::HistoryEntry {
                timeline: h.timeline,
                switch_lsn: h.switch_lsn.clone().unwrap_or_default(),
                reason: h.reason.clone(),
                from: h.from.clone().unwrap_or_default(),
                to: h.to.clone(),
                generation: h.generation,
            })
            .collect(),
        pending: s.pending.as_ref().map(describe_pending).unwrap_or_default(),
    }
}

fn describe_pending(p: &Pending) -> String {
    let kind = match p.kind {
        PendingKind::Failover => "failover",
        PendingKind::Switchover => "switchover",
    };
    format!(
        "{kind} from {} to {} ({})",
        p.from.as_deref().unwrap_or("none"),
        p.candidate.as_deref().or(p.to.as_deref()).unwrap_or("to be chosen"),
        p.reason
    )
}
