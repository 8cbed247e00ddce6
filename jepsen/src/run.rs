//! One run: hosts up, cluster formed, clients started, the scenario's faults
//! applied in windows from a seeded schedule, everything healed, the
//! cluster left to converge, final reads on every node, the checkers, and
//! the run's directory written. Teardown happens whatever went wrong.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cluster::{self, Cluster};
use crate::history::{FinalRead, Fork, NemesisAction, NemesisEvent, Record, Transfer};
use crate::nemesis::{self, Roles};
use crate::recorder::Recorder;
use crate::verdict::{CheckerResult, Verdict};
use raftpg::postgres::parse_lsn;

use crate::workload::{self, connect_direct, Workloads};
use crate::{checker, hosts, report};

pub const NODES: u16 = 3;
const FORM_TIMEOUT: Duration = Duration::from_secs(120);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(120);
const WARMUP: Duration = Duration::from_secs(3);

#[derive(Clone, Debug, Default)]
pub struct RunOpts {
    pub scenario: String,
    pub seed: u64,
    pub time: Duration,
    pub out: PathBuf,
    pub raftpg: PathBuf,
    /// Keep PostgreSQL's data directories even when the run is valid.
    pub keep_data: bool,
    /// TOML appended to every node's `raftpg.toml` (the canaries' unsafe settings).
    pub toml: String,
    /// `raftpg ctl config set` arguments, committed once the cluster formed.
    pub config: Vec<String>,
    /// The shortest and longest fault window, in milliseconds ((0, 0): [`WINDOW_MS`]).
    pub window_ms: (u64, u64),
}

/// The clock rates of skewed-clocks-isolate-primary: any two differ by at most 8 %, inside
/// the 10 % (`lease::DRIFT_PERMILLE`) the controller's deadline allows for.
pub const SKEWED_CLOCKS: [f64; 3] = [0.96, 1.0, 1.04];

/// How long a fault window holds its fault unless a run says otherwise.
pub const WINDOW_MS: (u64, u64) = (6_000, 10_000);

pub async fn run(opts: &RunOpts) -> anyhow::Result<Verdict> {
    hosts::require_root()?;
    nemesis::find(&opts.scenario)?;
    anyhow::ensure!(
        opts.raftpg.is_file(),
        "no raftpg executable at {}: build it (cargo build -p raftpg) or pass --raftpg PATH",
        opts.raftpg.display()
    );
    if opts.out.exists() {
        hosts::unmount_under(&opts.out);
        std::fs::remove_dir_all(&opts.out).with_context(|| format!("cannot clear {}", opts.out.display()))?;
    }
    std::fs::create_dir_all(&opts.out).with_context(|| format!("cannot create {}", opts.out.display()))?;
    for what in hosts::sweep()? {
        println!("swept a leftover of an earlier run: {what}");
    }
    hosts::setup(NODES).context("cannot build the hosts")?;
    let created = hosts::check_traffic(NODES)
        .and_then(|_| Cluster::create_with(&opts.out, NODES, &opts.raftpg, &opts.toml))
        .and_then(|mut c| {
            if opts.scenario == "full-disk-primary" {
                if let Err(e) = c.mount_disks(DISK_MB) {
                    c.unmount_disks(false);
                    return Err(e);
                }
            }
            Ok(c)
        });
    let mut c = match created {
        Ok(c) => c,
        Err(e) => {
            let _ = hosts::sweep();
            return Err(e);
        }
    };
    let result = drive(opts, &mut c).await;
    c.kill_all();
    let swept = hosts::sweep().context("teardown");
    c.unmount_disks(opts.keep_data || !matches!(&result, Ok(v) if v.valid));
    swept?;
    let verdict = result?;
    if verdict.valid && !opts.keep_data {
        for k in 1..=NODES {
            let _ = std::fs::remove_dir_all(c.pgdata(k));
        }
        // A 300 s run's history is 1-2 GB: a full tier would fill the disk. The verdict and
        // the report stay; an invalid run keeps everything.
        let _ = std::fs::remove_file(opts.out.join("history.jsonl"));
    }
    Ok(verdict)
}

/// full-disk-primary: each node's PGDATA on a filesystem of this many MB, room for a 300 s
/// run's WAL (the filled one is filled to the last byte).
const DISK_MB: u64 = 1024;

fn say(t0: Instant, text: &str) {
    println!("[{:6.1}s] {text}", t0.elapsed().as_secs_f64());
}

