//! `ctl failover --dry-run` and `ctl switchover --dry-run`: the real decisions, run on a
//! copy of the live state and reports, with the reports the change would bring simulated.
//! Nothing here commits anything: the plan is what the controller would do if the change
//! began now and the members reported what they hold now.

use std::collections::{BTreeMap, BTreeSet};

use crate::cluster::{apply, ClusterState, Command, SyncMode};
use crate::decide::controller::{decide, ControllerAction, ControllerInput, PgRole, Report};
use crate::decide::election::lsn;
use crate::types::Generation;

/// The change to plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change<'a> {
    Failover { to: &'a str, force: bool },
    Switchover { to: &'a str },
}

/// What the change would do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The member the controller would promote, if it gets that far.
    pub candidate: Option<String>,
    /// The members whose reports the decision rests on.
    pub waits_for: Vec<String>,
    /// The worst case, in words.
    pub loss: String,
    /// Each step of the controller, as it would log it.
    pub steps: Vec<String>,
}

impl Plan {
    pub fn render(&self, change: Change) -> String {
        let (kind, to) = match change {
            Change::Failover { to, force: true } => ("forced failover", to),
            Change::Failover { to, .. } => ("failover", to),
            Change::Switchover { to } => ("switchover", to),
        };
        let mut out = format!("dry run of a {kind} to {to}: nothing was changed\n");
        out += &format!(
            "would promote: {}\n",
            self.candidate.as_deref().unwrap_or("nobody yet (see the last step)")
        );
        out += &format!("waits for reports from: {}\n", self.waits_for.join(", "));
        out += &format!("worst-case loss: {}\n", self.loss);
        out += "steps:\n";
        for s in &self.steps {
            out += &format!("  - {s}\n");
        }
        out
    }
}

/// Runs the controller on `state` as if `change` began now. `reports` are the members'
/// current reports; each member is assumed to report, as its final position, what it has
/// received now (the old primary of a failover is assumed gone and reports nothing).
pub fn plan(
    state: &ClusterState,
    reports: &BTreeMap<String, Report>,
    voters: &BTreeSet<String>,
    leader: &str,
    change: Change,
) -> Result<Plan, String> {
    let Some(primary) = state.primary.clone() else {
        return Err("there is no primary: nothing to plan".into());
    };
    let mut s = state.clone();
    let begin = match change {
        Change::Failover { to, force } => Command::BeginFailover {
            generation: s.generation,
            to: Some(to.to_string()),
            forced: force,
            reason: "dry run".into(),
        },
        Change::Switchover { to } => Command::BeginSwitchover {
            generation: s.generation,
            to: to.to_string(),
            reason: "dry run".into(),
        },
    };
    apply(&mut s, &begin).map_err(|r| r.to_string())?;
    let g = s.generation;
    let mut steps = vec![format!(
        "fence generation {} (primary {}); the change runs under generation {g}",
        Generation(g.0 - 1),
        primary.node
    )];
    let mut simulated: BTreeMap<String, Report> = BTreeMap::new();
    let mut waits_for = Vec::new();
    let old_lsn = reports.get(&primary.node).and_then(|r| r.lsn);
    for (name, r) in reports {
        let (Some(at), Some(tl)) = (r.lsn, r.timeline) else {
            continue;
        };
        if *name == primary.node {
            if let (Change::Switchover { .. }, Some(stop)) = (change, old_lsn) {
                let stopped = Command::SwitchoverStopped {
                    generation: g,
                    node: name.clone(),
                    lsn: stop,
                };
                apply(&mut s, &stopped).map_err(|r| r.to_string())?;
                steps.push(format!(
                    "{name} checkpoints and stops cleanly, its WAL ending near {}",
                    lsn(stop)
                ));
                waits_for.push(name.clone());
            }
            continue;
        }
        let mut fin = r.clone();
        fin.generation = g;
        match change {
            Change::Failover { .. } => {
                fin.pg = PgRole::Standby;
                fin.streaming = false;
                fin.final_position = Some((at, tl));
            }
            // Streaming members keep streaming from the old primary until it stops,
            // and receive its last WAL, past its shutdown checkpoint.
            Change::Switchover { .. } if r.streaming => {
                fin.lsn = old_lsn.map_or(Some(at), |o| Some((o + 1).max(at)));
            }
            Change::Switchover { .. } => {}
        }
        waits_for.push(name.clone());
        simulated.insert(name.clone(), fin);
    }
    let mut candidate = None;
    for _ in 0..8 {
        // A step may begin the change again under a newer generation: the members would
        // report again under it.
        for r in simulated.values_mut() {
            r.generation = s.generation;
        }
        let d = decide(&ControllerInput {
            me: leader,
            state: &s,
            reports: &simulated,
            lease_expired_ms: None,
            voters,
            pending_ms: 0,
            now_unix_ms: 0,
            below_quorum_ms: 0,
        });
        steps.push(d.reason.clone());
        match d.action {
            Some(ControllerAction::Propose(cmd)) => {
                let promoted = match &cmd {
                    Command::Promote { node, .. } => Some(node.clone()),
                    _ => None,
                };
                apply(&mut s, &cmd).map_err(|r| r.to_string())?;
                if let Some(n) = promoted {
                    candidate = Some(n);
                    break;
                }
            }
            _ => break,
        }
    }
    let loss = loss(state, reports, &primary.node, candidate.as_deref(), change);
    Ok(Plan {
        candidate,
        waits_for,
        loss,
        steps,
    })
}

