//! Canaries: raftpg run in deliberately unsafe configurations, where the suite
//! must say INVALID. A checker that never fails proves nothing; a canary that
//! comes back valid means the suite cannot see the bug that configuration
//! allows, and `raftpg-jepsen canary` fails.

use std::path::Path;
use std::time::Duration;

use crate::run::{self, RunOpts};
use crate::verdict::Verdict;

/// One unsafe configuration, the fault that exposes it, and the checkers
/// that must catch it.
#[derive(Debug)]
pub struct Canary {
    pub name: &'static str,
    /// What is unsafe and what it allows.
    pub about: &'static str,
    pub scenario: &'static str,
    /// Appended to every node's `raftpg.toml`.
    pub toml: &'static str,
    /// `raftpg ctl config set` once the cluster formed.
    pub config: &'static [&'static str],
    /// At least one of these must find an anomaly.
    pub caught_by: &'static [&'static str],
}

pub const CANARIES: &[Canary] = &[
    Canary {
        name: "async-replication",
        about: "synchronous_mode = off with maximum_lag_on_failover = 1 GB: the primary acknowledges \
                writes no standby has, and a standby that lacks them is promoted when it dies",
        scenario: "lagging-standbys-kill-primary",
        toml: "",
        config: &["synchronous_mode=off", "maximum_lag_on_failover=1073741824"],
        caught_by: &["lost-writes", "append", "laggard-promotion", "bank", "register"],
    },
    Canary {
        name: "no-fence-keeper",
        about: "no fence keeper: a primary whose raftpg is frozen keeps serving after a new primary \
                was promoted, so its readers see old data",
        scenario: "pause-primary-raftpg",
        toml: "\n[unsafe_for_testing]\nno_fence_keeper = true\n",
        config: &[],
        caught_by: &["append", "register"],
    },
    Canary {
        name: "short-controller-wait",
        about: "the controller waits 600 ms after the last renewal instead of lease * 1.1 + 200 ms \
                (2.4 s): a new primary is promoted while the old one still holds its 2 s lease and \
                serves reads",
        scenario: "pause-primary-raftpg",
        toml: "\n[unsafe_for_testing]\ncontroller_deadline_ms = 600\n",
        config: &[],
        caught_by: &["append", "register"],
    },
    Canary {
        name: "no-final-reports",
        about: "the controller does not wait for final reports: it promotes from the standbys' last \
                periodic reports, so a lagging standby wins over one whose PostgreSQL hung holding the \
                last acknowledged writes",
        scenario: "laggard-and-hung-holder-kill-primary",
        toml: "\n[unsafe_for_testing]\nskip_final_reports = true\n",
        config: &[],
        caught_by: &["lost-writes", "append", "bank", "register"],
    },
];

/// What one canary's run showed.
#[derive(Debug)]
pub struct Outcome {
    pub canary: &'static Canary,
    pub seed: u64,
    pub result: Result<Verdict, String>,
}

impl Outcome {
    /// The invalid checkers among the ones that should catch it.
    pub fn caught_by(&self) -> Vec<&str> {
        match &self.result {
            Ok(v) => v
                .checkers
                .iter()
                .filter(|c| c.status == "invalid" && self.canary.caught_by.contains(&c.name.as_str()))
                .map(|c| c.name.as_str())
                .collect(),
            Err(_) => vec![],
        }
    }

    /// Caught: the run happened and an expected checker said invalid. A window that missed
    /// its fault later in the run (a canary that lost writes can leave no streaming standby
    /// for the next window's setup: seed 92 of no-final-reports) does not undo an anomaly
    /// the checkers proved; a run that hit no fault at all proves nothing.
    pub fn caught(&self) -> bool {
        let hit = matches!(&self.result, Ok(v) if v.windows.iter().any(|w| w.hit));
        hit && !self.caught_by().is_empty()
    }
}

pub fn find(name: &str) -> anyhow::Result<&'static Canary> {
    CANARIES.iter().find(|c| c.name == name).ok_or_else(|| {
        let names: Vec<&str> = CANARIES.iter().map(|c| c.name).collect();
        anyhow::anyhow!("no canary called {name:?} (there are: {})", names.join(", "))
    })
}

/// Runs each canary once with `seed`; true when every one was caught.
pub async fn run_all(
    only: Option<&str>,
    seed: u64,
    time: Duration,
    out: &Path,
    raftpg: &Path,
) -> anyhow::Result<(bool, Vec<Outcome>)> {
    let chosen: Vec<&'static Canary> = match only {
        Some(name) => vec![find(name)?],
        None => CANARIES.iter().collect(),
    };
    let mut outcomes = Vec::new();
    for canary in chosen {
        println!("canary {}: {}", canary.name, canary.about);
        let opts = RunOpts {
            scenario: canary.scenario.to_string(),
            seed,
            time,
            out: out.join(format!("canary-{}-seed{seed}", canary.name)),
            raftpg: raftpg.to_path_buf(),
            // An invalid run keeps its data anyway; a canary's is evidence.
            keep_data: true,
            toml: canary.toml.to_string(),
            config: canary.config.iter().map(|s| s.to_string()).collect(),
            window_ms: run::WINDOW_MS,
        };
        let result = run::run(&opts).await.map_err(|e| format!("{e:#}"));
        let outcome = Outcome { canary, seed, result };
        println!(
            "canary {}: {}",
            canary.name,
            if outcome.caught() {
                format!("CAUGHT by {}", outcome.caught_by().join(", "))
            } else {
                "NOT CAUGHT: the suite cannot see what this configuration allows".to_string()
            }
        );
        outcomes.push(outcome);
    }
    let table = table(&outcomes);
    println!("\n{table}");
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("canaries.md"), &table)?;
    Ok((outcomes.iter().all(Outcome::caught), outcomes))
}

/// The markdown table: canary, scenario, seed, verdict, the checkers that caught it.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out =
        String::from("| canary | scenario | seed | verdict | caught by | first anomaly |\n|---|---|---|---|---|---|\n");
    for o in outcomes {
        let (verdict, first) = match &o.result {
            Ok(v) => (
                v.word().to_string(),
                v.anomalies()
                    .find(|a| o.canary.caught_by.contains(&a.checker.as_str()))
                    .map(|a| format!("{} {}: {}", a.checker, a.kind, a.message))
                    .unwrap_or_default(),
            ),
            Err(e) => (
                format!("ERROR: {}", e.lines().next().unwrap_or_default()),
                String::new(),
            ),
        };
        let caught = o.caught_by();
        let first: String = first.chars().take(160).collect();
        out += &format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            o.canary.name,
            o.canary.scenario,
            o.seed,
            verdict.replace('|', "/"),
            if o.caught() {
                caught.join(", ")
            } else {
                "NOT CAUGHT".into()
            },
            first.replace('|', "/")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_canary_runs_a_real_scenario_and_names_real_checkers() {
        let checkers = [
            "lost-writes",
            "two-writers",
            "set-reads",
            "append",
            "laggard-promotion",
            "bank",
            "register",
        ];
        for c in CANARIES {
            crate::nemesis::find(c.scenario).unwrap();
            assert!(!c.caught_by.is_empty(), "{}", c.name);
            for name in c.caught_by {
                assert!(checkers.contains(name), "{}: no checker called {name}", c.name);
            }
            assert!(
                !c.toml.is_empty() || !c.config.is_empty(),
                "{}: a canary must make something unsafe",
                c.name
            );
        }
        assert!(find("nope").unwrap_err().to_string().contains("no-fence-keeper"));
    }
}
