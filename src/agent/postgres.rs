//! The seam between the agent and its PostgreSQL: everything the agent does to it, as one
//! trait. The agent's loop (`mod.rs`) and its executor (`exec.rs`) are generic over
//! [`Postgres`] and reach PostgreSQL through nothing else: no pg_ctl, no SQL, no file of
//! PGDATA. [`LocalPostgres`] implements it with pg_ctl, PostgreSQL's tools and
//! tokio-postgres (`PgNode`, `postgres::ctl`, `postgres::observe`).
//!
//! What stays in the executor is raftpg's own policy around these effects: what to log,
//! what to propose, when to give up (a generation that moves on abandons a start or a
//! rewind), when to re-clone.

use std::future::Future;

use anyhow::{bail, Context};
use tokio::sync::watch;
use tokio_postgres::NoTls;

use super::pgfiles::PgNode;
use super::timing::*;
use crate::cluster::ClusterState;
use crate::postgres::conf::Upstream;
use crate::postgres::ctl::{CloneProgress, Controldata};
use crate::postgres::{observe, Observation, Observer, PgError, StopMode};
use crate::types::Timeline;

/// Everything the agent does to its PostgreSQL.
pub trait Postgres: Send + Sync + 'static {
    /// This node's member name.
    fn me(&self) -> &str;
    /// Where this node streams from under `state` (`PgNode::upstream`).
    fn upstream(&self, state: &ClusterState, fallen_back: bool) -> Option<Upstream>;

    // Observation.

    /// A complete database is there: a partial initdb (raftpg died during it) is none.
    fn has_database(&self) -> bool;
    /// A pg_rewind began and did not succeed: the WAL on disk may be part the source's.
    fn rewinding(&self) -> bool;
    /// A postmaster runs on the data directory.
    fn running(&self) -> bool;
    /// Observes the running server through one persistent local connection.
    fn observe(&mut self) -> impl Future<Output = Observation> + Send;
    /// Drops the persistent connection (there is no database to observe).
    fn disconnect(&mut self);
    /// Parameters raftpg manages that are set elsewhere (`ALTER SYSTEM`): (name, value, file).
    fn overridden_managed(&mut self) -> impl Future<Output = anyhow::Result<Vec<(String, String, String)>>> + Send;
    /// `ALTER SYSTEM RESET` of `names`, and a reload.
    fn reset_parameters(&mut self, names: &[String]) -> impl Future<Output = anyhow::Result<()>> + Send;
    fn controldata(&self) -> impl Future<Output = Result<Controldata, PgError>> + Send;
    /// Where the stopped database's WAL ends on disk, and on which timeline.
    fn wal_end(&self, seg_size: u64) -> impl Future<Output = Result<Option<(u64, Timeline)>, PgError>> + Send;
    /// Why a stopped PostgreSQL has no room to start (less than one WAL segment free on
    /// pg_wal's or PGDATA's filesystem), if so.
    /// (`seg_size`: 16 MB when not known.)
    fn no_room(&self, seg_size: Option<u64>) -> Option<String>;
    /// PGDATA's `postgresql.conf` exists and was not written by raftpg.
    fn conf_is_foreign(&self) -> bool;
    /// (parent timeline, fork LSN) of `timeline`, from its history file.
    fn timeline_fork(&self, timeline: Timeline) -> Option<(Timeline, u64)>;
    /// Where PostgreSQL's own log is, for messages that send the operator there.
    fn log_file(&self) -> String;

    // Effects.

    /// A new database (initdb), configured for `state`.
    fn initdb(&self, state: &ClusterState) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Takes over an adopted database's configuration files (`PgNode::adopt_files`).
    fn adopt_files(&self) -> anyhow::Result<()>;
    /// Creates the replication role, sets raftpg's roles' passwords; the system identifier.
    fn prepare_roles(&self) -> impl Future<Output = anyhow::Result<u64>> + Send;
    /// Starts as primary under `state`; `gated`: clients are refused until the gate opens,
    /// and the WAL end at the start is returned.
    fn start_primary(
        &self,
        state: &ClusterState,
        gated: bool,
    ) -> impl Future<Output = anyhow::Result<Option<u64>>> + Send;
    /// Starts as a standby of `upstream` (none: on its own WAL). When `abandon` completes
    /// first, the starting postmaster is stopped at once and the result is `Ok(false)`.
    fn start_standby(
        &self,
        state: &ClusterState,
        upstream: Option<&Upstream>,
        abandon: impl Future<Output = ()> + Send,
    ) -> impl Future<Output = anyhow::Result<bool>> + Send;
    fn stop(&self, mode: StopMode) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Stops at once: an immediate shutdown, then SIGKILL for what is left.
    fn fence(&self) -> impl Future<Output = ()> + Send;
    /// A switchover's clean stop: a CHECKPOINT first, then a fast shutdown that waits for
    /// `target` (never for a standby that stopped answering).
    fn clean_stop(&self, target: &str) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Writes the configuration for `state`; true if it changed.
    fn configure(&self, state: &ClusterState, upstream: Option<&Upstream>, gated: bool) -> anyhow::Result<bool>;
    fn reload(&self) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Writes the history files of the timelines other members took, so that a promotion
    /// never takes one of them again.
    fn keep_histories(&self, state: &ClusterState) -> anyhow::Result<()>;
    fn promote(&self) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// The replication slots this node keeps by design under `state`; true if it changed any.
    fn ensure_slots(&self, state: &ClusterState) -> impl Future<Output = anyhow::Result<bool>> + Send;
    /// Drops slot `name` unless a consumer uses it; true if it was dropped.
    fn drop_idle_slot(&self, name: &str) -> impl Future<Output = anyhow::Result<bool>> + Send;
    /// Replaces the data directory with a clone of member `from` (pg_basebackup), its
    /// progress sent to `progress`.
    fn clone_from(
        &self,
        state: &ClusterState,
        from: &str,
        progress: &watch::Sender<Option<CloneProgress>>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// A CHECKPOINT on member `source`, which pg_rewind needs first.
    fn checkpoint_on(&self, state: &ClusterState, source: &str) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Member `source`'s PostgreSQL answers a query.
    fn answers(&self, state: &ClusterState, source: &str) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// pg_rewind onto member `source`; its output. Until [`Postgres::rewind_done`], the
    /// database counts as part rewound ([`Postgres::rewinding`]). When `abandon` completes
    /// first, pg_rewind is stopped and the result is `PgError::Abandoned`.
    fn rewind(
        &self,
        state: &ClusterState,
        source: &str,
        abandon: impl Future<Output = ()> + Send,
    ) -> impl Future<Output = anyhow::Result<Result<String, PgError>>> + Send;
    /// The rewind succeeded: the database is whole again.
    fn rewind_done(&self) -> anyhow::Result<()>;
}

