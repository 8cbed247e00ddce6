//! Raft transport, server side: the `RaftService` gRPC handlers of one node.

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status, Streaming};

use super::codec::{decode, encode};
use super::types::*;
use super::wire::Rpc;
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
    /// The members in this node's config file: who may speak before the replicated state
    /// names the members (initialisation).
    pub config_members: std::collections::BTreeMap<String, NodeId>,
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

/// The largest snapshot a node accepts (the replicated state is small: members, history).
const MAX_SNAPSHOT_BYTES: usize = 64 << 20;

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

fn reply<T: Serialize>(value: &T) -> Result<Response<RaftMessage>, Status> {
    Ok(Response::new(RaftMessage { payload: encode(value) }))
}

fn payload<T: serde::de::DeserializeOwned>(req: Request<RaftMessage>) -> Result<T, Status> {
    decode(&req.into_inner().payload, "Raft request").map_err(|e| Status::invalid_argument(e.to_string()))
}

/// The node a vote names as its (would-be) leader.
fn voter(vote: &Vote) -> NodeId {
    use openraft::vote::RaftLeaderId;
    *vote.leader_id().node_id()
}

/// The sender of a Raft request, from its certificate.
struct Sender {
    name: String,
    /// Its node id when this node's state (or config, before the state names the
    /// members) knows the name; `None` for a member this node has not learned of yet
    /// (it lags behind the addition), which may then only claim an id no known member has.
    id: Option<NodeId>,
}

impl RaftServer {
    /// Who sent a request, checked: it names this cluster, and on a TLS listener it comes
    /// from a node certificate of the cluster CA whose name is the claimed sender (the
    /// `raftpg-member` header). `None` on a plaintext listener: nothing to check against.
    fn sender<T>(&self, req: &Request<T>, what: &str) -> Result<Option<Sender>, Status> {
        let header = |h: &str| req.metadata().get(h).and_then(|v| v.to_str().ok());
        let cluster = header(crate::tls::CLUSTER_HEADER).unwrap_or("(none)");
        if cluster != self.cluster {
            tracing::warn!(%what, cluster, "refused a Raft request for another cluster");
            return Err(Status::permission_denied(format!(
                "this node belongs to cluster '{}', not '{cluster}': check cluster.name in both configs",
                self.cluster
            )));
        }
        let Some(peer) = crate::tls::peer_of(req)? else {
            return Ok(None);
        };
        if peer.role != crate::tls::Role::Node {
            return Err(refuse(
                what,
                &peer.name,
                format!("{peer} is not a node certificate: only members speak Raft"),
            ));
        }
        let claimed = header(crate::tls::MEMBER_HEADER).unwrap_or("(none)");
        if claimed != peer.name {
            return Err(refuse(
                what,
                &peer.name,
                format!("it claims to come from '{claimed}' but the certificate is {peer}"),
            ));
        }
        let id = self.id_of(&peer.name);
        Ok(Some(Sender { name: peer.name, id }))
    }

    /// The node id of member `name` as this node knows the members: the replicated state,
    /// or the config file before the state names them. Looked up on every Raft RPC.
    fn id_of(&self, name: &str) -> Option<NodeId> {
        let state = self.sm.current().state;
        match state.members.is_empty() {
            true => self.config_members.get(name).copied(),
            false => state.members.get(name).map(|m| m.id),
        }
    }

    /// Whether a member this node knows (as in `id_of`) has node id `id`.
    fn id_is_known(&self, id: NodeId) -> bool {
        let state = self.sm.current().state;
        match state.members.is_empty() {
            true => self.config_members.values().any(|i| *i == id),
            false => state.members.values().any(|m| m.id == id),
        }
    }

    /// `sender`, and it must be a member this node knows (reports and forwarded proposals
    /// go to the Raft leader, whose state is current).
    fn member<T>(&self, req: &Request<T>, what: &str) -> Result<Option<String>, Status> {
        match self.sender(req, what)? {
            Some(Sender { name, id: None }) => Err(refuse(
                what,
                &name,
                format!("'{name}' is not a current member of this cluster"),
            )),
            other => Ok(other.map(|s| s.name)),
        }
    }

    /// Refuses a Raft message that claims to come from node `claimed` when its certificate
    /// is another member's (or a member this node does not know yet claiming a known id).
    fn check_claim(&self, sender: &Option<Sender>, claimed: NodeId, what: &str) -> Result<(), Status> {
        let Some(s) = sender else { return Ok(()) };
        let ok = match s.id {
            Some(id) => id == claimed,
            None => !self.id_is_known(claimed),
        };
        match ok {
            true => Ok(()),
            false => Err(refuse(
                what,
                &s.name,
                format!(
                    "it claims to come from node {claimed} but the certificate is member '{}'{}",
                    s.name,
                    s.id.map(|id| format!(" (node {id})")).unwrap_or_default()
                ),
            )),
        }
    }
}

fn too_large() -> Status {
    Status::resource_exhausted(format!("snapshot larger than {MAX_SNAPSHOT_BYTES} bytes refused"))
}

