//! L1 membership: nodes in one process, talking real gRPC on loopback, grow
//! from three to four members (learner, then voter) and shrink again.

use std::time::Duration;

use openraft::ServerState;
use raftpg::cluster::Command;
use raftpg::config::Config;
use raftpg::demo::{render_config, TlsFiles};
use raftpg::node::{MembershipError, Node};
use raftpg::types::Generation;
use tokio::time::Instant;

const BASE: u16 = 24000;
const WAIT: Duration = Duration::from_secs(30);

fn config(dir: &std::path::Path, k: u16, n: u16) -> Config {
    let tls = TlsFiles::ensure(dir, 4).unwrap();
    let mut cfg = Config::parse(
        &render_config(dir, k, n, BASE, Some(&tls), "manage = false\n"),
        &format!("n{k}"),
    )
    .unwrap();
    cfg.resolve_paths(dir);
    cfg
}

async fn until<F: FnMut() -> bool>(what: &str, mut f: F) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn leader(nodes: &[Node]) -> Option<Node> {
    nodes.iter().find(|n| n.metrics().state == ServerState::Leader).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_to_four_members_then_remove_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for k in 1..=3 {
        nodes.push(raftpg::app::start(config(dir.path(), k, 3)).await.unwrap());
    }
    eprintln!("=== three nodes form a group");
    until("a leader with the state initialised", || {
        leader(&nodes).is_some_and(|l| l.state().state.initialized)
    })
    .await;
    let lead = leader(&nodes).unwrap();
    // The follower must know the members before it can refuse a change to one of them.
    until("every node applied the initial state", || {
        nodes.iter().all(|n| n.state().state.initialized)
    })
    .await;

    eprintln!("=== a follower refuses membership changes and names the leader");
    let follower = nodes.iter().find(|n| n.name() != lead.name()).unwrap();
    let err = follower.promote_voter("n1").await.unwrap_err();
    assert!(matches!(err, MembershipError::NotLeader(Some(_))), "{err}");

    eprintln!("=== n4 starts pristine and does not initialise a group of its own");
    let n4 = raftpg::app::start(config(dir.path(), 4, 4)).await.unwrap();
    let me4 = config(dir.path(), 4, 4).me().to_member();
    lead.add_learner(me4, false).await.expect("add learner");
    until("n4 receives the replicated state", || {
        n4.state().state.members.contains_key("n4")
    })
    .await;
    assert_eq!(n4.metrics().state, ServerState::Learner);

    eprintln!("=== n4 becomes a voter; a command still commits");
    lead.promote_voter("n4").await.expect("promote");
    until("n4 is a voter", || n4.raft.voter_ids().any(|id| id == 4)).await;
    let c = lead
        .propose(Command::Pause, Duration::from_secs(5))
        .await
        .expect("commit with four voters");
    until("n4 applies it", || n4.state().log_index >= c.log_index).await;

    eprintln!("=== the last synchronous standby stays: a Raft voter and a member of the state");
    let lead = leader(&nodes).unwrap();
    let commit = |cmd: Command| {
        let lead = lead.clone();
        async move { lead.propose(cmd, Duration::from_secs(5)).await.expect("commit") }
    };
    // No PostgreSQL here (manage = false, so no controller either): the primary and its
    // synchronous set are recorded by hand.
    commit(Command::Bootstrap {
        node: "n1".into(),
        system_identifier: 1,
    })
    .await;
    let sync_to = |standbys: &[&str]| Command::SetSyncStandbys {
        generation: Generation(1),
        standbys: standbys.iter().map(|s| s.to_string()).collect(),
    };
    commit(sync_to(&["n2"])).await;
    let err = lead.remove_member("n2").await.unwrap_err();
    assert!(err.to_string().contains("last synchronous standby"), "{err}");
    assert!(lead.raft.voter_ids().any(|id| id == 2), "n2 must still be a Raft voter");
    assert!(lead.state().state.members.contains_key("n2"));
    commit(sync_to(&["n2", "n3"])).await;

    eprintln!("=== n2 is removed from Raft and from the state");
    lead.remove_member("n2").await.expect("remove");
    until("n2 gone from the state on n4", || {
        !n4.state().state.members.contains_key("n2")
    })
    .await;
    assert!(!lead.raft.voter_ids().any(|id| id == 2));
    let err = lead.remove_member("n2").await.unwrap_err();
    assert!(matches!(err, MembershipError::UnknownMember(_)), "{err}");
    lead.propose(Command::Resume, Duration::from_secs(5))
        .await
        .expect("commit after removal");

    for n in nodes.iter().chain([&n4]) {
        n.shutdown().await;
    }
}