async fn drive(opts: &RunOpts, c: &mut Cluster) -> anyhow::Result<Verdict> {
    let t0 = Instant::now();
    say(
        t0,
        &format!(
            "{}: seed {}, {} s of faults, in {}",
            opts.scenario,
            opts.seed,
            opts.time.as_secs(),
            opts.out.display()
        ),
    );
    if opts.scenario == "skewed-clocks-isolate-primary" {
        anyhow::ensure!(
            hosts::sh("sh", &["-c", "command -v faketime"]).is_ok(),
            "skewed-clocks-isolate-primary needs faketime: apt-get install faketime"
        );
        c.clock_rates = SKEWED_CLOCKS.iter().map(|r| Some(*r)).collect();
        say(t0, &format!("clock rates n1..n3: {SKEWED_CLOCKS:?}"));
    }
    for k in 1..=NODES {
        c.start(k)?;
    }
    let primary = wait_formed(c).await?;
    say(
        t0,
        &format!("formed: primary {}, both standbys streaming", cluster::name(primary)),
    );
    if !opts.config.is_empty() {
        let mut args = vec!["config", "set"];
        args.extend(opts.config.iter().map(String::as_str));
        c.ctl(&args)?;
        say(t0, &format!("config set {}", opts.config.join(" ")));
    }
    workload::create_tables(primary)
        .await
        .context("cannot create the workload tables")?;
    let rec = Arc::new(Recorder::create(&opts.out.join("history.jsonl"))?);
    let clients = Workloads::start(rec.clone(), NODES, opts.seed);
    tokio::time::sleep(WARMUP).await;
    let last_heal = faults(opts, c, &rec, t0).await;
    clients.stop().await;
    heal_everything(c)?;
    let last_heal = last_heal?;
    say(
        t0,
        "clients stopped, every fault healed: waiting for the cluster to converge",
    );
    let converged = converge(c).await;
    let recovery_ms = converged.map(|_| last_heal.elapsed().as_millis() as u64);
    let mut finals = Vec::new();
    if converged.is_some() {
        for k in 1..=NODES {
            match final_read(k, &rec).await {
                Ok(f) => finals.push(f),
                Err(e) => say(t0, &format!("final read of {} failed: {e:#}", cluster::name(k))),
            }
        }
    }
    for f in finals {
        rec.record(Record::Final(f));
    }
    rec.flush()?;
    let verdict = judge(opts, &rec, converged.is_some(), recovery_ms, t0);
    std::fs::write(opts.out.join("verdict.json"), serde_json::to_string_pretty(&verdict)?)?;
    std::fs::write(opts.out.join("report.html"), report::render(&rec.history(), &verdict))?;
    say(
        t0,
        &format!(
            "{}: {} (report: {})",
            opts.scenario,
            verdict.word(),
            opts.out.join("report.html").display()
        ),
    );
    Ok(verdict)
}

