//! The history of one run: every operation a client completed (or gave up
//! on), every fault started and healed, every role probe, and the reads taken
//! after the heal. One JSON object per line in `history.jsonl`.
//!
//! Times are nanoseconds since the start of the run, from one monotonic clock
//! in the harness, so "a finished before b started" is `a.end_ns < b.start_ns`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One line of `history.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Op(Op),
    Nemesis(NemesisEvent),
    Probe(Probe),
    Final(FinalRead),
}

/// What the client knows about an operation's effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Acknowledged: COMMIT succeeded and the result is known.
    Ok,
    /// Definitely had no effect (refused before or during the transaction
    /// with an error that rolls it back, or the connection never opened).
    Fail,
    /// Unknown: timeout, connection lost, server shut down mid-commit. It may
    /// or may not have taken effect, now or later.
    Info,
}

/// One operation, from invocation to completion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Position in the history (unique; anomalies refer to it).
    pub index: u64,
    /// The client that ran it. A client runs one operation at a time.
    pub process: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    pub outcome: Outcome,
    /// The node whose PostgreSQL served it, when a connection was open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The timeline the node served the operation on, read by the
    /// operation's own statement (so a session opened on a standby that was
    /// promoted since records its new timeline). None when it ran on a
    /// standby, or wrote nothing, or did not complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    /// For writes: `pg_current_wal_insert_lsn()` inside the transaction, so
    /// the commit record lies after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub f: F,
}

/// The operation and, when it completed with `Ok`, its result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum F {
    /// set: insert a unique id.
    SetAdd { id: i64 },
    /// append: append `value` to the list at `key`; `result` is the list
    /// after the append, as the same transaction saw it.
    AppendAdd {
        key: i32,
        value: i64,
        #[serde(default)]
        result: Option<Vec<i64>>,
    },
    /// append: read the list at `key`.
    AppendRead {
        key: i32,
        #[serde(default)]
        result: Option<Vec<i64>>,
    },
    /// register: read `key`; `result` None means the read failed or is
    /// unknown; `Some(None)` means the register was empty.
    RegRead {
        key: i32,
        #[serde(default)]
        result: Option<Option<i64>>,
    },
    /// register: write `value` to `key`.
    RegWrite { key: i32, value: i64 },
    /// register: set `key` to `to` if it holds `from`; `swapped` is the
    /// answer when the outcome is `Ok`.
    RegCas {
        key: i32,
        from: i64,
        to: i64,
        #[serde(default)]
        swapped: Option<bool>,
    },
    /// bank: move `amount` from account `from` to account `to`, read and
    /// written by the client in one SERIALIZABLE transaction that also
    /// records the transfer `id` in the ledger. A transfer that would take
    /// `from` below zero writes nothing: `Ok` with `applied = Some(false)`.
    BankTransfer {
        /// Unique in the run: the ledger's key (0 in histories from before the ledger).
        #[serde(default)]
        id: i64,
        from: u32,
        to: u32,
        amount: i64,
        #[serde(default)]
        applied: Option<bool>,
    },
    /// bank: read every balance in one transaction.
    BankRead {
        #[serde(default)]
        balances: Option<Vec<i64>>,
    },
}

impl F {
    /// Whether the operation changes data (and so must reach a primary).
    pub fn is_write(&self) -> bool {
        !matches!(self, F::AppendRead { .. } | F::RegRead { .. } | F::BankRead { .. })
    }

    /// Whether an acknowledged operation changed data: a write, unless it
    /// answered that it wrote nothing (a compare that did not match, a
    /// transfer the balance refused).
    pub fn wrote(&self) -> bool {
        self.is_write()
            && !matches!(
                self,
                F::RegCas {
                    swapped: Some(false),
                    ..
                } | F::BankTransfer {
                    applied: Some(false),
                    ..
                }
            )
    }

