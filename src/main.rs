//! The `raftpg` binary: clap → tracing → config → node / demo / ctl.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use raftpg::config::Config;
use raftpg::logging::{self, LogFormat};
use raftpg::{ctl, demo, node::Node};

#[derive(Parser)]
#[command(
    name = "raftpg",
    version,
    about = "PostgreSQL high availability with its own Raft group"
)]
struct Cli {
    /// Log format: human (default) or json.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one node in the foreground until SIGTERM or SIGINT.
    Run {
        /// The node's configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Start a local cluster of separate `raftpg run` processes on loopback.
    Demo(demo::DemoArgs),
    /// Control a running cluster over gRPC.
    Ctl(ctl::CtlArgs),
    /// Internal: the process that fences PostgreSQL when raftpg cannot (started by `run`).
    #[command(hide = true)]
    FenceKeeper {
        #[arg(long)]
        lease_file: PathBuf,
        #[arg(long)]
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::FenceKeeper { lease_file, data_dir } = &cli.command {
        raftpg::agent::keeper::run(lease_file, data_dir);
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("raftpg: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Cmd::Run { config } => {
                logging::init(cli.log_format, None);
                run(config).await
            }
            Cmd::Demo(args) => {
                logging::init(cli.log_format, None);
                demo::run(args).await
            }
            Cmd::Ctl(args) => {
                logging::init(cli.log_format, Some("warn"));
                ctl::run(args).await
            }
            Cmd::FenceKeeper { .. } => unreachable!("handled before the runtime starts"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raftpg: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: PathBuf) -> anyhow::Result<()> {
    let cfg = Config::load(&config)?;
    let node = Node::start(cfg).await?;
    let signal = wait_for_signal().await?;
    tracing::info!("{signal} received: stopping");
    node.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
