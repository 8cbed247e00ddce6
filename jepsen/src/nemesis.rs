//! The nemeses: named scenarios, each a fault aimed at a role. A fault is
//! resolved against the roles raftpg reports when it starts (so "the
//! primary" means whoever is primary then), records whether it hit that
//! role, and knows how to heal itself.

use anyhow::Context;
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
    sc("lagging-standbys-kill-primary", "the primary's WAL senders and both standbys' WAL receivers stopped, so no commit can be acknowledged; 2 s later the primary's node killed and the receivers resumed", false),
    sc("laggard-and-hung-holder-kill-primary", "one standby's WAL receiver stopped so it lags; 2 s later the other standby's PostgreSQL frozen and the primary's node killed: only the frozen standby holds the last acknowledged writes", true),
    sc("member-remove-during-partition", "one standby cut off, then removed from the cluster with ctl member remove while cut; the heal wipes its Raft state, starts it again and adds it back with ctl member add (its database kept)", false),
    sc("full-disk-primary", "the primary's PGDATA filesystem (a tmpfs of its own in this scenario) filled to the last byte, then WAL segment switches forced: PostgreSQL cannot create the next segment and stops; the heal frees the space", false),
    sc("sync-standby-down-primary-restart", "one synchronous standby killed, then the primary's postmaster killed and restarted", false),
    sc("nosync-standby-isolate-primary", "one standby tagged nosync at runtime (ctl member tags), then the primary cut off; the tag is cleared at the heal", false),
    sc("degraded-window-isolate-primary", "synchronous_mode=degradable and both standbys' PostgreSQL paused, so the primary degrades and writes alone; then it is cut off (no standby may be promoted) until the heal, which also resets the mode", false),
    sc("one-way-primary-out", "the primary's packets to both standbys dropped; it still hears them", false),
    sc("one-way-primary-in", "the standbys' packets to the primary dropped; it still reaches them", false),
    sc("isolate-primary-raft", "only Raft and control traffic between the primary and the standbys cut; replication flows", false),
    sc("isolate-primary-pg", "only PostgreSQL traffic between the primary and the standbys cut; Raft flows", false),
    sc("lossy-primary", "25 % of the packets between the primary and the standbys dropped at random, both ways: retransmissions around the renewal interval", false),
    sc("pause-primary-raftpg-short", "SIGSTOP of the primary's raftpg for 1-3 s, around the 2 s lease", false),
    sc("kill-all-nodes", "kill -9 of every node at once, writes in flight: a cold restart", false),
    sc("switchover-isolate-standby", "one standby cut off, then a switchover to the other", false),
    sc("pause-primary-pg-kill-candidate", "the primary's PostgreSQL paused; the moment raftpg names its successor (Promote committed), that candidate's node killed", false),
    sc("pause-primary-pg-kill-raft-leader", "the primary's PostgreSQL paused; the moment raftpg names its successor, the Raft leader's node killed", false),
    sc("back-to-back-failovers", "the primary cut off; the moment raftpg names its successor, the old primary healed and the new one cut off", false),
    sc("skewed-clocks-isolate-primary", "the nodes' clocks run at 0.96, 1.0 and 1.04 times the real rate from the start (faketime; inside the 10 % the lease allows); each window cuts the primary off", false),
    sc("chaos", "a random fault from the list above in every window", false),
    sc("chaos-multi", "two faults at once in every window: a network fault and a process fault, each drawn at random", false),
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
    /// A file that fills a node's disk: removed.
    Ballast(std::path::PathBuf),
    /// The node was removed from the cluster: it starts afresh (its Raft state wiped, its
    /// database kept) and is added back with `raftpg ctl member add`.
    Readd(u16),
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
    /// The fault's own window span in milliseconds, when the run's does not suit it.
    pub window_ms: Option<(u64, u64)>,
}

