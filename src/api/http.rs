//! HTTP health checks and metrics, on each node's `http` address, with Patroni's paths and
//! status codes so an existing `haproxy.cfg` works by changing only the port:
//! `GET|HEAD|OPTIONS` `/primary` (200 only on the lease-holding primary, else 503),
//! `/replica[?lag=16MB]`, `/read-only`, `/sync`, `/async`, `/health`, `/liveness`,
//! `/readiness`, `/cluster` (JSON) and `/metrics` (Prometheus text).

use std::collections::HashMap;
use std::fmt::Write;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cluster::parse_bytes;
use crate::decide::election::lsn;
use crate::decide::view::{self, health, Check, HealthInput, MemberRow};
use crate::node::Node;
use crate::types::Generation;

/// How the HTTP port is served: `[http]` of the config, loaded.
#[derive(Clone, Default)]
pub struct Options {
    /// HTTPS with the node's certificate.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Basic authentication for `/cluster` and `/metrics`: (user, password).
    pub auth: Option<(String, String)>,
}

impl Options {
    /// Reads `[http]`: the password file, and the node's certificate for HTTPS.
    pub fn load(cfg: &crate::config::Config, tls: Option<&crate::tls::Tls>) -> anyhow::Result<Options> {
        use anyhow::Context;
        let tls = match (cfg.http.tls, tls) {
            (true, Some(t)) => Some(t.http_acceptor()?),
            _ => None,
        };
        let auth = match (&cfg.http.username, &cfg.http.password_file) {
            (Some(user), Some(file)) => {
                let pw = std::fs::read_to_string(file)
                    .with_context(|| format!("http.password_file: cannot read {}", file.display()))?;
                let pw = pw.trim_end_matches(['\n', '\r']).to_string();
                anyhow::ensure!(!pw.is_empty(), "http.password_file: {} is empty", file.display());
                Some((user.clone(), pw))
            }
            _ => None,
        };
        Ok(Options { tls, auth })
    }
}

pub async fn serve(node: Node, listener: TcpListener, options: Options, mut stop: watch::Receiver<bool>) {
    let protected = Router::new()
        .route("/cluster", get(cluster))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(
            options.auth.clone().map(std::sync::Arc::new),
            basic_auth,
        ));
    let app = protected.fallback(check).with_state(node);
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let result = match options.tls {
        Some(acceptor) => {
            axum::serve(TlsListener::new(listener, acceptor), app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => axum::serve(listener, app).with_graceful_shutdown(shutdown).await,
    };
    if let Err(e) = result {
        tracing::error!("http server failed: {e}");
    }
}

/// Requires `Authorization: Basic` with the configured user and password, when set.
async fn basic_auth(
    State(auth): State<Option<std::sync::Arc<(String, String)>>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(auth) = auth else {
        return next.run(req).await;
    };
    use base64::Engine as _;
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .unwrap_or_default();
    let expected = format!("{}:{}", auth.0, auth.1);
    if constant_time_eq(&given, expected.as_bytes()) {
        return next.run(req).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"raftpg\"")],
        "this path needs the user and password of [http] in raftpg.toml\n",
    )
        .into_response()
}

/// Compares without stopping at the first difference (no timing hint of the password).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Accepts TCP connections and hands over those whose TLS handshake completed, each
/// handshake in its own task (with a deadline), so a slow client delays no other.
struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        std::net::SocketAddr,
    )>,
    local: std::io::Result<std::net::SocketAddr>,
}

