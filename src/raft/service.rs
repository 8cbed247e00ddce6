//! Raft transport, server side: the `RaftService` gRPC handlers of one node.

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status, Streaming};

use super::codec::{decode, encode};
use super::types::*;
use crate::cluster::Command;
use crate::pb::raft::raft_service_server::RaftService;
use crate::pb::raft::{snapshot_chunk, ProbeRequest, ProbeResponse, RaftMessage, SnapshotChunk};

/// Answer to a forwarded command.
#[derive(Debug, Serialize, Deserialize)]
pub enum ForwardReply {
    /// Committed and applied at `log_index`, with what `apply` returned.
    Committed { log_index: u64, result: CommandResult },
    /// This node is not the Raft leader; `leader` is who it believes is.
    NotLeader { leader: Option<(NodeId, String)> },
}

pub struct RaftServer {
    pub raft: Raft,
    pub node_id: NodeId,
    pub cluster: String,
    /// When an AppendEntries from a leader last arrived (heartbeats included).
    pub leader_contact: LeaderContact,
    pub sm: super::state_machine::StateMachine,
    pub book: crate::lease::Book,
}

/// The last time a Raft leader reached this node; shared with the watchers.
#[derive(Clone, Default)]
pub struct LeaderContact(std::sync::Arc<std::sync::Mutex<Option<tokio::time::Instant>>>);

impl LeaderContact {
    pub fn touch(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(tokio::time::Instant::now());
    }

    pub fn last(&self) -> Option<tokio::time::Instant> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

fn reply<T: Serialize>(value: &T) -> Result<Response<RaftMessage>, Status> {
    Ok(Response::new(RaftMessage { payload: encode(value) }))
}

fn payload<T: serde::de::DeserializeOwned>(req: Request<RaftMessage>) -> Result<T, Status> {
    decode(&req.into_inner().payload, "Raft request").map_err(|e| Status::invalid_argument(e.to_string()))
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest = payload(req)?;
        reply(&self.raft.vote(rpc).await.map_err(internal)?)
    }

    async fn pre_vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest = payload(req)?;
        reply(&self.raft.pre_vote(rpc).await.map_err(internal)?)
    }

    async fn append_entries(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: AppendEntriesRequest = payload(req)?;
        let resp = self.raft.append_entries(rpc).await.map_err(internal)?;
        if resp.is_success() {
            self.leader_contact.touch();
        }
        reply(&resp)
    }

    async fn install_snapshot(&self, req: Request<Streaming<SnapshotChunk>>) -> Result<Response<RaftMessage>, Status> {
        let mut stream = req.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let Some(snapshot_chunk::Chunk::Meta(meta)) = first.chunk else {
            return Err(Status::invalid_argument(
                "the first snapshot chunk must carry the metadata",
            ));
        };
        let (vote, meta): (Vote, SnapshotMeta) =
            decode(&meta, "snapshot metadata").map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut data = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk?.chunk {
                Some(snapshot_chunk::Chunk::Data(d)) => data.extend_from_slice(&d),
                _ => return Err(Status::invalid_argument("only data chunks may follow the metadata")),
            }
        }
        let snapshot = Snapshot { meta, snapshot: data };
        reply(
            &self
                .raft
                .install_full_snapshot(vote, snapshot)
                .await
                .map_err(internal)?,
        )
    }

    async fn transfer_leader(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: TransferLeaderRequest = payload(req)?;
        reply(&self.raft.handle_transfer_leader(rpc).await.map_err(internal)?)
    }

    async fn probe(&self, req: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        let asked_by = req.into_inner().cluster;
        if asked_by != self.cluster {
            return Err(Status::permission_denied(format!(
                "this node belongs to cluster '{}', not '{asked_by}': check cluster.name in both configs",
                self.cluster
            )));
        }
        let initialized = self.raft.is_initialized().await.map_err(internal)?;
        Ok(Response::new(ProbeResponse {
            node_id: self.node_id,
            initialized,
            cluster: self.cluster.clone(),
        }))
    }

    async fn report(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: crate::node::report::ReportRequest = payload(req)?;
        reply(&crate::node::report::handle(&self.raft, &self.sm, &self.book, rpc).await)
    }

    async fn forward(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let cmd: Command = payload(req)?;
        match self.raft.client_write(cmd).await {
            Ok(resp) => reply(&ForwardReply::Committed {
                log_index: resp.log_id.index,
                result: resp.data,
            }),
            Err(e) => match e.forward_to_leader() {
                Some(f) => reply(&ForwardReply::NotLeader {
                    leader: f.leader_id.zip(f.leader_node.clone().map(|n| n.addr)),
                }),
                None => Err(Status::unavailable(format!("command not committed: {e}"))),
            },
        }
    }
}
