//! The checkers: each reads a finished [`History`] and tests one consequence
//! of raftpg's two safety claims, never two writers and never a lost
//! acknowledged write. A checker is a pure function of the history, so it can
//! be rerun on an old `history.jsonl`, and every anomaly names the operations
//! (`Op::index`) that show it, so a person can go from the verdict straight to
//! the lines of the history.
//!
//! `Info` operations are taken at their word: they may or may not have taken
//! effect, now or later, so no checker blames the cluster for either. `Fail`
//! operations definitely had no effect, so seeing their value is an anomaly.
//!
//! This file holds what every checker shares: the caps on anomalies, the
//! helpers that build anomalies and results, [`check_all`], and the two
//! measurements that are not verdicts, [`counts`] and [`failovers`]. Each
//! checker lives in its own file and is re-exported here.

mod bank;
mod lists;
mod register;
#[cfg(test)]
mod testing;
mod timelines;
mod writes;

pub use bank::bank;
pub use lists::append;
pub use register::{register, REGISTER_BUDGET};
pub use timelines::{laggard_promotion, two_writers};
pub use writes::{lost_writes, set_reads};

use crate::history::{History, NemesisAction, NemesisEvent, Op, Outcome};
use crate::verdict::{Anomaly, CheckerResult, Counts, Failover};

/// A checker keeps this many anomalies and counts the rest: past a few
/// hundred, more examples of one bug do not help and the verdict stays readable.
const MAX_ANOMALIES: usize = 200;

/// Operations listed in one anomaly; its message gives the full count.
const MAX_OPS_PER_ANOMALY: usize = 50;

/// Runs every checker, in the order a person should read them.
pub fn check_all(h: &History) -> Vec<CheckerResult> {
    vec![
        lost_writes(h),
        two_writers(h),
        set_reads(h),
        append(h),
        laggard_promotion(h),
        bank(h),
        register(h),
    ]
}

/// Operation counts by outcome.
pub fn counts(h: &History) -> Counts {
    let mut c = Counts::default();
    for op in &h.ops {
        match op.outcome {
            Outcome::Ok => c.ok += 1,
            Outcome::Fail => c.fail += 1,
            Outcome::Info => c.info += 1,
        }
    }
    c
}

/// Every fault window (a start and the next stop of the same fault on the same nodes, or
/// the end of the history) with the writes that reached a faulted node while it lasted:
/// in flight when it started (a kill's victims) or started during it.
pub fn windows(h: &History) -> Vec<crate::verdict::Window> {
    let end = h
        .ops
        .iter()
        .map(|o| o.end_ns)
        .chain(h.nemesis.iter().map(|e| e.time_ns))
        .max()
        .unwrap_or(0);
    h.nemesis
        .iter()
        .enumerate()
        .filter(|(_, e)| e.action == NemesisAction::Start)
        .map(|(i, start)| {
            let end_ns = h.nemesis[i + 1..]
                .iter()
                .find(|e| e.action == NemesisAction::Stop && e.fault == start.fault && e.targets == start.targets)
                .map_or(end, |e| e.time_ns);
            let writes = h.ops.iter().filter(|o| {
                o.f.is_write()
                    && o.start_ns < end_ns
                    && o.end_ns >= start.time_ns
                    && o.node.as_ref().is_some_and(|n| start.targets.contains(n))
            });
            let (mut attempted, mut acknowledged) = (0, 0);
            for o in writes {
                attempted += 1;
                acknowledged += u64::from(o.outcome == Outcome::Ok);
            }
            crate::verdict::Window {
                fault: start.fault.clone(),
                intended: start.intended.clone(),
                hit: start.hit,
                targets: start.targets.clone(),
                start_ns: start.time_ns,
                end_ns,
                attempted,
                acknowledged,
            }
        })
        .collect()
}

/// For every fault that hit the primary: the time from the fault to the first
/// write acknowledged on a newer timeline than any write acknowledged before
/// it, before the next fault on the primary started. A fault after which no newer
/// timeline acknowledged a write by then (the old primary stayed or came back, or
/// the run ended) has no failover and is skipped: a timeline change belongs to the
/// latest fault on the primary before it. (Without that bound, a fault the primary
/// rode out was charged with the next one's failover: chaos at seed 662009 showed a
/// 48 s "failover" for a flapping link that caused none.) Nor does a change belong to a
/// fault on the primary that had healed before another fault of any kind started: chaos
/// at seed 754515 charged a restart the primary rode out with the 43 s until the change
/// that a later `majorities-ring`, about no node's role, caused.
pub fn failovers(h: &History) -> Vec<Failover> {
    let mut writes: Vec<(u64, u32)> = ok_writes(h).filter_map(|o| Some((o.end_ns, o.timeline?))).collect();
    writes.sort_unstable();
    let all: Vec<Failover> = h
        .nemesis
        .iter()
        .filter(|n| n.action == NemesisAction::Start && n.hit && about_primary(&n.intended, &n.fault))
        .filter_map(|n| failover(h, &writes, n))
        .collect();
    own_failovers(&all, &windows(h))
}