/// The fault windows until the run's time is up; returns when the last
/// heal happened.
async fn faults(opts: &RunOpts, c: &mut Cluster, rec: &Recorder, t0: Instant) -> anyhow::Result<Instant> {
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let end = Instant::now() + opts.time;
    let mut last_heal = Instant::now();
    while Instant::now() < end {
        let (shortest, longest) = match opts.window_ms {
            (0, 0) => WINDOW_MS,
            span => span,
        };
        let window = Duration::from_millis(rng.gen_range(shortest..=longest.max(shortest)));
        let quiet = Duration::from_millis(rng.gen_range(2_000..=4_000));
        let (mut view, mut confirmed) = wait_confirmed_primary(c, Duration::from_secs(30)).await;
        if let Some(p) = view.primary.filter(|_| confirmed) {
            wait_writes_on(rec, p, WRITES_WAIT).await;
            // The roles may have changed during the wait: read them again.
            (view, confirmed) = wait_confirmed_primary(c, Duration::from_secs(30)).await;
        }
        let roles = Roles::of(&view, NODES, confirmed);
        // The fault starts when it is applied, not when applying it returned (a kill waits
        // for its processes to be gone; the clients see the fault before that).
        let started_ns = rec.now_ns();
        let mut fault = nemesis::start(&opts.scenario, &roles, c, &mut rng)?;
        let window = match fault.window_ms {
            Some((shortest, longest)) => Duration::from_millis(rng.gen_range(shortest..=longest)),
            None => window,
        };
        let event = |action, time_ns, fault: &nemesis::Fault| {
            Record::Nemesis(NemesisEvent {
                time_ns,
                fault: fault.fault.clone(),
                action,
                targets: fault.targets.clone(),
                intended: fault.intended.clone(),
                hit: fault.hit,
                detail: fault.detail.clone(),
            })
        };
        // A fault that escalates later than usual keeps its escalated part as long.
        let until = Instant::now() + window + fault.escalate_after.saturating_sub(Duration::from_secs(2));
        // The second half runs before the start is recorded, so that the record says
        // whether the whole fault hit (a failover it waited for may never come).
        match fault.later {
            Some(nemesis::Later::OnNewPrimary { generation, .. }) => {
                let mut seen = None;
                while Instant::now() < until && seen.is_none() {
                    seen = c
                        .view()
                        .await
                        .filter(|v| v.generation > generation && v.primary.is_some());
                    if seen.is_none() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                fault.on_new_primary(c, seen.as_ref())?;
            }
            Some(_) => {
                tokio::time::sleep(fault.escalate_after).await;
                fault.escalate(c)?;
            }
            None => {}
        }
        rec.record(event(NemesisAction::Start, started_ns, &fault));
        say(
            t0,
            &format!(
                "start {} on {:?} ({}){}",
                fault.fault,
                fault.targets,
                fault.detail,
                if fault.hit { "" } else { ": MISSED its role" }
            ),
        );
        match fault.flap {
            // Its own generator: the number of flaps depends on timing, and
            // the rest of the schedule must not.
            Some(p) => flap(p, until, &mut StdRng::seed_from_u64(rng.gen())).await?,
            None => tokio::time::sleep_until(until.into()).await,
        }
        fault.heal(c)?;
        last_heal = Instant::now();
        rec.record(event(NemesisAction::Stop, rec.now_ns(), &fault));
        say(t0, &format!("healed {}", fault.fault));
        let view = wait_primary(c, Duration::from_secs(30)).await;
        say(
            t0,
            &format!(
                "primary after the heal: {}",
                view.and_then(|v| v.primary)
                    .map(cluster::name)
                    .unwrap_or("none yet".into())
            ),
        );
        tokio::time::sleep(quiet).await;
    }
    Ok(last_heal)
}

/// Cuts `p` off and heals it, 200 to 600 ms each, until `until`.
async fn flap(p: u16, until: Instant, rng: &mut StdRng) -> anyhow::Result<()> {
    let pairs: Vec<(u16, u16)> = (1..=NODES).filter(|o| *o != p).map(|o| (p, o)).collect();
    let mut cut = false;
    while Instant::now() < until {
        cut = !cut;
        if cut {
            hosts::partition(NODES, &pairs, hosts::Cut::Drop)?;
        } else {
            hosts::heal(NODES)?;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..=600))).await;
    }
    hosts::heal(NODES)
}

/// Whatever a fault left: no cuts, nothing frozen or stopped, every raftpg running.
fn heal_everything(c: &mut Cluster) -> anyhow::Result<()> {
    hosts::heal(NODES)?;
    for k in 1..=NODES {
        hosts::freeze(k, false)?;
        hosts::signal(&hosts::node_pids(k), nix::sys::signal::Signal::SIGCONT);
        if c.raftpg_pid(k).is_none() {
            c.start(k)?;
        }
    }
    Ok(())
}

