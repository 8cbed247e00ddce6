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
        /// The run's directory: history.jsonl, verdict.json, report.html, node logs.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// Every scenario of a tier: smoke (five, one seed) or full (all, three seeds).
    Suite {
        #[arg(long, value_enum)]
        tier: Tier,
        /// Seeds per scenario (default: 1 for smoke, 3 for full).
        #[arg(long)]
        seeds: Option<u64>,
        #[arg(long, default_value_t = 20)]
        time: u64,
        #[arg(long, default_value = "/tmp/raftpg-jepsen")]
        out: PathBuf,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(clap::Args)]
struct Common {
    /// The raftpg executable (default: the one next to raftpg-jepsen).
    #[arg(long, env = "RAFTPG_BIN")]
    raftpg: Option<PathBuf>,
    /// Keep PostgreSQL's data directories of valid runs too.
    #[arg(long)]
    keep_data: bool,
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
            };
            let v = run::run(&opts).await?;
            suite::print_anomalies(&v);
            Ok(if v.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Suite {
            tier,
            seeds,
            time,
            out,
            common,
        } => {
            let (smoke, seeds) = match tier {
                Tier::Smoke => (true, seeds.unwrap_or(1)),
                Tier::Full => (false, seeds.unwrap_or(3)),
            };
            let raftpg = common.raftpg.unwrap_or_else(run::default_raftpg);
            let all_valid =
                suite::run(smoke, seeds, Duration::from_secs(time), &out, &raftpg, common.keep_data).await?;
            Ok(if all_valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