/// The longest TLS handshake the HTTP port waits for.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl TlsListener {
    fn new(listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor) -> TlsListener {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let local = listener.local_addr();
        tokio::spawn(async move {
            loop {
                let (tcp, addr) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!("http accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, addr)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, "https handshake failed: {e}"),
                        Err(_) => tracing::debug!(%addr, "https handshake took longer than {HANDSHAKE_TIMEOUT:?}"),
                    }
                });
            }
        });
        TlsListener { rx, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        match &self.local {
            Ok(a) => Ok(*a),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}

/// Every health path; GET, HEAD and OPTIONS answer alike (HAProxy sends OPTIONS).
async fn check(State(node): State<Node>, uri: Uri, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(check) = Check::from_path(uri.path()) else {
        return (
            StatusCode::NOT_FOUND,
            "unknown path: see the README for the health check paths\n",
        )
            .into_response();
    };
    let max_lag = match q.get("lag").map(|l| parse_bytes(l).ok()) {
        Some(None) => {
            return (
                StatusCode::BAD_REQUEST,
                "lag must be bytes or a size with a unit, e.g. ?lag=16MB\n",
            )
                .into_response()
        }
        Some(Some(l)) => Some(l),
        None => None,
    };
    let state = node.state().state;
    let own = node.local.own();
    let rows = view::rows(&state, &node.cluster_view(), &node.raft_view());
    let me = rows.iter().find(|r| r.name == node.name());
    let input = HealthInput {
        me: node.name(),
        state: &state,
        own: own.as_ref().map(|o| (o.age.as_millis() as u64, &o.report)),
        gated: own.as_ref().is_some_and(|o| o.gated),
        lease_remaining_ms: node
            .local
            .lease_remaining(state.generation)
            .map(|d| d.as_millis() as u64),
        lag_bytes: me.and_then(|r| r.lag_bytes),
        max_lag,
    };
    let ok = health(check, &input);
    // Readable without credentials (HAProxy's checks): the role only. `/cluster` and
    // `/metrics` say the rest, behind [http] basic authentication when it is set.
    let body = serde_json::json!({ "role": me.map(|r| patroni_role(&r.role)) });
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

/// Patroni's role words in `/cluster`: `leader` for the primary.
fn patroni_role(role: &str) -> &str {
    match role {
        "primary" => "leader",
        other => other,
    }
}

async fn cluster(State(node): State<Node>) -> Response {
    let s = node.state().state;
    let raft = node.raft_view();
    let rows = view::rows(&s, &node.cluster_view(), &raft);
    let members: Vec<_> = rows
        .iter()
        .map(|r| {
            let (host, port) = r.host.rsplit_once(':').unwrap_or((&r.host, ""));
            serde_json::json!({
                "name": r.name,
                "role": patroni_role(&r.role),
                "state": r.state,
                "api_url": r.api_url,
                "host": host,
                "port": port.parse::<u16>().ok(),
                "timeline": r.timeline,
                "lsn": r.lsn.map(lsn),
                "lag": r.lag_bytes,
                "lease_remaining_ms": r.lease_remaining_ms,
                "pending_restart": r.pending_restart,
                "reason": r.reason,
                "raft": r.raft,
                "raft_leader": r.raft_leader,
                "tags": {
                    "nofailover": r.nofailover, "failover_priority": r.failover_priority,
                    "nosync": r.nosync, "noloadbalance": r.noloadbalance, "replica": r.replica, "replicatefrom": r.replicatefrom,
                },
            })
        })
        .collect();
    let body = serde_json::json!({
        "scope": node.cfg.cluster.name,
        "members": members,
        "pause": s.paused,
        "generation": s.generation,
        "raft_leader": raft.leader.map(|id| s.label_of(id)),
        "pending": s.pending.as_ref().map(crate::api::grpc::describe_pending),
        "scheduled_switchover": s.scheduled_switchover.as_ref().map(|x| serde_json::json!({
            "from": x.from, "to": x.to, "at_unix_ms": x.at_unix_ms,
        })),
        "degraded": s.degraded.as_ref().map(|d| serde_json::json!({
            "since_unix_ms": d.since_unix_ms, "streaming": d.streaming, "restoring": d.restoring,
        })),
    });
    axum::Json(body).into_response()
}

async fn metrics(State(node): State<Node>) -> Response {
    let s = node.state().state;
    let raft = node.metrics();
    let rows = view::rows(&s, &node.cluster_view(), &node.raft_view());
    let lease = node.local.lease_remaining(s.generation);
    let (last_failover, last_switchover) = node.local.last_changes();
    let text = render_metrics(&MetricsInput {
        cluster: &node.cfg.cluster.name,
        me: node.name(),
        rows: &rows,
        generation: s.generation,
        paused: s.paused,
        degraded: s.degraded.is_some(),
        failovers: s.count_changes(crate::cluster::ChangeKind::Failover),
        switchovers: s.count_changes(crate::cluster::ChangeKind::Switchover),
        lease_remaining_s: lease.map(|d| d.as_secs_f64()),
        renewal_gap_max_s: node.local.longest_renewal_gap().map(|d| d.as_secs_f64()),
        last_failover_s: last_failover.map(|d| d.as_secs_f64()),
        last_switchover_s: last_switchover.map(|d| d.as_secs_f64()),
        raft_term: raft.current_term,
        raft_applied: raft.last_applied.map_or(0, |l| l.index),
        raft_leader: raft.current_leader == Some(node.id()),
    });
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response()
}

pub struct MetricsInput<'a> {
    pub cluster: &'a str,
    pub me: &'a str,
    pub rows: &'a [MemberRow],
    pub generation: Generation,
    pub paused: bool,
    /// `synchronous_mode = degradable`: a degraded window is open.
    pub degraded: bool,
    pub failovers: u64,
    pub switchovers: u64,
    pub lease_remaining_s: Option<f64>,
    pub renewal_gap_max_s: Option<f64>,
    pub last_failover_s: Option<f64>,
    pub last_switchover_s: Option<f64>,
    pub raft_term: u64,
    pub raft_applied: u64,
    pub raft_leader: bool,
}

/// Prometheus text exposition format 0.0.4.
pub fn render_metrics(m: &MetricsInput) -> String {
    let mut out = String::new();
    let c = escape(m.cluster);
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    };
    let per_member = |f: &dyn Fn(&MemberRow) -> Option<f64>| -> Vec<(String, f64)> {
        m.rows
            .iter()
            .filter_map(|r| f(r).map(|v| (format!("cluster=\"{c}\",member=\"{}\"", escape(&r.name)), v)))
            .collect()
    };
    let cl = |v: f64| vec![(format!("cluster=\"{c}\""), v)];
    let me = |v: f64| vec![(format!("cluster=\"{c}\",member=\"{}\"", escape(m.me)), v)];
    family(
        "raftpg_role",
        "gauge",
        "1 for the role each member has (primary, quorum_standby, replica, candidate, fenced, learner).",
        m.rows
            .iter()
            .map(|r| {
                (
                    format!("cluster=\"{c}\",member=\"{}\",role=\"{}\"", escape(&r.name), r.role),
                    1.0,
                )
            })
            .collect(),
    );
    family(
        "raftpg_postgres_running",
        "gauge",
        "1 when the member's PostgreSQL runs, as its agent last reported.",
        per_member(&|r| {
            Some(f64::from(u8::from(matches!(
                r.state.as_str(),
                "running" | "streaming" | "in recovery"
            ))))
        }),
    );
    family(
        "raftpg_generation",
        "gauge",
        "Primary generation (fencing token); grows with every failover or switchover.",
        cl(m.generation.0 as f64),
    );
    family(
        "raftpg_timeline",
        "gauge",
        "PostgreSQL timeline of each member.",
        per_member(&|r| r.timeline.map(|t| f64::from(t.0))),
    );
    family(
        "raftpg_replication_lag_bytes",
        "gauge",
        "Bytes each member is behind the primary's last reported write position.",
        per_member(&|r| r.lag_bytes.map(|l| l as f64)),
    );
    family(
        "raftpg_lease_remaining_seconds",
        "gauge",
        "Time left on this node's primary lease (absent when it holds none).",
        m.lease_remaining_s.map(me).unwrap_or_default(),
    );
    family(
        "raftpg_lease_renewal_gap_max_seconds",
        "gauge",
        "Longest time between two renewals of this node's primary lease since raftpg started or lease_ms last changed (renewals come every lease/4).",
        m.renewal_gap_max_s.map(me).unwrap_or_default(),
    );
    family(
        "raftpg_pending_restart",
        "gauge",
        "1 when a member has parameters that need a restart (raftpg ctl restart).",
        per_member(&|r| Some(f64::from(u8::from(r.pending_restart)))),
    );
    family(
        "raftpg_failovers_total",
        "counter",
        "Failovers in the timeline history.",
        cl(m.failovers as f64),
    );
    family(
        "raftpg_switchovers_total",
        "counter",
        "Switchovers in the timeline history.",
        cl(m.switchovers as f64),
    );
    family(
        "raftpg_last_failover_duration_seconds",
        "gauge",
        "From fencing the old primary to recording the new one, for the last failover this node saw.",
        m.last_failover_s.map(me).unwrap_or_default(),
    );
    family(
        "raftpg_last_switchover_duration_seconds",
        "gauge",
        "From fencing the old primary to recording the new one, for the last switchover this node saw.",
        m.last_switchover_s.map(me).unwrap_or_default(),
    );
    family(
        "raftpg_paused",
        "gauge",
        "1 while automatic failover is paused.",
        cl(f64::from(u8::from(m.paused))),
    );
    family(
        "raftpg_sync_degraded",
        "gauge",
        "1 from the time the primary degrades to asynchronous replication (synchronous_mode = degradable, too few \
         synchronous standbys streaming) until it confirms its quorum again.",
        cl(f64::from(u8::from(m.degraded))),
    );
    family(
        "raftpg_raft_term",
        "gauge",
        "This node's Raft term.",
        me(m.raft_term as f64),
    );
    family(
        "raftpg_raft_applied_index",
        "gauge",
        "Last Raft log index applied on this node.",
        me(m.raft_applied as f64),
    );
    family(
        "raftpg_raft_leader",
        "gauge",
        "1 when this node is the Raft leader.",
        me(f64::from(u8::from(m.raft_leader))),
    );
    out
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
