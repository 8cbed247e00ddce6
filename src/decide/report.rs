//! The protocol between the agents and the Raft leader, as pure rules: the report an agent
//! sends, derived from what it observed and decided; whether the leader grants its lease
//! renewal; and the lease as the holder counts it. The effects code (`agent`, `node::report`,
//! `lease::Holder`) and the simulation (`sim`) both call these, so they cannot drift apart.

use std::collections::BTreeMap;

use crate::cluster::{ClusterState, SyncConfig};
use crate::types::Generation;

/// How a report's reason starts while its member clones (`cloning from n1: 45% (...)`):
/// `ctl list` shows the state as `cloning 45%`.
pub const CLONING: &str = "cloning from ";

/// The state `ctl list` shows for a member whose reason says it clones.
pub fn cloning_state(reason: &str) -> Option<String> {
    let rest = reason.strip_prefix(CLONING)?;
    let percent = rest
        .split_once(": ")
        .and_then(|(_, p)| p.split_whitespace().next())
        .filter(|p| p.ends_with('%'));
    Some(match percent {
        Some(p) => format!("cloning {p}"),
        None => "cloning".to_string(),
    })
}
use crate::decide::agent::{Decision, LeaseView, Local};
use crate::decide::controller::{PgRole, Report};
use crate::postgres::conf;

/// Where this node, as primary, saw PostgreSQL run the state's synchronous configuration:
/// (generation, configuration, its write position at the *second* observation that showed
/// it, `None` after the first). Kept by the agent from one tick to the next. The first
/// sight is only this session's view of the reload: a walsender may still release a commit
/// under the old configuration a moment later. By the next observation every walsender has
/// long taken the reload, so every write acknowledged under an earlier configuration lies
/// before the position taken then.
pub type SyncSeen = Option<(Generation, SyncConfig, Option<u64>)>;

/// Whether every write acknowledged under `old` is on `new.k` members of `new`'s set by
/// construction: `old.k` members of `old` hold it, at most `|old \ new|` of them are
/// outside `new`, so at least `old.k - |old \ new|` are in it. (An election under `new`
/// reads `|new| - new.k + 1` of its members, so it then finds one.) Asynchronous mode
/// (no set) promised nothing to carry; a degraded window (`ANY 0` of a set) acknowledged
/// writes that may be on the primary alone, so they are carried only once flushed.
pub fn carried_by_construction(new: &SyncConfig, old: &SyncConfig) -> bool {
    (old.k == 0 && old.standbys.is_empty())
        || old.k.saturating_sub(old.standbys.difference(&new.standbys).count()) >= new.k
}

/// The configuration a primary reports as applied (so that the controller may confirm it
/// and forget the earlier ones): the state's, once PostgreSQL runs it *and* every write
/// acknowledged under an earlier one is on `k` of its standbys. That holds by construction
/// (`carried_by_construction`), or once `k` of them have flushed past the write position of
/// the second observation that showed the primary running it (`seen`). Confirming on the first sight
/// alone let an election read only members that never received such a write: the
/// simulation found this with an operator tagging `nosync` the one standby that held a
/// write while the other was frozen (seed 98 of `nosync_toggled_under_faults_keeps_the_invariants`).
fn sync_applied(state: &ClusterState, pg: &crate::postgres::PgState, seen: &mut SyncSeen) -> Option<SyncConfig> {
    let want = state.sync_config();
    let names: Vec<String> = want.standbys.iter().cloned().collect();
    if pg.sync_names != conf::sync_standby_names(want.k, &names) {
        *seen = None;
        return None;
    }
    // A degraded window's writes may be on the primary alone, whatever the earlier
    // configurations were (an emptied set reads as asynchronous mode): flushed, or not carried.
    // In a window, even `ANY 0` is reported from the second sight on: a walsender may still
    // release a commit under the quorum just after the first, and the position this report
    // carries is where the window's elections take the quorum's writes to end.
    let carried = state.degraded.is_none()
        && (want.k == 0
            || state
                .sync_unconfirmed
                .iter()
                .all(|old| carried_by_construction(&want, old)));
    let at = match seen {
        Some((g, c, Some(at))) if *g == state.generation && *c == want => *at,
        Some((g, c, at @ None)) if *g == state.generation && *c == want => *at.insert(pg.write_lsn?),
        _ => {
            *seen = Some((state.generation, want.clone(), None));
            return carried.then_some(want);
        }
    };
    if carried {
        return Some(want);
    }
    let past = pg
        .replication
        .iter()
        .filter(|r| want.standbys.contains(&r.application_name) && r.flush_lsn.is_some_and(|f| f >= at))
        .count();
    (past >= want.k).then_some(want)
}

