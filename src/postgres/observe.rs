//! Observing a running PostgreSQL over tokio-postgres, with a deadline.

use std::time::Duration;

use crate::types::Timeline;
use tokio_postgres::types::PgLsn;
use tokio_postgres::NoTls;

/// What one observation found. `Unknown` is a real state: it never looks healthy.
#[derive(Clone, Debug, PartialEq, Eq)]
// One value per observation, moved once: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Observation {
    Up(PgState),
    Unknown(String),
}

/// A running server's role and WAL positions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgState {
    pub in_recovery: bool,
    /// Timeline of a primary (from its current WAL file) or the one a standby receives on.
    pub timeline: Option<Timeline>,
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
    /// Names of the replication slots, physical and logical.
    pub slots: Vec<String>,
    /// Slots that hold WAL (`restart_lsn` set) with no consumer connected.
    pub idle_slots: Vec<String>,
    /// `synchronous_standby_names` as the server runs it.
    pub sync_names: String,
    /// Parameters changed in the configuration that need a restart to take effect.
    pub pending_restart: Vec<String>,
    /// Standby: started with `recovery_target_timeline` on its own timeline (to report its own
    /// position during a failover); it cannot follow a new timeline until restarted.
    pub timeline_pinned: bool,
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
    (SELECT received_tli FROM pg_stat_wal_receiver),
    (SELECT status FROM pg_stat_wal_receiver),
    current_setting('primary_conninfo'),
    ARRAY(SELECT slot_name::text FROM pg_replication_slots ORDER BY 1),
    current_setting('synchronous_standby_names'),
    (SELECT timeline_id FROM pg_control_checkpoint()),
    pg_size_bytes(current_setting('wal_segment_size')),
    current_setting('recovery_target_timeline') <> 'latest',
    ARRAY(SELECT slot_name::text FROM pg_replication_slots WHERE NOT active AND restart_lsn IS NOT NULL ORDER BY 1)";

/// Parameters changed in the configuration that need a restart. `pg_settings` builds
/// every parameter's row, the most expensive part of an observation by far, and this
/// changes only with a reload: asked every `PENDING_RESTART_EVERY`, not every tick.
/// `recovery_target_timeline` is raftpg's own, and matters only when recovery starts.
const PENDING_RESTART: &str = "SELECT coalesce(array_agg(name::text ORDER BY name), '{}') FROM pg_settings \
     WHERE pending_restart AND name <> 'recovery_target_timeline'";
const PENDING_RESTART_EVERY: Duration = Duration::from_secs(2);

/// Run once per session: the write probe then commits locally (see `query_state`).
const SESSION_SETUP: &str = "SET synchronous_commit = local";

/// The write probe: commits a transaction that has an xid, so its commit record is
/// written and flushed (the session runs with synchronous_commit = local).
const WRITE_PROBE: &str = "SELECT txid_current()";

/// The WAL segment files in pg_wal; asked only of a standby with no walreceiver.
const WAL_SEGMENTS: &str = "SELECT name FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'";

const REPLICATION: &str =
    "SELECT coalesce(application_name, ''), coalesce(state, ''), coalesce(sync_state, ''), flush_lsn
     FROM pg_stat_replication ORDER BY application_name";

/// The highest timeline among the WAL segment files that hold the byte just
/// before `lsn` (file names: 8 hex digits of timeline, then the segment number).
/// Newer timelines win: after a timeline switch both files of a segment exist.
pub fn timeline_of_wal(names: &[String], lsn: u64, seg_size: u64) -> Option<u32> {
    if seg_size == 0 || lsn == 0 {
        return None;
    }
    let segno = (lsn - 1) / seg_size;
    names
        .iter()
        .filter_map(|n| crate::postgres::ctl::segment_of(n, seg_size))
        .filter(|(_, s)| *s == segno)
        .map(|(tli, _)| tli)
        .max()
}

/// Where a standby's WAL ends: the furthest of what it received and what it replayed, the
/// position its final report gives. A standby restarted with no WAL received yet says as
/// its receive position the start of the segment it asks its upstream for, behind what it
/// replayed from its own pg_wal: the segment before that may be an older timeline's, and
/// taking its timeline made a standby of chaos-multi report timeline 1 for WAL on
/// timeline 5, and lose the election it should have won (finding 18 of docs/jepsen.md).
pub fn wal_held(receive_lsn: Option<u64>, replay_lsn: Option<u64>) -> Option<u64> {
    receive_lsn.max(replay_lsn)
}

/// What went wrong, in PostgreSQL's words when the server answered with an error:
/// tokio_postgres says only "db error" for those ("the database system is not yet accepting
/// connections", the message of a standby that is not consistent yet, is what the agent
/// reads to look at its control file).
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{}: {} ({detail})", db.severity(), db.message()),
            None => format!("{}: {}", db.severity(), db.message()),
        },
        None => e.to_string(),
    }
}