/// The calls of `wire::MemoryWire`: the same handlers as over gRPC, with the checks of a
/// plaintext listener (no certificate in memory).
impl RaftServer {
    /// One unary call, as its gRPC method handles it.
    pub async fn handle(&self, rpc: Rpc, req: Request<RaftMessage>) -> Result<RaftMessage, Status> {
        let reply = match rpc {
            Rpc::Vote => self.vote(req).await,
            Rpc::PreVote => self.pre_vote(req).await,
            Rpc::AppendEntries => self.append_entries(req).await,
            Rpc::TransferLeader => self.transfer_leader(req).await,
            Rpc::Report => self.report(req).await,
            Rpc::Forward => self.forward(req).await,
        };
        reply.map(Response::into_inner)
    }

    /// A whole snapshot, as `install_snapshot` handles its chunks.
    pub async fn install_whole(&self, req: Request<()>, meta: &[u8], data: Vec<u8>) -> Result<RaftMessage, Status> {
        let sender = self.sender(&req, "InstallSnapshot")?;
        let (vote, meta) = self.snapshot_meta(&sender, meta)?;
        if data.len() > MAX_SNAPSHOT_BYTES {
            return Err(too_large());
        }
        self.install(vote, meta, data).await.map(Response::into_inner)
    }

    /// The snapshot's vote and metadata, the vote checked against the sender.
    fn snapshot_meta(&self, sender: &Option<Sender>, meta: &[u8]) -> Result<(Vote, SnapshotMeta), Status> {
        let (vote, meta): (Vote, SnapshotMeta) =
            decode(meta, "snapshot metadata").map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.check_claim(sender, voter(&vote), "InstallSnapshot")?;
        Ok((vote, meta))
    }

    async fn install(&self, vote: Vote, meta: SnapshotMeta, data: Vec<u8>) -> Result<Response<RaftMessage>, Status> {
        let snapshot = Snapshot { meta, snapshot: data };
        reply(
            &self
                .raft
                .install_full_snapshot(vote, snapshot)
                .await
                .map_err(internal)?,
        )
    }
}

/// A refused request: logged, and answered PERMISSION_DENIED.
fn refuse(what: &str, certificate: &str, why: String) -> Status {
    tracing::warn!(%what, %certificate, "refused a Raft request: {why}");
    Status::permission_denied(format!("{what} refused: {why}"))
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let sender = self.sender(&req, "Vote")?;
        let rpc: VoteRequest = payload(req)?;
        self.check_claim(&sender, voter(&rpc.vote), "Vote")?;
        reply(&self.raft.vote(rpc).await.map_err(internal)?)
    }

    async fn pre_vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let sender = self.sender(&req, "PreVote")?;
        let rpc: VoteRequest = payload(req)?;
        self.check_claim(&sender, voter(&rpc.vote), "PreVote")?;
        reply(&self.raft.pre_vote(rpc).await.map_err(internal)?)
    }

    async fn append_entries(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let sender = self.sender(&req, "AppendEntries")?;
        let rpc: AppendEntriesRequest = payload(req)?;
        self.check_claim(&sender, voter(&rpc.vote), "AppendEntries")?;
        let resp = self.raft.append_entries(rpc).await.map_err(internal)?;
        if resp.is_success() {
            self.leader_contact.touch();
        }
        reply(&resp)
    }

    async fn install_snapshot(&self, req: Request<Streaming<SnapshotChunk>>) -> Result<Response<RaftMessage>, Status> {
        let sender = self.sender(&req, "InstallSnapshot")?;
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
        let (vote, meta) = self.snapshot_meta(&sender, &meta)?;
        let mut data = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk?.chunk {
                Some(snapshot_chunk::Chunk::Data(d)) if data.len() + d.len() > MAX_SNAPSHOT_BYTES => {
                    return Err(too_large())
                }
                Some(snapshot_chunk::Chunk::Data(d)) => data.extend_from_slice(&d),
                _ => return Err(Status::invalid_argument("only data chunks may follow the metadata")),
            }
        }
        self.install(vote, meta, data).await
    }

    async fn transfer_leader(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let sender = self.sender(&req, "TransferLeader")?;
        let rpc: TransferLeaderRequest = payload(req)?;
        self.check_claim(&sender, voter(rpc.from_leader()), "TransferLeader")?;
        reply(&self.raft.handle_transfer_leader(rpc).await.map_err(internal)?)
    }

    async fn probe(&self, req: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        self.sender(&req, "Probe")?;
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
        let sender = self.member(&req, "Report")?;
        let rpc: crate::node::report::ReportRequest = payload(req)?;
        if let Some(name) = &sender {
            if *name != rpc.node {
                tracing::warn!(certificate = %name, claimed = %rpc.node, "refused a report sent in another member's name");
                return Err(Status::permission_denied(format!(
                    "Report refused: it is sent as '{}' but the certificate is member '{name}'",
                    rpc.node
                )));
            }
        }
        reply(&crate::node::report::handle(&self.raft, &self.sm, &self.book, rpc).await)
    }

    async fn forward(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        if let Some(name) = self.member(&req, "Forward")? {
            tracing::debug!(from = %name, "forwarded proposal");
        }
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