/// Of `failovers`, those whose first write came before the next fault on the primary
/// (in `windows`) started, and before any fault that started after their own had healed.
/// `table` applies it to a `suite.json` written before the rules.
pub fn own_failovers(failovers: &[Failover], windows: &[crate::verdict::Window]) -> Vec<Failover> {
    let starts: Vec<u64> = windows
        .iter()
        .filter(|w| w.hit && about_primary(&w.intended, &w.fault))
        .map(|w| w.start_ns)
        .collect();
    failovers
        .iter()
        .filter(|f| {
            let next = starts.iter().copied().filter(|t| *t > f.fault_ns).min();
            let healed = windows
                .iter()
                .filter(|w| w.start_ns == f.fault_ns && w.hit && about_primary(&w.intended, &w.fault))
                .map(|w| w.end_ns)
                .max();
            let after_heal = healed.and_then(|end| {
                windows
                    .iter()
                    .filter(|w| w.hit && w.start_ns >= end && w.start_ns > f.fault_ns)
                    .map(|w| w.start_ns)
                    .min()
            });
            next.is_none_or(|t| f.first_write_ns < t) && after_heal.is_none_or(|t| f.first_write_ns < t)
        })
        .cloned()
        .collect()
}

/// Scenarios whose fault leaves no primary that can take writes while it lasts, so raftpg
/// must fail over inside the fault window (a hung primary, DESIGN and issue 10, item 1).
pub const MUST_FAIL_OVER: &[&str] = &["pause-primary-pg"];

/// For the scenarios of [`MUST_FAIL_OVER`]: every fault that hit the primary is followed,
/// before it is healed, by a write acknowledged on a newer timeline.
pub fn failover_required(h: &History) -> CheckerResult {
    const NAME: &str = "failover-required";
    let found = failovers(h);
    let starts: Vec<&NemesisEvent> = h
        .nemesis
        .iter()
        .filter(|n| n.action == NemesisAction::Start && n.hit)
        .collect();
    let mut anomalies = Vec::new();
    let mut times = Vec::new();
    for start in &starts {
        let healed = h
            .nemesis
            .iter()
            .find(|n| n.action == NemesisAction::Stop && n.time_ns >= start.time_ns)
            .map_or(u64::MAX, |n| n.time_ns);
        match found
            .iter()
            .find(|f| f.fault_ns == start.time_ns && f.first_write_ns <= healed)
        {
            Some(f) => times.push(format!("{:.2} s", f.ms as f64 / 1000.0)),
            None => anomalies.push(anomaly(
                NAME,
                "no-failover",
                format!(
                    "{} on {} at {}: no other node took a write before the heal at {}; a primary that cannot commit must be failed over",
                    start.fault,
                    start.targets.join(", "),
                    secs(start.time_ns),
                    if healed == u64::MAX { "the end".into() } else { secs(healed) }
                ),
                vec![],
            )),
        }
    }
    if starts.is_empty() {
        return finish_with(NAME, "unknown", "no fault hit the primary".into(), anomalies);
    }
    let summary = format!(
        "{} of {} faults failed over before the heal ({})",
        times.len(),
        starts.len(),
        times.join(", ")
    );
    finish(NAME, summary, anomalies)
}

/// Whether a fault (its intended role and its name) is about the primary.
fn about_primary(intended: &str, fault: &str) -> bool {
    intended == "primary" || fault.contains("primary")
}

fn failover(h: &History, writes: &[(u64, u32)], n: &NemesisEvent) -> Option<Failover> {
    let before = writes.partition_point(|(end, _)| *end <= n.time_ns);
    // With no write acknowledged yet, the probes tell which timeline the
    // faulted primary was on.
    let from = writes[..before].iter().map(|w| w.1).max().or_else(|| {
        let probes = h
            .probes
            .iter()
            .filter(|p| p.time_ns <= n.time_ns && p.role == "primary");
        probes.filter_map(|p| p.timeline).max()
    })?;
    let &(end, to) = writes[before..].iter().find(|w| w.1 > from)?;
    Some(Failover {
        fault: n.fault.clone(),
        fault_ns: n.time_ns,
        first_write_ns: end,
        ms: (end - n.time_ns) / 1_000_000,
        from_timeline: from,
        to_timeline: to,
    })
}

/// PostgreSQL's `X/X` notation, so an LSN can be pasted into `pg_waldump`.
pub use raftpg::decide::election::lsn as format_lsn;