/// Observes the server at `conninfo` (libpq key=value form) within `timeout`, on a
/// connection of its own.
pub async fn observe(conninfo: &str, timeout: Duration) -> Observation {
    Observer::default().observe(conninfo, timeout).await
}

/// The agent's observations over one persistent connection: a backend for the life of
/// the server, not a fork and an authentication every tick. An error or a timeout closes
/// it (a query stuck in a hung server is abandoned with it), that observation is
/// `Unknown`, never healthy, and the next one connects again.
#[derive(Default)]
pub struct Observer {
    session: Option<Session>,
}

struct Session {
    client: tokio_postgres::Client,
    connection: tokio::task::JoinHandle<()>,
    /// The statements of every tick, parsed and planned once per session.
    statements: Statements,
    /// The last answer to `PENDING_RESTART`, and when it was asked.
    pending_restart: Option<(tokio::time::Instant, Vec<String>)>,
}

impl Drop for Session {
    fn drop(&mut self) {
        // Closes the socket even when a query is stuck: the server sees the client go.
        self.connection.abort();
    }
}

impl Observer {
    pub async fn observe(&mut self, conninfo: &str, timeout: Duration) -> Observation {
        let result = tokio::time::timeout(timeout, self.observe_within(conninfo)).await;
        let why = match result {
            Ok(Ok(state)) => return Observation::Up(state),
            Ok(Err(e)) => describe(&e),
            Err(_) => format!("no answer within {timeout:?}"),
        };
        self.session = None;
        Observation::Unknown(why)
    }

    /// Whether a connection is open (for tests: observations reuse it).
    pub fn connected(&self) -> bool {
        self.session.as_ref().is_some_and(|s| !s.client.is_closed())
    }

    async fn observe_within(&mut self, conninfo: &str) -> Result<PgState, tokio_postgres::Error> {
        if !self.connected() {
            self.session = None;
            let (client, connection) = tokio_postgres::connect(conninfo, NoTls).await?;
            let connection = tokio::spawn(async move {
                let _ = connection.await;
            });
            client.batch_execute(SESSION_SETUP).await?;
            let statements = Statements {
                state: client.prepare(QUERY).await?,
                replication: client.prepare(REPLICATION).await?,
                write_probe: client.prepare(WRITE_PROBE).await?,
            };
            self.session = Some(Session {
                client,
                connection,
                statements,
                pending_restart: None,
            });
        }
        let session = self.session.as_mut().expect("connected above");
        let mut state = query_state(&session.client, &session.statements).await?;
        let now = tokio::time::Instant::now();
        let asked = match session.pending_restart.take() {
            Some((at, names)) if now.saturating_duration_since(at) < PENDING_RESTART_EVERY => (at, names),
            _ => (now, session.client.query_one(PENDING_RESTART, &[]).await?.get(0)),
        };
        state.pending_restart = asked.1.clone();
        session.pending_restart = Some(asked);
        Ok(state)
    }
}

/// (name, value, file) of every checked parameter set by another configuration file;
/// `synchronous_commit` only when it is weaker than `on` (a failover could lose writes).
const OVERRIDDEN: &str = "SELECT name, setting, sourcefile FROM pg_settings \
     WHERE name = ANY($1) AND source = 'configuration file' AND sourcefile IS NOT NULL \
     AND sourcefile NOT LIKE '%/postgresql.conf' \
     AND (name <> 'synchronous_commit' OR setting NOT IN ('on', 'remote_apply'))";

