//! The nemeses: named scenarios, each a fault aimed at a role. A fault is
//! resolved against the roles raftpg reports when it starts (so "the
//! primary" means whoever is primary then), records whether it hit that
//! role, and knows how to heal itself.

use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::Rng;

use crate::cluster::{name, Cluster, View};
use crate::hosts::{self, signal, Cut};

#[derive(Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub smoke: bool,
}

pub const SCENARIOS: &[Scenario] = &[
    sc("isolate-primary", "the primary cut off from both standbys (nftables drop)", true),
    sc("isolate-primary-reset", "the primary cut off with TCP resets instead of drops", false),
    sc("isolate-raft-leader", "the Raft leader cut off, when it is not the primary", false),
    sc("isolate-standby", "one standby cut off from the other two nodes", false),
    sc("bridge-primary", "the standbys cannot see each other; the primary sees both", false),
    sc("bridge-standby", "the primary and one standby cannot see each other; the other standby sees both", false),
    sc("majorities-ring", "every node cut from every other: no majority anywhere (with three nodes the ring of majorities is the full mesh)", false),
    sc("flapping", "the primary cut off and healed every 200-600 ms, faster than an election", false),
    sc("kill-primary-pg", "kill -9 of the primary's postmaster", false),
    sc("kill-primary-raftpg", "kill -9 of the primary's raftpg; its PostgreSQL keeps running", false),
    sc("kill-primary-node", "kill -9 of every process of the primary's node", true),
    sc("pause-primary-raftpg", "SIGSTOP of the primary's raftpg", true),
    sc("pause-primary-pg", "SIGSTOP of the primary's postmaster and every backend: must fail over", true),
    sc("pause-primary-node", "the primary's whole node frozen (cgroup freezer)", false),
    sc("kill-standby", "kill -9 of every process of one standby's node", false),
    sc("pause-standby", "one standby's whole node frozen", false),
    sc("zombie-straddle", "the primary's raftpg paused and cut from one standby; the other still streams from it", true),
    sc("promote-laggard", "one standby's WAL receiver stopped so it lags, then the primary cut off", false),
    sc("lagging-standbys-kill-primary", "both standbys' WAL receivers stopped, so no commit can be acknowledged; 2 s later the primary's node killed and the receivers resumed", false),
    sc("sync-standby-down-primary-restart", "one synchronous standby killed, then the primary's postmaster killed and restarted", false),
    sc("nosync-standby-isolate-primary", "one standby tagged nosync at runtime (ctl member tags), then the primary cut off; the tag is cleared at the heal", false),
    sc("degraded-window-isolate-primary", "synchronous_mode=degradable and both standbys' PostgreSQL paused, so the primary degrades and writes alone; then it is cut off (no standby may be promoted) until the heal, which also resets the mode", false),
    sc("chaos", "a random fault from the list above in every window", false),
];

const fn sc(name: &'static str, about: &'static str, smoke: bool) -> Scenario {
    Scenario { name, about, smoke }
}

pub fn find(name: &str) -> anyhow::Result<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name).ok_or_else(|| {
        let names: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
        anyhow::anyhow!(
            "no scenario called {name:?}: `raftpg-jepsen list` shows them ({})",
            names.join(", ")
        )
    })
}

/// One part of a fault, undone in reverse order at the heal.
#[derive(Debug)]
enum Step {
    Cut,
    Stopped(Vec<i32>),
    Frozen(u16),
    /// The node's raftpg (or whole node) was killed: start raftpg again.
    Restart(u16),
    /// The node was tagged nosync: clear the tag.
    Untag(u16),
    /// `synchronous_mode` was set for the fault: back to the default.
    ResetSyncMode,
}

/// A fault in force.
#[derive(Debug)]
pub struct Fault {
    pub fault: String,
    pub targets: Vec<String>,
    pub intended: String,
    pub hit: bool,
    pub detail: String,
    steps: Vec<Step>,
    /// For flapping: the primary to cut off and on.
    pub flap: Option<u16>,
    /// The second half of a fault, `escalate_after` its start.
    pub later: Option<Later>,
    /// How long after the start `later` happens.
    pub escalate_after: std::time::Duration,
}

/// What a fault does once its first half has had time to work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Later {
    /// Cut the primary off (promote-laggard, degraded-window-isolate-primary).
    Isolate(u16),
    /// Kill every process of the primary's node, then resume what the first half
    /// stopped (lagging-standbys-kill-primary: the receivers come back to a dead primary).
    KillNodeAndResume(u16),
}

/// The roles at the start of a fault.
pub struct Roles {
    pub primary: Option<u16>,
    /// The primary's PostgreSQL itself said it is not in recovery.
    pub primary_confirmed: bool,
    pub standbys: Vec<u16>,
    pub raft_leader: Option<u16>,
}

