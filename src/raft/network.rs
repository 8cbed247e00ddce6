//! Raft transport, client side: one lazily opened `wire::Link` per peer.
//!
//! Every call has a deadline. A peer that cannot be connected to is reported
//! as `Unreachable`, so openraft backs off instead of retrying in a tight
//! loop, and a slow peer only ever delays its own replication stream.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{NetworkError, ReplicationClosed, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::{AnyError, BasicNode, OptionalSend};
use tonic::transport::Channel;

use crate::tls::Transport;

use super::codec::{decode, encode};
use super::types::*;
use super::wire::{Link, Rpc, Wire, WireError};
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
    pub wire: Arc<dyn Wire>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            target,
            addr: node.addr.clone(),
            rpc_timeout: self.rpc_timeout,
            wire: self.wire.clone(),
            link: None,
        }
    }
}

/// The connection to one peer.
pub struct Peer {
    target: NodeId,
    addr: String,
    rpc_timeout: Duration,
    wire: Arc<dyn Wire>,
    link: Option<Box<dyn Link>>,
}

fn unreachable(e: impl std::fmt::Display) -> RPCError {
    RPCError::Unreachable(Unreachable::new(&AnyError::error(e.to_string())))
}

fn network(e: impl std::fmt::Display) -> RPCError {
    RPCError::Network(NetworkError::new(&AnyError::error(e.to_string())))
}

/// Maps a failed call: connection problems are `Unreachable`, the rest network errors.
fn from_wire(target: NodeId, e: WireError) -> RPCError {
    match e {
        WireError::Timeout(m) | WireError::Unreachable(m) => unreachable(format!("node {target}: {m}")),
        WireError::Failed { code, message } => network(format!("node {target}: {code:?}: {message}")),
    }
}

impl Peer {
    fn link(&mut self) -> Result<&dyn Link, RPCError> {
        if self.link.is_none() {
            self.link = Some(self.wire.link(&self.addr, self.rpc_timeout).map_err(unreachable)?);
        }
        Ok(self.link.as_deref().expect("set above"))
    }

    /// One unary call with an overall deadline, payload and reply postcard-encoded.
    async fn call<Req, Resp>(&mut self, rpc: Rpc, req: &Req, option: &RPCOption) -> Result<Resp, RPCError>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
    {
        let target = self.target;
        let deadline = option.soft_ttl().min(self.rpc_timeout);
        let reply = self.link()?.call(rpc, encode(req), deadline);
        let reply = reply.await.map_err(|e| from_wire(target, e))?;
        decode(&reply, "Raft reply").map_err(network)
    }
}

impl RaftNetworkV2<TypeConfig> for Peer {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse, RPCError> {
        self.call(Rpc::AppendEntries, &rpc, &option).await
    }

    async fn vote(&mut self, rpc: VoteRequest, option: RPCOption) -> Result<VoteResponse, RPCError> {
        self.call(Rpc::Vote, &rpc, &option).await
    }

    async fn pre_vote(&mut self, rpc: VoteRequest, option: RPCOption) -> Result<VoteResponse, RPCError> {
        self.call(Rpc::PreVote, &rpc, &option).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse, RPCError> {
        self.call(Rpc::TransferLeader, &req, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse, StreamingError> {
        let target = self.target;
        let deadline = option.hard_ttl();
        let send = self
            .link()
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?
            .snapshot(encode(&(vote, snapshot.meta)), snapshot.snapshot, deadline);
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = send => r,
        };
        let reply = reply.map_err(|e| match from_wire(target, e) {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            other => StreamingError::Network(NetworkError::new(&other)),
        })?;
        decode(&reply, "snapshot reply").map_err(|e| StreamingError::Network(NetworkError::new(&e)))
    }

    fn backoff(&self) -> Option<Backoff> {
        Some(Backoff::new(std::iter::repeat(UNREACHABLE_BACKOFF)))
    }
}
