//! The network between nodes, as one seam.
//!
//! Every call of the Raft service, from one raftpg node to another, goes through a `Wire`:
//! Raft's RPCs (openraft's
//! `RaftNetworkV2`, `network.rs`), the agents' reports and lease renewals
//! (`node::report::ReportClient`), forwarded proposals (`node::propose`) and the probe that
//! decides who initialises the group (`node::init`). Payloads are the postcard bytes that
//! travel in a `RaftMessage`. (The control API's hop to the leader's control port, for
//! `ctl member add`, is a client's call and does not.)
//!
//! - `GrpcWire` is the process's: tonic over TCP, mutual TLS when `[tls]` is set, and the
//!   headers that name the cluster and the sender on every call.
//! - `MemoryWire` connects nodes in one process through a `MemoryNet`: each call runs the
//!   peer's own `RaftServer` handlers, with the checks of a plaintext listener (the cluster
//!   header; the certificate checks need TLS and are tested over gRPC, `tests/security.rs`),
//!   and the net loses messages per direction, or refuses them for a node that is down. The
//!   in-process test tier (`node::memory_tests`) runs real openraft nodes over it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tonic::transport::Channel;

use super::network::channel;
use super::service::RaftServer;
use crate::pb::raft::raft_service_client::RaftServiceClient;
use crate::pb::raft::raft_service_server::RaftService;
use crate::pb::raft::{snapshot_chunk, ProbeRequest, RaftMessage, SnapshotChunk};
use crate::tls::Transport;

/// Snapshot data is sent in pieces of this size.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// The unary calls between nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rpc {
    Vote,
    PreVote,
    AppendEntries,
    TransferLeader,
    Report,
    Forward,
}

/// Why a call brought no reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Nothing answered within the call's timeout: the peer is partitioned, slow or down.
    Timeout(String),
    /// The peer cannot be connected to, or the connection broke.
    Unreachable(String),
    /// The peer answered with an error: it refused the sender, could not decode the
    /// request, or failed to handle it.
    Failed { code: tonic::Code, message: String },
}

impl WireError {
    /// A gRPC status: connection problems and deadlines are `Unreachable`.
    pub fn from_status(s: tonic::Status) -> WireError {
        match s.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                WireError::Unreachable(s.message().to_string())
            }
            code => WireError::Failed {
                code,
                message: s.message().to_string(),
            },
        }
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Timeout(m) | WireError::Unreachable(m) => f.write_str(m),
            WireError::Failed { code, message } => write!(f, "{code:?}: {message}"),
        }
    }
}

/// The reply to a call, or why there was none.
pub type Reply = BoxFuture<'static, Result<Vec<u8>, WireError>>;

/// A lazily opened connection to one peer.
pub trait Link: Send + Sync {
    /// One call, answered within `timeout` or `WireError::Timeout`.
    fn call(&self, rpc: Rpc, payload: Vec<u8>, timeout: Duration) -> Reply;
    /// A whole snapshot: `meta` is the encoded `(Vote, SnapshotMeta)`, `data` the state.
    fn snapshot(&self, meta: Vec<u8>, data: Vec<u8>, timeout: Duration) -> Reply;
    /// Whether the peer's Raft is initialised; it refuses a probe for another `cluster`.
    fn probe(&self, cluster: String, timeout: Duration) -> BoxFuture<'static, Result<bool, WireError>>;
}

/// Opens links to the other nodes, by their Raft address.
pub trait Wire: Send + Sync {
    /// A link of its own to `addr`, whose calls do not queue behind another link's (Raft's
    /// replication to one peer, the lease task's reports). `timeout` bounds connecting and,
    /// over gRPC, every call on the link too (tonic's `Endpoint::timeout`): a call given a
    /// longer timeout is cut at this one (`Cancelled`, so `Unreachable`).
    fn link(&self, addr: &str, timeout: Duration) -> Result<Box<dyn Link>, String>;
    /// A link to `addr` that occasional callers share (forwarded proposals), kept open.
    fn shared(&self, addr: &str) -> Result<Box<dyn Link>, String>;
}

/// The process's wire: gRPC over TCP, with mutual TLS when it is configured.
pub struct GrpcWire {
    transport: Transport,
}

impl GrpcWire {
    pub fn new(transport: Transport) -> GrpcWire {
        GrpcWire { transport }
    }

    fn over(&self, addr: &str, ch: Channel) -> Box<dyn Link> {
        Box::new(GrpcLink {
            client: RaftServiceClient::new(ch),
            transport: self.transport.clone(),
            addr: addr.to_string(),
        })
    }
}

