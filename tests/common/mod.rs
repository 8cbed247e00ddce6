//! Test harness: a cluster of real `raftpg run` processes on loopback.
//!
//! Waits are conditions polled until a deadline, never fixed sleeps.

#![allow(dead_code)]

pub mod pg;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use raftpg::ctl;
use raftpg::demo::{ports, render_config, TlsFiles};
use raftpg::pb::control::control_client::ControlClient;
use raftpg::pb::control::{ClusterStatus, SetConfigRequest, StatusRequest};
use tokio::time::Instant;
use tonic::transport::Channel;

pub const BIN: &str = env!("CARGO_BIN_EXE_raftpg");

/// Appended to a node config: the Raft group alone, no PostgreSQL.
pub const RAFT_ONLY: &str = "manage = false\n";

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub base: u16,
    pub n: u16,
    pub(crate) procs: Vec<Option<Child>>,
    /// The superuser's password: PostgreSQL authenticates TCP clients with scram-sha-256,
    /// as in production.
    pub password: String,
    /// Mutual TLS on every port, as in production (`None` only with RAFTPG_TEST_PLAINTEXT=1,
    /// which the benches use to measure what TLS costs).
    pub tls: Option<TlsFiles>,
    /// The raftpg binary the nodes run (this build's, unless a test installed another).
    pub bin: PathBuf,
    /// Run the nodes as this OS user (through `setpriv`, which execs: the child is raftpg),
    /// as the packaged unit does with `User=postgres`; `None`: as the test's own user.
    pub os_user: Option<String>,
}

/// Logs one line that introduces a phase of a test.
pub fn phase(text: &str) {
    eprintln!("=== {text}");
}

/// A bench's repeat count: the environment variable `var`, or `default`.
pub fn count_from_env(var: &str, default: usize) -> usize {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The settings a benchmark runs under, from its environment: `EXTRA_CONFIG`, TOML appended
/// to every node's configuration (for example `$'[raft]\nelection_timeout_max_ms = 370'`),
/// and `LEASE_MS`, the cluster's `lease_ms`, set with `raftpg ctl config set` once it formed.
/// Without them a benchmark measures the defaults.
pub struct BenchSettings {
    pub extra: String,
    pub lease_ms: Option<u64>,
}

impl BenchSettings {
    pub fn from_env() -> BenchSettings {
        let lease_ms = std::env::var("LEASE_MS").ok().map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("LEASE_MS={v}: expected milliseconds, such as 1000"))
        });
        let s = BenchSettings {
            extra: std::env::var("EXTRA_CONFIG").unwrap_or_default(),
            lease_ms,
        };
        if !s.extra.is_empty() {
            println!("every node's configuration ends with:\n{}", s.extra);
        }
        if let Some(ms) = s.lease_ms {
            println!("lease_ms = {ms} (set once the cluster formed)");
        }
        s
    }

    /// Starts `n` nodes with the extra configuration.
    pub fn start(&self, base: u16, n: u16) -> Cluster {
        Cluster::start(base, n, &self.extra)
    }

    /// Sets the lease on a cluster that formed (the next renewal uses it).
    pub fn apply(&self, c: &Cluster) {
        if let Some(ms) = self.lease_ms {
            c.ctl_ok(&["config", "set", &format!("lease_ms={ms}")]);
        }
    }
}

/// Prints a bench's samples as `label: n=.. median=.. max=..`.
pub fn print_median_max(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{label}: n={} median={:.2?} max={:.2?}",
        samples.len(),
        samples[samples.len() / 2],
        samples.last().unwrap()
    );
}

impl Cluster {
    /// Writes configs for `n` nodes with `extra` TOML appended and starts them all.
    pub fn start(base: u16, n: u16, extra: &str) -> Cluster {
        let mut c = Cluster::configured(base, n, extra);
        for k in 1..=n {
            c.start_node(k);
        }
        c
    }

