//! Unplanned failover time on the demo's configuration: three `raftpg run`
//! processes with real PostgreSQL on loopback (scram-sha-256), default settings.
//! Three faults, each measured from the fault to the first write the background
//! writer sees acknowledged by another node:
//! - `kill`: kill -9 of the primary's raftpg and postmaster together;
//! - `freeze-primary`: SIGSTOP of the primary's postmaster and every process it
//!   forked, raftpg alive (a hung PostgreSQL);
//! - `freeze-standby`: one standby's PostgreSQL frozen that way, then `kill`;
//! - `freeze-raft-leader`: SIGSTOP of the Raft leader's raftpg (a standby's node): no
//!   failover should follow, so this one measures the longest gap between acknowledged
//!   writes in the 6 s after the freeze, all on the primary;
//! - `rolling-restart`: SIGUSR2 to every node's raftpg in turn, the primary's last
//!   (raftpg executes itself again and leaves PostgreSQL running, as an upgrade does):
//!   no failover and no PostgreSQL restart should follow, so this one too measures the
//!   longest gap between acknowledged writes, from the first signal to 6 s after the
//!   last node is back.
//!
//! Every acknowledged id is checked on every node at the end; faulted nodes are
//! brought back (rewound) between runs.
//!
//! `cargo bench --bench failover` (RUNS=N per fault, default 5; FAULTS=kill,freeze-primary,...;
//! LEASE_MS and EXTRA_CONFIG to measure other settings, see `common::BenchSettings`).
//! Prints every run, then the median and the max per fault.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::pg::Writer;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(120);
const FAULTS: [&str; 5] = [
    "kill",
    "freeze-primary",
    "freeze-standby",
    "freeze-raft-leader",
    "rolling-restart",
];

fn main() {
    let runs = common::count_from_env("RUNS", 5);
    let faults: Vec<String> = std::env::var("FAULTS")
        .map(|f| f.split(',').map(str::to_string).collect())
        .unwrap_or_else(|_| FAULTS.map(String::from).to_vec());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let settings = common::BenchSettings::from_env();
        let mut c = settings.start(29400, 3);
        c.wait_streaming(2, WAIT).await;
        settings.apply(&c);
        let w = Writer::start(&c.libpq()).await;
        let mut results = Vec::new();
        for fault in &faults {
            let mut samples = Vec::new();
            for run in 1..=runs {
                let primary = c.wait_streaming(2, WAIT).await;
                w.wait_ack_after(Instant::now(), None, WAIT).await;
                let port = c.pg_port(primary) as i32;
                let standby = if primary == 3 { 2 } else { 3 };
                if fault == "freeze-raft-leader" {
                    let gap = freeze_raft_leader(&c, &w, primary).await;
                    println!("{fault} run {run}: primary n{primary}; longest write gap {gap:.2?}, no failover");
                    samples.push(gap);
                    continue;
                }
                if fault == "rolling-restart" {
                    let gap = rolling_restart(&c, &w, primary).await;
                    println!("{fault} run {run}: primary n{primary}; longest write gap {gap:.2?}, no failover");
                    samples.push(gap);
                    continue;
                }
                let faulted_at = match fault.as_str() {
                    "kill" => {
                        c.kill9(primary);
                        c.kill9_postmaster(primary);
                        Instant::now()
                    }
                    "freeze-primary" => {
                        c.freeze_pg(primary);
                        Instant::now()
                    }
                    "freeze-standby" => {
                        c.freeze_pg(standby);
                        c.kill9(primary);
                        c.kill9_postmaster(primary);
                        Instant::now()
                    }
                    other => panic!("unknown fault {other}: use one of {FAULTS:?}"),
                };
                let first = w.wait_ack_after(faulted_at, Some(port), WAIT).await;
                let took = first.at - faulted_at;
                println!(
                    "{fault} run {run}: primary n{primary}; first write acknowledged by port {} after {took:.2?}",
                    first.port
                );
                samples.push(took);
                if fault != "freeze-primary" {
                    c.start_node(primary);
                }
            }
            results.push((fault.clone(), samples));
        }
        c.wait_streaming(2, WAIT).await;
        let (acks, unknown) = c.assert_no_loss(w, &[1, 2, 3], WAIT).await;
        for (fault, samples) in results {
            let what = if fault == "freeze-raft-leader" || fault == "rolling-restart" {
                format!("{fault}: longest gap between acknowledged writes")
            } else {
                format!("unplanned failover, {fault} -> first acknowledged write")
            };
            common::print_median_max(&what, samples);
        }
        println!(
            "acknowledged writes: {} all present on every node; unknown outcomes: {}",
            acks.len(),
            unknown.len()
        );
    });
}

/// Freezes the Raft leader's raftpg (once leadership is off the primary) for 6 s and
/// returns the longest gap between acknowledged writes meanwhile; asserts that the
/// primary kept its PostgreSQL and its generation.
async fn freeze_raft_leader(c: &common::Cluster, w: &Writer, primary: u16) -> Duration {
    use nix::sys::signal::Signal;
    let leader = c.wait_raft_leader_off(primary, WAIT).await;
    let generation = c.status(primary).await.unwrap().generation;
    let postmaster = c.postmaster_pid(primary);
    let port = c.pg_port(primary) as i32;
    c.signal_raftpg(leader, Signal::SIGSTOP);
    let longest = w.longest_gap(Instant::now(), Duration::from_secs(6), port, WAIT).await;
    c.signal_raftpg(leader, Signal::SIGCONT);
    assert_eq!(
        c.postmaster_pid(primary),
        postmaster,
        "the primary's PostgreSQL restarted"
    );
    assert_eq!(
        c.status(primary).await.unwrap().generation,
        generation,
        "a failover happened"
    );
    longest
}

/// SIGUSR2 to every node's raftpg in turn, the primary's last, each once the one before
/// is back; returns the longest gap between acknowledged writes, from the first signal
/// to 6 s after the last node is back. Asserts no PostgreSQL restart and no failover.
async fn rolling_restart(c: &common::Cluster, w: &Writer, primary: u16) -> Duration {
    use nix::sys::signal::Signal;
    let generation = c.status(primary).await.unwrap().generation;
    let postmasters: Vec<Option<i32>> = (1..=3).map(|k| c.postmaster_pid(k)).collect();
    let port = c.pg_port(primary) as i32;
    let began = Instant::now();
    for k in (1..=3).filter(|k| *k != primary).chain([primary]) {
        let before = c.raftpg_starts(k);
        c.signal_raftpg(k, Signal::SIGUSR2);
        c.wait_for(&format!("n{k}'s raftpg to start again"), WAIT, || async {
            (c.raftpg_starts(k) > before).then_some(())
        })
        .await;
        c.wait_leader_seen_by(k, WAIT).await;
        c.wait_streaming(2, WAIT).await;
    }
    let span = began.elapsed() + Duration::from_secs(6);
    let longest = w.longest_gap(began, span, port, WAIT).await;
    assert_eq!(
        (1..=3).map(|k| c.postmaster_pid(k)).collect::<Vec<_>>(),
        postmasters,
        "a PostgreSQL restarted"
    );
    assert_eq!(
        c.status(primary).await.unwrap().generation,
        generation,
        "a failover happened"
    );
    longest
}
