//! Issue 15, hooks: real scripts called as the local PostgreSQL starts and changes role,
//! with Patroni's arguments and raftpg's environment, their output in raftpg's log.

mod common;

use std::time::Duration;

use common::pg::Writer;
use common::{phase, Cluster};
use tokio::time::Instant;

const FORM: Duration = Duration::from_secs(90);
const FAILOVER: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_run_on_start_and_on_role_change_with_their_environment() {
    let scripts = tempfile::tempdir().unwrap();
    let log = scripts.path().join("calls");
    let script = scripts.path().join("hook.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"hello from $1\"\necho \"$RAFTPG_MEMBER $1 $2 $3 $RAFTPG_HOOK $RAFTPG_ROLE $RAFTPG_GENERATION $RAFTPG_TIMELINE $RAFTPG_CLUSTER\" >> {}\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let extra = format!(
        "\n[hooks]\non_start = \"{0}\"\non_stop = \"{0}\"\non_role_change = \"{0}\"\ntimeout_s = 10\n",
        script.display()
    );
    let mut c = Cluster::start(19500, 3, &extra);
    let old = c.wait_streaming(2, FORM).await;
    let calls = || std::fs::read_to_string(&log).unwrap_or_default();

    phase("every node's on_start ran with its role");
    c.wait_for("three on_start calls", FORM, || async {
        let text = calls();
        (1..=3u16)
            .all(|k| text.lines().any(|l| l.starts_with(&format!("n{k} on_start "))))
            .then_some(())
    })
    .await;
    let text = calls();
    assert!(
        text.lines().any(|l| l.starts_with(&format!(
            "n{old} on_start primary raftpg-demo on_start primary 1 1 raftpg-demo"
        ))),
        "{text}"
    );
    assert!(
        text.lines().filter(|l| l.contains("on_start standby")).count() >= 2,
        "{text}"
    );
    assert!(
        c.log_of(old).contains("hello from on_start"),
        "the hook's output is logged"
    );

    phase("kill -9 of the primary's node: the new primary's on_role_change runs, generation 2, timeline 2");
    let w = Writer::start(&c.libpq()).await;
    w.wait_ack_after(Instant::now(), None, FAILOVER).await;
    c.kill9(old);
    c.kill9_postmaster(old);
    let killed = Instant::now();
    let first = w.wait_ack_after(killed, Some(c.pg_port(old) as i32), FAILOVER).await;
    let new = (1..=3u16).find(|k| c.pg_port(*k) as i32 == first.port).unwrap();
    c.wait_for("on_role_change on the new primary", FAILOVER, || async {
        calls()
            .lines()
            .any(|l| {
                l.starts_with(&format!(
                    "n{new} on_role_change primary raftpg-demo on_role_change primary 2 2 "
                ))
            })
            .then_some(())
    })
    .await;
    let _ = w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pre_promote_vetoes_its_candidate_and_the_next_one_is_promoted() {
    let scripts = tempfile::tempdir().unwrap();
    std::fs::set_permissions(scripts.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let calls = scripts.path().join("calls");
    let veto = scripts.path().join("veto");
    let script = scripts.path().join("pre_promote.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$RAFTPG_MEMBER $1 $2 $RAFTPG_HOOK $RAFTPG_GENERATION\" >> {calls}\n\
             if [ \"$RAFTPG_MEMBER\" = \"$(cat {veto} 2>/dev/null)\" ]; then echo 'pgbouncer on this host is down'; exit 3; fi\n",
            calls = calls.display(),
            veto = veto.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let extra = format!("\n[hooks]\npre_promote = \"{}\"\ntimeout_s = 10\n", script.display());
    let c = Cluster::start(24500, 3, &extra);
    let old = c.wait_streaming(2, FORM).await;
    let vetoed = (1..=3u16).find(|k| *k != old).unwrap();
    let other = (1..=3u16).find(|k| *k != old && *k != vetoed).unwrap();
    std::fs::write(&veto, format!("n{vetoed}")).unwrap();
    // The controllers' view lags pg_stat_replication: wait until every node sees both
    // standbys streaming, or the switchover is refused before the veto is ever reached.
    c.wait_switchover_target(vetoed, FORM).await;
    c.wait_switchover_target(other, FORM).await;
    let w = Writer::start(&c.libpq()).await;
    w.wait_ack_after(Instant::now(), None, FAILOVER).await;

    // A switchover: the old primary stops cleanly after handing all its WAL to both
    // standbys, so the other one holds everything too and may be promoted in its place. (In
    // a failover the vetoed target can be the only member holding the last acknowledged
    // write: the failover then waits for it, as the README says.)
    phase(&format!("ctl switchover --to n{vetoed}, whose pre_promote exits 3"));
    let out = c.ctl_ok(&["switchover", "--to", &format!("n{vetoed}")]);
    assert!(
        out.contains(&format!(
            "n{vetoed}'s pre_promote hook refused the promotion; n{other} was promoted instead"
        )),
        "{out}"
    );
    let s = c.status(other).await.unwrap();
    assert_eq!(s.primary.as_ref().unwrap().node, format!("n{other}"));
    let last = s.history.last().unwrap();
    assert!(last.reason.contains("pre_promote"), "{}", last.reason);
    let text = std::fs::read_to_string(&calls).unwrap();
    assert!(
        text.lines()
            .any(|l| l == format!("n{vetoed} pre_promote primary pre_promote 2")),
        "the vetoed candidate's hook ran with its generation: {text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("n{other} pre_promote primary pre_promote "))),
        "the next candidate's hook ran too: {text}"
    );
    let log = c.log_of(vetoed);
    assert!(
        log.contains("pgbouncer on this host is down"),
        "the hook's output is logged"
    );
    assert!(log.contains("pre_promote vetoed my promotion"), "the veto is logged");
    let row = c.query_one(vetoed, "SELECT pg_is_in_recovery()").await.unwrap();
    assert!(row.get::<_, bool>(0), "the vetoed candidate never promoted");

    phase("nothing acknowledged is lost");
    c.wait_streaming(2, FORM).await;
    let nodes: Vec<u16> = (1..=3).collect();
    c.assert_no_loss(w, &nodes, FORM).await;
}
