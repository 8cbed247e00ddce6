//! The clients: set, append, register and bank workloads on their own
//! tables, run concurrently, plus a probe of every node's role. Each client
//! runs one operation at a time under its own timeout and never sends a
//! cancel request: on a timeout it drops the connection and records the
//! operation as unknown (`Info`), never as failed.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

use crate::cluster::{self, conninfo, PG_PORT};
use crate::history::{Op, Outcome, Probe, Record, BANK_ACCOUNTS, BANK_START, F};
use crate::hosts;
use crate::recorder::Recorder;
use raftpg::postgres::parse_lsn;

/// A client's own deadline for one operation, connection included.
const OP_TIMEOUT: Duration = Duration::from_millis(1500);
const APPEND_KEYS: i32 = 8;
const REGISTER_KEYS: i32 = 4;
/// The clients that follow the primary, by workload. The register has five,
/// so that its keys see real concurrency; the others two each. [`clients`]
/// adds the pinned ones.
const CLIENTS: [Kind; 11] = [
    Kind::Set,
    Kind::Set,
    Kind::Append,
    Kind::Append,
    Kind::Register,
    Kind::Register,
    Kind::Register,
    Kind::Register,
    Kind::Register,
    Kind::Bank,
    Kind::Bank,
];
const PROBE_EVERY: Duration = Duration::from_millis(150);
const PROBE_TIMEOUT: Duration = Duration::from_millis(400);

/// A primary's timeline: the first 8 hex digits of its current WAL file's name.
/// (`pg_walfile_name` refuses to run during recovery, hence the CASEs below.)
macro_rules! primary_timeline {
    () => {
        "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"
    };
}
const PRIMARY_TIMELINE: &str = primary_timeline!();

/// The timeline a node serves on as a primary, NULL on a standby (where
/// [`PRIMARY_TIMELINE`] would raise an error).
const TIMELINE_OR_NULL: &str = concat!(
    "CASE WHEN pg_is_in_recovery() THEN NULL ELSE ",
    primary_timeline!(),
    " END"
);

/// Any node's timeline: a primary's, or the one a standby receives on (the last
/// checkpoint's when no walreceiver runs).
pub fn timeline_sql() -> String {
    format!(
        "CASE WHEN pg_is_in_recovery() THEN COALESCE((SELECT received_tli FROM pg_stat_wal_receiver), \
         (SELECT timeline_id FROM pg_control_checkpoint())) ELSE {PRIMARY_TIMELINE} END"
    )
}

/// The tables, created on the primary before the clients start.
pub const SCHEMA: &str = "
DROP TABLE IF EXISTS jset, jappend, jreg, jbank, jledger;
CREATE TABLE jset (id bigint NOT NULL);
CREATE TABLE jappend (key int PRIMARY KEY, vals bigint[] NOT NULL DEFAULT '{}');
CREATE TABLE jreg (key int PRIMARY KEY, val bigint);
CREATE TABLE jbank (id int PRIMARY KEY, balance bigint NOT NULL);
CREATE TABLE jledger (id bigint PRIMARY KEY, src int NOT NULL, dst int NOT NULL, amount bigint NOT NULL);
";

pub async fn create_tables(primary: u16) -> anyhow::Result<()> {
    let client = connect_direct(primary, 5).await?;
    client.batch_execute(SCHEMA).await?;
    client
        .execute(
            "INSERT INTO jappend (key) SELECT generate_series(0, $1 - 1)",
            &[&APPEND_KEYS],
        )
        .await?;
    client
        .execute(
            "INSERT INTO jbank SELECT g, $2 FROM generate_series(0, $1 - 1) g",
            &[&(BANK_ACCOUNTS as i32), &BANK_START],
        )
        .await?;
    Ok(())
}

