//! The controller's decisions, taken on the Raft leader only: choose the node
//! that bootstraps, fence an expired primary, promote the best candidate,
//! keep the sync set, and keep Raft leadership off the primary.
//!
//! Inputs are the applied state and the agents' last reports (volatile, kept in
//! the leader's memory). The lease clock is read by the effects layer and comes
//! in as "expired for this long", so this stays free of clocks.

use std::collections::{BTreeMap, BTreeSet};

use crate::cluster::{ClusterState, Command, Degraded, Flag, PendingKind, SyncConfig, SyncMode, Tags};
use crate::decide::election::{elect, lsn, Election, ElectionInput, FinalReport};
pub use crate::protocol::{PgRole, Report};
use crate::types::{Generation, Timeline};

#[derive(Clone, Debug)]
pub struct ControllerInput<'a> {
    /// The Raft leader's member name.
    pub me: &'a str,
    pub state: &'a ClusterState,
    /// Fresh reports by member name; a member without one is Unknown.
    pub reports: &'a BTreeMap<String, Report>,
    /// The primary's lease has been without renewal past the controller's deadline for this long.
    pub lease_expired_ms: Option<u64>,
    /// Members that are Raft voters (learners never join the synchronous set).
    pub voters: &'a BTreeSet<String>,
    /// How long this leader has seen the current pending change (since its candidate was
    /// told to promote, once there is one), or, before the first primary, the current
    /// choice of the member that bootstraps.
    pub pending_ms: u64,
    /// Wall clock, for scheduled switchovers and the time a degraded window began (never
    /// for safety).
    pub now_unix_ms: u64,
    /// `synchronous_mode = degradable`: how long fewer than the quorum's `k` synchronous
    /// standbys have streamed (`below_quorum`), 0 while enough do.
    pub below_quorum_ms: u64,
}

/// The synchronous standbys that stream from the primary of the current generation, by
/// their own reports.
pub fn sync_streaming(s: &ClusterState, reports: &BTreeMap<String, Report>) -> BTreeSet<String> {
    s.sync_standbys
        .iter()
        .filter(|n| {
            reports
                .get(*n)
                .is_some_and(|r| r.generation == s.generation && r.streaming)
        })
        .cloned()
        .collect()
}

/// Whether a degradable primary lacks its quorum now: fewer than `k` of its synchronous
/// standbys stream, so its commits wait. The effects layer times how long this lasts
/// (`ControllerInput::below_quorum_ms`).
pub fn below_quorum(s: &ClusterState, reports: &BTreeMap<String, Report>) -> bool {
    s.ha.synchronous_mode == SyncMode::Degradable
        && s.primary.is_some()
        && s.pending.is_none()
        && sync_streaming(s, reports).len() < s.full_quorum()
}

