//! L2, issue 16: shaping the topology of a real three-node cluster at runtime. Tags change
//! through Raft with `ctl member tags`; a `nosync` member streams asynchronously and leaves
//! the synchronous set (also under the next primary after a failover); a `noloadbalance`
//! member leaves the replica checks; and a background writer loses nothing.

mod common;

use std::time::Duration;

use common::pg::Writer;
use common::{phase, Cluster};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The tests run one at a time (three to five PostgreSQL servers each, on two cores).
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

const FORM: Duration = Duration::from_secs(90);
const CHANGE: Duration = Duration::from_secs(30);

/// The primary's standbys as `pg_stat_replication` shows them, with their `sync_state`.
async fn replication(c: &Cluster) -> Option<(u16, Vec<(String, String)>)> {
    c.topology().await
}

/// Waits until the primary streams to both standbys, `tagged` asynchronously and the other
/// one as a quorum member, and every node's state records the other one alone as synchronous.
async fn wait_async(c: &Cluster, tagged: &str, timeout: Duration) -> u16 {
    c.wait_for(
        &format!("{tagged} to stream asynchronously, out of the synchronous set"),
        timeout,
        || async {
            let (primary, rows) = replication(c).await?;
            let state = |n: &str| rows.iter().find(|(a, _)| a == n).map(|(_, s)| s.clone());
            if rows.len() != 2 || state(tagged).as_deref() != Some("async") {
                return None;
            }
            let other = rows.iter().find(|(a, _)| a != tagged)?;
            if other.1 != "quorum" && other.1 != "sync" {
                return None;
            }
            for k in 1..=3 {
                let s = c.status(k).await?;
                if s.sync_standbys != [other.0.clone()] {
                    return None;
                }
            }
            Some(primary)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_at_runtime_shape_the_sync_set_and_the_replica_checks() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut c = Cluster::start(32000, 3, "");
    let primary = c.wait_streaming(2, FORM).await;
    let writer = Writer::start(&c.libpq()).await;
    let t = (1..=3).find(|k| *k != primary).unwrap();
    let other = (1..=3).find(|k| *k != primary && *k != t).unwrap();
    let (tn, on) = (format!("n{t}"), format!("n{other}"));

    phase("ctl member tags: nosync, noloadbalance and nofailover, one commit through Raft");
    // nofailover too, so that the failover below must promote the other standby.
    let out = c.ctl_ok(&[
        "member",
        "tags",
        &tn,
        "nosync=true",
        "noloadbalance=true",
        "nofailover=on",
    ]);
    assert!(out.contains(&format!("tags of {tn} changed")), "{out}");
    wait_async(&c, &tn, CHANGE).await;
    let names = c
        .query_one(primary, "SHOW synchronous_standby_names")
        .await
        .map(|r| r.get::<_, String>(0))
        .unwrap();
    assert!(names.contains(&on) && !names.contains(&tn), "{names}");

    phase("noloadbalance: /replica, /read-only and /async answer 503 on the tagged standby; /health 200");
    c.wait_for("the tagged standby to leave /replica", CHANGE, || async {
        (c.http(t, "GET", "/replica").await?.0 == 503).then_some(())
    })
    .await;
    for (path, code) in [
        ("/read-only", 503),
        ("/async", 503),
        ("/health", 200),
        ("/readiness", 200),
    ] {
        assert_eq!(c.http(t, "GET", path).await.map(|r| r.0), Some(code), "{tn} {path}");
    }
    assert_eq!(c.http(other, "GET", "/replica").await.map(|r| r.0), Some(200));
    assert_eq!(c.http(primary, "GET", "/read-only").await.map(|r| r.0), Some(200));

    phase("ctl list and its JSON show the tags");
    let table = c.ctl_ok(&["list"]);
    assert!(
        table.contains("Tags") && table.contains("nofailover nosync noloadbalance"),
        "{table}"
    );
    let json: serde_json::Value = serde_json::from_str(&c.ctl_ok(&["list", "--json"])).unwrap();
    let m = json["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == tn.as_str())
        .unwrap();
    assert_eq!(
        (m["nosync"].as_bool(), m["noloadbalance"].as_bool()),
        (Some(true), Some(true)),
        "{m}"
    );

    phase("bad tags: a second nosync, an unknown key, a missing value, an unknown member");
    c.ctl_fails(&["member", "tags", &on, "nosync=true"], "at least two");
    c.ctl_fails(
        &["member", "tags", &on, "replicate_from=n1"],
        "unknown tag 'replicate_from'",
    );
    c.ctl_fails(&["member", "tags", &on, &format!("replicatefrom={tn}")], "at least two");
    c.ctl_fails(&["member", "tags", &on, "nosync"], "is not KEY=VALUE");
    c.ctl_fails(&["member", "tags", &on, "nosync=perhaps"], "true or false");
    c.ctl_fails(&["member", "tags", "n9", "nosync=true"], "unknown member 'n9'");

    phase("failover: the other standby is promoted; its only synchronous standby is the dead old primary");
    let killed = Instant::now();
    c.kill9(primary);
    c.kill9_postmaster(primary);
    c.wait_for(&format!("{on} to be recorded as the new primary"), FORM, || async {
        let s = c.status(t).await?;
        (s.primary?.node == on).then_some(())
    })
    .await;
    let s = c.status(t).await.unwrap();
    assert_eq!(s.sync_standbys, [format!("n{primary}")], "the nosync member stays out");

    phase("clearing nosync lets the new primary acknowledge writes before the old one is back");
    c.ctl_ok(&["member", "tags", &tn, "nosync=false"]);
    let ack = writer
        .wait_ack_after(killed, Some(i32::from(c.pg_port(primary))), FORM)
        .await;
    assert_eq!(ack.port, i32::from(c.pg_port(other)));

    phase("the old primary rejoins; nosync again: the new primary streams to it asynchronously");
    c.start_node(primary);
    c.wait_streaming(2, FORM).await;
    c.ctl_ok(&["member", "tags", &tn, "nosync=true"]);
    assert_eq!(wait_async(&c, &tn, CHANGE).await, other);

    phase("clearing the tags: the member is synchronous and load-balanced again");
    c.ctl_ok(&[
        "member",
        "tags",
        &tn,
        "nosync=false",
        "noloadbalance=false",
        "nofailover=false",
    ]);
    c.wait_for("the cleared member to rejoin the synchronous set", CHANGE, || async {
        let s = c.status(1).await?;
        (s.sync_standbys.len() == 2 && s.sync_standbys.contains(&tn)).then_some(())
    })
    .await;
    c.wait_for("/replica to answer 200 again on the cleared member", CHANGE, || async {
        (c.http(t, "GET", "/replica").await?.0 == 200).then_some(())
    })
    .await;
    let table = c.ctl_ok(&["list"]);
    assert!(!table.contains("Tags"), "no member has a tag: {table}");
    c.assert_no_loss(writer, &[1, 2, 3], FORM).await;
}

/// `ctl member add` arguments for node `k` of the cluster.
fn member_args(c: &Cluster, k: u16) -> Vec<String> {
    let p = raftpg::demo::ports(c.base, k);
    let addr = |port: u16| format!("127.0.0.1:{port}");
    [
        "member",
        "add",
        "--name",
        &format!("n{k}"),
        "--id",
        &k.to_string(),
        "--raft",
        &addr(p.raft),
        "--grpc",
        &addr(p.grpc),
        "--pg",
        &addr(p.pg),
        "--http",
        &addr(p.http),
        "--replica",
    ]
    .map(String::from)
    .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_stay_outside_the_quorum_and_follow_every_primary() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut c = Cluster::start(32400, 3, "");
    let primary = c.wait_streaming(2, FORM).await;
    let writer = Writer::start(&c.libpq()).await;

    phase("add n4 and n5 as replicas: Raft learners, streaming asynchronously");
    for k in [4, 5] {
        c.add_node(k, "");
        let args = member_args(&c, k);
        let out = c.ctl_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.contains(&format!("n{k} added as a replica")), "{out}");
    }
    c.wait_for(
        "n4 and n5 to stream asynchronously, the voters in quorum",
        CHANGE,
        || async {
            let (p, rows) = c.topology().await?;
            let async_ = rows.iter().filter(|(_, st)| st == "async").count();
            (p == primary
                && rows.len() == 4
                && async_ == 2
                && rows.iter().all(|(a, st)| (st == "async") == (a == "n4" || a == "n5")))
            .then_some(())
        },
    )
    .await;
    let s = c.status(primary).await.unwrap();
    for m in &s.members {
        let learner = m.name == "n4" || m.name == "n5";
        assert_eq!(m.raft_role == "learner", learner, "{m:?}");
        assert_eq!(m.replica, learner, "{m:?}");
    }
    assert_eq!(s.sync_standbys.len(), 2);
    assert!(
        !s.sync_standbys.iter().any(|n| n == "n4" || n == "n5"),
        "{:?}",
        s.sync_standbys
    );
    let table = c.ctl_ok(&["list"]);
    assert!(table.contains("replica"), "{table}");

    phase("a replica is promoted only by a forced failover; a switchover never");
    c.ctl_fails(&["failover", "--to", "n4"], "replica outside the quorum");
    c.ctl_fails(&["switchover", "--to", "n4"], "replica outside the quorum");
    let plan = c.ctl_ok(&["failover", "--to", "n4", "--force", "--dry-run"]);
    assert!(
        plan.contains("worst-case loss: every acknowledged write n4 has not received"),
        "{plan}"
    );

    phase("losing both replicas changes nothing for writes");
    for k in [4, 5] {
        c.kill9(k);
        c.kill9_postmaster(k);
    }
    let since = Instant::now();
    writer.wait_ack_after(since, None, CHANGE).await;

    phase("then the primary dies: a voter is promoted, and the replicas follow it when back");
    let killed = Instant::now();
    c.kill9(primary);
    c.kill9_postmaster(primary);
    let ack = writer
        .wait_ack_after(killed, Some(i32::from(c.pg_port(primary))), FORM)
        .await;
    let new_primary = (1..=3)
        .find(|k| i32::from(c.pg_port(*k)) == ack.port)
        .expect("a voter took the writes");
    eprintln!("n{new_primary} took the writes {:?} after the kill", ack.at - killed);
    for k in [primary, 4, 5] {
        c.start_node(k);
    }
    c.wait_for(
        "the replicas and the old primary to stream from the new primary",
        FORM,
        || async {
            let (p, rows) = c.topology().await?;
            let replicas_async = rows
                .iter()
                .filter(|(a, st)| (a == "n4" || a == "n5") && st == "async")
                .count();
            (p == new_primary && rows.len() == 4 && replicas_async == 2).then_some(())
        },
    )
    .await;
    c.assert_no_loss(writer, &[1, 2, 3, 4, 5], FORM).await;
}

/// `member`'s walsender on node `k`'s PostgreSQL is streaming, and the slot it streams
/// through there is active (`slot`: the slot must exist and be active; otherwise it must
/// not exist).
async fn streams_to(c: &Cluster, k: u16, member: &str, slot: bool) -> Option<()> {
    let row = c
        .query_one(
            k,
            &format!(
                "SELECT (SELECT count(*) FROM pg_stat_replication WHERE application_name = '{member}' AND state = 'streaming'),
                        (SELECT bool_or(active) FROM pg_replication_slots WHERE slot_name = 'raftpg_{member}')"
            ),
        )
        .await?;
    let streaming: i64 = row.get(0);
    let active: Option<bool> = row.get(1);
    (streaming == 1 && (if slot { active == Some(true) } else { active.is_none() })).then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cascade_streams_from_its_upstream_and_is_rebuilt_when_that_fails_or_is_promoted() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut c = Cluster::start(29200, 3, "");
    let primary = c.wait_streaming(2, FORM).await;
    let writer = Writer::start(&c.libpq()).await;
    c.add_node(4, "");
    let args = member_args(&c, 4);
    c.ctl_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    c.wait_for("n4 to stream from the primary", CHANGE, || {
        streams_to(&c, primary, "n4", true)
    })
    .await;

    phase("replicatefrom: n4 streams from a standby, which keeps its slot; the primary drops its own");
    let upstream = (1..=3).find(|k| *k != primary).unwrap();
    let out = c.ctl_ok(&["member", "tags", "n4", &format!("replicatefrom=n{upstream}")]);
    assert!(out.contains(&format!("replicatefrom=n{upstream}")), "{out}");
    c.wait_for(
        &format!("n4 to stream from n{upstream} through its slot there"),
        CHANGE,
        || streams_to(&c, upstream, "n4", true),
    )
    .await;
    c.wait_for("the primary to drop n4's slot", CHANGE, || async {
        let row = c
            .query_one(
                primary,
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'raftpg_n4'",
            )
            .await?;
        (row.get::<_, i64>(0) == 0).then_some(())
    })
    .await;
    let table = c.ctl_ok(&["list"]);
    assert!(table.contains(&format!("replicatefrom=n{upstream}")), "{table}");
    c.ctl_fails(&["member", "tags", "n4", "replicatefrom=n9"], "no member is called n9");
    c.ctl_fails(
        &["member", "tags", &format!("n{upstream}"), "replicatefrom=n4"],
        "is a loop",
    );

    phase("the upstream dies: n4 streams from the primary instead, without a slot");
    c.kill9(upstream);
    c.kill9_postmaster(upstream);
    let killed = Instant::now();
    c.wait_for("n4 to stream from the primary", CHANGE, || {
        streams_to(&c, primary, "n4", false)
    })
    .await;
    eprintln!(
        "n4 streamed from the primary {:?} after its upstream died",
        killed.elapsed()
    );
    assert!(
        c.log_of(4).contains("streaming from the primary instead"),
        "{}",
        c.log_of(4)
    );
    c.start_node(upstream);
    c.wait_switchover_target(upstream, FORM).await;

    phase("the upstream becomes primary: n4 streams from it, through the slot it kept");
    c.ctl_ok(&["switchover", "--to", &format!("n{upstream}")]);
    c.wait_for(
        &format!("n{upstream} to be primary, n4 streaming from it"),
        FORM,
        || async {
            let (p, rows) = c.topology().await?;
            (p == upstream && rows.len() == 3).then_some(())?;
            streams_to(&c, upstream, "n4", true).await
        },
    )
    .await;
    c.assert_no_loss(writer, &[1, 2, 3, 4], FORM).await;
}

/// A `pg_receivewal` consumer of the permanent slot `backup` on node `k`, as the replication
/// role with its password, writing into `dir`.
fn receivewal(c: &Cluster, k: u16, dir: &std::path::Path) -> std::process::Child {
    let password = std::fs::read_to_string(c.dir.path().join("secrets/replication.password")).unwrap();
    std::process::Command::new("/usr/lib/postgresql/15/bin/pg_receivewal")
        .args(["-D", dir.to_str().unwrap(), "--slot=backup", "--no-loop", "-v"])
        .args([
            "-d",
            &format!(
                "host=127.0.0.1 port={} user={} connect_timeout=2",
                c.pg_port(k),
                raftpg::config::DEFAULT_REPLICATION_USER
            ),
        ])
        .env("PGPASSWORD", password.trim())
        .stderr(std::fs::File::create(dir.with_extension(format!("n{k}.log"))).unwrap())
        .spawn()
        .expect("pg_receivewal runs")
}

/// (slot exists, is active, restart_lsn) of `backup` on node `k`.
async fn backup_slot(c: &Cluster, k: u16) -> Option<(bool, u64)> {
    let row = c
        .query_one(
            k,
            "SELECT active, (restart_lsn - '0/0')::bigint FROM pg_replication_slots WHERE slot_name = 'backup'",
        )
        .await?;
    Some((row.get(0), row.get::<_, Option<i64>>(1).unwrap_or(0) as u64))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_slot_follows_every_primary_and_its_consumer_resumes_after_a_failover() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut c = Cluster::start(29600, 3, "");
    let primary = c.wait_streaming(2, FORM).await;
    let writer = Writer::start(&c.libpq()).await;

    phase("ctl slots add: the primary creates the slot, reserved at once");
    c.ctl_fails(&["slots", "add", "raftpg_x"], "raftpg's own");
    c.ctl_fails(
        &[
            "slots",
            "add",
            "cdc",
            "--logical",
            "--plugin",
            "pgoutput",
            "--database",
            "postgres",
        ],
        "wal_level=logical",
    );
    let out = c.ctl_ok(&["slots", "add", "backup"]);
    assert!(out.contains("every primary keeps it"), "{out}");
    assert!(c.ctl_ok(&["slots", "list"]).contains("backup\tphysical"));
    c.wait_for("the primary to create the slot", CHANGE, || async {
        let (_, restart) = backup_slot(&c, primary).await?;
        (restart > 0).then_some(())
    })
    .await;

    phase("pg_receivewal streams from it");
    let wal = c.dir.path().join("receivewal");
    std::fs::create_dir_all(&wal).unwrap();
    let mut consumer = receivewal(&c, primary, &wal);
    c.wait_for("pg_receivewal to use the slot", CHANGE, || async {
        let (active, _) = backup_slot(&c, primary).await?;
        active.then_some(())
    })
    .await;

    phase("the primary dies: the new primary creates the slot, and the consumer resumes there");
    let killed = Instant::now();
    c.kill9(primary);
    c.kill9_postmaster(primary);
    let ack = writer
        .wait_ack_after(killed, Some(i32::from(c.pg_port(primary))), FORM)
        .await;
    let new_primary = (1..=3)
        .find(|k| i32::from(c.pg_port(*k)) == ack.port)
        .expect("a standby took the writes");
    let _ = consumer.wait(); // --no-loop: it ends with its connection
    let promoted_at = c
        .query_one(new_primary, "SELECT (pg_current_wal_lsn() - '0/0')::bigint")
        .await
        .map(|r| r.get::<_, i64>(0) as u64)
        .unwrap();
    let mut consumer = receivewal(&c, new_primary, &wal);
    c.wait_for(
        "pg_receivewal to resume on the new primary, past the failover",
        FORM,
        || async {
            let (active, restart) = backup_slot(&c, new_primary).await?;
            (active && restart > promoted_at).then_some(())
        },
    )
    .await;
    assert!(
        consumer.try_wait().unwrap().is_none(),
        "pg_receivewal ended on the new primary"
    );
    let timelines: Vec<String> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        timelines.iter().any(|f| f.starts_with("00000002")),
        "no WAL of the new timeline received: {timelines:?}"
    );
    c.start_node(primary);
    c.wait_streaming(2, FORM).await;

    phase("the consumer goes away: after slot_ttl_ms its slot is dropped, logged, and removed");
    c.ctl_ok(&["config", "set", "slot_ttl_ms=2000"]);
    consumer.kill().unwrap();
    let _ = consumer.wait();
    c.wait_for("the idle slot to be dropped and removed", FORM, || async {
        let row = c
            .query_one(
                new_primary,
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'backup'",
            )
            .await?;
        (row.get::<_, i64>(0) == 0 && !c.ctl_ok(&["slots", "list"]).contains("backup")).then_some(())
    })
    .await;
    assert!(
        c.log_of(new_primary).contains("dropped replication slot backup"),
        "{}",
        c.log_of(new_primary)
    );
    c.ctl_ok(&["config", "set", "slot_ttl_ms="]);
    c.assert_no_loss(writer, &[1, 2, 3], FORM).await;
}

/// The value of `raftpg_sync_degraded` in node `k`'s `/metrics`.
async fn degraded_gauge(c: &Cluster, k: u16) -> Option<String> {
    let (_, body) = c.http(k, "GET", "/metrics").await?;
    body.lines()
        .find(|l| l.starts_with("raftpg_sync_degraded{"))
        .and_then(|l| l.rsplit(' ').next())
        .map(str::to_string)
}

/// Waits until node `k` sees a degraded window that is not returning, with `streaming` as
/// the members that streamed throughout it.
async fn wait_degraded(c: &Cluster, k: u16, streaming: &[&str]) {
    c.wait_for("the primary to degrade to asynchronous replication", CHANGE, || async {
        let d = c.status(k).await?.degraded?;
        (!d.restoring && d.streaming == streaming).then_some(())
    })
    .await;
}

/// A commit on node `k`'s PostgreSQL, directly (the writer's multi-host string may try a
/// frozen server first, whose handshake hangs until its timeout).
async fn commits_alone(c: &Cluster, k: u16) {
    c.wait_for("a commit on the degraded primary", CHANGE, || async {
        // Negative ids: never the writer's.
        c.query_one(
            k,
            "INSERT INTO writes (id) VALUES (-(random() * 1e15)::bigint) RETURNING id",
        )
        .await
        .map(|_| ())
    })
    .await;
}

/// Both standbys frozen until the primary runs degraded and commits alone; then the primary
/// is killed (raftpg and PostgreSQL) and the standbys thawed: the election refuses them all.
async fn degrade_then_kill_the_primary(c: &mut Cluster, primary: u16, standbys: &[u16]) {
    let frozen = freeze(c, standbys);
    wait_degraded(c, primary, &[]).await;
    commits_alone(c, primary).await;
    let before = refusals(c);
    c.kill9(primary);
    c.kill9_postmaster(primary);
    thaw(frozen);
    let c = &*c;
    c.wait_for("the election to refuse every standby", FORM, || async {
        (refusals(c) > before).then_some(())
    })
    .await;
}

/// Every id the writer saw acknowledged so far is on all three nodes.
async fn every_node_holds(c: &Cluster, writer: &Writer) {
    let acked = writer.acked_ids();
    for k in 1..=3 {
        c.assert_has_all(k, &acked, FORM).await;
    }
}

/// How many times the nodes' logs say an election refused every standby of a window.
fn refusals(c: &Cluster) -> usize {
    (1..=3)
        .map(|k| {
            c.log_of(k)
                .matches("no standby was streaming throughout the degraded window")
                .count()
        })
        .sum()
}

/// Frozen PostgreSQL processes, thawed when dropped: a failed test must not leave stopped
/// servers behind (they ignore the cleanup's SIGQUIT until they run again).
struct Frozen(Vec<i32>);

impl Drop for Frozen {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGCONT);
        }
    }
}

