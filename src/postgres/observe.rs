//! Observing a running PostgreSQL over tokio-postgres, with a deadline.

use std::time::Duration;

use tokio_postgres::types::PgLsn;
use tokio_postgres::NoTls;

/// What one observation found. `Unknown` is a real state: it never looks healthy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    Up(PgState),
    Unknown(String),
}

/// A running server's role and WAL positions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgState {
    pub in_recovery: bool,
    /// Timeline of a primary (from its current WAL file) or the one a standby receives on.
    pub timeline: Option<u32>,
    /// Primary: current write position.
    pub write_lsn: Option<u64>,
    /// Standby: last WAL received and flushed, and last replayed.
    pub receive_lsn: Option<u64>,
    pub replay_lsn: Option<u64>,
    /// Standby: walreceiver status (`streaming`, ...), `None` when no walreceiver runs.
    pub walreceiver: Option<String>,
    /// The configured `primary_conninfo`; empty when the standby was told to stop streaming.
    pub primary_conninfo: String,
    /// Primary: one row per connected standby (`pg_stat_replication`).
    pub replication: Vec<Replica>,
    /// Names of the physical replication slots.
    pub slots: Vec<String>,
    /// `synchronous_standby_names` as the server runs it.
    pub sync_names: String,
    /// Parameters changed in the configuration that need a restart to take effect.
    pub pending_restart: Vec<String>,
}

impl PgState {
    /// A standby whose walreceiver streams.
    pub fn streaming(&self) -> bool {
        self.walreceiver.as_deref() == Some("streaming")
    }
}

/// One row of `pg_stat_replication`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    pub application_name: String,
    /// `streaming`, `catchup`, `backup`, ...
    pub state: String,
    /// `quorum`, `sync`, `async`, `potential`.
    pub sync_state: String,
    pub flush_lsn: Option<u64>,
}

/// One query gathers everything; `pg_current_wal_lsn()` is guarded because it fails in recovery.
const QUERY: &str = "SELECT pg_is_in_recovery(),
    CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn() END,
    CASE WHEN pg_is_in_recovery() THEN NULL
         ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END,
    pg_last_wal_receive_lsn(),
    pg_last_wal_replay_lsn(),
    coalesce((SELECT received_tli FROM pg_stat_wal_receiver), (SELECT timeline_id FROM pg_control_checkpoint())),
    (SELECT status FROM pg_stat_wal_receiver),
    current_setting('primary_conninfo'),
    ARRAY(SELECT slot_name::text FROM pg_replication_slots WHERE slot_type = 'physical' ORDER BY 1),
    current_setting('synchronous_standby_names'),
    -- recovery_target_timeline is raftpg's own, and matters only when recovery starts.
    ARRAY(SELECT name::text FROM pg_settings WHERE pending_restart AND name <> 'recovery_target_timeline' ORDER BY 1)";

const REPLICATION: &str =
    "SELECT coalesce(application_name, ''), coalesce(state, ''), coalesce(sync_state, ''), flush_lsn
     FROM pg_stat_replication ORDER BY application_name";

/// Observes the server at `conninfo` (libpq key=value form) within `timeout`.
pub async fn observe(conninfo: &str, timeout: Duration) -> Observation {
    match tokio::time::timeout(timeout, observe_inner(conninfo)).await {
        Ok(Ok(state)) => Observation::Up(state),
        Ok(Err(e)) => Observation::Unknown(e.to_string()),
        Err(_) => Observation::Unknown(format!("no answer within {timeout:?}")),
    }
}

async fn observe_inner(conninfo: &str) -> Result<PgState, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conninfo, NoTls).await?;
    let conn = tokio::spawn(connection);
    let row = client.query_one(QUERY, &[]).await;
    let rows = client.query(REPLICATION, &[]).await;
    drop(client);
    let _ = conn.await;
    let row = row?;
    let replication = rows?
        .iter()
        .map(|r| Replica {
            application_name: r.get(0),
            state: r.get(1),
            sync_state: r.get(2),
            flush_lsn: r.get::<_, Option<PgLsn>>(3).map(u64::from),
        })
        .collect();
    let lsn = |i: usize| row.get::<_, Option<PgLsn>>(i).map(u64::from);
    let primary_tli: Option<i32> = row.get(2);
    let standby_tli: Option<i32> = row.get(5);
    Ok(PgState {
        in_recovery: row.get(0),
        timeline: primary_tli.or(standby_tli).and_then(|t| u32::try_from(t).ok()),
        write_lsn: lsn(1),
        receive_lsn: lsn(3),
        replay_lsn: lsn(4),
        walreceiver: row.get(6),
        primary_conninfo: row.get(7),
        replication,
        slots: row.get(8),
        sync_names: row.get(9),
        pending_restart: row.get(10),
    })
}
