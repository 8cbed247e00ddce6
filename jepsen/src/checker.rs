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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use porcupine_rs::{CheckResult, LinearizationInfo, Model, Operation};

use crate::history::{
    FinalRead, Fork, History, NemesisAction, NemesisEvent, Op, Outcome, BANK_ACCOUNTS, BANK_START, F,
};
use crate::verdict::{Anomaly, CheckerResult, Counts, Failover};

/// A checker keeps this many anomalies and counts the rest: past a few
/// hundred, more examples of one bug do not help and the verdict stays readable.
const MAX_ANOMALIES: usize = 200;

/// Operations listed in one anomaly; its message gives the full count.
const MAX_OPS_PER_ANOMALY: usize = 50;

/// Time for the register linearizability search, all keys together. The
/// search is exponential in the worst case; past this the answer is `unknown`.
pub const REGISTER_BUDGET: Duration = Duration::from_secs(30);

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

/// For every fault that hit the primary: the time from the fault to the first
/// write acknowledged on a newer timeline than any write acknowledged before
/// it. A fault after which no newer timeline acknowledged a write (the old
/// primary came back, or the run ended) has no failover and is skipped.
pub fn failovers(h: &History) -> Vec<Failover> {
    let mut writes: Vec<(u64, u32)> = ok_writes(h).filter_map(|o| Some((o.end_ns, o.timeline?))).collect();
    writes.sort_unstable();
    h.nemesis
        .iter()
        .filter(|n| n.action == NemesisAction::Start && n.hit && about_primary(n))
        .filter_map(|n| failover(h, &writes, n))
        .collect()
}

