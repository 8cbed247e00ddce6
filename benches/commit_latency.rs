//! Raft commit latency of a cluster-state command on three real `raftpg run`
//! processes on loopback: control API call → Raft leader → fdatasync on a
//! majority → applied → reply. Prints median, p99 and max.
//!
//! `cargo bench --bench commit_latency` (COMMITS=N to change the count).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use raftpg::pb::control::{PauseRequest, ResumeRequest};

fn report(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{label}: n={} median={:.2}ms p99={:.2}ms max={:.2}ms",
        samples.len(),
        ms(pick(0.5)),
        ms(pick(0.99)),
        ms(*samples.last().unwrap())
    );
}

fn main() {
    let commits = common::count_from_env("COMMITS", 1000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = common::Cluster::start(25000, 3, common::RAFT_ONLY);
        let leader = c.wait_leader_seen_by(1, Duration::from_secs(30)).await;
        for k in 2..=3 {
            c.wait_leader_seen_by(k, Duration::from_secs(30)).await;
        }
        let lk = common::Cluster::node_index(&leader);
        let fk = if lk == 1 { 2 } else { 1 };
        for (label, k) in [("via the Raft leader", lk), ("via a follower (forwarded)", fk)] {
            let mut client = c.client(k).await.expect("connect");
            let mut samples = Vec::with_capacity(commits);
            for i in 0..commits {
                let t = Instant::now();
                if i % 2 == 0 {
                    client.pause(PauseRequest {}).await.expect("pause commits");
                } else {
                    client.resume(ResumeRequest {}).await.expect("resume commits");
                }
                samples.push(t.elapsed());
            }
            report(&format!("commit latency, 3 nodes on loopback, {label}"), samples);
        }
    });
}