fn secs(ns: u64) -> String {
    format!("{:.3} s", ns as f64 / 1e9)
}

/// Where and when an acknowledged operation ran, for messages.
fn whence(op: &Op) -> String {
    let node = op.node.as_deref().unwrap_or("an unknown node");
    let timeline = op.timeline.map_or_else(String::new, |t| format!(", timeline {t}"));
    format!(
        "op {} on {node}{timeline}, acknowledged at {}",
        op.index,
        secs(op.end_ns)
    )
}

fn ok_ops(h: &History) -> impl Iterator<Item = &Op> {
    h.ops.iter().filter(|o| o.outcome == Outcome::Ok)
}

fn ok_writes(h: &History) -> impl Iterator<Item = &Op> {
    ok_ops(h).filter(|o| o.f.is_write())
}

fn anomaly(checker: &str, kind: &str, message: String, mut ops: Vec<u64>) -> Anomaly {
    ops.sort_unstable();
    ops.dedup();
    ops.truncate(MAX_OPS_PER_ANOMALY);
    Anomaly {
        checker: checker.into(),
        kind: kind.into(),
        message,
        ops,
    }
}

fn finish(name: &str, summary: String, anomalies: Vec<Anomaly>) -> CheckerResult {
    let status = if anomalies.is_empty() { "valid" } else { "invalid" };
    finish_with(name, status, summary, anomalies)
}

