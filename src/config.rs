//! The node configuration file (`raftpg run --config FILE`, TOML).
//!
//! One `Config`, defaults as named constants, and `validate()` that checks
//! fields against each other and names the key that is wrong and the fix.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cluster::{Member, Tags};

/// Raft heartbeat. Fast enough that a follower notices a dead leader in well under a second.
pub const DEFAULT_HEARTBEAT_MS: u64 = 100;
/// Election timeout range. openraft starts an election only after the leader's lease
/// (`election_timeout_max`) plus the election timeout without a heartbeat: 0.8-1 s, eight
/// heartbeats at least, so lost packets do not start one. That keeps an election inside
/// the primary's lease (2 s, renewed every 0.5 s, so at least 1.5 s left when the Raft
/// leader is lost): the renewal reaches the new leader before the lease runs out.
pub const DEFAULT_ELECTION_TIMEOUT_MIN_MS: u64 = 300;
pub const DEFAULT_ELECTION_TIMEOUT_MAX_MS: u64 = 500;
/// Build a snapshot after this many applied entries; the log before it is purged.
pub const DEFAULT_SNAPSHOT_AFTER_LOGS: u64 = 5_000;
/// Entries kept behind the snapshot so a briefly absent follower catches up from the log.
pub const DEFAULT_LOGS_TO_KEEP: u64 = 1_000;
/// Upper bound on any single Raft RPC; a slow peer never holds the leader longer.
pub const DEFAULT_RPC_TIMEOUT_MS: u64 = 1_000;
/// Default cluster name.
pub const DEFAULT_CLUSTER_NAME: &str = "raftpg";

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Without `[tls]`, listening on an address other than loopback needs this: every port
    /// is then plaintext and unauthenticated.
    #[serde(default)]
    pub insecure: bool,
    pub node: NodeSection,
    #[serde(default)]
    pub cluster: ClusterSection,
    /// Initial members: the same list on every node. Used once, to initialise the group.
    #[serde(default)]
    pub members: Vec<MemberConfig>,
    #[serde(default)]
    pub raft: RaftSection,
    #[serde(default)]
    pub postgres: PostgresSection,
    /// Mutual TLS for the Raft and control ports.
    pub tls: Option<crate::tls::TlsSection>,
    /// The HTTP port: TLS, and basic authentication for `/cluster` and `/metrics`.
    #[serde(default)]
    pub http: HttpSection,
    /// Scripts run when the local PostgreSQL starts, stops or changes role.
    #[serde(default)]
    pub hooks: crate::agent::hooks::HooksSection,
    /// A floating IP that follows the primary's lease.
    pub vip: Option<crate::agent::vip::VipSection>,
    /// Settings that break raftpg's safety on purpose, for the partition suite's canaries
    /// (`raftpg-jepsen canary`): never in production. raftpg logs each one at start.
    #[serde(default)]
    pub unsafe_for_testing: UnsafeForTesting,
}

/// `[unsafe_for_testing]`: each key turns off one safety mechanism, so that the partition
/// suite can prove its checkers catch what that mechanism prevents.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnsafeForTesting {
    /// No fence keeper: a primary whose raftpg is frozen keeps its PostgreSQL running
    /// past its lease.
    pub no_fence_keeper: bool,
    /// The controller treats the primary's lease as expired this long after its last
    /// renewal, instead of `lease * 1.1 + 200 ms`; shorter than the lease, a new primary
    /// is promoted while the old one still serves.
    pub controller_deadline_ms: Option<u64>,
    /// The controller does not wait for final reports: during a failover it takes each
    /// standby's last periodic report as its final position, and a member whose report
    /// has no position (its PostgreSQL does not answer) as holding nothing. A standby that
    /// lags is promoted over one whose PostgreSQL hung holding the last acknowledged writes.
    pub skip_final_reports: bool,
}

impl UnsafeForTesting {
    /// One line per unsafe setting in force.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.no_fence_keeper {
            out.push(
                "UNSAFE (unsafe_for_testing.no_fence_keeper): no fence keeper; a frozen raftpg leaves its PostgreSQL \
                 serving past the lease"
                    .to_string(),
            );
        }
        if let Some(ms) = self.controller_deadline_ms {
            out.push(format!(
                "UNSAFE (unsafe_for_testing.controller_deadline_ms = {ms}): the controller may promote a new primary \
                 while the old one still holds its lease"
            ));
        }
        if self.skip_final_reports {
            out.push(
                "UNSAFE (unsafe_for_testing.skip_final_reports): the controller promotes from the standbys' last \
                 periodic reports without waiting for their final positions; acknowledged writes can be lost"
                    .to_string(),
            );
        }
        out
    }
}

