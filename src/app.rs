//! One raftpg node as `raftpg run` starts it: the Raft member (`node`), the control API
//! and the HTTP server (`api`), and, when raftpg manages PostgreSQL, the controller and
//! the agent. Composed here, so that `node` depends on none of them.

use anyhow::Context;
use tonic::transport::Server;

use crate::api::grpc::ControlServer;
use crate::config::Config;
use crate::node::{bind, serve, Node};
use crate::pb::control::control_server::ControlServer as ControlGrpc;

/// Starts everything; a port in use, missing PostgreSQL binaries or a bad directory are
/// reported before Raft starts.
pub async fn start(cfg: Config) -> anyhow::Result<Node> {
    let me = cfg.me().clone();
    let grpc_listener = bind(&me.grpc, "members[].grpc").await?;
    let http_listener = bind(&me.http, "members[].http").await?;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build the gRPC reflection service")?;
    let pg = match cfg.postgres.manage {
        true => Some(crate::agent::PgNode::prepare(&cfg)?),
        false => None,
    };
    let node = Node::start(cfg.clone()).await?;
    let stop = node.stop_signal();
    let control = ControlGrpc::new(ControlServer { node: node.clone() });
    node.spawn(
        "control server",
        serve(
            Server::builder().add_service(control).add_service(reflection),
            grpc_listener,
            stop.clone(),
            "grpc",
        ),
    );
    node.spawn(
        "http server",
        crate::api::http::serve(node.clone(), http_listener, stop.clone()),
    );
    if let Some(pg) = pg {
        node.spawn("controller", crate::controller::run(node.clone(), stop.clone()));
        crate::agent::spawn(&node, pg, stop);
    }
    tracing::info!(
        node = %me.name, id = me.id, raft = %me.raft, grpc = %me.grpc, cluster = %cfg.cluster.name,
        "raftpg node started"
    );
    Ok(node)
}
