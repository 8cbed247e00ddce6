//! The checkers of what the final reads hold: [`lost_writes`] (every
//! acknowledged insert and append is on every node) and [`set_reads`] (the
//! final sets hold only ids that were inserted, each once, by a write that did
//! not fail).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::{anomaly, finish, ok_ops, whence};
use crate::history::{History, Op, Outcome, F};
use crate::verdict::{Anomaly, CheckerResult};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::laggard_promotion;
    use crate::checker::testing::*;

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
}