/// `synchronous_mode = degradable`: degrade once the quorum has been missing for a lease
/// (commits wait all that time); record where the primary's WAL stood once it ran
/// asynchronously (every write a quorum acknowledged lies before it); shrink the window's
/// set when one of it stops streaming; and return once `k` stream again, caught up to within
/// `maximum_lag_on_failover` (otherwise the quorum's first commit would wait for the whole
/// backlog), and the degraded configuration is confirmed (never back to a configuration
/// still unconfirmed, as for the set).
fn degradation(i: &ControllerInput) -> Option<ControllerDecision> {
    let s = i.state;
    if s.ha.synchronous_mode != SyncMode::Degradable {
        return None;
    }
    let primary = s.primary_name()?;
    let now = sync_streaming(s, i.reports);
    let k = s.full_quorum();
    let report = i.reports.get(primary).filter(|r| r.generation == s.generation);
    // The primary's first report that shows it running asynchronously: its write position.
    let runs_async_from = match &s.degraded {
        Some(d) if !d.restoring && d.quorum_lsn.is_none() => report
            .filter(|r| r.sync_applied.as_ref() == Some(&s.sync_config()))
            .and_then(|r| r.lsn),
        _ => None,
    };
    let degrade = |why: String| {
        Some(act(
            ControllerAction::Propose(Command::Degrade {
                generation: s.generation,
                streaming: now.iter().cloned().collect(),
                at_unix_ms: i.now_unix_ms,
                lsn: runs_async_from,
            }),
            why,
        ))
    };
    let caught_up = report.and_then(|r| r.lsn).map_or(0, |at| {
        now.iter()
            .filter(|n| {
                report
                    .and_then(|r| r.standby_flush.get(*n))
                    .is_some_and(|f| f.saturating_add(s.ha.maximum_lag_on_failover_bytes) >= at)
            })
            .count()
    });
    let list = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(", ");
    let missing_for_a_lease = now.len() < k && i.below_quorum_ms >= s.ha.lease_ms;
    match &s.degraded {
        None | Some(Degraded { restoring: true, .. }) if missing_for_a_lease => degrade(format!(
            "only {} of the {k} synchronous standbys {primary} needs have streamed for {} ms ([{}]): degrading to \
             asynchronous replication so its writes go on",
            now.len(),
            i.below_quorum_ms,
            list(&now)
        )),
        Some(d) if !d.restoring && !d.streaming.is_subset(&now) => degrade(format!(
            "[{}] stopped streaming during the degraded window: they may no longer be promoted in it",
            list(&d.streaming.difference(&now).cloned().collect())
        )),
        Some(_) if runs_async_from.is_some() => degrade(format!(
            "{primary} runs asynchronously from {}: every write its quorum acknowledged lies before it",
            lsn(runs_async_from.unwrap_or_default())
        )),
        Some(d)
            if !d.restoring && k > 0 && caught_up >= k && d.quorum_lsn.is_some() && s.sync_unconfirmed.is_empty() =>
        {
            Some(act(
                ControllerAction::Propose(Command::Undegrade {
                    generation: s.generation,
                }),
                format!(
                    "{caught_up} of the {k} synchronous standbys {primary} needs stream again, caught up ([{}]): \
                     returning to the quorum",
                    list(&now)
                ),
            ))
        }
        _ => None,
    }
}