/// This node's real PostgreSQL: its files and tools (`PgNode`) and the persistent
/// connection the observations go through.
pub struct LocalPostgres {
    pub node: PgNode,
    observer: Observer,
}

impl LocalPostgres {
    pub fn new(node: PgNode) -> LocalPostgres {
        LocalPostgres {
            node,
            observer: Observer::default(),
        }
    }

    /// Stops, at once, a standby whose `pg_ctl start -w` (`start`) is abandoned. Left
    /// running, it would keep the configuration written for the old state: the next
    /// tick's start fails on its lock file, and once it accepts connections it streams
    /// from the old upstream, or never accepts them while it waits for WAL there. An
    /// immediate stop (`fence`) is safe for a standby, whose next start replays from its
    /// last restartpoint, and quick even when PostgreSQL is paused: this member's final
    /// report may be what the new generation waits for. `pg_ctl` is dropped only once the
    /// postmaster it launched shows in postmaster.pid, or once it has returned (a start
    /// that failed on its own timeout leaves the postmaster running), and never waited for
    /// longer than `START_SHOWN`.
    async fn stop_starting(&self, mut start: std::pin::Pin<&mut impl Future<Output = Result<(), PgError>>>) {
        let pg = &self.node;
        let mut poll = tokio::time::interval(START_POLL);
        let shown = tokio::time::timeout(START_SHOWN, async {
            loop {
                tokio::select! {
                    _ = &mut start => break,
                    _ = poll.tick() => if pg.ctl.postmaster_alive() { break },
                }
            }
        })
        .await;
        if shown.is_err() {
            tracing::error!(
                "the abandoned standby start showed no postmaster within {START_SHOWN:?}: \
                 if one starts later, it runs the old configuration until the next reload"
            );
        }
        if pg.ctl.postmaster_alive() {
            super::fence(pg).await;
        }
    }
}

