//! One raftpg node: its Raft group member, its servers, and its background tasks.
//!
//! `Node::start` opens the store, starts openraft and its gRPC server, and
//! spawns the tasks that initialise the group once, log role changes and carry
//! out the Raft leader's duties. `app::start` adds the control API, the HTTP
//! server, the controller and the agent, so this module depends on none of them.
//! `Node::shutdown` stops all of it.

mod init;
mod membership;
#[cfg(test)]
mod memory_tests;
mod propose;
pub mod report;
pub mod status;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use openraft::async_runtime::WatchReceiver;
use tokio::net::TcpListener;
use tokio::sync::watch as tokio_watch;
use tokio::task::JoinHandle;
use tonic::transport::server::{Router, TcpIncoming};
use tonic::transport::Server;

pub use init::{should_initialize, PeerInit};
pub use membership::MembershipError;
pub use propose::{Committed, ProposeError};

use crate::cluster::Command;
use crate::config::Config;
use crate::lease::Book;
use crate::pb::raft::raft_service_server::RaftServiceServer;
use crate::raft::log_store::LogStore;
use crate::raft::network::Network;
use crate::raft::service::{LeaderContact, RaftServer};
use crate::raft::state_machine::{AppliedState, StateMachine};
use crate::raft::store::Store;
use crate::raft::wire::{GrpcWire, MemoryNet, Wire};
use crate::raft::{Raft, RaftMetrics};

/// The longest any Raft RPC may run on the server (a snapshot included: the state is small).
const RAFT_SERVER_TIMEOUT: Duration = Duration::from_secs(60);

/// Default deadline for a proposal made through the control API.
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A running node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    pub raft: Raft,
    pub sm: StateMachine,
    pub cfg: Arc<Config>,
    pub leader_contact: LeaderContact,
    /// On the Raft leader: the agents' reports and the primary's lease clock.
    pub book: Book,
    /// This node's own report, lease, and the leader's view of the members.
    pub local: status::LocalStatus,
    /// How this node reaches its peers (TLS or plaintext, with its identity headers).
    pub transport: crate::tls::Transport,
    /// What carries every message to another node: Raft's, reports, forwarded proposals.
    pub wire: Arc<dyn Wire>,
    /// This node's TLS material, when `[tls]` is configured.
    pub tls: Option<crate::tls::Tls>,
    stop_tx: Arc<tokio_watch::Sender<bool>>,
    /// Set when raftpg stops for a restart of itself: PostgreSQL keeps running.
    leave_postgres: Arc<std::sync::atomic::AtomicBool>,
    tasks: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    /// Set when a background task panicked: the node must stop (`Node::failed`).
    failure: Arc<tokio_watch::Sender<Option<String>>>,
}

impl Node {
    /// Starts the Raft member: store, Raft, its server, initialisation and watchers.
    /// `app::start` adds the control API, the HTTP server, the controller and the agent.
    pub async fn start(cfg: Config) -> anyhow::Result<Node> {
        Node::start_on(cfg, None).await
    }

    /// Starts the Raft member on `net` instead of gRPC: its peers are the nodes of the same
    /// `MemoryNet`, and it listens on no port (the in-process test tier).
    pub async fn start_in_memory(cfg: Config, net: &MemoryNet) -> anyhow::Result<Node> {
        Node::start_on(cfg, Some(net.clone())).await
    }

