//! Unplanned failover time on the demo's configuration: three `raftpg run`
//! processes with real PostgreSQL on loopback, default settings. Each run kills
//! the primary's raftpg and postmaster together (kill -9) and measures, from
//! the kill to the first write the background writer sees acknowledged by
//! another node. Every acknowledged id is then checked on every node, and the
//! killed node is brought back (rewound) before the next run.
//!
//! `cargo bench --bench failover` (RUNS=N, default 7). Prints every run, the median and the max.

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
        let mut c = common::Cluster::start(29400, 3, "");
        c.wait_streaming(2, WAIT).await;
        let w = Writer::start(&c.libpq()).await;
        let mut samples = Vec::new();
        for run in 1..=runs {
            let primary = c.wait_streaming(2, WAIT).await;
            w.wait_ack_after(Instant::now(), None, WAIT).await;
            let port = c.pg_port(primary) as i32;
            c.kill9(primary);
            c.kill9_postmaster(primary);
            let killed = Instant::now();
            let first = w.wait_ack_after(killed, Some(port), WAIT).await;
            let took = first.at - killed;
            println!(
                "run {run}: killed n{primary}; first write acknowledged by port {} after {took:.2?}",
                first.port
            );
            samples.push(took);
            c.start_node(primary);
        }
        c.wait_streaming(2, WAIT).await;
        let (acks, unknown) = c.assert_no_loss(w, &[1, 2, 3], WAIT).await;
        let ids: Vec<i64> = acks.iter().map(|a| a.id).collect();
        common::print_median_max(
            "unplanned failover (kill -9 of the primary node -> first acknowledged write)",
            samples,
        );
        println!(
            "acknowledged writes: {} all present on every node; unknown outcomes: {}",
            ids.len(),
            unknown.len()
        );
    });
}
