//! The executor: one `match` from `Action` to PostgreSQL effects.

use anyhow::{bail, Context};
use tokio::sync::watch;
use tokio_postgres::NoTls;

use super::{fence, Agent};
use crate::cluster::{ClusterState, Command};
use crate::decide::agent::Action;
use crate::node::report::{ReportClient, ReportReply, ReportRequest};
use crate::node::ProposeError;
use crate::postgres::{observe, Observation, StopMode};
use crate::raft::state_machine::AppliedState;
use crate::types::Generation;

use super::timing::*;

/// Returns once the applied state's generation is no longer `generation`; never if the
/// state stops changing.
async fn generation_moved(changes: &mut watch::Receiver<AppliedState>, generation: Generation) {
    loop {
        if changes.borrow_and_update().state.generation != generation {
            return;
        }
        if changes.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Before a standby starts: removes placeholder history files that recovery would target,
/// and sets right the segments where a timeline forked whose file recovery would read ends
/// before that fork, so that it does not stop there for good (finding 21 of
/// docs/jepsen.md). `following`: it starts with `recovery_target_timeline =
/// 'latest'`; otherwise on its own WAL's timeline. A failure to check is logged, and the
/// start goes on: PostgreSQL's own error then says what is wrong.
async fn repair_fork_segments(pg: &super::pgfiles::PgNode, following: bool) {
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

impl Agent {
    /// Executes one action decided under `state`; Ok(true) if it changed something.
    pub(super) async fn execute(&mut self, action: &Action, state: &ClusterState) -> anyhow::Result<bool> {
        let pg = &self.pg;
        match action {
            Action::Initdb => {
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
            }
            Action::StartPrimary { gated } => {
                pg.set_standby_signal(false)?;
                pg.write_conf(state, None, *gated)?;
                tracing::info!(gated, "starting PostgreSQL as primary");
                pg.ctl.start(pg.start_timeout).await?;
                if *gated {
                    self.gate_lsn = match observe(&pg.local_conninfo(), QUERY_TIMEOUT).await {
                        Observation::Up(s) => s.write_lsn,
                        Observation::Unknown(e) => bail!("started, but cannot read the WAL end for the gate: {e}"),
                    };
                }
            }
            Action::ProposeBootstrap => {
                let system_identifier = self.prepare_roles().await?;
                self.propose(Command::Bootstrap {
                    node: pg.me.clone(),
                    system_identifier,
                })
                .await?;
            }
            Action::AdoptConfig => pg.adopt_files()?,
            Action::ProposeAdopted { timeline } => {
                let system_identifier = self.prepare_roles().await?;
                self.propose(Command::Adopted {
                    node: pg.me.clone(),
                    system_identifier,
                    timeline: *timeline,
                })
                .await?;
            }
            Action::Fence => {
                tracing::warn!("fencing PostgreSQL (immediate stop)");
                fence(pg).await;
            }
            Action::Stop => pg.ctl.stop(StopMode::Fast, STOP_TIMEOUT).await?,
            Action::CleanStop { target } => {
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
            }
            Action::ReportStopped { lsn } => {
                self.propose(Command::SwitchoverStopped {
                    generation: state.generation,
                    node: pg.me.clone(),
                    lsn: *lsn,
                })
                .await?;
            }
            Action::RestartDone { upto } => {
                self.restarts_done = *upto;
                // An operator's restart is the way back for a primary that hung and that
                // no failover replaced.
                self.timers.restarted();
                tracing::info!("requested restart done");
            }
            Action::ReinitDone { upto } => {
                self.reinits_done = *upto;
                tracing::info!("requested re-clone done");
            }
            Action::Reconfigure { upstream } => {
                if pg.write_conf(state, upstream.as_ref(), self.gate_lsn.is_some())? {
                    tracing::info!("configuration changed: reloading PostgreSQL");
                    pg.ctl.reload(TOOL_TIMEOUT).await?;
                    return Ok(true);
                }
                return Ok(false);
            }
            Action::Reload { upstream } => {
                let want = upstream
                    .as_ref()
                    .map(crate::postgres::conf::conninfo)
                    .unwrap_or_default();
                pg.write_conf(state, upstream.as_ref(), self.gate_lsn.is_some())?;
                match &self.reloaded {
                    Some((w, at)) if *w == want && at.elapsed() < RELOAD_RETRY => return Ok(false),
                    Some((w, at)) if *w == want && at.elapsed() < 3 * RELOAD_RETRY => tracing::warn!(
                        "PostgreSQL still runs another primary_conninfo after a reload: it may have \
                         rejected postgresql.conf (see its log, {}); reloading again",
                        pg.ctl.log_file.display()
                    ),
                    _ => tracing::info!("PostgreSQL does not run the primary_conninfo written: reloading it"),
                }
                self.reloaded = Some((want, tokio::time::Instant::now()));
                pg.ctl.reload(TOOL_TIMEOUT).await?;
            }
            Action::StopStreaming => {
                pg.write_conf(state, None, false)?;
                pg.ctl.reload(TOOL_TIMEOUT).await?;
            }
            Action::EnsureSlots => return self.ensure_slots(state).await,
            Action::DropSlots(names) => return self.drop_stale_slots(state, names).await,
            Action::OpenGate => {
                pg.write_conf(state, None, false)?;
                pg.ctl.reload(TOOL_TIMEOUT).await?;
                self.gate_lsn = None;
            }
            Action::Promote { candidate } => {
                // A candidate's pre_promote may refuse: then it stays a standby and asks the
                // controller for another candidate.
                let candidate = *candidate;
                // Once per generation: a promotion retried (the leader did not confirm yet, or
                // pg_ctl promote failed) does not run the hook, and its side effects, again.
                if candidate && self.pre_promoted != Some(state.generation) {
                    let timeline = state.history.last().map(|h| h.timeline);
                    if let Err(why) = self.hooks.pre_promote(state.generation, timeline).await {
                        self.propose(Command::VetoCandidate {
                            generation: state.generation,
                            node: pg.me.clone(),
                            reason: format!("its pre_promote hook failed: {why}"),
                        })
                        .await?;
                        bail!(
                            "pre_promote vetoed my promotion under generation {}: {why}",
                            state.generation
                        );
                    }
                    self.pre_promoted = Some(state.generation);
                }
                // Timelines other members took must not be taken again.
                for (tl, text) in crate::postgres::recorded_histories(&state.history, state.newest_timeline_taken()) {
                    let path = pg.ctl.history_path(tl);
                    if !path.exists() {
                        pg.write_file(&path, &text)?;
                    }
                }
                pg.write_conf(state, None, false)?;
                pg.ctl.reload(TOOL_TIMEOUT).await?;
                if candidate {
                    self.confirm_candidate(state).await?;
                }
                tracing::info!(generation = %state.generation, "promoting PostgreSQL");
                pg.ctl.promote(PROMOTE_TIMEOUT).await?;
            }
            Action::DeclineCandidacy { reason } => {
                tracing::warn!(generation = %state.generation, "declining my promotion: {reason}");
                self.propose(Command::VetoCandidate {
                    generation: state.generation,
                    node: pg.me.clone(),
                    reason: reason.clone(),
                })
                .await?;
            }
            Action::RecordTimeline { timeline, write_lsn } => {
                let fork = pg.timeline_fork(*timeline);
                if fork.is_none() {
                    tracing::warn!(
                        "cannot read the history file of timeline {timeline}: recording the write position instead"
                    );
                }
                let cmd = Command::RecordTimeline {
                    generation: state.generation,
                    node: pg.me.clone(),
                    timeline: *timeline,
                    switch_lsn: fork.map(|(_, l)| l).or(*write_lsn).map(crate::types::Lsn),
                    parent_timeline: fork.map(|(p, _)| p),
                };
                self.propose(cmd).await?;
            }
            Action::Clone { from } => {
                self.clone_from(state, from).await?;
                // A clone replaced whatever a partial initdb or rewind left.
                for marker in [&pg.initdb_marker, &pg.rewind_marker] {
                    if marker.exists() {
                        std::fs::remove_file(marker).with_context(|| format!("cannot remove {}", marker.display()))?;
                    }
                }
            }
            Action::Rewind { source } => self.rewind(state, source).await?,
            Action::StartStandby { upstream } => {
                pg.set_standby_signal(true)?;
                pg.write_conf(state, upstream.as_ref(), false)?;
                repair_fork_segments(pg, upstream.is_some()).await;
                tracing::info!("starting PostgreSQL as a standby");
                // A standby that needs WAL it cannot get never accepts connections, and
                // `pg_ctl start -w` waits out its whole timeout. A primary change begun in
                // the meantime must not wait for it: this member's final report is needed
                // (finding 14 of docs/jepsen.md: a failover took 58 s). The postmaster
                // is stopped (`stop_starting`), and the next tick decides for the new state.
                let mut changes = self.node.subscribe();
                let start = pg.ctl.start(pg.start_timeout);
                tokio::pin!(start);
                tokio::select! {
                    started = &mut start => started?,
                    () = generation_moved(&mut changes, state.generation) => {
                        tracing::warn!(
                            decided = %state.generation,
                            "the generation moved on while PostgreSQL was starting as a standby: \
                             stopping it at once, so that the next tick decides for the new state"
                        );
                        self.stop_starting(start).await;
                    }
                }
            }
        }
        Ok(true)
    }

    /// Stops, at once, a standby whose `pg_ctl start -w` (`start`) is abandoned because the
    /// generation moved. Left running, it would keep the configuration written for the old
    /// state: the next tick's start fails on its lock file, and once it accepts connections
    /// it streams from the old upstream, or never accepts them while it waits for WAL there.
    /// An immediate stop (`fence`) is safe for a standby, whose next start replays from its
    /// last restartpoint, and quick even when PostgreSQL is paused: this member's final
    /// report may be what the new generation waits for. `pg_ctl` is dropped only once the
    /// postmaster it launched shows in postmaster.pid, or once it has returned (a start
    /// that failed on its own timeout leaves the postmaster running), and never waited for
    /// longer than `START_SHOWN`.
    async fn stop_starting(
        &self,
        mut start: std::pin::Pin<&mut impl std::future::Future<Output = Result<(), crate::postgres::PgError>>>,
    ) {
        let pg = &self.pg;
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
            fence(pg).await;
        }
    }

    /// Asks the Raft leader, which first confirms its leadership with a ReadIndex round,
    /// whether its applied state still names this node the candidate of `state.generation`
    /// (`decide::report::grants_renewal`), right before `pg_ctl promote`. The state this agent
    /// decided on may be old: a candidate that the controller replaced while its raftpg was
    /// down or cut off would otherwise promote on it, without the writes its successor
    /// acknowledged since (the simulation, seed 2024). The grant is not kept as a lease: it
    /// arms no fence (a promotion that replays a long backlog must not be fenced half-way);
    /// the new primary acquires its lease once its timeline is recorded, as before.
    async fn confirm_candidate(&self, state: &ClusterState) -> anyhow::Result<()> {
        let g = state.generation;
        let mut report = self.outbox.lock().unwrap_or_else(|p| p.into_inner()).report.clone();
        report.generation = g;
        let req = ReportRequest {
            node: self.pg.me.clone(),
            report,
            renew: true,
        };
        let mut client = ReportClient::new(self.node.transport.clone());
        let reply = super::ask_leader(&self.node, &mut client, &req, PROPOSE_TIMEOUT)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "{e}: cannot confirm that I am still the candidate of generation {g}: not promoting yet"
                )
            })?;
        match reply {
            ReportReply::Accepted {
                lease_granted: true, ..
            } => Ok(()),
            ReportReply::Accepted { .. } => {
                bail!("the Raft leader's state no longer names me the candidate of generation {g}: not promoting")
            }
            ReportReply::NotLeader { .. } => {
                bail!("the Raft leader could not confirm its leadership: not promoting yet")
            }
        }
    }

    async fn propose(&self, cmd: Command) -> anyhow::Result<()> {
        match self.node.propose(cmd.clone(), PROPOSE_TIMEOUT).await {
            Ok(c) => {
                tracing::info!("{cmd}: {}", c.applied.message);
                Ok(())
            }
            Err(ProposeError::Rejected(r)) => bail!("{cmd} was refused: {r}"),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates the replication role and sets the passwords of raftpg's roles (a new
    /// database, or an adopted one); returns the system identifier.
    async fn prepare_roles(&self) -> anyhow::Result<u64> {
        let pg = &self.pg;
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

    /// The slots this node keeps by design (`decide::agent::wanted_slots`): one physical
    /// slot per member that streams from it, so it keeps the WAL they still need, and, as
    /// primary, the permanent slots. Drops the other slots raftpg manages.
    async fn ensure_slots(&self, state: &ClusterState) -> anyhow::Result<bool> {
        use crate::decide::agent::{manages_slot, wanted_slots};
        let me = &self.pg.me;
        let primary = state.primary_name() == Some(me.as_str());
        let client = connect(&self.pg.local_conninfo()).await?;
        let rows = client.query("SELECT slot_name FROM pg_replication_slots", &[]).await?;
        let have: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let wanted = wanted_slots(state, me, primary);
        let mut changed = false;
        for slot in have.iter().filter(|s| manages_slot(state, s) && !wanted.contains(*s)) {
            // A slot of a member that left, or that streams from elsewhere, would keep WAL
            // here for ever; a removed permanent slot is the operator's decision.
            let dropped = client
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
                    &[slot],
                )
                .await?;
            if dropped > 0 {
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
                        let mut config: tokio_postgres::Config = self.pg.local_conninfo().parse()?;
                        config.dbname(database);
                        let db = crate::agent::pgfiles::connect_within(&config, NoTls)
                            .await
                            .with_context(|| {
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

    /// Drops slots that held WAL with no consumer for `slot_ttl_ms`; a permanent one is
    /// removed from the state first, so that no primary recreates it.
    async fn drop_stale_slots(&self, state: &ClusterState, names: &[String]) -> anyhow::Result<bool> {
        let client = connect(&self.pg.local_conninfo()).await?;
        let ttl = std::time::Duration::from_millis(state.slot_ttl_ms());
        for name in names {
            let why = format!("no consumer for {ttl:?} while it held WAL (slot_ttl_ms)");
            let dropped = client
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
                    &[name],
                )
                .await?;
            if dropped == 0 {
                continue; // its consumer is back
            }
            tracing::warn!(
                "dropped replication slot {name}: {why}, so that it cannot fill the disk; its consumer must start \
                 over (a member streams again if the WAL it needs is still here, else it needs `ctl reinit`)"
            );
            if state.declared_slots().any(|(n, _)| n == name) {
                self.propose(Command::RemoveSlot {
                    name: name.clone(),
                    reason: why,
                })
                .await?;
            }
        }
        Ok(true)
    }

    async fn clone_from(&self, state: &ClusterState, from: &str) -> anyhow::Result<()> {
        let pg = &self.pg;
        let up = pg
            .upstream_to(state, from)
            .with_context(|| format!("{from} is not a member to clone from"))?;
        tracing::info!("cloning from {}:{} with pg_basebackup", up.host, up.port);
        pg.empty_data_dir()?;
        // The progress reaches the Raft leader in this node's reports (`ctl list`, and the
        // stream of `ctl member add`), and the log every 10 %.
        let (tx, mut rx) = tokio::sync::watch::channel(None::<crate::postgres::ctl::CloneProgress>);
        let outbox = self.outbox.clone();
        let wake = self.wake_reporter.clone();
        let from = from.to_string();
        let shown = tokio::spawn(async move {
            let mut logged = None;
            while rx.changed().await.is_ok() {
                let Some(p) = *rx.borrow_and_update() else { continue };
                let text = format!("{}{from}: {p}", crate::decide::report::CLONING);
                if logged != Some(p.percent / 10) {
                    logged = Some(p.percent / 10);
                    tracing::info!("{text}");
                }
                outbox.lock().unwrap_or_else(|e| e.into_inner()).report.reason = text;
                wake.notify_one();
            }
        });
        let done = pg
            .ctl
            .basebackup(&up.host, up.port, &up.user, pg.passfile.as_deref(), CLONE_TIMEOUT, &tx)
            .await;
        drop(tx);
        let _ = shown.await;
        done?;
        tracing::info!("clone finished");
        Ok(())
    }

    /// pg_rewind onto the primary; on failure re-clone if configured, loudly.
    async fn rewind(&mut self, state: &ClusterState, primary: &str) -> anyhow::Result<()> {
        let pg = &self.pg;
        let source = pg
            .superuser_conninfo(state, primary)
            .with_context(|| format!("{primary} is not a member to rewind onto"))?;
        // A just-promoted primary's control file names its new timeline only after a
        // checkpoint; without one pg_rewind wrongly finds "no rewind required" and the
        // node stays diverged. So no CHECKPOINT, no rewind: the action fails and is retried.
        let client = pg
            .superuser_client(state, primary)
            .with_context(|| format!("{primary} is not a member to rewind onto"))?;
        let checkpoint = async {
            let c = pg.connect_remote(&client).await?;
            c.batch_execute("CHECKPOINT").await?;
            anyhow::Ok(())
        };
        // A source that freezes (a paused node) holds the CHECKPOINT and pg_rewind until
        // TCP gives up, and this member, inside the effect, sends no report: a primary
        // change begun meanwhile would wait for it (finding 16 of docs/jepsen.md: a
        // failover took 14.4 s). A member that is rewinding holds no write of the fenced
        // generation, so both steps are abandoned when the generation moves; the rewind
        // marker makes a part-rewound directory report nothing and be rewound again (or,
        // if that fails on what the first run changed, re-cloned: a slower rejoin, never a
        // later failover's wait).
        let mut changes = self.node.subscribe();
        let moved = generation_moved(&mut changes, state.generation);
        tokio::pin!(moved);
        tokio::select! {
            done = tokio::time::timeout(REWIND_TIMEOUT, checkpoint) => match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => bail!("cannot run the CHECKPOINT on {primary} that pg_rewind needs first: {e:#}"),
                Err(_) => {
                    bail!("the CHECKPOINT on {primary} that pg_rewind needs first did not finish within {REWIND_TIMEOUT:?}")
                }
            },
            () = &mut moved => bail!(
                "the generation moved on (from {}) during the CHECKPOINT on {primary} that pg_rewind needs first: \
                 abandoning the rewind, so that the next tick decides for the new state",
                state.generation
            ),
        }
        tracing::info!("pg_rewind onto {primary}");
        let marker = &pg.rewind_marker;
        std::fs::write(
            marker,
            "pg_rewind started; until it succeeds the data directory may be part rewound\n",
        )
        .with_context(|| format!("cannot write {}", marker.display()))?;
        let rewound = match pg
            .ctl
            .rewind(&source, pg.passfile.as_deref(), REWIND_TIMEOUT, &mut moved)
            .await
        {
            Err(crate::postgres::PgError::Abandoned { .. }) => bail!(
                "the generation moved on (from {}) while pg_rewind ran onto {primary}: pg_rewind is stopped and \
                 the data directory may be part rewound (the rewind marker stays); the next tick decides for the \
                 new state",
                state.generation
            ),
            // The first time, "nothing to undo" is believed. The second time in one
            // generation, after the standby again could not follow for a while, it is not:
            // the old primary stopped in the middle of a record that crosses into a WAL
            // segment it never wrote (a full pg_wal does that), this standby received its
            // first part, past the new timeline's fork point, and asks the new primary for
            // WAL from beyond that point. pg_rewind looks only at complete records.
            Ok(out) if out.contains("no rewind required") && self.noop_rewind == Some(state.generation) => {
                Err(crate::postgres::PgError::Failed {
                    what: "pg_rewind".into(),
                    status: "no rewind required, a second time".into(),
                    output: format!(
                        "yet this standby still cannot follow {primary}: its WAL holds part of a record past \
                         the point where {primary}'s timeline forked"
                    ),
                })
            }
            other => other,
        };
        let pg = &self.pg;
        match rewound {
            Ok(out) => {
                std::fs::remove_file(&pg.rewind_marker)
                    .with_context(|| format!("cannot remove {}", pg.rewind_marker.display()))?;
                let summary = out.lines().last().unwrap_or("").to_string();
                tracing::info!("pg_rewind done: {summary}");
                if out.contains("no rewind required") {
                    self.noop_rewind = Some(state.generation);
                }
                Ok(())
            }
            Err(e) if pg.reclone_on_rewind_failure => {
                // A source that went away mid-rewind says nothing about the local data,
                // and a clone from it would fail too: keep the data and retry the rewind.
                let answers = async {
                    pg.connect_remote(&client).await?.batch_execute("SELECT 1").await?;
                    anyhow::Ok(())
                };
                if let Err(why) = tokio::time::timeout(QUERY_TIMEOUT, answers)
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
                {
                    bail!("pg_rewind onto {primary} failed ({e}) and {primary} does not answer ({why:#}): keeping the local data, retrying later");
                }
                tracing::error!(
                    "pg_rewind onto {primary} failed ({e}); RE-CLONING this node from {primary}: its local data is discarded \
                     (set postgres.reclone_on_rewind_failure = false to keep it and repair by hand)"
                );
                self.clone_from(state, primary).await
            }
            Err(e) => bail!(
                "pg_rewind onto {primary} failed ({e}) and postgres.reclone_on_rewind_failure is off: \
                 repair the data directory by hand or run `raftpg ctl reinit`"
            ),
        }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::cluster::testing::bootstrapped;

    fn applied(generation: Generation) -> AppliedState {
        let mut state = bootstrapped("n1");
        state.generation = generation;
        AppliedState {
            log_index: generation.0,
            state: Arc::new(state),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_stops_waiting_when_the_generation_moves_and_only_then() {
        let (tx, mut rx) = watch::channel(applied(Generation(3)));
        let mut moved = Box::pin(async move { generation_moved(&mut rx, Generation(3)).await });
        // Another entry of the same generation (a report, a confirmation) is no reason.
        tx.send(applied(Generation(3))).unwrap();
        let waited = tokio::time::timeout(Duration::from_secs(60), &mut moved).await;
        assert!(waited.is_err(), "returned while the generation was still 3");
        tx.send(applied(Generation(4))).unwrap();
        tokio::time::timeout(Duration::from_secs(1), &mut moved)
            .await
            .expect("generation 4 ends the wait");
        // Already moved when the wait begins: returns at once.
        let (_tx, mut rx) = watch::channel(applied(Generation(5)));
        tokio::time::timeout(Duration::from_secs(1), generation_moved(&mut rx, Generation(4)))
            .await
            .expect("moved before the wait");
    }
}