    async fn start_on(cfg: Config, memory: Option<MemoryNet>) -> anyhow::Result<Node> {
        let me = cfg.me().clone();
        let store = Store::open(&cfg.raft_dir())?;
        crate::raft::log_store::verify(&store, &cfg.raft_dir())?;
        let log_store = LogStore::new(store.clone());
        let sm = StateMachine::open(store).context("cannot load the last Raft snapshot")?;
        let raft_cfg = openraft_config(&cfg)?;
        let rpc_timeout = Duration::from_millis(cfg.raft.rpc_timeout_ms);
        let tls = match &cfg.tls {
            Some(t) => Some(crate::tls::Tls::load(t, &me.name)?),
            None => None,
        };
        let transport = crate::tls::Transport::new(tls.as_ref(), &cfg.cluster.name, &me.name)?;
        let wire: Arc<dyn Wire> = match &memory {
            Some(net) => Arc::new(net.wire(&me.raft, transport.clone())),
            None => Arc::new(GrpcWire::new(transport.clone())),
        };
        let raft = Raft::new(
            me.id,
            Arc::new(raft_cfg),
            Network {
                rpc_timeout,
                wire: wire.clone(),
            },
            log_store,
            sm.clone(),
        )
        .await
        .context("cannot start Raft")?;

        let raft_listener = match memory {
            Some(_) => None,
            None => Some(bind(&me.raft, "members[].raft").await?),
        };
        let (stop_tx, stop_rx) = tokio_watch::channel(false);
        let node = Node {
            raft: raft.clone(),
            sm: sm.clone(),
            cfg: Arc::new(cfg.clone()),
            leader_contact: LeaderContact::default(),
            book: Book::default(),
            local: status::LocalStatus::default(),
            transport: transport.clone(),
            wire: wire.clone(),
            tls: tls.clone(),
            stop_tx: Arc::new(stop_tx),
            leave_postgres: Arc::default(),
            tasks: Arc::default(),
            failure: Arc::new(tokio_watch::channel(None).0),
        };

        let server = Arc::new(RaftServer {
            raft: raft.clone(),
            node_id: me.id,
            cluster: cfg.cluster.name.clone(),
            config_members: cfg.members.iter().map(|m| (m.name.clone(), m.id)).collect(),
            leader_contact: node.leader_contact.clone(),
            sm: sm.clone(),
            book: node.book.clone(),
        });
        match (raft_listener, memory) {
            (Some(listener), _) => {
                let raft_svc = RaftServiceServer::from_arc(server).max_decoding_message_size(64 << 20);
                node.spawn(
                    "raft server",
                    serve(
                        // Every Raft RPC has a deadline on the server too: a peer cannot hold one open.
                        server_builder(tls.as_ref())?
                            .timeout(RAFT_SERVER_TIMEOUT)
                            .add_service(raft_svc),
                        listener,
                        stop_rx.clone(),
                        "raft",
                    ),
                );
            }
            (None, Some(net)) => {
                net.attach(&me.raft, server.clone());
                let (addr, mut stop) = (me.raft.clone(), stop_rx.clone());
                node.spawn("memory server", async move {
                    let _ = stop.wait_for(|s| *s).await;
                    net.detach(&addr, &server);
                });
            }
            (None, None) => unreachable!("a node without a listener is on a MemoryNet"),
        }
        node.spawn(
            "initialisation",
            init::ensure_initialized(raft.clone(), cfg.clone(), wire.clone(), rpc_timeout, stop_rx.clone()),
        );
        node.spawn("role log", watch::log_role_changes(node.clone(), stop_rx.clone()));
        node.spawn("leader duties", watch::leader_duties(node.clone(), stop_rx.clone()));
        node.spawn(
            "primary change timer",
            status::time_primary_changes(node.clone(), stop_rx.clone()),
        );
        Ok(node)
    }

    /// Runs a background task under supervision: if it panics, `failed` resolves and the
    /// node must stop. A node that went on without its agent or lease task would keep a
    /// stale report alive; stopped, its lease lapses and the fence keeper fences PostgreSQL.
    pub(crate) fn spawn(&self, name: &'static str, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        let watcher = supervise(name, tokio::spawn(fut), self.failure.clone());
        self.tasks.lock().expect("tasks lock").push(watcher);
    }

    /// Follows the stop request (true once `shutdown` began), for tasks started outside.
    pub(crate) fn stop_signal(&self) -> tokio_watch::Receiver<bool> {
        self.stop_tx.subscribe()
    }

