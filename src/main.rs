//! The `raftpg` binary: clap → tracing → config → node / demo / ctl.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use raftpg::config::Config;
use raftpg::logging::{self, LogFormat};
use raftpg::{ctl, demo};

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
    /// Run one node in the foreground until SIGTERM or SIGINT (which stop its PostgreSQL
    /// too). SIGUSR2 restarts raftpg in place, from the binary now on disk, and leaves
    /// PostgreSQL running: an upgrade or a rolling restart.
    Run {
        /// The node's configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Start a local cluster of separate `raftpg run` processes on loopback.
    Demo(demo::DemoArgs),
    /// Control a running cluster over gRPC.
    Ctl(ctl::CtlArgs),
    /// Make certificates for a cluster without a PKI: a CA, node and client certificates.
    #[command(subcommand)]
    Tls(TlsCmd),
    /// Internal: the process that fences PostgreSQL when raftpg cannot (started by `run`).
    #[command(hide = true)]
    FenceKeeper {
        #[arg(long)]
        lease_file: PathBuf,
        #[arg(long)]
        data_dir: PathBuf,
        /// `[vip]`: the floating IP (ADDRESS/PREFIX) removed when the keeper fences.
        #[arg(long, requires = "vip_interface")]
        vip_address: Option<String>,
        #[arg(long)]
        vip_interface: Option<String>,
    },
}

#[derive(Subcommand)]
enum TlsCmd {
    /// A new cluster CA: DIR/ca.crt and DIR/ca.key (keep the key off the nodes if you can).
    Ca {
        /// Directory for the files.
        #[arg(long, default_value = "/etc/raftpg/tls")]
        dir: PathBuf,
        /// The cluster's name (cluster.name), recorded in the CA's subject.
        #[arg(long, default_value = raftpg::config::DEFAULT_CLUSTER_NAME)]
        cluster: String,
        /// Replace existing files (every certificate the old CA issued stops working).
        #[arg(long)]
        force: bool,
    },
    /// A node certificate for member NAME, signed by DIR/ca.*: DIR/NAME.crt and DIR/NAME.key.
    Node {
        /// The member's name (members[].name).
        name: String,
        /// A DNS name peers and clients use to reach this node (repeatable).
        #[arg(long)]
        dns: Vec<String>,
        /// An IP address peers and clients use to reach this node (repeatable).
        #[arg(long)]
        ip: Vec<std::net::IpAddr>,
        #[arg(long, default_value = "/etc/raftpg/tls")]
        dir: PathBuf,
        #[arg(long)]
        force: bool,
    },
    /// A control client certificate: DIR/NAME.crt and DIR/NAME.key.
    Client {
        /// Who holds it (a person or a tool).
        name: String,
        /// admin (every ctl command) or read-only (list, history, watch).
        #[arg(long, value_parser = ["admin", "read-only"])]
        role: String,
        #[arg(long, default_value = "/etc/raftpg/tls")]
        dir: PathBuf,
        #[arg(long)]
        force: bool,
    },
}

