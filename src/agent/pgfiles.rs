//! This node's PostgreSQL: where it lives, who runs it, and the files raftpg
//! writes into PGDATA (configuration, hba, standby.signal, password file).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::cluster::ClusterState;
use crate::config::Config;
use crate::postgres::conf::{self, ConfInputs, PgSsl, Upstream};
use crate::postgres::{PgBinaries, PgCtl, RunAs};
use crate::types::Timeline;

use super::timing::{QUERY_TIMEOUT, REMOTE_KEEPALIVE};

/// This node's PostgreSQL settings, resolved once at start.
#[derive(Clone, Debug)]
pub struct PgNode {
    pub me: String,
    pub ctl: PgCtl,
    pub superuser: String,
    pub replication_user: String,
    pub host_auth: String,
    /// pgpass file for connections to other members; `None` with trust auth.
    pub passfile: Option<PathBuf>,
    pub superuser_password: Option<String>,
    pub replication_password: Option<String>,
    /// PostgreSQL's TLS files, with `postgres.ssl`.
    pub ssl: Option<conf::PgSsl>,
    pub node_parameters: std::collections::BTreeMap<String, String>,
    pub reclone_on_rewind_failure: bool,
    pub start_timeout: Duration,
    /// Present while initdb runs: a database found with it is a partial initdb (raftpg
    /// died during it) and counts as no database, to be made again.
    pub initdb_marker: PathBuf,
    /// Present while pg_rewind runs, and after one that failed: pg_rewind writes the control
    /// file last, so a database found with it may be part rewound though it reads as before.
    pub rewind_marker: PathBuf,
}

/// raftpg's own connection to its node's PostgreSQL: the Unix socket in `socket_dir`.
pub fn local_conninfo(socket_dir: &Path, port: u16, superuser: &str) -> String {
    format!(
        "host={} port={port} user={superuser} dbname=postgres connect_timeout=2 application_name=raftpg",
        socket_dir.display(),
    )
}

/// The same, from the configuration alone (`SOCKET_DIR` under `[node] data_dir`).
pub fn local_conninfo_of(cfg: &Config) -> Option<String> {
    let port = cfg.me().pg.rsplit_once(':')?.1.parse().ok()?;
    Some(local_conninfo(
        &cfg.node.data_dir.join(SOCKET_DIR),
        port,
        &cfg.postgres.superuser,
    ))
}

/// PostgreSQL's Unix socket directory, under `[node] data_dir`.
const SOCKET_DIR: &str = "run";