    /// Resolves when a background task has panicked, with what happened.
    pub async fn failed(&self) -> String {
        let mut rx = self.failure.subscribe();
        let why = match rx.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            Err(_) => return std::future::pending().await,
        };
        why
    }

    pub fn id(&self) -> u64 {
        self.cfg.me().id
    }

    pub fn name(&self) -> &str {
        &self.cfg.node.name
    }

    pub fn rpc_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.raft.rpc_timeout_ms)
    }

    /// The applied replicated state now.
    pub fn state(&self) -> AppliedState {
        self.sm.current()
    }

    /// Follows every change of the applied state.
    pub fn subscribe(&self) -> tokio_watch::Receiver<AppliedState> {
        self.sm.subscribe()
    }

    /// A copy of the Raft metrics (never hold the watch borrow across an await).
    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow_watched().clone()
    }

    /// Every member's last report: the Raft leader's own book here, else the view it
    /// passed on with the last report reply (empty until one arrived).
    pub fn cluster_view(&self) -> crate::decide::view::ClusterView {
        let m = self.metrics();
        if m.current_leader == Some(self.id()) && m.state == openraft::ServerState::Leader {
            let state = self.state().state;
            return self.book.view(&state, tokio::time::Instant::now());
        }
        self.local.view().unwrap_or_default()
    }

    /// Raft voters, learners and leader as this node knows them.
    pub fn raft_view(&self) -> crate::decide::view::RaftView {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let learners = membership.learner_ids().collect();
        crate::decide::view::RaftView {
            voters,
            learners,
            leader: m.current_leader,
        }
    }

    /// Proposes a command from this node; forwarded to the Raft leader if needed.
    pub async fn propose(&self, cmd: Command, timeout: Duration) -> Result<Committed, ProposeError> {
        propose::propose(&self.raft, self.wire.as_ref(), cmd, timeout, self.rpc_timeout()).await
    }

    /// Proposes a command only while this node is the Raft leader (the controller's decisions).
    pub async fn propose_as_leader(&self, cmd: Command, timeout: Duration) -> Result<Committed, ProposeError> {
        propose::propose_as_leader(&self.raft, cmd, timeout).await
    }

    /// Whether this stop leaves PostgreSQL running (a restart of raftpg itself).
    pub fn leaves_postgres_running(&self) -> bool {
        self.leave_postgres.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops raftpg but not PostgreSQL, for a restart of raftpg itself (an upgrade).
    /// Raft leadership goes to another voter first, so that the primary's next renewal
    /// finds a leader at once; the fence keeper stays armed with the current lease, so
    /// PostgreSQL is fenced if the next raftpg does not renew it in time.
    pub async fn shutdown_for_restart(&self) {
        self.leave_postgres.store(true, std::sync::atomic::Ordering::SeqCst);
        self.hand_over_leadership().await;
        self.shutdown().await;
    }

    async fn hand_over_leadership(&self) {
        let me = self.id();
        let m = self.metrics();
        if m.current_leader != Some(me) {
            return;
        }
        let state = self.state().state;
        let primary = state.primary.as_ref().map(|p| p.node.clone());
        let voters: Vec<u64> = m
            .membership_config
            .membership()
            .voter_ids()
            .filter(|v| *v != me)
            .collect();
        // The controller keeps the Raft leader off the primary's node: so does this.
        let to = voters
            .iter()
            .copied()
            .find(|v| {
                state
                    .members
                    .values()
                    .any(|mb| mb.id == *v && Some(&mb.name) != primary.as_ref())
            })
            .or_else(|| voters.first().copied());
        let Some(to) = to else { return };
        if let Err(e) = self.raft.trigger().transfer_leader(to).await {
            tracing::warn!("cannot hand Raft leadership to node {to} before restarting: {e}");
            return;
        }
        let wait = Duration::from_millis(2 * self.cfg.raft.election_timeout_max_ms);
        match self
            .raft
            .wait(Some(wait))
            .metrics(|m| m.current_leader.is_some_and(|l| l != me), "leadership handed over")
            .await
        {
            Ok(m) => tracing::info!(
                "Raft leadership handed to node {:?} before restarting",
                m.current_leader
            ),
            Err(e) => {
                tracing::warn!("Raft leadership not handed over before restarting ({e}): the others elect a leader")
            }
        }
    }

    /// Stops background tasks (the agent stops PostgreSQL unless raftpg restarts),
    /// servers and Raft. Durable state is already on disk.
    pub async fn shutdown(&self) {
        self.stop_tx.send_replace(true);
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock().expect("tasks lock"));
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(70), t).await;
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("Raft did not stop cleanly: {e}");
        }
        tracing::info!(node = %self.name(), "raftpg node stopped");
    }
}

