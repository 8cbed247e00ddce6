//! The [`bank`] checker: transfers between accounts conserve money, so every
//! read of all balances, and every final read, has one balance per account,
//! sums to the starting total, and holds no negative balance.

use super::{anomaly, finish, ok_ops};
use crate::history::{FinalRead, History, BANK_ACCOUNTS, BANK_START, F};
use crate::verdict::CheckerResult;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testing::*;
    use crate::history::{Op, Outcome};

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
}
