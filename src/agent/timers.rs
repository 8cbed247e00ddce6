//! The agent's memory from one tick to the next: how long its PostgreSQL has been down,
//! not streaming, or still receiving after streaming was stopped, and whether its primary
//! hung (`Timers`); and the lease task's: when it reports next, and which expiry it fenced
//! for (`LeaseTask`). Neither reads a clock nor does I/O: the agent hands them
//! `Instant::now()`, the simulation (`sim`) each node's own simulated clock, so both run
//! this code.

use std::time::Duration;

use tokio::time::Instant;

use super::timing::REPORT_RETRY;

use crate::decide::agent::{LeaseView, Local, Wanted};
use crate::types::Generation;

#[derive(Debug, Default)]
pub struct Timers {
    /// Since when PostgreSQL is down or unobservable (for the restart bound).
    down_since: Option<Instant>,
    /// Since when this standby follows the primary without streaming.
    not_streaming_since: Option<Instant>,
    /// Since when the WAL receiver has kept running after streaming was stopped for a
    /// primary change.
    lingering_since: Option<Instant>,
    /// As primary, the last observation that told running from not was `Unknown`.
    unproven: bool,
    /// The generation in which this node, as primary, lost its lease while its
    /// PostgreSQL could not prove a commit: it hung, and was (or is being) fenced.
    fenced_hung: Option<Generation>,
}

impl Timers {
    /// Counts this tick's observation `local`, made at `now` while the state wants `role`.
    pub fn observed(&mut self, role: &Wanted, local: &Local, now: Instant) {
        let up = matches!(local, Local::Primary(_) | Local::Standby(_));
        self.down_since = if up { None } else { self.down_since.or(Some(now)) };
        let streaming = matches!(local, Local::Standby(pg) if pg.streaming());
        let following = matches!(role, Wanted::Standby(_)) && matches!(local, Local::Standby(_));
        self.not_streaming_since = if following && !streaming {
            self.not_streaming_since.or(Some(now))
        } else {
            None
        };
        let stopping = matches!(role, Wanted::Fenced | Wanted::OldPrimary);
        let lingering =
            matches!(local, Local::Standby(pg) if pg.primary_conninfo.is_empty() && pg.walreceiver.is_some());
        self.lingering_since = if stopping && lingering {
            self.lingering_since.or(Some(now))
        } else {
            None
        };
    }

    /// As primary of `generation`, with the lease `lease`: a primary whose running could
    /// not be proven when its lease ran out hung (`decide::agent::AgentInput::fenced_hung`).
    pub fn primary(&mut self, local: &Local, lease: LeaseView, generation: Generation) {
        match local {
            Local::Unknown(_) => self.unproven = true,
            Local::Primary(_) => self.unproven = false,
            _ => {}
        }
        if self.unproven && lease == LeaseView::Expired {
            self.fenced_hung = Some(generation);
        }
    }

    /// Whether this node's primary of `generation` hung and was fenced.
    pub fn fenced_hung(&self, generation: Generation) -> bool {
        self.fenced_hung == Some(generation)
    }

    /// An operator's restart was carried out: the way back for a primary that hung and
    /// that no failover replaced.
    pub fn restarted(&mut self) {
        self.fenced_hung = None;
        self.unproven = false;
    }

    /// The standby (re)started, or changed its source: it gets a whole
    /// `DIVERGED_AFTER_MS` to stream before it is judged diverged again.
    pub fn streaming_starts_over(&mut self) {
        self.not_streaming_since = None;
    }

    pub fn down_ms(&self, now: Instant) -> u64 {
        elapsed_ms(self.down_since, now)
    }

    pub fn not_streaming_ms(&self, now: Instant) -> u64 {
        elapsed_ms(self.not_streaming_since, now)
    }

    pub fn lingering_ms(&self, now: Instant) -> u64 {
        elapsed_ms(self.lingering_since, now)
    }
}