/// A switchover that has not promoted its target this long after it began (lease periods)
/// becomes a failover: the old primary did not stop cleanly, or the target did not catch up.
pub fn switchover_timeout_ms(lease_ms: u64) -> u64 {
    2 * lease_ms + 1_000
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControllerAction {
    Propose(Command),
    /// Hand Raft leadership to this member.
    TransferLeader(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerDecision {
    pub action: Option<ControllerAction>,
    pub reason: String,
}

fn idle(reason: impl Into<String>) -> ControllerDecision {
    ControllerDecision {
        action: None,
        reason: reason.into(),
    }
}

fn act(action: ControllerAction, reason: impl Into<String>) -> ControllerDecision {
    ControllerDecision {
        action: Some(action),
        reason: reason.into(),
    }
}

pub fn decide(i: &ControllerInput) -> ControllerDecision {
    let s = i.state;
    if !s.initialized {
        return idle("the cluster state is not initialised yet");
    }
    if let Some(p) = &s.pending {
        return match &p.candidate {
            Some(c) => promoting(i, c),
            None if p.kind == PendingKind::Switchover => switchover(i),
            None => choose_candidate(i),
        };
    }
    let Some(primary) = &s.primary else {
        return bootstrap(i);
    };
    if s.paused {
        return idle(format!("paused: {} stays primary whatever happens", primary.node));
    }
    if let Some(ms) = i.lease_expired_ms {
        return act(
            ControllerAction::Propose(Command::BeginFailover {
                generation: s.generation,
                to: None,
                forced: false,
                reason: format!("{} did not renew its lease for {ms} ms", primary.node),
            }),
            format!("{}'s lease expired: fencing generation {}", primary.node, s.generation),
        );
    }
    let current = |r: &&Report| r.generation == s.generation;
    // A member joins the set once it is a Raft voter and streams; one that left the
    // membership, or was tagged nosync, leaves it. Members already in it stay while down:
    // ANY k tolerates that.
    let streaming = |n: &String| i.reports.get(n).filter(current).is_some_and(|r| r.streaming);
    let want_sync: BTreeSet<String> = match s.ha.synchronous_mode {
        SyncMode::Off => BTreeSet::new(),
        SyncMode::Quorum | SyncMode::Degradable => {
            let want: BTreeSet<String> = s
                .sync_candidates(&primary.node)
                .into_iter()
                .filter(|n| i.voters.contains(n) && (s.sync_standbys.contains(n) || streaming(n)))
                .collect();
            // A member tagged nosync stays until another can take its place: an empty set
            // would let the primary acknowledge writes that no other member holds (the
            // simulation found this: seed 197 with the operator).
            if want.is_empty() {
                s.sync_standbys
                    .iter()
                    .filter(|n| i.voters.contains(*n))
                    .cloned()
                    .collect()
            } else {
                want
            }
        }
    };
    // Never back to a configuration still unconfirmed: the primary's report that it runs
    // that configuration could be one from before the last change, and confirming on it
    // would forget the configuration it ran since (A -> B -> A; found by review). Such a
    // change waits until the current one is confirmed (below).
    let back = SyncConfig {
        k: if s.runs_degraded() {
            0
        } else {
            s.ha.synchronous_mode.quorum_of(want_sync.len())
        },
        standbys: want_sync.clone(),
    };
    if s.sync_standbys != want_sync && !s.sync_unconfirmed.contains(&back) {
        let why = if s.sync_standbys.iter().any(|n| s.has_flag(n, Flag::NoSync)) {
            "a member was tagged nosync: recording the new synchronous set"
        } else {
            "the voting members changed: recording the new synchronous set"
        };
        return act(
            ControllerAction::Propose(Command::SetSyncStandbys {
                generation: s.generation,
                standbys: want_sync.into_iter().collect(),
            }),
            why,
        );
    }
    if let Some(d) = degradation(i) {
        return d;
    }
    // The set may change again before the primary confirms the previous change: every
    // configuration it may run stays in `sync_unconfirmed` for the elections, and the
    // confirmation below covers them all. Otherwise a new primary whose only synchronous
    // standby is the dead old primary could never take in the member that would let it
    // acknowledge writes (found by the nosync test on real PostgreSQL).
    if !s.sync_unconfirmed.is_empty() {
        let report = i.reports.get(&primary.node).filter(current);
        let applied = report.and_then(|r| r.sync_applied.as_ref());
        return match applied {
            Some(c) if *c == s.sync_config() => match behind_fork(s, report.map(|r| &r.standby_flush)) {
                Some(why) => idle(why),
                None => act(
                    ControllerAction::Propose(Command::ConfirmSync {
                        generation: s.generation,
                        config: c.clone(),
                    }),
                    format!("{} runs the new synchronous configuration: confirming it", primary.node),
                ),
            },
            _ => idle(format!(
                "waiting for {} to apply the new synchronous configuration",
                primary.node
            )),
        };
    }
    if let Some(d) = scheduled(i) {
        return d;
    }
    if primary.node == i.me {
        let target = i
            .reports
            .iter()
            .filter(|(n, r)| *n != i.me && r.streaming && r.generation == s.generation && i.voters.contains(*n))
            .map(|(n, _)| n)
            .min_by_key(|n| s.member(n).map_or(u64::MAX, |m| m.id));
        if let Some(t) = target {
            return act(
                ControllerAction::TransferLeader(t.clone()),
                format!("moving Raft leadership off the primary to {t}, so a primary crash needs no election"),
            );
        }
    }
    idle(format!(
        "{} is the primary of generation {} and holds its lease",
        primary.node, s.generation
    ))
}

/// Why the primary's configuration cannot be confirmed yet although it runs it: fewer than
/// `k` of its synchronous standbys have flushed past the point where its timeline forked
/// (`flushed`: its `pg_stat_replication`). Until then the writes acknowledged before the fork
/// may be on the new and the old primary only (`cluster::fork_holders`), and confirming
/// would let the next election forget them (found by the simulation: seed 7206).
/// `None` when nothing is behind, or the fork is not known (recorded before it was kept).
pub fn behind_fork(s: &ClusterState, flushed: Option<&BTreeMap<String, u64>>) -> Option<String> {
    let primary = s.primary.as_ref()?;
    let last = s
        .history
        .last()
        .filter(|h| h.to == primary.node && h.generation == primary.generation)?;
    let fork = last.switch_lsn?.0;
    let k = s.sync_quorum();
    let past = s
        .sync_standbys
        .iter()
        .filter(|n| flushed.and_then(|f| f.get(*n)).is_some_and(|l| *l >= fork))
        .count();
    (past < k).then(|| {
        format!(
            "{past} of the {k} synchronous standbys needed have flushed past {}, where {}'s timeline {} forked: \
             until then the next failover must find {}'s or the old primary's WAL",
            lsn(fork),
            primary.node,
            last.timeline,
            primary.node
        )
    })
}

/// A scheduled switchover whose time has come.
fn scheduled(i: &ControllerInput) -> Option<ControllerDecision> {
    let s = i.state;
    let sw = s
        .scheduled_switchover
        .as_ref()
        .filter(|sw| sw.at_unix_ms <= i.now_unix_ms)?;
    let primary = s.primary_name()?;
    if sw.from.as_deref().is_some_and(|f| f != primary) {
        return Some(act(
            ControllerAction::Propose(Command::CancelScheduledSwitchover),
            format!(
                "scheduled switchover dropped: it expected {} as primary, {primary} is",
                sw.from.as_deref().unwrap_or("?")
            ),
        ));
    }
    let healthy = i
        .reports
        .get(&sw.to)
        .is_some_and(|r| r.generation == s.generation && r.streaming);
    Some(if healthy {
        act(
            ControllerAction::Propose(Command::BeginSwitchover {
                generation: s.generation,
                to: sw.to.clone(),
                reason: format!("scheduled switchover from {primary} to {}", sw.to),
            }),
            format!("scheduled switchover to {} is due", sw.to),
        )
    } else {
        act(
            ControllerAction::Propose(Command::CancelScheduledSwitchover),
            format!("scheduled switchover dropped: {} is not a streaming standby", sw.to),
        )
    })
}

/// A switchover: the target promotes once it has everything the old primary wrote before
/// its clean shutdown; if that does not happen in time, it becomes a failover.
fn switchover(i: &ControllerInput) -> ControllerDecision {
    let s = i.state;
    let p = s.pending.as_ref().expect("called with a pending change");
    let to = p.to.as_deref().unwrap_or("?");
    let from = p.from.as_deref().unwrap_or("?");
    let timeout = switchover_timeout_ms(s.ha.lease_ms);
    if let Some(stop) = p.stop_lsn {
        // A standby of this generation that has received past the shutdown checkpoint, on
        // the old primary's timeline, holds everything the old primary wrote, acknowledged
        // or not. A position on another timeline says nothing of it: a member whose WAL
        // diverged earlier (a fenced primary of an older generation, not rewound) can be
        // further along its own line (simulation seed 3104532 with an operator, pauses,
        // switchovers and delays: such a member was promoted without an acknowledged write).
        let old_timeline = s.history.last().map(|h| h.timeline);
        let past = |n: &str| {
            i.reports
                .get(n)
                .filter(|r| r.generation == s.generation && r.pg == PgRole::Standby)
                .filter(|r| r.timeline.is_some() && r.timeline == old_timeline)
                .and_then(|r| r.lsn)
                .filter(|l| *l > stop)
        };
        if past(to).is_some() {
            return act(
                ControllerAction::Propose(Command::Promote {
                    generation: s.generation,
                    node: to.to_string(),
                }),
                format!(
                    "{to} has received {from}'s WAL past its shutdown checkpoint at {}: promoting",
                    lsn(stop)
                ),
            );
        }
        // The target may have stopped just after the switchover began (its last report
        // can look streaming for a while): after a lease without it, or at once when it
        // says it is not a standby, another standby that holds everything will do. One that
        // has not reported under this generation yet gets half a lease (two renewal
        // intervals; every agent reports at once on the change): another standby that
        // happened to report first took the switchover from a live target in CI.
        let target_down = match i.reports.get(to).filter(|r| r.generation == s.generation) {
            Some(r) => r.pg != PgRole::Standby,
            None => i.pending_ms > s.ha.lease_ms / 2,
        };
        if target_down || i.pending_ms > s.ha.lease_ms {
            let other = s
                .members
                .values()
                .filter(|m| m.name != to && p.from.as_deref() != Some(m.name.as_str()))
                .filter(|m| !m.tags.nofailover && !s.vetoed.contains(&m.name) && i.voters.contains(&m.name))
                .filter_map(|m| Some((past(&m.name)?, m)))
                .max_by_key(|(l, m)| (*l, std::cmp::Reverse(m.id)));
            if let Some((_, m)) = other {
                return act(
                    ControllerAction::Propose(Command::Promote {
                        generation: s.generation,
                        node: m.name.clone(),
                    }),
                    format!(
                        "{to} has not received {from}'s WAL up to {} (down or behind); {} has: promoting it instead",
                        lsn(stop),
                        m.name
                    ),
                );
            }
        }
    }
    if i.pending_ms > timeout {
        let why = match p.stop_lsn {
            None => format!("{from} did not shut down cleanly"),
            Some(l) => format!("{to} did not receive {from}'s WAL up to {}", lsn(l)),
        };
        return act(
            ControllerAction::Propose(Command::BeginFailover {
                generation: s.generation,
                to: None,
                forced: false,
                reason: format!(
                    "switchover to {to} abandoned after {} ms: {why}; failing over",
                    i.pending_ms
                ),
            }),
            format!("switchover to {to} stalled ({why}): turning it into a failover"),
        );
    }
    match p.stop_lsn {
        None => idle(format!("switchover: waiting for {from} to shut down cleanly")),
        Some(l) => idle(format!("switchover: waiting for {to} to receive up to {}", lsn(l))),
    }
}

/// How long a candidate told to promote may take to record its timeline before another
/// is chosen, when it is silent or reports a PostgreSQL that cannot promote (down, no
/// data, unobservable). One that reports progress (in recovery, or promoted) gets
/// `CANDIDATE_PROGRESS_FACTOR` times longer: pg_promote first replays what it received.
pub fn candidate_timeout_ms(lease_ms: u64) -> u64 {
    2 * lease_ms + 1_000
}
pub const CANDIDATE_PROGRESS_FACTOR: u64 = 4;

/// Whether a member chosen for a step (promotion, bootstrap) has had its time, given its
/// `report`: `candidate_timeout_ms`, or `CANDIDATE_PROGRESS_FACTOR` times that while it
/// reports one of the `progress` roles. `Some` says how it looks, for the reason.
fn stalled(i: &ControllerInput, report: Option<&Report>, progress: &[PgRole]) -> Option<String> {
    let progressing = report.is_some_and(|r| progress.contains(&r.pg));
    let factor = if progressing { CANDIDATE_PROGRESS_FACTOR } else { 1 };
    if i.pending_ms <= candidate_timeout_ms(i.state.ha.lease_ms) * factor {
        return None;
    }
    Some(match report {
        None => "sends no report".to_string(),
        Some(r) => format!("reports its PostgreSQL {:?}: {}", r.pg, r.reason),
    })
}

/// What the controller's timer (`ControllerInput::pending_ms`) runs for: the pending change
/// and its candidate (a switchover's timeout runs from the change, a candidate's from its
/// promotion), or, before the first primary, the member chosen to bootstrap.
pub fn timer_key(s: &ClusterState) -> Option<(Generation, Option<String>)> {
    match (&s.pending, &s.primary) {
        (Some(p), _) => Some((s.generation, p.candidate.clone())),
        (None, None) if s.system_identifier.is_none() => s.bootstrap_node.clone().map(|b| (Generation(0), Some(b))),
        _ => None,
    }
}

/// A candidate was told to promote: wait for its `RecordTimeline`, or replace it when it
/// died or hung mid-promotion and it acknowledged nothing (`apply::candidate_acknowledged_nothing`).
fn promoting(i: &ControllerInput, c: &str) -> ControllerDecision {
    let s = i.state;
    let report = i.reports.get(c).filter(|r| r.generation == s.generation);
    let Some(how) = stalled(i, report, &[PgRole::Primary, PgRole::Standby]) else {
        return idle(format!("waiting for {c} to promote and record its timeline"));
    };
    if !crate::cluster::candidate_acknowledged_nothing(s) {
        return idle(format!(
            "{c} was told to promote {} ms ago and {how}; in asynchronous mode it may have accepted writes alone, \
             so it is not replaced automatically: once its PostgreSQL is surely down, run \
             `raftpg ctl failover --force --to NAME`",
            i.pending_ms
        ));
    }
    act(
        ControllerAction::Propose(Command::BeginFailover {
            generation: s.generation,
            to: None,
            forced: false,
            reason: format!(
                "{c} was told to promote {} ms ago and has not recorded its timeline ({how}); it acknowledged \
                 nothing, as no standby streams from it before then: choosing another candidate",
                i.pending_ms
            ),
        }),
        format!("{c} did not finish its promotion ({how}): replacing it"),
    )
}

fn bootstrap(i: &ControllerInput) -> ControllerDecision {
    let s = i.state;
    let with_empty_data = |m: &&crate::cluster::Member| {
        !s.never_chosen(&m.name) && i.reports.get(&m.name).is_some_and(|r| r.pg == PgRole::NoData)
    };
    if let Some(a) = &s.adopt {
        // The adopted database is the cluster's data: nobody replaces its member, however
        // long it takes (another member's initdb would start an empty cluster, and the
        // adopted database would then be re-cloned away).
        return idle(match stalled(i, i.reports.get(a), &[PgRole::Primary]) {
            None => format!("waiting for {a} to adopt its existing database"),
            Some(how) => format!(
                "waiting for {a} to adopt its existing database ({} ms so far, {how}); no other member may take its place",
                i.pending_ms
            ),
        });
    }
    if let Some(b) = &s.bootstrap_node {
        // initdb, the first start and `Bootstrap` take seconds. A chosen member that is
        // silent (it died during initdb), or that reports a PostgreSQL neither empty nor
        // running, is replaced by another with an empty data directory. Another database
        // it may have made is never recorded: `Bootstrap` comes only from the chosen member,
        // and as a standby of the recorded primary it is fenced and re-cloned.
        let Some(how) = stalled(i, i.reports.get(b), &[PgRole::NoData, PgRole::Primary]) else {
            return idle(format!("waiting for {b} to bootstrap"));
        };
        let other = s
            .members
            .values()
            .filter(|m| m.name != *b)
            .filter(with_empty_data)
            .min_by_key(|m| m.id);
        return match other {
            Some(m) => act(
                ControllerAction::Propose(Command::ChooseBootstrap { node: m.name.clone() }),
                format!(
                    "{b} has not bootstrapped in {} ms ({how}): {} has an empty data directory and bootstraps instead",
                    i.pending_ms, m.name
                ),
            ),
            None => idle(format!(
                "{b} has not bootstrapped in {} ms ({how}), and no other member without nofailover reports an empty data directory",
                i.pending_ms
            )),
        };
    }
    let chosen = s.members.values().filter(with_empty_data).min_by_key(|m| m.id);
    match chosen {
        Some(m) => act(
            ControllerAction::Propose(Command::ChooseBootstrap { node: m.name.clone() }),
            format!(
                "{} has an empty data directory and the lowest id: it bootstraps",
                m.name
            ),
        ),
        None => idle("no member without nofailover has reported an empty data directory yet"),
    }
}

/// `[unsafe_for_testing] skip_final_reports` (the partition suite's canary, never in
/// production): while a failover has no candidate yet, every member but the fenced
/// primary without a final report under the new generation is given one at once, from
/// its last report: a standby's last position, or "holds nothing" for a member whose
/// PostgreSQL did not answer. The election then trusts stale positions instead of waiting.
pub fn skip_final_reports(s: &ClusterState, mut reports: BTreeMap<String, Report>) -> BTreeMap<String, Report> {
    let Some(p) = s.pending.as_ref() else {
        return reports;
    };
    if p.kind != PendingKind::Failover || p.candidate.is_some() {
        return reports;
    }
    for (name, r) in reports.iter_mut() {
        if p.from.as_deref() == Some(name.as_str()) || (r.generation == s.generation && r.final_position.is_some()) {
            continue;
        }
        r.final_position = Some(match (r.pg, r.lsn, r.timeline) {
            (PgRole::Standby, Some(at), Some(tl)) => (at, tl),
            _ => (0, Timeline::NONE),
        });
        r.generation = s.generation;
    }
    reports
}

fn choose_candidate(i: &ControllerInput) -> ControllerDecision {
    let s = i.state;
    let p = s.pending.as_ref().expect("called with a pending change");
    let standbys = s
        .members
        .values()
        .filter(|m| p.from.as_deref() != Some(m.name.as_str()))
        // A replica holds no acknowledged write that a quorum member lacks: its WAL beyond
        // theirs was never acknowledged, and must not raise the position a candidate needs.
        // Only a forced failover to it reads its report.
        .filter(|m| !s.has_flag(&m.name, Flag::Replica) || (p.forced && p.to.as_deref() == Some(m.name.as_str())))
        .map(|m| {
            let report = i
                .reports
                .get(&m.name)
                .filter(|r| r.generation == s.generation)
                .and_then(|r| r.final_position)
                .map(|(flush_lsn, timeline)| FinalReport {
                    flush_lsn,
                    timeline,
                    // A member whose pre_promote refused counts for the quorum and is
                    // never chosen, as if tagged nofailover.
                    tags: Tags {
                        nofailover: s.never_chosen(&m.name) || s.vetoed.contains(&m.name),
                        ..m.tags.clone()
                    },
                });
            (m.name.as_str(), report)
        })
        .collect();
    let last_primary_lsn = p
        .from
        .as_ref()
        .and_then(|f| i.reports.get(f))
        .filter(|r| r.pg == PgRole::Primary)
        .and_then(|r| r.lsn);
    let input = ElectionInput {
        standbys,
        sync_mode: s.ha.synchronous_mode,
        quorums: std::iter::once(s.sync_config())
            .chain(s.sync_unconfirmed.iter().cloned())
            .collect(),
        last_primary_lsn,
        maximum_lag_bytes: s.ha.maximum_lag_on_failover_bytes,
        old_primary: p.from.as_deref(),
        fork: s
            .history
            .last()
            .filter(|h| p.from.as_deref() == Some(h.to.as_str()))
            .and_then(|h| Some((h.timeline, h.switch_lsn?.0))),
        clean_stop: p.stop_lsn.filter(|_| p.kind == PendingKind::Failover).and_then(|stop| {
            let h = s.history.last().filter(|h| p.from.as_deref() == Some(h.to.as_str()))?;
            Some((h.timeline, stop))
        }),
        requested: p.to.as_deref(),
        forced: p.forced,
        degraded: s.degraded.as_ref(),
    };
    // Every other member holds no database that streamed from the old primary (each said
    // so in its final report): promoting any of them would lose every write the old primary
    // acknowledged, but the old primary itself, fenced and stopped, holds them all. It is
    // promoted again under the new generation (found by the simulation, seed 626: a primary
    // down past `primary_restart_timeout_ms` let its lease lapse while no standby could
    // take over, and the cluster waited forever).
    let none_holds_anything = input
        .standbys
        .values()
        .all(|r| r.as_ref().is_some_and(|r| r.timeline == Timeline::NONE));
    // Back and stopped, or started in recovery on its own WAL (a candidate of an earlier
    // change, replaced, reports so: the simulation, seed 6596), not streaming from anyone.
    let from_stopped = p.from.as_ref().filter(|f| {
        i.reports.get(*f).is_some_and(|r| {
            let own_wal =
                r.pg == PgRole::Standby && !r.streaming && r.final_position.is_some_and(|(_, tl)| tl > Timeline::NONE);
            r.generation == s.generation && (r.pg == PgRole::Stopped || own_wal)
        })
    });
    if let (true, Some(from), false) = (none_holds_anything, from_stopped, p.forced) {
        if p.to.is_none() && s.member(from).is_some() && !s.never_chosen(from) && !s.vetoed.contains(from) {
            return act(
                ControllerAction::Propose(Command::Promote {
                    generation: s.generation,
                    node: from.clone(),
                }),
                format!(
                    "no other member holds a database that streamed from {from}; {from} is stopped and holds every \
                     write it acknowledged: promoting it again"
                ),
            );
        }
    }
    let election = elect(&input);
    // The fenced primary, back and stopped, holds every write it acknowledged: when no
    // standby can be promoted (the election refuses, or has waited a whole lease for reports
    // that do not come), it is promoted again, losing nothing. In a degraded window the
    // writes it acknowledged asynchronously are on it alone; after a fork, the writes of
    // its parent may be on it and its old primary alone, and that one may have failed a
    // rewind since (the partition suite's pause-primary-node, finding 14: no primary for
    // good). A standby that may just not have reported yet gets a lease first.
    if let (Some(from), false, None) = (from_stopped, p.forced, &p.to) {
        let stuck = match &election {
            Election::Refuse { .. } => true,
            Election::Wait { .. } => i.pending_ms > s.ha.lease_ms,
            Election::Promote { .. } => false,
        };
        // Not once it refused (its pre_promote hook failed, or its database cannot become
        // consistent from its own WAL): it would be chosen, and refuse, again and again.
        if stuck && s.member(from).is_some() && !s.never_chosen(from) && !s.vetoed.contains(from) {
            let why = match &election {
                Election::Wait { reason } | Election::Refuse { reason } => reason.as_str(),
                Election::Promote { .. } => "",
            };
            return act(
                ControllerAction::Propose(Command::Promote {
                    generation: s.generation,
                    node: from.clone(),
                }),
                format!(
                    "{from} is back, stopped, and holds every write it acknowledged, and no standby can be \
                     promoted ({why}): promoting {from} again"
                ),
            );
        }
    }
    match election {
        Election::Promote { node, reason } => act(
            ControllerAction::Propose(Command::Promote {
                generation: s.generation,
                node,
            }),
            reason,
        ),
        Election::Refuse { reason } if p.to.is_some() && !p.forced => act(
            ControllerAction::Propose(Command::BeginFailover {
                generation: s.generation,
                to: None,
                forced: false,
                reason: format!("{}; promoting the most advanced standby instead", reason),
            }),
            format!("the requested target cannot be promoted safely ({reason}): choosing another"),
        ),
        Election::Wait { reason } | Election::Refuse { reason } => idle(reason),
    }
}

#[cfg(test)]
#[path = "controller_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "degradable_tests.rs"]
mod degradable_tests;
