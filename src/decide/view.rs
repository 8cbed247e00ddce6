//! What each member looks like right now: the replicated state joined with the agents'
//! last reports (volatile, kept by the Raft leader and passed on with every report reply).
//! Pure: ages and the lease come in as numbers. `ctl list`, `/cluster` and `/metrics` all
//! read these rows, so they never disagree.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::cluster::{ClusterState, Flag};
use crate::decide::agent::{wanted, Wanted};
pub use crate::protocol::ClusterView;
use crate::protocol::{PgRole, Report};
use crate::types::Timeline;

/// Raft membership as the answering node knows it.
#[derive(Clone, Debug, Default)]
pub struct RaftView {
    pub voters: BTreeSet<u64>,
    pub learners: BTreeSet<u64>,
    pub leader: Option<u64>,
}

/// One line of `ctl list` / one member of `/cluster`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemberRow {
    pub name: String,
    /// PostgreSQL address, host:port.
    pub host: String,
    pub api_url: String,
    /// primary, quorum_standby, replica, candidate, fenced, learner.
    pub role: String,
    /// running, streaming, in recovery, stopped, no data, unknown.
    pub state: String,
    pub timeline: Option<Timeline>,
    pub lsn: Option<u64>,
    /// Bytes behind the primary's last reported write position; `None` when unknown.
    pub lag_bytes: Option<u64>,
    /// Primary only: milliseconds of lease left as the Raft leader counts it.
    pub lease_remaining_ms: Option<u64>,
    /// The member's last decision, in words.
    pub reason: String,
    pub report_age_ms: Option<u64>,
    pub pending_restart: bool,
    /// voter, learner, or "" when not in the Raft membership.
    pub raft: String,
    pub raft_leader: bool,
    pub nofailover: bool,
    pub failover_priority: i32,
    pub nosync: bool,
    pub noloadbalance: bool,
    /// Added as a replica: outside the quorum, never promoted automatically.
    pub replica: bool,
    /// `replicatefrom`: the standby it streams from (cascading), or "".
    pub replicatefrom: String,
}

/// Reports older than this describe a member that is not reporting: its state is unknown.
pub fn stale_after_ms(lease_ms: u64) -> u64 {
    (2 * lease_ms).max(2_000)
}

pub fn rows(state: &ClusterState, view: &ClusterView, raft: &RaftView) -> Vec<MemberRow> {
    let stale = stale_after_ms(state.ha.lease_ms);
    let fresh = |name: &str| {
        view.reports
            .get(name)
            .filter(|(age, r)| *age <= stale && r.generation == state.generation)
    };
    let primary = state.primary_name().and_then(fresh).map(|(_, r)| r);
    state
        .members
        .values()
        .map(|m| {
            let report = view.reports.get(&m.name);
            let current = fresh(&m.name).map(|(_, r)| r);
            let role = match wanted(state, &m.name) {
                Wanted::Primary => "primary",
                Wanted::Candidate => "candidate",
                Wanted::OldPrimary => "fenced",
                _ if state.has_flag(&m.name, Flag::Replica) => "replica",
                _ if !raft.voters.contains(&m.id) && raft.learners.contains(&m.id) => "learner",
                _ if state.sync_standbys.contains(&m.name) => "quorum_standby",
                _ => "replica",
            };
            let pg_state = match current.or(report.filter(|(a, _)| *a <= stale).map(|(_, r)| r)) {
                None => "unknown".to_string(),
                Some(r) => match r.pg {
                    // A member that clones says how far it got (`cloning 45%`).
                    PgRole::NoData => {
                        crate::decide::report::cloning_state(&r.reason).unwrap_or_else(|| "no data".into())
                    }
                    PgRole::Primary => "running".into(),
                    PgRole::Standby if r.streaming => "streaming".into(),
                    PgRole::Standby => "in recovery".into(),
                    PgRole::Stopped => "stopped".into(),
                    PgRole::Unknown => "unknown".into(),
                },
            };
            let lag_bytes = match (primary, current) {
                (_, Some(_)) if state.primary_name() == Some(m.name.as_str()) => Some(0),
                // The primary's own view of the standby when it has one: both positions
                // from one observation. Reports from two nodes can be up to a
                // renewal interval apart, which under load (or across a WAL segment
                // switch) shows lag that is not there.
                (Some(p), Some(r)) if r.pg == PgRole::Standby && p.timeline == r.timeline => {
                    match (p.lsn, p.standby_flush.get(&m.name).copied().or(r.lsn)) {
                        (Some(pl), Some(rl)) => Some(pl.saturating_sub(rl)),
                        _ => None,
                    }
                }
                _ => None,
            };
            MemberRow {
                name: m.name.clone(),
                host: m.pg_addr.clone(),
                api_url: format!("http://{}/", m.http_addr),
                role: role.to_string(),
                state: pg_state,
                timeline: current.and_then(|r| r.timeline),
                lsn: current.and_then(|r| r.lsn),
                lag_bytes,
                lease_remaining_ms: (role == "primary").then_some(view.lease_remaining_ms).flatten(),
                reason: report.map(|(_, r)| r.reason.clone()).unwrap_or_default(),
                report_age_ms: report.map(|(a, _)| *a),
                pending_restart: current.is_some_and(|r| r.pending_restart),
                raft: if raft.voters.contains(&m.id) {
                    "voter"
                } else if raft.learners.contains(&m.id) {
                    "learner"
                } else {
                    ""
                }
                .to_string(),
                raft_leader: raft.leader == Some(m.id),
                nofailover: m.tags.nofailover,
                failover_priority: m.tags.failover_priority,
                nosync: state.has_flag(&m.name, Flag::NoSync),
                noloadbalance: state.has_flag(&m.name, Flag::NoLoadBalance),
                replica: state.has_flag(&m.name, Flag::Replica),
                replicatefrom: state.replicates_from(&m.name).unwrap_or_default().to_string(),
            }
        })
        .collect()
}

