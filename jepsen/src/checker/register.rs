//! The [`register`] checker: each key of the register workload is
//! linearizable. It owns the sequential model of one register for the
//! porcupine search, the translation of the history into porcupine's
//! operations, the time budget of the search, and the explanation of a
//! history no order can explain.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use porcupine_rs::{CheckResult, LinearizationInfo, Model, Operation};

use super::{anomaly, finish_with};
use crate::history::{History, Outcome, F};
use crate::verdict::{Anomaly, CheckerResult};

/// Time for the register linearizability search, all keys together. The
/// search is exponential in the worst case; past this the answer is `unknown`.
pub const REGISTER_BUDGET: Duration = Duration::from_secs(30);

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testing::*;
    use crate::history::Op;

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
}
