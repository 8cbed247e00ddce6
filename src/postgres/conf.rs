//! Rendering PostgreSQL's configuration: `postgresql.conf`, `pg_hba.conf`,
//! the streaming `primary_conninfo`, `synchronous_standby_names`, slot names
//! and the password file. Pure functions plus one writer.
//!
//! raftpg owns `postgresql.conf` and `pg_hba.conf` in PGDATA and rewrites them
//! before every start, because pg_basebackup and pg_rewind copy the source's.

use crate::types::Timeline;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub use crate::cluster::params::MANAGED;

/// Production defaults; cluster-wide parameters, then this node's, override them.
pub const DEFAULTS: [(&str, &str); 16] = [
    ("wal_level", "replica"),
    ("hot_standby", "on"),
    ("max_wal_senders", "10"),
    ("max_replication_slots", "10"),
    ("wal_keep_size", "128MB"),
    // pg_rewind needs hint bits in WAL (initdb also enables data checksums).
    ("wal_log_hints", "on"),
    // A crashed postmaster stays down so raftpg sees the crash and decides.
    ("restart_after_crash", "off"),
    // A dead peer is noticed in seconds, not the default minute.
    ("wal_sender_timeout", "5s"),
    ("wal_receiver_timeout", "5s"),
    ("wal_receiver_status_interval", "1s"),
    // A standby told to follow a new primary reconnects at once.
    ("wal_retrieve_retry_interval", "250ms"),
    ("hot_standby_feedback", "on"),
    ("synchronous_commit", "on"),
    ("password_encryption", "scram-sha-256"),
    ("log_line_prefix", "%m [%p] %q%u@%d "),
    ("logging_collector", "off"),
];

/// PostgreSQL's TLS files (copies of the node's `[tls]` files, owned by its OS user).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgSsl {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The cluster CA: what replication and pg_rewind connections verify the server with.
    pub ca: PathBuf,
}

/// Where a standby streams from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// This standby's member name: PostgreSQL's `application_name` and the slot it uses.
    pub application_name: String,
    pub passfile: Option<PathBuf>,
    /// With PostgreSQL TLS: the CA the upstream's certificate must chain to.
    pub ssl_root_cert: Option<PathBuf>,
    /// Stream through this standby's slot (`slot_name(application_name)`), which the
    /// upstream keeps because it is this standby's source by design
    /// (`ClusterState::source_of`). A cascading standby that fell back to the primary
    /// streams without one: the primary keeps none for it.
    pub slot: bool,
}

/// Everything `postgresql.conf` depends on.
#[derive(Clone, Debug)]
pub struct ConfInputs<'a> {
    pub port: u16,
    pub listen_addresses: &'a str,
    pub socket_dir: &'a Path,
    /// Standby: whom to stream from; `None` with `standby` set means "stop streaming".
    pub upstream: Option<&'a Upstream>,
    /// Rendered `synchronous_standby_names` (applies only while primary).
    pub sync_names: &'a str,
    pub cluster_parameters: &'a BTreeMap<String, String>,
    pub node_parameters: &'a BTreeMap<String, String>,
    /// `ssl = on` with these files.
    pub ssl: Option<&'a PgSsl>,
    /// An adopted database's own `postgresql.conf`, kept as `postgresql.base.conf`:
    /// (that file, this PGDATA's `pg_hba.conf`). Included first, so everything raftpg
    /// writes after it wins, and `hba_file` is pinned to raftpg's.
    pub base_conf: Option<(&'a Path, &'a Path)>,
    /// Not following: the newest timeline this database's WAL reaches
    /// ([`super::ctl::PgCtl::wal_timeline`]); recovery replays to its end. `None`: the
    /// timeline of the control file's checkpoint (`current`).
    pub own_timeline: Option<Timeline>,
}

/// The first line of every `postgresql.conf` raftpg writes: how it tells its own file
/// from one it has to adopt.
pub const CONF_HEADER: &str = "# Written by raftpg before every start: edits here are lost.";

/// Where an adopted database's own `postgresql.conf` is kept.
pub const BASE_CONF: &str = "postgresql.base.conf";

