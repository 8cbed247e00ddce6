//! Builders shared by the checkers' tests: operations, final reads and
//! histories small enough to read in the test, with the defaults every test
//! would otherwise repeat (node n1, timeline 1, operations numbered in order).

use crate::history::{FinalRead, History, Op, Outcome, F};
use crate::verdict::CheckerResult;

/// An operation on n1, timeline 1; `history` numbers them.
pub(super) fn op(f: F, outcome: Outcome, start_ns: u64, end_ns: u64) -> Op {
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

pub(super) fn on(mut o: Op, node: &str, timeline: u32) -> Op {
    o.node = Some(node.into());
    o.timeline = Some(timeline);
    o
}

pub(super) fn with_lsn(mut o: Op, lsn: u64) -> Op {
    o.lsn = Some(lsn);
    o
}

pub(super) fn fin(node: &str, role: &str) -> FinalRead {
    FinalRead {
        node: node.into(),
        role: role.into(),
        timeline: 1,
        ..FinalRead::default()
    }
}

pub(super) fn history(ops: Vec<Op>, finals: Vec<FinalRead>) -> History {
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

pub(super) fn three(f: impl Fn(&mut FinalRead)) -> Vec<FinalRead> {
    let mut finals = vec![fin("n1", "primary"), fin("n2", "standby"), fin("n3", "standby")];
    finals.iter_mut().for_each(f);
    finals
}

pub(super) fn kinds(r: &CheckerResult) -> Vec<&str> {
    r.anomalies.iter().map(|a| a.kind.as_str()).collect()
}

pub(super) fn set_add(id: i64, outcome: Outcome, t: u64) -> Op {
    op(F::SetAdd { id }, outcome, t, t + 5)
}

pub(super) fn add(key: i32, value: i64, result: &[i64], t: u64) -> Op {
    let f = F::AppendAdd {
        key,
        value,
        result: Some(result.to_vec()),
    };
    op(f, Outcome::Ok, t, t + 5)
}

pub(super) fn read(key: i32, result: &[i64], t: u64) -> Op {
    let f = F::AppendRead {
        key,
        result: Some(result.to_vec()),
    };
    op(f, Outcome::Ok, t, t + 5)
}
