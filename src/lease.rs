//! The primary's lease, on monotonic clocks only (DESIGN §4).
//!
//! Two sides. `Holder` lives in the primary's agent: a renewal sent at `t`
//! and granted makes the lease run until `t + lease`, on this process's clock.
//! `Book` lives on the Raft leader: it grants renewals only after confirming
//! its own leadership, keeps the agents' last reports, and declares the lease
//! expired only `lease * (1 + drift) + margin` after the last grant it made,
//! or after the start of its own tenure, whichever is later. A grant made by
//! an old leader happened before a new leader could be elected (the quorum
//! that confirmed it overlaps the one that elected the new leader), so the
//! new leader's clock, started at its election, is always later.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::cluster::Primary;
use crate::decide::agent::LeaseView;
use crate::decide::controller::Report;
use crate::types::Generation;

/// Clock-rate difference tolerated between nodes, in thousandths.
pub const DRIFT_PERMILLE: u64 = 100;
/// Added to the controller's deadline for scheduling delays and the fence itself.
pub const MARGIN_MS: u64 = 200;

/// The oldest observation of PostgreSQL a renewal may rest on: half a lease. A primary
/// that hangs right after a good observation is then fenced within
/// `lease_ms / 2 + lease_ms` on its own clock (by the expiry of the last renewal).
pub fn observation_max_age_ms(lease_ms: u64) -> u64 {
    lease_ms / 2
}

/// Whether an observation `age` old may still back a renewal.
pub fn observation_fresh(age: Duration, lease_ms: u64) -> bool {
    age.as_millis() <= u128::from(observation_max_age_ms(lease_ms))
}

/// How long after its last renewal the controller may treat the lease as expired.
pub fn controller_deadline(lease_ms: u64) -> Duration {
    Duration::from_millis(lease_ms + lease_ms * DRIFT_PERMILLE / 1000 + MARGIN_MS)
}

/// Why a Raft election may not fit inside the primary's lease, or `None` when it does.
/// A renewal comes every `lease_ms / 4`, so at least three quarters of the lease are left
/// when the Raft leader is lost; openraft elects a new one after the old leader's lease
/// (`election_timeout_max`) plus an election timeout (at most the same again).
pub fn election_outlasts_lease(lease_ms: u64, election_timeout_max_ms: u64) -> Option<String> {
    let election = 2 * election_timeout_max_ms;
    let left = lease_ms * 3 / 4;
    (election >= left).then(|| {
        format!(
            "a Raft election can take {election} ms (2 x raft.election_timeout_max_ms) but the primary has only \
             {left} ms of its {lease_ms} ms lease left when the Raft leader is lost: losing the Raft leader will \
             restart the primary's PostgreSQL; lower raft.election_timeout_max_ms or raise ha.lease_ms"
        )
    })
}

/// The agent's side: until when this node may act as primary.
#[derive(Clone)]
pub struct Holder(Arc<Mutex<HolderInner>>);

struct HolderInner {
    /// (generation, since): when this node first saw itself primary of that generation.
    acquiring: Option<(Generation, Instant)>,
    /// (generation, expiry) of the last granted renewal.
    lease: Option<(Generation, Instant)>,
    /// (generation, expiry) of the lease an earlier raftpg on this machine held, when this
    /// one started: acquiring never outlasts it (the controller's clock runs from that
    /// process's last grant, not from this start).
    inherited: Option<(Generation, Instant)>,
    /// The longest time between the sending of two consecutive granted renewals of one
    /// generation since this process started or the lease's length changed: how close a
    /// busy machine came to the lease.
    longest_gap: Duration,
    /// The `lease_ms` that `longest_gap` was measured under.
    gap_lease_ms: u64,
    /// (generation, sent) of the latest-sent granted renewal.
    last_sent: Option<(Generation, Instant)>,
}

