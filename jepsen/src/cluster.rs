//! The raftpg cluster under test: one `raftpg run` per node namespace, each
//! in its node's freezer group, with its own data directory and log. Also
//! the harness's view of who is primary, asked of raftpg's HTTP API.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::hosts;

pub const PG_PORT: u16 = 5432;
pub const RAFT_PORT: u16 = 7000;
pub const GRPC_PORT: u16 = 7100;
pub const HTTP_PORT: u16 = 8008;
/// The superuser's and replication role's password on the suite's private bridge. The
/// nodes authenticate with scram-sha-256 and password files, as production does; the
/// value itself guards nothing.
pub const PASSWORD: &str = "raftpg-jepsen-password";

pub fn name(k: u16) -> String {
    format!("n{k}")
}

/// `nK` → K.
pub fn index(name: &str) -> Option<u16> {
    name.strip_prefix('n')?.parse().ok()
}

pub struct Cluster {
    pub n: u16,
    pub dir: PathBuf,
    raftpg: PathBuf,
    children: Vec<Option<Child>>,
    /// Per node, the rate its clock runs at (`faketime -f "+0 xRATE"`, shared by raftpg,
    /// its fence keeper and its PostgreSQL); None runs at the real rate.
    pub clock_rates: Vec<Option<f64>>,
    /// Size of the filesystem each node's PGDATA lives on (`nK/disk`, a tmpfs), when the
    /// run fills one ([`Cluster::mount_disks`]); None: the run's own filesystem.
    pub disk_mb: Option<u64>,
}

/// Who holds which role, as raftpg itself says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    pub primary: Option<u16>,
    pub raft_leader: Option<u16>,
    pub generation: u64,
}

impl Cluster {
    /// Writes every node's configuration under `dir`; starts nothing.
    pub fn create(dir: &Path, n: u16, raftpg: &Path) -> anyhow::Result<Cluster> {
        Cluster::create_with(dir, n, raftpg, "")
    }

    /// The same, with `extra` TOML appended to every node's configuration.
    pub fn create_with(dir: &Path, n: u16, raftpg: &Path, extra: &str) -> anyhow::Result<Cluster> {
        // Every path a node sees is absolute: PostgreSQL's tools run as
        // another user in another directory.
        let dir = &std::path::absolute(dir)?;
        let raftpg = &std::path::absolute(raftpg)?;
        // Mutual TLS as in production: each host's certificate names its member and its IP.
        let tls_dir = dir.join("tls");
        let ca = raftpg::tls::make::ca("raftpg-jepsen")?;
        raftpg::tls::make::write(&tls_dir, "ca", &ca, true)?;
        for k in 1..=n {
            let ip = std::net::IpAddr::V4(hosts::ip(k));
            let cert = raftpg::tls::make::leaf(&ca, &name(k), raftpg::tls::Role::Node, &[], &[ip])?;
            raftpg::tls::make::write(&tls_dir, &name(k), &cert, true)?;
        }
        // The nemesis changes tags as an operator does: `raftpg ctl` with an admin certificate.
        let admin = raftpg::tls::make::leaf(&ca, "jepsen-admin", raftpg::tls::Role::Admin, &[], &[])?;
        raftpg::tls::make::write(&tls_dir, "admin", &admin, true)?;
        for k in 1..=n {
            let node_dir = dir.join(name(k));
            fs::create_dir_all(&node_dir).with_context(|| format!("cannot create {}", node_dir.display()))?;
            fs::write(node_dir.join("raftpg.toml"), render_config(&node_dir, k, n) + extra)?;
            let password_file = node_dir.join("password");
            fs::write(&password_file, format!("{PASSWORD}\n"))?;
            fs::set_permissions(&password_file, fs::Permissions::from_mode(0o600))?;
        }
        // PostgreSQL runs as the postgres user: it must be able to reach its data dir.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
        for d in dir.ancestors().skip(1) {
            let mode = fs::metadata(d).map(|m| m.permissions().mode()).unwrap_or(0o755);
            anyhow::ensure!(
                mode & 0o001 != 0,
                "{} is not searchable by others (mode {:o}), so PostgreSQL (user postgres) cannot reach {}: \
                 chmod o+x {} or choose another --out",
                d.display(),
                mode & 0o777,
                dir.display(),
                d.display()
            );
        }
        Ok(Cluster {
            n,
            dir: dir.to_path_buf(),
            raftpg: raftpg.to_path_buf(),
            children: (0..n).map(|_| None).collect(),
            clock_rates: vec![None; usize::from(n)],
            disk_mb: None,
        })
    }

