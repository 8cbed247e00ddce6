//! The controller loop: on the Raft leader only, gather the agents' reports and
//! the lease clock, call the pure `decide::controller::decide`, and carry out
//! its one action (propose a command, or hand Raft leadership to a standby).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cluster::ClusterState;
use crate::decide::controller::{decide, ControllerAction, ControllerInput, Report};
use crate::lease::{Book, LeaseTerms};
use crate::node::{Node, ProposeError};
use crate::types::Generation;

/// On the Raft leader, re-evaluate at least this often, for the timers counted in seconds
/// (a candidate's patience, a scheduled switchover). The lease's deadline does not wait for
/// a tick: the controller wakes at the instant it passes, and at every report.
const TICK: Duration = Duration::from_millis(100);
/// Elsewhere the controller has nothing to do: it wakes when the Raft role or the applied
/// state changes, and at least this often.
const FOLLOWER_TICK: Duration = Duration::from_secs(1);
/// Reports older than this (or than a lease, if longer) are ignored: that member is Unknown.
pub const REPORT_MAX_AGE: Duration = Duration::from_millis(2_000);
/// After handing leadership away, wait this long before trying again.
const TRANSFER_COOLDOWN: Duration = Duration::from_secs(10);
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// The wall clock in milliseconds since the Unix epoch: for scheduled switchovers only,
/// never for safety.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A failure that repeats every tick is logged once per this long.
const QUIET_FOR: Duration = Duration::from_secs(10);

/// Which failures to log: a deposed leader that does not know it yet, cut off from the
/// others, fails to commit every 50 ms for as long as the cut lasts.
#[derive(Default)]
struct Quiet {
    last: Option<(String, Instant)>,
    left_out: u32,
}

impl Quiet {
    /// `Some(how many repeats were left out)` when `why` is to be logged at `now`.
    fn admit(&mut self, why: &str, now: Instant) -> Option<u32> {
        match &self.last {
            Some((was, at)) if was == why && now.duration_since(*at) < QUIET_FOR => {
                self.left_out += 1;
                None
            }
            last => {
                let same = last.as_ref().is_some_and(|(was, _)| was == why);
                let left_out = std::mem::take(&mut self.left_out);
                self.last = Some((why.to_string(), now));
                Some(if same { left_out } else { 0 })
            }
        }
    }
}

/// The controller's memory from one tick to the next, and how it turns the leader's book,
/// the applied state and the time into the decision's input. It reads no clock and does
/// no I/O: the loop below hands it `Instant::now()`, the simulation (`sim`) each node's
/// own simulated clock, so both run this code.
#[derive(Default)]
pub struct Timers {
    leading: bool,
    /// What the controller's timer runs for (`timer_key`), and since when.
    pending_since: Option<((Generation, Option<String>), Instant)>,
    /// Since when a degradable primary has lacked its quorum (`below_quorum`).
    below_since: Option<Instant>,
}

/// What the controller decides on at one instant, besides the state.
#[derive(Debug)]
pub struct Gathered {
    /// The reports younger than `REPORT_MAX_AGE` (or a lease).
    pub reports: BTreeMap<String, Report>,
    /// How long the primary has gone unrenewed, once its lease passed the deadline.
    pub lease_expired_ms: Option<u64>,
    /// When that deadline passes, given no renewal: the controller wakes then.
    pub lease_deadline: Option<Instant>,
    pub pending_ms: u64,
    pub below_quorum_ms: u64,
}

impl Timers {
    /// Whether this node leads at `now`. Returns true when a tenure begins: the lease
    /// clock restarts for whoever is primary, under the longest lease it may hold
    /// (`Book::start_tenure`), and the timers start over, as this leader cannot know when
    /// an earlier one started them.
    pub fn lead(&mut self, leader: bool, book: &Book, state: &ClusterState, now: Instant) -> bool {
        let begins = leader && !self.leading;
        if begins {
            book.start_tenure(state.primary.as_ref(), now, state.lease_ceiling_ms());
            self.pending_since = None;
        }
        if leader != self.leading {
            // A new tenure times the quorum from its own reports, not an old tenure's.
            self.below_since = None;
        }
        self.leading = leader;
        begins
    }

