//! The simulation's seeds in CI, its determinism, and proof that it catches a broken
//! protocol.

use super::*;

/// Seeds run by `cargo test`; `cargo run --release --example sim` runs millions.
const CI_SEEDS: u64 = 1_000;

/// What a campaign of seeds added up to. Every seed must keep the invariants.
#[derive(Default)]
struct Totals {
    acked: usize,
    failovers: u64,
    tag_changes: u64,
    membership_changes: u64,
    disk_fills: u64,
    lease_changes: u64,
    declined: u64,
    pauses: u64,
    switchovers: u64,
    switchovers_done: u64,
    slowest_recovery_ms: u64,
}

fn campaign(cfg: &SimConfig, seeds: impl IntoIterator<Item = u64>) -> Totals {
    let mut t = Totals::default();
    for seed in seeds {
        let o = run(seed, cfg);
        assert!(o.violation.is_none(), "{}", o.report());
        t.acked += o.acked;
        t.failovers += o.failovers;
        t.tag_changes += o.tag_changes;
        t.membership_changes += o.membership_changes;
        t.disk_fills += o.disk_fills;
        t.lease_changes += o.lease_changes;
        t.declined += o.declined;
        t.pauses += o.pauses;
        t.switchovers += o.switchovers;
        t.switchovers_done += o.switchovers_done;
        t.slowest_recovery_ms = t.slowest_recovery_ms.max(o.recovery_ms.unwrap_or(0));
    }
    t
}

/// Not vacuous: a quarter of the CI seeds wrote and failed over.
fn assert_wrote_and_failed_over(t: &Totals, seeds: u64) {
    assert!(t.acked > 100 * seeds as usize, "only {} acknowledged writes", t.acked);
    assert!(t.failovers > seeds / 2, "only {} failovers", t.failovers);
}

/// The first of the CI seeds on which `cfg` (a broken protocol) breaks an invariant.
fn first_violation(cfg: &SimConfig) -> Outcome {
    first_violation_of(cfg, 0..CI_SEEDS)
}

/// The first of `seeds` on which `cfg` (a broken protocol) breaks an invariant.
fn first_violation_of(cfg: &SimConfig, seeds: impl IntoIterator<Item = u64>) -> Outcome {
    seeds
        .into_iter()
        .map(|seed| run(seed, cfg))
        .find(|o| o.violation.is_some())
        .unwrap_or_else(|| panic!("no seed caught {:?}", cfg.mutation))
}

/// The violation is two primaries: one serving with a lease beside another, or split brain.
fn assert_two_primaries(o: &Outcome) {
    let v = o.violation.as_deref().unwrap_or_default();
    assert!(
        v.contains("with a lease") || v.contains("split brain"),
        "{}",
        o.report()
    );
}

#[test]
fn every_ci_seed_keeps_the_invariants_and_recovers_after_the_heal() {
    let t = campaign(&SimConfig::default(), 0..CI_SEEDS);
    assert_wrote_and_failed_over(&t, CI_SEEDS);
    eprintln!(
        "{CI_SEEDS} seeds: {} acknowledged writes, {} failovers, slowest recovery {} ms",
        t.acked, t.failovers, t.slowest_recovery_ms
    );
}

/// Issue 16: an operator toggling `nosync` between the faults (a member leaving and
/// rejoining the synchronous set mid-failover, mid-partition) loses no acknowledged write.
#[test]
fn nosync_toggled_under_faults_keeps_the_invariants() {
    let cfg = SimConfig {
        operator: true,
        ..SimConfig::default()
    };
    let t = campaign(&cfg, 0..CI_SEEDS / 4);
    // Not vacuous: tags changed, writes were acknowledged and failovers happened.
    assert!(t.tag_changes > 100, "only {} tag changes", t.tag_changes);
    assert_wrote_and_failed_over(&t, CI_SEEDS / 4);
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
    let t = campaign(&cfg, 0..CI_SEEDS / 4);
    assert!(t.pauses > 200, "only {} pauses", t.pauses);
    assert_wrote_and_failed_over(&t, CI_SEEDS / 4);
    assert_two_primaries(&first_violation(&SimConfig {
        mutation: Mutation::NoKeeperWhilePaused,
        ..cfg
    }));
}

