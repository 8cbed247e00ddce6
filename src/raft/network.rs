//! Raft transport, client side: one lazily connected tonic channel per peer.
//!
//! Every call has a deadline. A peer that cannot be connected to is reported
//! as `Unreachable`, so openraft backs off instead of retrying in a tight
//! loop, and a slow peer only ever delays its own replication stream.

use std::future::Future;
use std::time::Duration;

use openraft::error::{NetworkError, ReplicationClosed, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::{AnyError, BasicNode, OptionalSend};
use tonic::transport::Channel;

use crate::tls::Transport;

use super::codec::{decode, encode};
use super::types::*;
use crate::pb::raft::raft_service_client::RaftServiceClient;
use crate::pb::raft::{snapshot_chunk, RaftMessage, SnapshotChunk};

/// Snapshot data is sent in pieces of this size.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Wait between attempts to reach an unreachable peer.
const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(200);

/// Builds a lazily connecting client for `addr` with connect and request deadlines.
pub fn channel(transport: &Transport, addr: &str, timeout: Duration) -> Result<Channel, String> {
    let endpoint = transport.endpoint(addr)?;
    Ok(endpoint
        .connect_timeout(timeout)
        .timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(timeout)
        .connect_lazy())
}

/// Creates one `Peer` per target node.
pub struct Network {
    pub rpc_timeout: Duration,
    pub transport: Transport,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            target,
            addr: node.addr.clone(),
            rpc_timeout: self.rpc_timeout,
            transport: self.transport.clone(),
            client: None,
        }
    }
}

/// The connection to one peer.
pub struct Peer {
    target: NodeId,
    addr: String,
    rpc_timeout: Duration,
    transport: Transport,
    client: Option<RaftServiceClient<Channel>>,
}

fn unreachable(e: impl std::fmt::Display) -> RPCError {
    RPCError::Unreachable(Unreachable::new(&AnyError::error(e.to_string())))
}

fn network(e: impl std::fmt::Display) -> RPCError {
    RPCError::Network(NetworkError::new(&AnyError::error(e.to_string())))
}

/// Maps a gRPC status: connection problems are `Unreachable`, the rest network errors.
fn from_status(target: NodeId, s: tonic::Status) -> RPCError {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            unreachable(format!("node {target}: {}", s.message()))
        }
        _ => network(format!("node {target}: {}: {}", s.code(), s.message())),
    }
}

impl Peer {
    fn client(&mut self) -> Result<RaftServiceClient<Channel>, RPCError> {
        if self.client.is_none() {
            let ch = channel(&self.transport, &self.addr, self.rpc_timeout).map_err(unreachable)?;
            self.client = Some(RaftServiceClient::new(ch));
        }
        Ok(self.client.clone().expect("set above"))
    }

    /// One unary call with an overall deadline, payload and reply postcard-encoded.
    async fn call<Req, Resp, F, Fut>(&mut self, req: &Req, option: &RPCOption, f: F) -> Result<Resp, RPCError>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        F: FnOnce(RaftServiceClient<Channel>, tonic::Request<RaftMessage>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftMessage>, tonic::Status>>,
    {
        let client = self.client()?;
        let msg = self.transport.request(RaftMessage { payload: encode(req) });
        let deadline = option.soft_ttl().min(self.rpc_timeout);
        let reply = tokio::time::timeout(deadline, f(client, msg))
            .await
            .map_err(|_| unreachable(format!("node {}: no answer within {deadline:?}", self.target)))?
            .map_err(|s| from_status(self.target, s))?;
        decode(&reply.into_inner().payload, "Raft reply").map_err(network)
    }
}

impl RaftNetworkV2<TypeConfig> for Peer {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse, RPCError> {
        self.call(&rpc, &option, |mut c, m| async move { c.append_entries(m).await })
            .await
    }

    async fn vote(&mut self, rpc: VoteRequest, option: RPCOption) -> Result<VoteResponse, RPCError> {
        self.call(&rpc, &option, |mut c, m| async move { c.vote(m).await })
            .await
    }

    async fn pre_vote(&mut self, rpc: VoteRequest, option: RPCOption) -> Result<VoteResponse, RPCError> {
        self.call(&rpc, &option, |mut c, m| async move { c.pre_vote(m).await })
            .await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse, RPCError> {
        self.call(&req, &option, |mut c, m| async move { c.transfer_leader(m).await })
            .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse, StreamingError> {
        let mut client = self
            .client()
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?;
        let mut chunks = vec![SnapshotChunk {
            chunk: Some(snapshot_chunk::Chunk::Meta(encode(&(vote, snapshot.meta)))),
        }];
        chunks.extend(snapshot.snapshot.chunks(SNAPSHOT_CHUNK_BYTES).map(|c| SnapshotChunk {
            chunk: Some(snapshot_chunk::Chunk::Data(c.to_vec())),
        }));
        let target = self.target;
        let req = self.transport.request(futures::stream::iter(chunks));
        let send = async move { client.install_snapshot(req).await };
        let deadline = option.hard_ttl();
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = tokio::time::timeout(deadline, send) => r,
        };
        let reply = reply
            .map_err(|_| {
                let e = AnyError::error(format!("node {target}: snapshot not installed within {deadline:?}"));
                StreamingError::Unreachable(Unreachable::new(&e))
            })?
            .map_err(|s| match from_status(target, s) {
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                other => StreamingError::Network(NetworkError::new(&other)),
            })?;
        decode(&reply.into_inner().payload, "snapshot reply")
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))
    }

    fn backoff(&self) -> Option<Backoff> {
        Some(Backoff::new(std::iter::repeat(UNREACHABLE_BACKOFF)))
    }
}
