//! Whether an operator's request (switchover, failover, reinit, remove) may go ahead now,
//! judged from the replicated state and the members' last reports. Pure: the control API
//! turns a refusal into a gRPC status whose message says what to do.

use crate::cluster::ClusterState;
use crate::decide::view::MemberRow;

/// Why a request is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    UnknownMember(String),
    Precondition(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::UnknownMember(m) => write!(f, "{m}"),
            Refusal::Precondition(m) => write!(f, "{m}"),
        }
    }
}

fn member<'a>(state: &ClusterState, rows: &'a [MemberRow], name: &str) -> Result<&'a MemberRow, Refusal> {
    let known: Vec<&str> = state.members.keys().map(String::as_str).collect();
    rows.iter()
        .find(|r| r.name == name)
        .ok_or_else(|| Refusal::UnknownMember(format!("unknown member '{name}' (members: {})", known.join(", "))))
}

fn not_paused(state: &ClusterState) -> Result<(), Refusal> {
    if state.paused {
        return Err(Refusal::Precondition(
            "the cluster is paused, so the primary does not change: run `raftpg ctl resume` first".into(),
        ));
    }
    Ok(())
}

fn not_paused_or_pending(state: &ClusterState) -> Result<(), Refusal> {
    not_paused(state)?;
    if state.pending.is_some() {
        return Err(Refusal::Precondition(
            "a failover or switchover is already in progress: wait for it (`raftpg ctl list`)".into(),
        ));
    }
    Ok(())
}

/// A healthy streaming standby within the lag bound, or why not.
fn healthy_standby(state: &ClusterState, row: &MemberRow) -> Result<(), String> {
    if row.role == "learner" {
        return Err(format!("{} is still a Raft learner (being added)", row.name));
    }
    if row.state != "streaming" {
        return Err(format!(
            "{} is not a streaming standby (state: {}; last decision: {})",
            row.name,
            row.state,
            if row.reason.is_empty() { "none" } else { &row.reason }
        ));
    }
    match row.lag_bytes {
        None => Err(format!("{}'s replication lag is unknown", row.name)),
        Some(lag) if lag > state.ha.maximum_lag_on_failover_bytes => Err(format!(
            "{} is {lag} bytes behind the primary (maximum_lag_on_failover is {})",
            row.name, state.ha.maximum_lag_on_failover_bytes
        )),
        Some(_) => Ok(()),
    }
}

pub fn switchover(state: &ClusterState, rows: &[MemberRow], to: &str, from: Option<&str>) -> Result<(), Refusal> {
    let target = member(state, rows, to)?;
    if let Some(f) = from {
        member(state, rows, f)?;
    }
    not_paused_or_pending(state)?;
    let Some(primary) = state.primary_name() else {
        return Err(Refusal::Precondition(
            "there is no primary to switch over from: use `raftpg ctl failover --to NAME`".into(),
        ));
    };
    if from.is_some_and(|f| f != primary) {
        return Err(Refusal::Precondition(format!(
            "{} is not the primary ({primary} is)",
            from.unwrap_or_default()
        )));
    }
    if to == primary {
        return Err(Refusal::Precondition(format!("{to} is already the primary")));
    }
    if target.nofailover {
        return Err(Refusal::Precondition(format!(
            "{to} is tagged nofailover and is never promoted"
        )));
    }
    if target.replica {
        return Err(Refusal::Precondition(format!(
            "{to} is a replica outside the quorum: a switchover never promotes it (`failover --to {to} --force` does, and may lose acknowledged writes)"
        )));
    }
    healthy_standby(state, target).map_err(|why| Refusal::Precondition(format!("cannot switch over to {to}: {why}")))
}