/// `[http]`: the health checks stay readable without credentials (HAProxy's checks work
/// unchanged); `/cluster` and `/metrics` can require a user and password.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Serve HTTPS with this node's `[tls]` certificate (clients need no certificate).
    pub tls: bool,
    /// Basic authentication user for `/cluster` and `/metrics`.
    pub username: Option<String>,
    /// File holding that user's password (one line, mode 0600).
    pub password_file: Option<PathBuf>,
}

/// Default OS user for PostgreSQL when raftpg runs as root.
pub const DEFAULT_OS_USER: &str = "postgres";
/// Default database superuser (initdb's `--username`).
pub const DEFAULT_SUPERUSER: &str = "postgres";
/// Default role standbys stream and clone with.
pub const DEFAULT_REPLICATION_USER: &str = "replicator";
/// Default authentication of TCP connections.
pub const DEFAULT_HOST_AUTH: &str = "scram-sha-256";
/// Longest wait for PostgreSQL to start (crash recovery included).
pub const DEFAULT_START_TIMEOUT_S: u64 = 60;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresSection {
    /// Manage PostgreSQL on this node (default). Off: Raft group only, for testing the group itself.
    pub manage: bool,
    /// PostgreSQL's binaries; found automatically (pg_config, /usr/lib/postgresql/<newest>/bin, $PATH) when unset.
    pub bin_dir: Option<PathBuf>,
    /// PGDATA of this node; default `<node.data_dir>/pgdata`.
    pub data_dir: Option<PathBuf>,
    /// OS user that runs PostgreSQL and its tools when raftpg runs as root.
    pub os_user: String,
    /// Database superuser (used locally, and by pg_rewind against the new primary).
    pub superuser: String,
    /// File holding the superuser's password (one line). Required unless `host_auth = "trust"`.
    pub superuser_password_file: Option<PathBuf>,
    /// Role that standbys stream and clone with; created at bootstrap.
    pub replication_user: String,
    /// File holding the replication role's password (one line). Required unless `host_auth = "trust"`.
    pub replication_password_file: Option<PathBuf>,
    /// Authentication of TCP connections in pg_hba.conf: `scram-sha-256`, `md5`, or `trust` (local demos only).
    pub host_auth: String,
    /// `listen_addresses`; default: the host of this member's `pg` address.
    pub listen_addresses: Option<String>,
    /// Re-clone with pg_basebackup when pg_rewind fails (logged as an error). Off: the node stays stopped.
    pub reclone_on_rewind_failure: bool,
    /// Longest wait for PostgreSQL to start, crash recovery included.
    pub start_timeout_s: u64,
    /// PostgreSQL parameters of this node only; cluster-wide ones live in the Raft state.
    pub parameters: BTreeMap<String, String>,
    /// TLS for PostgreSQL with the node's `[tls]` certificate: `ssl = on`, `hostssl` rules
    /// only, and replication, pg_rewind and pg_basebackup verify the cluster CA.
    pub ssl: bool,
}

impl Default for PostgresSection {
    fn default() -> Self {
        PostgresSection {
            manage: true,
            bin_dir: None,
            data_dir: None,
            os_user: DEFAULT_OS_USER.into(),
            superuser: DEFAULT_SUPERUSER.into(),
            superuser_password_file: None,
            replication_user: DEFAULT_REPLICATION_USER.into(),
            replication_password_file: None,
            host_auth: DEFAULT_HOST_AUTH.into(),
            listen_addresses: None,
            reclone_on_rewind_failure: true,
            start_timeout_s: DEFAULT_START_TIMEOUT_S,
            parameters: BTreeMap::new(),
            ssl: false,
        }
    }
}