impl LocalPostgres {
    /// Runs `sql` on member `source`'s PostgreSQL as superuser (pg_rewind's source).
    async fn execute_on(&self, state: &ClusterState, source: &str, sql: &str) -> anyhow::Result<()> {
        let client = self
            .node
            .superuser_client(state, source)
            .with_context(|| format!("{source} is not a member to rewind onto"))?;
        self.node.connect_remote(&client).await?.batch_execute(sql).await?;
        Ok(())
    }
}

impl Postgres for LocalPostgres {
    fn me(&self) -> &str {
        &self.node.me
    }

    fn upstream(&self, state: &ClusterState, fallen_back: bool) -> Option<Upstream> {
        self.node.upstream(state, fallen_back)
    }

    fn has_database(&self) -> bool {
        self.node.ctl.has_data() && !self.node.initdb_marker.exists()
    }

    fn rewinding(&self) -> bool {
        self.node.rewind_marker.exists()
    }

    fn running(&self) -> bool {
        self.node.ctl.postmaster_alive()
    }

    async fn observe(&mut self) -> Observation {
        self.observer
            .observe(&self.node.local_conninfo(), OBSERVE_TIMEOUT)
            .await
    }

    fn disconnect(&mut self) {
        self.observer = Observer::default();
    }

    async fn overridden_managed(&mut self) -> anyhow::Result<Vec<(String, String, String)>> {
        Ok(self.observer.overridden_managed().await?)
    }

    async fn reset_parameters(&mut self, names: &[String]) -> anyhow::Result<()> {
        Ok(self.observer.reset_parameters(names).await?)
    }

    async fn controldata(&self) -> Result<Controldata, PgError> {
        self.node.ctl.controldata(OBSERVE_TIMEOUT).await
    }

    async fn wal_end(&self, seg_size: u64) -> Result<Option<(u64, Timeline)>, PgError> {
        self.node.ctl.wal_end(seg_size, WAL_END_TIMEOUT).await
    }

    fn no_room(&self, seg_size: Option<u64>) -> Option<String> {
        let need = seg_size.unwrap_or(16 << 20);
        let data = &self.node.ctl.data_dir;
        [("pg_wal", data.join("pg_wal")), ("PGDATA", data.clone())]
            .into_iter()
            .find_map(|(what, path)| {
                let free = crate::postgres::free_bytes(&path).ok()?;
                (free < need).then(|| crate::postgres::no_room(what, &path, free, need))
            })
    }

    fn conf_is_foreign(&self) -> bool {
        self.node.conf_is_foreign()
    }

    fn timeline_fork(&self, timeline: Timeline) -> Option<(Timeline, u64)> {
        self.node.timeline_fork(timeline)
    }

    fn log_file(&self) -> String {
        self.node.ctl.log_file.display().to_string()
    }

    async fn initdb(&self, state: &ClusterState) -> anyhow::Result<()> {
        let pg = &self.node;
        tracing::info!("initdb into {}", pg.ctl.data_dir.display());
        let marker = &pg.initdb_marker;
        std::fs::write(
            marker,
            "initdb started; a database found with this file is incomplete\n",
        )
        .with_context(|| format!("cannot write {}", marker.display()))?;
        pg.empty_data_dir()?;
        pg.ctl.initdb(&pg.superuser, INITDB_TIMEOUT).await?;
        pg.write_conf(state, None, false)?;
        std::fs::remove_file(marker).with_context(|| format!("cannot remove {}", marker.display()))?;
        Ok(())
    }