fn loss(
    state: &ClusterState,
    reports: &BTreeMap<String, Report>,
    old: &str,
    candidate: Option<&str>,
    change: Change,
) -> String {
    let Some(c) = candidate else {
        return "none while nobody is promoted (the change waits)".into();
    };
    let at = |n: &str| reports.get(n).and_then(|r| r.lsn);
    let newest = reports.values().filter_map(|r| r.lsn).max();
    let behind = match (newest, at(c)) {
        (Some(n), Some(a)) => n.saturating_sub(a),
        _ => 0,
    };
    match change {
        Change::Switchover { .. } => {
            format!("none: {old} stops cleanly and {c} is promoted only once it holds all of {old}'s WAL")
        }
        Change::Failover { force: true, .. } if state.has_flag(c, crate::cluster::Flag::Replica) => format!(
            "every acknowledged write {c} has not received ({behind} bytes behind now): a replica streams \
             asynchronously, outside the quorum"
        ),
        Change::Failover { force: true, .. } if behind > 0 => format!(
            "up to {behind} bytes of WAL, acknowledged writes included: {c} is that far behind the most advanced member"
        ),
        Change::Failover { .. } if state.degraded.is_some() => format!(
            "every write {old} acknowledged since it degraded to asynchronous replication ({}) that {c} has not \
             received: up to {behind} bytes now",
            crate::decide::election::utc(state.degraded.as_ref().map_or(0, |d| d.since_unix_ms))
        ),
        Change::Failover { .. } if state.ha.synchronous_mode == SyncMode::Off => format!(
            "up to {behind} bytes now (asynchronous mode: whatever {old} acknowledged that {c} has not received)"
        ),
        Change::Failover { .. } => {
            "none: every acknowledged write is on a quorum member, and the election promotes only a member \
             holding the most advanced final position among them"
                .to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::testing::bootstrapped;
    use crate::types::Timeline;

    fn report(pg: PgRole, lsn: u64, streaming: bool) -> Report {
        Report {
            generation: Generation(1),
            pg,
            streaming,
            timeline: Some(Timeline(1)),
            lsn: Some(lsn),
            standby_flush: BTreeMap::new(),
            final_position: None,
            reason: String::new(),
            sync_applied: None,
            pending_restart: false,
        }
    }

    fn live() -> (ClusterState, BTreeMap<String, Report>, BTreeSet<String>) {
        let s = bootstrapped("n1");
        let reports = BTreeMap::from([
            ("n1".to_string(), report(PgRole::Primary, 0x500, false)),
            ("n2".to_string(), report(PgRole::Standby, 0x500, true)),
            ("n3".to_string(), report(PgRole::Standby, 0x400, true)),
        ]);
        let voters = ["n1", "n2", "n3"].iter().map(|s| s.to_string()).collect();
        (s, reports, voters)
    }

    #[test]
    fn a_failover_to_the_most_advanced_standby_is_planned_without_loss() {
        let (s, reports, voters) = live();
        let p = plan(&s, &reports, &voters, "n2", Change::Failover { to: "n2", force: false }).unwrap();
        assert_eq!(p.candidate.as_deref(), Some("n2"), "{p:?}");
        assert_eq!(p.waits_for, ["n2", "n3"]);
        assert!(p.loss.starts_with("none"), "{}", p.loss);
        let text = p.render(Change::Failover { to: "n2", force: false });
        assert!(
            text.contains("would promote: n2") && text.contains("nothing was changed"),
            "{text}"
        );
    }

    #[test]
    fn a_target_behind_is_replaced_unless_forced_and_forcing_states_the_loss() {
        let (s, reports, voters) = live();
        let p = plan(&s, &reports, &voters, "n2", Change::Failover { to: "n3", force: false }).unwrap();
        assert_eq!(
            p.candidate.as_deref(),
            Some("n2"),
            "the election keeps the writes: {p:?}"
        );
        let p = plan(&s, &reports, &voters, "n2", Change::Failover { to: "n3", force: true }).unwrap();
        assert_eq!(p.candidate.as_deref(), Some("n3"), "{p:?}");
        assert!(p.loss.contains("256 bytes"), "{}", p.loss);
    }

    #[test]
    fn a_switchover_waits_for_the_clean_stop_and_loses_nothing() {
        let (s, reports, voters) = live();
        let p = plan(&s, &reports, &voters, "n2", Change::Switchover { to: "n3" }).unwrap();
        assert_eq!(p.candidate.as_deref(), Some("n3"), "{p:?}");
        assert!(p.waits_for.contains(&"n1".to_string()));
        assert!(p.loss.starts_with("none"), "{}", p.loss);
    }

    #[test]
    fn what_the_state_machine_refuses_is_refused() {
        let (s, reports, voters) = live();
        let e = plan(&s, &reports, &voters, "n2", Change::Switchover { to: "n9" }).unwrap_err();
        assert!(e.contains("n9"), "{e}");
        let mut none = s.clone();
        none.primary = None;
        assert!(plan(
            &none,
            &reports,
            &voters,
            "n2",
            Change::Failover { to: "n2", force: false }
        )
        .is_err());
    }

    #[test]
    fn a_missing_report_leaves_the_plan_waiting_and_says_for_whom() {
        let (s, mut reports, voters) = live();
        reports.remove("n3");
        let p = plan(&s, &reports, &voters, "n2", Change::Failover { to: "n2", force: false }).unwrap();
        assert_eq!(p.candidate, None, "{p:?}");
        assert!(p.steps.last().unwrap().contains("n3"), "{p:?}");
        assert!(p.loss.starts_with("none while nobody"), "{}", p.loss);
    }
}