fn about_primary(n: &NemesisEvent) -> bool {
    n.intended == "primary" || n.fault.contains("primary")
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

/// Every acknowledged insert and append is in the final read of every node:
/// synchronous quorum replication promises that no acknowledged write is lost,
/// on any node, once the cluster has converged.
pub fn lost_writes(h: &History) -> CheckerResult {
    const NAME: &str = "lost-writes";
    if h.finals.is_empty() {
        let msg = "no final reads: the cluster never converged, nothing could be checked".to_string();
        return finish(
            NAME,
            "no final reads".into(),
            vec![anomaly(NAME, "no-final-read", msg, vec![])],
        );
    }
    let sets: Vec<HashSet<i64>> = h.finals.iter().map(|f| f.set.iter().copied().collect()).collect();
    let lists: Vec<HashMap<i32, HashSet<i64>>> = h
        .finals
        .iter()
        .map(|f| f.lists.iter().map(|(k, l)| (*k, l.iter().copied().collect())).collect())
        .collect();
    let (mut inserts, mut appends, mut anomalies) = (0, 0, Vec::new());
    for op in ok_ops(h) {
        let (what, missing): (String, Vec<&str>) = match &op.f {
            F::SetAdd { id } => {
                inserts += 1;
                let missing = h.finals.iter().zip(&sets).filter(|(_, s)| !s.contains(id));
                (
                    format!("insert of id {id}"),
                    missing.map(|(f, _)| f.node.as_str()).collect(),
                )
            }
            F::AppendAdd { key, value, .. } => {
                appends += 1;
                let has = |l: &HashMap<i32, HashSet<i64>>| l.get(key).is_some_and(|s| s.contains(value));
                let missing = h.finals.iter().zip(&lists).filter(|(_, l)| !has(l));
                (
                    format!("append of {value} to key {key}"),
                    missing.map(|(f, _)| f.node.as_str()).collect(),
                )
            }
            _ => continue,
        };
        if !missing.is_empty() {
            let msg = format!(
                "acknowledged {what} ({}) is missing from the final read of {}: an acknowledged write was lost",
                whence(op),
                missing.join(", ")
            );
            anomalies.push(anomaly(NAME, "lost", msg, vec![op.index]));
        }
    }
    let summary = format!(
        "{inserts} acknowledged inserts and {appends} acknowledged appends checked on {} nodes; {} missing",
        h.finals.len(),
        anomalies.len()
    );
    finish(NAME, summary, anomalies)
}

/// Never two writers: one timeline is written by one node, and once a newer
/// timeline has acknowledged a write no older timeline acknowledges a write
/// that began after that.
pub fn two_writers(h: &History) -> CheckerResult {
    let mut by_timeline: BTreeMap<u32, Vec<&Op>> = BTreeMap::new();
    for op in ok_writes(h) {
        if let Some(t) = op.timeline {
            by_timeline.entry(t).or_default().push(op);
        }
    }
    let mut anomalies = split_brains(&by_timeline);
    anomalies.extend(stale_writers(&by_timeline));
    let writes: usize = by_timeline.values().map(Vec::len).sum();
    let summary = format!("{writes} acknowledged writes on {} timelines", by_timeline.len());
    finish("two-writers", summary, anomalies)
}

fn split_brains(by_timeline: &BTreeMap<u32, Vec<&Op>>) -> Vec<Anomaly> {
    let mut out = Vec::new();
    for (t, ops) in by_timeline {
        let mut first: BTreeMap<&str, &Op> = BTreeMap::new();
        for op in ops {
            if let Some(node) = op.node.as_deref() {
                first.entry(node).or_insert(op);
            }
        }
        if first.len() > 1 {
            let who: Vec<String> = first.iter().map(|(n, op)| format!("{n} (op {})", op.index)).collect();
            let msg = format!(
                "timeline {t} acknowledged writes from {} nodes, {}: two primaries wrote on one timeline (split brain)",
                first.len(),
                who.join(", ")
            );
            out.push(anomaly(
                "two-writers",
                "split-brain",
                msg,
                first.values().map(|o| o.index).collect(),
            ));
        }
    }
    out
}

fn stale_writers(by_timeline: &BTreeMap<u32, Vec<&Op>>) -> Vec<Anomaly> {
    // Per timeline, the first acknowledgement and the latest start are enough
    // to find a stale writer without comparing every pair of writes.
    let first_ack: BTreeMap<u32, &Op> = by_timeline
        .iter()
        .filter_map(|(t, ops)| Some((*t, *ops.iter().min_by_key(|o| o.end_ns)?)))
        .collect();
    let last_start: BTreeMap<u32, u64> = by_timeline
        .iter()
        .map(|(t, ops)| (*t, ops.iter().map(|o| o.start_ns).max().unwrap_or(0)))
        .collect();
    let mut out = Vec::new();
    for (tb, newer) in &first_ack {
        for (ta, ops) in by_timeline.range(..tb) {
            if last_start[ta] <= newer.end_ns {
                continue;
            }
            let late: Vec<&Op> = ops.iter().filter(|o| o.start_ns > newer.end_ns).copied().collect();
            let msg = format!(
                "timeline {ta} acknowledged {} writes that began after timeline {tb} had acknowledged op {} at {}, \
                 e.g. {}: the old primary kept accepting writes after a new one took over",
                late.len(),
                newer.index,
                secs(newer.end_ns),
                whence(late[0])
            );
            let ops = std::iter::once(newer.index)
                .chain(late.iter().map(|o| o.index))
                .collect();
            out.push(anomaly("two-writers", "stale-writer", msg, ops));
        }
    }
    out
}

/// What the final sets hold: only ids some client tried to insert, each once,
/// and none whose every insert failed.
pub fn set_reads(h: &History) -> CheckerResult {
    const NAME: &str = "set-reads";
    let mut attempts: HashMap<i64, Vec<&Op>> = HashMap::new();
    for op in &h.ops {
        if let F::SetAdd { id } = op.f {
            attempts.entry(id).or_default().push(op);
        }
    }
    let mut found: BTreeMap<(&str, i64), BTreeSet<&str>> = BTreeMap::new();
    for f in &h.finals {
        let mut seen = HashSet::with_capacity(f.set.len());
        for &id in &f.set {
            let kind = if !seen.insert(id) {
                "duplicate"
            } else {
                match attempts.get(&id) {
                    None => "phantom",
                    Some(ops) if ops.iter().all(|o| o.outcome == Outcome::Fail) => "aborted",
                    Some(_) => continue,
                }
            };
            found.entry((kind, id)).or_default().insert(&f.node);
        }
    }
    let anomalies = found.into_iter().map(|((kind, id), nodes)| {
        let nodes = nodes.into_iter().collect::<Vec<_>>().join(", ");
        let ops: Vec<u64> = attempts
            .get(&id)
            .map_or_else(Vec::new, |v| v.iter().map(|o| o.index).collect());
        let msg = match kind {
            "phantom" => format!("id {id} is in the final set on {nodes} but no client ever inserted it"),
            "duplicate" => {
                format!("id {id} appears more than once in the final set on {nodes}: an insert was applied twice")
            }
            _ => format!(
                "id {id} is in the final set on {nodes} but every insert of it failed: a failed write took effect"
            ),
        };
        anomaly(NAME, kind, msg, ops)
    });
    let anomalies: Vec<Anomaly> = anomalies.collect();
    let ids: usize = h.finals.iter().map(|f| f.set.len()).sum();
    let summary = format!(
        "{ids} ids in {} final sets, {} ids attempted",
        h.finals.len(),
        attempts.len()
    );
    finish(NAME, summary, anomalies)
}

/// Where an observed append list came from.
#[derive(Clone, Copy)]
enum Source<'a> {
    Append(&'a Op),
    Read(&'a Op),
    Final(&'a FinalRead),
}

impl Source<'_> {
    fn op(&self) -> Option<u64> {
        match self {
            Source::Append(op) | Source::Read(op) => Some(op.index),
            Source::Final(_) => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Source::Append(op) => format!("op {} (append)", op.index),
            Source::Read(op) => format!("op {} (read)", op.index),
            Source::Final(f) => format!("the final read of {}", f.node),
        }
    }
}

type Observed<'a> = (Source<'a>, &'a [i64]);

/// Every list observed for a key is a prefix of every longer one (appends
/// are applied in one order, once), and holds only values appended to that
/// key by an operation that did not fail.
pub fn append(h: &History) -> CheckerResult {
    let mut attempts: HashMap<(i32, i64), Vec<&Op>> = HashMap::new();
    let mut observed: BTreeMap<i32, Vec<Observed>> = BTreeMap::new();
    for op in &h.ops {
        let ok = op.outcome == Outcome::Ok;
        match &op.f {
            F::AppendAdd { key, value, result } => {
                attempts.entry((*key, *value)).or_default().push(op);
                if let (true, Some(r)) = (ok, result) {
                    observed.entry(*key).or_default().push((Source::Append(op), r));
                }
            }
            F::AppendRead { key, result: Some(r) } if ok => {
                observed.entry(*key).or_default().push((Source::Read(op), r));
            }
            _ => {}
        }
    }
    for f in &h.finals {
        for (key, list) in &f.lists {
            observed.entry(*key).or_default().push((Source::Final(f), list));
        }
    }
    let mut anomalies = Vec::new();
    for (key, lists) in &observed {
        anomalies.extend(check_key_lists(*key, lists, &attempts));
    }
    let count: usize = observed.values().map(Vec::len).sum();
    let summary = format!("{count} lists observed on {} keys", observed.len());
    finish("append", summary, anomalies)
}

fn check_key_lists(key: i32, lists: &[Observed], attempts: &HashMap<(i32, i64), Vec<&Op>>) -> Vec<Anomaly> {
    let Some(&reference) = lists.iter().max_by_key(|(_, l)| l.len()) else {
        return Vec::new();
    };
    // Every list must be a prefix of the longest. A list that is one holds
    // nothing the longest does not, so only the longest and the lists that
    // diverge need their values checked.
    let mut to_scan = vec![reference];
    let mut divergent: BTreeMap<(usize, i64), (Observed, usize)> = BTreeMap::new();
    for obs in lists {
        if let Some(pos) = first_difference(obs.1, reference.1) {
            to_scan.push(*obs);
            divergent.entry((pos, obs.1[pos])).or_insert((*obs, 0)).1 += 1;
        }
    }
    let mut out = Vec::new();
    for ((pos, value), (obs, n)) in divergent {
        let msg = format!(
            "key {key}: {} saw {value} at position {pos} but {} saw {} there ({n} lists agree with the former): \
             the order of appends diverged",
            obs.0.describe(),
            reference.0.describe(),
            reference.1[pos]
        );
        out.push(anomaly(
            "append",
            "divergent-order",
            msg,
            obs.0.op().into_iter().chain(reference.0.op()).collect(),
        ));
    }
    out.extend(bad_values(key, &to_scan, attempts));
    out
}

/// The first position where neither list is a prefix of the other.
fn first_difference(a: &[i64], b: &[i64]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

fn bad_values(key: i32, lists: &[Observed], attempts: &HashMap<(i32, i64), Vec<&Op>>) -> Vec<Anomaly> {
    let mut found: BTreeMap<(&str, i64), Source> = BTreeMap::new();
    for (source, list) in lists {
        let mut seen = HashSet::with_capacity(list.len());
        for &v in *list {
            let kind = if !seen.insert(v) {
                "duplicate"
            } else {
                match attempts.get(&(key, v)) {
                    None => "phantom",
                    Some(ops) if ops.iter().all(|o| o.outcome == Outcome::Fail) => "aborted",
                    Some(_) => continue,
                }
            };
            found.entry((kind, v)).or_insert(*source);
        }
    }
    let anomalies = found.into_iter().map(|((kind, v), source)| {
        let by = source.describe();
        let msg = match kind {
            "duplicate" => format!("key {key}: {by} holds {v} more than once: an append was applied twice"),
            "phantom" => format!("key {key}: {by} holds {v}, which no client ever appended to this key"),
            _ => format!("key {key}: {by} holds {v}, but every append of it failed: a failed write took effect"),
        };
        let attempted = attempts.get(&(key, v)).into_iter().flatten().map(|o| o.index);
        anomaly("append", kind, msg, source.op().into_iter().chain(attempted).collect())
    });
    anomalies.collect()
}

/// No acknowledged write lies beyond the point where a later timeline
/// branched off its own: if one does, the promoted standby had not received
/// it, so the promotion threw away an acknowledged write. Also checks that
/// the nodes agree on one timeline history, and that every timeline that
/// acknowledged writes is in it.
pub fn laggard_promotion(h: &History) -> CheckerResult {
    const NAME: &str = "laggard-promotion";
    let Some(best) = h.finals.iter().max_by_key(|f| (f.forks.len(), f.role == "primary")) else {
        let summary = "no final reads: no timeline history to check".to_string();
        return finish_with(NAME, "unknown", summary, Vec::new());
    };
    let writes: Vec<&Op> = ok_writes(h).filter(|o| o.timeline.is_some()).collect();
    let mut anomalies = divergent_histories(h, best);
    anomalies.extend(laggards(&best.forks, &writes));
    // Without a history file on a later timeline, every older timeline would
    // look orphaned; that is a harness gap, not a cluster fault.
    let history_known = !best.forks.is_empty() || best.timeline <= 1;
    if history_known {
        anomalies.extend(orphans(best, &writes));
    }
    let summary = format!(
        "{} acknowledged writes checked against {} timeline switches (final timeline {} on {}){}",
        writes.len(),
        best.forks.len(),
        best.timeline,
        best.node,
        if history_known {
            ""
        } else {
            "; timeline history missing"
        }
    );
    finish(NAME, summary, anomalies)
}

fn divergent_histories(h: &History, best: &FinalRead) -> Vec<Anomaly> {
    let mut out = Vec::new();
    for f in &h.finals {
        for fork in &f.forks {
            let theirs = best.forks.iter().find(|b| b.timeline == fork.timeline);
            if theirs == Some(fork) {
                continue;
            }
            let other = theirs.map_or_else(
                || format!("has no timeline {}", fork.timeline),
                |b| format!("says it branched off {} at {}", b.parent, format_lsn(b.lsn)),
            );
            let msg = format!(
                "{} says timeline {} branched off timeline {} at {}, but {} {other}: the nodes do not share one history",
                f.node,
                fork.timeline,
                fork.parent,
                format_lsn(fork.lsn),
                best.node
            );
            out.push(anomaly("laggard-promotion", "divergent-history", msg, vec![]));
        }
    }
    out
}

fn laggards(forks: &[Fork], writes: &[&Op]) -> Vec<Anomaly> {
    let mut by_parent: HashMap<u32, Fork> = HashMap::new();
    for f in forks {
        let e = by_parent.entry(f.parent).or_insert(*f);
        if f.lsn < e.lsn {
            *e = *f;
        }
    }
    let mut beyond: BTreeMap<u32, Vec<&Op>> = BTreeMap::new();
    for op in writes {
        let (Some(t), Some(lsn)) = (op.timeline, op.lsn) else {
            continue;
        };
        if let Some(fork) = by_parent.get(&t).filter(|f| lsn >= f.lsn) {
            beyond.entry(fork.timeline).or_default().push(op);
        }
    }
    let by_child: HashMap<u32, Fork> = by_parent.values().map(|f| (f.timeline, *f)).collect();
    let anomalies = beyond.into_iter().map(|(child, ops)| {
        let fork = by_child[&child];
        let first = ops[0];
        let msg = format!(
            "{} has its commit record after LSN {}, but timeline {} branched off timeline {} at LSN {}, not after \
             it: a standby that lacked an acknowledged write was promoted ({} acknowledged writes lie beyond the fork)",
            whence(first),
            format_lsn(first.lsn.unwrap_or(0)),
            fork.timeline,
            fork.parent,
            format_lsn(fork.lsn),
            ops.len()
        );
        anomaly(
            "laggard-promotion",
            "laggard-promotion",
            msg,
            ops.iter().map(|o| o.index).collect(),
        )
    });
    anomalies.collect()
}

fn orphans(best: &FinalRead, writes: &[&Op]) -> Vec<Anomaly> {
    let mut chain: BTreeSet<u32> = best.forks.iter().flat_map(|f| [f.timeline, f.parent]).collect();
    chain.insert(best.timeline);
    let mut orphaned: BTreeMap<u32, Vec<&Op>> = BTreeMap::new();
    for op in writes {
        if let Some(t) = op.timeline.filter(|t| !chain.contains(t)) {
            orphaned.entry(t).or_default().push(op);
        }
    }
    let anomalies = orphaned.into_iter().map(|(t, ops)| {
        let msg = format!(
            "timeline {t} acknowledged {} writes (e.g. {}) but is not in the final timeline history of {} \
             (timelines {chain:?}): everything written on it was thrown away",
            ops.len(),
            whence(ops[0]),
            best.node
        );
        anomaly(
            "laggard-promotion",
            "orphaned-timeline",
            msg,
            ops.iter().map(|o| o.index).collect(),
        )
    });
    anomalies.collect()
}

/// Transfers move money, never create or destroy it: every read of all
/// balances sums to the starting total, has one balance per account, and
/// none is negative.
pub fn bank(h: &History) -> CheckerResult {
    const NAME: &str = "bank";
    let mut anomalies = Vec::new();
    let mut reads = 0;
    for op in ok_ops(h) {
        if let F::BankRead { balances: Some(b) } = &op.f {
            reads += 1;
            for (kind, problem) in bank_problems(b) {
                let msg = format!("op {} read balances {b:?}: {problem}", op.index);
                anomalies.push(anomaly(NAME, kind, msg, vec![op.index]));
            }
        }
    }
    // A run without the bank workload has no balances to check in its finals.
    let ran = h.ops.iter().any(|o| o.f.workload() == "bank") || h.finals.iter().any(|f| !f.balances.is_empty());
    let finals: Vec<&FinalRead> = if ran { h.finals.iter().collect() } else { Vec::new() };
    for f in &finals {
        for (kind, problem) in bank_problems(&f.balances) {
            let msg = format!(
                "the final read of {} holds balances {:?}: {problem}",
                f.node, f.balances
            );
            anomalies.push(anomaly(NAME, kind, msg, vec![]));
        }
    }
    let summary = format!(
        "{reads} acknowledged reads and {} final reads of all balances",
        finals.len()
    );
    finish(NAME, summary, anomalies)
}

fn bank_problems(balances: &[i64]) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if balances.len() != BANK_ACCOUNTS as usize {
        let problem = format!(
            "{} accounts, not {BANK_ACCOUNTS}: an account was lost or invented",
            balances.len()
        );
        out.push(("wrong-length", problem));
    }
    let total: i64 = balances.iter().sum();
    let expected = BANK_ACCOUNTS as i64 * BANK_START;
    if total != expected {
        let problem = format!("the total is {total}, not {expected}: a transfer was half applied, lost or repeated");
        out.push(("wrong-total", problem));
    }
    if let Some((account, b)) = balances.iter().enumerate().find(|(_, b)| **b < 0) {
        let problem = format!("account {account} holds {b}: a transfer the transaction should refuse was applied");
        out.push(("negative-balance", problem));
    }
    out
}

/// The sequential specification of one register: empty at first, compare
/// and set on empty fails.
#[derive(Clone, Debug)]
struct RegisterModel;

#[derive(Clone, Debug)]
enum RegOp {
    /// What the read saw (None: empty).
    Read(Option<i64>),
    Write(i64),
    /// `swapped` is None when the outcome is unknown: then the swap happened
    /// exactly when the compare matched, and any state is an acceptable answer.
    Cas {
        from: i64,
        to: i64,
        swapped: Option<bool>,
    },
}

impl Model for RegisterModel {
    type State = Option<i64>;
    type Op = RegOp;
    /// `Op::index`, absent for the final read.
    type Metadata = u64;

    fn init() -> Option<i64> {
        None
    }

    fn step(state: &Option<i64>, op: &RegOp) -> (bool, Option<i64>) {
        match *op {
            RegOp::Read(v) => (v == *state, *state),
            RegOp::Write(v) => (true, Some(v)),
            RegOp::Cas { from, to, swapped } => {
                let matches = *state == Some(from);
                let next = if matches { Some(to) } else { *state };
                (swapped.is_none_or(|s| s == matches), next)
            }
        }
    }
}

/// Every register key is linearizable: there is one order of its operations,
/// consistent with real time, in which each read sees the latest write and
/// each compare-and-set answers truly. The final read of the primary closes
/// each key's history, so a lost register write is caught here too.
pub fn register(h: &History) -> CheckerResult {
    register_within(h, REGISTER_BUDGET)
}

fn register_within(h: &History, budget: Duration) -> CheckerResult {
    const NAME: &str = "register";
    let deadline = Instant::now() + budget;
    let histories = register_histories(h);
    let (mut anomalies, mut undecided) = (Vec::new(), Vec::new());
    for (i, (key, ops)) in histories.iter().enumerate() {
        // A fair share of what is left: one hard key cannot starve the
        // others, and the time an easy key does not use goes to the rest.
        let share = deadline.saturating_duration_since(Instant::now()) / (histories.len() - i) as u32;
        let result = if share.is_zero() {
            CheckResult::Unknown
        } else {
            porcupine_rs::check_operations_timeout(ops, share)
        };
        match result {
            CheckResult::Ok => {}
            CheckResult::Unknown => undecided.push(key.to_string()),
            CheckResult::Illegal => anomalies.push(explain_register(*key, ops, deadline)),
        }
    }
    let n: usize = histories.values().map(Vec::len).sum();
    let mut summary = format!("{n} operations on {} keys", histories.len());
    let status = if !anomalies.is_empty() {
        "invalid"
    } else if !undecided.is_empty() {
        summary += &format!(
            "; the search ran out of time ({budget:?} in all) on keys {}",
            undecided.join(", ")
        );
        "unknown"
    } else {
        "valid"
    };
    finish_with(NAME, status, summary, anomalies)
}

fn register_histories(h: &History) -> BTreeMap<i32, Vec<Operation<RegisterModel>>> {
    let mut out: BTreeMap<i32, Vec<Operation<RegisterModel>>> = BTreeMap::new();
    for op in &h.ops {
        let (key, rop) = match (&op.f, op.outcome) {
            (F::RegRead { key, result: Some(v) }, Outcome::Ok) => (key, RegOp::Read(*v)),
            (F::RegWrite { key, value }, Outcome::Ok | Outcome::Info) => (key, RegOp::Write(*value)),
            (F::RegCas { key, from, to, swapped }, Outcome::Ok | Outcome::Info) => {
                let swapped = if op.outcome == Outcome::Ok { *swapped } else { None };
                (
                    key,
                    RegOp::Cas {
                        from: *from,
                        to: *to,
                        swapped,
                    },
                )
            }
            _ => continue,
        };
        // An unknown write may take effect at any time after it began.
        let return_time = if op.outcome == Outcome::Info {
            i64::MAX
        } else {
            op.end_ns as i64
        };
        out.entry(*key).or_default().push(Operation {
            client_id: Some(op.process),
            call_time: op.start_ns as i64,
            return_time,
            op: rop,
            metadata: Some(op.index),
        });
    }
    let last_ns = h.ops.iter().map(|o| o.end_ns.max(o.start_ns)).max().unwrap_or(0) as i64;
    let Some(f) = h.finals.iter().find(|f| f.role == "primary").or(h.finals.first()) else {
        return out;
    };
    // A key the final read lacks is empty there: every register written to
    // must show up.
    let keys: BTreeSet<i32> = out.keys().chain(f.registers.keys()).copied().collect();
    for key in keys {
        out.entry(key).or_default().push(Operation {
            client_id: None,
            call_time: last_ns + 1,
            return_time: last_ns + 2,
            op: RegOp::Read(f.registers.get(&key).copied()),
            metadata: None,
        });
    }
    out
}

/// Names the operations that no order can place: after the longest order the
/// search found, none of the operations that could come next fits.
fn explain_register(key: i32, ops: &[Operation<RegisterModel>], deadline: Instant) -> Anomaly {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(5));
    let (_, info): (_, LinearizationInfo<RegisterModel>) = porcupine_rs::check_operations_info_timeout(ops, left);
    let longest = info
        .partial_linearizations
        .first()
        .and_then(|p| p.iter().max_by_key(|s| s.len()));
    let Some(longest) = longest else {
        let msg = format!(
            "key {key}: no order of its {} operations explains what the clients saw",
            ops.len()
        );
        return anomaly(
            "register",
            "not-linearizable",
            msg,
            ops.iter().filter_map(|o| o.metadata).collect(),
        );
    };
    let mut state = None;
    for &i in longest {
        state = RegisterModel::step(&state, &ops[i].op).1;
    }
    let placed: HashSet<usize> = longest.iter().copied().collect();
    let rest: Vec<usize> = (0..ops.len()).filter(|i| !placed.contains(i)).collect();
    let first_return = rest.iter().map(|&i| ops[i].return_time).min().unwrap_or(i64::MAX);
    let next: Vec<usize> = rest.into_iter().filter(|&i| ops[i].call_time <= first_return).collect();
    let last_change = longest.iter().rev().find(|&&i| !matches!(ops[i].op, RegOp::Read(_)));
    let shown: Vec<String> = next.iter().map(|&i| describe_reg(&ops[i])).collect();
    let msg = format!(
        "key {key} is not linearizable ({} operations): after the longest consistent order of {} operations the \
         register holds {}, and none of the operations that could come next fits: {}",
        ops.len(),
        longest.len(),
        state.map_or_else(|| "nothing".to_string(), |v| v.to_string()),
        shown.join("; ")
    );
    let involved = last_change
        .into_iter()
        .chain(&next)
        .filter_map(|&i| ops[i].metadata)
        .collect();
    anomaly("register", "not-linearizable", msg, involved)
}

fn describe_reg(op: &Operation<RegisterModel>) -> String {
    let who = op
        .metadata
        .map_or_else(|| "the final read".to_string(), |i| format!("op {i}"));
    let what = match op.op {
        RegOp::Read(Some(v)) => format!("read {v}"),
        RegOp::Read(None) => "read nothing".to_string(),
        RegOp::Write(v) => format!("write {v}"),
        RegOp::Cas { from, to, swapped } => {
            let answer = swapped.map_or("unknown", |s| if s { "swapped" } else { "refused" });
            format!("cas {from}->{to} {answer}")
        }
    };
    format!("{who} {what}")
}

/// PostgreSQL's `X/X` notation, so an LSN can be pasted into `pg_waldump`.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

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
    use crate::history::Probe;

    const S: u64 = 1_000_000_000;

    /// An operation on n1, timeline 1; `history` numbers them.
    fn op(f: F, outcome: Outcome, start_ns: u64, end_ns: u64) -> Op {
        Op {
            index: 0,
            process: 0,
            start_ns,
            end_ns,
            outcome,
            node: Some("n1".into()),
            timeline: Some(1),
            lsn: None,
            error: None,
            f,
        }
    }

    fn on(mut o: Op, node: &str, timeline: u32) -> Op {
        o.node = Some(node.into());
        o.timeline = Some(timeline);
        o
    }

    fn with_lsn(mut o: Op, lsn: u64) -> Op {
        o.lsn = Some(lsn);
        o
    }

    fn fin(node: &str, role: &str) -> FinalRead {
        FinalRead {
            node: node.into(),
            role: role.into(),
            timeline: 1,
            ..FinalRead::default()
        }
    }

    fn history(ops: Vec<Op>, finals: Vec<FinalRead>) -> History {
        let ops = ops
            .into_iter()
            .enumerate()
            .map(|(i, o)| Op { index: i as u64, ..o })
            .collect();
        History {
            ops,
            finals,
            ..History::default()
        }
    }

    fn three(f: impl Fn(&mut FinalRead)) -> Vec<FinalRead> {
        let mut finals = vec![fin("n1", "primary"), fin("n2", "standby"), fin("n3", "standby")];
        finals.iter_mut().for_each(f);
        finals
    }

    fn kinds(r: &CheckerResult) -> Vec<&str> {
        r.anomalies.iter().map(|a| a.kind.as_str()).collect()
    }

    fn set_add(id: i64, outcome: Outcome, t: u64) -> Op {
        op(F::SetAdd { id }, outcome, t, t + 5)
    }

    fn add(key: i32, value: i64, result: &[i64], t: u64) -> Op {
        let f = F::AppendAdd {
            key,
            value,
            result: Some(result.to_vec()),
        };
        op(f, Outcome::Ok, t, t + 5)
    }

    fn read(key: i32, result: &[i64], t: u64) -> Op {
        let f = F::AppendRead {
            key,
            result: Some(result.to_vec()),
        };
        op(f, Outcome::Ok, t, t + 5)
    }

    #[test]
    fn lost_writes_passes_when_every_node_has_every_acknowledged_write() {
        let ops = vec![
            set_add(1, Outcome::Ok, 0),
            set_add(2, Outcome::Ok, 10),
            set_add(3, Outcome::Fail, 20),
            // Unknown: absent from the finals, and that is allowed.
            set_add(4, Outcome::Info, 30),
            add(1, 10, &[10], 40),
        ];
        let h = history(
            ops,
            three(|f| {
                f.set = vec![1, 2];
                f.lists.insert(1, vec![10]);
            }),
        );
        let r = lost_writes(&h);
        assert_eq!(r.status, "valid", "{r:?}");
    }

    #[test]
    fn lost_writes_flags_a_write_missing_on_one_standby() {
        let ops = vec![
            set_add(1, Outcome::Ok, 0),
            set_add(2, Outcome::Ok, 10),
            add(7, 5, &[5], 20),
        ];
        let mut finals = three(|f| {
            f.set = vec![1, 2];
            f.lists.insert(7, vec![5]);
        });
        finals[2].set = vec![1];
        finals[1].lists.clear();
        let r = lost_writes(&history(ops, finals));
        assert_eq!(r.status, "invalid");
        assert_eq!(kinds(&r), ["lost", "lost"]);
        assert_eq!(r.anomalies[0].ops, [1]);
        assert!(r.anomalies[0].message.contains("n3"), "{}", r.anomalies[0].message);
        assert!(r.anomalies[1].message.contains("key 7") && r.anomalies[1].message.contains("n2"));
    }

    #[test]
    fn a_history_without_final_reads_is_flagged() {
        let r = lost_writes(&history(vec![set_add(1, Outcome::Ok, 0)], vec![]));
        assert_eq!(r.status, "invalid");
        assert_eq!(kinds(&r), ["no-final-read"]);
        assert!(r.anomalies[0].message.contains("never converged"));
        assert_eq!(laggard_promotion(&history(vec![], vec![])).status, "unknown");
    }

    #[test]
    fn two_writers_passes_a_clean_failover() {
        let ops = vec![
            on(set_add(1, Outcome::Ok, 0), "n1", 1),
            // Began before timeline 2 acknowledged anything: a legal overlap.
            on(op(F::SetAdd { id: 2 }, Outcome::Ok, 90, 200), "n1", 1),
            on(set_add(3, Outcome::Ok, 100), "n2", 2),
            on(set_add(4, Outcome::Ok, 300), "n2", 2),
            // Writes without a timeline are ignored.
            Op {
                timeline: None,
                node: Some("n3".into()),
                ..set_add(5, Outcome::Ok, 400)
            },
        ];
        let r = two_writers(&history(ops, vec![]));
        assert_eq!(r.status, "valid", "{r:?}");
    }

    #[test]
    fn two_writers_flags_two_nodes_on_one_timeline() {
        let ops = vec![
            on(set_add(1, Outcome::Ok, 0), "n1", 2),
            on(set_add(2, Outcome::Ok, 10), "n2", 2),
        ];
        let r = two_writers(&history(ops, vec![]));
        assert_eq!(kinds(&r), ["split-brain"]);
        assert_eq!(r.anomalies[0].ops, [0, 1]);
    }

    #[test]
    fn two_writers_flags_a_stale_writer() {
        let ops = vec![
            on(set_add(1, Outcome::Ok, 0), "n1", 1),
            on(set_add(2, Outcome::Ok, 100), "n2", 2),
            // Began after timeline 2 acknowledged op 1 (at 105).
            on(set_add(3, Outcome::Ok, 150), "n1", 1),
        ];
        let r = two_writers(&history(ops, vec![]));
        assert_eq!(kinds(&r), ["stale-writer"]);
        assert_eq!(r.anomalies[0].ops, [1, 2]);
        assert!(r.anomalies[0].message.contains("timeline 1"));
    }

    #[test]
    fn set_reads_passes_ids_that_were_inserted() {
        let ops = vec![
            set_add(1, Outcome::Ok, 0),
            set_add(2, Outcome::Info, 10),
            set_add(3, Outcome::Fail, 20),
        ];
        // A failed retry does not make an id aborted when another try succeeded.
        let ops = [ops, vec![set_add(1, Outcome::Fail, 30)]].concat();
        let r = set_reads(&history(ops, three(|f| f.set = vec![1, 2])));
        assert_eq!(r.status, "valid", "{r:?}");
    }

    #[test]
    fn set_reads_flags_phantom_duplicate_and_aborted_ids() {
        let ops = vec![set_add(1, Outcome::Ok, 0), set_add(2, Outcome::Fail, 10)];
        let r = set_reads(&history(ops, three(|f| f.set = vec![1, 1, 2, 99])));
        assert_eq!(r.status, "invalid");
        assert_eq!(kinds(&r), ["aborted", "duplicate", "phantom"]);
        assert_eq!(r.anomalies[0].ops, [1]);
        assert!(
            r.anomalies[2].message.contains("n1, n2, n3"),
            "{}",
            r.anomalies[2].message
        );
    }

    #[test]
    fn append_passes_lists_that_grow_by_prefix() {
        let ops = vec![
            add(1, 1, &[1], 0),
            add(1, 2, &[1, 2], 10),
            read(1, &[1], 20),
            read(1, &[1, 2], 30),
        ];
        let r = append(&history(ops, three(|f| _ = f.lists.insert(1, vec![1, 2]))));
        assert_eq!(r.status, "valid", "{r:?}");
    }

    #[test]
    fn append_flags_divergent_order() {
        let ops = vec![
            add(1, 1, &[1], 0),
            add(1, 2, &[1, 2], 10),
            add(1, 3, &[1, 2, 3], 20),
            read(1, &[1, 3], 30),
        ];
        let r = append(&history(ops, vec![]));
        assert_eq!(kinds(&r), ["divergent-order"]);
        assert_eq!(r.anomalies[0].ops, [2, 3]);
        assert!(
            r.anomalies[0].message.contains("position 1"),
            "{}",
            r.anomalies[0].message
        );
    }

    #[test]
    fn append_flags_duplicate_phantom_and_aborted_values() {
        let failed = op(
            F::AppendAdd {
                key: 1,
                value: 5,
                result: None,
            },
            Outcome::Fail,
            0,
            5,
        );
        let ops = vec![failed, add(1, 1, &[1], 10), read(1, &[1, 5, 1, 42], 20)];
        let r = append(&history(ops, vec![]));
        assert_eq!(kinds(&r), ["aborted", "duplicate", "phantom"]);
        assert_eq!(r.anomalies[0].ops, [0, 2]);
    }

    fn forked(node: &str, forks: &[(u32, u32, u64)]) -> FinalRead {
        FinalRead {
            timeline: forks.last().map_or(1, |f| f.0),
            forks: forks
                .iter()
                .map(|&(timeline, parent, lsn)| Fork { timeline, parent, lsn })
                .collect(),
            ..fin(node, "standby")
        }
    }

    #[test]
    fn laggard_promotion_passes_writes_before_the_fork() {
        let ops = vec![
            with_lsn(on(set_add(1, Outcome::Ok, 0), "n1", 1), 0x3_0000_0000),
            with_lsn(on(set_add(2, Outcome::Ok, 10), "n2", 2), 0x3_0000_0200),
        ];
        let finals = vec![
            forked("n1", &[(2, 1, 0x3_0000_0100)]),
            forked("n2", &[(2, 1, 0x3_0000_0100)]),
        ];
        let r = laggard_promotion(&history(ops, finals));
        assert_eq!(r.status, "valid", "{r:?}");
    }

    #[test]
    fn laggard_promotion_flags_a_write_beyond_the_fork() {
        let ops = vec![with_lsn(on(set_add(1, Outcome::Ok, 0), "n1", 1), 0x3_0000_0200)];
        let finals = vec![forked("n1", &[(2, 1, 0x3_0000_0100)]), forked("n2", &[])];
        let r = laggard_promotion(&history(ops, finals));
        assert_eq!(kinds(&r), ["laggard-promotion"]);
        let msg = &r.anomalies[0].message;
        assert!(
            msg.contains("3/200") && msg.contains("3/100") && msg.contains("timeline 2"),
            "{msg}"
        );
    }

    #[test]
    fn laggard_promotion_flags_divergent_histories_and_orphaned_timelines() {
        let ops = vec![on(set_add(1, Outcome::Ok, 0), "n3", 3)];
        let finals = vec![forked("n1", &[(2, 1, 0x100)]), forked("n2", &[(2, 1, 0x200)])];
        let r = laggard_promotion(&history(ops, finals));
        assert_eq!(kinds(&r), ["divergent-history", "orphaned-timeline"]);
        assert_eq!(r.anomalies[1].ops, [0]);
    }

    fn bank_read(balances: &[i64], t: u64) -> Op {
        let f = F::BankRead {
            balances: Some(balances.to_vec()),
        };
        op(f, Outcome::Ok, t, t + 5)
    }

    #[test]
    fn bank_passes_conserved_money() {
        let transfer = F::BankTransfer {
            from: 0,
            to: 1,
            amount: 30,
            applied: Some(true),
        };
        let ops = vec![
            op(transfer, Outcome::Ok, 0, 5),
            bank_read(&[70, 130, 100, 100, 100], 10),
        ];
        let r = bank(&history(ops, three(|f| f.balances = vec![70, 130, 100, 100, 100])));
        assert_eq!(r.status, "valid", "{r:?}");
        // Without the bank workload, empty final balances are not a problem.
        assert_eq!(bank(&history(vec![], three(|_| {}))).status, "valid");
    }

    #[test]
    fn bank_flags_changed_total_negative_balance_and_missing_accounts() {
        let ops = vec![
            bank_read(&[70, 100, 100, 100, 100], 0),
            bank_read(&[-10, 210, 100, 100, 100], 10),
        ];
        let r = bank(&history(
            ops,
            vec![FinalRead {
                balances: vec![100; 4],
                ..fin("n1", "primary")
            }],
        ));
        assert_eq!(
            kinds(&r),
            ["wrong-total", "negative-balance", "wrong-length", "wrong-total"]
        );
        assert_eq!(r.anomalies[0].ops, [0]);
        assert!(r.anomalies[2].message.contains("n1"));
    }

    fn rw(key: i32, value: i64, outcome: Outcome, start: u64, end: u64) -> Op {
        op(F::RegWrite { key, value }, outcome, start, end)
    }

    fn rr(key: i32, v: Option<i64>, start: u64, end: u64) -> Op {
        op(F::RegRead { key, result: Some(v) }, Outcome::Ok, start, end)
    }

    fn cas(key: i32, from: i64, to: i64, swapped: bool, start: u64, end: u64) -> Op {
        let f = F::RegCas {
            key,
            from,
            to,
            swapped: Some(swapped),
        };
        op(f, Outcome::Ok, start, end)
    }

    #[test]
    fn register_passes_a_linearizable_history() {
        let ops = vec![
            rr(1, None, 0, 5),
            cas(1, 3, 4, false, 6, 8),
            rw(1, 3, Outcome::Ok, 10, 20),
            rr(1, Some(3), 15, 25),
            cas(1, 3, 4, true, 30, 40),
            rw(2, 9, Outcome::Fail, 30, 40),
            rr(2, None, 50, 60),
        ];
        let mut primary = fin("n1", "primary");
        primary.registers.insert(1, 4);
        let r = register(&history(ops, vec![primary]));
        assert_eq!(r.status, "valid", "{r:?}");
    }

    #[test]
    fn register_lets_an_unknown_write_take_effect_late() {
        let ops = vec![
            rw(1, 7, Outcome::Info, 0, 10),
            rr(1, None, 20, 30),
            rr(1, Some(7), 40, 50),
            // Unknown cas: took effect because the compare matched.
            op(
                F::RegCas {
                    key: 1,
                    from: 7,
                    to: 8,
                    swapped: None,
                },
                Outcome::Info,
                60,
                70,
            ),
        ];
        let mut primary = fin("n1", "primary");
        primary.registers.insert(1, 8);
        let r = register(&history(ops, vec![primary]));
        assert_eq!(r.status, "valid", "{r:?}");
    }

    fn register_kind(ops: Vec<Op>) -> CheckerResult {
        let r = register(&history(ops, vec![]));
        assert_eq!(kinds(&r), ["not-linearizable"], "{r:?}");
        r
    }

    #[test]
    fn register_flags_a_read_of_a_value_never_written() {
        let r = register_kind(vec![rw(1, 1, Outcome::Ok, 0, 10), rr(1, Some(2), 20, 30)]);
        assert_eq!(r.anomalies[0].ops, [0, 1]);
        assert!(
            r.anomalies[0].message.contains("op 1 read 2"),
            "{}",
            r.anomalies[0].message
        );
    }

    #[test]
    fn register_flags_a_stale_read_after_a_completed_write() {
        let ops = vec![
            rw(3, 1, Outcome::Ok, 0, 10),
            rw(3, 2, Outcome::Ok, 20, 30),
            rr(3, Some(1), 40, 50),
        ];
        let r = register_kind(ops);
        assert!(r.anomalies[0].message.contains("key 3"));
        assert!(r.anomalies[0].ops.contains(&2));
    }

    #[test]
    fn register_flags_cas_success_on_a_wrong_value_and_a_lost_write() {
        register_kind(vec![rw(1, 1, Outcome::Ok, 0, 10), cas(1, 5, 6, true, 20, 30)]);
        register_kind(vec![cas(1, 5, 6, true, 0, 10)]);
        let mut primary = fin("n1", "primary");
        primary.registers.insert(1, 3);
        let r = register(&history(vec![rw(1, 5, Outcome::Ok, 0, 10)], vec![primary]));
        assert_eq!(kinds(&r), ["not-linearizable"]);
        assert!(
            r.anomalies[0].message.contains("the final read read 3"),
            "{}",
            r.anomalies[0].message
        );
    }

    #[test]
    fn register_out_of_time_is_unknown_not_valid() {
        let h = history(vec![rw(1, 1, Outcome::Ok, 0, 10)], vec![]);
        assert_eq!(register_within(&h, Duration::ZERO).status, "unknown");
    }

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