impl PgNode {
    /// Resolves binaries, the OS user and directories; errors say how to fix them.
    pub fn prepare(cfg: &Config) -> anyhow::Result<PgNode> {
        let p = &cfg.postgres;
        let bins = PgBinaries::find(p.bin_dir.as_deref())?;
        let run_as = RunAs::for_current_process(&p.os_user)?;
        let base = &cfg.node.data_dir;
        let socket_dir = base.join(SOCKET_DIR);
        let data_dir = cfg.pg_data();
        let log_file = base.join("postgresql.log");
        if !base.exists() {
            std::fs::create_dir_all(base).with_context(|| format!("cannot create {}", base.display()))?;
            // Under raftpg's umask 077; PostgreSQL's user must pass through to PGDATA.
            std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o711))?;
        }
        std::fs::create_dir_all(&socket_dir).with_context(|| format!("cannot create {}", socket_dir.display()))?;
        std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o700))?;
        if !log_file.exists() {
            std::fs::write(&log_file, "")?;
        }
        if let Some(u) = &run_as {
            u.check_reachable(&data_dir)?;
            u.chown(&socket_dir)?;
            u.chown(&log_file)?;
        }
        let me = cfg.me();
        let (host, port) = me.pg.rsplit_once(':').context("members[].pg has no port")?;
        let port: u16 = port.parse().context("members[].pg has a bad port")?;
        let read = |f: &Option<PathBuf>, key: &str| -> anyhow::Result<Option<String>> {
            f.as_ref()
                .map(|path| {
                    crate::config::warn_if_readable(&format!("postgres.{key}"), path);
                    std::fs::read_to_string(path)
                        .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                        .with_context(|| format!("postgres.{key}: cannot read {}", path.display()))
                })
                .transpose()
        };
        let superuser_password = read(&p.superuser_password_file, "superuser_password_file")?;
        let replication_password = read(&p.replication_password_file, "replication_password_file")?;
        let ctl = PgCtl {
            bins,
            run_as,
            data_dir,
            socket_dir,
            // With a floating IP PostgreSQL must also answer on it, and it comes and goes:
            // listen on every address (pg_hba.conf still decides who gets in).
            listen_addresses: p.listen_addresses.clone().unwrap_or_else(|| match cfg.vip {
                Some(_) => "*".to_string(),
                None => host.to_string(),
            }),
            port,
            log_file,
            ssl_root_cert: None,
        };
        let mut node = PgNode {
            me: me.name.clone(),
            ctl,
            superuser: p.superuser.clone(),
            replication_user: p.replication_user.clone(),
            host_auth: p.host_auth.clone(),
            passfile: None,
            superuser_password,
            replication_password,
            ssl: None,
            node_parameters: p.parameters.clone(),
            reclone_on_rewind_failure: p.reclone_on_rewind_failure,
            initdb_marker: base.join("initdb.incomplete"),
            rewind_marker: base.join("rewind.incomplete"),
            start_timeout: Duration::from_secs(p.start_timeout_s),
        };
        node.write_passfile(&base.join("pgpass"))?;
        if let (true, Some(tls)) = (p.ssl, &cfg.tls) {
            let ssl = node.write_ssl_files(&base.join("pgssl"), tls)?;
            node.ctl.ssl_root_cert = Some(ssl.ca.clone());
            node.ssl = Some(ssl);
        }
        Ok(node)
    }

    /// Copies the node's `[tls]` files where PostgreSQL reads them: owned by its OS user,
    /// mode 0600 (PostgreSQL refuses a key others can read), outside PGDATA (a clone must
    /// not carry another node's key).
    fn write_ssl_files(&self, dir: &Path, tls: &crate::tls::TlsSection) -> anyhow::Result<PgSsl> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        if let Some(u) = &self.ctl.run_as {
            u.chown(dir)?;
        }
        let ssl = PgSsl {
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            ca: dir.join("root.crt"),
        };
        for (from, to, key) in [
            (&tls.cert_file, &ssl.cert, "tls.cert_file"),
            (&tls.key_file, &ssl.key, "tls.key_file"),
            (&tls.ca_file, &ssl.ca, "tls.ca_file"),
        ] {
            let text =
                std::fs::read_to_string(from).with_context(|| format!("{key}: cannot read {}", from.display()))?;
            self.write_file(to, &text)?;
        }
        Ok(ssl)
    }

    fn write_passfile(&mut self, path: &Path) -> anyhow::Result<()> {
        let mut entries = Vec::new();
        if let Some(pw) = &self.replication_password {
            entries.push((self.replication_user.as_str(), pw.as_str()));
        }
        if let Some(pw) = &self.superuser_password {
            entries.push((self.superuser.as_str(), pw.as_str()));
        }
        if entries.is_empty() {
            return Ok(());
        }
        self.write_file(path, &conf::render_pgpass(&entries))?;
        self.passfile = Some(path.to_path_buf());
        Ok(())
    }

    /// Local connection over the Unix socket (trusted), for observation and setup.
    pub fn local_conninfo(&self) -> String {
        local_conninfo(&self.ctl.socket_dir, self.ctl.port, &self.superuser)
    }

    /// Where this node streams from while `state`'s primary is someone else.
    /// (parent timeline, fork LSN) of `timeline`, from `pg_wal/<TLI>.history`.
    pub fn timeline_fork(&self, timeline: Timeline) -> Option<(Timeline, u64)> {
        let text = std::fs::read_to_string(self.ctl.history_path(timeline)).ok()?;
        crate::postgres::parse_timeline_history(&text).map(|(parent, at)| (Timeline(parent), at))
    }

    /// Where this node streams from while it follows (`None` during a primary change):
    /// its source by design (`ClusterState::source_of`), through the slot the source
    /// keeps; or, for a cascading standby whose upstream did not serve it
    /// (`fallen_back`), the primary, without a slot.
    pub fn upstream(&self, state: &ClusterState, fallen_back: bool) -> Option<Upstream> {
        if state.pending.is_some() {
            return None;
        }
        let (name, slot) = crate::decide::agent::stream_from(state, &self.me, fallen_back)?;
        let mut u = self.upstream_to(state, name)?;
        u.slot = slot;
        Some(u)
    }

    /// Member `name`'s PostgreSQL, reached as this node's replication user.
    pub fn upstream_to(&self, state: &ClusterState, name: &str) -> Option<Upstream> {
        let member = state.member(name)?;
        let (host, port) = member.pg_addr.rsplit_once(':')?;
        Some(Upstream {
            host: host.to_string(),
            port: port.parse().ok()?,
            user: self.replication_user.clone(),
            application_name: self.me.clone(),
            passfile: self.passfile.clone(),
            ssl_root_cert: self.ssl.as_ref().map(|s| s.ca.clone()),
            slot: true,
        })
    }

    /// Connection string to the primary as superuser (pg_rewind's source).
    pub fn superuser_conninfo(&self, state: &ClusterState, name: &str) -> Option<String> {
        let u = self.upstream_to(state, name)?;
        // Keepalives: a tool waiting for an answer sends nothing, and a source whose end
        // of the connection is gone (a node fenced or killed behind a cut that dropped its
        // FIN) would hold it until its timeout (the partition suite's back-to-back-failovers:
        // pg_rewind hung for minutes). `REMOTE_KEEPALIVE` detects a dead peer in about 11 s.
        let mut s = format!(
            "host={} port={} user={} dbname=postgres connect_timeout=5 keepalives=1 keepalives_idle={} \
             keepalives_interval={} keepalives_count={}",
            u.host,
            u.port,
            self.superuser,
            REMOTE_KEEPALIVE.0.as_secs(),
            REMOTE_KEEPALIVE.1.as_secs(),
            REMOTE_KEEPALIVE.2
        );
        if let Some(p) = &self.passfile {
            s += &format!(" passfile={}", p.display());
        }
        if let Some(ssl) = &self.ssl {
            s += &format!(" sslmode=verify-ca sslrootcert={}", ssl.ca.display());
        }
        Some(s)
    }

    /// Connects to another member's PostgreSQL with `config`: over TLS verifying the cluster
    /// CA when `postgres.ssl` is on, else plaintext.
    pub async fn connect_remote(&self, config: &tokio_postgres::Config) -> anyhow::Result<tokio_postgres::Client> {
        let Some(ssl) = &self.ssl else {
            return connect_within(config, tokio_postgres::NoTls).await;
        };
        let mut config = config.clone();
        config.ssl_mode(tokio_postgres::config::SslMode::Require);
        connect_within(&config, crate::tls::pg::connector(&ssl.ca)?).await
    }

    /// The primary as superuser, for raftpg's own SQL (tokio-postgres reads no pgpass
    /// file, so the password is set here).
    pub fn superuser_client(&self, state: &ClusterState, name: &str) -> Option<tokio_postgres::Config> {
        let u = self.upstream_to(state, name)?;
        let mut c = tokio_postgres::Config::new();
        c.host(&u.host)
            .port(u.port)
            .user(&self.superuser)
            .dbname("postgres")
            .application_name("raftpg")
            .connect_timeout(QUERY_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(REMOTE_KEEPALIVE.0)
            .keepalives_interval(REMOTE_KEEPALIVE.1)
            .keepalives_retries(REMOTE_KEEPALIVE.2);
        if let Some(pw) = &self.superuser_password {
            c.password(pw);
        }
        Some(c)
    }

    /// postgresql.conf for `state`, streaming from `upstream` (or from nobody).
    pub fn render_conf(&self, state: &ClusterState, upstream: Option<&Upstream>) -> String {
        let want = state.sync_config_for(&self.me);
        let sync: Vec<String> = want.standbys.into_iter().collect();
        let sync_names = conf::sync_standby_names(want.k, &sync);
        let base = self.ctl.data_dir.join(conf::BASE_CONF);
        let hba = self.ctl.data_dir.join("pg_hba.conf");
        conf::render_postgresql_conf(&ConfInputs {
            port: self.ctl.port,
            listen_addresses: &self.ctl.listen_addresses,
            socket_dir: &self.ctl.socket_dir,
            upstream,
            sync_names: &sync_names,
            cluster_parameters: &state.parameters,
            node_parameters: &self.node_parameters,
            ssl: self.ssl.as_ref(),
            base_conf: base.exists().then_some((base.as_path(), hba.as_path())),
            own_timeline: upstream.is_none().then(|| self.ctl.wal_timeline()).flatten(),
        })
    }

    /// PGDATA's `postgresql.conf` exists and was not written by raftpg.
    pub fn conf_is_foreign(&self) -> bool {
        std::fs::read_to_string(self.ctl.data_dir.join("postgresql.conf"))
            .is_ok_and(|text| !text.starts_with(conf::CONF_HEADER))
    }

    /// Takes over an adopted database's files (`Action::AdoptConfig`): its own
    /// `postgresql.conf` becomes `postgresql.base.conf` (included by raftpg's), `pg_hba.conf`
    /// and `postgresql.auto.conf` are saved as `*.before-raftpg`, the parameters raftpg
    /// manages are taken out of `postgresql.auto.conf` (it is read after raftpg's file and
    /// would win: a `primary_conninfo` there would stream from the old primary), and
    /// `recovery.signal` goes (raftpg starts a standby with standby.signal).
    pub fn adopt_files(&self) -> anyhow::Result<()> {
        let d = &self.ctl.data_dir;
        let conf = d.join("postgresql.conf");
        if self.conf_is_foreign() {
            let base = d.join(conf::BASE_CONF);
            let to = if base.exists() {
                d.join("postgresql.conf.before-raftpg")
            } else {
                base
            };
            std::fs::rename(&conf, &to)
                .with_context(|| format!("cannot move {} to {}", conf.display(), to.display()))?;
            tracing::info!("adopting: the database's own postgresql.conf is now {}", to.display());
        }
        let hba = d.join("pg_hba.conf");
        let saved_hba = d.join("pg_hba.conf.before-raftpg");
        if let Ok(text) = std::fs::read_to_string(&hba) {
            if !text.starts_with("# Written by raftpg") && !saved_hba.exists() {
                self.write_file(&saved_hba, &text)?;
                tracing::info!(
                    "adopting: the database's own pg_hba.conf is saved as {}",
                    saved_hba.display()
                );
            }
        }
        let auto = d.join("postgresql.auto.conf");
        if let Ok(text) = std::fs::read_to_string(&auto) {
            let (kept, dropped) = conf::without_managed(&text);
            if !dropped.is_empty() {
                let saved = d.join("postgresql.auto.conf.before-raftpg");
                self.write_file(&saved, &text)?;
                self.write_file(&auto, &kept)?;
                tracing::warn!(
                    "adopting: removed {} from postgresql.auto.conf (raftpg manages them; the old file is {})",
                    dropped.join(", "),
                    saved.display()
                );
            }
        }
        let recovery = d.join("recovery.signal");
        if recovery.exists() {
            std::fs::remove_file(&recovery).with_context(|| format!("cannot remove {}", recovery.display()))?;
        }
        Ok(())
    }

    /// Writes postgresql.conf and pg_hba.conf; true if either changed.
    pub fn write_conf(&self, state: &ClusterState, upstream: Option<&Upstream>, gated: bool) -> anyhow::Result<bool> {
        let hba = conf::render_hba(&self.host_auth, &self.replication_user, gated, self.ssl.is_some());
        let a = self.replace(
            &self.ctl.data_dir.join("postgresql.conf"),
            &self.render_conf(state, upstream),
        )?;
        let b = self.replace(&self.ctl.data_dir.join("pg_hba.conf"), &hba)?;
        Ok(a || b)
    }

    /// Creates or removes standby.signal.
    pub fn set_standby_signal(&self, on: bool) -> anyhow::Result<()> {
        let path = self.ctl.data_dir.join("standby.signal");
        if on {
            self.write_file(&path, "")
        } else {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            }
        }
    }

    /// An empty PGDATA owned by the PostgreSQL user, mode 0700 (removing what was there).
    /// The directory itself stays: it may be a mount point, which cannot be removed.
    pub fn empty_data_dir(&self) -> anyhow::Result<()> {
        let d = &self.ctl.data_dir;
        match std::fs::read_dir(d) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.with_context(|| format!("cannot list {}", d.display()))?;
                    let path = entry.path();
                    // A symlink (pg_wal elsewhere) is removed, not followed.
                    let removed = if entry.file_type()?.is_dir() {
                        std::fs::remove_dir_all(&path)
                    } else {
                        std::fs::remove_file(&path)
                    };
                    removed
                        .with_context(|| format!("cannot empty {}: cannot remove {}", d.display(), path.display()))?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot empty {}", d.display())),
        }
        std::fs::create_dir_all(d)?;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
        if let Some(u) = &self.ctl.run_as {
            u.chown(d)?;
        }
        Ok(())
    }

    fn replace(&self, path: &Path, content: &str) -> anyhow::Result<bool> {
        if std::fs::read_to_string(path).is_ok_and(|old| old == content) {
            return Ok(false);
        }
        self.write_file(path, content)?;
        Ok(true)
    }

    /// Writes a file PostgreSQL reads (`write_private`), owned by its OS user.
    pub fn write_file(&self, path: &Path, content: &str) -> anyhow::Result<()> {
        write_private(path, content, self.ctl.run_as.as_ref())
    }
}