async fn wait_primary(c: &Cluster, timeout: Duration) -> Option<cluster::View> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(v) = c.view().await.filter(|v| v.primary.is_some()) {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The roles once raftpg names a primary whose PostgreSQL itself says it is one, so that a
/// fault starting right after a heal (a short window) does not miss a primary that is still
/// restarting or promoting; after `timeout`, what raftpg names, unconfirmed.
async fn wait_confirmed_primary(c: &Cluster, timeout: Duration) -> (cluster::View, bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let view = wait_primary(c, deadline.saturating_duration_since(Instant::now()))
            .await
            .unwrap_or_default();
        let confirmed = match view.primary {
            Some(p) => is_pg_primary(p).await,
            None => false,
        };
        if confirmed || Instant::now() >= deadline {
            return (view, confirmed);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How long a fault waits for the clients to write to a new primary.
const WRITES_WAIT: Duration = Duration::from_secs(10);

/// Waits, at most `limit`, until a write that started from now on reaches node `k`: a
/// fault on a primary the clients have not found yet (they reconnect after a failover)
/// tests nothing about writes, and the run would be vacuous (the 300 s tier's
/// kill-primary-node, seed 962094: a window began before any client wrote to the new
/// primary).
async fn wait_writes_on(rec: &Recorder, k: u16, limit: Duration) {
    let name = crate::cluster::name(k);
    let since = rec.now_ns();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if rec.last_write_ns(&name).is_some_and(|t| t >= since) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether node `k`'s PostgreSQL answers and is out of recovery.
async fn is_pg_primary(k: u16) -> bool {
    let ask = async {
        let c = connect_direct(k, 1).await.ok()?;
        let row = c.query_one("SELECT pg_is_in_recovery()", &[]).await.ok()?;
        Some(!row.get::<_, bool>(0))
    };
    tokio::time::timeout(Duration::from_secs(2), ask).await.ok().flatten() == Some(true)
}

/// One primary with every other node streaming from it.
async fn wait_formed(c: &Cluster) -> anyhow::Result<u16> {
    let deadline = Instant::now() + FORM_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(p) = c.view().await.and_then(|v| v.primary) {
            let streaming = async {
                let client = connect_direct(p, 1).await.ok()?;
                let row = client
                    .query_one("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND application_name <> 'pg_basebackup'", &[])
                    .await
                    .ok()?;
                Some(row.get::<_, i64>(0))
            };
            if streaming.await == Some(i64::from(NODES) - 1) {
                return Ok(p);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    anyhow::bail!(
        "the cluster did not form within {FORM_TIMEOUT:?}; the nodes' last errors:\n{}",
        c.last_errors(3)
    )
}

/// Waits until one primary's WAL has been replayed on every other node, on
/// the primary's timeline; returns the primary.
async fn converge(c: &Cluster) -> Option<u16> {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(p) = c.view().await.and_then(|v| v.primary) {
            if caught_up(p).await == Some(true) {
                return Some(p);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

async fn caught_up(p: u16) -> Option<bool> {
    let primary = connect_direct(p, 1).await.ok()?;
    let row = primary
        .query_one("SELECT pg_is_in_recovery(), pg_current_wal_lsn()::text", &[])
        .await
        .ok()?;
    if row.get::<_, bool>(0) {
        return Some(false);
    }
    let target = parse_lsn(row.get(1))?;
    for k in (1..=NODES).filter(|k| *k != p) {
        let s = connect_direct(k, 1).await.ok()?;
        let row = s
            .query_one(
                "SELECT pg_is_in_recovery(), COALESCE(pg_last_wal_replay_lsn()::text, '0/0')",
                &[],
            )
            .await
            .ok()?;
        if !row.get::<_, bool>(0) || parse_lsn(row.get(1))? < target {
            return Some(false);
        }
    }
    Some(true)
}

async fn final_read(k: u16, rec: &Recorder) -> anyhow::Result<FinalRead> {
    let c = connect_direct(k, 2).await?;
    let role = c.query_one("SELECT pg_is_in_recovery()", &[]).await?;
    let standby: bool = role.get(0);
    let tl: i32 = c
        .query_one(&format!("SELECT {}", workload::timeline_sql()), &[])
        .await?
        .get(0);
    let set = c
        .query("SELECT id FROM jset ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lists = c
        .query("SELECT key, vals FROM jappend", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let registers = c
        .query("SELECT key, val FROM jreg WHERE val IS NOT NULL", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let balances = c
        .query("SELECT balance FROM jbank ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let ledger = c
        .query("SELECT id, src, dst, amount FROM jledger ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| Transfer {
            id: r.get(0),
            from: r.get::<_, i32>(1) as u32,
            to: r.get::<_, i32>(2) as u32,
            amount: r.get(3),
        })
        .collect();
    let newest = c
        .query_opt(
            "SELECT name, pg_read_file('pg_wal/' || name) FROM pg_ls_waldir() \
             WHERE name ~ '^[0-9A-F]{8}\\.history$' ORDER BY name DESC LIMIT 1",
            &[],
        )
        .await?;
    let forks = newest
        .map(|r| parse_history_file(r.get(0), r.get(1)))
        .unwrap_or_default();
    Ok(FinalRead {
        time_ns: rec.now_ns(),
        node: cluster::name(k),
        role: if standby { "standby" } else { "primary" }.into(),
        timeline: tl as u32,
        set,
        lists,
        registers,
        balances,
        ledger,
        forks,
    })
}

/// A `.history` file: each line names a parent timeline and the LSN where
/// the next timeline of the chain (the next line's, or the file's own for
/// the last line) branched off it.
pub fn parse_history_file(file_name: &str, text: &str) -> Vec<Fork> {
    let own = u32::from_str_radix(&file_name[..8.min(file_name.len())], 16).unwrap_or(0);
    let lines = raftpg::postgres::timeline_switches(text);
    (0..lines.len())
        .map(|i| Fork {
            parent: lines[i].0,
            lsn: lines[i].1,
            timeline: lines.get(i + 1).map(|l| l.0).unwrap_or(own),
        })
        .collect()
}

fn judge(opts: &RunOpts, rec: &Recorder, converged: bool, recovery_ms: Option<u64>, t0: Instant) -> Verdict {
    let history = rec.history();
    let mut checkers = checker::check_all(&history);
    if checker::MUST_FAIL_OVER.contains(&opts.scenario.as_str()) {
        checkers.push(checker::failover_required(&history));
    }
    checkers.push(CheckerResult {
        name: "convergence".into(),
        status: if converged { "valid" } else { "invalid" }.into(),
        summary: match recovery_ms {
            Some(ms) => format!("one primary, every standby caught up {ms} ms after the last heal"),
            None => format!("the cluster did not converge within {CONVERGE_TIMEOUT:?} of the last heal"),
        },
        anomalies: vec![],
    });
    let starts: Vec<&NemesisEvent> = history
        .nemesis
        .iter()
        .filter(|e| e.action == NemesisAction::Start)
        .collect();
    let missed: Vec<String> = starts
        .iter()
        .filter(|e| !e.hit)
        .map(|e| {
            format!(
                "{} at {:.1}s missed {} ({})",
                e.fault,
                e.time_ns as f64 / 1e9,
                e.intended,
                e.detail
            )
        })
        .collect();
    let hits = starts.len() - missed.len();
    let counts = checker::counts(&history);
    // Checkers that saw no acknowledged operation prove nothing, whatever they say.
    let nothing_acknowledged = counts.ok == 0;
    let windows = checker::windows(&history);
    // A fault on the primary that received no write while it lasted tested nothing about
    // writes (the clients were elsewhere, or stuck).
    let idle: Vec<String> = windows
        .iter()
        .filter(|w| w.hit && w.intended == "primary" && w.attempted == 0)
        .map(|w| {
            format!(
                "{} at {:.1}s: its primary received no write",
                w.fault,
                w.start_ns as f64 / 1e9
            )
        })
        .collect();
    let vacuous = hits == 0
        || (opts.scenario != "chaos" && !missed.is_empty())
        || nothing_acknowledged
        || (opts.scenario != "chaos" && !idle.is_empty());
    let missed: Vec<String> = missed.into_iter().chain(idle).collect();
    let valid = checkers.iter().all(|c| c.status != "invalid");
    Verdict {
        scenario: opts.scenario.clone(),
        seed: opts.seed,
        valid,
        vacuous,
        vacuous_reason: (vacuous || !missed.is_empty()).then(|| {
            if nothing_acknowledged {
                let first = history.ops.iter().find_map(|o| o.error.clone());
                format!(
                    "no operation was acknowledged, so nothing was checked (first client error: {})",
                    first.as_deref().unwrap_or("none recorded")
                )
            } else if starts.is_empty() {
                "no fault started".to_string()
            } else {
                missed.join("; ")
            }
        }),
        checkers,
        failovers: checker::failovers(&history),
        recovery_ms,
        counts,
        windows,
        duration_ms: t0.elapsed().as_millis() as u64,
        dir: opts.out.display().to_string(),
    }
}

/// The raftpg next to this executable (both are built into one target dir).
pub fn default_raftpg() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("raftpg")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| Path::new("target/debug/raftpg").to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_files_give_the_fork_of_every_timeline() {
        let text = "1\t0/3000148\tno recovery target specified\n\n2\t0/5000000\tno recovery target specified\n";
        let forks = parse_history_file("00000003.history", text);
        assert_eq!(
            forks,
            vec![
                Fork {
                    timeline: 2,
                    parent: 1,
                    lsn: 0x3000148
                },
                Fork {
                    timeline: 3,
                    parent: 2,
                    lsn: 0x5000000
                },
            ]
        );
        assert!(parse_history_file("00000001.history", "").is_empty());
    }
}