/// Waits for `task`; a panic is logged and published on `failure`.
fn supervise(
    name: &'static str,
    task: JoinHandle<()>,
    failure: Arc<tokio_watch::Sender<Option<String>>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Err(e) = task.await else { return };
        if !e.is_panic() {
            return;
        }
        let payload = e.into_panic();
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        let why = format!("the {name} task panicked: {what}");
        tracing::error!("{why}: stopping raftpg, so that its lease lapses and the fence keeper fences PostgreSQL");
        failure.send_if_modified(|f| {
            let first = f.is_none();
            if first {
                *f = Some(why);
            }
            first
        });
    })
}

fn openraft_config(cfg: &Config) -> anyhow::Result<openraft::Config> {
    let r = &cfg.raft;
    let c = openraft::Config {
        cluster_name: cfg.cluster.name.clone(),
        heartbeat_interval: r.heartbeat_ms,
        election_timeout_min: r.election_timeout_min_ms,
        election_timeout_max: r.election_timeout_max_ms,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(r.snapshot_after_logs),
        max_in_snapshot_log_to_keep: r.logs_to_keep,
        enable_pre_vote: Some(true),
        install_snapshot_timeout: (r.rpc_timeout_ms * 10).max(10_000),
        ..Default::default()
    };
    c.validate().context("invalid [raft] settings")
}

/// A gRPC server builder with mutual TLS when it is configured.
pub(crate) fn server_builder(tls: Option<&crate::tls::Tls>) -> anyhow::Result<Server> {
    // Bounds for what a client can hold: streams per connection, and a TLS handshake.
    let b = Server::builder()
        .concurrency_limit_per_connection(64)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    match tls {
        Some(t) => b
            .tls_config(t.server().timeout(Duration::from_secs(5)))
            .context("cannot use the [tls] certificate and key: is the key the certificate's?"),
        None => Ok(b),
    }
}

pub(crate) async fn bind(addr: &str, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({key}): is another process using the port, or is the address not on this machine?"))
}

pub(crate) async fn serve(
    router: Router,
    listener: TcpListener,
    mut stop: tokio_watch::Receiver<bool>,
    what: &'static str,
) {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let result = router
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!("{what} server failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_is_reported_once_with_its_name_and_message() {
        let (tx, mut rx) = tokio_watch::channel(None);
        let failure = Arc::new(tx);
        let quiet = supervise("quiet", tokio::spawn(async {}), failure.clone());
        quiet.await.expect("the watcher ends");
        assert_eq!(*rx.borrow_and_update(), None, "a task that returns is no failure");
        let first = supervise("agent", tokio::spawn(async { panic!("boom {}", 1) }), failure.clone());
        first.await.expect("the watcher ends");
        let second = supervise("lease", tokio::spawn(async { panic!("later") }), failure.clone());
        second.await.expect("the watcher ends");
        let why = rx.borrow_and_update().clone();
        assert_eq!(
            why.as_deref(),
            Some("the agent task panicked: boom 1"),
            "the first failure is kept"
        );
    }
}