/// An operator's switchovers under the faults: the old primary's clean shutdown, its
/// shutdown checkpoint reaching the target, the promotion, or a failover when it stalls.
#[test]
fn switchovers_under_faults_keep_the_invariants() {
    let cfg = SimConfig {
        switchovers: true,
        ..SimConfig::default()
    };
    let t = campaign(&cfg, 0..CI_SEEDS / 4);
    // Not vacuous: switchovers began, and most ended as switchovers.
    let (begun, done) = (t.switchovers, t.switchovers_done);
    assert!(begun > 50, "only {begun} switchovers began");
    assert!(done * 2 > begun, "only {done} of {begun} switchovers completed");
    assert!(t.acked > 100 * CI_SEEDS as usize / 4);
    eprintln!(
        "{begun} switchovers begun, {done} completed, {} acknowledged writes",
        t.acked
    );
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
    assert_wrote_and_failed_over(&campaign(&cfg, 0..CI_SEEDS / 4), CI_SEEDS / 4);
    // About one seed in 750 catches it since the simulation runs the real lease task (a
    // grant held up past the controller's margin, then a failover before the holder's
    // own expiry): seed 1110 is the first (`examples/sim --delays 1 --pauses 1 --mutation 5`).
    let o = first_violation_of(
        &SimConfig {
            mutation: Mutation::LeaseFromReply,
            ..cfg
        },
        [1110],
    );
    assert_two_primaries(&o);
    eprintln!("a lease counted from the grant's arrival: caught by seed {}", o.seed);
}

/// An operator removes members and adds them back under the faults (`SimConfig::membership`).
/// Seed 197 found that removing the last synchronous standby, while the member added back
/// still cloned, left the primary acknowledging writes alone; 78, that a synchronous
/// standby removed during a failover no longer counted in the election; 6046, that removing
/// the old primary during a failover left the candidate no synchronous standby. Each lost
/// an acknowledged write (`a_removal_never_empties_the_quorum_nor_drops_a_member_an_election_must_hear`
/// in the pure core).
#[test]
fn members_removed_and_added_back_under_faults_keep_the_invariants() {
    let cfg = SimConfig {
        membership: true,
        ..SimConfig::default()
    };
    let t = campaign(&cfg, (0..CI_SEEDS / 4).chain([78, 197, 6046]));
    assert_wrote_and_failed_over(&t, CI_SEEDS / 4);
    assert!(
        t.membership_changes > 200,
        "only {} members removed or added back",
        t.membership_changes
    );
    // With every other flag too: nosync, pauses, switchovers, delays, a full pg_wal, lease_ms.
    let all = SimConfig {
        operator: true,
        pauses: true,
        switchovers: true,
        delays: true,
        disk_full: true,
        lease_changes: true,
        ..cfg
    };
    let t = campaign(&all, 0..CI_SEEDS / 8);
    assert!(t.membership_changes > 50 && t.switchovers > 5 && t.pauses > 25);
    assert!(t.disk_fills > 20 && t.lease_changes > 20);
}

/// pg_wal's filesystem fills up and is freed under the faults (`SimConfig::disk_full`): a
/// primary that PANICs is not restarted while there is no room, lets its lease lapse and a
/// standby is promoted; the member rejoins once there is room again.
#[test]
fn a_full_pg_wal_under_faults_keeps_the_invariants() {
    let cfg = SimConfig {
        disk_full: true,
        ..SimConfig::default()
    };
    let t = campaign(&cfg, 0..CI_SEEDS / 4);
    // A primary whose pg_wal fills up PANICs and stays down until a failover: fewer writes
    // than the other classes (about 100 a seed), so half the usual bar.
    assert!(
        t.acked > 50 * (CI_SEEDS / 4) as usize,
        "only {} acknowledged writes",
        t.acked
    );
    assert!(t.failovers > CI_SEEDS / 8, "only {} failovers", t.failovers);
    assert!(t.disk_fills > 100, "only {} disks filled up", t.disk_fills);
}