impl Roles {
    pub fn of(view: &View, n: u16, primary_confirmed: bool) -> Roles {
        Roles {
            primary: view.primary,
            primary_confirmed,
            standbys: (1..=n).filter(|k| Some(*k) != view.primary).collect(),
            raft_leader: view.raft_leader,
        }
    }

    fn pick_standby(&self, rng: &mut StdRng) -> Option<u16> {
        (!self.standbys.is_empty()).then(|| self.standbys[rng.gen_range(0..self.standbys.len())])
    }
}

/// The scenario's fault for this window. `chaos` draws one of the others.
pub fn start(scenario: &str, roles: &Roles, c: &mut Cluster, rng: &mut StdRng) -> anyhow::Result<Fault> {
    let scenario = if scenario == "chaos" {
        let plain: Vec<&Scenario> = SCENARIOS.iter().filter(|s| s.name != "chaos").collect();
        plain[rng.gen_range(0..plain.len())].name
    } else {
        scenario
    };
    let n = c.n;
    let standby = roles.pick_standby(rng);
    let other = |s: Option<u16>| roles.standbys.iter().copied().find(|k| Some(*k) != s);
    let mut f = Fault {
        fault: scenario.to_string(),
        targets: vec![],
        intended: "primary".into(),
        hit: false,
        detail: String::new(),
        steps: vec![],
        flap: None,
        later: None,
        escalate_after: std::time::Duration::from_secs(2),
    };
    let Some(p) = roles.primary else {
        f.detail = "no primary when the fault was due".into();
        return Ok(f);
    };
    f.targets = vec![name(p)];
    f.hit = roles.primary_confirmed;
    if !f.hit {
        f.note(format!(
            "raftpg names {} primary but its PostgreSQL did not confirm",
            name(p)
        ));
    }
    match scenario {
        "isolate-primary" | "isolate-primary-reset" => {
            let how = if scenario.ends_with("reset") {
                Cut::Reset
            } else {
                Cut::Drop
            };
            f.cut(n, isolate(n, p), how)?;
        }
        "isolate-raft-leader" => {
            f.intended = "raft-leader (not the primary)".into();
            match roles.raft_leader {
                Some(l) if l != p => {
                    f.targets = vec![name(l)];
                    f.cut(n, isolate(n, l), Cut::Drop)?;
                }
                l => {
                    f.hit = false;
                    f.targets = l.map(name).into_iter().collect();
                    f.detail = format!(
                        "the Raft leader is {}: not a separate node",
                        l.map(name).unwrap_or("unknown".into())
                    );
                }
            }
        }
        "isolate-standby" | "bridge-standby" | "kill-standby" | "pause-standby" => {
            let Some(s) = standby else {
                return Ok(f.missed("standby", "no standby"));
            };
            f.intended = "standby".into();
            f.targets = vec![name(s)];
            match scenario {
                "isolate-standby" => f.cut(n, isolate(n, s), Cut::Drop)?,
                "bridge-standby" => {
                    let o = other(Some(s)).unwrap_or(s);
                    f.targets = vec![name(p), name(o)];
                    f.note(format!("{} bridges", name(s)));
                    f.cut(n, vec![(p, o)], Cut::Drop)?;
                }
                "kill-standby" => f.kill_node(c, s)?,
                _ => f.freeze(s)?,
            }
        }
        "bridge-primary" => {
            let pairs: Vec<(u16, u16)> = roles.standbys.windows(2).map(|w| (w[0], w[1])).collect();
            f.targets = roles.standbys.iter().map(|k| name(*k)).collect();
            f.note(format!("{} bridges", name(p)));
            f.cut(n, pairs, Cut::Drop)?;
        }
        "majorities-ring" => {
            let pairs = (1..=n).flat_map(|a| (a + 1..=n).map(move |b| (a, b))).collect();
            f.intended = "every node".into();
            f.targets = (1..=n).map(name).collect();
            f.cut(n, pairs, Cut::Drop)?;
        }
        "flapping" => f.flap = Some(p),
        "kill-primary-pg" => f.kill_pg(c, p)?,
        "kill-primary-raftpg" => match c.raftpg_pid(p) {
            Some(pid) => {
                signal(&[pid], Signal::SIGKILL);
                c.reap(p);
                f.steps.push(Step::Restart(p));
                f.note(format!("SIGKILL raftpg pid {pid}"));
            }
            None => return Ok(f.missed("primary", "its raftpg was not running")),
        },
        "kill-primary-node" => f.kill_node(c, p)?,
        "pause-primary-raftpg" => match c.raftpg_pid(p) {
            Some(pid) => f.stop(vec![pid], "raftpg"),
            None => return Ok(f.missed("primary", "its raftpg was not running")),
        },
        "pause-primary-pg" => match c.postmaster_pid(p) {
            Some(pm) => {
                let mut pids = vec![pm];
                pids.extend(hosts::children_of(pm));
                f.stop(pids, "postmaster and backends");
            }
            None => return Ok(f.missed("primary", "no postmaster")),
        },
        "pause-primary-node" => f.freeze(p)?,
        "zombie-straddle" => {
            let Some(s) = standby else {
                return Ok(f.missed("primary", "no standby"));
            };
            match c.raftpg_pid(p) {
                Some(pid) => f.stop(vec![pid], "raftpg"),
                None => return Ok(f.missed("primary", "its raftpg was not running")),
            }
            f.note(format!(
                "{} still streams from it",
                other(Some(s)).map(name).unwrap_or_default()
            ));
            f.cut(n, vec![(p, s)], Cut::Drop)?;
        }
        "promote-laggard" => {
            let Some(s) = standby else {
                return Ok(f.missed("primary", "no standby"));
            };
            let Some(r) = wal_receiver(c, s) else {
                return Ok(f.missed("primary", "the standby has no WAL receiver"));
            };
            f.stop(vec![r], &format!("{}'s WAL receiver", name(s)));
            f.targets.push(name(s));
            f.later = Some(Later::Isolate(p));
        }
        "lagging-standbys-kill-primary" => {
            if roles.standbys.is_empty() {
                return Ok(f.missed("primary", "no standby"));
            }
            for s in roles.standbys.clone() {
                match wal_receiver(c, s) {
                    Some(r) => f.stop(vec![r], &format!("{}'s WAL receiver", name(s))),
                    None => f.note(format!("{} had no WAL receiver", name(s))),
                }
                f.targets.push(name(s));
            }
            f.later = Some(Later::KillNodeAndResume(p));
        }
        "nosync-standby-isolate-primary" => {
            let Some(s) = standby else {
                return Ok(f.missed("primary", "no standby"));
            };
            // Refused when it would leave fewer than two members that may be synchronous
            // (a tag left over): the cut still happens.
            match c.ctl(&["member", "tags", &name(s), "nosync=true"]) {
                Ok(_) => {
                    f.note(format!("tagged {} nosync", name(s)));
                    f.steps.push(Step::Untag(s));
                }
                Err(e) => f.note(format!("tagging {} nosync failed: {e}", name(s))),
            }
            f.targets.push(name(s));
            f.cut(n, isolate(n, p), Cut::Drop)?;
        }
        "degraded-window-isolate-primary" => {
            if roles.standbys.is_empty() {
                return Ok(f.missed("primary", "no standby"));
            }
            match c.ctl(&["config", "set", "synchronous_mode=degradable"]) {
                Ok(_) => {
                    f.note("synchronous_mode=degradable".into());
                    f.steps.push(Step::ResetSyncMode);
                }
                Err(e) => f.note(format!("setting synchronous_mode=degradable failed: {e}")),
            }
            for s in roles.standbys.clone() {
                match c.postmaster_pid(s) {
                    Some(pm) => {
                        let mut pids = vec![pm];
                        pids.extend(hosts::children_of(pm));
                        f.stop(pids, &format!("{}'s PostgreSQL", name(s)));
                    }
                    None => f.note(format!("{} had no postmaster", name(s))),
                }
                f.targets.push(name(s));
            }
            // The window opens a lease and a report after the standbys stop (3.5 s with
            // the default lease): the primary is cut off once it writes alone.
            f.later = Some(Later::Isolate(p));
            f.escalate_after = std::time::Duration::from_millis(4_500);
        }
        "sync-standby-down-primary-restart" => {
            let Some(s) = standby else {
                return Ok(f.missed("primary", "no standby"));
            };
            f.kill_node(c, s)?;
            f.kill_pg(c, p)?;
            f.targets.push(name(s));
        }
        other => anyhow::bail!("scenario {other} has no fault"),
    }
    Ok(f)
}

