//! Planned switchover write downtime on the demo's configuration: three `raftpg run`
//! processes with real PostgreSQL on loopback, default settings, a background writer
//! inserting through the libpq multi-host string. Each run asks `raftpg ctl switchover`
//! for the next standby and measures the write downtime: from the last write the old
//! primary acknowledged to the first write the new primary acknowledged. Every
//! acknowledged id is then checked on every node.
//!
//! `cargo bench --bench switchover` (RUNS=N, default 7; LEASE_MS and EXTRA_CONFIG to measure
//! other settings, see `common::BenchSettings`). Prints every run, the median and the max.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::pg::Writer;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(120);

fn main() {
    let runs = common::count_from_env("RUNS", 7);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let settings = common::BenchSettings::from_env();
        let c = settings.start(29700, 3);
        c.wait_streaming(2, WAIT).await;
        settings.apply(&c);
        let w = Writer::start(&c.libpq()).await;
        let mut downtimes = Vec::new();
        let mut commands = Vec::new();
        for run in 1..=runs {
            let primary = c.wait_streaming(2, WAIT).await;
            let target = primary % 3 + 1;
            c.wait_switchover_target(target, WAIT).await;
            w.wait_ack_after(Instant::now(), None, WAIT).await;
            let asked = Instant::now();
            let out = c.ctl_ok(&["switchover", "--to", &format!("n{target}")]);
            let answered = asked.elapsed();
            let old = c.pg_port(primary) as i32;
            let first = w.wait_ack_after(asked, Some(old), WAIT).await;
            let last_old = w
                .acks()
                .iter()
                .filter(|a| a.port == old && a.at < first.at)
                .map(|a| a.at)
                .max()
                .unwrap_or(asked);
            let downtime = first.at - last_old;
            println!(
                "run {run}: n{primary} -> n{target}: write downtime {downtime:.2?} (command returned after {answered:.2?}): {}",
                out.trim()
            );
            downtimes.push(downtime);
            commands.push(answered);
        }
        c.wait_streaming(2, WAIT).await;
        let (acks, unknown) = c.assert_no_loss(w, &[1, 2, 3], WAIT).await;
        let ids: Vec<i64> = acks.iter().map(|a| a.id).collect();
        let rewinds = (1..=3).filter(|k| c.log_of(*k).contains("pg_rewind onto")).count();
        common::print_median_max("planned switchover write downtime", downtimes);
        common::print_median_max("planned switchover ctl switchover returned", commands);
        println!(
            "acknowledged writes: {} all present on every node; unknown outcomes: {}; nodes that needed pg_rewind: {rewinds}",
            ids.len(),
            unknown.len()
        );
    });
}