/// An operator changes `lease_ms` between 750 and 3000 ms under the faults
/// (`SimConfig::lease_changes`). Without the fix (`Mutation::LeaseLengthNow`, as raftpg
/// was): a lease granted under 2000 ms was timed by the leader under the 750 ms set since,
/// and a standby was promoted while the old primary still held it.
#[test]
fn lease_ms_changed_under_faults_keeps_the_invariants() {
    let cfg = SimConfig {
        lease_changes: true,
        ..SimConfig::default()
    };
    let t = campaign(&cfg, 0..CI_SEEDS / 4);
    assert_wrote_and_failed_over(&t, CI_SEEDS / 4);
    assert!(t.lease_changes > 200, "only {} changes of lease_ms", t.lease_changes);
    let o = first_violation(&SimConfig {
        mutation: Mutation::LeaseLengthNow,
        ..cfg
    });
    assert_two_primaries(&o);
    eprintln!(
        "a lowered lease_ms timing earlier grants: caught by seed {}: {}",
        o.seed,
        o.violation.as_deref().unwrap_or_default()
    );
}

/// Every fault class at once: an operator toggling `nosync` and asking for switchovers,
/// raftpg paused, reports and grants delayed. Seed 3104532 found that a switchover could
/// promote a standby whose position was past the shutdown checkpoint on another timeline
/// (a fenced primary of an older generation, never rewound, left out of the synchronous
/// set by `nosync`), without an acknowledged write.
#[test]
fn every_fault_class_at_once_keeps_the_invariants() {
    let cfg = SimConfig {
        operator: true,
        pauses: true,
        switchovers: true,
        delays: true,
        ..SimConfig::default()
    };
    let t = campaign(&cfg, (0..CI_SEEDS / 8).chain([3104532]));
    assert!(t.switchovers > 10 && t.pauses > 50 && t.tag_changes > 20);
    assert!(t.acked > 100 * CI_SEEDS as usize / 8);
}

/// Every fault class at once, pg_rewind racing its source too: seed 3107967 found that a
/// candidate replaced after it had promoted and before it recorded its timeline shared
/// that timeline's number with the next candidate, and never streamed again
/// (`ClusterState::unrecorded_timeline`).
#[test]
fn a_replaced_candidates_timeline_is_never_taken_again() {
    let cfg = SimConfig {
        operator: true,
        rewind_race: true,
        pauses: true,
        switchovers: true,
        delays: true,
        ..SimConfig::default()
    };
    let t = campaign(&cfg, (0..CI_SEEDS / 16).chain([3107967]));
    assert!(t.switchovers > 5 && t.pauses > 25);
}

#[test]
fn a_controller_that_does_not_wait_for_the_lease_is_caught() {
    assert_two_primaries(&first_violation(&SimConfig {
        mutation: Mutation::NoLeaseWait,
        ..SimConfig::default()
    }));
}

#[test]
fn promoting_without_enough_final_reports_is_caught() {
    let o = first_violation(&SimConfig {
        mutation: Mutation::IgnoreQuorum,
        ..SimConfig::default()
    });
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
    let t = campaign(&cfg, (0..CI_SEEDS / 4).chain([327, 336, 343, 509, 715]));
    assert!(t.declined > 0, "no candidate declined: the race was never modelled");
    let operator = SimConfig {
        operator: true,
        ..cfg.clone()
    };
    campaign(&operator, [5026, 6867]);
    let broken = SimConfig {
        mutation: Mutation::IgnoreShortWal,
        ..cfg
    };
    // Seed 178 showed it until the simulation ran the real lease task, whose schedule
    // counts on each node's own clock; seed 32 is the first that does since.
    let o = run(32, &broken);
    let v = o.violation.as_deref().unwrap_or_default();
    assert!(v.contains("liveness"), "seed 32 without the decline: {}", o.report());
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
