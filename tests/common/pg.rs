//! PostgreSQL side of the harness: connections, postmaster pids, and the
//! background writer that records which inserts were acknowledged.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftpg::demo::ports;
use tokio::time::Instant;
use tokio_postgres::NoTls;

use super::Cluster;

/// Client-side bound on one insert: past it the outcome is unknown, never "failed".
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

impl Cluster {
    pub fn pg_port(&self, k: u16) -> u16 {
        ports(self.base, k).pg
    }

    pub fn pg_conninfo(&self, k: u16) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres password={} dbname=postgres connect_timeout=2",
            self.pg_port(k),
            self.password
        )
    }

    /// The libpq multi-host string that finds the primary.
    pub fn libpq(&self) -> String {
        format!(
            "{} password={} connect_timeout=1 load_balance_hosts=random",
            raftpg::demo::libpq_string(self.base, self.n),
            self.password
        )
    }

    pub fn postmaster_pid(&self, k: u16) -> Option<i32> {
        raftpg::postgres::read_postmaster_pid(&self.dir.path().join(format!("n{k}/pgdata")))
    }

    pub fn raftpg_pid(&self, k: u16) -> Option<i32> {
        self.procs[(k - 1) as usize].as_ref().map(|c| c.id() as i32)
    }

    /// The postmaster of node `k` and every process it forked (backends, walsenders, ...).
    pub fn pg_processes(&self, k: u16) -> Vec<i32> {
        let Some(pm) = self.postmaster_pid(k) else {
            return Vec::new();
        };
        let mut pids = vec![pm];
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().nth(1)?.parse::<i32>().ok());
            if ppid == Some(pm) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Freezes node `k`'s PostgreSQL (SIGSTOP to the postmaster and all its processes),
    /// as a hung server looks; raftpg keeps running. Returns the frozen pids.
    pub fn freeze_pg(&self, k: u16) -> Vec<i32> {
        let pids = self.pg_processes(k);
        assert!(!pids.is_empty(), "n{k} runs no PostgreSQL to freeze");
        for pid in &pids {
            signal(*pid, nix::sys::signal::Signal::SIGSTOP);
        }
        pids
    }

    /// kill -9 of the postmaster only (raftpg lives).
    pub fn kill9_postmaster(&self, k: u16) {
        if let Some(pid) = self.postmaster_pid(k) {
            signal(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }

    pub fn signal_raftpg(&self, k: u16, sig: nix::sys::signal::Signal) {
        if let Some(pid) = self.raftpg_pid(k) {
            signal(pid, sig);
        }
    }

    /// Stops every postmaster at once (immediate shutdown), for cleanup.
    pub fn quit_postmasters(&self) {
        for k in 1..=self.n {
            if let Some(pid) = self.postmaster_pid(k) {
                signal(pid, nix::sys::signal::Signal::SIGQUIT);
            }
        }
    }

    /// The pid of node `k`'s WAL receiver, once it runs.
    pub async fn wal_receiver_pid(&self, k: u16, timeout: Duration) -> i32 {
        self.wait_for(&format!("n{k}'s WAL receiver"), timeout, || async {
            let row = self.query_one(k, "SELECT pid FROM pg_stat_wal_receiver").await?;
            row.get::<_, Option<i32>>(0)
        })
        .await
    }

    /// Runs one query on node `k`'s PostgreSQL directly.
    pub async fn query_one(&self, k: u16, sql: &str) -> Option<tokio_postgres::Row> {
        let client = connect(&self.pg_conninfo(k)).await?;
        tokio::time::timeout(Duration::from_secs(3), client.query_one(sql, &[]))
            .await
            .ok()?
            .ok()
    }

    /// (primary k, member names streaming from it with sync_state), when exactly one node accepts writes.
    pub async fn topology(&self) -> Option<(u16, Vec<(String, String)>)> {
        let mut primary = None;
        for k in 1..=self.n {
            if let Some(row) = self.query_one(k, "SELECT pg_is_in_recovery()").await {
                if !row.get::<_, bool>(0) {
                    if primary.is_some() {
                        return None;
                    }
                    primary = Some(k);
                }
            }
        }
        let k = primary?;
        let client = connect(&self.pg_conninfo(k)).await?;
        let rows = client
            .query(
                "SELECT application_name, sync_state FROM pg_stat_replication WHERE state = 'streaming' AND application_name <> 'pg_basebackup' ORDER BY 1",
                &[],
            )
            .await
            .ok()?;
        Some((k, rows.iter().map(|r| (r.get(0), r.get(1))).collect()))
    }

    /// Waits for one primary with `standbys` streaming standbys; returns the primary's k.
    pub async fn wait_streaming(&self, standbys: usize, timeout: Duration) -> u16 {
        self.wait_for(
            &format!("one primary with {standbys} streaming standbys"),
            timeout,
            || async {
                let (k, s) = self.topology().await?;
                (s.len() == standbys).then_some(k)
            },
        )
        .await
    }

    /// Every acknowledged id is on node `k` (waits for it to replay them).
    pub async fn assert_has_all(&self, k: u16, acked: &[i64], timeout: Duration) {
        let want = acked.len() as i64;
        let ids: Vec<i64> = acked.to_vec();
        self.wait_for(&format!("n{k} to hold all {want} acknowledged ids"), timeout, || {
            let ids = ids.clone();
            async move {
                let client = connect(&self.pg_conninfo(k)).await?;
                let row = client
                    .query_one("SELECT count(*) FROM writes WHERE id = ANY($1)", &[&ids])
                    .await
                    .ok()?;
                (row.get::<_, i64>(0) == want).then_some(())
            }
        })
        .await;
    }
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// The CAs of every cluster configured in this test binary, as PEM: clients then use TLS
/// when a PostgreSQL offers it (`postgres.ssl`), verifying its chain to one of them, and
/// plaintext otherwise. Tests of one binary run in parallel, each with its own cluster and
/// CA, and a finished test deletes its directory: the text is kept here, not a path.
pub static PG_CA: std::sync::Mutex<Option<Vec<u8>>> = std::sync::Mutex::new(None);

/// Trusts `ca` (a PEM file) from now on, beside the CAs already trusted.
pub fn trust_ca(ca: &std::path::Path) {
    let pem = std::fs::read(ca).unwrap_or_else(|e| panic!("read {}: {e}", ca.display()));
    let mut all = PG_CA.lock().unwrap();
    let all = all.get_or_insert_with(Vec::new);
    all.extend_from_slice(&pem);
    all.push(b'\n');
}

pub async fn connect(conninfo: &str) -> Option<tokio_postgres::Client> {
    let ca = PG_CA.lock().unwrap().clone();
    let fut = async {
        match ca {
            Some(ca) => {
                let tls = raftpg::tls::pg::connector_pem(&ca).ok()?;
                let (client, conn) = tokio_postgres::connect(conninfo, tls).await.ok()?;
                tokio::spawn(conn);
                Some(client)
            }
            None => {
                let (client, conn) = tokio_postgres::connect(conninfo, NoTls).await.ok()?;
                tokio::spawn(conn);
                Some(client)
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(3), fut).await.ok()?
}

/// Whether `pid` still runs (stopped counts; a zombie does not).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// One acknowledged insert: which id, when the client saw COMMIT, and which server took it.
#[derive(Clone, Debug)]
pub struct Ack {
    pub id: i64,
    pub at: Instant,
    pub port: i32,
}

impl Cluster {
    /// Stops `writer` and checks that every id it saw acknowledged is on each of `nodes`;
    /// returns the acknowledgements and the ids whose outcome is unknown.
    pub async fn assert_no_loss(&self, writer: Writer, nodes: &[u16], timeout: Duration) -> (Vec<Ack>, Vec<i64>) {
        let (acks, unknown) = writer.stop().await;
        let ids: Vec<i64> = acks.iter().map(|a| a.id).collect();
        super::phase(&format!(
            "checking {} acknowledged ids ({} unknown outcomes) on {nodes:?}",
            ids.len(),
            unknown.len()
        ));
        assert!(!ids.is_empty(), "the writer never got an acknowledgement");
        for k in nodes {
            self.assert_has_all(*k, &ids, timeout).await;
        }
        (acks, unknown)
    }
}

/// The background writer: inserts increasing ids through the multi-host string.
pub struct Writer {
    acks: Arc<Mutex<Vec<Ack>>>,
    unknown: Arc<Mutex<Vec<i64>>>,
    /// The writer's last failure (connect or insert), for a failed test's message.
    last_error: Arc<Mutex<String>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub async fn start(libpq: &str) -> Writer {
        let client = connect(libpq).await.expect("the writer connects to the primary");
        client
            .batch_execute("CREATE TABLE IF NOT EXISTS writes (id bigint PRIMARY KEY, at timestamptz DEFAULT now())")
            .await
            .expect("create the table");
        let acks = Arc::new(Mutex::new(Vec::new()));
        let unknown = Arc::new(Mutex::new(Vec::new()));
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let last_error = Arc::new(Mutex::new(String::new()));
        let task = tokio::spawn(write_loop(
            libpq.to_string(),
            acks.clone(),
            unknown.clone(),
            last_error.clone(),
            stop_rx,
        ));
        Writer {
            acks,
            unknown,
            last_error,
            stop,
            task,
        }
    }

    pub fn acks(&self) -> Vec<Ack> {
        self.acks.lock().unwrap().clone()
    }

    pub fn acked_ids(&self) -> Vec<i64> {
        self.acks().iter().map(|a| a.id).collect()
    }

    /// Waits until some insert is acknowledged after `since` by a server other than `not_port`.
    pub async fn wait_ack_after(&self, since: Instant, not_port: Option<i32>, timeout: Duration) -> Ack {
        let deadline = Instant::now() + timeout;
        loop {
            let hit = self
                .acks()
                .into_iter()
                .find(|a| a.at > since && Some(a.port) != not_port);
            if let Some(a) = hit {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "no write acknowledged within {timeout:?} ({} acknowledged before, {} unknown; the writer's last error: {})",
                self.acks().len(),
                self.unknown.lock().unwrap().len(),
                self.last_error.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Follows the acknowledgements from `from` until `span` later and returns the longest
    /// gap between two of them; every one must come from `port`.
    pub async fn longest_gap(&self, from: Instant, span: Duration, port: i32, timeout: Duration) -> Duration {
        let (mut last, mut longest) = (from, Duration::ZERO);
        while last < from + span {
            let a = self.wait_ack_after(last, None, timeout).await;
            assert_eq!(a.port, port, "writes moved off port {port}");
            longest = longest.max(a.at.saturating_duration_since(last));
            last = a.at;
        }
        longest
    }

    pub async fn stop(self) -> (Vec<Ack>, Vec<i64>) {
        self.stop.send_replace(true);
        let _ = self.task.await;
        let acks = self.acks.lock().unwrap().clone();
        let unknown = self.unknown.lock().unwrap().clone();
        (acks, unknown)
    }
}

async fn write_loop(
    libpq: String,
    acks: Arc<Mutex<Vec<Ack>>>,
    unknown: Arc<Mutex<Vec<i64>>>,
    last_error: Arc<Mutex<String>>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut id = 0i64;
    let mut client: Option<tokio_postgres::Client> = None;
    while !*stop.borrow() {
        let Some(c) = client.as_ref() else {
            client = connect(&libpq).await;
            if client.is_none() {
                *last_error.lock().unwrap() = format!("{}: no read-write server answered", now_utc());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            continue;
        };
        id += 1;
        let params = [&id as &(dyn tokio_postgres::types::ToSql + Sync)];
        let insert = c.query_one(
            "INSERT INTO writes (id) VALUES ($1) RETURNING inet_server_port()",
            &params,
        );
        match tokio::time::timeout(WRITE_TIMEOUT, insert).await {
            Ok(Ok(row)) => acks.lock().unwrap().push(Ack {
                id,
                at: Instant::now(),
                port: row.get(0),
            }),
            outcome => {
                *last_error.lock().unwrap() = match outcome {
                    Ok(Err(e)) => format!("{}: insert {id} failed: {e}", now_utc()),
                    _ => format!("{}: insert {id} timed out after {WRITE_TIMEOUT:?}", now_utc()),
                };
                // The commit may or may not have happened: unknown, never "failed".
                unknown.lock().unwrap().push(id);
                client = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The wall clock as the nodes' logs print it, to line a test's message up with them.
fn now_utc() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