    /// The decision's input at `now`, on the leader: the fresh reports, the lease clock
    /// under `terms`, and the timers.
    pub fn gather(&mut self, book: &Book, state: &ClusterState, terms: &LeaseTerms, now: Instant) -> Gathered {
        let reports = book.fresh(now, REPORT_MAX_AGE.max(Duration::from_millis(state.ha.lease_ms)));
        let (lease_expired_ms, lease_deadline) = match (&state.primary, state.paused) {
            (Some(p), false) => {
                let expired = book.expired_ms(p, terms, now);
                (expired, book.expires_at(p, terms).filter(|_| expired.is_none()))
            }
            _ => (None, None),
        };
        self.pending_since = match (crate::decide::controller::timer_key(state), self.pending_since.take()) {
            (None, _) => None,
            (Some(w), Some((was, at))) if w == was => Some((was, at)),
            (Some(w), _) => Some((w, now)),
        };
        self.below_since =
            crate::decide::controller::below_quorum(state, &reports).then(|| self.below_since.unwrap_or(now));
        let since = |at: Option<Instant>| at.map_or(0, |at| now.saturating_duration_since(at).as_millis() as u64);
        Gathered {
            reports,
            lease_expired_ms,
            lease_deadline,
            pending_ms: since(self.pending_since.as_ref().map(|(_, at)| *at)),
            below_quorum_ms: since(self.below_since),
        }
    }
}