/// The whole `postgresql.conf`.
pub fn render_postgresql_conf(i: &ConfInputs) -> String {
    let mut params: BTreeMap<&str, String> = DEFAULTS.iter().map(|(k, v)| (*k, v.to_string())).collect();
    // Names as PostgreSQL reads them (case-insensitive); the sandbox applies again to a
    // state written before it existed, and a node's own file may set anything not managed.
    let mut own: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in i.cluster_parameters {
        if let Ok(name) = crate::cluster::params::check_parameter(k, Some(v)) {
            own.insert(name, v.clone());
        }
    }
    for (k, v) in i.node_parameters {
        if !crate::cluster::params::is_managed(k) {
            own.insert(k.to_ascii_lowercase(), v.clone());
        }
    }
    for (k, v) in &own {
        params.insert(k.as_str(), v.clone());
    }
    let mut out = String::from(CONF_HEADER);
    out.push_str(
        "\n# Change parameters with `raftpg ctl config set postgresql.parameters.NAME=VALUE`\n\
         # (whole cluster) or [postgres.parameters] in raftpg.toml (this node).\n\n",
    );
    if let Some((base, _)) = i.base_conf {
        let _ = writeln!(
            out,
            "# The adopted database's own settings; every line below overrides them.\ninclude {}\n",
            quote(&base.display().to_string())
        );
    }
    let mut managed = vec![
        ("port", i.port.to_string()),
        ("listen_addresses", i.listen_addresses.to_string()),
        ("unix_socket_directories", i.socket_dir.display().to_string()),
        ("primary_conninfo", i.upstream.map(conninfo).unwrap_or_default()),
        (
            "primary_slot_name",
            i.upstream
                .filter(|u| u.slot)
                .map(|u| slot_name(&u.application_name))
                .unwrap_or_default(),
        ),
        ("synchronous_standby_names", i.sync_names.to_string()),
        // Following: switch to the primary's newest timeline. Not following (a fenced standby
        // reporting its position, a candidate): stay on the own timeline, whatever history
        // files arrived, so a standby that diverged still starts and reports its true end.
        // The own timeline is the one its WAL reaches, not its last checkpoint's (`current`):
        // a standby that followed a new primary but made no restartpoint since would stop at
        // the old timeline's end, and a candidate promoted so dropped every write of the new
        // one (the partition suite's laggard-and-hung-holder-kill-primary, seed 5).
        (
            "recovery_target_timeline",
            match (i.upstream, i.own_timeline) {
                (Some(_), _) => "latest".to_string(),
                (None, Some(tl)) => tl.to_string(),
                (None, None) => "current".to_string(),
            },
        ),
    ];
    if let Some((_, hba)) = i.base_conf {
        managed.push(("hba_file", hba.display().to_string()));
    }
    if let Some(s) = i.ssl {
        managed.extend([
            ("ssl", "on".to_string()),
            ("ssl_cert_file", s.cert.display().to_string()),
            ("ssl_key_file", s.key.display().to_string()),
            ("ssl_ca_file", s.ca.display().to_string()),
        ]);
    }
    // A later line wins in postgresql.conf: nothing may repeat a managed name.
    params.retain(|k, _| !managed.iter().any(|(m, _)| m == k));
    for (k, v) in managed.iter().map(|(k, v)| (*k, v.clone())).chain(params) {
        let _ = writeln!(out, "{k} = {}", quote(&v));
    }
    out
}

/// Parameters whose value PostgreSQL must take from raftpg's postgresql.conf besides the
/// managed ones: the TLS files, and the crash and commit behaviour raftpg relies on.
pub const CHECKED: [&str; 6] = [
    "ssl",
    "ssl_cert_file",
    "ssl_key_file",
    "ssl_ca_file",
    "restart_after_crash",
    "synchronous_commit",
];