pub fn elapsed_ms(since: Option<Instant>, now: Instant) -> u64 {
    since.map_or(0, |s| now.saturating_duration_since(s).as_millis() as u64)
}

/// The lease task's memory between wake-ups (`agent::lease_loop`): it reports to the Raft
/// leader every `lease_ms / 4` (sooner when asked, or when a report reached no leader),
/// and fences PostgreSQL once per lease expiry that passes unrenewed.
#[derive(Debug, Default)]
pub struct LeaseTask {
    /// When the next report goes; `None`: at once.
    next_send: Option<Instant>,
    /// The expiry the task last fenced for.
    fenced_expiry: Option<Instant>,
}

impl LeaseTask {
    /// How often reports (and renewals) go: a quarter of the lease, at least 50 ms.
    pub fn interval(lease_ms: u64) -> Duration {
        Duration::from_millis((lease_ms / 4).max(50))
    }

    /// The expiry the task guards, given the holder's (`lease::Holder::guarded_until`):
    /// none once it fenced for it.
    pub fn guarded(&self, expiry: Option<Instant>) -> Option<Instant> {
        expiry.filter(|e| Some(*e) != self.fenced_expiry)
    }

    /// Whether the guarded `expiry` has passed at `now`: then PostgreSQL is fenced, and
    /// this expiry is not guarded again.
    pub fn expired(&mut self, expiry: Option<Instant>, now: Instant) -> bool {
        match expiry.filter(|e| now >= *e) {
            Some(e) => {
                self.fenced_expiry = Some(e);
                true
            }
            None => false,
        }
    }

    /// When the next report is due.
    pub fn send_at(&self, now: Instant) -> Instant {
        self.next_send.unwrap_or(now)
    }

    /// The next report goes at once (a change to tell, a new Raft leader).
    pub fn send_now(&mut self) {
        self.next_send = None;
    }

    pub fn due(&self, now: Instant) -> bool {
        now >= self.send_at(now)
    }

    /// A report went at `now`; `delivered`: a leader accepted it. One that reached no
    /// leader is sent again soon rather than a whole interval later.
    pub fn sent(&mut self, delivered: bool, now: Instant, lease_ms: u64) {
        let interval = Self::interval(lease_ms);
        self.next_send = Some(
            now + if delivered {
                interval
            } else {
                interval.min(REPORT_RETRY)
            },
        );
    }
}

