//! What this node knows about itself and the cluster beyond the replicated state: its
//! agent's last report, its lease, the Raft leader's view of every member (handed back
//! with each report reply) and how long the last primary changes took. Read by the
//! control API and the HTTP health checks; written by the agent and the lease task.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::Node;
use crate::cluster::PendingKind;
use crate::decide::controller::Report;
use crate::decide::view::ClusterView;
use crate::types::Generation;

/// How long a member's report outlives its absence from a new Raft leader's view.
const KEEP_MISSING_MS: u64 = 5_000;

#[derive(Clone, Default)]
pub struct LocalStatus(Arc<Mutex<Inner>>);

#[derive(Default)]
struct Inner {
    own: Option<(Instant, Report)>,
    gated: bool,
    /// (generation, expiry) of this node's primary lease.
    lease: Option<(Generation, Instant)>,
    view: Option<(Instant, ClusterView)>,
    last_failover: Option<Duration>,
    last_switchover: Option<Duration>,
    /// The longest time between two renewals of this node's primary lease.
    longest_renewal_gap: Option<Duration>,
}

/// This node's own PostgreSQL as its agent last saw it.
#[derive(Clone, Debug)]
pub struct Own {
    pub age: Duration,
    pub report: Report,
    /// A crash-restarted primary that still refuses clients.
    pub gated: bool,
}

impl LocalStatus {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_own(&self, report: Report, gated: bool) {
        let mut i = self.lock();
        i.own = Some((Instant::now(), report));
        i.gated = gated;
    }

    pub fn own(&self) -> Option<Own> {
        let i = self.lock();
        i.own.as_ref().map(|(at, r)| Own {
            age: at.elapsed(),
            report: r.clone(),
            gated: i.gated,
        })
    }

    pub fn set_lease(&self, lease: Option<(Generation, Instant)>) {
        self.lock().lease = lease;
    }

    pub fn set_longest_renewal_gap(&self, gap: Duration) {
        if !gap.is_zero() {
            self.lock().longest_renewal_gap = Some(gap);
        }
    }

    /// The longest time between two renewals of this node's primary lease, once renewed twice.
    pub fn longest_renewal_gap(&self) -> Option<Duration> {
        self.lock().longest_renewal_gap
    }

    /// Time left on this node's lease as primary of `generation`.
    pub fn lease_remaining(&self, generation: Generation) -> Option<Duration> {
        let (g, expiry) = self.lock().lease?;
        (g == generation).then(|| expiry.saturating_duration_since(Instant::now()))
    }

    pub fn set_view(&self, view: ClusterView) {
        let mut i = self.lock();
        let view = match i.view.take() {
            Some((at, old)) => view.filled_from(old.aged(at.elapsed().as_millis() as u64), KEEP_MISSING_MS),
            None => view,
        };
        i.view = Some((Instant::now(), view));
    }

    /// Forgets the leader's view: this node's leadership changed.
    pub fn clear_view(&self) {
        self.lock().view = None;
    }

    /// The last view received from the Raft leader, aged to now.
    pub fn view(&self) -> Option<ClusterView> {
        let i = self.lock();
        i.view
            .as_ref()
            .map(|(at, v)| v.clone().aged(at.elapsed().as_millis() as u64))
    }

    /// How long the last failover and switchover took, fence to new primary, as seen here.
    pub fn last_changes(&self) -> (Option<Duration>, Option<Duration>) {
        let i = self.lock();
        (i.last_failover, i.last_switchover)
    }
}

/// Measures each primary change from the commit that fenced the old generation to the
/// commit that recorded the new primary, as this node applied them.
pub async fn time_primary_changes(node: Node, mut stop: watch::Receiver<bool>) {
    let mut changes = node.subscribe();
    let mut started: Option<(PendingKind, Instant)> = None;
    loop {
        let state = node.state().state;
        match (&state.pending, started) {
            (Some(p), None) => started = Some((p.kind, Instant::now())),
            (Some(p), Some((k, at))) if p.kind != k => started = Some((p.kind, at)),
            (None, Some((kind, at))) if state.primary.is_some() => {
                let took = at.elapsed();
                let mut i = node.local.lock();
                match kind {
                    PendingKind::Failover => i.last_failover = Some(took),
                    PendingKind::Switchover => i.last_switchover = Some(took),
                }
                started = None;
            }
            _ => {}
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = changes.changed() => if r.is_err() { return },
        }
    }
}
