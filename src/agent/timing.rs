//! Every time limit and interval of the agent's effects, in one place. None of them is a
//! safety margin: those are in the lease (`decide::controller::controller_deadline`, the
//! fence keeper's `FENCE_GRACE`) and are explained in the README. These say how often the
//! agent looks, and how long an action may take before it counts as failed and is retried.

use std::time::Duration;

// How often the agent looks.

/// The idle tick is the renewal interval (`lease_ms / 4`) within these bounds; changes of
/// the applied state wake the agent at once, whatever the tick.
pub const IDLE_TICK_MAX: Duration = Duration::from_millis(500);
pub const IDLE_TICK_MIN: Duration = Duration::from_millis(50);
/// The tick after a tick that acted, or while an action is in flight.
pub const BUSY_TICK: Duration = Duration::from_millis(20);
/// A failing action's retries back off from twice this.
pub const RETRY_BASE: Duration = Duration::from_millis(250);
/// A local query takes milliseconds; past this the server counts as hung (`Unknown`).
pub const OBSERVE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the agent checks that PostgreSQL runs the values raftpg manages.
pub const MANAGED_CHECK_EVERY: Duration = Duration::from_secs(10);
/// How soon a report that reached no leader is sent again.
pub const REPORT_RETRY: Duration = Duration::from_millis(100);
/// How long a `Reload` that did not take effect waits before it is tried again.
pub const RELOAD_RETRY: Duration = Duration::from_secs(5);

// How long an action may take.

/// initdb of a new cluster.
pub const INITDB_TIMEOUT: Duration = Duration::from_secs(120);
/// A fast stop (`pg_ctl stop -m fast`), and the promotion (`pg_promote`).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);
pub const PROMOTE_TIMEOUT: Duration = Duration::from_secs(60);
/// pg_controldata, pg_ctl reload and the other short tools.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(30);
/// pg_basebackup of a whole database, and pg_rewind.
pub const CLONE_TIMEOUT: Duration = Duration::from_secs(3600);
pub const REWIND_TIMEOUT: Duration = Duration::from_secs(600);
/// Reading where the WAL on disk ends (pg_waldump), for a final report.
pub const WAL_END_TIMEOUT: Duration = Duration::from_secs(10);
/// A proposal of the agent (`RecordTimeline`, done markers) through Raft.
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// A query of its own PostgreSQL outside the observation (the gate's WAL end after a
/// start), and connecting to another member's PostgreSQL, which must also answer within it
/// (the check that tells a failed pg_rewind's dead source from a live one).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// TCP keepalives of raftpg's own connections to another member's PostgreSQL (pg_rewind
/// and the CHECKPOINT before it): idle time, probe interval, probes.
pub const REMOTE_KEEPALIVE: (Duration, Duration, u32) = (Duration::from_secs(5), Duration::from_secs(2), 3);
/// How long an abandoned standby start may take to show its postmaster, and how often it
/// is looked for.
pub const START_SHOWN: Duration = Duration::from_secs(10);
pub const START_POLL: Duration = Duration::from_millis(20);
/// How long a switchover's clean shutdown may wait for the other standbys' WAL senders
/// before they are ended. After the CHECKPOINT it takes 50-150 ms when every standby
/// answers; a standby cut off moments before the switchover would hold it until
/// `wal_sender_timeout`.
pub const SENDER_GRACE: Duration = Duration::from_millis(500);