/// Whether a new report (`report`, asking to renew or not: `renew`) goes to the Raft leader
/// at once instead of at the next renewal interval, given the one sent before (`before`):
/// a final position, a renewal asked or no longer asked, a new generation, role or
/// synchronous configuration, and, while a primary change is under way (`pending`), any
/// move of the WAL position: the controller acts on each at once.
pub fn urgent(before: (&Report, bool), report: &Report, renew: bool, pending: bool) -> bool {
    let (old, old_renew) = before;
    old.final_position != report.final_position
        || old_renew != renew
        || old.generation != report.generation
        || old.pg != report.pg
        || old.sync_applied != report.sync_applied
        || (pending && old.lsn != report.lsn)
}

/// The report for this tick: the role and position PostgreSQL showed, the decision's final
/// position and reason, and, on a primary, whether it runs the state's synchronous
/// configuration with the earlier ones' writes carried over (so the controller may confirm it).
pub fn derive(state: &ClusterState, local: &Local, d: &Decision, seen: &mut SyncSeen) -> Report {
    let (pg, streaming, timeline, lsn) = match local {
        Local::NoData => (PgRole::NoData, false, None, None),
        Local::Stopped { control } => (PgRole::Stopped, false, control.as_ref().and_then(|c| c.timeline), None),
        Local::Primary(s) => (PgRole::Primary, false, s.timeline, s.write_lsn),
        Local::Standby(s) => (
            PgRole::Standby,
            s.streaming(),
            s.timeline,
            s.receive_lsn.max(s.replay_lsn),
        ),
        Local::Unknown(_) => (PgRole::Unknown, false, None, None),
    };
    if !matches!(local, Local::Primary(_)) {
        *seen = None;
    }
    let (sync_applied, pending_restart) = match local {
        Local::Primary(s) => (sync_applied(state, s, seen), !s.pending_restart.is_empty()),
        Local::Standby(s) => (None, !s.pending_restart.is_empty()),
        _ => (None, false),
    };
    let standby_flush: BTreeMap<String, u64> = match local {
        Local::Primary(s) => s
            .replication
            .iter()
            .filter_map(|r| Some((r.application_name.clone(), r.flush_lsn?)))
            .collect(),
        _ => BTreeMap::new(),
    };
    Report {
        generation: state.generation,
        pg,
        streaming,
        timeline,
        lsn,
        standby_flush,
        final_position: d.final_position,
        reason: d.reason.clone(),
        sync_applied,
        pending_restart,
    }
}

/// Whether the Raft leader, once it has confirmed its leadership, grants `node`'s renewal
/// for `generation`: to the recorded primary of that generation with no change pending,
/// or to the candidate the pending change of that generation chose (it promotes only
/// with a grant, so never on a state in which it was since replaced). A renewal granted
/// under an older generation, or to a fenced primary during a failover, would let it run on.
pub fn grants_renewal(state: &ClusterState, node: &str, generation: Generation) -> bool {
    if state.generation != generation {
        return false;
    }
    match &state.pending {
        None => state.primary.as_ref().is_some_and(|p| p.node == node),
        Some(p) => p.candidate.as_deref() == Some(node),
    }
}

/// Whether a renewal granted to `node` under `generation` moves the controller's clock for
/// the primary's lease (`lease::Book::granted`): only the recorded primary's. A candidate's
/// confirmation before it promotes does not: the new primary's clock starts when its
/// timeline is recorded, not at a confirmation that a long promotion may have followed.
pub fn renews_primary(state: &ClusterState, node: &str, generation: Generation) -> bool {
    state.pending.is_none() && grants_renewal(state, node, generation)
}

/// The lease for `generation` as its holder counts it at `now`, on its own clock:
/// `granted` is the (generation, expiry) of its last granted renewal; until
/// `acquiring_until` (one lease after it first saw itself primary of `generation`) a
/// node without a grant is still acquiring.
pub fn lease_view<T: Ord>(
    granted: Option<(Generation, T)>,
    generation: Generation,
    now: T,
    acquiring_until: T,
) -> LeaseView {
    match granted {
        Some((g, e)) if g == generation && now < e => LeaseView::Held,
        Some((g, _)) if g == generation => LeaseView::Expired,
        _ if now < acquiring_until => LeaseView::Acquiring,
        _ => LeaseView::Expired,
    }
}