    pub fn workload(&self) -> &'static str {
        match self {
            F::SetAdd { .. } => "set",
            F::AppendAdd { .. } | F::AppendRead { .. } => "append",
            F::RegRead { .. } | F::RegWrite { .. } | F::RegCas { .. } => "register",
            F::BankTransfer { .. } | F::BankRead { .. } => "bank",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NemesisAction {
    Start,
    Stop,
}

/// A fault started or healed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NemesisEvent {
    pub time_ns: u64,
    /// The fault, e.g. `isolate`, `kill-pg`, `pause-node`.
    pub fault: String,
    pub action: NemesisAction,
    /// The nodes it hits.
    pub targets: Vec<String>,
    /// The role it was meant to hit (`primary`, `standby`, `raft-leader`...).
    pub intended: String,
    /// Whether the targets held that role when the fault started. A run
    /// whose faults all missed their role is vacuous.
    pub hit: bool,
    /// Free text: the rules installed, the signal sent, the role seen.
    pub detail: String,
}

/// One look at one node's PostgreSQL.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    pub time_ns: u64,
    pub node: String,
    /// `primary`, `standby`, or `down` (no answer within the probe timeout).
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    /// Current WAL LSN on a primary, replay LSN on a standby.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<u64>,
}

/// What one node holds after the heal and convergence.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FinalRead {
    pub time_ns: u64,
    pub node: String,
    /// `primary` or `standby`.
    pub role: String,
    pub timeline: u32,
    /// Every id in the set table, in ascending order, duplicates kept.
    pub set: Vec<i64>,
    /// Every list of the append table.
    pub lists: BTreeMap<i32, Vec<i64>>,
    /// Every register.
    pub registers: BTreeMap<i32, i64>,
    /// Every bank balance, by account number.
    pub balances: Vec<i64>,
    /// Every row of the bank's ledger, by transfer id.
    #[serde(default)]
    pub ledger: Vec<Transfer>,
    /// The timeline history as this node's newest `.history` file tells
    /// it: (timeline, parent, fork LSN) for every switch that led here.
    pub forks: Vec<Fork>,
}

/// One row of the bank's ledger: a transfer that committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    pub id: i64,
    pub from: u32,
    pub to: u32,
    pub amount: i64,
}

/// A timeline switch: `timeline` branched off `parent` at `lsn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fork {
    pub timeline: u32,
    pub parent: u32,
    pub lsn: u64,
}

/// The whole history, split by kind, in file order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    pub ops: Vec<Op>,
    pub nemesis: Vec<NemesisEvent>,
    pub probes: Vec<Probe>,
    pub finals: Vec<FinalRead>,
}

impl History {
    pub fn from_records(records: impl IntoIterator<Item = Record>) -> History {
        let mut h = History::default();
        for r in records {
            match r {
                Record::Op(op) => h.ops.push(op),
                Record::Nemesis(n) => h.nemesis.push(n),
                Record::Probe(p) => h.probes.push(p),
                Record::Final(f) => h.finals.push(f),
            }
        }
        h
    }

    /// Reads a `history.jsonl`; names the line that does not parse.
    pub fn read(path: &std::path::Path) -> anyhow::Result<History> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut records = Vec::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let r: Record = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a history record", path.display(), i + 1))?;
            records.push(r);
        }
        Ok(History::from_records(records))
    }
}

/// Total number of bank accounts and their starting balance.
pub const BANK_ACCOUNTS: u32 = 5;
pub const BANK_START: i64 = 100;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_json_lines() {
        let records = vec![
            Record::Op(Op {
                index: 0,
                process: 3,
                start_ns: 10,
                end_ns: 20,
                outcome: Outcome::Ok,
                node: Some("n1".into()),
                timeline: Some(1),
                lsn: Some(0x1_0000_0028),
                error: None,
                f: F::RegCas {
                    key: 2,
                    from: 1,
                    to: 4,
                    swapped: Some(true),
                },
            }),
            Record::Nemesis(NemesisEvent {
                time_ns: 30,
                fault: "isolate".into(),
                action: NemesisAction::Start,
                targets: vec!["n1".into()],
                intended: "primary".into(),
                hit: true,
                detail: "nft drop".into(),
            }),
            Record::Probe(Probe {
                time_ns: 40,
                node: "n2".into(),
                role: "standby".into(),
                timeline: Some(1),
                lsn: None,
            }),
        ];
        for r in &records {
            let line = serde_json::to_string(r).unwrap();
            assert!(!line.contains('\n'));
            assert_eq!(&serde_json::from_str::<Record>(&line).unwrap(), r);
        }
        let h = History::from_records(records);
        assert_eq!((h.ops.len(), h.nemesis.len(), h.probes.len()), (1, 1, 1));
    }
}