fn tls(cmd: TlsCmd) -> anyhow::Result<()> {
    use raftpg::tls::{make, Role};
    let (dir, stem, made, force) = match cmd {
        TlsCmd::Ca { dir, cluster, force } => (dir, "ca".to_string(), make::ca(&cluster)?, force),
        TlsCmd::Node {
            name,
            dns,
            ip,
            dir,
            force,
        } => {
            let ca = make::read_ca(&dir)?;
            let made = make::leaf(&ca, &name, Role::Node, &dns, &ip)?;
            (dir, name, made, force)
        }
        TlsCmd::Client { name, role, dir, force } => {
            let role = if role == "admin" { Role::Admin } else { Role::ReadOnly };
            let ca = make::read_ca(&dir)?;
            let made = make::leaf(&ca, &name, role, &[], &[])?;
            (dir, name, made, force)
        }
    };
    let (crt, key) = make::write(&dir, &stem, &made, force)?;
    println!("wrote {} and {} (mode 0600)", crt.display(), key.display());
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Tls(cmd) = cli.command {
        return match tls(cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("raftpg tls: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Cmd::FenceKeeper {
        lease_file,
        data_dir,
        vip_address,
        vip_interface,
    } = &cli.command
    {
        let vip = vip_address
            .clone()
            .zip(vip_interface.clone())
            .map(|(address, interface)| raftpg::agent::vip::VipSection { address, interface });
        raftpg::agent::keeper::run(lease_file, data_dir, vip.as_ref());
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
                demo::run(args).await.map(|()| Stop::Exit)
            }
            Cmd::Ctl(args) => {
                logging::init(cli.log_format, Some("warn"));
                ctl::run(args).await.map(|()| Stop::Exit)
            }
            Cmd::FenceKeeper { .. } | Cmd::Tls(_) => unreachable!("handled before the runtime starts"),
        }
    });
    match result {
        Ok(Stop::Exit) => ExitCode::SUCCESS,
        Ok(Stop::Restart) => {
            runtime.shutdown_timeout(std::time::Duration::from_secs(2));
            eprintln!("raftpg: {:#}", reexec());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("raftpg: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// How `raftpg run` ends.
enum Stop {
    /// Stopped, PostgreSQL included.
    Exit,
    /// Stopped for a restart of raftpg alone: execute the binary again, in this process.
    Restart,
}

async fn run(config: PathBuf) -> anyhow::Result<Stop> {
    use tokio::signal::unix::{signal, SignalKind};
    // raftpg's own files (Raft log, lease, keys it writes) are private; what PostgreSQL
    // must reach gets its mode explicitly.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let cfg = Config::load(&config)?;
    // Listen before starting, so that a signal sent as soon as the node answers is not lost.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let mut hup = signal(SignalKind::hangup())?;
    // After a restart in place they were blocked across the exec (see `reexec`): one
    // sent meanwhile is pending, and handled now.
    let _ = nix::sys::signal::pthread_sigmask(nix::sys::signal::SigmaskHow::SIG_UNBLOCK, Some(&stop_signals()), None);
    let node = raftpg::app::start(cfg.clone()).await?;
    let signal = loop {
        break tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        _ = usr2.recv() => {
            tracing::info!("SIGUSR2 received: restarting raftpg in place; PostgreSQL keeps running");
            node.shutdown_for_restart().await;
            return Ok(Stop::Restart);
        }
        // Reload: a valid new file is applied by a restart of raftpg in place (every part
        // of it, PostgreSQL untouched); a bad one is reported and the running one kept.
        _ = hup.recv() => match reload_plan(&config, &cfg) {
            Ok(changes) => {
                tracing::info!(
                    "SIGHUP: {} changed ({}); restarting raftpg in place to apply it, PostgreSQL keeps running",
                    config.display(),
                    changes.join("; ")
                );
                node.shutdown_for_restart().await;
                return Ok(Stop::Restart);
            }
            Err(why) => {
                tracing::error!("SIGHUP: {why}; the running configuration is kept");
                continue;
            }
        },
        // A task that died would leave this node half-working (a stale report renewed, a
        // controller gone): stop as a crash would, so that the lease lapses, the fence
        // keeper fences PostgreSQL, and another node takes over.
        why = node.failed() => {
            node.shutdown_for_restart().await;
            anyhow::bail!(
                "stopped because {why}; PostgreSQL is fenced by the keeper when its lease ends; \
                 this is a bug: please report it with the log, then start raftpg again"
            );
        }
        };
    };
    tracing::info!("{signal} received: stopping");
    node.shutdown().await;
    Ok(Stop::Exit)
}

/// What a reload of `path` would change against the `running` configuration, section by
/// section; an error when the file is invalid or names another node. An unchanged file is
/// no error: the restart in place also picks up a new binary (`systemctl reload` upgrades).
fn reload_plan(path: &std::path::Path, running: &Config) -> Result<Vec<String>, String> {
    let new = Config::load(path).map_err(|e| format!("the new file is not valid: {e}"))?;
    if new.node.name != running.node.name || new.node.data_dir != running.node.data_dir {
        return Err(format!(
            "[node] name or data_dir changed ({} in {} → {} in {}): that is another node; stop raftpg and start it with the new file",
            running.node.name,
            running.node.data_dir.display(),
            new.node.name,
            new.node.data_dir.display()
        ));
    }
    let section = |c: &Config, name: &str| match name {
        "cluster" => format!("{:?}", c.cluster),
        "members" => format!("{:?}", c.members),
        "raft" => format!("{:?}", c.raft),
        "postgres" => format!("{:?}", c.postgres),
        "tls" => format!("{:?} {}", c.tls, c.insecure),
        "http" => format!("{:?}", c.http),
        "vip" => format!("{:?}", c.vip),
        _ => format!("{:?}", c.hooks),
    };
    let mut changes = Vec::new();
    for name in ["cluster", "members", "raft", "postgres", "tls", "http", "hooks", "vip"] {
        if section(&new, name) != section(running, name) {
            changes.push(match name {
                "members" => {
                    "[[members]] (used only to form the cluster: change members with raftpg ctl member)".into()
                }
                "cluster" => "[cluster] (every node must name the same cluster)".into(),
                other => format!("[{other}]"),
            });
        }
    }
    if changes.is_empty() {
        changes.push("no section; a new binary on disk is picked up".into());
    }
    Ok(changes)
}

/// The signals `raftpg run` handles.
fn stop_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGUSR2, Signal::SIGHUP] {
        set.add(s);
    }
    set
}

/// Executes the raftpg binary now on disk with the same arguments, in this process
/// (same pid, so a service manager sees no restart). Returns only on failure.
fn reexec() -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    // Until the new process listens for them, these would end it at once (their default
    // action): blocked, they stay pending across the exec and it handles them.
    let _ = nix::sys::signal::pthread_sigmask(nix::sys::signal::SigmaskHow::SIG_BLOCK, Some(&stop_signals()), None);
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return anyhow::anyhow!("cannot find my own binary to restart: {e}"),
    };
    // After an upgrade replaced the binary, /proc/self/exe names the old, deleted file.
    let exe = match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(path) => PathBuf::from(path),
        None => exe,
    };
    let err = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .exec();
    anyhow::anyhow!(
        "cannot restart from {}: {err}; PostgreSQL still runs and is fenced when its lease ends unless raftpg is started again",
        exe.display()
    )
}