fn freeze(c: &Cluster, nodes: &[u16]) -> Frozen {
    Frozen(nodes.iter().flat_map(|k| c.freeze_pg(*k)).collect())
}

fn thaw(frozen: Frozen) {
    drop(frozen);
}

/// Issue 16, item 6: `synchronous_mode = degradable` on three nodes. Both standbys' PostgreSQL
/// hang (their raftpg lives, so Raft keeps its majority): the primary's commits wait a lease,
/// then it degrades to asynchronous replication, recorded in Raft and shown by `ctl list` and
/// `/metrics`, and the writer goes on. The standbys come back: the primary returns to its
/// quorum once they hold what it acknowledged alone, and nothing acknowledged is lost. Then
/// it degrades again and dies: no standby streamed throughout that window, so the election
/// refuses, and only a forced failover promotes one, stating the loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degradable_primary_goes_on_alone_returns_to_its_quorum_and_a_failover_in_the_window_states_the_loss() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut c = Cluster::start(17400, 3, "");
    let primary = c.wait_streaming(2, FORM).await;
    c.ctl_ok(&["config", "set", "synchronous_mode=degradable"]);
    let writer = Writer::start(&c.libpq()).await;
    let standbys: Vec<u16> = (1..=3).filter(|k| *k != primary).collect();
    assert_eq!(degraded_gauge(&c, primary).await.as_deref(), Some("0"));

    phase("both standbys' PostgreSQL hang: after a lease the primary degrades and writes go on");
    writer.wait_ack_after(Instant::now(), None, CHANGE).await;
    let froze = Instant::now();
    let frozen = freeze(&c, &standbys);
    wait_degraded(&c, primary, &[]).await;
    let degraded_at = Instant::now();
    commits_alone(&c, primary).await;
    eprintln!("degraded {:?} after the freeze (seen by the test)", degraded_at - froze);
    let table = c.ctl_ok(&["list"]);
    assert!(
        table.contains("Degraded since") && table.contains("acknowledges writes asynchronously"),
        "{table}"
    );
    assert_eq!(degraded_gauge(&c, primary).await.as_deref(), Some("1"));
    let json = c.ctl_ok(&["list", "--json"]);
    assert!(json.contains("\"degraded\": {"), "{json}");
    c.ctl_fails(
        &["failover", "--to", &format!("n{}", standbys[0])],
        "has not streamed throughout",
    );

    phase("they come back: the primary returns to its quorum once they hold its writes");
    let thawed = Instant::now();
    thaw(frozen);
    writer.wait_ack_after(thawed, None, CHANGE).await;
    let stalled = writer
        .acks()
        .windows(2)
        .filter(|w| w[1].at > froze && w[0].at < thawed)
        .map(|w| w[1].at - w[0].at)
        .max();
    eprintln!("the writer's longest wait for an acknowledgement around the window: {stalled:?}");
    c.wait_for("the degraded window to close", FORM, || async {
        let s = c.status(primary).await?;
        (s.degraded.is_none() && s.primary.as_ref()?.node == format!("n{primary}")).then_some(())
    })
    .await;
    eprintln!("the window closed {:?} after the thaw", thawed.elapsed());
    c.wait_for("the primary to run its quorum again", CHANGE, || async {
        let (p, rows) = c.topology().await?;
        (p == primary && rows.len() == 2 && rows.iter().all(|(_, st)| st == "quorum")).then_some(())
    })
    .await;
    assert_eq!(degraded_gauge(&c, primary).await.as_deref(), Some("0"));
    writer.wait_ack_after(Instant::now(), None, CHANGE).await;
    let log = c.log_of(primary) + &c.log_of(standbys[0]) + &c.log_of(standbys[1]);
    assert!(
        log.contains("degrading to asynchronous replication"),
        "no degradation logged"
    );
    assert!(log.contains("returning to the quorum"), "no return logged");
    every_node_holds(&c, &writer).await;

    phase("degraded again, the primary dies: the election refuses; back, the old primary is promoted again");
    degrade_then_kill_the_primary(&mut c, primary, &standbys).await;
    let s = c.status(standbys[0]).await.unwrap();
    assert!(s.primary.is_none() && !s.pending.is_empty(), "{s:?}");
    let generation = s.generation;
    c.start_node(primary);
    c.wait_for("the old primary to be promoted again", FORM, || async {
        let s = c.status(standbys[0]).await?;
        let p = s.primary?;
        (p.node == format!("n{primary}") && p.generation == generation).then_some(())
    })
    .await;
    writer.wait_ack_after(Instant::now(), None, FORM).await;
    every_node_holds(&c, &writer).await;

    phase("degraded once more, the primary dies: a forced failover promotes a standby and states the loss");
    c.wait_streaming(2, FORM).await;
    degrade_then_kill_the_primary(&mut c, primary, &standbys).await;
    let target = format!("n{}", standbys[0]);
    let out = c.ctl_ok(&["failover", "--to", &target, "--force"]);
    eprintln!("{out}");
    assert!(
        out.contains(&format!("failed over to {target}")) && out.contains("may be on it alone"),
        "{out}"
    );
    let ack = writer
        .wait_ack_after(Instant::now(), Some(i32::from(c.pg_port(primary))), FORM)
        .await;
    assert_eq!(ack.port, i32::from(c.pg_port(standbys[0])));
    let _ = writer.stop().await;
}