/// `Ok(warning)`: the failover may go ahead; `warning` is what a forced one may lose.
pub fn failover(state: &ClusterState, rows: &[MemberRow], to: &str, force: bool) -> Result<Option<String>, Refusal> {
    let target = member(state, rows, to)?;
    not_paused(state)?;
    let candidate = state.pending.as_ref().and_then(|p| p.candidate.as_deref());
    if let Some(c) = candidate.filter(|_| !force && !crate::cluster::candidate_acknowledged_nothing(state)) {
        return Err(Refusal::Precondition(format!(
            "{c} was told to promote and has not recorded its timeline; in asynchronous mode it may have \
             accepted writes alone: wait for it (`raftpg ctl list`), or, once its PostgreSQL is surely down, \
             add --force"
        )));
    }
    if state.primary_name() == Some(to) && state.pending.is_none() {
        return Err(Refusal::Precondition(format!("{to} is already the primary")));
    }
    let window = state.degraded.as_ref().map(|d| {
        let primary = state
            .primary_name()
            .or_else(|| state.pending.as_ref().and_then(|p| p.from.as_deref()))
            .unwrap_or("the primary");
        (
            d,
            format!(
                "{primary} runs degraded (asynchronous) since {}",
                crate::decide::election::utc(d.since_unix_ms)
            ),
        )
    });
    if force {
        let why = if target.replica {
            format!(
                " (a replica streams asynchronously: it lags the primary by {})",
                lag_words(target.lag_bytes)
            )
        } else if let Some((_, w)) = &window {
            format!(" ({w}: writes acknowledged since then may be on it alone)")
        } else {
            String::new()
        };
        return Ok(Some(format!(
            "forced failover to {to}: acknowledged writes that {to} has not received are LOST{why}"
        )));
    }
    if target.replica {
        return Err(Refusal::Precondition(format!(
            "{to} is a replica outside the quorum and may lack acknowledged writes; add --force to accept losing them"
        )));
    }
    if target.nofailover {
        return Err(Refusal::Precondition(format!(
            "{to} is tagged nofailover; add --force to promote it anyway"
        )));
    }
    if let Some((_, w)) = window.filter(|(d, _)| !d.streaming.contains(to)) {
        return Err(Refusal::Precondition(format!(
            "{w}, and {to} has not streamed throughout: it lacks writes acknowledged then; add --force to accept losing them"
        )));
    }
    if state.primary.is_some() && state.pending.is_none() {
        if !state.sync_standbys.contains(to) {
            return Err(Refusal::Precondition(format!(
                "{to} is not in the synchronous set, so it may lack acknowledged writes; add --force to accept losing them"
            )));
        }
        healthy_standby(state, target).map_err(|why| {
            Refusal::Precondition(format!(
                "{why}: promoting it may lose acknowledged writes; add --force to accept that"
            ))
        })?;
    }
    Ok(None)
}

pub fn reinit(state: &ClusterState, rows: &[MemberRow], name: &str) -> Result<(), Refusal> {
    member(state, rows, name)?;
    if state.primary_name() == Some(name) {
        return Err(Refusal::Precondition(format!(
            "{name} is the primary; switch over first (`raftpg ctl switchover --to OTHER`)"
        )));
    }
    Ok(())
}

pub fn remove(state: &ClusterState, rows: &[MemberRow], name: &str) -> Result<(), Refusal> {
    member(state, rows, name)?;
    if state.primary_name() == Some(name) {
        return Err(Refusal::Precondition(format!(
            "{name} is the primary; switch over first (`raftpg ctl switchover --to OTHER`)"
        )));
    }
    if state.pending.is_some() {
        return Err(Refusal::Precondition(
            "a failover or switchover is in progress: wait for it (`raftpg ctl list`)".into(),
        ));
    }
    Ok(())
}

