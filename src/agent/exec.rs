//! The executor: one `match` from `Action` to PostgreSQL effects, each through the
//! `Postgres` seam, with raftpg's policy around them (what it logs and proposes, when a
//! moved generation abandons an effect, when it re-clones).

use anyhow::bail;
use tokio::sync::watch;

use super::postgres::Postgres;
use super::Agent;
use crate::cluster::{ClusterState, Command};
use crate::decide::agent::Action;
use crate::node::report::{ReportClient, ReportReply, ReportRequest};
use crate::node::ProposeError;
use crate::postgres::StopMode;
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

impl<P: Postgres> Agent<P> {
    /// Executes one action decided under `state`; Ok(true) if it changed something.
    pub(super) async fn execute(&mut self, action: &Action, state: &ClusterState) -> anyhow::Result<bool> {
        let me = self.pg.me().to_string();
        match action {
            Action::Initdb => self.pg.initdb(state).await?,
            Action::StartPrimary { gated } => {
                let gate = self.pg.start_primary(state, *gated).await?;
                if *gated {
                    self.gate_lsn = gate;
                }
            }
            Action::ProposeBootstrap => {
                let system_identifier = self.pg.prepare_roles().await?;
                self.propose(Command::Bootstrap {
                    node: me,
                    system_identifier,
                })
                .await?;
            }
            Action::AdoptConfig => self.pg.adopt_files()?,
            Action::ProposeAdopted { timeline } => {
                let system_identifier = self.pg.prepare_roles().await?;
                self.propose(Command::Adopted {
                    node: me,
                    system_identifier,
                    timeline: *timeline,
                })
                .await?;
            }
            Action::Fence => {
                tracing::warn!("fencing PostgreSQL (immediate stop)");
                self.pg.fence().await;
            }
            Action::Stop => self.pg.stop(StopMode::Fast).await?,
            Action::CleanStop { target } => self.pg.clean_stop(target).await?,
            Action::ReportStopped { lsn } => {
                self.propose(Command::SwitchoverStopped {
                    generation: state.generation,
                    node: me,
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
                if self.pg.configure(state, upstream.as_ref(), self.gate_lsn.is_some())? {
                    tracing::info!("configuration changed: reloading PostgreSQL");
                    self.pg.reload().await?;
                    return Ok(true);
                }
                return Ok(false);
            }
            Action::Reload { upstream } => {
                let want = upstream
                    .as_ref()
                    .map(crate::postgres::conf::conninfo)
                    .unwrap_or_default();
                self.pg.configure(state, upstream.as_ref(), self.gate_lsn.is_some())?;
                match &self.reloaded {
                    Some((w, at)) if *w == want && at.elapsed() < RELOAD_RETRY => return Ok(false),
                    Some((w, at)) if *w == want && at.elapsed() < 3 * RELOAD_RETRY => tracing::warn!(
                        "PostgreSQL still runs another primary_conninfo after a reload: it may have \
                         rejected postgresql.conf (see its log, {}); reloading again",
                        self.pg.log_file()
                    ),
                    _ => tracing::info!("PostgreSQL does not run the primary_conninfo written: reloading it"),
                }
                self.reloaded = Some((want, tokio::time::Instant::now()));
                self.pg.reload().await?;
            }
            Action::StopStreaming => {
                self.pg.configure(state, None, false)?;
                self.pg.reload().await?;
            }
            Action::EnsureSlots => return self.pg.ensure_slots(state).await,
            Action::DropSlots(names) => return self.drop_stale_slots(state, names).await,
            Action::OpenGate => {
                self.pg.configure(state, None, false)?;
                self.pg.reload().await?;
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
                            node: me,
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
                self.pg.keep_histories(state)?;
                self.pg.configure(state, None, false)?;
                self.pg.reload().await?;
                if candidate {
                    self.confirm_candidate(state).await?;
                }
                tracing::info!(generation = %state.generation, "promoting PostgreSQL");
                self.pg.promote().await?;
            }
            Action::DeclineCandidacy { reason } => {
                tracing::warn!(generation = %state.generation, "declining my promotion: {reason}");
                self.propose(Command::VetoCandidate {
                    generation: state.generation,
                    node: me,
                    reason: reason.clone(),
                })
                .await?;
            }
            Action::RecordTimeline { timeline, write_lsn } => {
                let fork = self.pg.timeline_fork(*timeline);
                if fork.is_none() {
                    tracing::warn!(
                        "cannot read the history file of timeline {timeline}: recording the write position instead"
                    );
                }
                let cmd = Command::RecordTimeline {
                    generation: state.generation,
                    node: me,
                    timeline: *timeline,
                    switch_lsn: fork.map(|(_, l)| l).or(*write_lsn).map(crate::types::Lsn),
                    parent_timeline: fork.map(|(p, _)| p),
                };
                self.propose(cmd).await?;
            }
            Action::Clone { from } => self.clone_from(state, from).await?,
            Action::Rewind { source } => self.rewind(state, source).await?,
            Action::StartStandby { upstream } => {
                // A standby that needs WAL it cannot get never accepts connections, and
                // `pg_ctl start -w` waits out its whole timeout. A primary change begun in
                // the meantime must not wait for it: this member's final report is needed
                // (finding 14 of docs/jepsen.md: a failover took 58 s). The postmaster
                // is stopped (`Postgres::start_standby`), and the next tick decides for
                // the new state.
                let mut changes = self.node.subscribe();
                let moved = generation_moved(&mut changes, state.generation);
                if !self.pg.start_standby(state, upstream.as_ref(), moved).await? {
                    tracing::warn!(
                        decided = %state.generation,
                        "the generation moved on while PostgreSQL was starting as a standby: \
                         stopped it at once, so that the next tick decides for the new state"
                    );
                }
            }
        }
        Ok(true)
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
            node: self.pg.me().to_string(),
            report,
            renew: true,
        };
        let mut client = ReportClient::new(self.node.wire.clone());
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

    /// Drops slots that held WAL with no consumer for `slot_ttl_ms`; a permanent one is
    /// removed from the state first, so that no primary recreates it.
    async fn drop_stale_slots(&self, state: &ClusterState, names: &[String]) -> anyhow::Result<bool> {
        let ttl = std::time::Duration::from_millis(state.slot_ttl_ms());
        for name in names {
            let why = format!("no consumer for {ttl:?} while it held WAL (slot_ttl_ms)");
            if !self.pg.drop_idle_slot(name).await? {
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
        // The progress reaches the Raft leader in this node's reports (`ctl list`, and the
        // stream of `ctl member add`), and the log every 10 %.
        let (tx, mut rx) = tokio::sync::watch::channel(None::<crate::postgres::ctl::CloneProgress>);
        let outbox = self.outbox.clone();
        let wake = self.wake_reporter.clone();
        let source = from.to_string();
        let shown = tokio::spawn(async move {
            let mut logged = None;
            while rx.changed().await.is_ok() {
                let Some(p) = *rx.borrow_and_update() else { continue };
                let text = format!("{}{source}: {p}", crate::decide::report::CLONING);
                if logged != Some(p.percent / 10) {
                    logged = Some(p.percent / 10);
                    tracing::info!("{text}");
                }
                outbox.lock().unwrap_or_else(|e| e.into_inner()).report.reason = text;
                wake.notify_one();
            }
        });
        let done = self.pg.clone_from(state, from, &tx).await;
        drop(tx);
        let _ = shown.await;
        done?;
        tracing::info!("clone finished");
        Ok(())
    }

    /// pg_rewind onto the primary; on failure re-clone if configured, loudly.
    async fn rewind(&mut self, state: &ClusterState, primary: &str) -> anyhow::Result<()> {
        // A just-promoted primary's control file names its new timeline only after a
        // checkpoint; without one pg_rewind wrongly finds "no rewind required" and the
        // node stays diverged. So no CHECKPOINT, no rewind: the action fails and is retried.
        //
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
            done = tokio::time::timeout(REWIND_TIMEOUT, self.pg.checkpoint_on(state, primary)) => match done {
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
        let rewound = match self.pg.rewind(state, primary, &mut moved).await? {
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
        match rewound {
            Ok(out) => {
                self.pg.rewind_done()?;
                let summary = out.lines().last().unwrap_or("").to_string();
                tracing::info!("pg_rewind done: {summary}");
                if out.contains("no rewind required") {
                    self.noop_rewind = Some(state.generation);
                }
                Ok(())
            }
            Err(e) if self.reclone_on_rewind_failure => {
                // A source that went away mid-rewind says nothing about the local data,
                // and a clone from it would fail too: keep the data and retry the rewind.
                if let Err(why) = self.pg.answers(state, primary).await {
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
