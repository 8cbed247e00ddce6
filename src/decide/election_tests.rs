//! Table tests, and an exhaustive sweep over small clusters proving that a
//! promotion never loses an acknowledged commit and never picks an Unknown member.

use super::*;

fn report(lsn: u64) -> Option<FinalReport> {
    Some(FinalReport {
        flush_lsn: lsn,
        timeline: Timeline(1),
        tags: Tags::default(),
    })
}

fn quorum<'a>(standbys: &[(&'a str, Option<FinalReport>)]) -> ElectionInput<'a> {
    let members = standbys.len() + 1;
    ElectionInput {
        standbys: standbys.iter().cloned().collect(),
        sync_mode: SyncMode::Quorum,
        quorums: vec![SyncConfig {
            standbys: standbys.iter().map(|(n, _)| n.to_string()).collect(),
            k: members / 2,
        }],
        last_primary_lsn: None,
        maximum_lag_bytes: 0,
        old_primary: None,
        fork: None,
        clean_stop: None,
        requested: None,
        forced: false,
        degraded: None,
    }
}

fn promoted(e: &Election) -> Option<&str> {
    match e {
        Election::Promote { node, .. } => Some(node),
        _ => None,
    }
}

#[test]
fn three_nodes_need_both_standbys() {
    let e = elect(&quorum(&[("n2", report(30)), ("n3", None)]));
    assert!(
        matches!(&e, Election::Wait { reason } if reason.contains("[n3]")),
        "{e:?}"
    );
    let e = elect(&quorum(&[("n2", report(30)), ("n3", report(20))]));
    assert_eq!(promoted(&e), Some("n2"));
}

#[test]
fn five_nodes_need_three_of_four() {
    let e = elect(&quorum(&[("a", report(1)), ("b", report(2)), ("c", None), ("d", None)]));
    assert!(matches!(e, Election::Wait { .. }));
    let e = elect(&quorum(&[
        ("a", report(1)),
        ("b", report(2)),
        ("c", report(3)),
        ("d", None),
    ]));
    assert_eq!(promoted(&e), Some("c"));
}

/// Seed 7206: n1 acknowledged a write on n3 only; n3 was elected, recorded its timeline
/// and died before n2 streamed from it. The writes before n3's fork are on n1 and n3 only
/// (`ANY 2 (n1, n3)`): n2, behind, must not be promoted on its own report or on n1 saying
/// it holds nothing; n1's real report (its WAL, on the parent timeline) is enough.
#[test]
fn writes_before_a_fork_need_a_real_report_of_one_of_their_holders() {
    let holders = |n1: Option<FinalReport>| {
        let mut i = quorum(&[("n1", n1), ("n2", report(20))]);
        i.old_primary = Some("n3");
        i.quorums.push(SyncConfig {
            standbys: ["n1", "n3"].map(String::from).into(),
            k: 2,
        });
        i
    };
    let nothing = Some(FinalReport {
        flush_lsn: 0,
        timeline: Timeline(0),
        tags: Tags::default(),
    });
    let e = elect(&holders(nothing.clone()));
    assert!(
        matches!(&e, Election::Wait { reason } if reason.contains("[n1, n3]")),
        "{e:?}"
    );
    assert!(matches!(elect(&holders(None)), Election::Wait { .. }));
    assert_eq!(promoted(&elect(&holders(report(30)))), Some("n1"));
    // A member that streamed n3's timeline past its fork holds the prefix too: the partition
    // suite's pause-primary-pg-kill-candidate (n3 killed right after recording, n1 holding
    // nothing after a failed rewind) waited for ever without this.
    let on = |timeline, lsn| {
        let mut i = holders(nothing.clone());
        i.fork = Some((Timeline(2), 25));
        i.standbys.insert(
            "n2",
            Some(FinalReport {
                flush_lsn: lsn,
                timeline,
                tags: Tags::default(),
            }),
        );
        i
    };
    assert_eq!(promoted(&elect(&on(Timeline(2), 25))), Some("n2"), "at the fork");
    assert_eq!(promoted(&elect(&on(Timeline(2), 40))), Some("n2"), "past the fork");
    assert!(
        matches!(elect(&on(Timeline(2), 24)), Election::Wait { .. }),
        "before the fork"
    );
    assert!(
        matches!(elect(&on(Timeline(1), 40)), Election::Wait { .. }),
        "on the parent timeline"
    );
    // The same nothing still counts in an ordinary configuration the fenced primary ran.
    let mut plain = holders(nothing);
    plain.quorums.pop();
    assert_eq!(promoted(&elect(&plain)), Some("n2"));
}

