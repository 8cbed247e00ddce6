//! The [`append`] checker: the lists of the append workload grow by prefix,
//! in one order, and hold only values that some write that did not fail
//! appended to that key.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{anomaly, finish};
use crate::history::{FinalRead, History, Op, Outcome, F};
use crate::verdict::{Anomaly, CheckerResult};

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
    let mut out = stale_reads(key, lists, reference.1);
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

/// Recency: an operation served by a primary (it read a timeline, so the
/// node was not in recovery) that began after an append to its key was
/// acknowledged sees that append (reads, and appends, whose result is a read
/// of the list they extended). A stale read, such as one served by a deposed
/// primary after the new one acknowledged a write, misses it while still
/// being a prefix, which the order check above cannot see. Standbys may lag
/// by design: their reads carry no timeline and are not held to this.
///
/// Lists are checked against the longest one (`reference`): in a list that
/// is a prefix of it, holding the append furthest along the reference that
/// it must see means holding all the earlier ones. Lists that diverge are
/// reported as such and not checked again here.
fn stale_reads(key: i32, lists: &[Observed], reference: &[i64]) -> Vec<Anomaly> {
    let position: HashMap<i64, usize> = reference.iter().enumerate().rev().map(|(i, v)| (*v, i)).collect();
    let mut acked: Vec<&Op> = lists
        .iter()
        .filter_map(|(source, _)| match source {
            Source::Append(op) => Some(*op),
            _ => None,
        })
        .collect();
    acked.sort_by_key(|o| o.end_ns);
    let mut readers: Vec<(&Op, &[i64])> = lists
        .iter()
        .filter_map(|(source, list)| match source {
            Source::Append(op) | Source::Read(op) => Some((*op, *list)),
            Source::Final(_) => None,
        })
        .filter(|(op, list)| op.timeline.is_some() && first_difference(list, reference).is_none())
        .collect();
    readers.sort_by_key(|(o, _)| o.start_ns);
    let value = |o: &Op| match o.f {
        F::AppendAdd { value, .. } => value,
        _ => unreachable!("only appends are acknowledged appends"),
    };
    let mut out = Vec::new();
    let mut next = 0;
    // The acknowledged append furthest along the reference so far, and those
    // the reference lacks (a lost append, which the lost-writes checker reports).
    let (mut furthest, mut elsewhere): (Option<(usize, &Op)>, Vec<&Op>) = (None, Vec::new());
    for (reader, list) in readers {
        while next < acked.len() && acked[next].end_ns < reader.start_ns {
            let a = acked[next];
            match position.get(&value(a)) {
                Some(&p) if furthest.is_none_or(|(q, _)| p > q) => furthest = Some((p, a)),
                Some(_) => {}
                None => elsewhere.push(a),
            }
            next += 1;
        }
        let missed = furthest
            .filter(|(p, _)| list.len() <= *p)
            .map(|(_, a)| a)
            .into_iter()
            .chain(elsewhere.iter().copied().filter(|a| !list.contains(&value(a))));
        for a in missed {
            let msg = format!(
                "key {key}: op {} began at {} on {}, after op {} had appended {} (acknowledged at {}), \
                 but saw {} values without it: a stale read",
                reader.index,
                super::secs(reader.start_ns),
                reader.node.as_deref().unwrap_or("an unknown node"),
                a.index,
                value(a),
                super::secs(a.end_ns),
                list.len()
            );
            out.push(anomaly("append", "stale-read", msg, vec![a.index, reader.index]));
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testing::*;

    #[test]
    fn append_passes_lists_that_grow_by_prefix() {
        let ops = vec![
            add(1, 1, &[1], 0),
            add(1, 2, &[1, 2], 10),
            read(1, &[1], 8), // concurrent with the second append
            read(1, &[1, 2], 30),
        ];
        let r = append(&history(ops, three(|f| _ = f.lists.insert(1, vec![1, 2]))));
        assert_eq!(r.status, "valid", "{r:?}");
    }

    #[test]
    fn append_flags_a_read_that_misses_an_append_acknowledged_before_it_began() {
        let ops = vec![
            add(1, 1, &[1], 0),             // acknowledged at 5
            add(1, 2, &[1, 2], 10),         // acknowledged at 15
            on(read(1, &[1], 20), "n1", 1), // began after both: misses 2
            on(read(1, &[1], 12), "n1", 1), // concurrent with the second: fine
            add(1, 3, &[1, 3], 40),         // diverges: reported as that, not again here
            add(2, 9, &[9], 0),             // another key
            on(read(2, &[], 30), "n2", 1),  // misses 9
            Op {
                timeline: None,
                ..read(2, &[], 31)
            }, // misses 9 too, but on a standby
            add(1, 4, &[1, 2, 4], 20),      // an append is a read too: it saw 2
        ];
        let r = append(&history(ops, vec![]));
        assert_eq!(kinds(&r), ["stale-read", "divergent-order", "stale-read"], "{r:?}");
        assert_eq!(r.anomalies[0].ops, [1, 2]);
        assert!(r.anomalies[0].message.contains("on n1"), "{}", r.anomalies[0].message);
        assert_eq!(r.anomalies[2].ops, [5, 6]);
        // An acknowledged append the longest list lacks (it diverged) still counts.
        let ops = vec![add(3, 7, &[7], 0), add(3, 8, &[8], 1), read(3, &[8], 10)];
        let mut last = fin("n1", "primary");
        last.lists.insert(3, vec![8, 9]);
        let r = append(&history(ops, vec![last]));
        let stale: Vec<_> = r.anomalies.iter().filter(|a| a.kind == "stale-read").collect();
        assert_eq!(stale.len(), 1, "{r:?}");
        assert_eq!(stale[0].ops, [0, 2]);
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
}