/// `postgresql.auto.conf` without the lines that set a parameter raftpg manages, or one it
/// checks (`ssl*`, `restart_after_crash`, `synchronous_commit`): (kept text, dropped names).
pub fn without_managed(auto_conf: &str) -> (String, Vec<String>) {
    let mut kept = String::new();
    let mut dropped = Vec::new();
    for line in auto_conf.lines() {
        let name = line
            .split(['=', ' ', '\t'])
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if !name.starts_with('#') && (MANAGED.contains(&name.as_str()) || CHECKED.contains(&name.as_str())) {
            dropped.push(name);
        } else {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    (kept, dropped)
}

/// `pg_hba.conf`. `gated` refuses client connections (replication still allowed):
/// a primary restarted after a crash serves nobody until a standby holds its WAL.
/// With `ssl`, TCP connections must use TLS (`hostssl`; a plaintext one matches no rule).
pub fn render_hba(host_auth: &str, replication_user: &str, gated: bool, ssl: bool) -> String {
    let mut out = String::from("# Written by raftpg: edits here are lost.\n");
    out += "local all all trust\nlocal replication all trust\n";
    let host = if ssl { "hostssl" } else { "host" };
    if gated {
        out += "# gated: no client connections until a standby holds this primary's WAL end\n";
        let _ = writeln!(out, "{host} all all all reject");
    }
    let _ = writeln!(out, "{host} replication {replication_user} all {host_auth}");
    let _ = writeln!(out, "{host} all all all {host_auth}");
    out
}

/// `ANY k ("a", "b")`, or empty when nothing must wait for a standby.
pub fn sync_standby_names(k: usize, standbys: &[String]) -> String {
    if k == 0 || standbys.is_empty() {
        return String::new();
    }
    // A double quote inside a quoted name is doubled, as PostgreSQL reads it (member names
    // cannot hold one; this keeps a name from breaking out even if one did).
    let names: Vec<String> = standbys
        .iter()
        .map(|s| format!("\"{}\"", s.replace('"', "\"\"")))
        .collect();
    format!("ANY {} ({})", k.min(standbys.len()), names.join(", "))
}

/// Prefix of the replication slots raftpg owns (and drops when their member leaves).
pub const SLOT_PREFIX: &str = "raftpg_";

/// The physical slot kept for `member` on the primary. Slot names allow only `[a-z0-9_]`
/// and 63 bytes, and must not collide: `db-1`, `db_1` and `DB_1` are three members.
/// - A name of lower-case letters, digits and single hyphens keeps the form raftpg always
///   gave it: `raftpg_` + the name with `-` as `_` (`db-1` → `raftpg_db_1`). Such a slot
///   never holds `__`.
/// - Any other name (upper case, `_`, `--`, long) gets `raftpg_` + its lower-case form with
///   `-` as `_`, cut to 38 bytes, + `__` + 16 hex digits of a hash of the exact name. These
///   always hold `__`, so the two forms never meet, and the hash tells apart names that read
///   the same in lower case.
pub fn slot_name(member: &str) -> String {
    let plain = member.len() + SLOT_PREFIX.len() <= 63
        && !member.contains("--")
        && member
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let folded: String = member
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '_',
        })
        .collect();
    if plain {
        return format!("{SLOT_PREFIX}{folded}");
    }
    // FNV-1a, 64 bits: stable across releases and platforms (the slot must keep its name).
    let hash = member.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let cut: String = folded.chars().take(38).collect();
    format!("{SLOT_PREFIX}{cut}__{hash:016x}")
}

/// libpq key=value string of an upstream.
pub fn conninfo(u: &Upstream) -> String {
    let mut out = format!(
        "host={} port={} user={} application_name={} connect_timeout=2 keepalives=1 keepalives_idle=2 \
         keepalives_interval=1 keepalives_count=3",
        libpq_value(&u.host),
        u.port,
        libpq_value(&u.user),
        libpq_value(&u.application_name)
    );
    if let Some(p) = &u.passfile {
        let _ = write!(out, " passfile={}", libpq_value(&p.display().to_string()));
    }
    if let Some(ca) = &u.ssl_root_cert {
        let _ = write!(
            out,
            " sslmode=verify-ca sslrootcert={}",
            libpq_value(&ca.display().to_string())
        );
    }
    out
}

/// A pgpass file for `entries` of (user, password); any host, port and database.
pub fn render_pgpass(entries: &[(&str, &str)]) -> String {
    let esc = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
    entries
        .iter()
        .map(|(u, p)| format!("*:*:*:{}:{}\n", esc(u), esc(p)))
        .collect()
}

