//! The simulation's seeds in CI, its determinism, and proof that it catches a broken
//! protocol.

use super::*;

/// Seeds run by `cargo test`; `cargo run --release --example sim` runs millions.
const CI_SEEDS: u64 = 1_000;

#[test]
fn every_ci_seed_keeps_the_invariants_and_recovers_after_the_heal() {
    let cfg = SimConfig::default();
    let (mut failed, mut acked, mut failovers, mut worst) = (Vec::new(), 0, 0, 0);
    for seed in 0..CI_SEEDS {
        let o = run(seed, &cfg);
        acked += o.acked;
        failovers += o.failovers;
        worst = worst.max(o.recovery_ms.unwrap_or(0));
        if o.violation.is_some() {
            failed.push(o.report());
            if failed.len() == 3 {
                break;
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    // Not vacuous: the runs wrote, failed over, and recovered.
    assert!(acked > 100 * CI_SEEDS as usize, "only {acked} acknowledged writes");
    assert!(failovers > CI_SEEDS / 2, "only {failovers} failovers");
    eprintln!("{CI_SEEDS} seeds: {acked} acknowledged writes, {failovers} failovers, slowest recovery {worst} ms");
}

/// Issue 16: an operator toggling `nosync` between the faults (a member leaving and
/// rejoining the synchronous set mid-failover, mid-partition) loses no acknowledged write.
#[test]
fn nosync_toggled_under_faults_keeps_the_invariants() {
    let cfg = SimConfig {
        operator: true,
        ..SimConfig::default()
    };
    let (mut acked, mut tagged, mut failovers) = (0, 0, 0);
    for seed in 0..CI_SEEDS / 4 {
        let o = run(seed, &cfg);
        assert!(o.violation.is_none(), "{}", o.report());
        acked += o.acked;
        failovers += o.failovers;
        tagged += o.tag_changes;
    }
    // Not vacuous: tags changed, writes were acknowledged and failovers happened.
    assert!(tagged > 100, "only {tagged} tag changes in the traces");
    assert!(acked > 100 * CI_SEEDS as usize / 4 && failovers > CI_SEEDS / 8);
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let cfg = SimConfig::default();
    for seed in [3, 77, 901] {
        let (a, b) = (run(seed, &cfg), run(seed, &cfg));
        assert_eq!(a.trace, b.trace);
        assert_eq!(
            (a.acked, a.failovers, a.recovery_ms),
            (b.acked, b.failovers, b.recovery_ms)
        );
    }
}

/// raftpg paused (SIGSTOP) for 0.2-4 s, around the lease, resuming with its memory and
/// its last report: the invariants hold, and it is the fence keeper that holds them, since
/// without it a paused primary's PostgreSQL serves on beside its successor.
#[test]
fn paused_raftpg_keeps_the_invariants_and_needs_the_fence_keeper() {
    let cfg = SimConfig {
        pauses: true,
        ..SimConfig::default()
    };
    let (mut acked, mut pauses, mut failovers) = (0, 0, 0);
    for seed in 0..CI_SEEDS / 4 {
        let o = run(seed, &cfg);
        assert!(o.violation.is_none(), "{}", o.report());
        acked += o.acked;
        pauses += o.pauses;
        failovers += o.failovers;
    }
    // Not vacuous: raftpg was paused, writes were acknowledged and failovers happened.
    assert!(pauses > 200, "only {pauses} pauses");
    assert!(acked > 100 * CI_SEEDS as usize / 4 && failovers > CI_SEEDS / 8);
    let broken = SimConfig {
        mutation: Mutation::NoKeeperWhilePaused,
        ..cfg
    };
    let o = (0..CI_SEEDS)
        .map(|seed| run(seed, &broken))
        .find(|o| o.violation.is_some())
        .expect("no seed caught a paused primary without its fence keeper");
    let v = o.violation.as_deref().unwrap_or_default();
    assert!(
        v.contains("with a lease") || v.contains("split brain"),
        "{}",
        o.report()
    );
}

/// An operator's switchovers under the faults: the old primary's clean shutdown, its
/// shutdown checkpoint reaching the target, the promotion, or a failover when it stalls.
#[test]
fn switchovers_under_faults_keep_the_invariants() {
    let cfg = SimConfig {
        switchovers: true,
        ..SimConfig::default()
    };
    let (mut acked, mut begun, mut done) = (0, 0, 0);
    for seed in 0..CI_SEEDS / 4 {
        let o = run(seed, &cfg);
        assert!(o.violation.is_none(), "{}", o.report());
        acked += o.acked;
        begun += o.switchovers;
        done += o.switchovers_done;
    }
    // Not vacuous: switchovers began, and most ended as switchovers.
    assert!(begun > 50, "only {begun} switchovers began");
    assert!(done * 2 > begun, "only {done} of {begun} switchovers completed");
    assert!(acked > 100 * CI_SEEDS as usize / 4);
    eprintln!("{begun} switchovers begun, {done} completed, {acked} acknowledged writes");
}

/// Reports and their grants take 0-800 ms each way, and raftpg is paused now and then:
/// the invariants hold, because the holder counts its lease from when it asked and the
/// leader's clock from when the report arrived. A holder that counted from the grant's
/// arrival is caught: a grant held up by a pause extends its lease past the leader's
/// deadline.
#[test]
fn delayed_reports_keep_the_invariants_and_the_lease_counts_from_the_request() {
    let cfg = SimConfig {
        delays: true,
        pauses: true,
        ..SimConfig::default()
    };
    let (mut acked, mut failovers) = (0, 0);
    for seed in 0..CI_SEEDS / 4 {
        let o = run(seed, &cfg);
        assert!(o.violation.is_none(), "{}", o.report());
        acked += o.acked;
        failovers += o.failovers;
    }
    assert!(acked > 100 * CI_SEEDS as usize / 4 && failovers > CI_SEEDS / 8);
    let broken = SimConfig {
        mutation: Mutation::LeaseFromReply,
        ..cfg
    };
    let o = (0..CI_SEEDS)
        .map(|seed| run(seed, &broken))
        .find(|o| o.violation.is_some())
        .expect("no seed caught a lease counted from the grant's arrival");
    let v = o.violation.as_deref().unwrap_or_default();
    assert!(
        v.contains("with a lease") || v.contains("split brain"),
        "{}",
        o.report()
    );
    eprintln!("a lease counted from the grant's arrival: caught by seed {}", o.seed);
}

fn first_violation(mutation: Mutation) -> Option<Outcome> {
    let cfg = SimConfig {
        mutation,
        ..SimConfig::default()
    };
    (0..CI_SEEDS)
        .map(|seed| run(seed, &cfg))
        .find(|o| o.violation.is_some())
}

#[test]
fn a_controller_that_does_not_wait_for_the_lease_is_caught() {
    let o = first_violation(Mutation::NoLeaseWait).expect("no seed caught the missing lease wait");
    let v = o.violation.as_deref().unwrap_or_default();
    assert!(
        v.contains("with a lease") || v.contains("split brain"),
        "{}",
        o.report()
    );
}

#[test]
fn promoting_without_enough_final_reports_is_caught() {
    let o = first_violation(Mutation::IgnoreQuorum).expect("no seed caught the ignored quorum");
    let v = o.violation.as_deref().unwrap_or_default();
    assert!(v.contains("without acknowledged write"), "{}", o.report());
}

/// Finding 17 of docs/jepsen.md: with pg_rewind racing its source, a rewound member can
/// be the most advanced and unable to become consistent. It declines its candidacy, and
/// the cluster recovers; a candidate that starts anyway (the mutation) is chosen again and
/// again, and the run never recovers. Seeds 178 and 336 were the first to show it. The
/// same race leaves a standby whose minimum recovery point is off the next primary's line
/// (seeds 327 and 715 never converged before such a stopped standby was rewound) or that
/// runs without being consistent, pointed at a fenced primary (seed 5026 with the operator,
/// before it was pointed at the new one).
#[test]
fn a_rewound_candidate_short_of_consistency_declines_and_the_cluster_recovers() {
    let cfg = SimConfig {
        rewind_race: true,
        ..SimConfig::default()
    };
    let mut declined = 0;
    for seed in (0..CI_SEEDS / 4).chain([327, 336, 343, 509, 715]) {
        let o = run(seed, &cfg);
        assert!(o.violation.is_none(), "{}", o.report());
        declined += o.declined;
    }
    assert!(declined > 0, "no candidate declined: the race was never modelled");
    let operator = SimConfig {
        operator: true,
        ..cfg.clone()
    };
    for seed in [5026, 6867] {
        let o = run(seed, &operator);
        assert!(o.violation.is_none(), "{}", o.report());
    }
    let broken = SimConfig {
        mutation: Mutation::IgnoreShortWal,
        ..cfg
    };
    let o = run(178, &broken);
    let v = o.violation.as_deref().unwrap_or_default();
    assert!(v.contains("liveness"), "seed 178 without the decline: {}", o.report());
}

/// The seeds that found the bugs fixed with the simulation (each also has a table test
/// in the pure core): 844, the first primary ran without a quorum; 593, a replaced
/// candidate said it held nothing; 626, the stopped old primary was never promoted again;
/// 2509, a restarted raftpg dropped the lease it inherited; 2848, a new primary's first
/// lease was not guarded by the fence keeper; 7206, 10226 and 13737, a new primary died
/// before its standbys streamed past its fork and a standby lacking the previous primary's
/// writes was promoted; 14931 and 18763, the previous primary of a primary that promoted
/// twice said it held nothing (these five need 20,000 seeds to find: they are kept here);
/// with the stopped old primary promoted again whenever no standby can be (finding 14 of
/// docs/jepsen.md): 2024, a replaced candidate restarted cut off and promoted on its old
/// state; 6596, an old primary replaced as candidate while in recovery was never promoted
/// again; 104 with an operator, a synchronous standby behind the fork was promoted over the
/// nosync one past it.
#[test]
fn the_seeds_that_found_bugs_pass() {
    let operator = SimConfig {
        operator: true,
        ..SimConfig::default()
    };
    let default = SimConfig::default();
    let seeds = [844, 593, 626, 2509, 2848, 7206, 10226, 13737, 14931, 18763, 2024, 6596]
        .map(|s| (s, &default))
        .into_iter()
        .chain([(104, &operator)]);
    for (seed, cfg) in seeds {
        let o = run(seed, cfg);
        assert!(o.violation.is_none(), "{}", o.report());
        assert!(o.recovery_ms.is_some(), "{}", o.report());
    }
}
