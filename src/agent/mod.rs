//! The agent: every node's loop that makes its PostgreSQL match the applied state.
//!
//! Each tick gathers its inputs (applied state, one observation of PostgreSQL,
//! the lease), calls the pure `decide::agent::decide`, and executes the actions
//! in `exec`, re-checking before each one that the generation it was decided
//! under is still the applied one. A second task (`lease_loop`) reports to the
//! Raft leader, renews the lease and fences PostgreSQL the moment a held lease
//! runs out, whatever the main loop is doing.

mod exec;
pub mod hooks;
pub mod keeper;
pub mod pgfiles;
pub mod postgres;
pub mod timers;
pub mod timing;
pub mod vip;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::decide::agent::{decide, wanted, Action, AgentInput, Decision, LeaseView, Local, Wanted};
use crate::decide::controller::{PgRole, Report};
use crate::lease::Holder;
use crate::node::report::{self, ReportClient, ReportReply, ReportRequest};
use crate::node::Node;
use crate::postgres::ctl::Controldata;
use crate::postgres::{Observation, StopMode};
use crate::types::{Generation, Timeline};
pub use pgfiles::PgNode;
use postgres::{LocalPostgres, Postgres};
use timers::elapsed_ms;
use timing::*;

/// Tick when nothing happened: once per renewal interval (`lease_ms / 4`, the lease
/// task's period), at most every `IDLE_TICK_MAX`. Each tick's observation is then at most
/// one interval old when a renewal rests on it, well inside `lease::observation_max_age_ms`
/// (half a lease); changes of the applied state wake the agent at once, whatever the tick.
/// A tick that acted is followed at once by another.
fn idle_tick(lease_ms: u64) -> Duration {
    Duration::from_millis(lease_ms / 4).clamp(IDLE_TICK_MIN, IDLE_TICK_MAX)
}

/// What the lease task sends next: the last report and whether to renew.
#[derive(Clone, Debug)]
pub(crate) struct Outbox {
    pub(crate) report: Report,
    pub(crate) renew: bool,
    /// When the observation behind `renew` started: a renewal rests on a fresh one only
    /// (`lease::observation_fresh`), so a hung PostgreSQL or a stuck agent lets it lapse.
    pub(crate) observed_at: Option<Instant>,
}

/// What the agent shares with its lease task: the lease it holds, the report to send
/// next, and the bell that makes the task send it at once.
#[derive(Clone)]
pub(crate) struct LeaseShare {
    pub(crate) holder: Holder,
    pub(crate) outbox: Arc<Mutex<Outbox>>,
    pub(crate) wake: Arc<Notify>,
}

/// What the lease task does to PostgreSQL: it fences it the moment a held lease expires.
/// A handle of its own, apart from the agent's `Postgres`, so that an agent stuck in an
/// action never delays a fence.
pub(crate) trait Fence: Send + Sync + 'static {
    fn fence(&self) -> impl std::future::Future<Output = ()> + Send;
}

impl Fence for PgNode {
    fn fence(&self) -> impl std::future::Future<Output = ()> + Send {
        fence(self)
    }
}