    fn adopt_files(&self) -> anyhow::Result<()> {
        self.node.adopt_files()
    }

    /// The replication role and raftpg's roles' passwords (a new database, or an adopted
    /// one).
    async fn prepare_roles(&self) -> anyhow::Result<u64> {
        let pg = &self.node;
        let client = connect(&pg.local_conninfo()).await?;
        // The first primary runs its quorum from the start (`sync_config_for`), and no
        // standby can connect before the replication role exists: these commits are
        // raftpg's own and wait for no standby.
        client.batch_execute("SET synchronous_commit = local").await?;
        let role = &pg.replication_user;
        let exists = client
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[role])
            .await?
            .is_some();
        if !exists {
            client
                .batch_execute(&format!("CREATE ROLE \"{role}\" WITH REPLICATION LOGIN"))
                .await?;
        }
        // Passwords reach PostgreSQL as SCRAM verifiers made here, never in plain text (a
        // statement can be logged, or seen in pg_stat_activity); quote_literal escapes them.
        for (user, pw) in [
            (role, &pg.replication_password),
            (&pg.superuser, &pg.superuser_password),
        ] {
            if let Some(pw) = pw {
                let verifier = postgres_protocol::password::scram_sha_256(pw.as_bytes());
                let lit: String = client.query_one("SELECT quote_literal($1)", &[&verifier]).await?.get(0);
                client
                    .batch_execute(&format!("ALTER ROLE \"{user}\" PASSWORD {lit}"))
                    .await?;
            }
        }
        let sysid: i64 = client
            .query_one("SELECT system_identifier FROM pg_control_system()", &[])
            .await?
            .get(0);
        Ok(sysid as u64)
    }

    async fn start_primary(&self, state: &ClusterState, gated: bool) -> anyhow::Result<Option<u64>> {
        let pg = &self.node;
        pg.set_standby_signal(false)?;
        pg.write_conf(state, None, gated)?;
        tracing::info!(gated, "starting PostgreSQL as primary");
        pg.ctl.start(pg.start_timeout).await?;
        if !gated {
            return Ok(None);
        }
        match observe(&pg.local_conninfo(), QUERY_TIMEOUT).await {
            Observation::Up(s) => Ok(s.write_lsn),
            Observation::Unknown(e) => bail!("started, but cannot read the WAL end for the gate: {e}"),
        }
    }

    async fn start_standby(
        &self,
        state: &ClusterState,
        upstream: Option<&Upstream>,
        abandon: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<bool> {
        let pg = &self.node;
        pg.set_standby_signal(true)?;
        pg.write_conf(state, upstream, false)?;
        repair_fork_segments(pg, upstream.is_some()).await;
        tracing::info!("starting PostgreSQL as a standby");
        let start = pg.ctl.start(pg.start_timeout);
        tokio::pin!(start);
        tokio::select! {
            started = &mut start => {
                started?;
                Ok(true)
            }
            () = abandon => {
                self.stop_starting(start).await;
                Ok(false)
            }
        }
    }

    async fn stop(&self, mode: StopMode) -> anyhow::Result<()> {
        Ok(self.node.ctl.stop(mode, STOP_TIMEOUT).await?)
    }

    async fn fence(&self) {
        super::fence(&self.node).await
    }

    async fn clean_stop(&self, target: &str) -> anyhow::Result<()> {
        let pg = &self.node;
        // The explicit checkpoint runs while clients still work, so the shutdown
        // checkpoint (when writes are refused) has little left to do.
        let others = match connect(&pg.local_conninfo()).await {
            Ok(c) => {
                if let Err(e) = tokio::time::timeout(TOOL_TIMEOUT, c.batch_execute("CHECKPOINT")).await {
                    tracing::warn!("CHECKPOINT before the switchover timed out: {e}");
                }
                end_silent_senders(&c, target).await
            }
            Err(e) => {
                tracing::warn!("cannot connect for a CHECKPOINT before the switchover: {e:#}");
                Vec::new()
            }
        };
        tracing::info!("switchover: stopping PostgreSQL cleanly (fast)");
        let stop = pg.ctl.stop(StopMode::Fast, STOP_TIMEOUT);
        tokio::pin!(stop);
        tokio::select! {
            r = &mut stop => r?,
            _ = tokio::time::sleep(SENDER_GRACE), if !others.is_empty() => {
                end_waiting_senders(pg.ctl.postmaster_pid(), &others);
                stop.await?;
            }
        }
        Ok(())
    }

    fn configure(&self, state: &ClusterState, upstream: Option<&Upstream>, gated: bool) -> anyhow::Result<bool> {
        self.node.write_conf(state, upstream, gated)
    }

    async fn reload(&self) -> anyhow::Result<()> {
        Ok(self.node.ctl.reload(TOOL_TIMEOUT).await?)
    }

    fn keep_histories(&self, state: &ClusterState) -> anyhow::Result<()> {
        for (tl, text) in crate::postgres::recorded_histories(&state.history, state.newest_timeline_taken()) {
            let path = self.node.ctl.history_path(tl);
            if !path.exists() {
                self.node.write_file(&path, &text)?;
            }
        }
        Ok(())
    }

    async fn promote(&self) -> anyhow::Result<()> {
        Ok(self.node.ctl.promote(PROMOTE_TIMEOUT).await?)
    }

    /// One physical slot per member that streams from this node, so it keeps the WAL
    /// they still need (`decide::agent::wanted_slots`), and, as primary, the permanent
    /// slots. Drops the other slots raftpg manages.
    async fn ensure_slots(&self, state: &ClusterState) -> anyhow::Result<bool> {
        use crate::decide::agent::{manages_slot, wanted_slots};
        let me = &self.node.me;
        let primary = state.primary_name() == Some(me.as_str());
        let client = connect(&self.node.local_conninfo()).await?;
        let rows = client.query("SELECT slot_name FROM pg_replication_slots", &[]).await?;
        let have: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let wanted = wanted_slots(state, me, primary);
        let mut changed = false;
        for slot in have.iter().filter(|s| manages_slot(state, s) && !wanted.contains(*s)) {
            // A slot of a member that left, or that streams from elsewhere, would keep WAL
            // here for ever; a removed permanent slot is the operator's decision.
            if drop_unless_active(&client, slot).await? {
                match state.slots.get(slot).and_then(|s| s.removed.as_deref()) {
                    Some(why) => tracing::info!("dropped permanent slot {slot}: removed ({why})"),
                    None => {
                        tracing::info!("dropped replication slot {slot}: no member streams from this node through it")
                    }
                }
                changed = true;
            }
        }
        for name in state.slots_kept_by(me) {
            let slot = crate::postgres::conf::slot_name(&name);
            if !have.contains(&slot) {
                client
                    .execute("SELECT pg_create_physical_replication_slot($1)", &[&slot])
                    .await?;
                tracing::info!("created replication slot {slot} for {name}");
                changed = true;
            }
        }
        if primary {
            for (name, kind) in state.declared_slots().filter(|(n, _)| !have.contains(*n)) {
                match kind {
                    crate::cluster::SlotKind::Physical => {
                        // Reserved at once: the consumer's WAL is kept from now on, before
                        // it first connects (and after a failover, before it reconnects).
                        client
                            .execute("SELECT pg_create_physical_replication_slot($1, true)", &[name])
                            .await?;
                        tracing::info!("created permanent physical slot {name}");
                    }
                    crate::cluster::SlotKind::Logical { plugin, database } => {
                        let mut config: tokio_postgres::Config = self.node.local_conninfo().parse()?;
                        config.dbname(database);
                        let db = super::pgfiles::connect_within(&config, NoTls).await.with_context(|| {
                            format!("cannot connect to database {database} for logical slot {name}")
                        })?;
                        db.execute("SELECT pg_create_logical_replication_slot($1, $2)", &[name, plugin])
                            .await
                            .with_context(|| format!("cannot create logical slot {name} ({plugin} in {database})"))?;
                        tracing::warn!(
                            "created permanent logical slot {name} ({plugin} in {database}) at the current position: \
                             changes since its consumer's last position on an earlier primary are not in it"
                        );
                    }
                }
                changed = true;
            }
        }
        Ok(changed)
    }

    async fn drop_idle_slot(&self, name: &str) -> anyhow::Result<bool> {
        let client = connect(&self.node.local_conninfo()).await?;
        drop_unless_active(&client, name).await
    }

    async fn clone_from(
        &self,
        state: &ClusterState,
        from: &str,
        progress: &watch::Sender<Option<CloneProgress>>,
    ) -> anyhow::Result<()> {
        let pg = &self.node;
        let up = pg
            .upstream_to(state, from)
            .with_context(|| format!("{from} is not a member to clone from"))?;
        tracing::info!("cloning from {}:{} with pg_basebackup", up.host, up.port);
        pg.empty_data_dir()?;
        pg.ctl
            .basebackup(
                &up.host,
                up.port,
                &up.user,
                pg.passfile.as_deref(),
                CLONE_TIMEOUT,
                progress,
            )
            .await?;
        // A clone replaced whatever a partial initdb or rewind left.
        for marker in [&pg.initdb_marker, &pg.rewind_marker] {
            if marker.exists() {
                std::fs::remove_file(marker).with_context(|| format!("cannot remove {}", marker.display()))?;
            }
        }
        Ok(())
    }

    async fn checkpoint_on(&self, state: &ClusterState, source: &str) -> anyhow::Result<()> {
        self.execute_on(state, source, "CHECKPOINT").await
    }

    async fn answers(&self, state: &ClusterState, source: &str) -> anyhow::Result<()> {
        tokio::time::timeout(QUERY_TIMEOUT, self.execute_on(state, source, "SELECT 1"))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
    }

    async fn rewind(
        &self,
        state: &ClusterState,
        source: &str,
        abandon: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<Result<String, PgError>> {
        let pg = &self.node;
        let conninfo = pg
            .superuser_conninfo(state, source)
            .with_context(|| format!("{source} is not a member to rewind onto"))?;
        tracing::info!("pg_rewind onto {source}");
        let marker = &pg.rewind_marker;
        std::fs::write(
            marker,
            "pg_rewind started; until it succeeds the data directory may be part rewound\n",
        )
        .with_context(|| format!("cannot write {}", marker.display()))?;
        Ok(pg
            .ctl
            .rewind(&conninfo, pg.passfile.as_deref(), REWIND_TIMEOUT, abandon)
            .await)
    }

    fn rewind_done(&self) -> anyhow::Result<()> {
        let marker = &self.node.rewind_marker;
        std::fs::remove_file(marker).with_context(|| format!("cannot remove {}", marker.display()))
    }
}

/// Drops replication slot `name` unless a consumer is connected; true if dropped.
async fn drop_unless_active(client: &tokio_postgres::Client, name: &str) -> anyhow::Result<bool> {
    let dropped = client
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
            &[&name],
        )
        .await?;
    Ok(dropped > 0)
}