/// What a fault does once its first half has had time to work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Later {
    /// Cut the primary off (promote-laggard, degraded-window-isolate-primary).
    Isolate(u16),
    /// Kill every process of the primary's node, then resume what the first half
    /// stopped (lagging-standbys-kill-primary: the receivers come back to a dead primary).
    KillNodeAndResume(u16),
    /// Freeze node `freeze`'s PostgreSQL, then kill every process of node `kill`
    /// (laggard-and-hung-holder-kill-primary: the standby that holds the last writes hangs
    /// as the primary dies). Both stay so until the heal.
    FreezeAndKill { freeze: u16, kill: u16 },
    /// Once raftpg names a primary of a newer generation than `generation` (a failover's
    /// `Promote` committed), `then` at once: a fault in the middle of the failover.
    OnNewPrimary { generation: u64, then: Then },
}

/// What [`Later::OnNewPrimary`] does to the failover it caught.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Kill the candidate's node, before it can record its timeline.
    KillCandidate,
    /// Kill the Raft leader's node, whose controller runs the failover.
    KillRaftLeader,
    /// Heal the old primary and cut the new one off: a second failover right after the first.
    IsolateCandidate,
}

/// The roles at the start of a fault.
pub struct Roles {
    pub primary: Option<u16>,
    /// The primary's PostgreSQL itself said it is not in recovery.
    pub primary_confirmed: bool,
    pub standbys: Vec<u16>,
    pub raft_leader: Option<u16>,
    pub generation: u64,
}

impl Roles {
    pub fn of(view: &View, n: u16, primary_confirmed: bool) -> Roles {
        Roles {
            primary: view.primary,
            primary_confirmed,
            standbys: (1..=n).filter(|k| Some(*k) != view.primary).collect(),
            raft_leader: view.raft_leader,
            generation: view.generation,
        }
    }

    fn pick_standby(&self, rng: &mut StdRng) -> Option<u16> {
        (!self.standbys.is_empty()).then(|| self.standbys[rng.gen_range(0..self.standbys.len())])
    }
}

/// The network faults `chaos-multi` draws from: each installs its own cuts (or netem), so
/// only one of them runs at a time.
const NETWORK_FAULTS: &[&str] = &[
    "isolate-primary",
    "isolate-standby",
    "bridge-primary",
    "bridge-standby",
    "one-way-primary-out",
    "one-way-primary-in",
    "isolate-primary-raft",
    "isolate-primary-pg",
    "lossy-primary",
];

/// The process faults `chaos-multi` draws from (none has a second half or a window of its own).
const PROCESS_FAULTS: &[&str] = &[
    "kill-primary-pg",
    "kill-primary-raftpg",
    "kill-primary-node",
    "pause-primary-raftpg",
    "pause-primary-pg",
    "pause-primary-node",
    "kill-standby",
    "pause-standby",
];

