//! A tier of runs, one after another, and the table of their results
//! (`suite.md` and `suite.json` in the output directory).

use std::path::Path;
use std::time::Duration;

use crate::nemesis::SCENARIOS;
use crate::run::{self, RunOpts};
use crate::verdict::Verdict;

/// `n` fresh seeds, short enough to type back in with `--seed`.
pub fn fresh_seeds(n: u64) -> Vec<u64> {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..n).map(|_| rng.gen_range(1..1_000_000)).collect()
}

/// Runs every scenario of the tier with each seed; true when every run
/// passed. A run that errs (could not even start) counts as invalid.
pub async fn run(
    smoke: bool,
    seeds: &[u64],
    time: Duration,
    window_ms: (u64, u64),
    out: &Path,
    raftpg: &Path,
    keep_data: bool,
) -> anyhow::Result<bool> {
    let shown: Vec<String> = seeds.iter().map(u64::to_string).collect();
    println!(
        "suite: seeds {} (replay one with --seed), {} s of faults per run, windows of {}-{} ms",
        shown.join(", "),
        time.as_secs(),
        window_ms.0,
        window_ms.1
    );
    let mut rows: Vec<(String, u64, Result<Verdict, String>)> = Vec::new();
    for s in SCENARIOS.iter().filter(|s| s.smoke || !smoke) {
        for &seed in seeds {
            let opts = RunOpts {
                scenario: s.name.to_string(),
                seed,
                time,
                window_ms,
                out: out.join(format!("{}-seed{seed}", s.name)),
                raftpg: raftpg.to_path_buf(),
                keep_data,
                ..RunOpts::default()
            };
            let result = run::run(&opts).await.map_err(|e| format!("{e:#}"));
            match &result {
                Ok(v) => print_anomalies(v),
                Err(e) => eprintln!("raftpg-jepsen: {} seed {seed} did not run: {e}", s.name),
            }
            rows.push((s.name.to_string(), seed, result));
        }
    }
    let table = table(&rows);
    println!("\n{table}");
    std::fs::write(out.join("suite.md"), &table)?;
    let json: Vec<_> = rows
        .iter()
        .map(|(name, seed, r)| match r {
            Ok(v) => serde_json::to_value(v).unwrap_or_default(),
            Err(e) => serde_json::json!({ "scenario": name, "seed": seed, "error": e }),
        })
        .collect();
    std::fs::write(out.join("suite.json"), serde_json::to_string_pretty(&json)?)?;
    // A vacuous run proved nothing and an unknown one decided nothing: neither is a pass.
    Ok(rows.iter().all(|(_, _, r)| r.as_ref().is_ok_and(Verdict::passed)))
}

/// The markdown table: scenario × seed, verdict, failover times, recovery.
pub fn table(rows: &[(String, u64, Result<Verdict, String>)]) -> String {
    let mut out = String::from(
        "| scenario | seed | verdict | failovers (fault → first write on the new primary) | recovery after heal | ops ok / fail / unknown | writes on faulted nodes in fault windows (acknowledged / attempted) |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for (name, seed, r) in rows {
        let line = match r {
            Ok(v) => {
                let fo: Vec<String> = v
                    .failovers
                    .iter()
                    .map(|f| format!("{:.2} s", f.ms as f64 / 1000.0))
                    .collect();
                let windows: Vec<String> = v
                    .windows
                    .iter()
                    .map(|w| format!("{} / {}", w.acknowledged, w.attempted))
                    .collect();
                format!(
                    "| {name} | {seed} | {} | {} | {} | {} / {} / {} | {} |",
                    v.word(),
                    if fo.is_empty() {
                        "none".to_string()
                    } else {
                        fo.join(", ")
                    },
                    v.recovery_ms
                        .map(|ms| format!("{:.1} s", ms as f64 / 1000.0))
                        .unwrap_or("never".into()),
                    v.counts.ok,
                    v.counts.fail,
                    v.counts.info,
                    if windows.is_empty() {
                        "no window".to_string()
                    } else {
                        windows.join(", ")
                    }
                )
            }
            Err(e) => {
                let first = e.lines().next().unwrap_or_default();
                format!("| {name} | {seed} | ERROR: {} | | | | |", first.replace('|', "/"))
            }
        };
        out += &line;
        out.push('\n');
    }
    out
}

pub fn print_anomalies(v: &Verdict) {
    for a in v.anomalies() {
        eprintln!("ANOMALY [{}] {}: {} (ops {:?})", a.checker, a.kind, a.message, a.ops);
    }
    for c in v.checkers.iter().filter(|c| c.status != "valid") {
        eprintln!("checker {}: {} ({})", c.name, c.status, c.summary);
    }
    if let Some(why) = &v.vacuous_reason {
        eprintln!("{}: {why}", if v.vacuous { "VACUOUS" } else { "note" });
    }
}