/// Whether a report that asks to renew (`renew`) may: only on an observation of PostgreSQL
/// made at most `lease::observation_max_age_ms` before `now`, so a hung PostgreSQL or a
/// stuck agent lets the lease lapse.
pub fn renews(renew: bool, observed_at: Option<Instant>, now: Instant, lease_ms: u64) -> bool {
    let age = observed_at.map(|t| now.saturating_duration_since(t));
    renew && age.is_some_and(|a| crate::lease::observation_fresh(a, lease_ms))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::postgres::PgState;

    fn pg(in_recovery: bool, walreceiver: Option<&str>, conninfo: &str) -> PgState {
        PgState {
            in_recovery,
            timeline: None,
            write_lsn: None,
            receive_lsn: None,
            replay_lsn: None,
            walreceiver: walreceiver.map(String::from),
            primary_conninfo: conninfo.into(),
            replication: vec![],
            slots: vec![],
            idle_slots: vec![],
            sync_names: String::new(),
            pending_restart: vec![],
            timeline_pinned: false,
        }
    }

    fn standby(streaming: bool, conninfo: &str) -> Local {
        Local::Standby(pg(
            true,
            Some(if streaming { "streaming" } else { "waiting" }),
            conninfo,
        ))
    }

    #[test]
    fn each_timer_runs_while_its_condition_holds_and_starts_over_after() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let follow = Wanted::Standby("n1".into());
        let mut t = Timers::default();
        t.observed(&follow, &standby(false, "host=n1"), at(0));
        t.observed(&follow, &standby(false, "host=n1"), at(700));
        assert_eq!((t.not_streaming_ms(at(900)), t.down_ms(at(900))), (900, 0));
        t.observed(&follow, &standby(true, "host=n1"), at(1000));
        assert_eq!(t.not_streaming_ms(at(1200)), 0, "streaming again");
        t.observed(&follow, &Local::Unknown("timeout".into()), at(1300));
        t.observed(&follow, &Local::NoData, at(1500));
        assert_eq!(t.down_ms(at(2300)), 1000, "down since the first tick that saw it down");
        t.observed(&Wanted::Fenced, &standby(true, ""), at(2400));
        t.observed(&Wanted::Fenced, &standby(true, ""), at(2600));
        assert_eq!((t.lingering_ms(at(2900)), t.down_ms(at(2900))), (500, 0));
        t.observed(&Wanted::Fenced, &Local::Stopped { control: None }, at(3000));
        assert_eq!(t.lingering_ms(at(3100)), 0);
        t.observed(&follow, &standby(false, "host=n1"), at(3200));
        t.streaming_starts_over();
        t.observed(&follow, &standby(false, "host=n1"), at(3400));
        assert_eq!(t.not_streaming_ms(at(3500)), 100, "counted from the restart");
    }

    #[test]
    fn the_lease_task_reports_each_quarter_lease_retries_soon_and_fences_once_per_expiry() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut task = LeaseTask::default();
        assert!(task.due(t0), "the first report goes at once");
        task.sent(true, at(0), 2000);
        assert!(!task.due(at(499)) && task.due(at(500)), "every lease_ms / 4");
        task.sent(false, at(500), 2000);
        assert_eq!(task.send_at(at(550)), at(600), "no leader: again after REPORT_RETRY");
        task.send_now();
        assert!(task.due(at(550)));
        task.sent(true, at(550), 100);
        assert_eq!(task.send_at(at(550)), at(600), "at least every 50 ms");

        let expiry = Some(at(2000));
        assert_eq!(task.guarded(expiry), expiry);
        assert!(!task.expired(task.guarded(expiry), at(1999)));
        assert!(task.expired(task.guarded(expiry), at(2000)), "fenced at the expiry");
        assert_eq!(task.guarded(expiry), None, "and not again for it");
        assert!(!task.expired(task.guarded(expiry), at(2500)));
        let renewed = Some(at(2600));
        assert!(
            task.expired(task.guarded(renewed), at(2600)),
            "a later lease is guarded again"
        );

        assert!(renews(true, Some(at(0)), at(1000), 2000), "half a lease old");
        assert!(!renews(true, Some(at(0)), at(1001), 2000), "older than half a lease");
        assert!(!renews(true, None, at(0), 2000), "no observation yet");
        assert!(!renews(false, Some(at(0)), at(0), 2000), "not asked");
    }

    #[test]
    fn a_primary_unproven_when_its_lease_ran_out_hung_until_an_operator_restart() {
        let (g, up) = (Generation(4), Local::Primary(pg(false, None, "")));
        let hung = Local::Unknown("timeout".into());
        let mut t = Timers::default();
        t.primary(&hung, LeaseView::Held, g);
        assert!(!t.fenced_hung(g), "the lease still runs");
        t.primary(&up, LeaseView::Expired, g);
        assert!(!t.fenced_hung(g), "proven running before the lease ran out");
        t.primary(&hung, LeaseView::Held, g);
        t.primary(&Local::Stopped { control: None }, LeaseView::Expired, g);
        assert!(t.fenced_hung(g), "unproven since the last observation that told");
        assert!(!t.fenced_hung(Generation(5)), "for that generation only");
        t.restarted();
        assert!(!t.fenced_hung(g));
        t.primary(&Local::Stopped { control: None }, LeaseView::Expired, g);
        assert!(!t.fenced_hung(g), "a stopped PostgreSQL proves nothing either way");
    }
}
