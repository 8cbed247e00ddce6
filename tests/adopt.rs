//! Adopting an existing PostgreSQL (`[cluster] adopt`): a standalone server with data,
//! on a timeline above 1, running under its own configuration, becomes the first primary
//! of a three-node raftpg cluster without initdb and without losing a row; a member
//! holding another system's database is cloned over; then the cluster fails over and the
//! adopted node rejoins. Real PostgreSQL, scram-sha-256 with password files, mutual TLS.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::pg::Writer;
use common::{phase, Cluster};
use tokio::time::Instant;

const FORM: Duration = Duration::from_secs(120);
const FAILOVER: Duration = Duration::from_secs(30);
/// Rows in the adopted database (`ADOPT_ROWS` for a bigger measurement).
fn rows() -> i64 {
    common::count_from_env("ADOPT_ROWS", 20_000) as i64
}

/// Seconds between the first log line of `log` containing `from` and the first after it
/// containing `to` (raftpg's log lines start with an RFC 3339 time).
fn between(log: &str, from: &str, to: &str) -> Option<f64> {
    let at = |line: &str| -> Option<f64> {
        let t = line.split_whitespace().next()?;
        let time = t.split('T').nth(1)?.trim_end_matches('Z');
        let mut parts = time.split(':');
        let (h, m, s): (f64, f64, f64) = (
            parts.next()?.parse().ok()?,
            parts.next()?.parse().ok()?,
            parts.next()?.parse().ok()?,
        );
        Some(h * 3600.0 + m * 60.0 + s)
    };
    let mut lines = log.lines();
    let start = lines.by_ref().find(|l| l.contains(from)).and_then(at)?;
    let end = lines.find(|l| l.contains(to)).and_then(at)?;
    Some(end - start)
}

fn bin(tool: &str) -> PathBuf {
    raftpg::postgres::PgBinaries::find(None)
        .expect("PostgreSQL binaries")
        .dir
        .join(tool)
}

/// Runs a PostgreSQL tool as the `postgres` OS user when the test runs as root (as
/// raftpg does), as the current user otherwise; panics with its output on failure.
fn as_postgres(tool: &str, args: &[&str]) -> String {
    let root = nix::unistd::Uid::effective().is_root();
    let mut cmd = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin(tool));
        c
    } else {
        Command::new(bin(tool))
    };
    let out = cmd.args(args).current_dir("/").output().expect("run a PostgreSQL tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{tool} {args:?} failed: {text}");
    text
}