/// A replica's lag as the reply of a forced failover says it.
fn lag_words(lag: Option<u64>) -> String {
    match lag {
        Some(b) => format!("{b} bytes at its last report"),
        None => "an unknown amount".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::testing::bootstrapped;
    use crate::types::Timeline;

    fn row(name: &str, role: &str, state: &str, lag: Option<u64>) -> MemberRow {
        MemberRow {
            name: name.into(),
            host: String::new(),
            api_url: String::new(),
            role: role.into(),
            state: state.into(),
            timeline: Some(Timeline(1)),
            lsn: None,
            lag_bytes: lag,
            lease_remaining_ms: None,
            reason: "r".into(),
            report_age_ms: Some(10),
            pending_restart: false,
            raft: "voter".into(),
            raft_leader: false,
            nofailover: false,
            failover_priority: 0,
            nosync: false,
            noloadbalance: false,
            replica: false,
            replicatefrom: String::new(),
        }
    }

    fn booted() -> ClusterState {
        bootstrapped("n1")
    }

    fn rows() -> Vec<MemberRow> {
        vec![
            row("n1", "primary", "running", Some(0)),
            row("n2", "quorum_standby", "streaming", Some(100)),
            row("n3", "quorum_standby", "stopped", None),
        ]
    }

    #[test]
    fn switchover_needs_a_healthy_streaming_target() {
        let mut s = booted();
        assert_eq!(switchover(&s, &rows(), "n2", Some("n1")), Ok(()));
        assert!(
            matches!(switchover(&s, &rows(), "zz", None), Err(Refusal::UnknownMember(m)) if m.contains("n1, n2, n3"))
        );
        assert!(
            matches!(switchover(&s, &rows(), "n3", None), Err(Refusal::Precondition(m)) if m.contains("not a streaming standby (state: stopped"))
        );
        assert!(
            matches!(switchover(&s, &rows(), "n2", Some("n3")), Err(Refusal::Precondition(m)) if m.contains("n1 is"))
        );
        assert!(matches!(switchover(&s, &rows(), "n1", None), Err(Refusal::Precondition(m)) if m.contains("already")));
        let mut lagging = rows();
        lagging[1].lag_bytes = Some(s.ha.maximum_lag_on_failover_bytes + 1);
        assert!(
            matches!(switchover(&s, &lagging, "n2", None), Err(Refusal::Precondition(m)) if m.contains("bytes behind"))
        );
        s.paused = true;
        assert!(matches!(switchover(&s, &rows(), "n2", None), Err(Refusal::Precondition(m)) if m.contains("paused")));
    }

    #[test]
    fn failover_to_a_lagging_or_stopped_member_needs_force() {
        let s = booted();
        assert_eq!(failover(&s, &rows(), "n2", false), Ok(None));
        assert!(matches!(failover(&s, &rows(), "n3", false), Err(Refusal::Precondition(m)) if m.contains("--force")));
        assert!(matches!(failover(&s, &rows(), "n3", true), Ok(Some(w)) if w.contains("LOST")));
        assert!(matches!(
            failover(&s, &rows(), "n1", true),
            Err(Refusal::Precondition(_))
        ));
    }

    /// A candidate that never finishes its promotion can be replaced by an operator: at
    /// once in quorum mode (it acknowledged nothing), only with --force in async mode.
    #[test]
    fn a_failover_may_replace_a_stuck_candidate() {
        for (mode, plain_ok) in [("quorum", true), ("off", false)] {
            let s = crate::cluster::testing::promoting_n2(mode);
            let plain = failover(&s, &rows(), "n3", false);
            assert_eq!(plain.is_ok(), plain_ok, "{mode}: {plain:?}");
            if !plain_ok {
                assert!(matches!(plain, Err(Refusal::Precondition(m)) if m.contains("--force")));
            }
            assert!(failover(&s, &rows(), "n3", true).is_ok(), "{mode}");
        }
    }

    #[test]
    fn the_primary_is_neither_reinitialised_nor_removed() {
        let s = booted();
        assert!(reinit(&s, &rows(), "n1").is_err());
        assert!(remove(&s, &rows(), "n1").is_err());
        assert_eq!(reinit(&s, &rows(), "n3"), Ok(()));
        assert_eq!(remove(&s, &rows(), "n3"), Ok(()));
        assert!(matches!(remove(&s, &rows(), "n9"), Err(Refusal::UnknownMember(_))));
    }
}