    /// Gives each node's PGDATA a filesystem of its own, `mb` MB (a tmpfs on `nK/disk`,
    /// PGDATA `nK/disk/pgdata`), so that one node's disk can fill (full-disk-primary).
    /// Before any node starts; [`Cluster::unmount_disks`] undoes it.
    pub fn mount_disks(&mut self, mb: u64) -> anyhow::Result<()> {
        for k in 1..=self.n {
            let disk = self.disk(k);
            fs::create_dir_all(&disk)?;
            hosts::sh(
                "mount",
                &[
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={mb}m,mode=0755"),
                    "tmpfs",
                    &disk.display().to_string(),
                ],
            )
            .with_context(|| format!("cannot mount a {mb} MB tmpfs on {}", disk.display()))?;
            let toml = self.dir.join(name(k)).join("raftpg.toml");
            let text = fs::read_to_string(&toml)?;
            let text = text.replacen(
                "\n[postgres]\n",
                &format!("\n[postgres]\ndata_dir = \"{}\"\n", self.pgdata_on(&disk).display()),
                1,
            );
            fs::write(&toml, text)?;
        }
        self.disk_mb = Some(mb);
        Ok(())
    }

    /// Unmounts what [`Cluster::mount_disks`] mounted; with `keep`, PGDATA is copied out
    /// first (to `nK/pgdata`), so an invalid run's data survives.
    pub fn unmount_disks(&mut self, keep: bool) {
        if self.disk_mb.take().is_none() {
            return;
        }
        for k in 1..=self.n {
            let disk = self.disk(k);
            if keep {
                let to = self.dir.join(name(k)).join("pgdata");
                let _ = hosts::sh(
                    "cp",
                    &[
                        "-a",
                        &self.pgdata_on(&disk).display().to_string(),
                        &to.display().to_string(),
                    ],
                );
            }
            let _ = hosts::sh("umount", &["-l", &disk.display().to_string()]);
        }
    }

    /// Node `k`'s own filesystem's mount point, when [`Cluster::mount_disks`] made one.
    pub fn disk(&self, k: u16) -> PathBuf {
        self.dir.join(name(k)).join("disk")
    }

    fn pgdata_on(&self, disk: &Path) -> PathBuf {
        disk.join("pgdata")
    }

    /// Up to `max` of the last ERROR and WARN lines of every node's log, each
    /// under its log's path: what a person needs when a run cannot start.
    pub fn last_errors(&self, max: usize) -> String {
        let mut out = String::new();
        for k in 1..=self.n {
            let path = self.log_path(k);
            let text = fs::read_to_string(&path).unwrap_or_default();
            let bad: Vec<&str> = text
                .lines()
                .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
                .collect();
            out += &format!("  {}:\n", path.display());
            if bad.is_empty() {
                out += "    (no errors)\n";
            }
            for line in &bad[bad.len().saturating_sub(max)..] {
                out += &format!("    {line}\n");
            }
        }
        out
    }