/// The pid of node `k`'s WAL receiver, while it streams.
fn wal_receiver(c: &mut Cluster, k: u16) -> Option<i32> {
    let pm = c.postmaster_pid(k)?;
    hosts::children_of(pm)
        .into_iter()
        .find(|p| hosts::cmdline(*p).contains("walreceiver"))
}

/// Every pair that cuts node `k` off from the others.
fn isolate(n: u16, k: u16) -> Vec<(u16, u16)> {
    (1..=n).filter(|o| *o != k).map(|o| (k, o)).collect()
}

impl Fault {
    fn missed(mut self, intended: &str, why: &str) -> Fault {
        self.intended = intended.into();
        self.hit = false;
        self.detail = why.into();
        self
    }

    fn note(&mut self, text: String) {
        if !self.detail.is_empty() {
            self.detail += "; ";
        }
        self.detail += &text;
    }

    fn cut(&mut self, n: u16, pairs: Vec<(u16, u16)>, how: Cut) -> anyhow::Result<()> {
        hosts::partition(n, &pairs, how)?;
        hosts::verify_cut(n, &pairs, how)?;
        let shown: Vec<String> = pairs
            .iter()
            .map(|(a, b)| format!("{}-{}", name(*a), name(*b)))
            .collect();
        self.note(format!("cut {} ({how:?}, verified)", shown.join(" ")));
        self.steps.push(Step::Cut);
        Ok(())
    }