/// Connects to PostgreSQL with `config` and `tls` within 5 s; the connection runs in a
/// task of its own.
pub async fn connect_within<T>(config: &tokio_postgres::Config, tls: T) -> anyhow::Result<tokio_postgres::Client>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket> + Send,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as tokio_postgres::tls::TlsConnect<tokio_postgres::Socket>>::Future: Send,
{
    let (client, conn) = tokio::time::timeout(QUERY_TIMEOUT, config.connect(tls))
        .await
        .context("connecting to PostgreSQL timed out")??;
    tokio::spawn(conn);
    Ok(client)
}

/// Writes `content` to `path`: mode 0600 from its creation, owned by `owner` if given,
/// replaced atomically, and never through a symlink (PGDATA belongs to the postgres user,
/// and raftpg may run as root). The content goes to a fresh file opened with O_NOFOLLOW and
/// O_EXCL, then renamed over `path`: a rename replaces a link, it does not follow it.
pub fn write_private(path: &Path, content: &str, owner: Option<&RunAs>) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.file_name().context("a file path has a name")?.to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.raftpg-new"));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot remove {}", tmp.display()))
        }
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(content.as_bytes())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    if let Some(u) = owner {
        u.chown(&tmp)?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_file_replaces_a_symlink_and_never_writes_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let path = dir.path().join("pgpass");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        // A planted temporary file (a link too) is removed, not followed.
        std::os::unix::fs::symlink(&target, dir.path().join(".pgpass.raftpg-new")).unwrap();
        write_private(&path, "secret", None).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "secret");
        write_private(&path, "again", None).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "again");
    }
}
