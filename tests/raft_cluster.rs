//! L1 with real processes: three `raftpg run` processes on loopback, killed and
//! restarted for real. Each test uses its own ports so they can run in parallel.

mod common;

use std::time::Duration;

use common::{phase, Cluster, RAFT_ONLY};

const FORM: Duration = Duration::from_secs(30);

async fn formed(c: &Cluster) -> String {
    for k in 1..=c.n {
        c.wait_leader_seen_by(k, FORM).await;
    }
    c.wait_leader_seen_by(1, FORM).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_elected_and_commands_commit_from_every_node() {
    let c = Cluster::start(21000, 3, RAFT_ONLY);
    phase("three nodes elect a leader and record the configured members");
    let leader = formed(&c).await;
    let s = c.status(1).await.unwrap();
    assert_eq!(s.members.len(), 3);
    assert!(s.members.iter().all(|m| m.raft_role == "voter"), "{:?}", s.members);

    phase("a command proposed on each node (followers forward) commits and applies everywhere");
    let mut last = 0;
    for k in 1..=3 {
        last = c
            .set(k, "postgresql.parameters.work_mem", &format!("{k}MB"))
            .await
            .expect("commit");
    }
    for k in 1..=3 {
        c.wait_for("every node applies the last command", FORM, || async {
            let s = c.status(k).await?;
            (s.revision >= last && s.config["postgresql.parameters.work_mem"] == "3MB").then_some(())
        })
        .await;
    }

    phase("a rejected command reaches the caller with its reason and changes nothing");
    let err = c.set(2, "lease_ms", "1").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("lease_ms must be between"), "{}", err.message());
    assert_eq!(c.status(2).await.unwrap().revision, last);

    phase("each node logged its role and the applied command");
    let leader_log = c.log_of(Cluster::node_index(&leader));
    assert!(
        leader_log.contains("Raft role: Leader"),
        "no role line in the leader's log"
    );
    assert!(c.log_of(1).contains("initialised with 3 members"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_leader_gives_a_new_leader_that_commits() {
    let mut c = Cluster::start(21500, 3, RAFT_ONLY);
    let old = formed(&c).await;
    let old_k = Cluster::node_index(&old);
    let rev = c.set(old_k, "lease_ms", "5000").await.unwrap();

    phase(&format!("kill -9 the Raft leader {old}"));
    c.kill9(old_k);
    let other = if old_k == 1 { 2 } else { 1 };
    let new = c
        .wait_for("a new leader", FORM, || async {
            let s = c.status(other).await?;
            (!s.raft_leader.is_empty() && s.raft_leader != old).then_some(s.raft_leader)
        })
        .await;
    phase(&format!("{new} leads and commits"));
    let rev2 = c.set(other, "lease_ms", "6000").await.expect("commit after failover");
    assert!(rev2 > rev);

    phase(&format!("{old} restarts and catches up from the log"));
    c.start_node(old_k);
    c.wait_for("the restarted node applies the new command", FORM, || async {
        let s = c.status(old_k).await?;
        (s.revision >= rev2 && s.config["lease_ms"] == "6000").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_catches_up_from_a_snapshot_after_the_log_was_purged() {
    let extra = "manage = false\n[raft]\nsnapshot_after_logs = 20\nlogs_to_keep = 5\n";
    let mut c = Cluster::start(22000, 3, extra);
    formed(&c).await;
    phase("n3 stops cleanly; 80 commands commit without it");
    assert!(c.stop(3), "n3 did not exit cleanly on SIGTERM");
    let mut rev = 0;
    for i in 0..80 {
        rev = c
            .set(1, "postgresql.parameters.work_mem", &format!("{i}kB"))
            .await
            .expect("commit");
    }
    c.wait_for("the others build a snapshot", FORM, || async {
        (c.log_of(1).contains("snapshot built") && c.log_of(2).contains("snapshot built")).then_some(())
    })
    .await;

    phase("n3 restarts: the entries it missed are purged, so it must install a snapshot");
    c.start_node(3);
    c.wait_for("n3 catches up", FORM, || async {
        let s = c.status(3).await?;
        (s.revision >= rev && s.config["postgresql.parameters.work_mem"] == "79kB").then_some(())
    })
    .await;
    assert!(
        c.log_of(3).contains("snapshot installed"),
        "n3 caught up without a snapshot"
    );

    phase("n3 restarts again and comes back from its own snapshot and log");
    assert!(c.stop(3));
    c.start_node(3);
    c.wait_for("n3 back at the same state", FORM, || async {
        let s = c.status(3).await?;
        (s.revision >= rev).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_restart_of_all_three_nodes_keeps_every_committed_command() {
    let mut c = Cluster::start(22500, 3, RAFT_ONLY);
    formed(&c).await;
    phase("commit 100 commands, each acknowledged");
    let mut acked = 0;
    for i in 0..100 {
        acked = c
            .set((i % 3) + 1, "postgresql.parameters.work_mem", &format!("{i}kB"))
            .await
            .expect("commit");
    }
    let term_before = c.status(1).await.unwrap().raft_term;

    phase("kill -9 all three nodes at once, then start them again");
    for k in 1..=3 {
        c.kill9(k);
    }
    for k in 1..=3 {
        c.start_node(k);
    }
    formed(&c).await;
    for k in 1..=3 {
        c.wait_for("every node has every acknowledged command", FORM, || async {
            let s = c.status(k).await?;
            (s.revision >= acked && s.config["postgresql.parameters.work_mem"] == "99kB").then_some(())
        })
        .await;
    }
    let s = c.status(1).await.unwrap();
    // With durable votes a restarted leader may restore its term, but a term never goes back.
    assert!(s.raft_term >= term_before, "the term went backwards: a vote was lost");
    assert_eq!(s.members.len(), 3);
    phase("the restarted group still commits");
    c.set(2, "lease_ms", "4500").await.expect("commit after cold restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_alone_cannot_commit_and_says_so() {
    let mut c = Cluster::start(23000, 3, RAFT_ONLY);
    formed(&c).await;
    phase("stop n2 and n3: n1 is alone");
    c.kill9(2);
    c.kill9(3);
    phase("a command on n1 fails with a reason, through raftpg ctl");
    let out = c
        .ctl_command(&c.grpc_addr(1))
        .args(["config", "set", "lease_ms=7000"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a lone node committed a command");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach a majority"), "unclear error: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "the reason is one line: {stderr}");
    c.wait_for("n1's log says it cannot commit", FORM, || async {
        c.log_of(1).contains("this node cannot commit anything").then_some(())
    })
    .await;
    let s = c.status(1).await.unwrap();
    assert_ne!(s.config["lease_ms"], "7000");

    phase("a peer comes back: commits work again");
    c.start_node(2);
    c.wait_for("commit with a majority again", FORM, || async {
        c.set(1, "lease_ms", "7000").await.ok()
    })
    .await;
}

#[test]
fn ctl_with_no_endpoint_answering_says_so() {
    let out = std::process::Command::new(common::BIN)
        .args(["ctl", "--endpoints", "127.0.0.1:1,127.0.0.1:2", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no endpoint answered") && stderr.contains("RAFTPG_ENDPOINTS"),
        "{stderr}"
    );
}

#[test]
fn run_with_a_bad_config_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[node]\nname = \"n1\"\ndata_dir = \"/tmp/x\"\nport = 5\n").unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.toml:4") && stderr.contains("port"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_valid_file_in_place_and_keeps_running_on_a_bad_one() {
    use nix::sys::signal::Signal;
    let c = Cluster::start(23500, 3, RAFT_ONLY);
    formed(&c).await;
    let path = c.config_path(1);
    let good = std::fs::read_to_string(&path).unwrap();
    let pid = c.raftpg_pid(1).unwrap();

    phase("SIGHUP with a broken file: an error says why, the node keeps running as it was");
    std::fs::write(&path, good.replace("[node]", "[node]\nbogus = 1")).unwrap();
    c.signal_raftpg(1, Signal::SIGHUP);
    c.wait_for("the reload error in n1's log", FORM, || async {
        c.log_of(1).contains("SIGHUP: the new file is not valid").then_some(())
    })
    .await;
    assert!(c.log_of(1).contains("bogus"), "the error names the key");
    assert_eq!(c.raftpg_starts(1), 1, "no restart");
    c.wait_leader_seen_by(1, FORM).await;

    phase("SIGHUP with a changed [hooks] section: raftpg restarts in place, same pid");
    std::fs::write(&path, format!("{good}\n[hooks]\ntimeout_s = 5\n")).unwrap();
    c.signal_raftpg(1, Signal::SIGHUP);
    c.wait_for("a second start of n1", FORM, || async {
        (c.raftpg_starts(1) == 2).then_some(())
    })
    .await;
    assert!(
        c.log_of(1).contains("SIGHUP:") && c.log_of(1).contains("[hooks]"),
        "the change is named"
    );
    assert_eq!(c.raftpg_pid(1), Some(pid));
    assert!(common::pg::alive(pid), "the same process runs");
    c.wait_leader_seen_by(1, FORM).await;

    phase("SIGHUP with the file unchanged still restarts in place (a new binary is picked up)");
    c.signal_raftpg(1, Signal::SIGHUP);
    c.wait_for("a third start of n1", FORM, || async {
        (c.raftpg_starts(1) == 3).then_some(())
    })
    .await;
    assert!(c.log_of(1).contains("no section; a new binary on disk is picked up"));
    c.wait_leader_seen_by(1, FORM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_keys_commit_together_or_not_at_all_and_edit_config_applies_a_diff() {
    let c = Cluster::start(24000, 3, RAFT_ONLY);
    formed(&c).await;
    // Wait until the state is initialised (config shows).
    c.wait_for("the cluster state to be initialised", FORM, || async {
        let s = c.status(1).await?;
        s.config.contains_key("lease_ms").then_some(())
    })
    .await;
    let revision = |s: &raftpg::pb::control::ClusterStatus| s.revision;

    phase("ctl config set with two keys: one commit");
    let before = c.status(1).await.unwrap();
    c.ctl_ok(&["config", "set", "lease_ms=3000", "postgresql.parameters.work_mem=8MB"]);
    let after = c.status(1).await.unwrap();
    assert_eq!(revision(&after), revision(&before) + 1, "two keys, one command");
    assert_eq!(after.config["lease_ms"], "3000");
    assert_eq!(after.config["postgresql.parameters.work_mem"], "8MB");

    phase("one refused key refuses them all");
    c.ctl_fails(
        &["config", "set", "lease_ms=4000", "postgresql.parameters.port=1"],
        "port",
    );
    let s = c.status(1).await.unwrap();
    assert_eq!(s.config["lease_ms"], "3000", "the first key was applied alone");
    assert_eq!(revision(&s), revision(&after));

    phase("ctl edit-config: an editor changes one key, resets one, adds one");
    let editor = c.dir.path().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nset -e\nsed -i -e 's/^lease_ms = .*/lease_ms = 3500/' -e '/^postgresql.parameters.work_mem/d' \"$1\"\n\
         echo 'postgresql.parameters.max_locks_per_transaction = 128' >> \"$1\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = c
        .ctl_command(&c.endpoints())
        .arg("edit-config")
        .env("EDITOR", &editor)
        .env_remove("VISUAL")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("-lease_ms = 3000\n+lease_ms = 3500"), "{stdout}");
    assert!(stdout.contains("+postgresql.parameters.work_mem (reset)"), "{stdout}");
    let edited = c.status(1).await.unwrap();
    assert_eq!(revision(&edited), revision(&s) + 1, "one commit for the whole edit");
    assert_eq!(edited.config["lease_ms"], "3500");
    assert!(!edited.config.contains_key("postgresql.parameters.work_mem"));
    assert_eq!(edited.config["postgresql.parameters.max_locks_per_transaction"], "128");

    phase("an editor that changes nothing changes nothing; a broken line is named");
    let out = c
        .ctl_command(&c.endpoints())
        .arg("edit-config")
        .env("EDITOR", "true")
        .env_remove("VISUAL")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("no changes"));
    std::fs::write(&editor, "#!/bin/sh\necho 'not a setting' >> \"$1\"\n").unwrap();
    let out = c
        .ctl_command(&c.endpoints())
        .arg("edit-config")
        .env("EDITOR", &editor)
        .env_remove("VISUAL")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not key = value") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(revision(&c.status(1).await.unwrap()), revision(&edited));
}
