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
const PROBE_EVERY: Duration = Duration::from_millis(150);
const PROBE_TIMEOUT: Duration = Duration::from_millis(400);

/// A primary's timeline: the first 8 hex digits of its current WAL file's name.
/// (`pg_walfile_name` refuses to run during recovery, hence the CASEs below.)
const PRIMARY_TIMELINE: &str = "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int";

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
DROP TABLE IF EXISTS jset, jappend, jreg, jbank;
CREATE TABLE jset (id bigint NOT NULL);
CREATE TABLE jappend (key int PRIMARY KEY, vals bigint[] NOT NULL DEFAULT '{}');
CREATE TABLE jreg (key int PRIMARY KEY, val bigint);
CREATE TABLE jbank (id int PRIMARY KEY, balance bigint NOT NULL);
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
    /// Two clients per workload and one probe per node.
    pub fn start(rec: Arc<Recorder>, n: u16, seed: u64) -> Workloads {
        let (stop, rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let kinds = [
            Kind::Set,
            Kind::Set,
            Kind::Append,
            Kind::Append,
            Kind::Register,
            Kind::Register,
            Kind::Bank,
            Kind::Bank,
        ];
        for (p, kind) in kinds.into_iter().enumerate() {
            let client = ClientLoop {
                process: p as u32,
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

#[derive(Clone, Copy, Debug)]
enum Kind {
    Set,
    Append,
    Register,
    Bank,
}

/// An open session and what it was connected to.
struct Conn {
    client: Client,
    node: u16,
    /// The primary's timeline when the session opened; None on a standby.
    timeline: Option<u32>,
}

struct ClientLoop {
    process: u32,
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
    error: Option<String>,
}

impl ClientLoop {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let pace = match self.kind {
            Kind::Register => Duration::from_millis(25),
            _ => Duration::from_millis(10),
        };
        while !*stop.borrow() {
            let f = self.next_op();
            let start_ns = self.rec.now_ns();
            let done = match tokio::time::timeout(OP_TIMEOUT, self.execute(f.clone())).await {
                Ok(done) => done,
                Err(_) => {
                    // Dropping the session closes the socket; no cancel is sent.
                    Done {
                        outcome: Outcome::Info,
                        f,
                        lsn: None,
                        error: Some("client timeout".into()),
                    }
                }
            };
            let (node, timeline) = match (&self.conn, done.outcome) {
                (Some(c), _) => (Some(cluster::name(c.node)), c.timeline),
                (None, _) => (None, None),
            };
            if done.outcome != Outcome::Ok {
                self.conn = None;
            }
            self.rec.op(Op {
                index: 0,
                process: self.process,
                start_ns,
                end_ns: self.rec.now_ns(),
                outcome: done.outcome,
                node,
                timeline: if done.f.is_write() { timeline } else { None },
                lsn: done.lsn,
                error: done.error,
                f: done.f,
            });
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
            match open(self.n, self.process, writable).await {
                Ok(c) => self.conn = Some(c),
                // Nothing was sent: it cannot have taken effect.
                Err(e) => {
                    return Done {
                        outcome: Outcome::Fail,
                        f,
                        lsn: None,
                        error: Some(format!("connect: {e}")),
                    }
                }
            }
        }
        let client = &self.conn.as_ref().expect("just connected").client;
        match run_op(client, &f).await {
            Ok((f, lsn)) => Done {
                outcome: Outcome::Ok,
                f,
                lsn,
                error: None,
            },
            Err(e) => Done {
                outcome: classify(&e),
                f,
                lsn: None,
                error: Some(e.to_string()),
            },
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
    let row = client
        .query_one(
            &format!(
                "SELECT inet_server_addr()::text, CASE WHEN pg_is_in_recovery() THEN NULL ELSE {PRIMARY_TIMELINE} END"
            ),
            &[],
        )
        .await?;
    let addr: String = row.get(0);
    let node = hosts::node_of(&addr).ok_or_else(|| anyhow::anyhow!("connected to an unknown address {addr}"))?;
    let timeline: Option<i32> = row.get(1);
    Ok(Conn {
        client,
        node,
        timeline: timeline.map(|t| t as u32),
    })
}

/// Errors after which the operation certainly had no effect; anything else
/// (lost connection, shutdown, timeout) may have committed.
fn classify(e: &tokio_postgres::Error) -> Outcome {
    let Some(code) = e.code() else { return Outcome::Info };
    let code = code.code();
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

async fn run_op(c: &Client, f: &F) -> Result<(F, Option<u64>), tokio_postgres::Error> {
    let lsn = |s: String| parse_lsn(&s);
    Ok(match f.clone() {
        F::SetAdd { id } => {
            let row = c
                .query_one(&format!("INSERT INTO jset VALUES ($1) RETURNING {LSN}"), &[&id])
                .await?;
            (F::SetAdd { id }, lsn(row.get(0)))
        }
        F::AppendAdd { key, value, .. } => {
            let row = c
                .query_one(
                    &format!("UPDATE jappend SET vals = vals || $2::bigint WHERE key = $1 RETURNING vals, {LSN}"),
                    &[&key, &value],
                )
                .await?;
            (
                F::AppendAdd {
                    key,
                    value,
                    result: Some(row.get(0)),
                },
                lsn(row.get(1)),
            )
        }
        F::AppendRead { key, .. } => {
            let row = c.query_one("SELECT vals FROM jappend WHERE key = $1", &[&key]).await?;
            (
                F::AppendRead {
                    key,
                    result: Some(row.get(0)),
                },
                None,
            )
        }
        F::RegRead { key, .. } => {
            let row = c.query_opt("SELECT val FROM jreg WHERE key = $1", &[&key]).await?;
            (
                F::RegRead {
                    key,
                    result: Some(row.and_then(|r| r.get(0))),
                },
                None,
            )
        }
        F::RegWrite { key, value } => {
            let row = c
                .query_one(
                    &format!("INSERT INTO jreg VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET val = excluded.val RETURNING {LSN}"),
                    &[&key, &value],
                )
                .await?;
            (F::RegWrite { key, value }, lsn(row.get(0)))
        }
        F::RegCas { key, from, to, .. } => {
            let row = c
                .query_opt(
                    &format!("UPDATE jreg SET val = $3 WHERE key = $1 AND val = $2 RETURNING {LSN}"),
                    &[&key, &from, &to],
                )
                .await?;
            let l = row.as_ref().and_then(|r| lsn(r.get(0)));
            (
                F::RegCas {
                    key,
                    from,
                    to,
                    swapped: Some(row.is_some()),
                },
                l,
            )
        }
        F::BankTransfer { from, to, amount, .. } => bank_transfer(c, from, to, amount).await?,
        F::BankRead { .. } => {
            c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await?;
            let rows = c.query("SELECT balance FROM jbank ORDER BY id", &[]).await;
            let end = c.batch_execute(if rows.is_ok() { "COMMIT" } else { "ROLLBACK" }).await;
            let balances = rows?.iter().map(|r| r.get(0)).collect();
            end?;
            (
                F::BankRead {
                    balances: Some(balances),
                },
                None,
            )
        }
    })
}

async fn bank_transfer(c: &Client, from: u32, to: u32, amount: i64) -> Result<(F, Option<u64>), tokio_postgres::Error> {
    c.batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE").await?;
    let body = async {
        let taken = c
            .query_opt(
                &format!("UPDATE jbank SET balance = balance - $2 WHERE id = $1 AND balance >= $2 RETURNING {LSN}"),
                &[&(from as i32), &amount],
            )
            .await?;
        if taken.is_some() {
            c.execute(
                "UPDATE jbank SET balance = balance + $2 WHERE id = $1",
                &[&(to as i32), &amount],
            )
            .await?;
        }
        Ok::<_, tokio_postgres::Error>(
            taken
                .and_then(|r| parse_lsn(&r.get::<_, String>(0)))
                .map(Some)
                .unwrap_or(None),
        )
    };
    match body.await {
        Ok(lsn) => {
            c.batch_execute("COMMIT").await?;
            Ok((
                F::BankTransfer {
                    from,
                    to,
                    amount,
                    applied: Some(lsn.is_some()),
                },
                lsn,
            ))
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
