//! The checkers that read PostgreSQL timelines: [`two_writers`] (one writer
//! per timeline, and no old timeline acknowledging writes after a newer one
//! took over) and [`laggard_promotion`] (no acknowledged write lies beyond the
//! point where a later timeline branched off, and the nodes share one
//! timeline history).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{anomaly, finish, finish_with, format_lsn, ok_writes, secs, whence};
use crate::history::{FinalRead, Fork, History, Op};
use crate::verdict::{Anomaly, CheckerResult};

/// Never two writers: one timeline is written by one node, and once a newer
/// timeline has acknowledged a write no older timeline acknowledges a write
/// that began after that.
pub fn two_writers(h: &History) -> CheckerResult {
    let mut by_timeline: BTreeMap<u32, Vec<&Op>> = BTreeMap::new();
    let mut untracked = Vec::new();
    for op in ok_writes(h).filter(|o| o.f.wrote()) {
        match op.timeline {
            Some(t) => by_timeline.entry(t).or_default().push(op),
            None => untracked.push(op.index),
        }
    }
    let mut anomalies = split_brains(&by_timeline);
    anomalies.extend(stale_writers(&by_timeline));
    // Every write reads its timeline in its own statement: one without it is
    // one this checker could not place, and is never passed over in silence.
    if !untracked.is_empty() {
        let msg = format!(
            "{} acknowledged writes carry no timeline (the first: op {}): the harness did not record where they were written",
            untracked.len(),
            untracked[0]
        );
        anomalies.push(anomaly("two-writers", "untracked-write", msg, untracked));
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testing::*;
    use crate::history::{Outcome, F};

    #[test]
    fn two_writers_passes_a_clean_failover() {
        let ops = vec![
            on(set_add(1, Outcome::Ok, 0), "n1", 1),
            // Began before timeline 2 acknowledged anything: a legal overlap.
            on(op(F::SetAdd { id: 2 }, Outcome::Ok, 90, 200), "n1", 1),
            on(set_add(3, Outcome::Ok, 100), "n2", 2),
            on(set_add(4, Outcome::Ok, 300), "n2", 2),
            // A compare that did not match wrote nothing, so it needs no timeline.
            Op {
                timeline: None,
                ..op(
                    F::RegCas {
                        key: 1,
                        from: 1,
                        to: 2,
                        swapped: Some(false),
                    },
                    Outcome::Ok,
                    400,
                    405,
                )
            },
        ];
        let r = two_writers(&history(ops, vec![]));
        assert_eq!(r.status, "valid", "{r:?}");
    }

    #[test]
    fn two_writers_never_skips_a_write_without_a_timeline() {
        let ops = vec![
            on(set_add(1, Outcome::Ok, 0), "n1", 1),
            Op {
                timeline: None,
                node: Some("n3".into()),
                ..set_add(5, Outcome::Ok, 400)
            },
        ];
        let r = two_writers(&history(ops, vec![]));
        assert_eq!(kinds(&r), ["untracked-write"], "{r:?}");
        assert_eq!(r.anomalies[0].ops, [1]);
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
}