/// Simulation seed 104 (an operator toggling nosync): n1 was promoted again after its own
/// failover, so it is the only holder of the writes before its fork (`ANY 1 (n1)`); n3,
/// tagged nosync since, streamed n1's timeline past the fork and covers the holders, but no
/// quorum counts it. n2, the synchronous standby, is behind the fork and lacks writes that
/// n3 acknowledged before it was tagged: n3 is promoted, never n2; tagged nofailover, no one.
#[test]
fn a_member_past_the_fork_outside_every_quorum_sets_the_timeline_needed() {
    let on = |timeline, lsn| {
        Some(FinalReport {
            flush_lsn: lsn,
            timeline,
            tags: Tags::default(),
        })
    };
    let input = |n3: Option<FinalReport>| {
        let mut i = quorum(&[("n2", on(Timeline(1), 48)), ("n3", n3)]);
        i.quorums = vec![
            SyncConfig {
                standbys: ["n2"].map(String::from).into(),
                k: 1,
            },
            SyncConfig {
                standbys: ["n1"].map(String::from).into(),
                k: 1,
            },
        ];
        i.old_primary = Some("n1");
        i.fork = Some((Timeline(2), 60));
        i
    };
    assert_eq!(promoted(&elect(&input(on(Timeline(2), 70)))), Some("n3"));
    assert_eq!(promoted(&elect(&input(on(Timeline(2), 60)))), Some("n3"), "at the fork");
    // Not past the fork: nothing covers n1's writes, so it waits (for n1).
    for n3 in [on(Timeline(2), 59), on(Timeline(1), 90), None] {
        let e = elect(&input(n3.clone()));
        assert!(
            matches!(&e, Election::Wait { reason } if reason.contains("[n1]")),
            "{n3:?}: {e:?}"
        );
    }
    let mut tagged = on(Timeline(2), 70).unwrap();
    tagged.tags.nofailover = true;
    let e = elect(&input(Some(tagged.clone())));
    assert!(matches!(e, Election::Refuse { .. }), "{e:?}");
    // n2 on that timeline but before the fork (rewound, replaying from a checkpoint before
    // it) lacks the fork's writes: with n3 tagged nofailover, no one may be promoted.
    let mut early = input(Some(tagged));
    early.standbys.insert("n2", on(Timeline(2), 59));
    let e = elect(&early);
    assert!(matches!(e, Election::Refuse { .. }), "{e:?}");
    // n2 past the fork too, and counted: the most advanced of the two on that timeline.
    let mut both = input(on(Timeline(2), 70));
    both.standbys.insert("n2", on(Timeline(2), 65));
    assert_eq!(promoted(&elect(&both)), Some("n3"));
    both.standbys.insert("n2", on(Timeline(2), 80));
    assert_eq!(promoted(&elect(&both)), Some("n2"));
}

#[test]
fn priority_breaks_ties_then_name() {
    let mut hi = report(10).unwrap();
    hi.tags.failover_priority = 5;
    let e = elect(&quorum(&[("n2", report(10)), ("n3", Some(hi))]));
    assert_eq!(promoted(&e), Some("n3"));
    let e = elect(&quorum(&[("n3", report(10)), ("n2", report(10))]));
    assert_eq!(promoted(&e), Some("n2"));
}

#[test]
fn nofailover_on_the_most_advanced_refuses_rather_than_lose_data() {
    let mut nf = report(30).unwrap();
    nf.tags.nofailover = true;
    let e = elect(&quorum(&[("n2", Some(nf)), ("n3", report(20))]));
    assert!(matches!(e, Election::Refuse { .. }), "{e:?}");
}

