//! `raftpg demo` as a user runs it: it prints the member table and a connection
//! string that works, writes cluster.json and pid files, and stops every node
//! and its PostgreSQL on SIGINT.

mod common;

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{phase, BIN};

const BASE: u16 = 28400;

/// Running and not a zombie waiting to be reaped.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_a_working_connection_string_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let demo_dir = dir.path().join("demo");
    phase("raftpg demo starts three nodes with PostgreSQL");
    let mut child = Command::new(BIN)
        .args(["demo", "--base-port", &BASE.to_string(), "--dir"])
        .arg(&demo_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut printed = Vec::new();
    let connect_line = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the demo printed its connection string");
        printed.push(line.clone());
        if let Some(rest) = line.strip_prefix("Connect:") {
            break rest.trim().to_string();
        }
    };
    let table = printed.join("\n");
    assert!(table.contains("| Member") && table.contains("Primary"), "{table}");
    let pgpass = demo_dir.join("pgpass");
    assert!(
        connect_line.starts_with(&format!("PGPASSFILE={} psql \"", pgpass.display())),
        "{connect_line}"
    );
    assert!(
        connect_line.contains("target_session_attrs=read-write"),
        "{connect_line}"
    );
    assert!(
        !connect_line.contains("password="),
        "the password stays in the file: {connect_line}"
    );
    let mode = std::fs::metadata(&pgpass).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "libpq ignores a pgpass file others can read");

    phase("the printed line, run as printed, reaches the primary with scram-sha-256 and takes a write");
    let bins = raftpg::postgres::PgBinaries::find(None).unwrap();
    let path = format!("{}:{}", bins.dir.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{connect_line} -v ON_ERROR_STOP=1 -w -c 'CREATE TABLE demo_check (id int)' -c 'INSERT INTO demo_check VALUES (1)' -c 'SHOW password_encryption'"
        ))
        .env("PATH", &path)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "psql failed: {said}");
    assert!(said.contains("scram-sha-256"), "{said}");
    let hba = std::fs::read_to_string(demo_dir.join("n1/pgdata/pg_hba.conf")).unwrap();
    assert!(hba.contains("host all all all scram-sha-256"), "{hba}");

    phase("the printed control line, run as printed, lists the members over mutual TLS");
    let control_line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the demo printed how to control it");
    let control = control_line
        .strip_prefix("Control it:")
        .expect("the line after Connect")
        .trim()
        .to_string();
    for var in ["RAFTPG_ENDPOINTS=", "RAFTPG_CACERT=", "RAFTPG_CERT=", "RAFTPG_KEY="] {
        assert!(control.contains(var), "{control}");
    }
    let bin_dir = std::path::Path::new(BIN).parent().unwrap().display().to_string();
    let out = Command::new("sh")
        .arg("-c")
        .arg(&control)
        .env(
            "PATH",
            format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default()),
        )
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.contains("n1") && said.contains("Primary"),
        "{said}"
    );
    let config = std::fs::read_to_string(demo_dir.join("n1/raftpg.toml")).unwrap();
    assert!(config.contains("[tls]"), "{config}");

    phase("the printed failover line names the node that is primary now");
    let failover_line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the demo printed how to try a failover");
    let k: u16 = failover_line
        .split("# n")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|k| k.parse().ok())
        .unwrap_or_else(|| panic!("{failover_line}"));
    assert!(failover_line.contains(&format!("/n{k}/raftpg.pid")), "{failover_line}");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "PGPASSFILE={} psql 'host=127.0.0.1 port={} user=postgres dbname=postgres' -tAc 'SELECT pg_is_in_recovery()'",
            pgpass.display(),
            BASE + k
        ))
        .env("PATH", &path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(said.trim_end().ends_with('f'), "n{k} is the primary: {said}");

    phase("cluster.json and pid files follow DESIGN §5");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(demo_dir.join("cluster.json")).unwrap()).unwrap();
    let nodes = json["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for (i, n) in nodes.iter().enumerate() {
        let k = i as u64 + 1;
        assert_eq!(n["pg"], u64::from(BASE) + k);
        assert_eq!(n["raft"], u64::from(BASE) + 100 + k);
        for field in ["name", "pid_file", "grpc", "http", "pg_data"] {
            assert!(!n[field].is_null(), "cluster.json lacks {field}");
        }
    }
    assert_eq!(json["pgpass"].as_str(), Some(pgpass.to_str().unwrap()));
    for field in ["ca", "admin_cert", "admin_key", "reader_cert", "reader_key"] {
        let path = json["tls"][field]
            .as_str()
            .unwrap_or_else(|| panic!("cluster.json lacks tls.{field}"));
        assert!(std::path::Path::new(path).is_file(), "tls.{field}: {path}");
    }
    let key_mode = std::fs::metadata(json["tls"]["admin_key"].as_str().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600, "keys are private");
    let pids: Vec<i32> = (1..=3)
        .map(|k| {
            std::fs::read_to_string(demo_dir.join(format!("n{k}/raftpg.pid")))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .collect();
    let postmasters: Vec<i32> = (1..=3)
        .map(|k| raftpg::postgres::read_postmaster_pid(&demo_dir.join(format!("n{k}/pgdata"))).unwrap())
        .collect();
    assert!(pids.iter().chain(&postmasters).all(|p| alive(*p)));

    phase("SIGINT stops every node and its PostgreSQL");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "the demo exited with {status}");
    for pid in pids.iter().chain(&postmasters) {
        assert!(!alive(*pid), "process {pid} was left behind");
    }
}

/// Starts `raftpg demo` in `dir` and waits until every node's pid file exists (the nodes
/// run, the cluster has not formed yet); returns the demo and the node pids.
fn demo_starting(dir: &std::path::Path, base: u16) -> (std::process::Child, Vec<i32>) {
    let child = Command::new(BIN)
        .args(["demo", "--base-port", &base.to_string(), "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let pids = loop {
        let pids: Vec<i32> = (1..=3)
            .filter_map(|k| std::fs::read_to_string(dir.join(format!("n{k}/raftpg.pid"))).ok())
            .filter_map(|t| t.trim().parse().ok())
            .collect();
        if pids.len() == 3 {
            break pids;
        }
        assert!(std::time::Instant::now() < deadline, "the demo never started its nodes");
        std::thread::sleep(Duration::from_millis(20));
    };
    (child, pids)
}

/// Waits until none of `pids` runs.
fn all_gone(pids: &[i32], within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    while pids.iter().any(|p| alive(*p)) {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

#[test]
fn ctrl_c_while_the_cluster_forms_stops_it_and_sigkill_takes_the_nodes_along() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    phase("Ctrl-C as soon as the nodes run: the demo stops them and exits");
    let (mut demo, pids) = demo_starting(&dir.path().join("a"), BASE + 10);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(demo.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = demo.wait().unwrap();
    assert!(status.success(), "the demo exited with {status}");
    assert!(
        all_gone(&pids, Duration::from_secs(5)),
        "a node outlived the demo: {pids:?}"
    );

    phase("SIGKILL of the demo: its nodes get SIGTERM and stop");
    let (mut demo, pids) = demo_starting(&dir.path().join("b"), BASE + 20);
    demo.kill().unwrap();
    demo.wait().unwrap();
    assert!(
        all_gone(&pids, Duration::from_secs(95)),
        "a node outlived the killed demo: {pids:?}"
    );
}