    /// Writes configs for `n` nodes with `extra` TOML appended; starts none.
    pub fn configured(base: u16, n: u16, extra: &str) -> Cluster {
        let mut dir = tempfile::tempdir().expect("temp dir");
        // RAFTPG_TEST_KEEP=1 keeps the directory (configs, logs, PGDATA) for a post-mortem.
        if std::env::var_os("RAFTPG_TEST_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("keeping {}", dir.path().display());
        }
        // PostgreSQL runs as the `postgres` OS user under root: it must enter the directory.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let secrets = raftpg::demo::Secrets::ensure(dir.path()).expect("generate passwords");
        let tls = match std::env::var_os("RAFTPG_TEST_PLAINTEXT") {
            Some(_) => None,
            None => Some(TlsFiles::ensure(dir.path(), n).expect("make certificates")),
        };
        if let Some(t) = &tls {
            pg::trust_ca(&t.ca);
        }
        for k in 1..=n {
            let node_dir = dir.path().join(format!("n{k}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            std::fs::write(
                node_dir.join("raftpg.toml"),
                render_config(dir.path(), k, n, base, tls.as_ref(), extra),
            )
            .unwrap();
        }
        Cluster {
            dir,
            base,
            n,
            procs: (0..n).map(|_| None).collect(),
            password: secrets.superuser_password,
            tls,
            bin: PathBuf::from(BIN),
            os_user: None,
        }
    }

    /// From now on nodes run as `user`, who gets the whole cluster directory (configs,
    /// password files, TLS keys, data), as an operator gives /etc/raftpg and /var/lib/raftpg
    /// to raftpg's user.
    pub fn run_as(&mut self, user: &str) {
        let status = Command::new("chown")
            .args(["-R", &format!("{user}:{user}")])
            .arg(self.dir.path())
            .status()
            .expect("run chown");
        assert!(status.success(), "chown -R {user} {}", self.dir.path().display());
        self.os_user = Some(user.to_string());
    }

    pub fn config_path(&self, k: u16) -> PathBuf {
        self.dir.path().join(format!("n{k}/raftpg.toml"))
    }

    pub fn log_path(&self, k: u16) -> PathBuf {
        self.dir.path().join(format!("n{k}/raftpg.log"))
    }

    pub fn start_node(&mut self, k: u16) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(k))
            .unwrap();
        let mut cmd = match &self.os_user {
            Some(user) => {
                let mut c = Command::new("setpriv");
                c.args(["--reuid", user, "--regid", user, "--init-groups", "--"])
                    .arg(&self.bin);
                // systemd's User= sets HOME and USER to that user's.
                if let Ok(Some(u)) = nix::unistd::User::from_name(user) {
                    c.env("HOME", u.dir).env("USER", user).env("LOGNAME", user);
                }
                c
            }
            None => Command::new(&self.bin),
        };
        let child = cmd
            .args(["run", "--config"])
            .arg(self.config_path(k))
            .env("RUST_LOG", "info,openraft=error")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start raftpg");
        self.procs[(k - 1) as usize] = Some(child);
    }

    /// kill -9: no clean shutdown, whatever was not durable is lost.
    pub fn kill9(&mut self, k: u16) {
        if let Some(mut c) = self.procs[(k - 1) as usize].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited 0.
    pub fn stop(&mut self, k: u16) -> bool {
        let Some(mut c) = self.procs[(k - 1) as usize].take() else {
            return true;
        };
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            if std::time::Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn grpc_addr(&self, k: u16) -> String {
        format!("127.0.0.1:{}", ports(self.base, k).grpc)
    }

    pub fn endpoints(&self) -> String {
        (1..=self.n).map(|k| self.grpc_addr(k)).collect::<Vec<_>>().join(",")
    }

    pub async fn client(&self, k: u16) -> Option<ControlClient<Channel>> {
        let tls = self.tls.as_ref().map(|t| t.admin_client().expect("admin certificate"));
        ctl::connect(&self.grpc_addr(k), tls.as_ref()).await.ok()
    }

    pub async fn status(&self, k: u16) -> Option<ClusterStatus> {
        let mut c = self.client(k).await?;
        c.status(StatusRequest {}).await.ok().map(|r| r.into_inner())
    }

    /// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
    pub async fn wait_for<T, F, Fut>(&self, what: &str, timeout: Duration, mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f().await {
                return v;
            }
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("timed out after {timeout:?} waiting for: {what}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until node `k` sees an initialised state and a leader; returns the leader's name.
    /// Waits until every running node's view shows node `k` as a streaming standby within
    /// the default `maximum_lag_on_failover`: what `ctl switchover --to nK` asks of the
    /// node that answers it.
    pub async fn wait_switchover_target(&self, k: u16, timeout: Duration) {
        let name = format!("n{k}");
        let running: Vec<u16> = (1..=self.n)
            .filter(|i| self.procs[usize::from(*i - 1)].is_some())
            .collect();
        self.wait_for(
            &format!("{name} to be a streaming standby on every node"),
            timeout,
            || async {
                for &i in &running {
                    let s = self.status(i).await?;
                    let m = s.member_status.iter().find(|m| m.name == name)?;
                    let near = m.lag_bytes? <= raftpg::cluster::DEFAULT_MAXIMUM_LAG_ON_FAILOVER_BYTES;
                    if m.state != "streaming" || !near {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await;
    }

    /// Waits until `primary` sees a Raft leader other than itself (the controller hands
    /// leadership to a standby) and returns its number.
    pub async fn wait_raft_leader_off(&self, primary: u16, timeout: Duration) -> u16 {
        self.wait_for("the Raft leadership to move off the primary", timeout, || async {
            let s = self.status(primary).await?;
            let l: u16 = s.raft_leader.strip_prefix('n')?.parse().ok()?;
            (l != primary).then_some(l)
        })
        .await
    }

    pub async fn wait_leader_seen_by(&self, k: u16, timeout: Duration) -> String {
        self.wait_for(&format!("n{k} to see a Raft leader"), timeout, || async {
            let s = self.status(k).await?;
            (s.initialized && !s.raft_leader.is_empty()).then_some(s.raft_leader)
        })
        .await
    }

    /// Commits `key=value` through node `k`; returns the revision.
    pub async fn set(&self, k: u16, key: &str, value: &str) -> Result<u64, tonic::Status> {
        let mut c = self
            .client(k)
            .await
            .ok_or_else(|| tonic::Status::unavailable("no connection"))?;
        let req = SetConfigRequest {
            key: key.into(),
            value: value.into(),
        };
        c.set_config(req).await.map(|r| r.into_inner().revision)
    }

    /// How many times node `k`'s raftpg started, by its log.
    pub fn raftpg_starts(&self, k: u16) -> usize {
        self.log_of(k).matches("raftpg node started").count()
    }

    pub fn log_of(&self, k: u16) -> String {
        std::fs::read_to_string(self.log_path(k)).unwrap_or_default()
    }

    pub fn dump_logs(&self) {
        for k in 1..=self.n {
            let log = self.log_of(k);
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- n{k} log (last 40 lines) ---");
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
            let pg = std::fs::read_to_string(self.dir.path().join(format!("n{k}/postgresql.log"))).unwrap_or_default();
            let tail: Vec<&str> = pg.lines().rev().take(20).collect();
            eprintln!("--- n{k} PostgreSQL log (last 20 lines) ---");
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }

    /// Writes a config for a new node `k` (members 1..=k) and starts it; `n` grows to `k`.
    pub fn add_node(&mut self, k: u16, extra: &str) {
        let node_dir = self.dir.path().join(format!("n{k}"));
        std::fs::create_dir_all(&node_dir).unwrap();
        if self.tls.is_some() {
            self.tls = Some(TlsFiles::ensure(self.dir.path(), k).expect("make certificates"));
        }
        std::fs::write(
            node_dir.join("raftpg.toml"),
            render_config(self.dir.path(), k, k, self.base, self.tls.as_ref(), extra),
        )
        .unwrap();
        while self.procs.len() < k as usize {
            self.procs.push(None);
        }
        self.n = self.n.max(k);
        self.start_node(k);
    }

    /// Runs `raftpg ctl --endpoints <all> ARGS`: (exit 0?, stdout, stderr).
    pub fn ctl(&self, args: &[&str]) -> (bool, String, String) {
        self.ctl_at(&self.endpoints(), args)
    }

    /// `raftpg ctl --endpoints ENDPOINTS` with the admin certificate in its environment.
    pub fn ctl_command(&self, endpoints: &str) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(["ctl", "--endpoints", endpoints]);
        if let Some(t) = &self.tls {
            cmd.env("RAFTPG_CACERT", &t.ca)
                .env("RAFTPG_CERT", &t.admin_cert)
                .env("RAFTPG_KEY", &t.admin_key);
        }
        cmd
    }

    pub fn ctl_at(&self, endpoints: &str, args: &[&str]) -> (bool, String, String) {
        let out = self
            .ctl_command(endpoints)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run raftpg ctl");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        eprintln!(
            "$ raftpg ctl {}
{stdout}{stderr}",
            args.join(" ")
        );
        (out.status.success(), stdout, stderr)
    }

    /// `ctl` that must succeed; returns stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.ctl(args);
        if !ok {
            self.dump_logs();
            panic!("raftpg ctl {} failed: {err}", args.join(" "));
        }
        out
    }

    /// `ctl` that must fail with one line on stderr containing `expect`.
    pub fn ctl_fails(&self, args: &[&str], expect: &str) {
        let (ok, _, err) = self.ctl(args);
        assert!(!ok, "raftpg ctl {} should fail", args.join(" "));
        assert!(
            err.contains(expect),
            "stderr of ctl {} lacks '{expect}': {err}",
            args.join(" ")
        );
        assert_eq!(
            err.trim().lines().filter(|l| l.starts_with("raftpg:")).count(),
            1,
            "{err}"
        );
    }

    /// One HTTP/1.0 request to node `k`'s health API: (status code, body).
    pub async fn http(&self, k: u16, method: &str, path: &str) -> Option<(u16, String)> {
        http_at(&format!("127.0.0.1:{}", ports(self.base, k).http), method, path).await
    }

    pub fn node_index(name: &str) -> u16 {
        name.trim_start_matches('n').parse().expect("member names are nK")
    }
}

/// One HTTP/1.0 request to `addr`: the status code and the body, or None
/// when nothing answered within three seconds.
pub async fn http_at(addr: &str, method: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    {
        let fut = async {
            let mut s = tokio::net::TcpStream::connect(&addr).await.ok()?;
            let req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
            s.write_all(req.as_bytes()).await.ok()?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.ok()?;
            let text = String::from_utf8_lossy(&buf).to_string();
            let code = text.split_whitespace().nth(1)?.parse().ok()?;
            let body = text
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default();
            Some((code, body))
        };
        tokio::time::timeout(Duration::from_secs(3), fut).await.ok().flatten()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A failed assertion anywhere in a test leaves the nodes' own account in its output.
        if std::thread::panicking() {
            self.dump_logs();
        }
        for k in 1..=self.n {
            self.kill9(k);
        }
        self.quit_postmasters();
    }
}