#[test]
fn requested_target_must_hold_every_acknowledged_write() {
    let mut input = quorum(&[("n2", report(30)), ("n3", report(20))]);
    input.requested = Some("n3");
    assert!(matches!(elect(&input), Election::Refuse { reason } if reason.contains("--force")));
    input.requested = Some("n2");
    assert_eq!(promoted(&elect(&input)), Some("n2"));
    input.requested = Some("zz");
    assert!(matches!(elect(&input), Election::Refuse { .. }));
}

#[test]
fn forced_failover_promotes_the_target_and_says_what_may_be_lost() {
    let mut input = quorum(&[("n2", report(30)), ("n3", None)]);
    input.forced = true;
    input.requested = Some("n3");
    let e = elect(&input);
    assert!(matches!(&e, Election::Promote { node, reason } if node == "n3" && reason.contains("may be lost")));
    input.requested = None;
    assert!(matches!(elect(&input), Election::Refuse { .. }));
}

#[test]
fn async_mode_allows_bounded_lag() {
    let mut input = quorum(&[("n2", report(900)), ("n3", None)]);
    input.sync_mode = SyncMode::Off;
    input.quorums[0].k = 0;
    input.last_primary_lsn = Some(1000);
    input.maximum_lag_bytes = 50;
    assert!(
        matches!(elect(&input), Election::Wait { reason } if reason.contains("waiting for the final report of [n3]")),
        "900 is 100 behind, more than 50: n3, which has not reported, may be within the lag"
    );
    input.standbys.insert("n3", report(800));
    assert!(
        matches!(elect(&input), Election::Refuse { .. }),
        "both reported, and 900 is 100 behind, more than 50"
    );
    input.maximum_lag_bytes = 100;
    assert_eq!(promoted(&elect(&input)), Some("n2"));
}

#[test]
fn an_unconfirmed_earlier_sync_config_must_be_covered_too() {
    // Growing from ANY 1 (n2, n3) to ANY 2 (n2, n3, n4): until the primary confirms, a commit
    // may be on n2 alone, so reports from n3 and n4 are not enough.
    let mut input = quorum(&[("n2", None), ("n3", report(10)), ("n4", report(20))]);
    input.quorums = vec![
        SyncConfig {
            standbys: ["n2", "n3", "n4"].map(String::from).into(),
            k: 2,
        },
        SyncConfig {
            standbys: ["n2", "n3"].map(String::from).into(),
            k: 1,
        },
    ];
    let e = elect(&input);
    assert!(
        matches!(&e, Election::Wait { reason } if reason.contains("[n2]")),
        "{e:?}"
    );
    input.standbys.insert("n2", report(30));
    assert_eq!(promoted(&elect(&input)), Some("n2"));
    input.quorums.pop();
    input.standbys.insert("n2", None);
    assert_eq!(promoted(&elect(&input)), Some("n4"), "confirmed: 2 of 3 suffice");
}

/// A member removed after the primary last confirmed its configuration (the primary died
/// before it reloaded): the configuration it may have run still counts, and the removed
/// member reports no more. The wait says what ends it.
#[test]
fn a_removed_member_an_unconfirmed_config_needs_is_named_with_the_way_out() {
    let mut input = quorum(&[("n3", report(10))]);
    input.quorums.push(SyncConfig {
        standbys: ["n2", "n3"].map(String::from).into(),
        k: 1,
    });
    let e = elect(&input);
    assert!(
        matches!(&e, Election::Wait { reason } if reason.contains("waiting for [n2]; n2 is no longer a member")
            && reason.contains("ctl member add") && reason.contains("failover --force")),
        "{e:?}"
    );
    // A member that has not reported yet is only waited for.
    input.standbys.insert("n2", None);
    let e = elect(&input);
    assert!(
        matches!(&e, Election::Wait { reason } if reason.ends_with("waiting for [n2]")),
        "{e:?}"
    );
}

