//! A tier of runs, one after another, and the table of their results
//! (`suite.md` and `suite.json` in the output directory).

use std::path::Path;
use std::time::Duration;

use crate::nemesis::{Scenario, SCENARIOS};
use crate::run::{self, RunOpts};
use crate::verdict::Verdict;

/// `n` fresh seeds, short enough to type back in with `--seed`.
pub fn fresh_seeds(n: u64) -> Vec<u64> {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..n).map(|_| rng.gen_range(1..1_000_000)).collect()
}

/// The scenarios of a tier (the smoke tier's, or all), from `from` on in `list`'s order.
pub fn scenarios(smoke: bool, from: Option<&str>) -> Vec<&'static Scenario> {
    let start = from
        .and_then(|f| SCENARIOS.iter().position(|s| s.name == f))
        .unwrap_or(0);
    SCENARIOS[start..].iter().filter(|s| s.smoke || !smoke).collect()
}

/// Runs each of `scenarios` with each seed; true when every run passed. A run that errs
/// (could not even start) counts as invalid.
pub async fn run(
    scenarios: &[&Scenario],
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
    let mut rows: Vec<Row> = Vec::new();
    for s in scenarios {
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
            // After every run: a tier stopped half-way keeps what it did (resume with --from).
            write(out, &rows)?;
        }
    }
    println!("\n{}", table(&rows));
    // A vacuous run proved nothing and an unknown one decided nothing: neither is a pass.
    Ok(rows.iter().all(|(_, _, r)| r.as_ref().is_ok_and(Verdict::passed)))
}

/// One run of a tier: its scenario, seed, and verdict (or why it did not run).
pub type Row = (String, u64, Result<Verdict, String>);

/// `suite.md` and `suite.json` of `rows` in `out`.
fn write(out: &Path, rows: &[Row]) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("suite.md"), table(rows))?;
    let json: Vec<_> = rows
        .iter()
        .map(|(name, seed, r)| match r {
            Ok(v) => serde_json::to_value(v).unwrap_or_default(),
            Err(e) => serde_json::json!({ "scenario": name, "seed": seed, "error": e }),
        })
        .collect();
    std::fs::write(out.join("suite.json"), serde_json::to_string_pretty(&json)?)?;
    Ok(())
}

/// The rows of a `suite.json`.
pub fn read_rows(path: &Path) -> anyhow::Result<Vec<Row>> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let values: Vec<serde_json::Value> =
        serde_json::from_str(&text).with_context(|| format!("{} is not a suite.json", path.display()))?;
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let field = |k: &str| v.get(k).cloned().unwrap_or_default();
            let name = field("scenario").as_str().unwrap_or_default().to_string();
            let seed = field("seed").as_u64().unwrap_or_default();
            match field("error").as_str() {
                Some(e) => Ok((name, seed, Err(e.to_string()))),
                None => {
                    let mut verdict: Verdict = serde_json::from_value(v)
                        .with_context(|| format!("{}: entry {i} is neither a verdict nor an error", path.display()))?;
                    // Files written before a timeline change belonged to one fault only.
                    verdict.failovers = crate::checker::own_failovers(&verdict.failovers, &verdict.windows);
                    Ok((name, seed, Ok(verdict)))
                }
            }
        })
        .collect()
}

/// The markdown table: scenario × seed, verdict, failover times, recovery.
pub fn table(rows: &[Row]) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::Counts;

    #[test]
    fn a_tier_starts_at_the_scenario_named_and_keeps_its_filter() {
        let names = |v: Vec<&Scenario>| v.iter().map(|s| s.name).collect::<Vec<_>>();
        assert_eq!(scenarios(false, None).len(), SCENARIOS.len());
        let last = SCENARIOS.last().unwrap().name;
        assert_eq!(names(scenarios(false, Some(last))), [last]);
        let smoke = names(scenarios(true, None));
        assert!(!smoke.is_empty() && smoke.len() < SCENARIOS.len());
        let third = SCENARIOS[2].name;
        assert!(names(scenarios(true, Some(third))).iter().all(|n| smoke.contains(n)));
    }

    #[test]
    fn a_tier_run_in_parts_gives_back_the_rows_and_table_it_wrote() {
        let verdict = Verdict {
            scenario: "isolate-primary".into(),
            seed: 7,
            valid: true,
            vacuous: false,
            vacuous_reason: None,
            checkers: vec![],
            failovers: vec![],
            recovery_ms: Some(4100),
            counts: Counts {
                ok: 10,
                fail: 1,
                info: 2,
            },
            windows: vec![],
            duration_ms: 30_000,
            dir: "/tmp/x".into(),
        };
        let first: Vec<Row> = vec![("isolate-primary".into(), 7, Ok(verdict))];
        let second: Vec<Row> = vec![("chaos".into(), 8, Err("could not form | the cluster\nmore".into()))];
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        write(&a, &first).unwrap();
        write(&b, &second).unwrap();
        let mut rows = read_rows(&a.join("suite.json")).unwrap();
        rows.extend(read_rows(&b.join("suite.json")).unwrap());
        assert_eq!(rows, [first, second].concat());
        let text = table(&rows);
        assert!(
            text.contains("| isolate-primary | 7 | valid | none | 4.1 s | 10 / 1 / 2 | no window |"),
            "{text}"
        );
        assert!(
            text.contains("| chaos | 8 | ERROR: could not form / the cluster | | | | |"),
            "{text}"
        );
        std::fs::write(dir.path().join("bad.json"), r#"[{"scenario": "x"}]"#).unwrap();
        let err = read_rows(&dir.path().join("bad.json")).unwrap_err();
        assert!(
            format!("{err:#}").contains("entry 0 is neither a verdict nor an error"),
            "{err:#}"
        );
    }
}