pub struct Agent<P: Postgres> {
    node: Node,
    /// This node's PostgreSQL, reached through the seam only.
    pg: P,
    /// `postgres.reclone_on_rewind_failure`.
    reclone_on_rewind_failure: bool,
    holder: Holder,
    outbox: Arc<Mutex<Outbox>>,
    wake_reporter: Arc<Notify>,
    /// How long PostgreSQL has been down, not streaming, or still receiving; whether it hung.
    timers: timers::Timers,
    /// Since when this cascading standby streams from the primary because its
    /// `replicatefrom` upstream did not serve it (`decide::agent::cascade_falls_back`).
    fallen_back_since: Option<Instant>,
    /// Crash gate: clients wait until a standby holds this LSN.
    gate_lsn: Option<u64>,
    last_reason: String,
    /// Consecutive failed ticks: retries back off.
    failures: u32,
    /// The restart / re-clone requests (counters in the state) already carried out.
    restarts_done: u64,
    reinits_done: u64,
    /// Since when each slot has held WAL with no consumer (`PgState::idle_slots`).
    idle_slots_since: std::collections::BTreeMap<String, Instant>,
    /// Where this node, as primary, first saw its synchronous configuration run.
    sync_seen: crate::decide::report::SyncSeen,
    /// (generation, where the stopped database's WAL ends), read once while it stays stopped.
    wal_end_read: Option<(Generation, Option<(u64, Timeline)>)>,
    /// The generation in which pg_rewind last found nothing to undo.
    noop_rewind: Option<Generation>,
    /// When the managed parameters were last checked against what PostgreSQL runs.
    managed_checked: Option<Instant>,
    /// The operator's `[hooks]`, called as the local PostgreSQL starts, stops, changes role.
    hooks: hooks::Hooks,
    /// The generation whose promotion `pre_promote` allowed.
    pre_promoted: Option<Generation>,
    /// The conninfo of the last `Reload` and when it ran: one that did not take effect
    /// (PostgreSQL rejected the file) is retried every `RELOAD_RETRY`, not every tick.
    reloaded: Option<(String, Instant)>,
}

/// Starts the agent and its lease task on `node`.
pub fn spawn(node: &Node, pg: PgNode, stop: watch::Receiver<bool>) {
    let outbox = Arc::new(Mutex::new(Outbox {
        report: Report {
            generation: Generation(0),
            pg: PgRole::Unknown,
            streaming: false,
            timeline: None,
            lsn: None,
            standby_flush: Default::default(),
            final_position: None,
            reason: "starting".into(),
            sync_applied: None,
            pending_restart: false,
        },
        renew: false,
        observed_at: None,
    }));
    // Requests made before this process started are served by its fresh start.
    let (restarts_done, reinits_done) = node.state().state.requests_of(&pg.me);
    // An earlier raftpg on this machine may have held the primary's lease: this process
    // acquires no longer than that lease runs (the fence keeper fences at its end).
    let holder = Holder::new();
    let found = keeper::LeaseFile::read(&pg.ctl.socket_dir.join("lease"));
    if let Some(expiry_ns) = keeper::inherited_expiry(&found, keeper::boot_id().as_deref()) {
        let left = Duration::from_nanos(expiry_ns.saturating_sub(keeper::monotonic_ns()));
        holder.inherit(node.state().state.generation, Instant::now() + left);
    }
    let agent = Agent {
        node: node.clone(),
        pg: LocalPostgres::new(pg.clone()),
        reclone_on_rewind_failure: pg.reclone_on_rewind_failure,
        holder,
        outbox,
        wake_reporter: Arc::new(Notify::new()),
        timers: timers::Timers::default(),
        fallen_back_since: None,
        gate_lsn: None,
        last_reason: String::new(),
        failures: 0,
        restarts_done,
        reinits_done,
        idle_slots_since: Default::default(),
        sync_seen: None,
        wal_end_read: None,
        noop_rewind: None,
        managed_checked: None,
        hooks: hooks::Hooks::start(&node.cfg.hooks, &node.cfg.cluster.name, &node.cfg.node.name),
        pre_promoted: None,
        reloaded: None,
    };
    let keeper = match node.cfg.unsafe_for_testing.no_fence_keeper {
        true => None,
        false => match keeper::Keeper::spawn(
            &pg.ctl.socket_dir.join("lease"),
            &pg.ctl.data_dir,
            node.cfg.vip.as_ref(),
        ) {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::error!("cannot start the fence keeper: {e}; PostgreSQL is fenced only while raftpg runs");
                None
            }
        },
    };
    let share = LeaseShare {
        holder: agent.holder.clone(),
        outbox: agent.outbox.clone(),
        wake: agent.wake_reporter.clone(),
    };
    node.spawn(
        "lease",
        lease_loop(node.clone(), pg.me.clone(), pg, keeper, share, stop.clone()),
    );
    if let Some(v) = node.cfg.vip.clone() {
        node.spawn("vip", vip::run(node.clone(), agent.holder.clone(), v, stop.clone()));
    }
    node.spawn("agent", agent.run(stop));
}