impl PostgresSection {
    fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, p: String| Err((format!("postgres.{k}"), p));
        for (key, role) in [
            ("superuser", &self.superuser),
            ("replication_user", &self.replication_user),
        ] {
            let ok = !role.is_empty() && role.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return err(
                    key,
                    format!("'{role}' is not a plain role name: use letters, digits or '_'"),
                );
            }
        }
        if self.superuser == self.replication_user {
            return err(
                "replication_user",
                "must differ from postgres.superuser: standbys connect with a role that can only replicate".into(),
            );
        }
        match self.host_auth.as_str() {
            "trust" => {}
            "scram-sha-256" | "md5" => {
                if self.superuser_password_file.is_none() {
                    return err(
                        "superuser_password_file",
                        format!(
                            "is required with host_auth = \"{}\": point it at a file (mode 0600) holding the password",
                            self.host_auth
                        ),
                    );
                }
                if self.replication_password_file.is_none() {
                    return err(
                        "replication_password_file",
                        format!(
                            "is required with host_auth = \"{}\": point it at a file (mode 0600) holding the password",
                            self.host_auth
                        ),
                    );
                }
            }
            other => {
                return err(
                    "host_auth",
                    format!("'{other}' is not supported: use \"scram-sha-256\", \"md5\" or \"trust\""),
                )
            }
        }
        if self.start_timeout_s == 0 {
            return err("start_timeout_s", "must be 1 or more".into());
        }
        for name in self.parameters.keys() {
            if crate::cluster::params::is_managed(name) {
                return err(
                    &format!("parameters.{name}"),
                    format!("{name} is managed by raftpg and cannot be set here"),
                );
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// This node's member name; must appear in `members`.
    pub name: String,
    /// Directory for raftpg's own state (`raft/` holds the Raft log and state).
    pub data_dir: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Cluster name; nodes of different clusters refuse to talk to each other.
    #[serde(default = "default_cluster_name")]
    pub name: String,
    /// The member whose existing PostgreSQL database becomes the first primary (no initdb
    /// anywhere); used only when the cluster forms.
    #[serde(default)]
    pub adopt: Option<String>,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            name: default_cluster_name(),
            adopt: None,
        }
    }
}