impl Wire for GrpcWire {
    fn link(&self, addr: &str, timeout: Duration) -> Result<Box<dyn Link>, String> {
        Ok(self.over(addr, channel(&self.transport, addr, timeout)?))
    }

    fn shared(&self, addr: &str) -> Result<Box<dyn Link>, String> {
        // One long-lived connection per address: a TLS handshake per forwarded proposal
        // cost about 0.6 ms (commit_latency bench).
        Ok(self.over(addr, self.transport.shared_channel(addr)?))
    }
}

struct GrpcLink {
    client: RaftServiceClient<Channel>,
    transport: Transport,
    addr: String,
}

impl GrpcLink {
    /// `call` bounded by `timeout`, its status mapped.
    fn bounded<F>(&self, timeout: Duration, call: F) -> Reply
    where
        F: std::future::Future<Output = Result<tonic::Response<RaftMessage>, tonic::Status>> + Send + 'static,
    {
        let addr = self.addr.clone();
        Box::pin(async move {
            match tokio::time::timeout(timeout, call).await {
                Err(_) => Err(WireError::Timeout(format!("no answer from {addr} within {timeout:?}"))),
                Ok(Err(s)) => Err(WireError::from_status(s)),
                Ok(Ok(reply)) => Ok(reply.into_inner().payload),
            }
        })
    }
}

impl Link for GrpcLink {
    fn call(&self, rpc: Rpc, payload: Vec<u8>, timeout: Duration) -> Reply {
        let mut client = self.client.clone();
        let mut req = self.transport.request(RaftMessage { payload });
        if matches!(rpc, Rpc::Report | Rpc::Forward) {
            // The server gives up on the call with its caller. Raft's calls go without the
            // header, as before the seam: the server bounds them by its own limit only
            // (`RAFT_SERVER_TIMEOUT`) and does not cancel a handler at the caller's deadline.
            req.set_timeout(timeout);
        }
        self.bounded(timeout, async move {
            match rpc {
                Rpc::Vote => client.vote(req).await,
                Rpc::PreVote => client.pre_vote(req).await,
                Rpc::AppendEntries => client.append_entries(req).await,
                Rpc::TransferLeader => client.transfer_leader(req).await,
                Rpc::Report => client.report(req).await,
                Rpc::Forward => client.forward(req).await,
            }
        })
    }

    fn snapshot(&self, meta: Vec<u8>, data: Vec<u8>, timeout: Duration) -> Reply {
        let mut client = self.client.clone();
        let mut chunks = vec![SnapshotChunk {
            chunk: Some(snapshot_chunk::Chunk::Meta(meta)),
        }];
        chunks.extend(data.chunks(SNAPSHOT_CHUNK_BYTES).map(|c| SnapshotChunk {
            chunk: Some(snapshot_chunk::Chunk::Data(c.to_vec())),
        }));
        let req = self.transport.request(futures::stream::iter(chunks));
        self.bounded(timeout, async move { client.install_snapshot(req).await })
    }

    fn probe(&self, cluster: String, timeout: Duration) -> BoxFuture<'static, Result<bool, WireError>> {
        let mut client = self.client.clone();
        let req = self.transport.request(ProbeRequest { cluster });
        let addr = self.addr.clone();
        Box::pin(async move {
            match tokio::time::timeout(timeout, client.probe(req)).await {
                Err(_) => Err(WireError::Timeout(format!("no answer from {addr} within {timeout:?}"))),
                Ok(Err(s)) => Err(WireError::from_status(s)),
                Ok(Ok(r)) => Ok(r.into_inner().initialized),
            }
        })
    }
}

/// Nodes of one process and the faults between them, by Raft address.
#[derive(Clone, Default)]
pub struct MemoryNet {
    inner: Arc<Mutex<Nodes>>,
}

#[derive(Default)]
struct Nodes {
    servers: HashMap<String, Arc<RaftServer>>,
    /// (from, to): every message in that direction is lost.
    cut: BTreeSet<(String, String)>,
    /// Every message to or from these is lost, whoever attaches later.
    isolated: BTreeSet<String>,
}

impl MemoryNet {
    fn nodes(&self) -> std::sync::MutexGuard<'_, Nodes> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node at `addr` answers from now on (its `raft` address in the config).
    pub fn attach(&self, addr: &str, server: Arc<RaftServer>) {
        self.nodes().servers.insert(addr.to_string(), server);
    }