impl<P: Postgres> Agent<P> {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut changes = self.node.subscribe();
        let mut delay = Duration::ZERO;
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                _ = changes.changed() => {}
                _ = tokio::time::sleep(delay) => {}
            }
            let idle = idle_tick(changes.borrow().state.ha.lease_ms);
            delay = match self.tick().await {
                Ok(acted) => {
                    self.failures = 0;
                    if acted {
                        BUSY_TICK
                    } else {
                        idle
                    }
                }
                // A failing action is retried after 0.5, 1, 2, 4, then every 8 s; the
                // primary's sooner, because only a fresh observation renews its lease: a
                // restart in place that failed once (a killed postmaster not reaped yet)
                // must not cost the lease while it waits.
                Err(()) => {
                    self.failures = (self.failures + 1).min(5);
                    let backoff = RETRY_BASE * 2u32.pow(self.failures);
                    let state = self.node.state().state;
                    if wanted(&state, self.pg.me()) == Wanted::Primary {
                        let fresh = crate::lease::observation_max_age_ms(state.ha.lease_ms) / 2;
                        backoff.min(Duration::from_millis(fresh.max(50)))
                    } else {
                        backoff
                    }
                }
            };
        }
        if self.node.leaves_postgres_running() {
            tracing::info!("raftpg restarts: PostgreSQL keeps running");
        } else {
            self.stop_postgres().await;
        }
    }

    /// One observe → decide → execute round: Ok(true) if it acted, Err if an action failed.
    async fn tick(&mut self) -> Result<bool, ()> {
        let applied = self.node.state();
        let state = applied.state.clone();
        let observed_at = Instant::now();
        let local = self.observe_local().await;
        let now = Instant::now();
        let role = wanted(&state, self.pg.me());
        if role != Wanted::Primary {
            self.holder.clear();
        }
        self.track_times(&role, &local, now);
        // Only a primary holds or acquires a lease (the table reads it for no other role);
        // starting the acquiring clock for others would arm their fence keeper.
        let lease = match role {
            Wanted::Primary => self.holder.view(state.generation, now, state.ha.lease_ms),
            _ => LeaseView::Expired,
        };
        if role == Wanted::Primary {
            self.timers.primary(&local, lease, state.generation);
        }
        self.track_cascade(&state, now);
        let upstream = self.upstream(&state);
        let requested = state.requests_of(self.pg.me());
        // A stopped PostgreSQL writes no WAL: read its end once per generation, not every tick.
        // After a failed pg_rewind the WAL on disk may be part the source's: not reported.
        let rewinding = self.pg.rewinding();
        // A candidate reads it too: a database whose WAL stops short of its minimum recovery
        // point declines (`Controldata::short_of`); the read of its final report is reused.
        let wal_end = match (&role, &local) {
            (Wanted::Fenced | Wanted::Candidate, Local::Stopped { control: Some(c) })
                if !rewinding && (c.was_standby() || c.was_primary()) =>
            {
                match self.wal_end_read {
                    Some((g, end)) if g == state.generation => end,
                    _ => {
                        let end = self.wal_end(c).await;
                        self.wal_end_read = Some((state.generation, end));
                        end
                    }
                }
            }
            _ => {
                self.wal_end_read = None;
                None
            }
        };
        let disk_full = match &local {
            Local::Stopped { control } => self.pg.no_room(control.as_ref().and_then(|c| c.wal_segment_size)),
            Local::NoData => self.pg.no_room(None),
            _ => None,
        };
        let idle_ms = self
            .idle_slots_since
            .iter()
            .map(|(name, since)| (name.clone(), elapsed_ms(Some(*since), now)))
            .collect();
        let stale_slots = crate::decide::agent::stale_slots(&state, &idle_ms);
        // A standby that runs but refuses connections until it is consistent: its control
        // file says where recovery must reach, which may be off the primary's line.
        let inconsistent = match (&role, &local) {
            (Wanted::Standby(_), Local::Unknown(e)) if e.contains("not yet accepting connections") => {
                self.pg.controldata().await.ok()
            }
            _ => None,
        };
        let decision = decide(&AgentInput {
            me: self.pg.me(),
            state: &state,
            local: &local,
            lease,
            down_ms: self.timers.down_ms(now),
            not_streaming_ms: self.timers.not_streaming_ms(now),
            gate_lsn: self.gate_lsn,
            upstream: upstream.as_ref(),
            restart_requested: requested.0 > self.restarts_done,
            reinit_requested: requested.1 > self.reinits_done,
            fenced_hung: self.timers.fenced_hung(state.generation),
            wal_end,
            receiver_lingering_ms: self.timers.lingering_ms(now),
            stale_slots: &stale_slots,
            inconsistent: inconsistent.as_ref(),
            disk_full: disk_full.as_deref(),
            foreign_conf: role == Wanted::Bootstrap
                && state.adopt.as_deref() == Some(self.pg.me())
                && self.pg.conf_is_foreign(),
            adopt_configured: self.node.cfg.cluster.adopt.as_deref(),
        });
        self.publish(&state, &local, &decision, observed_at);
        let mut acted = false;
        for action in &decision.actions {
            let current = self.node.state().state;
            if current.generation != state.generation || wanted(&current, self.pg.me()) != role {
                tracing::info!(
                    decided = %state.generation,
                    now = %current.generation,
                    "dropping {action:?}: the applied state moved on since it was decided"
                );
                break;
            }
            if matches!(role, Wanted::Primary) && self.needs_lease(action) {
                let view = self.holder.view(state.generation, Instant::now(), state.ha.lease_ms);
                if view != LeaseView::Held && !current.paused {
                    tracing::warn!("dropping {action:?}: the lease is not held");
                    break;
                }
            }
            match self.execute(action, &state).await {
                Ok(did) => {
                    acted |= did;
                    // A standby just (re)started gets a whole DIVERGED_AFTER_MS to stream
                    // before it is judged diverged again.
                    if matches!(action, Action::StartStandby { .. }) {
                        self.timers.streaming_starts_over();
                    }
                }
                Err(e) => {
                    tracing::error!("{action:?} failed: {e:#}");
                    return Err(());
                }
            }
        }
        Ok(acted)
    }

    /// Where this node streams from under `state` (`PgNode::upstream`), given whether it
    /// fell back from its cascade source to the primary: the decision's `upstream`, which
    /// every action that writes `primary_conninfo` carries to the executor.
    fn upstream(&self, state: &crate::cluster::ClusterState) -> Option<crate::postgres::conf::Upstream> {
        self.pg.upstream(state, self.fallen_back_since.is_some())
    }

    fn needs_lease(&self, action: &Action) -> bool {
        matches!(
            action,
            Action::StartPrimary { .. } | Action::Promote { .. } | Action::OpenGate
        )
    }

    fn track_times(&mut self, role: &Wanted, local: &Local, now: Instant) {
        self.timers.observed(role, local, now);
        if !matches!(local, Local::Primary(_)) {
            self.gate_lsn = None;
        }
        match local {
            Local::Primary(pg) | Local::Standby(pg) => {
                self.idle_slots_since.retain(|name, _| pg.idle_slots.contains(name));
                for name in &pg.idle_slots {
                    self.idle_slots_since.entry(name.clone()).or_insert(now);
                }
            }
            _ => self.idle_slots_since.clear(),
        }
    }

    /// A cascading standby falls back to the primary when its upstream does not serve it,
    /// and tries its upstream again later (`decide::agent::cascade_falls_back`).
    fn track_cascade(&mut self, state: &crate::cluster::ClusterState, now: Instant) {
        let cascading = state
            .source_of(self.pg.me())
            .is_some_and(|s| Some(s) != state.primary_name());
        let fallen_back_ms = self
            .fallen_back_since
            .map(|t| now.saturating_duration_since(t).as_millis() as u64);
        let falls_back =
            crate::decide::agent::cascade_falls_back(cascading, fallen_back_ms, self.timers.not_streaming_ms(now));
        if falls_back == self.fallen_back_since.is_some() {
            return;
        }
        let upstream = state.replicates_from(self.pg.me()).unwrap_or("");
        if falls_back {
            tracing::warn!(
                "not streaming from {upstream} (my replicatefrom) for {} ms: streaming from the primary instead",
                crate::decide::agent::CASCADE_FALLBACK_MS
            );
            self.fallen_back_since = Some(now);
        } else {
            if cascading {
                tracing::info!("trying my replicatefrom upstream {upstream} again");
            }
            self.fallen_back_since = None;
        }
        // The new source gets its own time to stream.
        self.timers.streaming_starts_over();
    }

    /// Logs a changed reason and hands the report to the lease task.
    fn publish(&mut self, state: &crate::cluster::ClusterState, local: &Local, d: &Decision, observed_at: Instant) {
        if d.reason != self.last_reason {
            tracing::info!(generation = %state.generation, "{}", d.reason);
            self.last_reason = d.reason.clone();
        }
        let report = crate::decide::report::derive(state, local, d, &mut self.sync_seen);
        self.hooks.observe(report.pg, state.generation, report.timeline);
        self.node.local.set_own(report.clone(), self.gate_lsn.is_some());
        let mut out = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        let urgent = crate::decide::report::urgent(
            (&out.report, out.renew),
            &report,
            d.renew_lease,
            state.pending.is_some(),
        );
        out.report = report;
        out.renew = d.renew_lease;
        out.observed_at = Some(observed_at);
        drop(out);
        if urgent {
            self.wake_reporter.notify_one();
        }
    }

    async fn observe_local(&mut self) -> Local {
        // A partial initdb (raftpg died during it) is no database: it is made again, or,
        // on a member that does not bootstrap, replaced by a clone.
        if !self.pg.has_database() {
            self.pg.disconnect();
            return Local::NoData;
        }
        let observed = self.pg.observe().await;
        if matches!(observed, Observation::Up(_))
            && self.managed_checked.is_none_or(|t| t.elapsed() >= MANAGED_CHECK_EVERY)
        {
            self.managed_checked = Some(Instant::now());
            self.restore_managed().await;
        }
        match observed {
            Observation::Up(s) if s.in_recovery => Local::Standby(s),
            Observation::Up(s) => Local::Primary(s),
            Observation::Unknown(e) if self.pg.running() => Local::Unknown(e),
            Observation::Unknown(_) => Local::Stopped {
                control: self.pg.controldata().await.ok(),
            },
        }
    }

    /// Steady-state check that PostgreSQL runs what raftpg manages: a value set elsewhere
    /// (`ALTER SYSTEM` writes postgresql.auto.conf, which PostgreSQL reads after raftpg's
    /// postgresql.conf) could, e.g., empty `synchronous_standby_names` and let a failover
    /// lose acknowledged writes. Such a setting is logged as an error and reset.
    async fn restore_managed(&mut self) {
        let found = match tokio::time::timeout(OBSERVE_TIMEOUT, self.pg.overridden_managed()).await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => return tracing::debug!("cannot check the managed parameters: {e}"),
            Err(_) => return tracing::debug!("checking the managed parameters timed out"),
        };
        if found.is_empty() {
            return;
        }
        for (name, value, file) in &found {
            tracing::error!(
                parameter = %name, %value, %file,
                "{name} is set in {file}, overriding the value raftpg manages: resetting it (ALTER SYSTEM RESET) \
                 and reloading; set PostgreSQL parameters with raftpg ctl config set or [postgres.parameters]"
            );
        }
        let names: Vec<String> = found.into_iter().map(|(n, _, _)| n).collect();
        match tokio::time::timeout(OBSERVE_TIMEOUT, self.pg.reset_parameters(&names)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("cannot reset {}: {e}", names.join(", ")),
            Err(_) => tracing::error!("resetting {} timed out", names.join(", ")),
        }
    }

    /// Where the stopped standby's WAL ends on disk, for its final report.
    async fn wal_end(&self, control: &Controldata) -> Option<(u64, Timeline)> {
        let seg_size = control.wal_segment_size?;
        match self.pg.wal_end(seg_size).await {
            Ok(end) => end,
            Err(e) => {
                tracing::warn!("cannot read where my WAL ends on disk ({e}): starting in recovery to report instead");
                None
            }
        }
    }

    async fn stop_postgres(&self) {
        if self.pg.running() {
            tracing::info!("stopping PostgreSQL (fast)");
            if let Err(e) = self.pg.stop(StopMode::Fast).await {
                tracing::error!("PostgreSQL did not stop cleanly: {e}");
            }
        }
    }
}