fn finish_with(name: &str, status: &str, mut summary: String, mut anomalies: Vec<Anomaly>) -> CheckerResult {
    if anomalies.len() > MAX_ANOMALIES {
        summary += &format!(" (first {MAX_ANOMALIES} of {} anomalies kept)", anomalies.len());
        anomalies.truncate(MAX_ANOMALIES);
    }
    CheckerResult {
        name: name.into(),
        status: status.into(),
        summary,
        anomalies,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testing::*;
    use crate::history::{Probe, BANK_ACCOUNTS, BANK_START};

    const S: u64 = 1_000_000_000;

    fn fault(time_ns: u64, intended: &str, hit: bool) -> NemesisEvent {
        NemesisEvent {
            time_ns,
            fault: "isolate".into(),
            action: NemesisAction::Start,
            targets: vec!["n1".into()],
            intended: intended.into(),
            hit,
            detail: String::new(),
        }
    }

    /// The heal of [`fault`]'s fault on n1.
    fn heal(time_ns: u64) -> NemesisEvent {
        NemesisEvent {
            action: NemesisAction::Stop,
            ..fault(time_ns, "primary", true)
        }
    }

    #[test]
    fn failovers_measure_fault_to_first_write_on_a_new_timeline() {
        let ops = vec![
            on(set_add(1, Outcome::Ok, S), "n1", 1),
            // A read on the new timeline is not a write.
            on(read(1, &[], 2 * S), "n2", 2),
            on(set_add(2, Outcome::Ok, 4 * S - 5), "n2", 2),
            on(set_add(3, Outcome::Ok, 5 * S), "n2", 2),
        ];
        let mut h = history(ops, vec![]);
        h.nemesis = vec![
            fault(S + S / 2, "primary", true),
            fault(S, "standby", true),
            fault(S, "primary", false),
        ];
        let f = failovers(&h);
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].ms, f[0].from_timeline, f[0].to_timeline, f[0].first_write_ns),
            (2500, 1, 2, 4 * S)
        );
        // Before any write, the probes tell the timeline.
        h.ops.remove(0);
        h.probes.push(Probe {
            time_ns: 0,
            node: "n1".into(),
            role: "primary".into(),
            timeline: Some(1),
            lsn: None,
        });
        assert_eq!(failovers(&h).len(), 1);
        h.probes.clear();
        assert!(failovers(&h).is_empty());
    }

    #[test]
    fn a_fault_the_primary_rode_out_is_not_charged_with_the_next_faults_failover() {
        let ops = vec![
            on(set_add(1, Outcome::Ok, S), "n1", 1),
            // The first fault (2 s) changes nothing: n1 keeps writing on timeline 1.
            on(set_add(2, Outcome::Ok, 3 * S), "n1", 1),
            // The second (4 s) is followed by a failover.
            on(set_add(3, Outcome::Ok, 5 * S), "n2", 2),
        ];
        let mut h = history(ops, vec![]);
        h.nemesis = vec![fault(2 * S, "primary", true), fault(4 * S, "primary", true)];
        let f = failovers(&h);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!((f[0].fault_ns, f[0].ms), (4 * S, 1000));
        // With the second fault gone, the change after the first is its own.
        h.nemesis.pop();
        assert_eq!(failovers(&h)[0].ms, 3000);
    }

    #[test]
    fn a_change_after_a_later_fault_of_any_kind_is_not_the_healed_primary_faults() {
        let ring = NemesisEvent {
            time_ns: 4 * S,
            fault: "majorities-ring".into(),
            targets: vec!["n1".into(), "n2".into(), "n3".into()],
            ..fault(4 * S, "all", true)
        };
        let ops = vec![
            on(set_add(1, Outcome::Ok, S), "n1", 1),
            on(set_add(2, Outcome::Ok, 7 * S), "n2", 2),
        ];
        let mut h = history(ops, vec![]);
        // The fault on the primary (2-3 s) heals; a ring cuts every node at 4 s; the
        // change at 7 s is the ring's, not the primary fault's.
        h.nemesis = vec![fault(2 * S, "primary", true), heal(3 * S), ring.clone()];
        assert!(failovers(&h).is_empty(), "{:?}", failovers(&h));
        // A fault that starts while the primary's still lasts (a candidate killed
        // mid-failover) leaves the failover measured from the first fault.
        h.nemesis = vec![
            fault(2 * S, "primary", true),
            NemesisEvent {
                time_ns: 3 * S,
                ..ring.clone()
            },
            heal(5 * S),
        ];
        let f = failovers(&h);
        assert_eq!((f.len(), f[0].ms), (1, 5000), "{f:?}");
        // Without the ring, the change belongs to the healed fault as before.
        h.nemesis = vec![fault(2 * S, "primary", true), heal(3 * S)];
        assert_eq!(failovers(&h)[0].ms, 5000);
    }

    #[test]
    fn a_window_counts_the_writes_its_faulted_node_received() {
        let ops = vec![
            on(set_add(1, Outcome::Ok, S), "n1", 1),       // before the window
            on(set_add(2, Outcome::Ok, 3 * S), "n1", 1),   // in it, acknowledged
            on(set_add(3, Outcome::Info, 4 * S), "n1", 1), // in it, unknown
            on(set_add(4, Outcome::Ok, 4 * S), "n2", 2),   // in it, another node
            on(read(1, &[], 4 * S), "n1", 1),              // in it, not a write
            on(set_add(5, Outcome::Ok, 9 * S), "n1", 1),   // after it
        ];
        let mut h = history(ops, vec![]);
        h.nemesis = vec![fault(2 * S, "primary", true), heal(8 * S)];
        let w = windows(&h);
        assert_eq!(w.len(), 1);
        assert_eq!((w[0].attempted, w[0].acknowledged), (2, 1), "{w:?}");
        assert_eq!((w[0].start_ns, w[0].end_ns), (2 * S, 8 * S));
        // A window that never healed lasts to the end of the history.
        h.nemesis.pop();
        assert_eq!(windows(&h)[0].end_ns, 9 * S + 5, "the last operation's end");
        h.ops.retain(|o| o.node.as_deref() != Some("n1"));
        assert_eq!(windows(&h)[0].attempted, 0, "no write reached the faulted primary");
    }

    #[test]
    fn failover_required_wants_a_write_on_a_new_timeline_before_each_heal() {
        let ops = vec![
            on(set_add(1, Outcome::Ok, S), "n1", 1),
            on(set_add(2, Outcome::Ok, 5 * S), "n2", 2),
        ];
        let mut h = history(ops, vec![]);
        h.nemesis = vec![fault(2 * S, "primary", true), heal(8 * S)];
        let r = failover_required(&h);
        assert_eq!(r.status, "valid", "{r:?}");
        assert!(r.summary.contains("1 of 1"), "{r:?}");
        // The new primary's first write came only after the heal: no failover in time.
        h.nemesis[1] = heal(4 * S);
        let r = failover_required(&h);
        assert_eq!(r.status, "invalid", "{r:?}");
        assert_eq!(r.anomalies[0].kind, "no-failover");
        // Nothing hit: unknown, never valid.
        h.nemesis = vec![fault(2 * S, "primary", false)];
        assert_eq!(failover_required(&h).status, "unknown");
    }

    #[test]
    fn check_all_passes_a_clean_history_and_counts_outcomes() {
        let ops = vec![
            set_add(1, Outcome::Ok, 0),
            set_add(2, Outcome::Info, 10),
            set_add(3, Outcome::Fail, 20),
        ];
        let finals = three(|f| {
            f.set = vec![1];
            f.balances = vec![BANK_START; BANK_ACCOUNTS as usize];
        });
        let h = history(ops, finals);
        let results = check_all(&h);
        assert_eq!(results.len(), 7);
        for r in &results {
            assert_eq!(r.status, "valid", "{r:?}");
        }
        assert_eq!(
            counts(&h),
            Counts {
                ok: 1,
                fail: 1,
                info: 1
            }
        );
        assert_eq!(format_lsn(0x1_0000_0028), "1/28");
    }
}