/// The scenario's fault for this window. `chaos` draws one of the others; `chaos-multi`
/// draws a network fault and a process fault and applies both.
pub fn start(scenario: &str, roles: &Roles, c: &mut Cluster, rng: &mut StdRng) -> anyhow::Result<Fault> {
    if scenario == "chaos-multi" {
        let network = NETWORK_FAULTS[rng.gen_range(0..NETWORK_FAULTS.len())];
        let process = PROCESS_FAULTS[rng.gen_range(0..PROCESS_FAULTS.len())];
        let first = start(network, roles, c, rng)?;
        let second = start(process, roles, c, rng)?;
        return Ok(first.merge(second));
    }
    let scenario = if scenario == "chaos" {
        // A skew is set when the nodes start, not in a window: chaos draws its cut alone.
        let plain: Vec<&Scenario> = SCENARIOS
            .iter()
            .filter(|s| {
                !matches!(
                    s.name,
                    "chaos" | "chaos-multi" | "skewed-clocks-isolate-primary" | "full-disk-primary"
                )
            })
            .collect();
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
        window_ms: None,
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
        "isolate-primary" | "isolate-primary-reset" | "skewed-clocks-isolate-primary" => {
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
        "pause-primary-pg-kill-candidate" | "pause-primary-pg-kill-raft-leader" => match postgres_pids(c, p) {
            Some(pids) => {
                f.stop(pids, "postmaster and backends");
                let then = match scenario.ends_with("candidate") {
                    true => Then::KillCandidate,
                    false => Then::KillRaftLeader,
                };
                f.later = Some(Later::OnNewPrimary {
                    generation: roles.generation,
                    then,
                });
                // Long enough for the failover the second half waits for.
                f.window_ms = Some((6_000, 15_000));
            }
            None => return Ok(f.missed("primary", "no postmaster")),
        },
        "back-to-back-failovers" => {
            f.cut(n, isolate(n, p), Cut::Drop)?;
            f.later = Some(Later::OnNewPrimary {
                generation: roles.generation,
                then: Then::IsolateCandidate,
            });
            f.window_ms = Some((6_000, 15_000));
        }
        "pause-primary-pg" => match postgres_pids(c, p) {
            Some(pids) => {
                f.stop(pids, "postmaster and backends");
                // Its checker requires a failover before the heal (`checker::MUST_FAIL_OVER`),
                // which takes about 3.5 s: a window of the full tier's 0.5 s could not show one.
                f.window_ms = Some((6_000, 15_000));
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
        "laggard-and-hung-holder-kill-primary" => {
            let (Some(lag), Some(holder)) = (standby, other(standby)) else {
                return Ok(f.missed("primary", "fewer than two standbys"));
            };
            let Some(r) = wal_receiver(c, lag) else {
                return Ok(f.missed("primary", "the standby has no WAL receiver"));
            };
            f.stop(vec![r], &format!("{}'s WAL receiver", name(lag)));
            f.targets.push(name(lag));
            f.targets.push(name(holder));
            f.later = Some(Later::FreezeAndKill {
                freeze: holder,
                kill: p,
            });
        }
        "member-remove-during-partition" => {
            let Some(s) = standby else {
                return Ok(f.missed("standby", "no standby"));
            };
            f.intended = "standby".into();
            f.targets = vec![name(s)];
            f.cut(n, isolate(n, s), Cut::Drop)?;
            // Through the majority's side: the standby, deposed leader or not, cannot commit.
            let majority: Vec<u16> = (1..=n).filter(|k| *k != s).collect();
            // Retried: the standby may have been the Raft leader, and the majority needs an
            // election first. A try whose outcome was unknown may have removed it already.
            let removed = retry_ctl_via(c, &majority, &["member", "remove", &name(s)]).or_else(|e| {
                match format!("{e:#}").contains(&format!("unknown member '{}'", name(s))) {
                    true => Ok(()),
                    false => Err(e),
                }
            });
            match removed {
                Ok(_) => {
                    f.note(format!("removed {} from the cluster", name(s)));
                    // Healed last, once the cut is gone and it can be reached.
                    f.steps.insert(0, Step::Readd(s));
                }
                Err(e) => {
                    f.note(format!("member remove {} failed: {e}", name(s)));
                    f.hit = false;
                }
            }
        }
        "full-disk-primary" => {
            if c.disk_mb.is_none() {
                return Ok(f.missed("primary", "the run gave no node a disk of its own"));
            }
            let ballast = c.disk(p).join("ballast");
            let filled = fill(&ballast)?;
            f.steps.push(Step::Ballast(ballast));
            f.note(format!(
                "filled {}'s disk ({} MB of ballast, 0 bytes left)",
                name(p),
                filled >> 20
            ));
            // Writes into the current WAL segment need no room; the next segment does.
            let switch = |k| {
                hosts::sh(
                    "psql",
                    &[&crate::cluster::conninfo(k, 2), "-Atc", "SELECT pg_switch_wal()"],
                )
            };
            let mut switched = 0;
            while switched < 8 && switch(p).is_ok() {
                switched += 1;
            }
            f.note(format!(
                "{switched} WAL segment switches before PostgreSQL stopped answering"
            ));
        }
        "lagging-standbys-kill-primary" => {
            if roles.standbys.is_empty() {
                return Ok(f.missed("primary", "no standby"));
            }
            // The primary's WAL senders first: what they have not sent by then never
            // leaves the primary, so with asynchronous replication the writes it
            // acknowledges from now on exist nowhere else once it is killed (stopping
            // only the receivers left the WAL in their sockets' buffers, to be applied
            // once they resumed).
            let senders = wal_senders(c, p);
            if senders.is_empty() {
                f.note(format!("{} had no WAL sender", name(p)));
            } else {
                f.stop(senders, &format!("{}'s WAL senders", name(p)));
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
                match postgres_pids(c, s) {
                    Some(pids) => {
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
        "one-way-primary-out" | "one-way-primary-in" => {
            let links = roles
                .standbys
                .iter()
                .map(|&s| {
                    let (from, to) = if scenario.ends_with("out") { (p, s) } else { (s, p) };
                    hosts::Link {
                        from,
                        to,
                        both_ways: false,
                        ports: vec![],
                        loss_percent: None,
                    }
                })
                .collect();
            f.cut_links(n, links)?;
        }
        "isolate-primary-raft" | "isolate-primary-pg" => {
            let ports = match scenario.ends_with("raft") {
                true => vec![crate::cluster::RAFT_PORT, crate::cluster::GRPC_PORT],
                false => vec![crate::cluster::PG_PORT],
            };
            let link = hosts::Link {
                both_ways: true,
                ports,
                ..hosts::Link::default()
            };
            f.cut_links(n, to_standbys(p, &roles.standbys, &link))?;
        }
        // This machine's kernel has no netem qdisc: random drops in nftables stand in for a
        // bad link (TCP's retransmissions then delay renewals and reports by 200 ms and more).
        "lossy-primary" => {
            let link = hosts::Link {
                both_ways: true,
                loss_percent: Some(25),
                ..hosts::Link::default()
            };
            f.cut_links(n, to_standbys(p, &roles.standbys, &link))?;
        }
        "pause-primary-raftpg-short" => match c.raftpg_pid(p) {
            Some(pid) => {
                f.stop(vec![pid], "raftpg");
                f.window_ms = Some((1_000, 3_000));
            }
            None => return Ok(f.missed("primary", "its raftpg was not running")),
        },
        "kill-all-nodes" => {
            f.intended = "every node".into();
            f.targets = (1..=n).map(name).collect();
            for k in 1..=n {
                f.kill_node(c, k)?;
            }
            // kill_node clears `hit` only for a node with nothing to kill.
        }
        "switchover-isolate-standby" => {
            let Some(s) = standby else {
                return Ok(f.missed("primary", "no standby"));
            };
            let Some(o) = other(Some(s)) else {
                return Ok(f.missed("primary", "only one standby"));
            };
            f.targets.push(name(s));
            f.cut(n, isolate(n, s), Cut::Drop)?;
            match c.ctl(&["switchover", "--to", &name(o)]) {
                Ok(_) => f.note(format!("switched over to {}", name(o))),
                Err(e) => f.note(format!("the switchover to {} was refused: {e}", name(o))),
            }
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
/// Node `k`'s WAL receiver. A standby that is still (re)starting after the previous window
/// has none yet: it is waited for, at most `RECEIVER_WAIT`, so that the fault does not miss
/// (the 300 s tier's promote-laggard, seed 962094, was vacuous for one such window).
fn wal_receiver(c: &mut Cluster, k: u16) -> Option<i32> {
    let deadline = std::time::Instant::now() + RECEIVER_WAIT;
    loop {
        let found = c.postmaster_pid(k).and_then(|pm| {
            hosts::children_of(pm)
                .into_iter()
                .find(|p| hosts::cmdline(*p).contains("walreceiver"))
        });
        if found.is_some() || std::time::Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

const RECEIVER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Writes zeros to `path` until its filesystem is full; how many bytes it wrote.
fn fill(path: &std::path::Path) -> anyhow::Result<u64> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut written = 0u64;
    for chunk in [1 << 20, 4096, 1] {
        let zeros = vec![0u8; chunk];
        while f.write_all(&zeros).is_ok() {
            written += chunk as u64;
        }
    }
    let _ = f.sync_all();
    Ok(written)
}

/// Node `k`'s postmaster and every process it started (SIGSTOP of all of them freezes
/// PostgreSQL: a stopped postmaster alone still lets its backends answer).
fn postgres_pids(c: &mut Cluster, k: u16) -> Option<Vec<i32>> {
    let pm = c.postmaster_pid(k)?;
    let mut pids = vec![pm];
    pids.extend(hosts::children_of(pm));
    Some(pids)
}

/// Node `k`'s WAL sender processes.
fn wal_senders(c: &mut Cluster, k: u16) -> Vec<i32> {
    let Some(pm) = c.postmaster_pid(k) else {
        return vec![];
    };
    hosts::children_of(pm)
        .into_iter()
        .filter(|p| hosts::cmdline(*p).contains("walsender"))
        .collect()
}

/// `link` from the primary `p` to each standby.
fn to_standbys(p: u16, standbys: &[u16], link: &hosts::Link) -> Vec<hosts::Link> {
    standbys
        .iter()
        .map(|&s| hosts::Link {
            from: p,
            to: s,
            ..link.clone()
        })
        .collect()
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

    /// The second half of a [`Later::OnNewPrimary`] fault, given what raftpg names now
    /// (None: no successor was named in time, so the fault missed its premise).
    pub fn on_new_primary(&mut self, c: &mut Cluster, seen: Option<&View>) -> anyhow::Result<()> {
        let Some(Later::OnNewPrimary { then, .. }) = self.later.take() else {
            return Ok(());
        };
        let Some((q, v)) = seen.and_then(|v| Some((v.primary?, v))) else {
            self.hit = false;
            self.note("no successor was named within the window: the second half never ran".into());
            return Ok(());
        };
        self.note(format!("{} named primary (generation {})", name(q), v.generation));
        match then {
            Then::KillCandidate => {
                self.targets.push(name(q));
                self.kill_node(c, q)
            }
            Then::KillRaftLeader => match v.raft_leader {
                Some(l) => {
                    self.targets.push(name(l));
                    self.kill_node(c, l)
                }
                None => {
                    self.hit = false;
                    self.note("no Raft leader was named".into());
                    Ok(())
                }
            },
            Then::IsolateCandidate => {
                self.targets.push(name(q));
                self.cut(c.n, isolate(c.n, q), Cut::Drop)
            }
        }
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
            Some(Later::FreezeAndKill { freeze, kill }) => {
                match postgres_pids(c, freeze) {
                    Some(pids) => self.stop(pids, &format!("{}'s PostgreSQL", name(freeze))),
                    None => self.note(format!("{} had no postmaster", name(freeze))),
                }
                self.kill_node(c, kill)
            }
            Some(Later::OnNewPrimary { .. }) | None => Ok(()),
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

    /// Both faults as one: healed together, the second first. It hit when both did.
    fn merge(mut self, other: Fault) -> Fault {
        self.fault = format!("{}+{}", self.fault, other.fault);
        for t in other.targets {
            if !self.targets.contains(&t) {
                self.targets.push(t);
            }
        }
        if self.intended != other.intended {
            self.intended = format!("{} and {}", self.intended, other.intended);
        }
        self.hit = self.hit && other.hit;
        self.note(other.detail);
        self.steps.extend(other.steps);
        self
    }

    fn cut_links(&mut self, n: u16, links: Vec<hosts::Link>) -> anyhow::Result<()> {
        hosts::cut_links(n, &links)?;
        hosts::verify_links(n, &links)?;
        let shown: Vec<String> = links
            .iter()
            .map(|l| {
                let arrow = if l.both_ways { "-" } else { "->" };
                let ports = match l.ports.is_empty() {
                    true => String::new(),
                    false => format!(" ports {:?}", l.ports),
                };
                let loss = l.loss_percent.map(|p| format!(" {p} % lost")).unwrap_or_default();
                format!("{}{arrow}{}{ports}{loss}", name(l.from), name(l.to))
            })
            .collect();
        self.note(format!("cut {} (verified)", shown.join(" ")));
        self.steps.push(Step::Cut);
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
                Step::Readd(k) => readd(c, k)?,
                Step::Ballast(path) => std::fs::remove_file(&path)
                    .with_context(|| format!("cannot remove {} to free the disk", path.display()))?,
            }
        }
        Ok(())
    }
}

/// Adds node `k`, removed from the cluster, back as a new member would join: its
/// raftpg stopped, its Raft state wiped (its database stays), started again, then
/// `raftpg ctl member add` with its addresses, through the other members' endpoints (the
/// wiped node knows no Raft leader: before raftpg tried the next endpoint, a `ctl` that
/// reached it first failed, and the 300 s tier's member-remove-during-partition, seed
/// 962094, stopped there).
fn readd(c: &mut Cluster, k: u16) -> anyhow::Result<()> {
    hosts::kill_node(k)?;
    c.reap(k);
    let raft = c.dir.join(name(k)).join("raft");
    if raft.exists() {
        std::fs::remove_dir_all(&raft).with_context(|| format!("cannot wipe {}", raft.display()))?;
    }
    c.start(k)?;
    let ip = hosts::ip(k);
    let addr = |port: u16| format!("{ip}:{port}");
    use crate::cluster::{GRPC_PORT, HTTP_PORT, PG_PORT, RAFT_PORT};
    let others: Vec<u16> = (1..=c.n).filter(|&o| o != k).collect();
    retry_ctl_via(
        c,
        &others,
        &[
            "member",
            "add",
            "--name",
            &name(k),
            "--id",
            &k.to_string(),
            "--raft",
            &addr(RAFT_PORT),
            "--grpc",
            &addr(GRPC_PORT),
            "--pg",
            &addr(PG_PORT),
            "--http",
            &addr(HTTP_PORT),
        ],
    )
}

/// `raftpg ctl` with `args`, retried for 10 s while it fails.
fn retry_ctl(c: &Cluster, args: &[&str]) -> anyhow::Result<()> {
    let all: Vec<u16> = (1..=c.n).collect();
    retry_ctl_via(c, &all, args)
}

/// [`retry_ctl`] through `nodes`' endpoints only.
fn retry_ctl_via(c: &Cluster, nodes: &[u16], args: &[&str]) -> anyhow::Result<()> {
    let mut last = None;
    for _ in 0..50 {
        match c.ctl_via(nodes, args) {
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
    fn every_scenario_has_a_unique_name_and_the_smoke_tier_is_the_issues_four_and_two_more() {
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
                "zombie-straddle",
                "laggard-and-hung-holder-kill-primary",
            ]
        );
        assert!(find("nope").unwrap_err().to_string().contains("raftpg-jepsen list"));
    }

    #[test]
    fn chaos_multi_draws_only_real_single_faults() {
        for name in NETWORK_FAULTS.iter().chain(PROCESS_FAULTS) {
            let s = find(name).unwrap();
            assert!(!s.name.starts_with("chaos"), "{name}");
        }
        assert!(NETWORK_FAULTS.iter().all(|n| !PROCESS_FAULTS.contains(n)));
    }

    #[test]
    fn isolating_a_node_cuts_it_from_every_other() {
        assert_eq!(isolate(3, 2), vec![(2, 1), (2, 3)]);
    }
}
