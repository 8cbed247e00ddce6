//! A long simulation campaign, or the replay of one seed.
//!
//!     cargo run --release --example sim -- --seeds 1000000 [--from 0] [--nodes 3] [--operator 1] [--rewind-race 1] [--pauses 1] [--switchovers 1] [--delays 1] [--membership 1] [--disk-full 1] [--lease-changes 1]
//!     cargo run --release --example sim -- --seed 4242        # replay: prints the trace
//!     ... --mutation 5            # a deliberately broken protocol (`sim::Mutation`, 1-6), to find seeds that catch it
//!
//! Exits 1 if any seed breaks an invariant; prints each failing seed with its trace.

use std::process::ExitCode;
use std::time::Instant;

use raftpg::sim::{run, Mutation, SimConfig};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| -> Option<u64> {
        let at = args.iter().position(|a| a == flag)?;
        match args.get(at + 1).map(|v| v.parse::<u64>()) {
            Some(Ok(v)) => Some(v),
            _ => {
                eprintln!("{flag} needs a number");
                std::process::exit(2);
            }
        }
    };
    if let Some(unknown) = args.iter().enumerate().find(|(i, a)| {
        i % 2 == 0
            && ![
                "--seeds",
                "--from",
                "--nodes",
                "--seed",
                "--operator",
                "--rewind-race",
                "--pauses",
                "--switchovers",
                "--delays",
                "--membership",
                "--disk-full",
                "--lease-changes",
                "--mutation",
            ]
            .contains(&a.as_str())
    }) {
        eprintln!(
            "unknown argument {}; use --seeds N [--from S] [--nodes K] [--operator 1] (an operator toggles nosync) [--rewind-race 1] (pg_rewind races its source) [--pauses 1] (raftpg paused for 0.2-4 s) [--switchovers 1] (an operator switches over) [--delays 1] (reports and grants take 0-800 ms) [--membership 1] (an operator removes members and adds them back) [--disk-full 1] (pg_wal's filesystem fills up) [--lease-changes 1] (an operator changes lease_ms), or --seed S",
            unknown.1
        );
        return ExitCode::from(2);
    }
    let mut cfg = SimConfig::default();
    if let Some(n) = value("--nodes") {
        cfg.nodes = n as usize;
    }
    cfg.operator = value("--operator").is_some_and(|v| v != 0);
    cfg.rewind_race = value("--rewind-race").is_some_and(|v| v != 0);
    cfg.pauses = value("--pauses").is_some_and(|v| v != 0);
    cfg.switchovers = value("--switchovers").is_some_and(|v| v != 0);
    cfg.delays = value("--delays").is_some_and(|v| v != 0);
    cfg.membership = value("--membership").is_some_and(|v| v != 0);
    cfg.disk_full = value("--disk-full").is_some_and(|v| v != 0);
    cfg.lease_changes = value("--lease-changes").is_some_and(|v| v != 0);
    cfg.mutation = match value("--mutation").unwrap_or(0) {
        0 => Mutation::None,
        1 => Mutation::NoLeaseWait,
        2 => Mutation::IgnoreQuorum,
        3 => Mutation::IgnoreShortWal,
        4 => Mutation::NoKeeperWhilePaused,
        5 => Mutation::LeaseFromReply,
        6 => Mutation::LeaseLengthNow,
        n => {
            eprintln!("--mutation {n}: use 1 (NoLeaseWait) to 6 (LeaseLengthNow), in the order of sim::Mutation");
            return ExitCode::from(2);
        }
    };
    if let Some(seed) = value("--seed") {
        let o = run(seed, &cfg);
        print!("{}", o.report());
        return if o.violation.is_some() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    }
    let from = value("--from").unwrap_or(0);
    let seeds = value("--seeds").unwrap_or(10_000);
    let started = Instant::now();
    let (mut failed, mut worst, mut acked, mut declined, mut membership) = (0u64, 0u64, 0usize, 0u64, 0u64);
    for seed in from..from + seeds {
        let o = run(seed, &cfg);
        acked += o.acked;
        declined += o.declined;
        membership += o.membership_changes;
        worst = worst.max(o.recovery_ms.unwrap_or(0));
        if o.violation.is_some() {
            failed += 1;
            print!("{}", o.report());
        }
        let done = seed - from + 1;
        if done % 10_000 == 0 {
            eprintln!(
                "{done} of {seeds} seeds in {:.0?}: {failed} failed, slowest recovery {worst} ms, {acked} acknowledged writes",
                started.elapsed()
            );
        }
    }
    println!(
        "{seeds} seeds from {from} in {:.1?}: {failed} failed, slowest recovery after the heal {worst} ms, \
         {declined} candidacies declined for want of WAL, {membership} members removed or added back, \
         {acked} acknowledged writes",
        started.elapsed()
    );
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