/// An empty PGDATA the PostgreSQL OS user owns, then initdb (no checksums, like most
/// databases people already run).
fn initdb(pgdata: &Path) {
    std::fs::create_dir_all(pgdata).unwrap();
    if nix::unistd::Uid::effective().is_root() {
        let pg = nix::unistd::User::from_name("postgres")
            .unwrap()
            .expect("a postgres OS user");
        nix::unistd::chown(pgdata, Some(pg.uid), Some(pg.gid)).unwrap();
    }
    std::fs::set_permissions(pgdata, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let d = pgdata.to_str().unwrap();
    as_postgres("initdb", &["-D", d, "-U", "postgres", "--auth=trust"]);
}

fn pg_ctl(pgdata: &Path, args: &[&str]) {
    let d = pgdata.to_str().unwrap();
    let log = format!("{d}/startup.log");
    let mut all = vec!["-D", d, "-w", "-t", "60", "-l", &log];
    all.extend_from_slice(args);
    as_postgres("pg_ctl", &all);
}

fn psql(pgdata: &Path, port: u16, sql: &str) -> String {
    let d = pgdata.to_str().unwrap();
    let p = port.to_string();
    as_postgres(
        "psql",
        &[
            "-h",
            d,
            "-p",
            &p,
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-Atq",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ],
    )
    .trim()
    .to_string()
}

fn adopt_in_configs(c: &Cluster, adopt: &str) {
    for k in 1..=c.n {
        let path = c.config_path(k);
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.replacen(
            "[cluster]\nname = \"raftpg-demo\"\n",
            &format!("[cluster]\nname = \"raftpg-demo\"\nadopt = \"{adopt}\"\n"),
            1,
        );
        assert!(text.contains("adopt = "), "no [cluster] section in {}", path.display());
        std::fs::write(&path, text).unwrap();
    }
}

async fn psql_size(c: &Cluster) -> String {
    c.query_one(1, "SELECT pg_size_pretty(pg_database_size('postgres'))")
        .await
        .map(|r| r.get::<_, String>(0))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_standalone_postgres_on_timeline_2_becomes_a_three_node_cluster_and_fails_over() {
    let mut c = Cluster::configured(20000, 3, "");
    adopt_in_configs(&c, "n1");
    let own_port = 20050;

    phase("a standalone PostgreSQL for n1: initdb, its own settings, promoted to timeline 2, rows");
    let pgdata = c.dir.path().join("n1/pgdata");
    initdb(&pgdata);
    let conf = pgdata.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text += &format!(
        "\n# the operator's own\nport = {own_port}\nlisten_addresses = ''\nunix_socket_directories = '{}'\nwork_mem = '7MB'\n",
        pgdata.display()
    );
    std::fs::write(&conf, text).unwrap();
    pg_ctl(&pgdata, &["start"]);
    pg_ctl(&pgdata, &["stop", "-m", "fast"]);
    // A standby whose primary is gone, promoted: timeline 2, as after a repmgr failover.
    std::fs::write(pgdata.join("standby.signal"), "").unwrap();
    if nix::unistd::Uid::effective().is_root() {
        let pg = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        nix::unistd::chown(&pgdata.join("standby.signal"), Some(pg.uid), Some(pg.gid)).unwrap();
    }
    pg_ctl(&pgdata, &["start"]);
    pg_ctl(&pgdata, &["promote"]);
    c.wait_for("the standalone server to leave recovery", FORM, || async {
        (psql(&pgdata, own_port, "SELECT pg_is_in_recovery()") == "f").then_some(())
    })
    .await;
    psql(
        &pgdata,
        own_port,
        &format!(
            "CREATE TABLE kept AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, {}) g",
            rows()
        ),
    );
    // Left behind by pg_basebackup -R or repmgr: would stream from a primary that is gone.
    psql(
        &pgdata,
        own_port,
        "ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=1'",
    );
    let tli = psql(&pgdata, own_port, "SELECT timeline_id FROM pg_control_checkpoint()");
    let sysid = psql(&pgdata, own_port, "SELECT system_identifier FROM pg_control_system()");
    phase(&format!(
        "n1's database: {} rows, timeline {tli}, system {sysid}; running",
        rows()
    ));

    phase("n2 holds another system's database (stopped); n3's data directory is empty");
    initdb(&c.dir.path().join("n2/pgdata"));

    phase("raftpg starts on all three with [cluster] adopt = \"n1\"");
    let adopt_started = Instant::now();
    for k in 1..=3 {
        c.start_node(k);
    }
    let primary = c.wait_streaming(2, FORM).await;
    assert_eq!(primary, 1, "the adopted member is the first primary");
    let size = psql_size(&c).await;
    phase(&format!(
        "adopted and both standbys stream {:?} after raftpg started ({} rows, database {size})",
        adopt_started.elapsed(),
        rows()
    ));
    let down = between(&c.log_of(1), "under raftpg", "adopted: recording my database");
    phase(&format!(
        "the adopted primary was down {:.2} s (clean stop to start under raftpg)",
        down.expect("both steps are logged")
    ));
    let s = c.status(1).await.expect("status");
    let p = s.primary.as_ref().expect("a recorded primary");
    assert_eq!((p.node.as_str(), p.generation), ("n1", 1));
    assert!(
        p.timeline >= 2,
        "recorded on the timeline it runs, not 1: {}",
        p.timeline
    );
    assert!(s.history[0].reason.contains("adopted"), "{:?}", s.history[0].reason);
    assert!(c.log_of(1).contains("adopting"), "n1's log says what it did");
    assert!(!c.log_of(1).contains("initdb into"), "no initdb on the adopted member");
    for k in 1..=3 {
        assert!(!c.log_of(k).contains("initdb into"), "n{k} ran initdb");
    }
    for k in 1..=3 {
        let row = c
            .query_one(k, "SELECT count(*), sum(id) FROM kept")
            .await
            .expect("query");
        assert_eq!(row.get::<_, i64>(0), rows(), "n{k} holds every row");
        let row = c
            .query_one(k, "SELECT system_identifier::text FROM pg_control_system()")
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), sysid, "n{k} is a copy of the adopted database");
        // The adopted configuration is kept (postgresql.base.conf, copied by the clone).
        let row = c.query_one(k, "SELECT current_setting('work_mem')").await.unwrap();
        assert_eq!(row.get::<_, String>(0), "7MB", "n{k} runs the adopted settings");
    }
    let row = c
        .query_one(1, "SELECT current_setting('primary_conninfo')")
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, String>(0),
        "",
        "the stale primary_conninfo left postgresql.auto.conf"
    );
    assert!(pgdata.join("postgresql.base.conf").exists());
    assert!(
        c.log_of(2).contains("another database"),
        "n2's foreign database was cloned over"
    );

    phase("a writer, then kill -9 of n1's raftpg and postmaster: the cluster fails over");
    let w = Writer::start(&c.libpq()).await;
    w.wait_ack_after(Instant::now(), None, FAILOVER).await;
    let old_port = c.pg_port(1) as i32;
    c.kill9(1);
    c.kill9_postmaster(1);
    let killed = Instant::now();
    let first = w.wait_ack_after(killed, Some(old_port), FAILOVER).await;
    phase(&format!(
        "port {} acknowledged a write {:?} after the kill",
        first.port,
        first.at - killed
    ));
    let survivor = (first.port - 20000) as u16;
    let row = c.query_one(survivor, "SELECT count(*) FROM kept").await.unwrap();
    assert_eq!(row.get::<_, i64>(0), rows(), "the new primary holds every adopted row");

    phase("n1 comes back and follows the new primary");
    c.start_node(1);
    let primary = c.wait_streaming(2, FORM).await;
    assert_ne!(primary, 1);
    let nodes: Vec<u16> = (1..=3).collect();
    c.assert_no_loss(w, &nodes, FORM).await;
    let row = c.query_one(1, "SELECT count(*) FROM kept").await.unwrap();
    assert_eq!(row.get::<_, i64>(0), rows());
}
