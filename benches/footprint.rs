//! What an idle cluster costs (issue 14): three `raftpg run` processes with real
//! PostgreSQL on loopback, the demo's configuration (default settings, TLS), no clients.
//! After the cluster formed and settled, measures over `WINDOW` seconds (default 60), for
//! each process: its RSS and PSS at the end (`/proc/PID/smaps_rollup`) and its CPU over the
//! window; then per node the raftpg process with its fence keeper and the tools it ran, and
//! the PostgreSQL server with every backend (those that came and went included: a parent's
//! reaped children count in its own times); and the whole machine's busy time.
//!
//! `cargo bench --bench footprint` (WINDOW=seconds, ROUNDS=windows, default 1;
//! LEASE_MS and EXTRA_CONFIG to measure other settings, see `common::BenchSettings`, for
//! example `EXTRA_CONFIG=$'[raft]\nheartbeat_ms = 150'`). Prints percentages of one core.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);

fn main() {
    let window = common::count_from_env("WINDOW", 60) as u64;
    let rounds = common::count_from_env("ROUNDS", 1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let settings = common::BenchSettings::from_env();
        let c = settings.start(16000, 3);
        c.wait_streaming(2, WAIT).await;
        settings.apply(&c);
        // Let the start-up work (clones, slots, leadership moves) finish.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let raftpg: Vec<i32> = (1..=3).filter_map(|k| c.raftpg_pid(k)).collect();
        let postmasters: Vec<i32> = (1..=3).filter_map(|k| c.postmaster_pid(k)).collect();
        let mut machine_pcts = Vec::new();
        for round in 1..=rounds {
            let before = Sample::take(&raftpg, &postmasters);
            let procs_before = processes();
            tokio::time::sleep(Duration::from_secs(window)).await;
            let after = Sample::take(&raftpg, &postmasters);
            let procs_after = processes();
            let secs = window as f64;
            let pct = |ticks: u64| ticks as f64 / ticks_per_second() / secs * 100.0;
            let machine = (after.machine_busy - before.machine_busy) as f64 / ticks_per_second() / secs * 100.0;
            machine_pcts.push(machine);
            println!("idle three-node cluster, window {round} of {rounds}: {window} s, % of one core");
            println!("  {:<34} {:>8} {:>8} {:>8}", "process", "RSS MB", "PSS MB", "CPU %");
            let roots: Vec<(String, i32)> = (1..=3u16)
                .flat_map(|k| {
                    let r = c.raftpg_pid(k).map(|p| (format!("n{k} raftpg"), p));
                    let pm = c.postmaster_pid(k).map(|p| (format!("n{k} postmaster"), p));
                    r.into_iter().chain(pm)
                })
                .collect();
            for (label, root) in &roots {
                let mut rows = vec![(label.clone(), *root)];
                for p in procs_after.iter().filter(|p| p.ppid == *root) {
                    rows.push((format!("  {} ({})", p.comm, p.pid), p.pid));
                }
                for (name, pid) in rows {
                    let cpu = |list: &[Proc]| list.iter().find(|p| p.pid == pid).map_or(0, |p| p.own);
                    let used = cpu(&procs_after).saturating_sub(cpu(&procs_before));
                    let (rss, pss) = memory_kb(pid);
                    println!(
                        "  {name:<34} {:>8.1} {:>8.1} {:>8.2}",
                        rss as f64 / 1024.0,
                        pss as f64 / 1024.0,
                        pct(used)
                    );
                }
            }
            println!(
                "  raftpg (3 processes, keepers and tools included): {:.2} %",
                pct(after.raftpg - before.raftpg)
            );
            println!(
                "  PostgreSQL (3 servers, all backends included): {:.2} %",
                pct(after.postgres - before.postgres)
            );
            println!("  whole machine (/proc/stat, everything running): {machine:.2} %");
        }
        machine_pcts.sort_by(f64::total_cmp);
        println!(
            "whole machine over {rounds} windows: median {:.2} % max {:.2} %",
            machine_pcts[machine_pcts.len() / 2],
            machine_pcts.last().unwrap()
        );
    });
}

struct Sample {
    raftpg: u64,
    postgres: u64,
    machine_busy: u64,
}

impl Sample {
    fn take(raftpg: &[i32], postmasters: &[i32]) -> Sample {
        let all = processes();
        let tree = |root: i32| -> u64 {
            // The root's own and reaped children's times, plus its live descendants' own.
            let mut total = all.iter().find(|p| p.pid == root).map_or(0, |p| p.own + p.reaped);
            let mut frontier = vec![root];
            while let Some(parent) = frontier.pop() {
                for p in all.iter().filter(|p| p.ppid == parent) {
                    total += p.own + p.reaped;
                    frontier.push(p.pid);
                }
            }
            total
        };
        Sample {
            raftpg: raftpg.iter().map(|p| tree(*p)).sum(),
            postgres: postmasters.iter().map(|p| tree(*p)).sum(),
            machine_busy: machine_busy(),
        }
    }
}

struct Proc {
    pid: i32,
    ppid: i32,
    comm: String,
    /// utime + stime, in clock ticks.
    own: u64,
    /// cutime + cstime: children that exited and were reaped.
    reaped: u64,
}

fn processes() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the command name, which may hold spaces: state is field 3.
            let rest: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
            let n = |i: usize| rest.get(i - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            let comm = stat[stat.find('(')? + 1..stat.rfind(')')?].to_string();
            Some(Proc {
                pid,
                ppid: n(4) as i32,
                comm,
                own: n(14) + n(15),
                reaped: n(16) + n(17),
            })
        })
        .collect()
}

/// Busy clock ticks of the whole machine (all CPUs) since boot.
fn machine_busy() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    cpu.iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .map(|(_, v)| v)
        .sum()
}

fn ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

/// (RSS, PSS) in kB from `/proc/PID/smaps_rollup`.
fn memory_kb(pid: i32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}
