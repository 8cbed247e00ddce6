//! `raftpg-jepsen`: list the scenarios, run one, or run a tier of them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use raftpg_jepsen::nemesis::{self, SCENARIOS};
use raftpg_jepsen::run::{self, RunOpts};
use raftpg_jepsen::suite;

#[derive(Parser)]
#[command(
    name = "raftpg-jepsen",
    about = "Jepsen-style partition suite for raftpg (needs root)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The scenarios, with what each one does.
    List,
    /// Removes whatever a crashed run left: processes, namespaces, links, cgroups.
    Sweep,
    /// One scenario: exit 0 when valid, 1 when a checker found an anomaly or the run was vacuous.
    Run {
        #[arg(long)]
        scenario: String,
        /// Re-running with the same seed repeats the same fault schedule.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Seconds of fault windows (each window is 6-10 s plus 2-4 s of quiet).
        #[arg(long, default_value_t = 30)]
        time: u64,
        /// Fault window lengths, in milliseconds: SHORTEST-LONGEST (default 6000-10000).
        #[arg(long, value_parser = parse_span)]
        windows: Option<(u64, u64)>,
        /// The run's directory: history.jsonl, verdict.json, report.html, node logs.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// Runs raftpg in deliberately unsafe configurations: exit 0 only when the
    /// checkers find every one INVALID (a canary that comes back valid fails).
    Canary {
        /// One canary by name (default: all).
        #[arg(long)]
        only: Option<String>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Seconds of fault windows per canary.
        #[arg(long, default_value_t = 20)]
        time: u64,
        #[arg(long, default_value = "/tmp/raftpg-jepsen")]
        out: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Every scenario of a tier: smoke (six scenarios, 20 s, windows of 6-10 s) or full (all of
    /// them, 300 s, windows of 0.5-15 s). Seeds are drawn fresh and printed unless given.
    Suite {
        #[arg(long, value_enum)]
        tier: Tier,
        /// Fresh seeds per scenario, drawn and printed (default: 1).
        #[arg(long, conflicts_with = "seed")]
        seeds: Option<u64>,
        /// These seeds instead (repeat the flag for several): replays a printed run.
        #[arg(long)]
        seed: Vec<u64>,
        /// Seconds of fault windows per run (default: 20 for smoke, 300 for full).
        #[arg(long)]
        time: Option<u64>,
        /// Fault window lengths, in milliseconds: SHORTEST-LONGEST (default: 6000-10000 for
        /// smoke, 500-15000 for full).
        #[arg(long, value_parser = parse_span)]
        windows: Option<(u64, u64)>,
        /// Start at this scenario, skipping those before it in `list`'s order: resumes a
        /// tier that was stopped (`suite.json` is rewritten after every run).
        #[arg(long)]
        from: Option<String>,
        /// Only these scenarios of the tier (repeat the flag for several): reruns some
        /// runs of a tier with its seed, times and windows.
        #[arg(long, conflicts_with = "from")]
        only: Vec<String>,
        #[arg(long, default_value = "/tmp/raftpg-jepsen")]
        out: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// The markdown table of one or more `suite.json` files, in order: a tier run in parts.
    Table {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(clap::Args)]
struct Common {
    /// The raftpg executable (default: the one next to raftpg-jepsen).
    #[arg(long, env = "RAFTPG_BIN")]
    raftpg: Option<PathBuf>,
    /// Keep PostgreSQL's data directories and the history (`history.jsonl`, 1-2 GB for a
    /// 300 s run) of valid runs too; an invalid run always keeps them.
    #[arg(long)]
    keep_data: bool,
}

/// `500-15000` → (500, 15000).
fn parse_span(s: &str) -> Result<(u64, u64), String> {
    let bad = || format!("{s:?} is not SHORTEST-LONGEST in milliseconds, such as 500-15000");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (a, b): (u64, u64) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a == 0 || a > b {
        return Err(format!(
            "{s:?}: the shortest window must be at least 1 ms and not longer than the longest"
        ));
    }
    Ok((a, b))
}

#[derive(Clone, Copy, ValueEnum)]
enum Tier {
    Smoke,
    Full,
}

#[tokio::main]
async fn main() -> ExitCode {
    match real_main(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("raftpg-jepsen: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::List => {
            for s in SCENARIOS {
                println!(
                    "{:<36} {:<6} {}",
                    s.name,
                    if s.smoke { "smoke" } else { "full" },
                    s.about
                );
            }
            for c in raftpg_jepsen::canary::CANARIES {
                println!("{:<36} {:<6} {} ({})", c.name, "canary", c.about, c.scenario);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Sweep => {
            raftpg_jepsen::hosts::require_root()?;
            let removed = raftpg_jepsen::hosts::sweep()?;
            for what in &removed {
                println!("removed {what}");
            }
            if removed.is_empty() {
                println!("nothing to remove");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run {
            scenario,
            seed,
            time,
            windows,
            out,
            common,
        } => {
            nemesis::find(&scenario)?;
            let out = out.unwrap_or_else(|| PathBuf::from(format!("/tmp/raftpg-jepsen/{scenario}-seed{seed}")));
            let opts = RunOpts {
                scenario,
                seed,
                time: Duration::from_secs(time),
                out,
                raftpg: common.raftpg.unwrap_or_else(run::default_raftpg),
                keep_data: common.keep_data,
                window_ms: windows.unwrap_or(run::WINDOW_MS),
                ..RunOpts::default()
            };
            let v = run::run(&opts).await?;
            suite::print_anomalies(&v);
            Ok(if v.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Canary {
            only,
            seed,
            time,
            out,
            common,
        } => {
            let raftpg = common.raftpg.unwrap_or_else(run::default_raftpg);
            let (all_caught, _) =
                raftpg_jepsen::canary::run_all(only.as_deref(), seed, Duration::from_secs(time), &out, &raftpg).await?;
            Ok(if all_caught {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Table { files } => {
            let mut rows = Vec::new();
            for f in &files {
                rows.extend(suite::read_rows(f)?);
            }
            print!("{}", suite::table(&rows));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Suite {
            tier,
            seeds,
            seed,
            time,
            windows,
            from,
            only,
            out,
            common,
        } => {
            for name in from.iter().chain(&only) {
                nemesis::find(name)?;
            }
            let (smoke, default_time, default_windows) = match tier {
                Tier::Smoke => (true, 20, run::WINDOW_MS),
                Tier::Full => (false, 300, (500, 15_000)),
            };
            let seeds = match seed.is_empty() {
                true => suite::fresh_seeds(seeds.unwrap_or(1)),
                false => seed,
            };
            let raftpg = common.raftpg.unwrap_or_else(run::default_raftpg);
            let mut scenarios = suite::scenarios(smoke, from.as_deref());
            if !only.is_empty() {
                scenarios.retain(|s| only.iter().any(|o| *o == s.name));
                anyhow::ensure!(
                    !scenarios.is_empty(),
                    "none of {} is in the {} tier: `raftpg-jepsen list` shows each scenario's tier",
                    only.join(", "),
                    if smoke { "smoke" } else { "full" }
                );
            }
            let all_valid = suite::run(
                &scenarios,
                &seeds,
                Duration::from_secs(time.unwrap_or(default_time)),
                windows.unwrap_or(default_windows),
                &out,
                &raftpg,
                common.keep_data,
            )
            .await?;
            Ok(if all_valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