/// The end of the acquiring period for `generation`: `lease_end(since)` after the holder
/// first saw itself primary of it (`acquiring`), and never after a lease of it that an
/// earlier raftpg on this machine left (`inherited`): the controller's clock runs from
/// that process's last grant.
pub fn acquiring_until<T: Ord + Copy>(
    acquiring: Option<(Generation, T)>,
    inherited: Option<(Generation, T)>,
    generation: Generation,
    lease_end: impl Fn(T) -> T,
) -> Option<T> {
    let (g, since) = acquiring.filter(|(g, _)| *g == generation)?;
    let until = lease_end(since);
    Some(match inherited {
        Some((ig, e)) if ig == g => until.min(e),
        _ => until,
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_cloning_member_shows_its_progress_as_its_state() {
        assert_eq!(
            cloning_state("cloning from n1: 45% (123 of 456 MB)").as_deref(),
            Some("cloning 45%")
        );
        assert_eq!(cloning_state("cloning from n1").as_deref(), Some("cloning"));
        assert_eq!(cloning_state("no data directory: cloning from n1"), None);
    }

    use super::*;
    use crate::cluster::testing::{bootstrapped, set_sync_mode};
    use crate::cluster::{apply, Command};
    use crate::postgres::{Controldata, PgState, Replica};
    use crate::types::Timeline;

    #[test]
    fn a_report_goes_at_once_for_what_the_controller_acts_on_and_waits_otherwise() {
        use crate::decide::controller::PgRole;
        let base = Report {
            generation: Generation(3),
            pg: PgRole::Standby,
            streaming: true,
            timeline: Some(Timeline(2)),
            lsn: Some(0x100),
            standby_flush: Default::default(),
            final_position: None,
            reason: "streaming".into(),
            sync_applied: None,
            pending_restart: false,
        };
        let at_once = |f: &dyn Fn(&mut Report), renew: bool, pending: bool| {
            let mut r = base.clone();
            f(&mut r);
            urgent((&base, false), &r, renew, pending)
        };
        assert!(!at_once(&|_| {}, false, true), "nothing changed");
        assert!(!at_once(&|r| r.reason = "other words".into(), false, false));
        assert!(
            !at_once(&|r| r.streaming = false, false, false),
            "the controller reads it at the next report"
        );
        assert!(
            !at_once(&|r| r.lsn = Some(0x200), false, false),
            "a position, with no change under way"
        );
        assert!(
            at_once(&|r| r.lsn = Some(0x200), false, true),
            "a position, during a primary change"
        );
        assert!(at_once(
            &|r| r.final_position = Some((0x100, Timeline(2))),
            false,
            false
        ));
        assert!(at_once(&|_| {}, true, false), "a renewal asked");
        assert!(at_once(&|r| r.generation = Generation(4), false, false));
        assert!(at_once(&|r| r.pg = PgRole::Primary, false, false));
        assert!(at_once(
            &|r| {
                r.sync_applied = Some(crate::cluster::SyncConfig {
                    standbys: ["n2".to_string()].into(),
                    k: 1,
                })
            },
            false,
            false
        ));
    }

    fn decision() -> Decision {
        Decision {
            actions: Vec::new(),
            renew_lease: false,
            final_position: Some((0x500, Timeline(1))),
            reason: "why".into(),
        }
    }

    fn pg(in_recovery: bool) -> PgState {
        PgState {
            in_recovery,
            timeline: Some(Timeline(1)),
            write_lsn: (!in_recovery).then_some(0x900),
            receive_lsn: in_recovery.then_some(0x700),
            replay_lsn: in_recovery.then_some(0x600),
            walreceiver: in_recovery.then(|| "streaming".to_string()),
            primary_conninfo: String::new(),
            replication: vec![Replica {
                application_name: "n2".into(),
                state: "streaming".into(),
                sync_state: "quorum".into(),
                flush_lsn: Some(0x880),
            }],
            idle_slots: vec![],
            slots: Vec::new(),
            sync_names: String::new(),
            pending_restart: vec!["shared_buffers".into()],
            timeline_pinned: false,
        }
    }

    #[test]
    fn a_report_says_what_postgres_showed_and_what_was_decided() {
        let s = bootstrapped("n1");
        let d = decision();
        let mut primary = pg(false);
        let r = derive(&s, &Local::Primary(primary.clone()), &d, &mut None);
        assert_eq!(
            (r.pg, r.lsn, r.generation),
            (PgRole::Primary, Some(0x900), Generation(1))
        );
        assert_eq!(r.standby_flush, BTreeMap::from([("n2".to_string(), 0x880)]));
        assert_eq!(r.sync_applied, None, "it does not run ANY 1 (n2, n3) yet");
        assert!(r.pending_restart);
        assert_eq!(
            (r.final_position, r.reason.as_str()),
            (Some((0x500, Timeline(1))), "why")
        );
        primary.sync_names = "ANY 1 (\"n2\", \"n3\")".into();
        let r = derive(&s, &Local::Primary(primary), &d, &mut None);
        assert_eq!(r.sync_applied, Some(s.sync_config()));

        let r = derive(&s, &Local::Standby(pg(true)), &d, &mut None);
        assert_eq!((r.pg, r.streaming, r.lsn), (PgRole::Standby, true, Some(0x700)));
        assert!(r.standby_flush.is_empty() && r.sync_applied.is_none());

        let stopped = Local::Stopped {
            control: Some(Controldata {
                timeline: Some(Timeline(3)),
                ..Controldata::default()
            }),
        };
        let r = derive(&s, &stopped, &d, &mut None);
        assert_eq!((r.pg, r.timeline, r.lsn), (PgRole::Stopped, Some(Timeline(3)), None));
        for (local, role) in [
            (Local::NoData, PgRole::NoData),
            (Local::Unknown("x".into()), PgRole::Unknown),
        ] {
            let r = derive(&s, &local, &d, &mut None);
            assert_eq!((r.pg, r.timeline, r.lsn, r.streaming), (role, None, None, false));
        }
    }

    #[test]
    fn only_the_recorded_primary_or_the_chosen_candidate_of_the_generation_is_granted() {
        let mut s = bootstrapped("n1");
        assert!(grants_renewal(&s, "n1", Generation(1)));
        assert!(!grants_renewal(&s, "n2", Generation(1)), "not the primary");
        assert!(!grants_renewal(&s, "n1", Generation(0)), "an older generation");
        let begin = Command::BeginFailover {
            generation: Generation(1),
            to: None,
            forced: false,
            reason: "r".into(),
        };
        apply(&mut s, &begin).unwrap();
        for (node, g) in [("n1", 1), ("n1", 2), ("n2", 2)] {
            assert!(
                !grants_renewal(&s, node, Generation(g)),
                "{node} {g}: a change is pending"
            );
        }
        // The candidate of the change, once chosen, under its generation only; until its
        // replacement, and then its successor only.
        let promote = |node: &str, generation| Command::Promote {
            generation,
            node: node.into(),
        };
        apply(&mut s, &promote("n2", Generation(2))).unwrap();
        assert!(grants_renewal(&s, "n2", Generation(2)));
        assert!(
            !renews_primary(&s, "n2", Generation(2)),
            "a confirmation, not the primary's renewal"
        );
        for (node, g) in [("n1", 1), ("n1", 2), ("n3", 2), ("n2", 1), ("n2", 3)] {
            assert!(
                !grants_renewal(&s, node, Generation(g)),
                "{node} {g}: not the candidate"
            );
        }
        let replace = Command::BeginFailover {
            generation: Generation(2),
            to: None,
            forced: false,
            reason: "n2 made no progress".into(),
        };
        apply(&mut s, &replace).unwrap();
        assert!(
            !grants_renewal(&s, "n2", Generation(2)) && !grants_renewal(&s, "n2", Generation(3)),
            "replaced"
        );
        apply(&mut s, &promote("n3", Generation(3))).unwrap();
        assert!(grants_renewal(&s, "n3", Generation(3)) && !grants_renewal(&s, "n2", Generation(3)));
        let record = Command::RecordTimeline {
            generation: Generation(3),
            node: "n3".into(),
            timeline: Timeline(2),
            switch_lsn: None,
            parent_timeline: None,
        };
        apply(&mut s, &record).unwrap();
        assert!(renews_primary(&s, "n3", Generation(3)) && !renews_primary(&s, "n2", Generation(3)));
    }

    #[test]
    fn the_lease_is_held_until_its_expiry_and_acquired_for_one_lease() {
        use LeaseView::*;
        // (granted, generation, now, acquiring_until) -> view
        let table = [
            (Some((1, 100)), 1, 99, 0, Held),
            (Some((1, 100)), 1, 100, 0, Expired),
            (Some((1, 100)), 1, 100, 500, Expired),
            (Some((1, 100)), 2, 50, 60, Acquiring),
            (Some((1, 100)), 2, 60, 60, Expired),
            (None, 1, 10, 60, Acquiring),
            (None, 1, 60, 60, Expired),
        ];
        for (granted, g, now, until, want) in table {
            assert_eq!(
                lease_view(granted.map(|(gg, e)| (Generation(gg), e)), Generation(g), now, until),
                want,
                "{granted:?} {g} {now} {until}"
            );
        }
    }

    /// Which earlier configurations carry their acknowledged writes into the new one by
    /// construction, checked against every (old, new) over three standbys by brute force:
    /// every holder set of `old` meets every set an election under `new` may read.
    #[test]
    fn carried_by_construction_matches_brute_force() {
        let names = ["n2", "n3", "n4"];
        use std::collections::BTreeSet;
        let subsets: Vec<BTreeSet<String>> = (0u32..8)
            .map(|m| {
                (0..3)
                    .filter(|b| m & (1 << b) != 0)
                    .map(|b| names[b].to_string())
                    .collect()
            })
            .collect();
        let configs: Vec<SyncConfig> = subsets
            .iter()
            .flat_map(|set| {
                (0..=set.len()).map(move |k| SyncConfig {
                    standbys: set.clone(),
                    k,
                })
            })
            .collect();
        for old in &configs {
            for new in configs.iter().filter(|c| c.k > 0) {
                let holders = subsets
                    .iter()
                    .filter(|h| h.len() == old.k && h.is_subset(&old.standbys));
                let reads: Vec<&BTreeSet<String>> = subsets
                    .iter()
                    .filter(|r| r.len() == new.standbys.len() - new.k + 1 && r.is_subset(&new.standbys))
                    .collect();
                let brute = (old.k == 0 && old.standbys.is_empty())
                    || holders.clone().all(|h| reads.iter().all(|r| !r.is_disjoint(h)));
                assert_eq!(carried_by_construction(new, old), brute, "{old:?} -> {new:?}");
            }
        }
    }

    /// After a member is tagged nosync (ANY 1 (n2, n3) to ANY 1 (n2), not carried over by
    /// construction), the primary reports the new configuration as applied only once n2
    /// has flushed past the write position at which it was first seen running it; that
    /// position is kept across ticks, and forgotten when the node is no longer primary.
    /// In a window the primary reports `ANY 0` from its second sight on, with the write
    /// position of that observation (where the window's elections take the quorum's writes
    /// to end): after the first, a walsender may still release a commit under the quorum.
    #[test]
    fn a_degraded_primary_reports_running_asynchronously_from_its_second_sight() {
        use crate::cluster::Degraded;
        let mut s = bootstrapped("n1");
        set_sync_mode(&mut s, "degradable");
        s.degraded = Some(Degraded {
            generation: Generation(1),
            ..Default::default()
        });
        assert_eq!(s.sync_config().k, 0);
        let d = decision();
        let mut seen: SyncSeen = None;
        let mut primary = pg(false);
        primary.sync_names = String::new();
        primary.write_lsn = Some(0x900);
        let r = derive(&s, &Local::Primary(primary.clone()), &d, &mut seen);
        assert_eq!(r.sync_applied, None, "the first sight");
        primary.write_lsn = Some(0xA00);
        let r = derive(&s, &Local::Primary(primary), &d, &mut seen);
        assert_eq!((r.sync_applied, r.lsn), (Some(s.sync_config()), Some(0xA00)));
    }

    #[test]
    fn a_primary_returning_from_a_degraded_window_reports_its_quorum_only_once_flushed() {
        use crate::cluster::Degraded;
        let mut s = bootstrapped("n1");
        set_sync_mode(&mut s, "degradable");
        // Returning, with an earlier configuration that is carried by construction (an
        // emptied set, as after its standbys were removed): the window's writes still count.
        s.degraded = Some(Degraded {
            generation: Generation(1),
            restoring: true,
            ..Default::default()
        });
        s.sync_unconfirmed = vec![SyncConfig::default()];
        let d = decision();
        let mut seen: SyncSeen = None;
        let mut primary = pg(false);
        primary.sync_names = "ANY 1 (\"n2\", \"n3\")".into();
        primary.write_lsn = Some(0x900);
        primary.replication[0].flush_lsn = Some(0x880);
        assert_eq!(
            derive(&s, &Local::Primary(primary.clone()), &d, &mut seen).sync_applied,
            None
        );
        assert_eq!(
            derive(&s, &Local::Primary(primary.clone()), &d, &mut seen).sync_applied,
            None
        );
        primary.replication[0].flush_lsn = Some(0x900);
        assert_eq!(
            derive(&s, &Local::Primary(primary), &d, &mut seen).sync_applied,
            Some(s.sync_config())
        );
    }

    #[test]
    fn a_primary_reports_a_new_configuration_once_the_old_ones_writes_are_on_it() {
        use crate::cluster::{Command, Flag, TagChange};
        let mut s = bootstrapped("n1");
        for cmd in [
            Command::ChangeTags {
                name: "n3".into(),
                changes: vec![TagChange::Flag(Flag::NoSync, true)],
            },
            Command::SetSyncStandbys {
                generation: Generation(1),
                standbys: vec!["n2".into()],
            },
        ] {
            apply(&mut s, &cmd).unwrap();
        }
        assert_eq!(s.sync_unconfirmed.len(), 1);
        let d = decision();
        let mut seen: SyncSeen = None;
        let mut primary = pg(false);
        primary.sync_names = "ANY 1 (\"n2\")".into();
        primary.write_lsn = Some(0x900);
        primary.replication[0].flush_lsn = Some(0x880);
        let r = derive(&s, &Local::Primary(primary.clone()), &d, &mut seen);
        assert_eq!(r.sync_applied, None, "the first sight takes no position");
        assert_eq!(seen, Some((Generation(1), s.sync_config(), None)));
        let r = derive(&s, &Local::Primary(primary.clone()), &d, &mut seen);
        assert_eq!(r.sync_applied, None, "n2 has not flushed 0/900");
        assert_eq!(seen, Some((Generation(1), s.sync_config(), Some(0x900))));
        // Later writes move the primary on; n2 passing the first sight's position is enough.
        primary.write_lsn = Some(0x2000);
        primary.replication[0].flush_lsn = Some(0x900);
        let r = derive(&s, &Local::Primary(primary.clone()), &d, &mut seen);
        assert_eq!(r.sync_applied, Some(s.sync_config()));
        // Another member's flush does not count.
        let mut other = primary.clone();
        other.replication[0].application_name = "n3".into();
        assert_eq!(derive(&s, &Local::Primary(other), &d, &mut seen).sync_applied, None);
        // Not primary: forgotten, and a new sight starts from the then write position.
        derive(&s, &Local::Standby(pg(true)), &d, &mut seen);
        assert_eq!(seen, None);
        assert_eq!(
            derive(&s, &Local::Primary(primary.clone()), &d, &mut seen).sync_applied,
            None
        );
        assert_eq!(seen, Some((Generation(1), s.sync_config(), None)));
        assert_eq!(derive(&s, &Local::Primary(primary), &d, &mut seen).sync_applied, None);
        assert_eq!(seen, Some((Generation(1), s.sync_config(), Some(0x2000))));
        // Carried over by construction: at once.
        let mut grown = bootstrapped("n1");
        apply(
            &mut grown,
            &Command::SetSyncStandbys {
                generation: Generation(1),
                standbys: vec!["n2".into()],
            },
        )
        .unwrap();
        // ANY 1 (n2) to ANY 1 (n2, n3): n2 holds every write the old one acknowledged.
        grown.sync_unconfirmed = vec![SyncConfig {
            standbys: ["n2".to_string()].into(),
            k: 1,
        }];
        apply(
            &mut grown,
            &Command::SetSyncStandbys {
                generation: Generation(1),
                standbys: vec!["n2".into(), "n3".into()],
            },
        )
        .unwrap();
        let mut p = pg(false);
        p.sync_names = "ANY 1 (\"n2\", \"n3\")".into();
        p.replication.clear();
        assert_eq!(
            derive(&grown, &Local::Primary(p), &d, &mut None).sync_applied,
            Some(grown.sync_config())
        );
    }
}