/// A switchover whose target was told to promote and died became a failover: the old
/// primary stopped cleanly at 0x500 on timeline 1 (`clean_stop`), so a member past it holds
/// every acknowledged write, without the dead target's report (CI: the other standby waited
/// for it, and the old primary was promoted again after two more seconds).
#[test]
fn a_member_past_the_old_primarys_clean_stop_covers_every_quorum() {
    let mut input = quorum(&[("n2", None), ("n3", report(0x510))]);
    let e = elect(&input);
    assert!(
        matches!(&e, Election::Wait { reason } if reason.contains("[n2]")),
        "{e:?}"
    );
    input.clean_stop = Some((Timeline(1), 0x500));
    assert_eq!(promoted(&elect(&input)), Some("n3"));
    // At the stop is not past it (the record starts there); another timeline says nothing.
    input.standbys.insert("n3", report(0x500));
    assert!(matches!(elect(&input), Election::Wait { .. }));
    input.standbys.insert(
        "n3",
        Some(FinalReport {
            timeline: Timeline(2),
            ..report(0x600).unwrap()
        }),
    );
    assert!(matches!(elect(&input), Election::Wait { .. }));
    // Past it but outside every quorum (nosync): it covers, and the new primary must be
    // past the stop too, so the quorum member behind it is not promoted.
    let mut input = quorum(&[("n2", None), ("n3", report(0x400))]);
    input.standbys.insert("n4", report(0x510));
    input.clean_stop = Some((Timeline(1), 0x500));
    assert_eq!(promoted(&elect(&input)), Some("n4"));
    input.standbys.insert(
        "n4",
        Some(FinalReport {
            tags: Tags {
                nofailover: true,
                ..Tags::default()
            },
            ..report(0x510).unwrap()
        }),
    );
    assert!(
        matches!(elect(&input), Election::Wait { reason } if reason.contains("[n2]")),
        "never n3, which lacks writes; n2 has not reported and may be past the stop"
    );
}

#[test]
fn a_standby_on_an_older_timeline_is_not_promoted() {
    let mut old = report(50).unwrap();
    old.timeline = Timeline(0);
    let e = elect(&quorum(&[("n2", Some(old)), ("n3", report(40))]));
    assert_eq!(promoted(&e), Some("n3"));
}

#[test]
fn a_member_without_a_database_counts_but_is_never_promoted() {
    let nothing = Some(FinalReport {
        flush_lsn: 0,
        timeline: Timeline(0),
        tags: Tags::default(),
    });
    let e = elect(&quorum(&[("n2", nothing.clone()), ("n3", report(40))]));
    assert_eq!(promoted(&e), Some("n3"), "{e:?}");
    let e = elect(&quorum(&[("n2", nothing.clone()), ("n3", nothing.clone())]));
    assert!(matches!(&e, Election::Refuse { .. }), "{e:?}");
    let mut input = quorum(&[("n2", nothing), ("n3", None)]);
    input.requested = Some("n2");
    assert!(matches!(elect(&input), Election::Wait { .. }));
}

#[test]
fn lsn_prints_like_postgres() {
    assert_eq!(lsn(0x3_0000_0060), "3/60");
}