/// Before a standby starts: removes placeholder history files that recovery would target,
/// and sets right the segments where a timeline forked whose file recovery would read ends
/// before that fork, so that it does not stop there for good (finding 21 of
/// docs/jepsen.md). `following`: it starts with `recovery_target_timeline =
/// 'latest'`; otherwise on its own WAL's timeline. A failure to check is logged, and the
/// start goes on: PostgreSQL's own error then says what is wrong.
async fn repair_fork_segments(pg: &PgNode, following: bool) {
    let control = match pg.ctl.controldata(TOOL_TIMEOUT).await {
        Ok(c) => c,
        Err(e) => return tracing::warn!("cannot check pg_wal's fork segments: pg_controldata: {e}"),
    };
    let (Some(seg_size), Some(checkpoint_tl)) = (control.wal_segment_size, control.timeline) else {
        return;
    };
    let target = match following {
        true => {
            match pg.ctl.remove_placeholder_targets(checkpoint_tl) {
                Ok(removed) => {
                    for path in removed {
                        tracing::info!(
                            "removed {}, a placeholder history file written for a promotion: recovery \
                             would target it and find no history in it",
                            path.display()
                        );
                    }
                }
                Err(e) => tracing::warn!("cannot check pg_wal's history files: {e}"),
            }
            pg.ctl.latest_timeline(checkpoint_tl)
        }
        false => pg.ctl.wal_timeline().unwrap_or(checkpoint_tl),
    };
    match pg.ctl.repair_fork_segments(target, seg_size, WAL_END_TIMEOUT).await {
        Ok(done) => {
            for line in done {
                tracing::warn!(
                    "pg_wal: {line}: a standby would otherwise stop for good where a file of a newer \
                     timeline, received only in part, ends before that timeline's fork"
                );
            }
        }
        Err(e) => tracing::warn!("cannot check pg_wal's fork segments for timeline {target}: {e}"),
    }
}