    /// `server` at `addr` is down: calls to it are refused at once, as a closed port is.
    /// A server attached at `addr` since (the node restarted) stays.
    pub fn detach(&self, addr: &str, server: &Arc<RaftServer>) {
        let mut nodes = self.nodes();
        if nodes.servers.get(addr).is_some_and(|s| Arc::ptr_eq(s, server)) {
            nodes.servers.remove(addr);
        }
    }

    /// Loses every message from `from` to `to` (one direction), until `heal`: a call
    /// across the cut waits out its timeout (`WireError::Timeout`), as with dropped packets.
    pub fn cut(&self, from: &str, to: &str) {
        self.nodes().cut.insert((from.to_string(), to.to_string()));
    }

    /// Cuts `addr` from every other node, both ways, those that attach later included.
    pub fn isolate(&self, addr: &str) {
        self.nodes().isolated.insert(addr.to_string());
    }

    /// Every cut and isolation is gone.
    pub fn heal(&self) {
        let mut nodes = self.nodes();
        nodes.cut.clear();
        nodes.isolated.clear();
    }

    fn is_cut(&self, from: &str, to: &str) -> bool {
        let nodes = self.nodes();
        from != to
            && (nodes.isolated.contains(from)
                || nodes.isolated.contains(to)
                || nodes.cut.contains(&(from.to_string(), to.to_string())))
    }

    /// The wire of the node at `me`, which sends with `transport`'s headers.
    pub fn wire(&self, me: &str, transport: Transport) -> MemoryWire {
        MemoryWire {
            net: self.clone(),
            me: me.to_string(),
            transport,
        }
    }
}

/// One node's wire in a `MemoryNet`.
pub struct MemoryWire {
    net: MemoryNet,
    me: String,
    transport: Transport,
}

impl Wire for MemoryWire {
    fn link(&self, addr: &str, _timeout: Duration) -> Result<Box<dyn Link>, String> {
        Ok(Box::new(MemoryLink {
            net: self.net.clone(),
            from: self.me.clone(),
            to: addr.to_string(),
            transport: self.transport.clone(),
        }))
    }

    fn shared(&self, addr: &str) -> Result<Box<dyn Link>, String> {
        self.link(addr, Duration::ZERO)
    }
}

struct MemoryLink {
    net: MemoryNet,
    from: String,
    to: String,
    transport: Transport,
}

impl MemoryLink {
    /// Runs `handle` on the peer's server as a call across the net would: refused at once
    /// when the peer is down, lost (after `timeout`) when either direction is cut.
    fn across<T, F, Fut>(&self, timeout: Duration, handle: F) -> BoxFuture<'static, Result<T, WireError>>
    where
        T: Send + 'static,
        F: FnOnce(Arc<RaftServer>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, tonic::Status>> + Send,
    {
        let (net, from, to) = (self.net.clone(), self.from.clone(), self.to.clone());
        Box::pin(async move {
            let lost = || WireError::Timeout(format!("no answer from {to} within {timeout:?}"));
            let start = tokio::time::Instant::now();
            let Some(server) = net.nodes().servers.get(&to).cloned() else {
                return Err(WireError::Unreachable(format!("{to}: connection refused")));
            };
            if net.is_cut(&from, &to) {
                tokio::time::sleep(timeout).await;
                return Err(lost());
            }
            let reply = tokio::time::timeout(timeout, handle(server))
                .await
                .map_err(|_| lost())?;
            if net.is_cut(&to, &from) {
                tokio::time::sleep_until(start + timeout).await;
                return Err(lost());
            }
            reply.map_err(WireError::from_status)
        })
    }
}

impl Link for MemoryLink {
    fn call(&self, rpc: Rpc, payload: Vec<u8>, timeout: Duration) -> Reply {
        let req = self.transport.request(RaftMessage { payload });
        self.across(timeout, move |server| async move {
            server.handle(rpc, req).await.map(|r| r.payload)
        })
    }

    fn snapshot(&self, meta: Vec<u8>, data: Vec<u8>, timeout: Duration) -> Reply {
        let req = self.transport.request(());
        self.across(timeout, move |server| async move {
            server.install_whole(req, &meta, data).await.map(|r| r.payload)
        })
    }

    fn probe(&self, cluster: String, timeout: Duration) -> BoxFuture<'static, Result<bool, WireError>> {
        let req = self.transport.request(ProbeRequest { cluster });
        self.across(timeout, move |server| async move {
            RaftService::probe(server.as_ref(), req)
                .await
                .map(|r| r.into_inner().initialized)
        })
    }
}