/// Every combination for 2..=4 standbys: actual flush positions, which reported, which are nofailover.
#[test]
fn exhaustive_no_lost_commit_and_unknown_never_promoted() {
    let names = ["s1", "s2", "s3", "s4"];
    for n in 2..=4usize {
        let members = n + 1; // the standbys and the old primary
        let k = members / 2;
        let combos = 4usize.pow(n as u32) * (1 << n) * (1 << n);
        for c in 0..combos {
            let (mut x, mut flush, mut reported, mut nofail) = (c, vec![], vec![], vec![]);
            for _ in 0..n {
                // 0: no database (or not a standby's), reported as timeline 0.
                flush.push(10 * (x % 4) as u64);
                x /= 4;
            }
            for _ in 0..n {
                reported.push(x % 2 == 1);
                x /= 2;
            }
            for _ in 0..n {
                nofail.push(x % 2 == 1);
                x /= 2;
            }
            // The highest commit the primary could have acknowledged: held by at least k standbys.
            let mut sorted = flush.clone();
            sorted.sort_unstable_by(|a, b| b.cmp(a));
            let acked = sorted[k - 1];
            let standbys: Vec<(&str, Option<FinalReport>)> = (0..n)
                .map(|i| {
                    let r = FinalReport {
                        flush_lsn: flush[i],
                        timeline: Timeline(u32::from(flush[i] > 0)),
                        tags: Tags {
                            nofailover: nofail[i],
                            failover_priority: 0,
                        },
                    };
                    (names[i], reported[i].then_some(r))
                })
                .collect();
            let mut input = quorum(&standbys);
            input.quorums[0].k = k;
            let e = elect(&input);
            if let Some(node) = promoted(&e) {
                let i = names.iter().position(|x| *x == node).unwrap();
                assert!(reported[i], "Unknown member promoted: {standbys:?}");
                assert!(!nofail[i], "nofailover member promoted: {standbys:?}");
                assert!(flush[i] > 0, "member without a database promoted: {standbys:?}");
                assert!(
                    flush[i] >= acked,
                    "acknowledged commit {acked} lost by promoting {node}: {standbys:?}"
                );
            }
            // Liveness: everyone reported and an eligible member holds the maximum: someone is promoted.
            let max = *flush.iter().max().unwrap();
            let eligible_max = max > 0 && (0..n).any(|i| flush[i] == max && !nofail[i]);
            if reported.iter().all(|r| *r) && eligible_max {
                assert!(
                    promoted(&e).is_some(),
                    "no promotion although safe: {standbys:?} -> {e:?}"
                );
            }
        }
    }
}

/// Found by the topology test on real PostgreSQL: a standby tagged nosync (outside the
/// quorum, streaming asynchronously) ahead of the synchronous one set the position needed,
/// and no member could be promoted. What it holds beyond the quorum was never acknowledged:
/// only quorum members set the position; it is still promoted when it reaches it.
#[test]
fn a_member_outside_the_quorum_never_raises_the_position_needed() {
    let mut input = quorum(&[("n2", report(100)), ("n3", report(300))]);
    input.quorums = vec![SyncConfig {
        standbys: ["n2".to_string()].into(),
        k: 1,
    }];
    input.standbys.insert(
        "n3",
        Some(FinalReport {
            flush_lsn: 300,
            timeline: Timeline(1),
            tags: Tags {
                nofailover: true,
                failover_priority: 0,
            },
        }),
    );
    let e = elect(&input);
    assert_eq!(promoted(&e), Some("n2"), "{e:?}");
    // Without the tag, the more advanced member holds everything acknowledged too.
    input.standbys.insert("n3", report(300));
    assert_eq!(promoted(&elect(&input)), Some("n3"));
}

/// The hooks test's race (CI, 2026-12-08): the switchover target n1, the only member of the
/// synchronous set, refused its promotion (vetoed: `nofailover` here) and reported; n3, in no
/// quorum, had not reported yet. The election waits for n3 (which holds every write after a
/// clean stop) instead of refusing, which let the controller promote the old primary again
/// at once; once n3 reports at the stop, it is promoted.
#[test]
fn an_unreported_standby_outside_every_quorum_is_waited_for_before_a_refusal() {
    let vetoed = Some(FinalReport {
        tags: Tags {
            nofailover: true,
            ..Tags::default()
        },
        ..report(0x858).unwrap()
    });
    let mut input = quorum(&[("n1", vetoed), ("n3", None)]);
    input.quorums[0].standbys = ["n1".to_string()].into();
    input.quorums[0].k = 1;
    input.clean_stop = Some((Timeline(1), 0x7e0));
    assert!(
        matches!(&elect(&input), Election::Wait { reason } if reason.contains("waiting for the final report of [n3]")),
        "{:?}",
        elect(&input)
    );
    input.standbys.insert("n3", report(0x858));
    assert_eq!(promoted(&elect(&input)), Some("n3"));
    input.standbys.insert("n3", report(0x700));
    assert!(
        matches!(elect(&input), Election::Refuse { .. }),
        "n3 behind the stop: refused once everyone reported"
    );
}