/// A value in postgresql.conf: single-quoted, quotes and backslashes escaped.
pub fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// A value in a libpq connection string.
fn libpq_value(v: &str) -> String {
    if !v.is_empty() && !v.contains([' ', '\'', '\\']) {
        return v.to_string();
    }
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod adopt_tests {
    use super::*;

    #[test]
    fn managed_parameters_leave_an_adopted_auto_conf_and_the_rest_stays() {
        let auto = "# Do not edit this file manually!\nprimary_conninfo = 'host=old port=5432'\nwork_mem = '8MB'\n\
                    Synchronous_Standby_Names='x'\nrestart_after_crash = on\n";
        let (kept, dropped) = without_managed(auto);
        assert_eq!(kept, "# Do not edit this file manually!\nwork_mem = '8MB'\n");
        assert_eq!(
            dropped,
            ["primary_conninfo", "synchronous_standby_names", "restart_after_crash"]
        );
    }

    #[test]
    fn an_adopted_configuration_is_included_first_and_hba_file_pinned() {
        let conf = render_postgresql_conf(&ConfInputs {
            port: 5432,
            listen_addresses: "*",
            socket_dir: Path::new("/run"),
            upstream: None,
            sync_names: "",
            cluster_parameters: &BTreeMap::new(),
            node_parameters: &BTreeMap::new(),
            ssl: None,
            base_conf: Some((Path::new("/d/postgresql.base.conf"), Path::new("/d/pg_hba.conf"))),
            own_timeline: None,
        });
        assert!(conf.starts_with(CONF_HEADER), "{conf}");
        let include = conf.find("include '/d/postgresql.base.conf'").expect("included");
        let port = conf.find("port = '5432'").unwrap();
        assert!(include < port, "{conf}");
        assert!(conf.contains("hba_file = '/d/pg_hba.conf'"), "{conf}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream() -> Upstream {
        Upstream {
            host: "10.0.0.1".into(),
            port: 5432,
            user: "replicator".into(),
            application_name: "db-2".into(),
            passfile: Some(PathBuf::from("/var/lib/raftpg/pg pass")),
            ssl_root_cert: None,
            slot: true,
        }
    }

    #[test]
    fn sync_names_quorum_of_others() {
        let names = vec!["n2".to_string(), "n3".to_string()];
        assert_eq!(sync_standby_names(1, &names), "ANY 1 (\"n2\", \"n3\")");
        assert_eq!(sync_standby_names(0, &names), "");
        assert_eq!(sync_standby_names(1, &[]), "");
    }

    #[test]
    fn conninfo_quotes_and_names_the_standby() {
        let c = conninfo(&upstream());
        assert!(c.starts_with("host=10.0.0.1 port=5432 user=replicator application_name=db-2 "));
        assert!(c.ends_with("passfile='/var/lib/raftpg/pg pass'"), "{c}");
        assert_eq!(slot_name("db-2"), "raftpg_db_2");
    }

    #[test]
    fn slot_names_never_collide_and_fit_postgres() {
        let names = [
            "n1",
            "db-1",
            "db_1",
            "DB_1",
            "DB-1",
            "db--1",
            "db__1",
            "Db_1",
            "a",
            "A",
            &"x".repeat(56),
            &"x".repeat(57),
            &"x".repeat(63),
            &"X".repeat(63),
        ];
        let slots: std::collections::BTreeSet<String> = names.iter().map(|n| slot_name(n)).collect();
        assert_eq!(slots.len(), names.len(), "{slots:?}");
        for s in &slots {
            assert!(s.len() <= 63, "{s}");
            assert!(
                s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{s}"
            );
            assert!(s.starts_with(SLOT_PREFIX));
        }
        // The names raftpg always derived the same way keep their slot.
        assert_eq!(slot_name("n1"), "raftpg_n1");
        assert_eq!(slot_name("pg-node-1"), "raftpg_pg_node_1");
        // The hash is FNV-1a 64 of the exact name, fixed here so a slot keeps its name.
        assert_eq!(slot_name("A"), "raftpg_a__af63fc4c860222ec");
    }

    #[test]
    fn a_quote_in_a_standby_name_cannot_break_out() {
        let names = vec!["a\"b".to_string()];
        assert_eq!(sync_standby_names(1, &names), "ANY 1 (\"a\"\"b\")");
    }

    #[test]
    fn managed_parameters_win_over_config() {
        let cluster = BTreeMap::from([("port".to_string(), "1".to_string()), ("work_mem".into(), "8MB".into())]);
        let node = BTreeMap::from([("work_mem".to_string(), "16MB".to_string())]);
        let u = upstream();
        let conf = render_postgresql_conf(&ConfInputs {
            port: 5433,
            listen_addresses: "127.0.0.1",
            socket_dir: Path::new("/run/pg"),
            upstream: Some(&u),
            sync_names: "ANY 1 (\"n1\")",
            cluster_parameters: &cluster,
            node_parameters: &node,
            ssl: None,
            base_conf: None,
            own_timeline: None,
        });
        assert!(conf.contains("port = '5433'"));
        assert!(!conf.contains("port = '1'"));
        assert!(
            conf.contains("work_mem = '16MB'"),
            "the node's value overrides the cluster's"
        );
        assert!(conf.contains("primary_slot_name = 'raftpg_db_2'"));
        assert!(conf.contains("synchronous_standby_names = 'ANY 1 (\"n1\")'"));
        assert!(conf.contains("restart_after_crash = 'off'"));
        assert!(conf.contains("passfile=''/var/lib/raftpg/pg pass''"), "{conf}");
    }

    #[test]
    fn recovery_follows_the_primary_or_stays_on_the_timeline_the_wal_reaches() {
        let u = upstream();
        let target = |upstream: Option<&Upstream>, own_timeline: Option<Timeline>| {
            let conf = render_postgresql_conf(&ConfInputs {
                port: 5433,
                listen_addresses: "127.0.0.1",
                socket_dir: Path::new("/run/pg"),
                upstream,
                sync_names: "",
                cluster_parameters: &BTreeMap::new(),
                node_parameters: &BTreeMap::new(),
                ssl: None,
                base_conf: None,
                own_timeline,
            });
            conf.lines()
                .find_map(|l| l.strip_prefix("recovery_target_timeline = ").map(str::to_string))
                .expect("always written")
        };
        assert_eq!(target(Some(&u), Some(Timeline(2))), "'latest'");
        assert_eq!(
            target(None, Some(Timeline(2))),
            "'2'",
            "its WAL's timeline, not its checkpoint's"
        );
        assert_eq!(target(None, None), "'current'");
    }

    #[test]
    fn gate_rejects_clients_but_not_replication() {
        let open = render_hba("trust", "replicator", false, false);
        let gated = render_hba("trust", "replicator", true, false);
        assert!(!open.contains("reject"));
        let reject = gated.find("host all all all reject").unwrap();
        assert!(reject < gated.find("host all all all trust").unwrap());
    }

    #[test]
    fn ssl_takes_tls_rules_and_managed_files() {
        let hba = render_hba("scram-sha-256", "replicator", true, true);
        assert!(!hba.contains("\nhost "), "no plaintext TCP rule: {hba}");
        assert!(
            hba.contains("hostssl replication replicator all scram-sha-256"),
            "{hba}"
        );
        assert!(hba.contains("hostssl all all all reject"), "{hba}");
        let ssl = PgSsl {
            cert: "/s/server.crt".into(),
            key: "/s/server.key".into(),
            ca: "/s/root.crt".into(),
        };
        let cluster = BTreeMap::from([("ssl".to_string(), "off".to_string())]);
        let mut u = upstream();
        u.ssl_root_cert = Some(ssl.ca.clone());
        let conf = render_postgresql_conf(&ConfInputs {
            port: 5433,
            listen_addresses: "127.0.0.1",
            socket_dir: Path::new("/run/pg"),
            upstream: Some(&u),
            sync_names: "",
            cluster_parameters: &cluster,
            node_parameters: &BTreeMap::new(),
            ssl: Some(&ssl),
            base_conf: None,
            own_timeline: None,
        });
        assert!(conf.contains("ssl = 'on'") && !conf.contains("ssl = 'off'"), "{conf}");
        assert!(conf.contains("ssl_key_file = '/s/server.key'"), "{conf}");
        assert!(conf.contains("sslmode=verify-ca sslrootcert=/s/root.crt"), "{conf}");
    }

    #[test]
    fn pgpass_escapes_separators() {
        assert_eq!(render_pgpass(&[("u", "a:b\\c")]), "*:*:*:u:a\\:b\\\\c\n");
    }
}