pub async fn run(node: Node, mut stop: watch::Receiver<bool>) {
    let mut was_leader = false;
    let mut last_reason = String::new();
    let mut last_transfer: Option<Instant> = None;
    let mut timers = Timers::default();
    let mut changes = node.subscribe();
    let mut raft_metrics = node.raft.server_metrics();
    let mut raft_stopped = false;
    let mut quiet = Quiet::default();
    // When the primary's lease passes the controller's deadline, unless it is renewed.
    let mut lease_deadline: Option<Instant> = None;
    loop {
        let tick = if was_leader { TICK } else { FOLLOWER_TICK };
        let wake = match lease_deadline {
            Some(at) if was_leader => at.min(Instant::now() + tick),
            _ => Instant::now() + tick,
        };
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = node.book.changed.notified() => {}
            _ = changes.changed() => {}
            // Once Raft stopped (an error), only the stop or the tick wakes it.
            r = raft_metrics.changed(), if !was_leader && !raft_stopped => raft_stopped = r.is_err(),
            _ = tokio::time::sleep_until(wake) => {}
        }
        let metrics = node.metrics();
        let leader = metrics.state == ServerState::Leader;
        let state = node.state().state;
        let now = Instant::now();
        if timers.lead(leader, &node.book, &state, now) {
            tracing::info!("Raft leader: controller active; lease clock restarted");
        }
        if leader != was_leader {
            // The view an earlier leader handed back is older than what this node's own
            // book held while it led: never fall back to it (a member that stopped would
            // look streaming again). The next report reply brings the new leader's view.
            node.local.clear_view();
        }
        was_leader = leader;
        lease_deadline = None;
        if !leader || !state.initialized {
            continue;
        }
        let terms = LeaseTerms {
            deadline_override: node
                .cfg
                .unsafe_for_testing
                .controller_deadline_ms
                .map(Duration::from_millis),
            ..LeaseTerms::of(&state)
        };
        let g = timers.gather(&node.book, &state, &terms, now);
        lease_deadline = g.lease_deadline;
        let reports = match node.cfg.unsafe_for_testing.skip_final_reports {
            true => crate::decide::controller::skip_final_reports(&state, g.reports),
            false => g.reports,
        };
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<String> = membership
            .voter_ids()
            .filter_map(|id| state.member_by_id(id).map(|m| m.name.clone()))
            .collect();
        let decision = decide(&ControllerInput {
            me: node.name(),
            state: &state,
            reports: &reports,
            lease_expired_ms: g.lease_expired_ms,
            voters: &voters,
            pending_ms: g.pending_ms,
            now_unix_ms: now_unix_ms(),
            below_quorum_ms: g.below_quorum_ms,
        });
        if decision.reason != last_reason {
            tracing::info!(generation = %state.generation, "controller: {}", decision.reason);
            last_reason = decision.reason.clone();
        }
        match decision.action {
            None => {}
            Some(ControllerAction::Propose(cmd)) => match node.propose_as_leader(cmd.clone(), PROPOSE_TIMEOUT).await {
                Ok(c) => tracing::info!(log_index = c.log_index, "controller: {cmd}: {}", c.applied.message),
                Err(ProposeError::Rejected(r)) => tracing::info!("controller: {cmd} refused: {r}"),
                Err(e) => {
                    let why = e.to_string();
                    if let Some(left_out) = quiet.admit(&why, now) {
                        let also = match left_out {
                            0 => String::new(),
                            n => format!(" ({n} more like it in the last {}s not logged)", QUIET_FOR.as_secs()),
                        };
                        tracing::warn!("controller: {cmd} not committed: {why}{also}");
                    }
                }
            },
            Some(ControllerAction::TransferLeader(to)) => {
                if last_transfer.is_some_and(|t| now.duration_since(t) < TRANSFER_COOLDOWN) {
                    continue;
                }
                last_transfer = Some(now);
                if let Some(m) = state.member(&to) {
                    if let Err(e) = node.raft.trigger().transfer_leader(m.id).await {
                        tracing::warn!("controller: leadership transfer to {to} failed: {e}");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::testing::{bootstrapped, promoting_n2};

    #[test]
    fn a_tenure_restarts_the_lease_clock_and_the_candidates_patience() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let (book, mut timers) = (Book::default(), Timers::default());
        let state = bootstrapped("n1");
        let terms = LeaseTerms::of(&state);
        let deadline = crate::lease::controller_deadline(state.ha.lease_ms).as_millis() as u64;
        assert!(!timers.lead(false, &book, &state, at(0)), "a follower has no tenure");
        assert!(timers.lead(true, &book, &state, at(100)), "a tenure begins");
        assert!(!timers.lead(true, &book, &state, at(150)), "and goes on");
        let g = timers.gather(&book, &state, &terms, at(100 + deadline));
        assert_eq!(g.lease_expired_ms, None, "the clock runs from the tenure's start");
        assert_eq!(
            g.lease_deadline,
            Some(at(100 + deadline + 1)),
            "it wakes at the deadline"
        );
        let g = timers.gather(&book, &state, &terms, at(101 + deadline));
        assert_eq!(g.lease_expired_ms, Some(1 + deadline));
        book.granted("n1", state.generation, at(3000), state.ha.lease_ms);
        assert_eq!(
            timers
                .gather(&book, &state, &terms, at(3000 + deadline))
                .lease_expired_ms,
            None
        );

        // A pending promotion is timed from when this leader first saw it, and afresh in
        // its next tenure: it cannot know when an earlier one started the timer.
        let pending = promoting_n2("quorum");
        let terms = LeaseTerms::of(&pending);
        assert_eq!(timers.gather(&book, &pending, &terms, at(5000)).pending_ms, 0);
        assert_eq!(timers.gather(&book, &pending, &terms, at(9000)).pending_ms, 4000);
        timers.lead(false, &book, &pending, at(9100));
        assert!(timers.lead(true, &book, &pending, at(12000)));
        assert_eq!(timers.gather(&book, &pending, &terms, at(12000)).pending_ms, 0);
        assert_eq!(timers.gather(&book, &pending, &terms, at(12500)).pending_ms, 500);
    }

    #[test]
    fn a_repeated_failure_is_logged_once_per_quiet_period_with_the_count_left_out() {
        let t0 = Instant::now();
        let mut q = Quiet::default();
        assert_eq!(q.admit("no leader", t0), Some(0));
        for i in 1..=199u64 {
            assert_eq!(q.admit("no leader", t0 + Duration::from_millis(50 * i)), None);
        }
        assert_eq!(q.admit("no leader", t0 + QUIET_FOR), Some(199));
        assert_eq!(q.admit("no leader", t0 + QUIET_FOR + Duration::from_millis(50)), None);
        // Another failure is logged at once, and counts afresh.
        assert_eq!(
            q.admit("rejected", t0 + QUIET_FOR + Duration::from_millis(100)),
            Some(0)
        );
        assert_eq!(
            q.admit("no leader", t0 + QUIET_FOR + Duration::from_millis(150)),
            Some(0)
        );
    }
}