    /// Runs `raftpg ctl ARGS` against every node's gRPC address, as an admin over TLS;
    /// its output, or an error with its stderr.
    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let all: Vec<u16> = (1..=self.n).collect();
        self.ctl_via(&all, args)
    }

    /// `raftpg ctl` with only `nodes`' endpoints, as an operator runs it on a host that
    /// can reach the majority; killed after two minutes, so a command that hangs fails the
    /// step in place of stalling the run.
    pub fn ctl_via(&self, nodes: &[u16], args: &[&str]) -> anyhow::Result<String> {
        let tls = self.dir.join("tls");
        let endpoints: Vec<String> = nodes.iter().map(|k| format!("{}:{GRPC_PORT}", hosts::ip(*k))).collect();
        let out = std::process::Command::new("timeout")
            .args(["120", &self.raftpg.display().to_string()])
            .arg("ctl")
            .args(["--endpoints", &endpoints.join(",")])
            .arg("--cacert")
            .arg(tls.join("ca.crt"))
            .arg("--cert")
            .arg(tls.join("admin.crt"))
            .arg("--key")
            .arg(tls.join("admin.key"))
            .arg("--yes")
            .args(args)
            .output()
            .context("cannot run raftpg ctl")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        anyhow::ensure!(
            out.status.success(),
            "raftpg ctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(text)
    }

    /// Starts node `k`'s raftpg inside its namespace and freezer group.
    pub fn start(&mut self, k: u16) -> anyhow::Result<()> {
        let node_dir = self.dir.join(name(k));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node_dir.join("raftpg.log"))?;
        // A skewed clock: the faketime wrapper gives the whole process tree one shared
        // reference, so the fence keeper reads raftpg's lease expiry on the same clock.
        let skew = match self.clock_rates.get(usize::from(k - 1)).copied().flatten() {
            Some(rate) => format!("faketime -f '+0 x{rate}' "),
            None => String::new(),
        };
        // Join the group before exec so that every later child is in it too.
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec ip netns exec {} {skew}{} run --config {}",
            hosts::cgroup(k).display(),
            hosts::netns(k),
            self.raftpg.display(),
            node_dir.join("raftpg.toml").display()
        );
        let child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start raftpg for n{k}"))?;
        self.children[usize::from(k - 1)] = Some(child);
        Ok(())
    }

    /// The pid of node `k`'s raftpg, while it runs.
    pub fn raftpg_pid(&mut self, k: u16) -> Option<i32> {
        let slot = &mut self.children[usize::from(k - 1)];
        match slot.as_mut()?.try_wait() {
            Ok(None) => Some(slot.as_ref()?.id() as i32),
            _ => {
                *slot = None;
                None
            }
        }
    }

    /// Reaps node `k`'s raftpg after it was killed, so it is not a zombie.
    pub fn reap(&mut self, k: u16) {
        if let Some(mut c) = self.children[usize::from(k - 1)].take() {
            let _ = c.wait();
        }
    }

    pub fn pgdata(&self, k: u16) -> PathBuf {
        match self.disk_mb {
            Some(_) => self.pgdata_on(&self.disk(k)),
            None => self.dir.join(name(k)).join("pgdata"),
        }
    }

    /// The postmaster's pid from postmaster.pid, if it names a live process.
    pub fn postmaster_pid(&self, k: u16) -> Option<i32> {
        let text = fs::read_to_string(self.pgdata(k).join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        (pid > 1 && Path::new(&format!("/proc/{pid}")).exists()).then_some(pid)
    }

    pub fn log_path(&self, k: u16) -> PathBuf {
        self.dir.join(name(k)).join("raftpg.log")
    }

    /// What raftpg says about the roles: the answer with the newest
    /// generation, since a node that was cut off still answers from its
    /// stale state until it catches up.
    pub async fn view(&self) -> Option<View> {
        let mut best: Option<View> = None;
        for k in 1..=self.n {
            let Some(body) = http_get(k, "/cluster").await else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
                continue;
            };
            let primary = v["members"].as_array().and_then(|ms| {
                ms.iter()
                    .find(|m| m["role"] == "leader")
                    .and_then(|m| index(m["name"].as_str()?))
            });
            let view = View {
                primary,
                raft_leader: v["raft_leader"].as_str().and_then(index),
                generation: v["generation"].as_u64().unwrap_or(0),
            };
            let newer = best
                .as_ref()
                .is_none_or(|b| (view.generation, view.primary.is_some()) > (b.generation, b.primary.is_some()));
            if newer {
                best = Some(view);
            }
        }
        best
    }

    /// Kills every process of every node (the sweep removes the rest).
    pub fn kill_all(&mut self) {
        for k in 1..=self.n {
            let _ = hosts::freeze(k, false);
            let _ = hosts::kill_node(k);
            self.reap(k);
        }
    }
}

