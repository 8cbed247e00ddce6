//! L2, issue 16: shaping the topology of a real three-node cluster at runtime. Tags change
//! through Raft with `ctl member tags`; a `nosync` member streams asynchronously and leaves
//! the synchronous set (also under the next primary after a failover); a `noloadbalance`
//! member leaves the replica checks; and a background writer loses nothing.

mod common;

use std::time::Duration;

use common::pg::Writer;
use common::{phase, Cluster};

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
        &["member", "tags", &on, "replicatefrom=n1"],
        "unknown tag 'replicatefrom'",
    );
    c.ctl_fails(&["member", "tags", &on, "nosync"], "is not KEY=VALUE");
    c.ctl_fails(&["member", "tags", &on, "nosync=perhaps"], "true or false");
    c.ctl_fails(&["member", "tags", "n9", "nosync=true"], "unknown member 'n9'");

    phase("failover: the other standby is promoted; its only synchronous standby is the dead old primary");
    let killed = tokio::time::Instant::now();
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
