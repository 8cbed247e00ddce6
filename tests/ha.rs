//! L2: three `raftpg run` processes with real PostgreSQL on loopback.
//!
//! A background writer inserts unique ids through the libpq multi-host string
//! (`target_session_attrs=read-write`) with client-side timeouts and records
//! which were acknowledged; every test ends by checking that each acknowledged
//! id is on the final primary and on every streaming standby. The tests run one
//! at a time (three PostgreSQL servers each, on two cores).

mod common;

use std::time::Duration;

use common::pg::Writer;
use common::{phase, Cluster};
use nix::sys::signal::Signal;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Bootstrap (initdb, clone twice) and failover budget, generous for slow CI machines.
const FORM: Duration = Duration::from_secs(90);
const FAILOVER: Duration = Duration::from_secs(30);

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

async fn formed(base: u16) -> (Cluster, u16) {
    let c = Cluster::start(base, 3, "");
    let primary = c.wait_streaming(2, FORM).await;
    (c, primary)
}

/// Every acknowledged id is on the primary and on both streaming standbys.
async fn check_no_loss(c: &Cluster, writer: Writer) -> Vec<common::pg::Ack> {
    c.wait_streaming(2, FORM).await;
    let nodes: Vec<u16> = (1..=c.n).collect();
    c.assert_no_loss(writer, &nodes, FORM).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_gives_one_primary_two_quorum_standbys() {
    let _one = ONE_AT_A_TIME.lock().await;
    phase("three fresh nodes: exactly one initdb, two clones");
    let (c, primary) = formed(27000).await;
    phase("both standbys count towards the commit quorum (sync_state = quorum)");
    c.wait_for("sync_state = quorum for both standbys", FORM, || async {
        let (_, standbys) = c.topology().await?;
        (standbys.len() == 2 && standbys.iter().all(|(_, s)| s == "quorum")).then_some(())
    })
    .await;
    let s = c.status(1).await.unwrap();
    let p = s.primary.as_ref().expect("a primary in the Raft state");
    assert_eq!(p.node, format!("n{primary}"));
    assert_eq!((s.generation, p.timeline), (1, 1));
    let initdbs = (1..=3).filter(|k| c.log_of(*k).contains("initdb into")).count();
    assert_eq!(initdbs, 1, "exactly one node runs initdb");

    phase("synchronous_standby_names is ANY 1 of the others on the primary");
    let row = c.query_one(primary, "SHOW synchronous_standby_names").await.unwrap();
    let names: String = row.get(0);
    assert!(names.starts_with("ANY 1 ("), "{names}");

    phase("writes are acknowledged and reach every node");
    let w = Writer::start(&c.libpq()).await;
    w.wait_ack_after(Instant::now(), None, FAILOVER).await;
    check_no_loss(&c, w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_primary_node_fails_over_and_the_old_primary_rejoins_by_rewind() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (mut c, old) = formed(27100).await;
    let w = Writer::start(&c.libpq()).await;
    w.wait_ack_after(Instant::now(), None, FAILOVER).await;

    phase(&format!("kill -9 of n{old}'s raftpg and postmaster together"));
    let old_port = c.pg_port(old) as i32;
    let pm = c.postmaster_pid(old);
    c.kill9(old);
    c.kill9_postmaster(old);
    assert!(pm.is_some());
    let killed = Instant::now();
    let first = w.wait_ack_after(killed, Some(old_port), FAILOVER).await;
    phase(&format!(
        "a new primary (port {}) acknowledged a write {:?} after the kill",
        first.port,
        first.at - killed
    ));
    let survivor = if old == 1 { 2 } else { 1 };
    let s = c.status(survivor).await.unwrap();
    assert_eq!(s.generation, 2);
    let last = s.history.last().expect("history records the switch");
    assert_eq!(last.from, format!("n{old}"));
    assert_eq!(last.timeline, 2);
    assert!(last.reason.contains("lease"), "{}", last.reason);

    phase(&format!("n{old} comes back: rewound, streams on timeline 2"));
    c.start_node(old);
    let primary = c.wait_streaming(2, FORM).await;
    assert_ne!(primary, old);
    c.wait_for("the old primary to receive on timeline 2", FORM, || async {
        let row = c
            .query_one(old, "SELECT received_tli FROM pg_stat_wal_receiver")
            .await?;
        (row.get::<_, i32>(0) == 2).then_some(())
    })
    .await;
    assert!(
        c.log_of(old).contains("pg_rewind onto"),
        "the old primary was not rewound"
    );
    check_no_loss(&c, w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_primary_postmaster_restarts_in_place() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (c, primary) = formed(27200).await;
    let w = Writer::start(&c.libpq()).await;
    w.wait_ack_after(Instant::now(), None, FAILOVER).await;
    let before = c.postmaster_pid(primary).unwrap();

    phase(&format!("kill -9 of n{primary}'s postmaster only"));
    c.kill9_postmaster(primary);
    let killed = Instant::now();
    let port = c.pg_port(primary) as i32;
    c.wait_for("a new postmaster", FAILOVER, || async {
        c.postmaster_pid(primary).filter(|p| *p != before)
    })
    .await;
    let restarted = Instant::now();
    let ack = w.wait_ack_after(restarted, None, FAILOVER).await;
    assert_eq!(ack.port, port, "the same node must be primary again");
    phase(&format!(
        "writes acknowledged again {:?} after the kill",
        ack.at - killed
    ));
    let s = c.status(primary).await.unwrap();
    assert_eq!(s.generation, 1, "no failover happened");
    assert!(c.log_of(primary).contains("restarting it in place"));
    check_no_loss(&c, w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_of_the_primary_agent_old_primary_stops_acking_before_the_new_one_starts() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (c, old) = formed(27300).await;
    let w = Writer::start(&c.libpq()).await;
    w.wait_ack_after(Instant::now(), None, FAILOVER).await;

    phase(&format!("SIGSTOP of n{old}'s raftpg; its PostgreSQL keeps running"));
    let old_port = c.pg_port(old) as i32;
    c.signal_raftpg(old, Signal::SIGSTOP);
    let stopped = Instant::now();
    let first_new = w.wait_ack_after(stopped, Some(old_port), FAILOVER).await;
    phase(&format!(
        "new primary on port {} acknowledged after {:?}",
        first_new.port,
        first_new.at - stopped
    ));

    phase("the fence keeper stopped the old primary's PostgreSQL while raftpg was frozen");
    c.wait_for("the old primary's PostgreSQL to be down", FAILOVER, || async {
        c.query_one(old, "SELECT 1").await.is_none().then_some(())
    })
    .await;

    phase("SIGCONT: the stale agent must not act on its old view");
    c.signal_raftpg(old, Signal::SIGCONT);
    c.wait_for("the old primary to follow the new one", FORM, || async {
        let row = c.query_one(old, "SELECT pg_is_in_recovery()").await?;
        row.get::<_, bool>(0).then_some(())
    })
    .await;
    let acks = check_no_loss(&c, w).await;
    let last_old = acks
        .iter()
        .filter(|a| a.port == old_port && a.at > stopped - Duration::from_secs(60))
        .map(|a| a.at)
        .max();
    let first_new_at = acks.iter().filter(|a| a.port != old_port).map(|a| a.at).min().unwrap();
    if let Some(last_old) = last_old {
        assert!(
            last_old < first_new_at,
            "two writers: the old primary acknowledged {:?} after the new one's first acknowledgement",
            last_old - first_new_at
        );
    }
    let later_old = acks
        .iter()
        .filter(|a| a.port == old_port && a.at > first_new_at)
        .count();
    assert_eq!(
        later_old, 0,
        "the old primary acknowledged writes after the new primary's first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_a_standby_keeps_writes_going_without_failover() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (mut c, primary) = formed(27400).await;
    let w = Writer::start(&c.libpq()).await;
    w.wait_ack_after(Instant::now(), None, FAILOVER).await;
    let standby = if primary == 3 { 2 } else { 3 };

    phase(&format!("kill -9 of standby n{standby} (raftpg and postmaster)"));
    c.kill9(standby);
    c.kill9_postmaster(standby);
    let killed = Instant::now();
    let port = c.pg_port(primary) as i32;
    for _ in 0..20 {
        let a = w.wait_ack_after(Instant::now(), None, FAILOVER).await;
        assert_eq!(a.port, port, "writes stay on the primary");
    }
    let s = c.status(primary).await.unwrap();
    assert_eq!(s.generation, 1, "no failover for a standby");
    phase(&format!(
        "writes continued {:?} after the kill; n{standby} comes back",
        killed.elapsed()
    ));
    c.start_node(standby);
    check_no_loss(&c, w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_restart_of_all_nodes_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (mut c, _) = formed(27500).await;
    let w = Writer::start(&c.libpq()).await;
    for _ in 0..50 {
        w.wait_ack_after(Instant::now(), None, FAILOVER).await;
    }
    let (acks, _) = w.stop().await;
    let ids: Vec<i64> = acks.iter().map(|a| a.id).collect();

    phase("SIGTERM to all three nodes at once");
    for k in 1..=3 {
        c.signal_raftpg(k, Signal::SIGTERM);
    }
    for k in 1..=3 {
        assert!(c.stop(k), "n{k} did not stop cleanly");
        assert!(c.postmaster_pid(k).is_none(), "n{k}'s PostgreSQL still runs");
    }
    phase("start all three again");
    for k in 1..=3 {
        c.start_node(k);
    }
    c.wait_streaming(2, FORM).await;
    for k in 1..=3 {
        c.assert_has_all(k, &ids, FORM).await;
    }
    let w = Writer::start(&c.libpq()).await;
    w.wait_ack_after(Instant::now(), None, FAILOVER).await;
    check_no_loss(&c, w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_primary_raftpg_alone_fences_its_postgres() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (mut c, old) = formed(27600).await;
    let w = Writer::start(&c.libpq()).await;
    w.wait_ack_after(Instant::now(), None, FAILOVER).await;

    phase(&format!(
        "kill -9 of n{old}'s raftpg only: its PostgreSQL keeps running"
    ));
    let old_port = c.pg_port(old) as i32;
    c.kill9(old);
    let killed = Instant::now();
    c.wait_for("the fence keeper to stop the orphaned primary", FAILOVER, || async {
        c.query_one(old, "SELECT 1").await.is_none().then_some(())
    })
    .await;
    let fenced = killed.elapsed();
    let first_new = w.wait_ack_after(killed, Some(old_port), FAILOVER).await;
    phase(&format!(
        "old PostgreSQL fenced after {fenced:?}; new primary acknowledged after {:?}",
        first_new.at - killed
    ));
    c.start_node(old);
    let acks = check_no_loss(&c, w).await;
    let late = acks
        .iter()
        .filter(|a| a.port == old_port && a.at > first_new.at)
        .count();
    assert_eq!(
        late, 0,
        "the old primary acknowledged writes after the new primary's first"
    );
}
