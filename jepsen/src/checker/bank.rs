//! The [`bank`] checker: transfers between accounts conserve money, so every
//! read of all balances, and every final read, has one balance per account,
//! sums to the starting total, and holds no negative balance.

use std::collections::{HashMap, HashSet};

use super::{anomaly, finish, ok_ops, secs};
use crate::history::{FinalRead, History, Outcome, Transfer, BANK_ACCOUNTS, BANK_START, F};
use crate::verdict::{Anomaly, CheckerResult};

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
    // Histories from before the ledger have no transfer ids and no ledger rows.
    let ledgered = h
        .ops
        .iter()
        .any(|o| matches!(o.f, F::BankTransfer { id, .. } if id != 0))
        || finals.iter().any(|f| !f.ledger.is_empty());
    let mut transfers = 0;
    for f in finals.iter().filter(|_| ledgered) {
        let (checked, found) = ledger_problems(h, f);
        transfers = transfers.max(checked);
        anomalies.extend(found);
    }
    let summary = format!(
        "{reads} acknowledged reads and {} final reads of all balances; {transfers} acknowledged transfers checked against the ledger",
        finals.len()
    );
    finish(NAME, summary, anomalies)
}

/// One final read's ledger against the history and its own balances: every
/// acknowledged transfer is in it as it was sent, nothing that failed or was
/// refused is, and the balances are exactly the start plus the ledger's
/// transfers (a lost update, or a balance written without its transfer,
/// breaks that even when the total holds). Returns how many acknowledged
/// transfers were checked.
fn ledger_problems(h: &History, f: &FinalRead) -> (usize, Vec<Anomaly>) {
    const NAME: &str = "bank";
    let rows: HashMap<i64, &Transfer> = f.ledger.iter().map(|t| (t.id, t)).collect();
    let mut out = Vec::new();
    let mut acknowledged = 0;
    let mut attempted = HashSet::new();
    for op in &h.ops {
        let F::BankTransfer {
            id,
            from,
            to,
            amount,
            applied,
        } = op.f
        else {
            continue;
        };
        if id == 0 {
            continue; // a history from before the ledger
        }
        attempted.insert(id);
        let row = rows.get(&id);
        let sent = Transfer { id, from, to, amount };
        match (op.outcome, applied, row) {
            (Outcome::Ok, Some(true), None) => out.push(anomaly(
                NAME,
                "lost-transfer",
                format!(
                    "the final read of {} has no ledger row for the transfer of op {} ({amount} from {from} to {to}),                      acknowledged at {}: an acknowledged transfer was lost",
                    f.node,
                    op.index,
                    secs(op.end_ns)
                ),
                vec![op.index],
            )),
            (Outcome::Ok, Some(true), Some(r)) if **r != sent => out.push(anomaly(
                NAME,
                "altered-transfer",
                format!("op {} sent {sent:?} but the ledger of {} holds {r:?}", op.index, f.node),
                vec![op.index],
            )),
            (Outcome::Fail, _, Some(_)) | (Outcome::Ok, Some(false), Some(_)) => out.push(anomaly(
                NAME,
                "phantom-transfer",
                format!(
                    "the ledger of {} holds the transfer of op {}, which {}",
                    f.node,
                    op.index,
                    if op.outcome == Outcome::Fail { "failed" } else { "the balance refused" }
                ),
                vec![op.index],
            )),
            _ => {}
        }
        acknowledged += usize::from(op.outcome == Outcome::Ok && applied == Some(true));
    }
    let unknown: Vec<i64> = f
        .ledger
        .iter()
        .map(|t| t.id)
        .filter(|id| !attempted.contains(id))
        .collect();
    if !unknown.is_empty() && !attempted.is_empty() {
        out.push(anomaly(
            NAME,
            "phantom-transfer",
            format!(
                "the ledger of {} holds {} transfers no client sent (ids {:?})",
                f.node,
                unknown.len(),
                &unknown[..unknown.len().min(10)]
            ),
            vec![],
        ));
    }
    if f.balances.len() == BANK_ACCOUNTS as usize {
        let mut expected = vec![BANK_START; BANK_ACCOUNTS as usize];
        for t in &f.ledger {
            if let (Some(_), Some(_)) = (expected.get(t.from as usize), expected.get(t.to as usize)) {
                expected[t.from as usize] -= t.amount;
                expected[t.to as usize] += t.amount;
            }
        }
        if expected != f.balances {
            out.push(anomaly(
                NAME,
                "ledger-mismatch",
                format!(
                    "the final read of {} holds balances {:?}, but its ledger of {} transfers gives {expected:?}: \
                     a balance changed without its transfer (a lost update) or a transfer without its balances",
                    f.node,
                    f.balances,
                    f.ledger.len()
                ),
                vec![],
            ));
        }
    }
    (acknowledged, out)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testing::*;
    use crate::history::Op;

    fn bank_read(balances: &[i64], t: u64) -> Op {
        let f = F::BankRead {
            balances: Some(balances.to_vec()),
        };
        op(f, Outcome::Ok, t, t + 5)
    }

    #[test]
    fn bank_passes_conserved_money() {
        let transfer = F::BankTransfer {
            id: 0,
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

    fn transfer(id: i64, from: u32, to: u32, amount: i64, outcome: Outcome, applied: Option<bool>, t: u64) -> Op {
        let f = F::BankTransfer {
            id,
            from,
            to,
            amount,
            applied,
        };
        op(f, outcome, t, t + 5)
    }

    fn row(id: i64, from: u32, to: u32, amount: i64) -> Transfer {
        Transfer { id, from, to, amount }
    }

    #[test]
    fn the_ledger_must_hold_every_acknowledged_transfer_and_explain_the_balances() {
        let ops = vec![
            transfer(1, 0, 1, 30, Outcome::Ok, Some(true), 0),
            transfer(2, 2, 3, 500, Outcome::Ok, Some(false), 10), // refused: too much
            transfer(3, 1, 2, 5, Outcome::Fail, None, 20),
            transfer(4, 3, 4, 7, Outcome::Info, None, 30), // may or may not have happened
        ];
        let good = |f: &mut FinalRead| {
            f.balances = vec![70, 130, 100, 100, 100];
            f.ledger = vec![row(1, 0, 1, 30)];
        };
        let r = bank(&history(ops.clone(), three(good)));
        assert_eq!(r.status, "valid", "{r:?}");
        assert!(r.summary.contains("1 acknowledged transfers"), "{r:?}");
        // The unknown transfer may have committed: its row and its balances are fine.
        let r = bank(&history(
            ops.clone(),
            three(|f| {
                f.balances = vec![70, 130, 100, 93, 107];
                f.ledger = vec![row(1, 0, 1, 30), row(4, 3, 4, 7)];
            }),
        ));
        assert_eq!(r.status, "valid", "{r:?}");

        // The acknowledged transfer is gone, balances and all: the total still holds,
        // so only the ledger can tell.
        let r = bank(&history(
            ops.clone(),
            three(|f| f.balances = vec![BANK_START; BANK_ACCOUNTS as usize]),
        ));
        assert_eq!(kinds(&r), ["lost-transfer"; 3], "{r:?}");
        assert_eq!(r.anomalies[0].ops, [0]);

        // A lost update: both transfers are in the ledger, one balance write was lost.
        let r = bank(&history(
            ops.clone(),
            three(|f| {
                f.balances = vec![100, 130, 70, 100, 100];
                f.ledger = vec![row(1, 0, 1, 30)];
            }),
        ));
        assert_eq!(kinds(&r), ["ledger-mismatch"; 3], "{r:?}");

        // A failed and a refused transfer that the ledger holds anyway, and one nobody sent.
        let r = bank(&history(
            ops,
            vec![FinalRead {
                balances: vec![70, 125, 105, 100, 100],
                ledger: vec![row(1, 0, 1, 30), row(2, 2, 3, 500), row(3, 1, 2, 5), row(99, 0, 1, 1)],
                ..fin("n1", "primary")
            }],
        ));
        assert_eq!(
            kinds(&r),
            [
                "phantom-transfer",
                "phantom-transfer",
                "phantom-transfer",
                "ledger-mismatch"
            ],
            "{r:?}"
        );
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
}