/// libpq parameters for node `k`'s PostgreSQL.
pub fn conninfo(k: u16, timeout_s: u64) -> String {
    format!(
        "host={} port={PG_PORT} user=postgres password={PASSWORD} dbname=postgres connect_timeout={timeout_s}",
        hosts::ip(k)
    )
}

fn render_config(node_dir: &Path, k: u16, n: u16) -> String {
    let tls = node_dir.parent().expect("a node dir is in the cluster dir").join("tls");
    let mut out = format!(
        "# Written by raftpg-jepsen.\n[node]\nname = \"{}\"\ndata_dir = \"{}\"\n\n[cluster]\nname = \"raftpg-jepsen\"\n",
        name(k),
        node_dir.display()
    );
    for i in 1..=n {
        let ip = hosts::ip(i);
        out += &format!(
            "\n[[members]]\nname = \"{}\"\nid = {i}\nraft = \"{ip}:{RAFT_PORT}\"\ngrpc = \"{ip}:{GRPC_PORT}\"\npg = \"{ip}:{PG_PORT}\"\nhttp = \"{ip}:{HTTP_PORT}\"\n",
            name(i)
        );
    }
    let (crt, key) = raftpg::tls::make::paths(&tls, &name(k));
    out += &format!(
        "\n[tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        tls.join("ca.crt").display(),
        crt.display(),
        key.display()
    );
    let password = node_dir.join("password");
    out + &format!(
        "\n[postgres]\nhost_auth = \"scram-sha-256\"\nsuperuser_password_file = \"{0}\"\nreplication_password_file = \"{0}\"\n",
        password.display()
    )
}

/// GET on node `k`'s HTTP API; the body, or None within a second.
pub async fn http_get(k: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = format!("{}:{HTTP_PORT}", hosts::ip(k));
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(&addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
    };
    tokio::time::timeout(Duration::from_secs(1), fut).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_run_directory_becomes_absolute_in_every_config() {
        // Tests run in the crate's directory: make a run directory there and name it relatively.
        let cwd = std::env::current_dir().unwrap();
        let dir = tempfile::tempdir_in(&cwd).unwrap();
        let rel = dir.path().strip_prefix(&cwd).unwrap();
        assert!(rel.is_relative());
        let c = Cluster::create(rel, 3, Path::new("raftpg")).unwrap();
        assert_eq!(c.dir, dir.path());
        assert_eq!(c.raftpg, cwd.join("raftpg"));
        let toml = fs::read_to_string(dir.path().join("n1/raftpg.toml")).unwrap();
        assert!(
            toml.contains(&format!("data_dir = \"{}/n1\"", dir.path().display())),
            "{toml}"
        );
    }

    #[test]
    fn last_errors_quotes_each_nodes_newest_errors_and_says_when_there_are_none() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cluster::create(dir.path(), 2, Path::new("/bin/true")).unwrap();
        let log: String = (1..=5)
            .map(|i| format!("t ERROR raftpg::agent: initdb failed {i}\nt  INFO raftpg: fine\n"))
            .collect();
        fs::write(c.log_path(1), log).unwrap();
        let text = c.last_errors(2);
        assert!(
            text.contains("initdb failed 4") && text.contains("initdb failed 5"),
            "{text}"
        );
        assert!(!text.contains("initdb failed 3") && !text.contains("fine"), "{text}");
        assert!(
            text.contains(&format!("{}:\n    (no errors)", c.log_path(2).display())),
            "{text}"
        );
    }
}