impl Observer {
    /// Checked parameters that a file other than raftpg's postgresql.conf sets.
    pub async fn overridden_managed(&mut self) -> Result<Vec<(String, String, String)>, tokio_postgres::Error> {
        let Some(s) = &self.session else {
            return Ok(Vec::new());
        };
        let names: Vec<&str> = crate::cluster::params::MANAGED
            .iter()
            .chain(crate::postgres::conf::CHECKED.iter())
            .copied()
            .collect();
        let rows = s.client.query(OVERRIDDEN, &[&names]).await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    /// `ALTER SYSTEM RESET` of each parameter (one statement each: it cannot run in a
    /// transaction block), then a reload.
    pub async fn reset_parameters(&mut self, names: &[String]) -> Result<(), tokio_postgres::Error> {
        let Some(s) = &self.session else {
            return Ok(());
        };
        for name in names {
            let ident = format!("\"{}\"", name.replace('"', "\"\""));
            s.client.batch_execute(&format!("ALTER SYSTEM RESET {ident}")).await?;
        }
        s.client.batch_execute("SELECT pg_reload_conf()").await
    }
}

/// Prepared on connecting: an observation is then two or three round trips of bind and
/// execute, with no parsing or planning in the server.
struct Statements {
    state: tokio_postgres::Statement,
    replication: tokio_postgres::Statement,
    write_probe: tokio_postgres::Statement,
}

async fn query_state(client: &tokio_postgres::Client, st: &Statements) -> Result<PgState, tokio_postgres::Error> {
    let row = client.query_one(&st.state, &[]).await;
    let rows = client.query(&st.replication, &[]).await;
    let row = row?;
    let received_tli: Option<i32> = row.get(5);
    let in_recovery: bool = row.get(0);
    let last_lsn = wal_held(
        row.get::<_, Option<PgLsn>>(3).map(u64::from),
        row.get::<_, Option<PgLsn>>(4).map(u64::from),
    );
    // Once the walreceiver stops (as it does for a final report), received_tli is gone,
    // and the last checkpoint's timeline can be several timelines old. The timeline of
    // the WAL the standby holds is in the name of the segment file holding its last byte.
    let wal_tli = match (in_recovery, received_tli, last_lsn) {
        (true, None, Some(at)) => {
            let names: Vec<String> = client
                .query(WAL_SEGMENTS, &[])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let seg_size = row.get::<_, Option<i64>>(11).and_then(|s| u64::try_from(s).ok());
            seg_size.and_then(|size| timeline_of_wal(&names, at, size))
        }
        _ => None,
    };
    // A primary proves it can commit: a transaction with an xid writes and flushes a
    // commit record. The connection runs it with synchronous_commit = local, so a
    // missing standby is not mistaken for a hung primary; a hung disk or a frozen
    // backend makes the observation time out, and `Unknown` renews no lease.
    if !in_recovery {
        client.query_one(&st.write_probe, &[]).await?;
    }
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
    let checkpoint_tli: Option<i32> = row.get(10);
    let standby_tli = received_tli.and_then(|t| u32::try_from(t).ok()).or(wal_tli);
    Ok(PgState {
        in_recovery,
        timeline: primary_tli
            .and_then(|t| u32::try_from(t).ok())
            .or(standby_tli)
            .or(checkpoint_tli.and_then(|t| u32::try_from(t).ok()))
            .map(Timeline),
        write_lsn: lsn(1),
        receive_lsn: lsn(3),
        replay_lsn: lsn(4),
        walreceiver: row.get(6),
        primary_conninfo: row.get(7),
        replication,
        slots: row.get(8),
        idle_slots: row.get(13),
        sync_names: row.get(9),
        pending_restart: Vec::new(),
        timeline_pinned: in_recovery && row.get::<_, Option<bool>>(12) == Some(true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 * 1024 * 1024;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_segment_holding_the_last_byte_names_the_timeline() {
        // 0/46247A0 lies in segment 4 of log 0 (16 MB segments).
        let files = names(&[
            "000000010000000000000003",
            "000000020000000000000004",
            "000000030000000000000004",
        ]);
        assert_eq!(timeline_of_wal(&files, 0x46247A0, SEG), Some(3));
        // Exactly at a segment boundary the last byte is in the previous segment.
        assert_eq!(timeline_of_wal(&files, 0x0400_0000, SEG), Some(1));
        // Recycled future segments of an old timeline do not count.
        let recycled = names(&["000000030000000000000004", "000000020000000000000005"]);
        assert_eq!(timeline_of_wal(&recycled, 0x46247A0, SEG), Some(3));
        // High log ids.
        assert_eq!(
            timeline_of_wal(&names(&["0000000500000001000000FF"]), 0x1_FF00_0010, SEG),
            Some(5)
        );
    }

    #[test]
    fn a_restarted_standby_is_on_the_timeline_it_replayed_not_the_one_it_asks_from() {
        // chaos-multi, seed 662009: n1, restarted off the stream, had replayed to 0/484B9D0
        // on timeline 5 and asked for streaming from 0/4000000, the start of segment 4.
        let files = names(&[
            "000000010000000000000003",
            "000000010000000000000004",
            "000000040000000000000004",
            "000000050000000000000004",
        ]);
        let held = wal_held(Some(0x400_0000), Some(0x484_B9D0));
        assert_eq!(held, Some(0x484_B9D0));
        assert_eq!(timeline_of_wal(&files, held.unwrap(), SEG), Some(5));
        assert_eq!(wal_held(Some(0x500_0000), Some(0x484_B9D0)), Some(0x500_0000));
        assert_eq!(wal_held(None, Some(0x484_B9D0)), Some(0x484_B9D0));
        assert_eq!(wal_held(None, None), None);
    }

    #[test]
    fn no_matching_segment_is_no_answer() {
        assert_eq!(
            timeline_of_wal(&names(&["000000010000000000000003"]), 0x46247A0, SEG),
            None
        );
        assert_eq!(timeline_of_wal(&[], 0x46247A0, SEG), None);
        assert_eq!(timeline_of_wal(&names(&["000000010000000000000004"]), 0, SEG), None);
    }
}
