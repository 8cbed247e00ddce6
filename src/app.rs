//! One raftpg node as `raftpg run` starts it: the Raft member (`node`), the control API
//! and the HTTP server (`api`), and, when raftpg manages PostgreSQL, the controller and
//! the agent. Composed here, so that `node` depends on none of them.

use anyhow::Context;

use crate::api::grpc::ControlServer;
use crate::config::Config;
use crate::node::{bind, serve, server_builder, Node};
use crate::pb::control::control_server::ControlServer as ControlGrpc;

/// Starts everything; a port in use, missing PostgreSQL binaries or a bad directory are
/// reported before Raft starts.
pub async fn start(cfg: Config) -> anyhow::Result<Node> {
    let me = cfg.me().clone();
    let grpc_listener = bind(&me.grpc, "members[].grpc").await?;
    let http_listener = bind(&me.http, "members[].http").await?;
    // Both reflection versions: grpcurl speaks v1, Python's grpcio-reflection v1alpha.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build the gRPC reflection service")?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("cannot build the gRPC reflection service")?;
    for (key, path) in cfg.hooks.configured() {
        use std::os::unix::fs::PermissionsExt;
        let executable = std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        anyhow::ensure!(
            executable,
            "hooks.{key}: {} is not an executable file: check the path, and chmod +x it",
            path.display()
        );
    }
    let pg = match cfg.postgres.manage {
        true => Some(crate::agent::PgNode::prepare(&cfg)?),
        false => None,
    };
    let node = Node::start(cfg.clone()).await?;
    let http_options = crate::api::http::Options::load(&cfg, node.tls.as_ref())?;
    let stop = node.stop_signal();
    // Control requests are small: names, a parameter, a reason.
    let control = ControlGrpc::new(ControlServer { node: node.clone() }).max_decoding_message_size(1 << 20);
    node.spawn(
        "control server",
        serve(
            server_builder(node.tls.as_ref())?
                .add_service(control)
                .add_service(reflection)
                .add_service(reflection_v1alpha),
            grpc_listener,
            stop.clone(),
            "grpc",
        ),
    );
    node.spawn(
        "http server",
        crate::api::http::serve(node.clone(), http_listener, http_options, stop.clone()),
    );
    if let Some(pg) = pg {
        node.spawn("controller", crate::controller::run(node.clone(), stop.clone()));
        crate::agent::spawn(&node, pg, stop);
    }
    if cfg.tls.is_none() {
        let on = [&me.raft, &me.grpc, &me.http].map(|a| a.as_str()).join(", ");
        match cfg.insecure {
            true => tracing::warn!(
                "insecure = true and no [tls]: the Raft, control and HTTP ports ({on}) are plaintext and \
                 unauthenticated; anyone who reaches them controls the cluster"
            ),
            false => tracing::info!("no [tls]: listening on loopback only ({on}), plaintext"),
        }
    }
    for warning in cfg.unsafe_for_testing.warnings() {
        tracing::error!("{warning}: for the partition suite's canaries only, never in production");
    }
    tracing::info!(
        node = %me.name, id = me.id, raft = %me.raft, grpc = %me.grpc, cluster = %cfg.cluster.name,
        "raftpg node started"
    );
    Ok(node)
}
