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

pub async fn serve(node: Node, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let app = Router::new()
        .route("/cluster", get(cluster))
        .route("/metrics", get(metrics))
        .fallback(check)
        .with_state(node);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!("http server failed: {e}");
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
    let body = serde_json::json!({
        "name": node.name(),
        "role": me.map(|r| patroni_role(&r.role)),
        "state": me.map(|r| r.state.clone()),
        "timeline": me.and_then(|r| r.timeline),
        "xlog_location": me.and_then(|r| r.lsn),
        "lag": me.and_then(|r| r.lag_bytes),
        "lease_remaining_ms": input.lease_remaining_ms,
        "generation": state.generation,
        "pause": state.paused,
        "reason": own.as_ref().map(|o| o.report.reason.clone()),
    });
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
                "tags": { "nofailover": r.nofailover, "failover_priority": r.failover_priority },
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
    pub generation: u64,
    pub paused: bool,
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
        cl(m.generation as f64),
    );
    family(
        "raftpg_timeline",
        "gauge",
        "PostgreSQL timeline of each member.",
        per_member(&|r| r.timeline.map(f64::from)),
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
        "Longest time between two renewals of this node's primary lease since raftpg started (renewals come every lease/4).",
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
