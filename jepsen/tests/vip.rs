//! Issue 15, the floating IP (`[vip]`), on three network-namespace hosts: the address is
//! only ever on the node holding the primary's lease, and a client that connects to it
//! follows a failover. A probe lists, every 50 ms, which hosts carry the address; two at
//! once fails the test. The failure is raftpg itself killed with SIGKILL on the primary's
//! host: its fence keeper survives, fences PostgreSQL and removes the address when the
//! lease ends, and only then may another node take it. Needs root, as the suite does.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftpg_jepsen::{cluster, hosts};
use tokio::time::Instant;

const VIP: &str = "10.77.0.100";
const FORM: Duration = Duration::from_secs(120);

/// Which hosts carry the address now.
fn holders() -> Vec<u16> {
    (1..=3u16)
        .filter(|k| {
            hosts::sh(
                "ip",
                &["-n", &hosts::netns(*k), "-4", "-o", "addr", "show", "dev", "eth0"],
            )
            .is_ok_and(|out| out.contains(&format!("inet {VIP}/")))
        })
        .collect()
}

struct Cleanup(Option<cluster::Cluster>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            if std::thread::panicking() {
                eprintln!("{}", c.last_errors(20));
            }
            c.kill_all();
        }
        let _ = hosts::sweep();
    }
}

async fn wait_for<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_floating_ip_follows_the_primary_and_two_hosts_never_hold_it() {
    hosts::require_root().expect("the VIP test builds network namespaces: run it as root (CI does)");
    hosts::sweep().unwrap();
    hosts::setup(3).unwrap();
    let mut cleanup = Cleanup(None);
    // This test's binary is target/<profile>/deps/vip-*: raftpg is two levels up.
    let exe = std::env::current_exe().unwrap();
    let raftpg = exe.parent().unwrap().parent().unwrap().join("raftpg");
    assert!(raftpg.exists(), "{} is not built", raftpg.display());
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("\n[vip]\naddress = \"{VIP}/24\"\ninterface = \"eth0\"\n");
    let c = cleanup
        .0
        .insert(cluster::Cluster::create_with(dir.path(), 3, &raftpg, &extra).unwrap());
    for k in 1..=3 {
        c.start(k).unwrap();
    }

    // The probe, from the start: never two hosts at once.
    let most = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::<(Duration, Vec<u16>)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let probe = std::thread::spawn({
        let (most, seen, stop) = (most.clone(), seen.clone(), stop.clone());
        move || {
            while !stop.load(Ordering::Relaxed) {
                let h = holders();
                most.fetch_max(h.len(), Ordering::Relaxed);
                let mut s = seen.lock().unwrap();
                if s.last().is_none_or(|(_, last)| *last != h) {
                    s.push((t0.elapsed(), h));
                }
                drop(s);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    });

    let old = wait_for("a primary holding the VIP", FORM, || async {
        let p = c.view().await?.primary?;
        (holders() == [p]).then_some(p)
    })
    .await;
    eprintln!("=== n{old} is primary and holds {VIP}");

    // A client through the VIP only.
    let acks = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let writing = Arc::new(AtomicBool::new(true));
    let writer = tokio::spawn({
        let (acks, writing) = (acks.clone(), writing.clone());
        async move {
            let conninfo = format!(
                "host={VIP} port={} user=postgres password={} dbname=postgres connect_timeout=1",
                cluster::PG_PORT,
                cluster::PASSWORD
            );
            let mut client: Option<tokio_postgres::Client> = None;
            while writing.load(Ordering::Relaxed) {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    client = match tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await {
                        Ok((cl, conn)) => {
                            tokio::spawn(conn);
                            let _ = cl
                                .batch_execute("CREATE TABLE IF NOT EXISTS vip (at timestamptz)")
                                .await;
                            Some(cl)
                        }
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    };
                }
                let cl = client.as_ref().unwrap();
                let done = tokio::time::timeout(
                    Duration::from_secs(1),
                    cl.execute("INSERT INTO vip VALUES (now())", &[]),
                )
                .await;
                match done {
                    Ok(Ok(_)) => acks.lock().unwrap().push(Instant::now()),
                    _ => client = None,
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    wait_for("a write through the VIP", FORM, || async {
        (!acks.lock().unwrap().is_empty()).then_some(())
    })
    .await;

    eprintln!(
        "=== SIGKILL of n{old}'s raftpg: its fence keeper fences PostgreSQL and removes the VIP at the lease's end"
    );
    let pid = c.raftpg_pid(old).expect("raftpg runs");
    hosts::signal(&[pid], nix::sys::signal::Signal::SIGKILL);
    let killed = Instant::now();
    c.reap(old);
    let new = wait_for("another host to hold the VIP", FORM, || async {
        let h = holders();
        (h.len() == 1 && h[0] != old).then(|| h[0])
    })
    .await;
    let moved = killed.elapsed();
    let first = wait_for("a write through the VIP on the new primary", FORM, || async {
        acks.lock().unwrap().iter().copied().find(|a| *a > killed + moved)
    })
    .await;
    eprintln!(
        "=== n{new} holds {VIP} {moved:?} after the kill; the client's first write through it {:?} after the kill",
        first - killed
    );
    let view = c.view().await.unwrap();
    assert_eq!(view.primary, Some(new), "the VIP is on the primary");

    eprintln!("=== n{old} comes back as a standby: the VIP stays on n{new}");
    c.start(old).unwrap();
    wait_for("the old primary to stream from the new one", FORM, || async {
        let (cl, conn) = tokio_postgres::connect(&cluster::conninfo(old, 1), tokio_postgres::NoTls)
            .await
            .ok()?;
        tokio::spawn(conn);
        let row = cl
            .query_opt("SELECT status FROM pg_stat_wal_receiver", &[])
            .await
            .ok()??;
        (row.get::<_, String>(0) == "streaming").then_some(())
    })
    .await;
    assert_eq!(holders(), [new]);

    writing.store(false, Ordering::Relaxed);
    let _ = writer.await;
    stop.store(true, Ordering::Relaxed);
    probe.join().unwrap();
    let history = seen.lock().unwrap().clone();
    eprintln!("=== holders over time: {history:?}");
    assert!(
        most.load(Ordering::Relaxed) <= 1,
        "two hosts held {VIP} at once: {history:?}"
    );
}
