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
        let expiry = sent + Duration::from_millis(lease_ms);
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
    /// (primary, generation) the clock runs for, and its last renewal or start.
    clock: Option<(String, Generation, Instant)>,
}

impl BookInner {
    /// The last renewal (or start) of `primary`'s clock, when the clock runs for it.
    fn clocked(&self, primary: &Primary) -> Option<Instant> {
        match &self.clock {
            Some((n, g, at)) if *n == primary.node && *g == primary.generation => Some(*at),
            _ => None,
        }
    }
}

impl Book {
    fn lock(&self) -> std::sync::MutexGuard<'_, BookInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, node: &str, report: Report) {
        self.lock().reports.insert(node.to_string(), (Instant::now(), report));
        self.changed.notify_one();
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
            (Some((n, g, at)), Some(p)) if *n == p.node && *g == p.generation && state.pending.is_none() => Some(
                state
                    .ha
                    .lease_ms
                    .saturating_sub(now.saturating_duration_since(*at).as_millis() as u64),
            ),
            _ => None,
        };
        crate::decide::view::ClusterView {
            reports,
            lease_remaining_ms,
        }
    }

    /// This node just became Raft leader: the clock restarts now for whoever is primary.
    pub fn start_tenure(&self, primary: Option<&Primary>, now: Instant) {
        self.lock().clock = primary.map(|p| (p.node.clone(), p.generation, now));
    }

    /// A renewal of `node` under `generation` was granted at `now`.
    pub fn granted(&self, node: &str, generation: Generation, now: Instant) {
        let mut b = self.lock();
        match &mut b.clock {
            Some((n, g, at)) if n == node && *g == generation => *at = (*at).max(now),
            _ => b.clock = Some((node.to_string(), generation, now)),
        }
    }

    /// How long since the primary's last renewal, once that is past `deadline`
    /// ([`controller_deadline`] of the lease).
    pub fn expired_ms(&self, primary: &Primary, deadline: Duration, now: Instant) -> Option<u64> {
        let mut b = self.lock();
        let since = match b.clocked(primary) {
            Some(at) => at,
            // A primary this leader has not clocked yet (just recorded): its clock starts now.
            None => {
                b.clock = Some((primary.node.clone(), primary.generation, now));
                now
            }
        };
        let silent = now.saturating_duration_since(since);
        (silent > deadline).then_some(silent.as_millis() as u64)
    }

    /// When `expired_ms` first says expired for the primary it clocks, given no renewal
    /// before then: the controller wakes at that instant rather than at its next tick.
    pub fn expires_at(&self, primary: &Primary, deadline: Duration) -> Option<Instant> {
        self.lock()
            .clocked(primary)
            .map(|at| at + deadline + Duration::from_millis(1))
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
        b.start_tenure(Some(&p), Instant::now());
        tokio::time::advance(Duration::from_millis(500)).await;
        b.granted("n1", Generation(1), Instant::now());
        let deadline = controller_deadline(2000);
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
}