/// A connection to one node's PostgreSQL, whatever its role.
pub async fn connect_direct(k: u16, timeout_s: u64) -> anyhow::Result<Client> {
    let (client, conn) = tokio_postgres::connect(&conninfo(k, timeout_s), NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// The running clients and probe.
pub struct Workloads {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Workloads {
    /// The [`CLIENTS`] and one probe per node.
    pub fn start(rec: Arc<Recorder>, n: u16, seed: u64) -> Workloads {
        let (stop, rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let kinds = clients(n);
        for (p, kind) in kinds.iter().copied().enumerate() {
            let client = ClientLoop {
                process: p as u32,
                stride: kinds.len() as u32,
                kind,
                n,
                rec: rec.clone(),
                rng: StdRng::seed_from_u64(seed.wrapping_mul(1000).wrapping_add(p as u64)),
                conn: None,
                counter: 0,
            };
            tasks.push(tokio::spawn(client.run(rx.clone())));
        }
        for k in 1..=n {
            tasks.push(tokio::spawn(probe(k, rec.clone(), rx.clone())));
        }
        Workloads { stop, tasks }
    }

    /// Stops every client after its current operation (bounded by its timeout).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Set,
    Append,
    Register,
    Bank,
    /// Reads the append keys on node K only, whatever its role: on a node that
    /// says it is primary such a read must be recent (a deposed primary that
    /// still serves is the stale read the recency check looks for); on a
    /// standby it is recorded without a timeline and not held to recency.
    PinnedReader(u16),
    /// Appends on node K only: it fails at once while K is a standby and
    /// succeeds from the moment K is promoted, so a new primary acknowledges
    /// a write as soon as it can, while a pinned reader may still be on the old one.
    PinnedWriter(u16),
}

/// Every client of a run on `n` nodes: [`CLIENTS`], then a pinned reader and
/// a pinned writer per node.
fn clients(n: u16) -> Vec<Kind> {
    let pinned = (1..=n).flat_map(|k| [Kind::PinnedReader(k), Kind::PinnedWriter(k)]);
    CLIENTS.into_iter().chain(pinned).collect()
}

/// An open session and the node it is connected to.
struct Conn {
    client: Client,
    node: u16,
}

struct ClientLoop {
    /// This client's process id in the history. After an operation whose
    /// outcome is unknown it takes a fresh one (the old id plus the number of
    /// clients, `stride`), as Jepsen does: the unknown operation may still be
    /// running in the server, so the old process never completes it.
    process: u32,
    stride: u32,
    kind: Kind,
    n: u16,
    rec: Arc<Recorder>,
    rng: StdRng,
    conn: Option<Conn>,
    counter: i64,
}

/// What running one operation gave.
struct Done {
    outcome: Outcome,
    f: F,
    lsn: Option<u64>,
    timeline: Option<u32>,
    error: Option<String>,
}

impl Done {
    fn failed(outcome: Outcome, f: F, error: String) -> Done {
        Done {
            outcome,
            f,
            lsn: None,
            timeline: None,
            error: Some(error),
        }
    }
}

impl ClientLoop {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let pace = match self.kind {
            Kind::Register | Kind::PinnedReader(_) | Kind::PinnedWriter(_) => Duration::from_millis(25),
            _ => Duration::from_millis(10),
        };
        while !*stop.borrow() {
            let f = self.next_op();
            let start_ns = self.rec.now_ns();
            let done = match tokio::time::timeout(OP_TIMEOUT, self.execute(f.clone())).await {
                Ok(done) => done,
                // Dropping the session closes the socket; no cancel is sent.
                Err(_) => Done::failed(Outcome::Info, f, "client timeout".into()),
            };
            let node = self.conn.as_ref().map(|c| cluster::name(c.node));
            // A session that failed may be on a standby: clients that follow the primary
            // open a new one. A pinned client stays, unless the outcome is unknown.
            let pinned = matches!(self.kind, Kind::PinnedReader(_) | Kind::PinnedWriter(_));
            if done.outcome == Outcome::Info || (done.outcome == Outcome::Fail && !pinned) {
                self.conn = None;
            }
            // A pinned writer on a standby fails at once: it asks again 100 ms later.
            let pace = match (self.kind, done.outcome) {
                (Kind::PinnedWriter(_), Outcome::Fail) => Duration::from_millis(100),
                _ => pace,
            };
            self.rec.op(Op {
                index: 0,
                process: self.process,
                start_ns,
                end_ns: self.rec.now_ns(),
                outcome: done.outcome,
                node,
                timeline: done.timeline,
                lsn: done.lsn,
                error: done.error,
                f: done.f,
            });
            if done.outcome == Outcome::Info {
                self.process += self.stride;
            }
            tokio::select! {
                _ = tokio::time::sleep(pace) => {}
                _ = stop.changed() => {}
            }
        }
    }

    fn unique(&mut self) -> i64 {
        self.counter += 1;
        i64::from(self.process) * 1_000_000_000 + self.counter
    }

    fn next_op(&mut self) -> F {
        match self.kind {
            Kind::Set => F::SetAdd { id: self.unique() },
            Kind::PinnedReader(_) => F::AppendRead {
                key: self.rng.gen_range(0..APPEND_KEYS),
                result: None,
            },
            Kind::PinnedWriter(_) => F::AppendAdd {
                key: self.rng.gen_range(0..APPEND_KEYS),
                value: self.unique(),
                result: None,
            },
            Kind::Append => {
                let key = self.rng.gen_range(0..APPEND_KEYS);
                if self.rng.gen_bool(0.8) {
                    F::AppendAdd {
                        key,
                        value: self.unique(),
                        result: None,
                    }
                } else {
                    F::AppendRead { key, result: None }
                }
            }
            Kind::Register => {
                let key = self.rng.gen_range(0..REGISTER_KEYS);
                match self.rng.gen_range(0..10) {
                    0..=3 => F::RegRead { key, result: None },
                    4..=6 => F::RegWrite {
                        key,
                        value: self.rng.gen_range(0..5),
                    },
                    _ => F::RegCas {
                        key,
                        from: self.rng.gen_range(0..5),
                        to: self.rng.gen_range(0..5),
                        swapped: None,
                    },
                }
            }
            Kind::Bank => {
                if self.rng.gen_bool(0.7) {
                    let from = self.rng.gen_range(0..BANK_ACCOUNTS);
                    let to = (from + self.rng.gen_range(1..BANK_ACCOUNTS)) % BANK_ACCOUNTS;
                    F::BankTransfer {
                        id: self.unique(),
                        from,
                        to,
                        amount: self.rng.gen_range(1..=20),
                        applied: None,
                    }
                } else {
                    F::BankRead { balances: None }
                }
            }
        }
    }

    /// Runs one operation; errors are sorted into failed and unknown.
    async fn execute(&mut self, f: F) -> Done {
        // Bank reads may be served by any node, standbys included.
        let writable = !matches!(f, F::BankRead { .. });
        if self.conn.is_none() {
            let opened = match self.kind {
                Kind::PinnedReader(k) | Kind::PinnedWriter(k) => open_on(k).await,
                _ => open(self.n, self.process, writable).await,
            };
            match opened {
                Ok(c) => self.conn = Some(c),
                // Nothing was sent: it cannot have taken effect.
                Err(e) => return Done::failed(Outcome::Fail, f, format!("connect: {e}")),
            }
        }
        let client = &self.conn.as_ref().expect("just connected").client;
        match run_op(client, &f).await {
            Ok(Ran { f, lsn, timeline }) => Done {
                outcome: Outcome::Ok,
                f,
                lsn,
                timeline,
                error: None,
            },
            Err(e) => Done::failed(classify(e.code().map(|c| c.code())), f, e.to_string()),
        }
    }
}

/// Opens a session, on a primary for writes (libpq's read-write target,
/// starting at a different node per client), on any node for bank reads.
async fn open(n: u16, process: u32, writable: bool) -> anyhow::Result<Conn> {
    let order: Vec<u16> = (0..n).map(|i| (process as u16 + i) % n + 1).collect();
    let hosts: Vec<String> = order.iter().map(|k| hosts::ip(*k).to_string()).collect();
    let ports = vec![PG_PORT.to_string(); order.len()].join(",");
    let attrs = if writable { "read-write" } else { "any" };
    let info = format!(
        "host={} port={ports} user=postgres password={} dbname=postgres connect_timeout=1 target_session_attrs={attrs}",
        hosts.join(","),
        crate::cluster::PASSWORD
    );
    let (client, conn) = tokio_postgres::connect(&info, NoTls).await?;
    tokio::spawn(conn);
    let row = client.query_one("SELECT inet_server_addr()::text", &[]).await?;
    let addr: String = row.get(0);
    let node = hosts::node_of(&addr).ok_or_else(|| anyhow::anyhow!("connected to an unknown address {addr}"))?;
    Ok(Conn { client, node })
}

/// Opens a session on node `k` alone, whatever its role.
async fn open_on(k: u16) -> anyhow::Result<Conn> {
    let client = connect_direct(k, 1).await?;
    Ok(Conn { client, node: k })
}

/// Sorts a failed operation by its SQLSTATE (None: no error from the server,
/// such as a lost connection or a timeout). Errors after which the operation
/// certainly had no effect are `Fail`; anything else (lost connection,
/// shutdown, an error during COMMIT) may have committed, and is `Info`.
fn classify(code: Option<&str>) -> Outcome {
    let Some(code) = code else { return Outcome::Info };
    let definite = code == "25006" // read-only transaction: a standby refused it
        || code == "25P02"
        || code == "40001" // serialization failure: rolled back
        || code == "40P01" // deadlock: rolled back
        || code.starts_with("23")
        || code.starts_with("22")
        || code.starts_with("42");
    if definite {
        Outcome::Fail
    } else {
        Outcome::Info
    }
}

const LSN: &str = "pg_current_wal_insert_lsn()::text";

/// What an acknowledged operation returned: its result, and for a write
/// that changed data the LSN inside its transaction and the timeline the
/// node wrote on (for a read, the timeline it read on; None on a standby).
struct Ran {
    f: F,
    lsn: Option<u64>,
    timeline: Option<u32>,
}

/// Reads the LSN and timeline columns `at` and `at + 1` of a row.
fn written(row: &tokio_postgres::Row, at: usize) -> (Option<u64>, Option<u32>) {
    let lsn: String = row.get(at);
    let timeline: Option<i32> = row.get(at + 1);
    (parse_lsn(&lsn), timeline.map(|t| t as u32))
}

async fn run_op(c: &Client, f: &F) -> Result<Ran, tokio_postgres::Error> {
    let wrote = |f: F, row: Option<&tokio_postgres::Row>, at: usize| {
        let (lsn, timeline) = row.map_or((None, None), |r| written(r, at));
        Ran { f, lsn, timeline }
    };
    let read = |f: F, timeline: Option<i32>| Ran {
        f,
        lsn: None,
        timeline: timeline.map(|t| t as u32),
    };
    Ok(match f.clone() {
        F::SetAdd { id } => {
            let row = c
                .query_one(
                    &format!("INSERT INTO jset VALUES ($1) RETURNING {LSN}, {TIMELINE_OR_NULL}"),
                    &[&id],
                )
                .await?;
            wrote(F::SetAdd { id }, Some(&row), 0)
        }
        F::AppendAdd { key, value, .. } => {
            let row = c
                .query_one(
                    &format!(
                        "UPDATE jappend SET vals = vals || $2::bigint WHERE key = $1 RETURNING vals, {LSN}, {TIMELINE_OR_NULL}"
                    ),
                    &[&key, &value],
                )
                .await?;
            let f = F::AppendAdd {
                key,
                value,
                result: Some(row.get(0)),
            };
            wrote(f, Some(&row), 1)
        }
        F::AppendRead { key, .. } => {
            let row = c
                .query_one(
                    &format!("SELECT vals, {TIMELINE_OR_NULL} FROM jappend WHERE key = $1"),
                    &[&key],
                )
                .await?;
            let f = F::AppendRead {
                key,
                result: Some(row.get(0)),
            };
            read(f, row.get(1))
        }
        F::RegRead { key, .. } => {
            let row = c
                .query_one(
                    &format!("SELECT (SELECT val FROM jreg WHERE key = $1), {TIMELINE_OR_NULL}"),
                    &[&key],
                )
                .await?;
            let f = F::RegRead {
                key,
                result: Some(row.get(0)),
            };
            read(f, row.get(1))
        }
        F::RegWrite { key, value } => {
            let row = c
                .query_one(
                    &format!("INSERT INTO jreg VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET val = excluded.val RETURNING {LSN}, {TIMELINE_OR_NULL}"),
                    &[&key, &value],
                )
                .await?;
            wrote(F::RegWrite { key, value }, Some(&row), 0)
        }
        F::RegCas { key, from, to, .. } => {
            let row = c
                .query_opt(
                    &format!(
                        "UPDATE jreg SET val = $3 WHERE key = $1 AND val = $2 RETURNING {LSN}, {TIMELINE_OR_NULL}"
                    ),
                    &[&key, &from, &to],
                )
                .await?;
            let f = F::RegCas {
                key,
                from,
                to,
                swapped: Some(row.is_some()),
            };
            wrote(f, row.as_ref(), 0)
        }
        F::BankTransfer {
            id, from, to, amount, ..
        } => bank_transfer(c, id, from, to, amount).await?,
        F::BankRead { .. } => {
            c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await?;
            let rows = c
                .query(
                    &format!("SELECT balance, {TIMELINE_OR_NULL} FROM jbank ORDER BY id"),
                    &[],
                )
                .await;
            let end = c.batch_execute(if rows.is_ok() { "COMMIT" } else { "ROLLBACK" }).await;
            let rows = rows?;
            end?;
            let timeline = rows.first().and_then(|r| r.get(1));
            let f = F::BankRead {
                balances: Some(rows.iter().map(|r| r.get(0)).collect()),
            };
            read(f, timeline)
        }
    })
}

/// A transfer as an application writes one: it reads both balances, checks
/// and computes the new ones itself, writes them back and records the
/// transfer in the ledger, in one SERIALIZABLE transaction. Under any weaker
/// isolation two concurrent transfers could both read the old balance and
/// one update would be lost, and a lost acknowledged transfer leaves its
/// ledger row missing: the bank checker looks for both.
async fn bank_transfer(c: &Client, id: i64, from: u32, to: u32, amount: i64) -> Result<Ran, tokio_postgres::Error> {
    c.batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE").await?;
    let body = async {
        let rows = c
            .query(
                "SELECT id, balance FROM jbank WHERE id = ANY($1)",
                &[&vec![from as i32, to as i32]],
            )
            .await?;
        let balance = |account: u32| {
            rows.iter()
                .find(|r| r.get::<_, i32>(0) == account as i32)
                .map(|r| r.get::<_, i64>(1))
        };
        let (Some(have), Some(theirs)) = (balance(from), balance(to)) else {
            return Ok(None);
        };
        if have < amount {
            return Ok(None);
        }
        let set = "UPDATE jbank SET balance = $2 WHERE id = $1";
        c.execute(set, &[&(from as i32), &(have - amount)]).await?;
        c.execute(set, &[&(to as i32), &(theirs + amount)]).await?;
        let row = c
            .query_one(
                &format!("INSERT INTO jledger VALUES ($1, $2, $3, $4) RETURNING {LSN}, {TIMELINE_OR_NULL}"),
                &[&id, &(from as i32), &(to as i32), &amount],
            )
            .await?;
        Ok::<_, tokio_postgres::Error>(Some(written(&row, 0)))
    };
    match body.await {
        Ok(done) => {
            c.batch_execute("COMMIT").await?;
            let (lsn, timeline) = done.unwrap_or((None, None));
            Ok(Ran {
                f: F::BankTransfer {
                    id,
                    from,
                    to,
                    amount,
                    applied: Some(done.is_some()),
                },
                lsn,
                timeline,
            })
        }
        Err(e) => {
            let _ = c.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// Every 150 ms: the node's role, timeline and LSN, or `down`.
async fn probe(k: u16, rec: Arc<Recorder>, mut stop: watch::Receiver<bool>) {
    let mut client: Option<Client> = None;
    let query = format!(
        "SELECT pg_is_in_recovery(), {}, \
         (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text",
        timeline_sql()
    );
    while !*stop.borrow() {
        let look = async {
            if client.is_none() {
                client = Some(connect_direct(k, 1).await.ok()?);
            }
            let row = client.as_ref()?.query_one(&query, &[]).await.ok()?;
            let standby: bool = row.get(0);
            let tl: Option<i32> = row.get(1);
            let lsn: Option<String> = row.get(2);
            Some((if standby { "standby" } else { "primary" }, tl, lsn))
        };
        let seen = tokio::time::timeout(PROBE_TIMEOUT, look).await.ok().flatten();
        if seen.is_none() {
            client = None;
        }
        let (role, timeline, lsn) = seen.unwrap_or(("down", None, None));
        rec.record(Record::Probe(Probe {
            time_ns: rec.now_ns(),
            node: cluster::name(k),
            role: role.into(),
            timeline: timeline.map(|t| t as u32),
            lsn: lsn.as_deref().and_then(parse_lsn),
        }));
        tokio::select! {
            _ = tokio::time::sleep(PROBE_EVERY) => {}
            _ = stop.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_calls_only_rolled_back_errors_failed() {
        // No answer from the server: the commit may have happened.
        assert_eq!(classify(None), Outcome::Info);
        for definite in [
            "25006", // read-only transaction: a standby refused the write
            "25P02", // in a failed transaction
            "40001", // serialization failure: rolled back
            "40P01", // deadlock: rolled back
            "23505", // unique violation
            "22003", // numeric out of range
            "42P01", // undefined table
        ] {
            assert_eq!(classify(Some(definite)), Outcome::Fail, "{definite}");
        }
        for unknown in [
            "57P01", // admin shutdown: the server went down mid-commit
            "57P02", // crash shutdown
            "08006", // connection failure
            "53100", // disk full
            "XX000", // internal error
            "55000", // object not in prerequisite state
        ] {
            assert_eq!(classify(Some(unknown)), Outcome::Info, "{unknown}");
        }
    }
}