/// Stops PostgreSQL at once: an immediate shutdown, SIGKILL for whatever is still
/// alive (a frozen postmaster or backends) after `FENCE_GRACE`.
pub async fn fence(pg: &PgNode) {
    use crate::postgres::kill::{stop_now, Stopped, FENCE_GRACE};
    let data_dir = pg.ctl.data_dir.clone();
    match tokio::task::spawn_blocking(move || stop_now(&data_dir, FENCE_GRACE)).await {
        Ok(Stopped::Killed { processes }) => {
            tracing::error!("PostgreSQL did not stop on SIGQUIT within {FENCE_GRACE:?}: killed {processes} processes")
        }
        Ok(_) => {}
        Err(e) => tracing::error!("the fence task failed: {e}"),
    }
}

/// Reports to the Raft leader every lease/4 (or at once when asked), renews the
/// lease, and fences PostgreSQL the moment a held lease expires.
/// `keeper` is the fence keeper it keeps armed with the lease (none in tests without one).
pub(crate) async fn lease_loop(
    node: Node,
    me: String,
    pg: impl Fence,
    mut keeper: Option<keeper::Keeper>,
    share: LeaseShare,
    mut stop: watch::Receiver<bool>,
) {
    let LeaseShare { holder, outbox, wake } = share;
    let mut client = ReportClient::new(node.wire.clone());
    let mut task = timers::LeaseTask::default();
    let mut checked_lease_ms = 0;
    loop {
        let known_leader = node.metrics().current_leader;
        let state = node.state().state;
        let lease_ms = state.ha.lease_ms;
        if lease_ms != checked_lease_ms {
            checked_lease_ms = lease_ms;
            if let Some(why) = crate::lease::election_outlasts_lease(lease_ms, node.cfg.raft.election_timeout_max_ms) {
                tracing::warn!("{why}");
            }
        }
        let interval = timers::LeaseTask::interval(lease_ms);
        let expiry = task.guarded(holder.guarded_until(state.generation, lease_ms));
        let far = Instant::now() + Duration::from_secs(3600);
        if let Some(k) = keeper.as_mut() {
            k.set(expiry, state.paused);
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => {
                if let Some(k) = keeper.take() {
                    if node.leaves_postgres_running() {
                        k.leave_armed();
                    } else {
                        k.stop();
                    }
                }
                return;
            }
            _ = wake.notified() => task.send_now(),
            // A new Raft leader gets the renewal at once: an election must fit in the lease.
            _ = leader_moves_from(&node, known_leader) => task.send_now(),
            _ = tokio::time::sleep_until(task.send_at(Instant::now())) => {}
            _ = tokio::time::sleep_until(expiry.unwrap_or(far)), if expiry.is_some() => {}
        }
        // Once per expiry, paused or not; a paused cluster is not fenced.
        if task.expired(expiry, Instant::now()) && !node.state().state.paused {
            tracing::error!("lease expired without renewal: fencing PostgreSQL now");
            pg.fence().await;
        }
        if task.due(Instant::now()) {
            let (report, renew) = {
                let o = outbox.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                let renew = timers::renews(o.renew, o.observed_at, now, lease_ms);
                if o.renew && !renew {
                    tracing::warn!(
                        "not renewing the lease: the last observation of PostgreSQL is {:?} old (limit {} ms)",
                        o.observed_at.map(|t| now.saturating_duration_since(t)),
                        crate::lease::observation_max_age_ms(lease_ms)
                    );
                }
                (o.report.clone(), renew)
            };
            let until_expiry = holder
                .expiry(report.generation)
                .map_or(interval, |e| e.saturating_duration_since(Instant::now()));
            let timeout = interval.min(until_expiry).max(Duration::from_millis(50));
            let req = ReportRequest {
                node: me.clone(),
                report,
                renew,
            };
            let delivered = send_report(&node, &mut client, &holder, req, timeout, lease_ms).await;
            task.sent(delivered, Instant::now(), lease_ms);
        }
    }
}