fn default_cluster_name() -> String {
    DEFAULT_CLUSTER_NAME.to_string()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// Unique member name.
    pub name: String,
    /// Raft node id: unique, never reused for another machine.
    pub id: u64,
    /// Raft transport address, host:port.
    pub raft: String,
    /// Control API address, host:port.
    pub grpc: String,
    /// PostgreSQL address, host:port.
    pub pg: String,
    /// HTTP health API address, host:port.
    pub http: String,
    /// Never promote this member.
    #[serde(default)]
    pub nofailover: bool,
    /// Higher wins among equally advanced candidates.
    #[serde(default)]
    pub failover_priority: i32,
    /// Never a synchronous standby (set when the cluster forms; `ctl member tags` later).
    #[serde(default)]
    pub nosync: bool,
    /// Left out of `/replica` and `/read-only` (set when the cluster forms).
    #[serde(default)]
    pub noloadbalance: bool,
    /// Stream from this other member, a standby (cascading; set when the cluster forms).
    #[serde(default)]
    pub replicatefrom: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSection {
    /// Leader heartbeat interval.
    pub heartbeat_ms: u64,
    /// Shortest election timeout.
    pub election_timeout_min_ms: u64,
    /// Longest election timeout.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_after_logs: u64,
    /// Entries kept in the log behind a snapshot.
    pub logs_to_keep: u64,
    /// Timeout of one Raft RPC.
    pub rpc_timeout_ms: u64,
}

impl Default for RaftSection {
    fn default() -> Self {
        RaftSection {
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            election_timeout_min_ms: DEFAULT_ELECTION_TIMEOUT_MIN_MS,
            election_timeout_max_ms: DEFAULT_ELECTION_TIMEOUT_MAX_MS,
            snapshot_after_logs: DEFAULT_SNAPSHOT_AFTER_LOGS,
            logs_to_keep: DEFAULT_LOGS_TO_KEEP,
            rpc_timeout_ms: DEFAULT_RPC_TIMEOUT_MS,
        }
    }
}

/// A configuration problem: the file, the key, what is wrong and how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {}{problem}", if key == "-" { String::new() } else { format!("{key}: ") })]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub problem: String,
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: "-".into(),
            problem: format!("cannot read the file ({e}); pass an existing file with --config"),
        })?;
        let mut cfg = Config::parse(&text, &file)?;
        let cwd = std::env::current_dir().map_err(|e| ConfigError {
            file,
            key: "node.data_dir".into(),
            problem: format!("cannot read the working directory to resolve relative paths ({e}); use absolute paths"),
        })?;
        cfg.resolve_paths(&cwd);
        Ok(cfg)
    }

    /// Makes every relative path absolute against `cwd` (the directory raftpg
    /// was started in). PostgreSQL's tools run as another user and in another
    /// directory, so a relative path would point somewhere else for them.
    pub fn resolve_paths(&mut self, cwd: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = cwd.join(&*p);
            }
        };
        abs(&mut self.node.data_dir);
        if let Some(p) = &mut self.http.password_file {
            abs(p);
        }
        for p in [
            &mut self.hooks.on_start,
            &mut self.hooks.on_stop,
            &mut self.hooks.on_role_change,
            &mut self.hooks.pre_promote,
        ]
        .into_iter()
        .flatten()
        {
            abs(p);
        }
        if let Some(t) = &mut self.tls {
            abs(&mut t.ca_file);
            abs(&mut t.cert_file);
            abs(&mut t.key_file);
        }
        let pg = &mut self.postgres;
        for p in [
            &mut pg.bin_dir,
            &mut pg.data_dir,
            &mut pg.superuser_password_file,
            &mut pg.replication_password_file,
        ]
        .into_iter()
        .flatten()
        {
            abs(p);
        }
    }

    /// Parses and validates configuration text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            ConfigError {
                file: match line {
                    Some(l) => format!("{file}:{l}"),
                    None => file.to_string(),
                },
                key: toml_error_key(&e),
                problem: format!("{} (see deploy/raftpg.example.toml for every key)", e.message().trim()),
            }
        })?;
        cfg.validate().map_err(|(key, problem)| ConfigError {
            file: file.to_string(),
            key,
            problem,
        })?;
        Ok(cfg)
    }

    /// Checks fields against each other. Returns (key, problem with its fix).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, p: String| Err((k.to_string(), p));
        if self.node.name.trim().is_empty() {
            return err("node.name", "is empty: set it to this node's member name".into());
        }
        if self.node.data_dir.as_os_str().is_empty() {
            return err("node.data_dir", "is empty: set a directory raftpg may write to".into());
        }
        if self.members.is_empty() {
            return err(
                "members",
                "no members: add one [[members]] table per node (name, id, raft, grpc, pg, http)".into(),
            );
        }
        let mut names = BTreeSet::new();
        let mut ids = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for (i, m) in self.members.iter().enumerate() {
            let at = |f: &str| format!("members[{i}].{f}");
            crate::cluster::params::check_member_name(&m.name).map_err(|p| (at("name"), p))?;
            if !names.insert(m.name.clone()) {
                return err(
                    &at("name"),
                    format!("duplicate member name '{}': every member needs its own", m.name),
                );
            }
            if m.id == 0 {
                return err(&at("id"), "must be 1 or more".into());
            }
            if !ids.insert(m.id) {
                return err(
                    &at("id"),
                    format!("duplicate id {} (member '{}'): ids must be unique", m.id, m.name),
                );
            }
            for (field, value) in [("raft", &m.raft), ("grpc", &m.grpc), ("pg", &m.pg), ("http", &m.http)] {
                check_addr(value).map_err(|p| (at(field), p))?;
                if !addrs.insert(value.clone()) {
                    return err(
                        &at(field),
                        format!("address {value} is used twice: each port serves one purpose"),
                    );
                }
            }
        }
        // The tags must be ones the cluster accepts: applied to the state `Init` makes.
        let mut state = crate::cluster::ClusterState::default();
        let init = crate::cluster::Command::Init {
            members: self.initial_members(),
        };
        if crate::cluster::apply(&mut state, &init).is_ok() {
            for cmd in self.initial_tag_changes() {
                if let Err(e) = crate::cluster::apply(&mut state, &cmd) {
                    let crate::cluster::Command::ChangeTags { name, .. } = &cmd else {
                        continue;
                    };
                    let i = self.members.iter().position(|m| &m.name == name).unwrap_or(0);
                    return err(&format!("members[{i}]"), format!("its tags are refused: {e}"));
                }
            }
        }
        if !names.contains(&self.node.name) {
            return err(
                "node.name",
                format!(
                    "'{}' is not in the member list ({}): add a [[members]] entry for it or fix the name",
                    self.node.name,
                    names.into_iter().collect::<Vec<_>>().join(", ")
                ),
            );
        }
        if let Some(adopt) = self.cluster.adopt.as_ref().filter(|a| !names.contains(*a)) {
            return err(
                "cluster.adopt",
                format!(
                    "'{adopt}' is not in the member list ({}): name the member whose existing database becomes the primary",
                    names.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
        }
        self.raft.validate()?;
        self.postgres.validate()?;
        self.trust_only_on_loopback()?;
        if let Some(v) = &self.vip {
            v.validate()?;
        }
        if self.hooks.timeout_s == 0 {
            return err("hooks.timeout_s", "must be 1 or more (seconds)".into());
        }
        for (key, on) in [("postgres.ssl", self.postgres.ssl), ("http.tls", self.http.tls)] {
            if on && self.tls.is_none() {
                return err(
                    key,
                    "needs the node's certificate: add a [tls] section (ca_file, cert_file, key_file)".into(),
                );
            }
        }
        match (&self.http.username, &self.http.password_file) {
            (Some(u), Some(_)) if u.is_empty() || u.contains(':') => {
                return err(
                    "http.username",
                    "must be non-empty and without ':' (basic authentication)".into(),
                )
            }
            (Some(_), None) => return err("http.password_file", "is needed with http.username".into()),
            (None, Some(_)) => return err("http.username", "is needed with http.password_file".into()),
            _ => {}
        }
        self.plaintext_only_on_purpose()
    }

    /// Without `[tls]`, anyone who reaches a port controls the cluster: accepted on
    /// loopback, elsewhere only with `insecure = true`.
    fn plaintext_only_on_purpose(&self) -> Result<(), (String, String)> {
        if self.tls.is_some() || self.insecure {
            return Ok(());
        }
        let me = self.me();
        for (key, addr) in [("raft", &me.raft), ("grpc", &me.grpc), ("http", &me.http)] {
            let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
            if !is_loopback(host) {
                return Err((
                    "tls".into(),
                    format!(
                        "no [tls] section, and this node would listen on {addr} (members[].{key} of '{}'), which is not \
                         loopback: anyone who reaches it could control the cluster. Add [tls] with ca_file, cert_file \
                         and key_file (make them with raftpg tls), or set insecure = true at the top of the file to run \
                         plaintext on purpose",
                        me.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `host_auth = "trust"` lets anyone who reaches PostgreSQL connect as any role, the
    /// superuser included: accepted only while PostgreSQL listens on loopback alone.
    fn trust_only_on_loopback(&self) -> Result<(), (String, String)> {
        if self.postgres.host_auth != "trust" {
            return Ok(());
        }
        let host_of_me = self.me().pg.rsplit_once(':').map_or("", |(h, _)| h);
        let listen = self.postgres.listen_addresses.as_deref().unwrap_or(host_of_me);
        match listen.split(',').find(|a| !is_loopback(a)) {
            None => Ok(()),
            Some(a) => Err((
                "postgres.host_auth".into(),
                format!(
                    "\"trust\" would let anyone who reaches {} connect to PostgreSQL as any role, the superuser \
                     included; it is accepted only when PostgreSQL listens on loopback alone. Use \"scram-sha-256\" \
                     with superuser_password_file and replication_password_file",
                    a.trim()
                ),
            )),
        }
    }

    /// This node's entry in the member list (validated to exist).
    pub fn me(&self) -> &MemberConfig {
        self.members
            .iter()
            .find(|m| m.name == self.node.name)
            .expect("validate() checks that node.name is a member")
    }

    /// The initial members as domain values.
    pub fn initial_members(&self) -> Vec<Member> {
        self.members.iter().map(MemberConfig::to_member).collect()
    }

    /// The tags of `[[members]]` that `Init` does not carry (`nosync`, `noloadbalance`,
    /// `replicatefrom`), as the `ChangeTags` commands committed right after it.
    pub fn initial_tag_changes(&self) -> Vec<crate::cluster::Command> {
        use crate::cluster::{Flag, TagChange};
        self.members
            .iter()
            .filter_map(|m| {
                let mut changes = Vec::new();
                if m.nosync {
                    changes.push(TagChange::Flag(Flag::NoSync, true));
                }
                if m.noloadbalance {
                    changes.push(TagChange::Flag(Flag::NoLoadBalance, true));
                }
                if let Some(u) = &m.replicatefrom {
                    changes.push(TagChange::ReplicateFrom(Some(u.clone())));
                }
                (!changes.is_empty()).then(|| crate::cluster::Command::ChangeTags {
                    name: m.name.clone(),
                    changes,
                })
            })
            .collect()
    }

    pub fn raft_dir(&self) -> PathBuf {
        self.node.data_dir.join("raft")
    }

    /// PGDATA of this node.
    pub fn pg_data(&self) -> PathBuf {
        self.postgres
            .data_dir
            .clone()
            .unwrap_or_else(|| self.node.data_dir.join("pgdata"))
    }
}

impl RaftSection {
    fn validate(&self) -> Result<(), (String, String)> {
        let r = self;
        if r.heartbeat_ms == 0 {
            return Err(("raft.heartbeat_ms".into(), "must be more than 0".into()));
        }
        if r.election_timeout_min_ms < 3 * r.heartbeat_ms {
            return Err((
                "raft.election_timeout_min_ms".into(),
                format!(
                    "{} is less than 3 heartbeats ({} ms): raise it or lower raft.heartbeat_ms",
                    r.election_timeout_min_ms, r.heartbeat_ms
                ),
            ));
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return Err((
                "raft.election_timeout_max_ms".into(),
                format!(
                    "{} must be greater than raft.election_timeout_min_ms ({})",
                    r.election_timeout_max_ms, r.election_timeout_min_ms
                ),
            ));
        }
        if r.snapshot_after_logs == 0 {
            return Err(("raft.snapshot_after_logs".into(), "must be 1 or more".into()));
        }
        if r.rpc_timeout_ms < r.heartbeat_ms || r.rpc_timeout_ms > r.election_timeout_max_ms * 10 {
            return Err((
                "raft.rpc_timeout_ms".into(),
                format!(
                    "{} must lie between raft.heartbeat_ms and 10 election timeouts",
                    r.rpc_timeout_ms
                ),
            ));
        }
        Ok(())
    }
}

impl MemberConfig {
    pub fn to_member(&self) -> Member {
        Member {
            name: self.name.clone(),
            id: self.id,
            raft_addr: self.raft.clone(),
            grpc_addr: self.grpc.clone(),
            pg_addr: self.pg.clone(),
            http_addr: self.http.clone(),
            tags: Tags {
                nofailover: self.nofailover,
                failover_priority: self.failover_priority,
            },
        }
    }
}

/// `host:port` with a port; the host must resolve.
fn check_addr(value: &str) -> Result<(), String> {
    if value.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(format!("'{value}' has no port: write host:port, e.g. 10.0.0.1:5432"));
    };
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(format!("'{value}' is not host:port with a port from 1 to 65535"));
    }
    match value.to_socket_addrs() {
        Ok(it) if it.len() > 0 => Ok(()),
        _ => Err(format!(
            "host '{host}' does not resolve: use an IP address or a resolvable name"
        )),
    }
}

/// The dotted key a TOML error points at, from its span, or "-" when unknown.
fn toml_error_key(e: &toml::de::Error) -> String {
    let msg = e.message();
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        if let Some(name) = rest.split('`').next() {
            return name.to_string();
        }
    }
    if let Some(rest) = msg.strip_prefix("missing field `") {
        if let Some(name) = rest.split('`').next() {
            return name.to_string();
        }
    }
    "-".to_string()
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;

/// Warns when a secret named by config `key` (a password file, a private key) is readable by
/// others than its owner.
pub fn warn_if_readable(key: &str, path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                "{key}: {} is readable by others than its owner (mode {:o}): run `chmod 600 {}`",
                path.display(),
                mode & 0o777,
                path.display()
            );
        }
    }
}

/// Is `host` (a name or an IP, IPv6 possibly in brackets) loopback?
pub fn is_loopback(host: &str) -> bool {
    let a = host.trim().trim_start_matches('[').trim_end_matches(']');
    a == "localhost" || a.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