    /// The fault's second half ([`Later`]), now.
    pub fn escalate(&mut self, c: &mut Cluster) -> anyhow::Result<()> {
        match self.later.take() {
            Some(Later::Isolate(p)) => self.cut(c.n, isolate(c.n, p), Cut::Drop),
            Some(Later::KillNodeAndResume(p)) => {
                let resumed: Vec<i32> = self
                    .steps
                    .iter()
                    .filter_map(|s| match s {
                        Step::Stopped(pids) => Some(pids.clone()),
                        _ => None,
                    })
                    .flatten()
                    .collect();
                self.kill_node(c, p)?;
                signal(&resumed, Signal::SIGCONT);
                self.steps.retain(|s| !matches!(s, Step::Stopped(_)));
                self.note(format!("SIGCONT {resumed:?}"));
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn kill_node(&mut self, c: &mut Cluster, k: u16) -> anyhow::Result<()> {
        let pids = hosts::node_pids(k);
        if pids.is_empty() {
            self.hit = false;
        }
        hosts::kill_node(k)?;
        c.reap(k);
        self.note(format!("SIGKILL {} processes of {}", pids.len(), name(k)));
        self.steps.push(Step::Restart(k));
        Ok(())
    }

    fn kill_pg(&mut self, c: &mut Cluster, k: u16) -> anyhow::Result<()> {
        match c.postmaster_pid(k) {
            Some(pm) => {
                signal(&[pm], Signal::SIGKILL);
                self.note(format!("SIGKILL postmaster {pm} of {}", name(k)));
            }
            None => {
                self.hit = false;
                self.note(format!("{} had no postmaster", name(k)));
            }
        }
        Ok(())
    }

    fn stop(&mut self, pids: Vec<i32>, what: &str) {
        signal(&pids, Signal::SIGSTOP);
        self.note(format!("SIGSTOP {what} {pids:?}"));
        self.steps.push(Step::Stopped(pids));
    }

    fn freeze(&mut self, k: u16) -> anyhow::Result<()> {
        hosts::freeze(k, true)?;
        self.note(format!("froze {}", name(k)));
        self.steps.push(Step::Frozen(k));
        Ok(())
    }

    /// Undoes every step, last first.
    pub fn heal(&mut self, c: &mut Cluster) -> anyhow::Result<()> {
        while let Some(step) = self.steps.pop() {
            match step {
                Step::Cut => hosts::heal(c.n)?,
                Step::Stopped(pids) => signal(&pids, Signal::SIGCONT),
                Step::Frozen(k) => hosts::freeze(k, false)?,
                Step::Restart(k) => c.start(k)?,
                // Retried: the cluster may still be electing after the cut healed.
                Step::Untag(k) => retry_ctl(c, &["member", "tags", &name(k), "nosync=false"])?,
                Step::ResetSyncMode => retry_ctl(c, &["config", "set", "synchronous_mode="])?,
            }
        }
        Ok(())
    }
}

/// `raftpg ctl` with `args`, retried for 10 s while it fails.
fn retry_ctl(c: &Cluster, args: &[&str]) -> anyhow::Result<()> {
    let mut last = None;
    for _ in 0..50 {
        match c.ctl(args) {
            Ok(_) => return Ok(()),
            Err(e) => {
                last = Some(e);
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    }
    Err(last.expect("tried at least once"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_has_a_unique_name_and_the_smoke_tier_is_the_issues_four() {
        let mut names: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), SCENARIOS.len());
        let smoke: Vec<&str> = SCENARIOS.iter().filter(|s| s.smoke).map(|s| s.name).collect();
        assert_eq!(
            smoke,
            [
                "isolate-primary",
                "kill-primary-node",
                "pause-primary-raftpg",
                "pause-primary-pg",
                "zombie-straddle"
            ]
        );
        assert!(find("nope").unwrap_err().to_string().contains("raftpg-jepsen list"));
    }

    #[test]
    fn isolating_a_node_cuts_it_from_every_other() {
        assert_eq!(isolate(3, 2), vec![(2, 1), (2, 3)]);
    }
}
