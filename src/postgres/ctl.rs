//! Running PostgreSQL's tools: initdb, pg_ctl start/stop/status, each with a timeout.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::{PgBinaries, PgError, RunAs};

/// How to stop the postmaster (pg_ctl's `-m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Wait for clients to disconnect.
    Smart,
    /// Disconnect clients, checkpoint, stop: the clean way.
    Fast,
    /// Stop at once, no checkpoint (crash recovery at next start). The fencing stop.
    Immediate,
}

impl StopMode {
    fn arg(self) -> &'static str {
        match self {
            StopMode::Smart => "smart",
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// One PostgreSQL instance on this machine.
#[derive(Clone, Debug)]
pub struct PgCtl {
    pub bins: PgBinaries,
    pub run_as: Option<RunAs>,
    pub data_dir: PathBuf,
    /// Directory of the Unix socket (`-k`), also where raftpg connects locally.
    pub socket_dir: PathBuf,
    pub listen_addresses: String,
    pub port: u16,
    /// Server log written by pg_ctl (`-l`).
    pub log_file: PathBuf,
}

impl PgCtl {
    /// initdb with data checksums (pg_rewind needs them or wal_log_hints).
    pub async fn initdb(&self, superuser: &str, timeout: Duration) -> Result<(), PgError> {
        let mut cmd = self.command("initdb");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["--data-checksums", "--encoding=UTF8", "--no-instructions"])
            .arg(format!("--username={superuser}"))
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"]);
        self.run("initdb", cmd, timeout).await.map(|_| ())
    }

    /// Starts the postmaster and waits until it accepts connections.
    pub async fn start(&self, timeout: Duration) -> Result<(), PgError> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses='{}'",
            self.port,
            self.socket_dir.display(),
            self.listen_addresses
        );
        let mut cmd = self.command("pg_ctl");
        cmd.arg("start")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_file)
            .args(["-w", "-t", &timeout.as_secs().max(1).to_string(), "-o", &opts]);
        self.run("pg_ctl start", cmd, timeout + Duration::from_secs(5))
            .await
            .map(|_| ())
    }

    /// Stops the postmaster in `mode` and waits for it to exit.
    pub async fn stop(&self, mode: StopMode, timeout: Duration) -> Result<(), PgError> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("stop").arg("-D").arg(&self.data_dir).args([
            "-m",
            mode.arg(),
            "-w",
            "-t",
            &timeout.as_secs().max(1).to_string(),
        ]);
        self.run("pg_ctl stop", cmd, timeout + Duration::from_secs(5))
            .await
            .map(|_| ())
    }

    /// Whether a postmaster runs on this data directory (pg_ctl status).
    pub async fn is_running(&self, timeout: Duration) -> Result<bool, PgError> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("status").arg("-D").arg(&self.data_dir);
        match self.run("pg_ctl status", cmd, timeout).await {
            Ok(_) => Ok(true),
            // 3: not running; 4: no accessible data directory.
            Err(PgError::Failed { status, .. }) if status.ends_with("3") || status.ends_with("4") => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(self.bins.tool(tool));
        // The caller's working directory may not be readable by the postgres user.
        cmd.current_dir("/")
            .env("LC_ALL", "C.UTF-8")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(u) = &self.run_as {
            cmd.uid(u.uid).gid(u.gid).env("USER", &u.name);
        }
        cmd
    }

    /// Runs a tool to completion within `timeout`; a timeout kills it.
    async fn run(&self, what: &str, mut cmd: Command, timeout: Duration) -> Result<String, PgError> {
        let child = cmd.spawn()?;
        let out = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .map_err(|_| PgError::Timeout {
                what: what.to_string(),
                secs: timeout.as_secs(),
            })??;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            return Ok(text);
        }
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        Err(PgError::Failed {
            what: what.to_string(),
            status: out
                .status
                .code()
                .map_or("killed by a signal".into(), |c| format!("exit status {c}")),
            output: tail.into_iter().rev().collect::<Vec<_>>().join(" / "),
        })
    }
}
