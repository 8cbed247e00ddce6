//! `raftpg ctl`: the control client. Any node answers; writes reach the Raft leader.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use tonic::transport::Channel;

use crate::pb::control as pb;
use crate::pb::control::control_client::ControlClient;

/// The demo's gRPC ports, used when neither --endpoints nor RAFTPG_ENDPOINTS is set.
pub const DEFAULT_ENDPOINTS: &str = "127.0.0.1:15601,127.0.0.1:15602,127.0.0.1:15603";
/// How long one endpoint may take to answer before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Writes wait for a commit, which may need a Raft election first.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Args, Debug)]
pub struct CtlArgs {
    /// Comma-separated gRPC endpoints (host:port); the first that answers is used.
    #[arg(long, env = "RAFTPG_ENDPOINTS", default_value = DEFAULT_ENDPOINTS)]
    pub endpoints: String,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Subcommand, Debug)]
pub enum CtlCommand {
    /// Members, Raft leader, generation and pause state.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show or change cluster-wide configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Stop automatic failover decisions.
    Pause,
    /// Resume automatic failover decisions.
    Resume,
}

#[derive(Subcommand, Debug)]
pub enum ConfigAction {
    /// Print every key and value.
    Show,
    /// Set KEY=VALUE (an empty value resets the key).
    Set {
        /// KEY=VALUE, e.g. lease_ms=4000 or postgresql.parameters.work_mem=8MB
        assignment: String,
    },
}

pub async fn run(args: CtlArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.endpoints).await?;
    match args.command {
        CtlCommand::List { json } => {
            let s = client
                .status(pb::StatusRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            if json {
                println!("{}", serde_json::to_string_pretty(&status_json(&s))?);
            } else {
                print!("{}", render_table(&s));
            }
        }
        CtlCommand::Config {
            action: ConfigAction::Show,
        } => {
            let s = client
                .status(pb::StatusRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            let mut pairs: Vec<_> = s.config.into_iter().collect();
            pairs.sort();
            for (k, v) in pairs {
                println!("{k} = {v}");
            }
        }
        CtlCommand::Config {
            action: ConfigAction::Set { assignment },
        } => {
            let (key, value) = assignment
                .split_once('=')
                .ok_or_else(|| anyhow!("'{assignment}' is not KEY=VALUE"))?;
            let req = pb::SetConfigRequest {
                key: key.trim().to_string(),
                value: value.trim().to_string(),
            };
            let r = client.set_config(req).await.map_err(status_error)?.into_inner();
            println!("{} (log index {}, revision {})", r.message, r.log_index, r.revision);
        }
        CtlCommand::Pause => {
            let r = client
                .pause(pb::PauseRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            println!("{}", r.message);
        }
        CtlCommand::Resume => {
            let r = client
                .resume(pb::ResumeRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            println!("{}", r.message);
        }
    }
    Ok(())
}

/// Connects to the first endpoint that answers a status call.
pub async fn connect(endpoints: &str) -> anyhow::Result<ControlClient<Channel>> {
    let list: Vec<&str> = endpoints.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
    if list.is_empty() {
        bail!("no endpoints given: pass --endpoints host:port[,host:port...] or set RAFTPG_ENDPOINTS");
    }
    let mut failures = Vec::new();
    for ep in &list {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{ep}"))
            .with_context(|| format!("'{ep}' is not host:port"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT);
        match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect()).await {
            Ok(Ok(ch)) => return Ok(ControlClient::new(ch)),
            Ok(Err(e)) => failures.push(format!("{ep}: {e}")),
            Err(_) => failures.push(format!("{ep}: no answer within {CONNECT_TIMEOUT:?}")),
        }
    }
    bail!(
        "no endpoint answered ({}): is the cluster running? Set --endpoints or RAFTPG_ENDPOINTS",
        failures.join("; ")
    )
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow!("{}", s.message())
}

/// A `patronictl list`-like table with a header line.
pub fn render_table(s: &pb::ClusterStatus) -> String {
    let primary = s.primary.as_ref().map(|p| p.node.as_str());
    let mut out = format!(
        "Cluster: {} (generation {}, Raft leader {}, paused: {}, revision {})\n",
        s.cluster,
        s.generation,
        if s.raft_leader.is_empty() {
            "none"
        } else {
            &s.raft_leader
        },
        if s.paused { "yes" } else { "no" },
        s.revision
    );
    let header = ["Member", "Id", "Host", "Role", "Raft", "Raft address"];
    let rows: Vec<[String; 6]> = s
        .members
        .iter()
        .map(|m| {
            let role = if Some(m.name.as_str()) == primary {
                "Primary"
            } else if s.sync_standbys.contains(&m.name) {
                "Quorum Standby"
            } else if primary.is_some() {
                "Replica"
            } else {
                ""
            };
            let raft = if m.name == s.raft_leader {
                format!("{} (leader)", m.raft_role)
            } else {
                m.raft_role.clone()
            };
            [
                m.name.clone(),
                m.id.to_string(),
                m.pg_addr.clone(),
                role.into(),
                raft,
                m.raft_addr.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!(" {c:<w$} ")).collect();
        format!("|{}|\n", padded.join("|"))
    };
    let sep = format!("+{}+\n", widths.map(|w| "-".repeat(w + 2)).join("+"));
    out += &sep;
    out += &line(header.to_vec());
    out += &sep;
    for r in &rows {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out += &sep;
    out
}

/// The status as JSON for `list --json`.
pub fn status_json(s: &pb::ClusterStatus) -> serde_json::Value {
    serde_json::json!({
        "cluster": s.cluster,
        "answered_by": s.answered_by,
        "node_raft_state": s.node_raft_state,
        "raft_leader": s.raft_leader,
        "raft_term": s.raft_term,
        "applied_index": s.applied_index,
        "initialized": s.initialized,
        "revision": s.revision,
        "generation": s.generation,
        "paused": s.paused,
        "primary": s.primary.as_ref().map(|p| serde_json::json!({
            "node": p.node, "generation": p.generation, "timeline": p.timeline,
        })),
        "members": s.members.iter().map(|m| serde_json::json!({
            "name": m.name, "id": m.id, "raft_addr": m.raft_addr, "grpc_addr": m.grpc_addr,
            "pg_addr": m.pg_addr, "http_addr": m.http_addr, "raft_role": m.raft_role,
            "nofailover": m.nofailover, "failover_priority": m.failover_priority,
        })).collect::<Vec<_>>(),
        "sync_standbys": s.sync_standbys,
        "config": s.config,
        "pending": s.pending,
        "history": s.history.iter().map(|h| serde_json::json!({
            "timeline": h.timeline, "switch_lsn": h.switch_lsn, "reason": h.reason,
            "from": h.from, "to": h.to, "generation": h.generation,
        })).collect::<Vec<_>>(),
    })
}