impl Holder {
    pub fn new() -> Holder {
        Holder(Arc::new(Mutex::new(HolderInner {
            acquiring: None,
            lease: None,
            inherited: None,
            longest_gap: Duration::ZERO,
            gap_lease_ms: 0,
            last_sent: None,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HolderInner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This process started while an earlier one's lease for `generation` ran until
    /// `expiry` (the fence keeper's file): acquiring ends there at the latest.
    pub fn inherit(&self, generation: Generation, expiry: Instant) {
        self.lock().inherited = Some((generation, expiry));
    }

    /// A renewal sent at `sent` was granted under `generation`.
    pub fn granted(&self, generation: Generation, sent: Instant, lease_ms: u64) {
        self.granted_by(generation, sent, lease_ms, None);
    }

    /// A renewal sent at `sent` was granted under `generation` by a Raft leader that counts
    /// it as `leader_ms` long (`ClusterView::lease_remaining_ms` of its reply, when it says):
    /// the lease lasts the shorter of that and this node's `lease_ms`. The two differ while
    /// a change of `lease_ms` is applied on one node and not yet on the other; a holder
    /// that counted a longer lease than the leader could outlive the leader's deadline.
    pub fn granted_by(&self, generation: Generation, sent: Instant, lease_ms: u64, leader_ms: Option<u64>) {
        let length = leader_ms.map_or(lease_ms, |l| l.min(lease_ms));
        let expiry = sent + Duration::from_millis(length);
        let mut h = self.lock();
        if h.gap_lease_ms != lease_ms {
            // A gap means something only against the lease it was renewing: once
            // `lease_ms` changes (`ctl config set`), the longest gap starts over, or the
            // renewals of a 2 s lease would be measured against a 500 ms one.
            h.gap_lease_ms = lease_ms;
            h.longest_gap = Duration::ZERO;
        } else if let Some((_, previous)) = h.last_sent.filter(|(g, _)| *g == generation) {
            h.longest_gap = h.longest_gap.max(sent.saturating_duration_since(previous));
        }
        if h.last_sent.is_none_or(|(g, t)| g != generation || t < sent) {
            h.last_sent = Some((generation, sent));
        }
        let keep = h.lease.is_some_and(|(g, e)| g == generation && e >= expiry);
        if !keep {
            h.lease = Some((generation, expiry));
        }
    }

    /// The lease for `generation` at `now`. A node that has just become primary of
    /// `generation` (or just started) is `Acquiring` for one lease period: the
    /// controller's clock for it started no earlier, and runs longer.
    pub fn view(&self, generation: Generation, now: Instant, lease_ms: u64) -> LeaseView {
        let mut h = self.lock();
        if h.acquiring.is_none_or(|(g, _)| g != generation) {
            h.acquiring = Some((generation, now));
        }
        let until = h.acquiring_until(generation, lease_ms).unwrap_or(now);
        crate::decide::report::lease_view(h.lease, generation, now, until)
    }

    /// Expiry of the lease for `generation`, if one was granted.
    pub fn expiry(&self, generation: Generation) -> Option<Instant> {
        self.lock().lease.filter(|(g, _)| *g == generation).map(|(_, e)| e)
    }

    /// Until when PostgreSQL may run as primary of `generation`: the expiry of the last
    /// granted renewal, or, before the first grant, the end of the acquiring period (the
    /// agent lets a primary run while it acquires, so the fence keeper must guard that too:
    /// otherwise a raftpg that died before its first grant left PostgreSQL unguarded).
    pub fn guarded_until(&self, generation: Generation, lease_ms: u64) -> Option<Instant> {
        let h = self.lock();
        match h.lease {
            Some((g, e)) if g == generation => Some(e),
            _ => h.acquiring_until(generation, lease_ms),
        }
    }

    /// The longest time between two consecutive renewals of one generation so far.
    pub fn longest_gap(&self) -> Duration {
        self.lock().longest_gap
    }

    /// Forgets the lease (the node is no longer the primary).
    pub fn clear(&self) {
        let mut h = self.lock();
        h.lease = None;
        h.acquiring = None;
        h.last_sent = None;
    }
}

impl HolderInner {
    fn acquiring_until(&self, generation: Generation, lease_ms: u64) -> Option<Instant> {
        crate::decide::report::acquiring_until(self.acquiring, self.inherited, generation, |since| {
            since + Duration::from_millis(lease_ms)
        })
    }
}

impl Default for Holder {
    fn default() -> Self {
        Holder::new()
    }
}

/// The Raft leader's side: reports, grants and the controller's lease clock.
#[derive(Clone, Default)]
pub struct Book {
    inner: Arc<Mutex<BookInner>>,
    /// Woken by every report, so the controller reacts to final positions at once.
    pub changed: Arc<Notify>,
}

#[derive(Default)]
struct BookInner {
    reports: BTreeMap<String, (Instant, Report)>,
    clock: Option<Clock>,
}

/// The controller's lease clock for one primary.
struct Clock {
    node: String,
    generation: Generation,
    /// The last renewal granted, or the start of the clock.
    at: Instant,
    /// The `lease_ms` of that renewal (or the ceiling the clock started under).
    lease_ms: u64,
    /// No earlier than this, whatever `lease_ms` is now: every renewal granted so far
    /// counted under the lease of its time, plus the controller's margins
    /// ([`controller_deadline`]). A shorter `lease_ms` set since does not shorten them.
    floor: Instant,
}

/// The lengths the controller times a primary's lease with.
#[derive(Clone, Copy, Debug)]
pub struct LeaseTerms {
    /// `lease_ms` now: a renewal granted now runs this long.
    pub lease_ms: u64,
    /// The longest lease the primary may hold (`ClusterState::lease_ceiling_ms`): a clock
    /// that starts without a grant (a new tenure, a new primary) starts under it.
    pub ceiling_ms: u64,
    /// `unsafe_for_testing.controller_deadline_ms`: this deadline after the last grant,
    /// and nothing else (the canaries).
    pub deadline_override: Option<Duration>,
}

impl LeaseTerms {
    pub fn of(state: &crate::cluster::ClusterState) -> LeaseTerms {
        LeaseTerms {
            lease_ms: state.ha.lease_ms,
            ceiling_ms: state.lease_ceiling_ms(),
            deadline_override: None,
        }
    }

    /// When a clock at its last grant `at` (with `floor`) passes its deadline.
    fn due(&self, at: Instant, floor: Instant) -> Instant {
        match self.deadline_override {
            Some(d) => at + d,
            None => (at + controller_deadline(self.lease_ms)).max(floor),
        }
    }
}

impl Clock {
    fn start(primary: &Primary, now: Instant, ceiling_ms: u64) -> Clock {
        Clock {
            node: primary.node.clone(),
            generation: primary.generation,
            at: now,
            lease_ms: ceiling_ms,
            floor: now + controller_deadline(ceiling_ms),
        }
    }
}

impl BookInner {
    /// `primary`'s clock, when the clock runs for it.
    fn clocked(&self, primary: &Primary) -> Option<&Clock> {
        self.clock
            .as_ref()
            .filter(|c| c.node == primary.node && c.generation == primary.generation)
    }
}

impl Book {
    fn lock(&self) -> std::sync::MutexGuard<'_, BookInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `node`'s report, received at `now`.
    pub fn record(&self, node: &str, report: Report, now: Instant) {
        self.lock().reports.insert(node.to_string(), (now, report));
        self.changed.notify_one();
    }

    /// The answer to `node`'s renewal under `generation` at `now`, once this leader has
    /// confirmed its leadership: granted by the state's rule
    /// (`decide::report::grants_renewal`); the recorded primary's renewal also moves its
    /// clock (`renews_primary`). The view tells the holder how long this leader counts the
    /// lease (`Holder::granted_by`).
    pub fn renew(
        &self,
        state: &crate::cluster::ClusterState,
        node: &str,
        generation: Generation,
        now: Instant,
    ) -> (bool, crate::decide::view::ClusterView) {
        let granted = crate::decide::report::grants_renewal(state, node, generation);
        if crate::decide::report::renews_primary(state, node, generation) {
            self.granted(node, generation, now, state.ha.lease_ms);
        }
        (granted, self.view(state, now))
    }

    /// Reports younger than `max_age`.
    pub fn fresh(&self, now: Instant, max_age: Duration) -> BTreeMap<String, Report> {
        self.lock()
            .reports
            .iter()
            .filter(|(_, (at, _))| now.saturating_duration_since(*at) <= max_age)
            .map(|(n, (_, r))| (n.clone(), r.clone()))
            .collect()
    }

    /// Every report with its age, and the primary's lease as this leader counts it.
    pub fn view(&self, state: &crate::cluster::ClusterState, now: Instant) -> crate::decide::view::ClusterView {
        let b = self.lock();
        let reports = b
            .reports
            .iter()
            .map(|(n, (at, r))| {
                (
                    n.clone(),
                    (now.saturating_duration_since(*at).as_millis() as u64, r.clone()),
                )
            })
            .collect();
        let lease_remaining_ms = match (&b.clock, &state.primary) {
            (Some(c), Some(p)) if c.node == p.node && c.generation == p.generation && state.pending.is_none() => Some(
                c.lease_ms
                    .saturating_sub(now.saturating_duration_since(c.at).as_millis() as u64),
            ),
            _ => None,
        };
        crate::decide::view::ClusterView {
            reports,
            lease_remaining_ms,
        }
    }

    /// This node just became Raft leader: the clock restarts now for whoever is primary,
    /// under the longest lease it may hold (`ceiling_ms`): an earlier leader's last grant,
    /// of a length this one cannot know, was no later than now.
    pub fn start_tenure(&self, primary: Option<&Primary>, now: Instant, ceiling_ms: u64) {
        self.lock().clock = primary.map(|p| Clock::start(p, now, ceiling_ms));
    }

    /// A renewal of `node` under `generation` was granted at `now`, for `lease_ms` (the
    /// leader's, as the reply's view tells the holder).
    pub fn granted(&self, node: &str, generation: Generation, now: Instant, lease_ms: u64) {
        let mut b = self.lock();
        let floor = now + controller_deadline(lease_ms);
        match &mut b.clock {
            Some(c) if c.node == node && c.generation == generation => {
                if now >= c.at {
                    c.at = now;
                    c.lease_ms = lease_ms;
                }
                c.floor = c.floor.max(floor);
            }
            _ => {
                b.clock = Some(Clock {
                    node: node.to_string(),
                    generation,
                    at: now,
                    lease_ms,
                    floor,
                })
            }
        }
    }

    /// How long since the primary's last renewal, once the controller's deadline for it
    /// has passed: [`controller_deadline`] of `lease_ms` after the last grant, and no
    /// earlier than any grant's own (`Clock::floor`).
    pub fn expired_ms(&self, primary: &Primary, terms: &LeaseTerms, now: Instant) -> Option<u64> {
        let mut b = self.lock();
        let (at, floor) = match b.clocked(primary) {
            Some(c) => (c.at, c.floor),
            // A primary this leader has not clocked yet (just recorded): its clock starts now.
            None => {
                let c = Clock::start(primary, now, terms.ceiling_ms);
                let started = (c.at, c.floor);
                b.clock = Some(c);
                started
            }
        };
        (now > terms.due(at, floor)).then_some(now.saturating_duration_since(at).as_millis() as u64)
    }

    /// When `expired_ms` first says expired for the primary it clocks, given no renewal
    /// before then: the controller wakes at that instant rather than at its next tick.
    pub fn expires_at(&self, primary: &Primary, terms: &LeaseTerms) -> Option<Instant> {
        self.lock()
            .clocked(primary)
            .map(|c| terms.due(c.at, c.floor) + Duration::from_millis(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Timeline;

    fn primary(node: &str, generation: Generation) -> Primary {
        Primary {
            node: node.into(),
            generation,
            timeline: Some(Timeline(1)),
        }
    }

    #[test]
    fn an_election_must_fit_in_the_lease_left_at_a_renewal() {
        assert_eq!(election_outlasts_lease(2_000, 500), None, "the defaults fit");
        assert_eq!(election_outlasts_lease(2_000, 749), None);
        let why = election_outlasts_lease(2_000, 750).expect("1.5 s of election in 1.5 s of lease");
        assert!(why.contains("raft.election_timeout_max_ms"), "{why}");
        assert!(
            election_outlasts_lease(2_000, 1_000).is_some(),
            "the old defaults did not fit"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn holder_expires_lease_after_send_time_plus_lease() {
        let h = Holder::new();
        assert_eq!(h.view(Generation(1), Instant::now(), 2000), LeaseView::Acquiring);
        let sent = Instant::now();
        tokio::time::advance(Duration::from_millis(300)).await;
        h.granted(Generation(1), sent, 2000);
        assert_eq!(h.view(Generation(1), Instant::now(), 2000), LeaseView::Held);
        assert_eq!(
            h.view(Generation(2), Instant::now(), 2000),
            LeaseView::Acquiring,
            "another generation holds nothing"
        );
        tokio::time::advance(Duration::from_millis(1700)).await;
        assert_eq!(
            h.view(Generation(1), Instant::now(), 2000),
            LeaseView::Expired,
            "counted from the send time"
        );
        assert_eq!(
            h.view(Generation(2), Instant::now(), 2000),
            LeaseView::Acquiring,
            "a new generation starts acquiring"
        );
        let acquiring_end = h.guarded_until(Generation(2), 2000).expect("acquiring is guarded");
        tokio::time::advance(Duration::from_millis(2000)).await;
        assert_eq!(
            h.view(Generation(2), Instant::now(), 2000),
            LeaseView::Expired,
            "never granted within a lease"
        );
        assert!(acquiring_end <= Instant::now(), "the keeper fences when acquiring ends");
        assert_eq!(h.guarded_until(Generation(3), 2000), None, "a generation never seen");
    }

    /// Found by the simulation (seed 2509): a raftpg restarted on the primary acquired for a
    /// whole lease from its start, past the controller's deadline, which runs from the
    /// previous process's last grant. Acquiring now ends with the inherited lease.
    #[tokio::test(start_paused = true)]
    async fn a_restarted_holder_acquires_no_longer_than_the_lease_it_inherited() {
        let h = Holder::new();
        let inherited = Instant::now() + Duration::from_millis(600);
        h.inherit(Generation(4), inherited);
        assert_eq!(h.view(Generation(4), Instant::now(), 2000), LeaseView::Acquiring);
        assert_eq!(h.guarded_until(Generation(4), 2000), Some(inherited));
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(h.view(Generation(4), Instant::now(), 2000), LeaseView::Expired);
        // Another generation acquires for a whole lease, and a grant holds as usual.
        assert_eq!(h.view(Generation(5), Instant::now(), 2000), LeaseView::Acquiring);
        assert_eq!(
            h.guarded_until(Generation(5), 2000),
            Some(Instant::now() + Duration::from_millis(2000))
        );
        h.granted(Generation(4), Instant::now(), 2000);
        assert_eq!(h.view(Generation(4), Instant::now(), 2000), LeaseView::Held);
    }

    #[tokio::test(start_paused = true)]
    async fn the_longest_gap_between_renewals_is_kept_per_generation() {
        let h = Holder::new();
        let t0 = Instant::now();
        h.granted(Generation(1), t0, 2000);
        assert_eq!(h.longest_gap(), Duration::ZERO, "one renewal has no gap");
        h.granted(Generation(1), t0 + Duration::from_millis(500), 2000);
        h.granted(Generation(1), t0 + Duration::from_millis(1700), 2000);
        h.granted(Generation(1), t0 + Duration::from_millis(2100), 2000);
        assert_eq!(h.longest_gap(), Duration::from_millis(1200));
        // A new generation starts over: the time between generations is no gap.
        h.granted(Generation(2), t0 + Duration::from_millis(9000), 2000);
        assert_eq!(h.longest_gap(), Duration::from_millis(1200));
        h.granted(Generation(2), t0 + Duration::from_millis(10_500), 2000);
        assert_eq!(h.longest_gap(), Duration::from_millis(1500));
        // A late answer to an earlier send moves nothing back.
        h.granted(Generation(2), t0 + Duration::from_millis(10_000), 2000);
        assert_eq!(h.longest_gap(), Duration::from_millis(1500));
        // A new lease length starts over: the 2 s lease's gaps say nothing of a 500 ms one.
        h.granted(Generation(2), t0 + Duration::from_millis(11_000), 500);
        assert_eq!(h.longest_gap(), Duration::ZERO);
        h.granted(Generation(2), t0 + Duration::from_millis(11_125), 500);
        h.granted(Generation(2), t0 + Duration::from_millis(11_400), 500);
        h.granted(Generation(2), t0 + Duration::from_millis(11_525), 500);
        assert_eq!(h.longest_gap(), Duration::from_millis(275));
    }

    #[tokio::test(start_paused = true)]
    async fn controller_waits_longer_than_the_holder() {
        let b = Book::default();
        let p = primary("n1", Generation(1));
        b.start_tenure(Some(&p), Instant::now(), 2000);
        tokio::time::advance(Duration::from_millis(500)).await;
        b.granted("n1", Generation(1), Instant::now(), 2000);
        let deadline = LeaseTerms {
            lease_ms: 2000,
            ceiling_ms: 2000,
            deadline_override: None,
        };
        let deadline = &deadline;
        let wake = b.expires_at(&p, deadline).expect("n1 is clocked");
        assert_eq!(
            wake,
            Instant::now() + Duration::from_millis(2401),
            "the first instant it is expired"
        );
        assert_eq!(
            b.expires_at(&primary("n1", Generation(2)), deadline),
            None,
            "another generation"
        );
        tokio::time::advance(Duration::from_millis(2000)).await;
        assert_eq!(
            b.expired_ms(&p, deadline, Instant::now()),
            None,
            "the holder fences at 2000 ms; we wait longer"
        );
        tokio::time::advance(Duration::from_millis(400)).await;
        assert_eq!(
            b.expired_ms(&p, deadline, Instant::now()),
            None,
            "at the deadline itself"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(Instant::now(), wake);
        assert_eq!(b.expired_ms(&p, deadline, Instant::now()), Some(2401));
        let next = primary("n2", Generation(2));
        assert_eq!(
            b.expired_ms(&next, deadline, Instant::now()),
            None,
            "a new primary's clock starts now"
        );
    }

    /// `lease_ms` lowered from 2000 to 750 ms: a renewal granted under 2000 ms keeps its
    /// deadline; one granted under 750 ms has the shorter one; a new tenure starts under
    /// the ceiling; the holder counts no longer than the leader told it.
    #[tokio::test(start_paused = true)]
    async fn a_lowered_lease_never_shortens_a_grant_made_under_the_longer_one() {
        let b = Book::default();
        let p = primary("n1", Generation(1));
        let t0 = Instant::now();
        b.granted("n1", Generation(1), t0, 2000);
        let lowered = LeaseTerms {
            lease_ms: 750,
            ceiling_ms: 2000,
            deadline_override: None,
        };
        // Without the floor it would expire 750 * 1.1 + 200 = 1025 ms after the grant.
        assert_eq!(b.expires_at(&p, &lowered), Some(t0 + Duration::from_millis(2401)));
        assert_eq!(b.expired_ms(&p, &lowered, t0 + Duration::from_millis(2400)), None);
        // The next grant runs under 750 ms, and the earlier one still bounds the deadline.
        b.granted("n1", Generation(1), t0 + Duration::from_millis(500), 750);
        assert_eq!(b.expires_at(&p, &lowered), Some(t0 + Duration::from_millis(2401)));
        b.granted("n1", Generation(1), t0 + Duration::from_millis(2000), 750);
        assert_eq!(
            b.expires_at(&p, &lowered),
            Some(t0 + Duration::from_millis(2000 + 1026)),
            "once the 2000 ms grant is behind it, 750 ms rules"
        );
        // The canaries' override means exactly that deadline.
        let canary = LeaseTerms {
            deadline_override: Some(Duration::from_millis(100)),
            ..lowered
        };
        assert_eq!(b.expires_at(&p, &canary), Some(t0 + Duration::from_millis(2101)));
        // A new tenure cannot know the lengths of the grants before it: the ceiling.
        let t1 = t0 + Duration::from_millis(3000);
        b.start_tenure(Some(&p), t1, lowered.ceiling_ms);
        assert_eq!(b.expires_at(&p, &lowered), Some(t1 + Duration::from_millis(2401)));
        // The reply's view says how long the leader counts the grant: 750 ms.
        b.granted("n1", Generation(1), t1, 750);
        let state = crate::cluster::ClusterState {
            primary: Some(p.clone()),
            ..Default::default()
        };
        assert_eq!(b.view(&state, t1).lease_remaining_ms, Some(750));
        // A holder that has not applied the change yet counts what the leader told it.
        let h = Holder::new();
        h.granted_by(Generation(1), t1, 2000, Some(750));
        assert_eq!(h.expiry(Generation(1)), Some(t1 + Duration::from_millis(750)));
        h.granted_by(Generation(1), t1, 750, Some(2000));
        assert_eq!(
            h.expiry(Generation(1)),
            Some(t1 + Duration::from_millis(750)),
            "nor longer than its own"
        );
    }
}
