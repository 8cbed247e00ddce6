//! No gratuitous failover under saturation (issue 10 item 4). Three `raftpg run`
//! processes with real PostgreSQL on loopback (scram-sha-256), default settings, and
//! pgbench (16 clients, scale 10, TPC-B-like) at full speed through the libpq
//! multi-host string for `DURATION` seconds (default 600), twice: on the bare machine,
//! then with 4 busy-loop processes competing for the CPU. Nothing fails, so the
//! generation must not move. Each phase runs on a fresh cluster and prints pgbench's
//! transactions and failures, the failovers counted, and the longest gap between two
//! renewals of the primary's lease (`raftpg_lease_renewal_gap_max_seconds`; renewals
//! are due every lease/4 = 500 ms, the lease is 2 s).
//!
//! `cargo bench --bench saturation` (DURATION=seconds per phase, BUSY=busy loops, default 4;
//! LEASE_MS and EXTRA_CONFIG to measure other settings, see `common::BenchSettings`; with
//! `LEASE_MS` the renewals are due every `LEASE_MS / 4`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);

fn main() {
    let duration = common::count_from_env("DURATION", 600);
    let busy = common::count_from_env("BUSY", 4);
    let settings = common::BenchSettings::from_env();
    let pgbench = raftpg::postgres::bin::PgBinaries::find(None)
        .expect("PostgreSQL binaries")
        .tool("pgbench");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut lines = Vec::new();
    for (phase, loops, base) in [("bare machine", 0, 16500), ("with busy loops", busy, 17000)] {
        let line = rt.block_on(run_phase(&settings, &pgbench, phase, loops, base, duration));
        println!("{line}");
        lines.push(line);
    }
    println!("\nsaturation, pgbench -c 16 -j 2 -T {duration} at scale 10 through the multi-host string:");
    for l in lines {
        println!("  {l}");
    }
}

async fn run_phase(
    settings: &common::BenchSettings,
    pgbench: &std::path::Path,
    phase: &str,
    loops: usize,
    base: u16,
    duration: usize,
) -> String {
    let c = settings.start(base, 3);
    c.wait_streaming(2, WAIT).await;
    settings.apply(&c);
    let primary = c.wait_streaming(2, WAIT).await;
    let generation = c.status(primary).await.unwrap().generation;
    // What an application uses: the multi-host string, the password from the environment.
    let conninfo = raftpg::demo::libpq_string(c.base, c.n);
    let init = Command::new(pgbench)
        .args(["-i", "-q", "-s", "10", &conninfo])
        .env("PGPASSWORD", &c.password)
        .stdout(Stdio::null())
        .output()
        .expect("run pgbench -i");
    assert!(
        init.status.success(),
        "pgbench -i failed: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let mut hogs: Vec<std::process::Child> = (0..loops)
        .map(|_| {
            Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .expect("start a busy loop")
        })
        .collect();
    println!("{phase}: pgbench for {duration} s with {loops} busy loops, primary n{primary}");
    let out = tokio::task::spawn_blocking({
        let pgbench = pgbench.to_path_buf();
        let conninfo = conninfo.clone();
        let password = c.password.clone();
        move || {
            Command::new(pgbench)
                .args([
                    "-c",
                    "16",
                    "-j",
                    "2",
                    "-T",
                    &duration.to_string(),
                    "-P",
                    "60",
                    &conninfo,
                ])
                .env("PGPASSWORD", password)
                .output()
                .expect("run pgbench")
        }
    })
    .await
    .unwrap();
    for h in &mut hogs {
        let _ = h.kill();
        let _ = h.wait();
    }
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |name: &str| {
        report
            .lines()
            .find(|l| l.starts_with(name))
            .map_or("?".to_string(), |l| l[name.len()..].trim().to_string())
    };
    let processed = field("number of transactions actually processed:");
    let failed = field("number of failed transactions:");
    let tps = field("tps =");
    let after = c.status(primary).await.map(|s| s.generation);
    let failovers = after.map_or("unknown (the primary does not answer)".to_string(), |g| {
        (g - generation).to_string()
    });
    let gap = longest_renewal_gap(&c).await;
    assert!(
        out.status.success(),
        "{phase}: pgbench failed: {}\n{report}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(after, Some(generation), "{phase}: the generation moved");
    format!(
        "{phase} ({loops} busy loops): {processed} transactions, failed {failed}, tps {tps}; failovers {failovers}; \
         longest gap between lease renewals {gap}"
    )
}

/// The largest `raftpg_lease_renewal_gap_max_seconds` any node reports.
async fn longest_renewal_gap(c: &common::Cluster) -> String {
    let mut longest: Option<f64> = None;
    for k in 1..=c.n {
        let Some((200, body)) = c.http(k, "GET", "/metrics").await else {
            continue;
        };
        for l in body
            .lines()
            .filter(|l| l.starts_with("raftpg_lease_renewal_gap_max_seconds"))
        {
            if let Some(v) = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                longest = Some(longest.map_or(v, |m| m.max(v)));
            }
        }
    }
    longest.map_or("unknown (no node reports it)".to_string(), |s| {
        format!("{:.0} ms", s * 1000.0)
    })
}