/// Resolves once this node's Raft leader is no longer `leader` (never if Raft stopped).
async fn leader_moves_from(node: &Node, leader: Option<u64>) {
    let mut rx = node.raft.server_metrics();
    loop {
        if rx.borrow_watched().current_leader != leader {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Hands `req` to the Raft leader: handled here when this node leads, sent otherwise.
pub(super) async fn ask_leader(
    node: &Node,
    client: &mut ReportClient,
    req: &ReportRequest,
    timeout: Duration,
) -> Result<ReportReply, String> {
    let Some(leader) = node.metrics().current_leader else {
        return Err("no Raft leader is known".to_string());
    };
    if leader == node.id() {
        return Ok(report::handle(&node.raft, &node.sm, &node.book, req.clone()).await);
    }
    match node.state().state.member_by_id(leader) {
        // An isolated leader never answers: give up on it as soon as another is known.
        Some(m) => tokio::select! {
            r = client.send(&m.raft_addr, req, timeout) => r,
            _ = leader_moves_from(node, Some(leader)) => Err("the Raft leader changed".to_string()),
        },
        None => Err(format!("Raft leader {leader} is not a known member")),
    }
}

/// Sends one report (and renewal) to the Raft leader: true if a leader accepted it.
async fn send_report(
    node: &Node,
    client: &mut ReportClient,
    holder: &Holder,
    req: ReportRequest,
    timeout: Duration,
    lease_ms: u64,
) -> bool {
    let sent = Instant::now();
    if node.metrics().current_leader.is_none() {
        return false;
    }
    let delivered = match ask_leader(node, client, &req, timeout).await {
        Ok(ReportReply::Accepted { lease_granted, view }) => {
            if lease_granted {
                // No longer than the leader counts it, should it not have applied the same
                // `lease_ms` as this node yet.
                holder.granted_by(req.report.generation, sent, lease_ms, view.lease_remaining_ms);
            }
            node.local.set_view(view);
            // A renewal a new leader could not grant yet (its leadership unconfirmed) is retried soon.
            lease_granted || !req.renew
        }
        Ok(ReportReply::NotLeader { .. }) => false,
        Err(e) => {
            tracing::debug!("report to the Raft leader failed: {e}");
            false
        }
    };
    node.local
        .set_lease(holder.expiry(req.report.generation).map(|e| (req.report.generation, e)));
    node.local.set_longest_renewal_gap(holder.longest_gap());
    delivered
}