/// A clean shutdown waits for every WAL sender's standby to confirm the shutdown
/// checkpoint, so a standby that stopped answering (cut off, or its WAL receiver hung)
/// holds a switchover's write downtime until `wal_sender_timeout` (5 s). Before the stop,
/// the senders of standbys whose last reply is older than 1.5 s are ended. Standbys reply
/// at least every `wal_receiver_status_interval` (1 s); one taken for silent by mistake
/// only reconnects. The target's sender is never ended: the promotion waits for the target
/// to hold the WAL past the shutdown checkpoint, which is what keeps every acknowledged
/// write.
/// Returns the senders of the other standbys left running, (pid, standby name), for
/// [`end_waiting_senders`].
async fn end_silent_senders(c: &tokio_postgres::Client, target: &str) -> Vec<(i32, String)> {
    const END_SILENT_SENDERS: &str = "SELECT pid, application_name, \
         EXTRACT(EPOCH FROM now() - reply_time)::float8, \
         CASE WHEN reply_time < now() - interval '1500 milliseconds' THEN pg_terminate_backend(pid) ELSE false END \
         FROM pg_stat_replication WHERE application_name <> $1";
    match tokio::time::timeout(TOOL_TIMEOUT, c.query(END_SILENT_SENDERS, &[&target])).await {
        Ok(Ok(rows)) => rows
            .into_iter()
            .filter_map(|r| {
                let (pid, name, silent, ended): (i32, String, Option<f64>, bool) =
                    (r.get(0), r.get(1), r.get(2), r.get(3));
                if !ended {
                    return Some((pid, name));
                }
                tracing::warn!(
                    "switchover: ended the WAL sender of {name}: its standby has not answered for {:.1} s, \
                     and the clean shutdown would wait for it until wal_sender_timeout; it follows the new primary \
                     once it answers again",
                    silent.unwrap_or_default()
                );
                None
            })
            .collect(),
        Ok(Err(e)) => {
            tracing::warn!("switchover: cannot look for standbys that stopped answering: {e}");
            Vec::new()
        }
        Err(_) => {
            tracing::warn!("switchover: looking for standbys that stopped answering timed out");
            Vec::new()
        }
    }
}

/// Ends the WAL senders in `senders` that still run under `postmaster` (a pid reused by
/// another process is left alone): SIGTERM, as `pg_terminate_backend` sends. The target's
/// sender is never among them.
fn end_waiting_senders(postmaster: Option<i32>, senders: &[(i32, String)]) {
    let Some(postmaster) = postmaster else { return };
    for (pid, name) in senders {
        let ppid = crate::postgres::kill::parent_of(nix::unistd::Pid::from_raw(*pid));
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid != Some(postmaster) || !String::from_utf8_lossy(&cmdline).contains("walsender") {
            continue;
        }
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGTERM).is_ok() {
            tracing::warn!(
                "switchover: the clean shutdown still waits after {} ms: ended the WAL sender of {name}, whose \
                 standby has not confirmed the shutdown checkpoint; it follows the new primary once it answers",
                SENDER_GRACE.as_millis()
            );
        }
    }
}

async fn connect(conninfo: &str) -> anyhow::Result<tokio_postgres::Client> {
    super::pgfiles::connect_within(&conninfo.parse()?, NoTls).await
}