/// The HTTP health checks, with Patroni's paths and meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// `/`, `/primary`, `/master`, `/leader`, `/read-write`: the lease-holding primary.
    Primary,
    /// `/replica`: a streaming standby (within `?lag=`).
    Replica,
    /// `/read-only`: the primary or a streaming standby.
    ReadOnly,
    /// `/sync`, `/synchronous`, `/quorum`: a streaming standby in the synchronous set.
    Sync,
    /// `/async`, `/asynchronous`: a streaming standby outside it.
    Async,
    /// `/health`: PostgreSQL is running.
    Health,
    /// `/liveness`: raftpg's own loop is alive.
    Liveness,
    /// `/readiness`: the primary, or a standby that streams.
    Readiness,
}

impl Check {
    pub fn from_path(path: &str) -> Option<Check> {
        Some(match path.trim_end_matches('/') {
            "" | "/primary" | "/master" | "/leader" | "/read-write" => Check::Primary,
            "/replica" => Check::Replica,
            "/read-only" => Check::ReadOnly,
            "/sync" | "/synchronous" | "/quorum" => Check::Sync,
            "/async" | "/asynchronous" => Check::Async,
            "/health" => Check::Health,
            "/liveness" => Check::Liveness,
            "/readiness" => Check::Readiness,
            _ => return None,
        })
    }
}

/// What one node knows about itself when a health check comes in.
#[derive(Clone, Debug)]
pub struct HealthInput<'a> {
    pub me: &'a str,
    pub state: &'a ClusterState,
    /// Its agent's last report and that report's age; `None` without an agent.
    pub own: Option<(u64, &'a Report)>,
    /// A crash-restarted primary that still refuses clients.
    pub gated: bool,
    /// This node's lease as primary of the current generation, in milliseconds left.
    pub lease_remaining_ms: Option<u64>,
    /// This standby's lag behind the primary, if known.
    pub lag_bytes: Option<u64>,
    /// `?lag=` on the request.
    pub max_lag: Option<u64>,
}

/// An agent report older than this says nothing about PostgreSQL now.
pub const OWN_REPORT_MAX_AGE_MS: u64 = 2_000;

