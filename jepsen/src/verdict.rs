//! `verdict.json`: what one run concluded.

use serde::{Deserialize, Serialize};

/// Something a checker found wrong, with the operations that show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    /// The checker that found it, e.g. `lost-writes`.
    pub checker: String,
    /// The kind, e.g. `lost`, `two-writers`, `phantom-read`.
    pub kind: String,
    /// One sentence a person can act on.
    pub message: String,
    /// `Op::index` of every operation involved.
    pub ops: Vec<u64>,
}

/// One checker's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckerResult {
    pub name: String,
    /// `valid`, `invalid`, or `unknown` (it could not decide, e.g. the
    /// linearizability search ran out of time; unknown is not a pass).
    pub status: String,
    /// What it looked at, e.g. "1 204 acknowledged inserts on 3 nodes".
    pub summary: String,
    pub anomalies: Vec<Anomaly>,
}

/// One fault window and the writes its faulted nodes received while it lasted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub fault: String,
    /// The role the fault was meant for, and whether its targets held it.
    pub intended: String,
    pub hit: bool,
    pub targets: Vec<String>,
    pub start_ns: u64,
    /// When it healed (the end of the run if it never did).
    pub end_ns: u64,
    /// Writes that reached a faulted node's PostgreSQL while the window lasted (in flight
    /// when it started, or started during it).
    pub attempted: u64,
    /// Of those, the ones acknowledged.
    pub acknowledged: u64,
}

/// From a fault on the primary to the first write acknowledged by a new
/// primary (a new timeline).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failover {
    pub fault: String,
    pub fault_ns: u64,
    pub first_write_ns: u64,
    pub ms: u64,
    pub from_timeline: u32,
    pub to_timeline: u32,
}

/// Operation counts by outcome.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub scenario: String,
    pub seed: u64,
    /// No checker found an anomaly (an `unknown` checker does not make a
    /// run invalid, but it is reported).
    pub valid: bool,
    /// The faults did not hit the role they were meant for: the run proves
    /// nothing, whatever `valid` says.
    pub vacuous: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vacuous_reason: Option<String>,
    pub checkers: Vec<CheckerResult>,
    pub failovers: Vec<Failover>,
    /// From the last heal to a converged cluster (one primary, every
    /// standby streaming and caught up), when it converged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_ms: Option<u64>,
    pub counts: Counts,
    /// Every fault window with the writes its targets received.
    #[serde(default)]
    pub windows: Vec<Window>,
    pub duration_ms: u64,
    /// Where the run's files are.
    pub dir: String,
}

impl Verdict {
    pub fn anomalies(&self) -> impl Iterator<Item = &Anomaly> {
        self.checkers.iter().flat_map(|c| c.anomalies.iter())
    }

    /// A checker that could not decide (e.g. the linearizability search ran out of budget).
    pub fn unknown(&self) -> bool {
        self.checkers.iter().any(|c| c.status == "unknown")
    }

    /// The run proved its checks hold: valid, not vacuous, and no checker undecided.
    /// `unknown` and vacuous are never a pass.
    pub fn passed(&self) -> bool {
        self.valid && !self.vacuous && !self.unknown()
    }

    /// INVALID, vacuous, unknown or valid, as one word for tables.
    pub fn word(&self) -> &'static str {
        match (self.valid, self.vacuous, self.unknown()) {
            (false, _, _) => "INVALID",
            (true, true, _) => "VACUOUS",
            (true, false, true) => "UNKNOWN",
            (true, false, false) => "valid",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(status: &str, vacuous: bool) -> Verdict {
        Verdict {
            scenario: "isolate-primary".into(),
            seed: 1,
            valid: status != "invalid",
            vacuous,
            vacuous_reason: None,
            checkers: vec![CheckerResult {
                name: "register".into(),
                status: status.into(),
                summary: String::new(),
                anomalies: vec![],
            }],
            failovers: vec![],
            recovery_ms: None,
            counts: Counts::default(),
            windows: vec![],
            duration_ms: 0,
            dir: String::new(),
        }
    }

    #[test]
    fn unknown_and_vacuous_are_never_a_pass() {
        assert!(verdict("valid", false).passed());
        assert_eq!(verdict("valid", false).word(), "valid");
        for (v, word) in [
            (verdict("unknown", false), "UNKNOWN"),
            (verdict("valid", true), "VACUOUS"),
            (verdict("unknown", true), "VACUOUS"),
            (verdict("invalid", false), "INVALID"),
        ] {
            assert!(!v.passed(), "{word}");
            assert_eq!(v.word(), word);
        }
    }
}