/// Whether the check passes (200) or not (503).
pub fn health(check: Check, i: &HealthInput) -> bool {
    let own = i
        .own
        .filter(|(age, r)| *age <= OWN_REPORT_MAX_AGE_MS && r.generation == i.state.generation)
        .map(|(_, r)| r);
    let running = own.is_some_and(|r| matches!(r.pg, PgRole::Primary | PgRole::Standby));
    let primary = own.is_some_and(|r| r.pg == PgRole::Primary)
        && wanted(i.state, i.me) == Wanted::Primary
        && !i.gated
        && i.lease_remaining_ms.is_some_and(|l| l > 0);
    let within_lag = match i.max_lag {
        None => true,
        Some(max) => i.lag_bytes.is_some_and(|l| l <= max),
    };
    // `noloadbalance` keeps a standby out of every replica check, as in Patroni; the
    // primary still answers `/read-only`.
    let streaming = own.is_some_and(|r| r.pg == PgRole::Standby && r.streaming);
    let replica = streaming && within_lag && !i.state.has_flag(i.me, Flag::NoLoadBalance);
    let sync = i.state.sync_standbys.contains(i.me);
    match check {
        Check::Primary => primary,
        Check::Replica => replica,
        Check::ReadOnly => primary || replica,
        Check::Sync => replica && sync,
        Check::Async => replica && !sync,
        Check::Health => running,
        Check::Liveness => i.own.is_none_or(|(age, _)| age <= 10_000),
        Check::Readiness => primary || (streaming && within_lag),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_new_leaders_partial_view_keeps_recent_reports_of_the_others() {
        let report = |lsn| report(Generation(1), PgRole::Standby, true, lsn);
        let older = ClusterView {
            reports: [
                ("n1".to_string(), (100, report(1))),
                ("n2".to_string(), (6_000, report(2))),
            ]
            .into(),
            lease_remaining_ms: None,
        };
        let new = ClusterView {
            reports: [("n3".to_string(), (0, report(3)))].into(),
            lease_remaining_ms: Some(1_000),
        };
        let v = new.filled_from(older, 5_000);
        let names: Vec<&str> = v.reports.keys().map(String::as_str).collect();
        assert_eq!(names, ["n1", "n3"], "n2's report is too old to keep");
        assert_eq!(v.reports["n1"].0, 100);
        assert_eq!(v.lease_remaining_ms, Some(1_000));
    }

    use super::*;
    use crate::cluster::testing::bootstrapped;
    use crate::types::Generation;
    use std::collections::BTreeMap;

    fn report(generation: Generation, pg: PgRole, streaming: bool, lsn: u64) -> Report {
        Report {
            generation,
            pg,
            streaming,
            timeline: Some(Timeline(1)),
            lsn: Some(lsn),
            standby_flush: BTreeMap::new(),
            final_position: None,
            reason: format!("{pg:?}"),
            sync_applied: None,
            pending_restart: false,
        }
    }

    #[test]
    fn rows_join_the_state_with_fresh_reports() {
        let mut s = bootstrapped("n1");
        s.sync_standbys.remove("n3");
        let view = ClusterView {
            reports: BTreeMap::from([
                ("n1".into(), (100, report(Generation(1), PgRole::Primary, false, 5000))),
                ("n2".into(), (100, report(Generation(1), PgRole::Standby, true, 4000))),
                ("n3".into(), (60_000, report(Generation(1), PgRole::Standby, true, 10))),
            ]),
            lease_remaining_ms: Some(1500),
        };
        let raft = RaftView {
            voters: [1, 2, 3].into(),
            learners: BTreeSet::new(),
            leader: Some(2),
        };
        let r = rows(&s, &view, &raft);
        assert_eq!(
            r.iter()
                .map(|m| (m.role.as_str(), m.state.as_str(), m.lag_bytes))
                .collect::<Vec<_>>(),
            [
                ("primary", "running", Some(0)),
                ("quorum_standby", "streaming", Some(1000)),
                ("replica", "unknown", None),
            ]
        );
        assert_eq!(r[0].lease_remaining_ms, Some(1500));
        assert_eq!(r[1].lease_remaining_ms, None);
        assert!(r[1].raft_leader && r[1].raft == "voter");
        assert_eq!(r[2].reason, "Standby", "a stale report still says what it last did");
    }

    #[test]
    fn lag_comes_from_the_primarys_own_observation_when_it_lists_the_standby() {
        let s = bootstrapped("n1");
        // n2's own report was taken before the primary switched WAL segments.
        let mut primary = report(Generation(1), PgRole::Primary, false, 0x500_0000);
        primary.standby_flush = BTreeMap::from([("n2".to_string(), 0x4FF_FF00)]);
        let view = ClusterView {
            reports: BTreeMap::from([
                ("n1".into(), (100, primary)),
                (
                    "n2".into(),
                    (100, report(Generation(1), PgRole::Standby, true, 0x400_0000)),
                ),
                (
                    "n3".into(),
                    (100, report(Generation(1), PgRole::Standby, true, 0x4F0_0000)),
                ),
            ]),
            lease_remaining_ms: None,
        };
        let raft = RaftView {
            voters: [1, 2, 3].into(),
            learners: BTreeSet::new(),
            leader: Some(1),
        };
        let lags: Vec<_> = rows(&s, &view, &raft).iter().map(|m| m.lag_bytes).collect();
        // n2 from the primary's pg_stat_replication; n3, not listed, from its own report.
        assert_eq!(lags, [Some(0), Some(0x100), Some(0x10_0000)]);
    }

    #[test]
    fn health_checks_follow_patroni() {
        let s = bootstrapped("n1");
        let primary = report(Generation(1), PgRole::Primary, false, 100);
        let standby = report(Generation(1), PgRole::Standby, true, 90);
        let base = |me, own| HealthInput {
            me,
            state: &s,
            own: Some((100, own)),
            gated: false,
            lease_remaining_ms: Some(1500),
            lag_bytes: Some(10),
            max_lag: None,
        };
        let all = [
            Check::Primary,
            Check::Replica,
            Check::ReadOnly,
            Check::Sync,
            Check::Async,
            Check::Health,
            Check::Liveness,
            Check::Readiness,
        ];
        let passing = |i: &HealthInput| all.iter().filter(|c| health(**c, i)).copied().collect::<Vec<_>>();
        let p = base("n1", &primary);
        assert_eq!(
            passing(&p),
            [
                Check::Primary,
                Check::ReadOnly,
                Check::Health,
                Check::Liveness,
                Check::Readiness
            ]
        );
        let no_lease = HealthInput {
            lease_remaining_ms: Some(0),
            ..base("n1", &primary)
        };
        assert!(!health(Check::Primary, &no_lease), "no lease, no writes");
        let gated = HealthInput {
            gated: true,
            ..base("n1", &primary)
        };
        assert!(!health(Check::Primary, &gated));
        assert!(
            !health(Check::Primary, &base("n2", &primary)),
            "a stray primary is not the primary"
        );
        let r = base("n2", &standby);
        assert_eq!(
            passing(&r),
            [
                Check::Replica,
                Check::ReadOnly,
                Check::Sync,
                Check::Health,
                Check::Liveness,
                Check::Readiness
            ]
        );
        let lagging = HealthInput {
            max_lag: Some(5),
            ..base("n2", &standby)
        };
        assert!(!health(Check::Replica, &lagging));
        let stale = HealthInput {
            own: Some((OWN_REPORT_MAX_AGE_MS + 1, &standby)),
            ..base("n2", &standby)
        };
        assert!(!health(Check::Replica, &stale) && !health(Check::Health, &stale));

        // noloadbalance: out of every replica check, still healthy and ready; a primary
        // tagged so still answers /read-only (as in Patroni).
        let mut tagged = s.clone();
        for n in ["n1", "n2"] {
            crate::cluster::apply(
                &mut tagged,
                &crate::cluster::Command::ChangeTags {
                    name: n.into(),
                    changes: vec![crate::cluster::TagChange::Flag(Flag::NoLoadBalance, true)],
                },
            )
            .unwrap();
        }
        let r = HealthInput {
            state: &tagged,
            ..base("n2", &standby)
        };
        assert_eq!(passing(&r), [Check::Health, Check::Liveness, Check::Readiness]);
        let p = HealthInput {
            state: &tagged,
            ..base("n1", &primary)
        };
        assert_eq!(
            passing(&p),
            [
                Check::Primary,
                Check::ReadOnly,
                Check::Health,
                Check::Liveness,
                Check::Readiness
            ]
        );
        assert_eq!(Check::from_path("/"), Some(Check::Primary));
        assert_eq!(Check::from_path("/read-only"), Some(Check::ReadOnly));
        assert_eq!(Check::from_path("/nope"), None);
    }
}
