//! The in-process tier: three real nodes (openraft, the sled store, the state machine, the
//! report handler and the lease book) in one test, connected by a `MemoryNet` instead of
//! gRPC, with messages lost per direction. Between the pure tests and real processes: it
//! checks what the composition of openraft and raftpg's own Raft code must guarantee,
//! faults included, in seconds and without a port.

use std::collections::BTreeSet;
use std::time::Duration;

use super::report::{ReportClient, ReportReply, ReportRequest};
use super::*;
use crate::protocol::{PgRole, Report};
use crate::raft::wire::MemoryNet;
use crate::types::Generation;

/// Long enough for an election on a loaded CI machine; the tests wait for conditions.
const WAIT: Duration = Duration::from_secs(20);

struct Trio {
    net: MemoryNet,
    nodes: Vec<Option<Node>>,
    dir: tempfile::TempDir,
}

fn addr(k: usize) -> String {
    format!("127.0.0.1:{}", 1000 + k)
}

fn config(dir: &std::path::Path, k: usize) -> Config {
    config_of(dir, k, 3)
}

/// Node `k`'s configuration in a cluster whose config files list members 1 to `members`.
fn config_of(dir: &std::path::Path, k: usize, members: usize) -> Config {
    let mut text = format!(
        "[node]\nname = \"n{k}\"\ndata_dir = \"{}/n{k}\"\n\n\
         [raft]\nsnapshot_after_logs = 10\nlogs_to_keep = 2\n\n\
         [postgres]\nmanage = false\nsuperuser_password_file = \"{0}/su.password\"\nreplication_password_file = \"{0}/repl.password\"\n",
        dir.display()
    );
    for m in 1..=members {
        text += &format!(
            "\n[[members]]\nname = \"n{m}\"\nid = {m}\nraft = \"{}\"\ngrpc = \"127.0.0.1:{}\"\n\
             pg = \"127.0.0.1:{}\"\nhttp = \"127.0.0.1:{}\"\n",
            addr(m),
            2000 + m,
            3000 + m,
            4000 + m
        );
    }
    Config::parse(&text, "memory-test.toml").expect("valid test config")
}

impl Trio {
    async fn start() -> Trio {
        let dir = tempfile::tempdir().expect("temp dir");
        let net = MemoryNet::default();
        let mut nodes = Vec::new();
        for k in 1..=3 {
            nodes.push(Some(
                Node::start_in_memory(config(dir.path(), k), &net)
                    .await
                    .expect("node starts"),
            ));
        }
        let t = Trio { net, nodes, dir };
        // The first leader commits `Init` with the configured members.
        for (k, n) in t.running() {
            let mut state = n.subscribe();
            tokio::time::timeout(WAIT, state.wait_for(|s| s.state.initialized))
                .await
                .unwrap_or_else(|_| panic!("n{k} applied no Init"))
                .expect("the state machine runs");
        }
        t
    }

    fn node(&self, k: usize) -> &Node {
        self.nodes[k - 1].as_ref().expect("node runs")
    }

    fn running(&self) -> impl Iterator<Item = (usize, &Node)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_ref().map(|n| (i + 1, n)))
    }

    /// Waits until node `k` sees a leader other than `not`, and returns it.
    async fn leader_seen_by(&self, k: usize, not: Option<u64>) -> u64 {
        let m = self
            .node(k)
            .raft
            .wait(Some(WAIT))
            .metrics(
                |m| m.current_leader.is_some() && m.current_leader != not,
                "a leader is known",
            )
            .await
            .unwrap_or_else(|e| panic!("n{k} saw no leader (other than {not:?}): {e}"));
        m.current_leader.expect("checked")
    }

    /// Waits until every running node has applied `index`.
    async fn applied_everywhere(&self, index: u64) {
        for (k, n) in self.running() {
            n.raft
                .wait(Some(WAIT))
                .applied_index_at_least(Some(index), "applied")
                .await
                .unwrap_or_else(|e| panic!("n{k} did not apply {index}: {e}"));
        }
    }

    async fn stop(&mut self, k: usize) {
        let n = self.nodes[k - 1].take().expect("node runs");
        n.shutdown().await;
    }

    async fn restart(&mut self, k: usize) {
        let n = Node::start_in_memory(config(self.dir.path(), k), &self.net)
            .await
            .expect("node restarts");
        self.nodes[k - 1] = Some(n);
    }

    async fn shutdown(mut self) {
        for k in 1..=self.nodes.len() {
            if self.nodes[k - 1].is_some() {
                self.stop(k).await;
            }
        }
    }
}

fn set(key: &str, value: &str) -> Command {
    Command::SetConfig {
        key: key.to_string(),
        value: Some(value.to_string()),
    }
}

fn renewal(node: &str, generation: Generation) -> ReportRequest {
    ReportRequest {
        node: node.to_string(),
        report: Report {
            generation,
            pg: PgRole::Primary,
            streaming: false,
            timeline: None,
            lsn: Some(0),
            standby_flush: Default::default(),
            final_position: None,
            reason: String::new(),
            sync_applied: None,
            pending_restart: false,
        },
        renew: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_and_commit_what_any_of_them_proposes() {
    let t = Trio::start().await;
    let leader = t.leader_seen_by(1, None).await;
    for k in 1..=3 {
        assert_eq!(t.leader_seen_by(k, None).await, leader, "n{k} names the same leader");
    }
    let mut last = 0;
    for k in 1..=3 {
        // Followers forward through the wire's Forward call; the leader commits locally.
        let committed = t
            .node(k)
            .propose(set("postgresql.parameters.work_mem", &format!("{k}MB")), WAIT)
            .await
            .unwrap_or_else(|e| panic!("n{k}'s proposal: {e}"));
        last = committed.log_index;
    }
    t.applied_everywhere(last).await;
    for (k, n) in t.running() {
        let state = n.state().state;
        assert_eq!(
            state
                .config_pairs()
                .get("postgresql.parameters.work_mem")
                .map(String::as_str),
            Some("3MB"),
            "n{k}'s state"
        );
        assert_eq!(state.members.len(), 3, "n{k} knows the three members");
    }
    t.shutdown().await;
}

/// The lease's premise, on real openraft: a Raft leader cut off from the others grants no
/// renewal (its ReadIndex finds no quorum), while the majority elects another leader that
/// commits; once healed, the old leader follows and has every entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_grants_no_renewal_while_the_majority_goes_on() {
    let t = Trio::start().await;
    let leader = t.leader_seen_by(1, None).await;
    let l = leader as usize;
    let primary = 1 + l % 3; // a follower is the primary, as the controller keeps it
    let other = 1 + primary % 3;
    assert!(other != l && other != primary);
    let p_name = format!("n{primary}");
    t.node(l)
        .propose(Command::ChooseBootstrap { node: p_name.clone() }, WAIT)
        .await
        .expect("choose bootstrap");
    let boot = t
        .node(other)
        .propose(
            Command::Bootstrap {
                node: p_name.clone(),
                system_identifier: 7,
            },
            WAIT,
        )
        .await
        .expect("bootstrap");
    t.applied_everywhere(boot.log_index).await;
    let generation = t.node(primary).state().state.generation;

    // The primary's renewal travels over the wire's Report call to the leader.
    let mut client = ReportClient::new(t.node(primary).wire.clone());
    let reply = client
        .send(&addr(l), &renewal(&p_name, generation), WAIT)
        .await
        .expect("the leader answers");
    assert!(
        matches!(
            reply,
            ReportReply::Accepted {
                lease_granted: true,
                ..
            }
        ),
        "a connected leader grants the primary's renewal: {reply:?}"
    );
    let reply = client
        .send(&addr(other), &renewal(&p_name, generation), WAIT)
        .await
        .expect("a follower answers");
    assert!(
        matches!(reply, ReportReply::NotLeader { leader: Some(x) } if x == leader),
        "a follower refuses and names the leader: {reply:?}"
    );

    t.net.isolate(&addr(l));
    let old = t.node(l);
    // As the primary's agent would ask it, were the primary on the leader's node.
    let reply = tokio::time::timeout(
        WAIT,
        report::handle(&old.raft, &old.sm, &old.book, renewal(&p_name, generation)),
    )
    .await
    .expect("the isolated leader answers once its leadership is not confirmed");
    assert!(
        matches!(reply, ReportReply::NotLeader { .. }),
        "an isolated leader must not grant a renewal: {reply:?}"
    );
    let new_leader = t.leader_seen_by(primary, Some(leader)).await;
    assert_eq!(t.leader_seen_by(other, Some(leader)).await, new_leader);
    let reply = client
        .send(&addr(new_leader as usize), &renewal(&p_name, generation), WAIT)
        .await
        .expect("the new leader answers");
    assert!(
        matches!(
            reply,
            ReportReply::Accepted {
                lease_granted: true,
                ..
            }
        ),
        "the new leader grants the renewal: {reply:?}"
    );
    let during = t
        .node(other)
        .propose(set("lease_ms", "3000"), WAIT)
        .await
        .expect("the majority commits");
    let refused = old.propose(set("lease_ms", "4000"), Duration::from_millis(1500)).await;
    assert!(refused.is_err(), "the isolated node cannot commit: {refused:?}");

    t.net.heal();
    t.applied_everywhere(during.log_index).await;
    assert_eq!(
        t.leader_seen_by(l, Some(leader)).await,
        new_leader,
        "the old leader follows"
    );
    assert_eq!(t.node(l).state().state.ha.lease_ms, 3000);
    t.shutdown().await;
}

/// A node that was down while the log was purged behind a snapshot catches up from the
/// snapshot, sent whole over the wire; a lost direction alone stops replication too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_after_the_log_was_purged_installs_the_snapshot() {
    let mut t = Trio::start().await;
    let leader = t.leader_seen_by(1, None).await as usize;
    let down = 1 + leader % 3;
    t.stop(down).await;
    let mut last = 0;
    for i in 0..30 {
        last = t
            .node(leader)
            .propose(set("postgresql.parameters.work_mem", &format!("{i}MB")), WAIT)
            .await
            .expect("two of three commit")
            .log_index;
    }
    t.node(leader)
        .raft
        .wait(Some(WAIT))
        .metrics(|m| m.purged.is_some_and(|p| p.index > 1), "log purged")
        .await
        .expect("the leader snapshots and purges its log");
    t.restart(down).await;
    t.applied_everywhere(last).await;
    let snapshot = t.node(down).metrics().snapshot;
    assert!(snapshot.is_some(), "n{down} caught up from a snapshot");
    assert_eq!(
        t.node(down)
            .state()
            .state
            .config_pairs()
            .get("postgresql.parameters.work_mem")
            .map(String::as_str),
        Some("29MB")
    );

    // The leader's messages to that node are lost, its replies would not be: nothing applies.
    t.net.cut(&addr(leader), &addr(down));
    let cut_off = t
        .node(leader)
        .propose(set("postgresql.parameters.work_mem", "64MB"), WAIT)
        .await
        .expect("the other follower makes a quorum")
        .log_index;
    let lagging = t
        .node(down)
        .raft
        .wait(Some(Duration::from_millis(600)))
        .applied_index_at_least(Some(cut_off), "applied across the cut")
        .await;
    assert!(lagging.is_err(), "n{down} applied an entry it never received");
    t.net.heal();
    t.applied_everywhere(cut_off).await;
    t.shutdown().await;
}

/// The lease across a change of Raft leader, on real openraft with the real controller on
/// every node: while the primary renews, the new leader's controller does not fail over
/// (its tenure starts a full deadline of its own); once the renewals stop, it fences the
/// primary's generation, and not before the lease the primary counts on its own clock ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_fails_over_only_after_the_primarys_own_lease_ended() {
    let (t, l, primary, other, generation) = bootstrapped_trio().await;
    let leader = l as u64;
    let p_name = format!("n{primary}");
    let lease_ms = t.node(primary).state().state.ha.lease_ms;

    // The primary's lease task, as the agent runs it: a renewal every lease/4 to whoever
    // leads, its lease counted from when it asked. `granted` follows the grants' send times.
    let holder = crate::lease::Holder::new();
    let (keep, keep_rx) = tokio::sync::watch::channel(true);
    let (granted_tx, mut granted) = tokio::sync::watch::channel(None::<tokio::time::Instant>);
    let renewer = {
        let (node, holder, req) = (t.node(primary).clone(), holder.clone(), renewal(&p_name, generation));
        tokio::spawn(async move {
            let mut client = ReportClient::new(node.wire.clone());
            let mut tick = tokio::time::interval(Duration::from_millis(lease_ms / 4));
            loop {
                tick.tick().await;
                if !*keep_rx.borrow() {
                    return;
                }
                let Some(leader) = node.metrics().current_leader else {
                    continue;
                };
                let sent = tokio::time::Instant::now();
                let reply = client
                    .send(&addr(leader as usize), &req, Duration::from_millis(lease_ms / 4))
                    .await;
                if let Ok(ReportReply::Accepted {
                    lease_granted: true,
                    view,
                }) = reply
                {
                    holder.granted_by(generation, sent, lease_ms, view.lease_remaining_ms);
                    granted_tx.send_replace(Some(sent));
                }
            }
        })
    };
    tokio::time::timeout(WAIT, granted.wait_for(Option::is_some))
        .await
        .expect("the leader grants the primary's renewal")
        .expect("the renewer runs");

    t.net.isolate(&addr(l));
    let new_leader = t.leader_seen_by(primary, Some(leader)).await;
    let elected = tokio::time::Instant::now();
    // Renewals granted by the new leader for longer than its controller's deadline.
    let past = elected + crate::lease::controller_deadline(lease_ms) + Duration::from_millis(200);
    tokio::time::timeout(WAIT, granted.wait_for(|g| g.is_some_and(|s| s > past)))
        .await
        .unwrap_or_else(|_| panic!("the new leader n{new_leader} granted no renewal"))
        .expect("the renewer runs");
    let s = t.node(other).state().state;
    assert_eq!(
        s.generation, generation,
        "no failover while the primary renews with the new leader: {:?}",
        s.pending
    );

    keep.send_replace(false);
    renewer.await.expect("the renewer stops");
    let expiry = holder.expiry(generation).expect("a lease was granted");
    let mut changes = t.node(other).subscribe();
    tokio::time::timeout(WAIT, changes.wait_for(|s| s.state.generation > generation))
        .await
        .expect("the controller fails over once the renewals stop")
        .expect("the state machine runs");
    let fenced = tokio::time::Instant::now();
    assert!(
        fenced >= expiry,
        "generation {generation} was fenced {:?} before the primary's own lease ended",
        expiry - fenced
    );
    eprintln!("fenced {:?} after the primary's lease ended", fenced - expiry);
    t.shutdown().await;
}

/// The lease task's fence, recorded: when it fenced, if it did.
struct Fenced(tokio::sync::watch::Sender<Option<tokio::time::Instant>>);

impl crate::agent::Fence for Fenced {
    fn fence(&self) -> impl std::future::Future<Output = ()> + Send {
        self.0.send_replace(Some(tokio::time::Instant::now()));
        std::future::ready(())
    }
}

/// Node `k` as primary of `generation`, with the agent's real lease task: it reports to
/// whoever leads, renews, and fences at the expiry of a held lease. In place of the agent,
/// an observation of a healthy primary every 100 ms, until the fence.
fn primary_lease_task(
    node: &Node,
    name: &str,
    generation: Generation,
) -> (
    crate::lease::Holder,
    tokio::sync::watch::Receiver<Option<tokio::time::Instant>>,
) {
    let mut report = renewal(name, generation).report;
    report.timeline = Some(crate::types::Timeline(1));
    let share = crate::agent::LeaseShare {
        holder: crate::lease::Holder::new(),
        outbox: std::sync::Arc::new(std::sync::Mutex::new(crate::agent::Outbox {
            report,
            renew: true,
            observed_at: Some(tokio::time::Instant::now()),
        })),
        wake: Default::default(),
    };
    let (fenced_tx, fenced) = tokio::sync::watch::channel(None);
    let (outbox, mut gone, mut stop) = (share.outbox.clone(), fenced.clone(), node.stop_signal());
    node.spawn("observer", async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tick.tick() => outbox.lock().expect("outbox").observed_at = Some(tokio::time::Instant::now()),
                _ = gone.wait_for(Option::is_some) => return,
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    });
    let holder = share.holder.clone();
    node.spawn(
        "lease",
        crate::agent::lease_loop(
            node.clone(),
            name.to_string(),
            Fenced(fenced_tx),
            None,
            share,
            node.stop_signal(),
        ),
    );
    (holder, fenced)
}

/// Waits (at most `WAIT`) until `done` holds, looking every 20 ms.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let give_up = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(tokio::time::Instant::now() < give_up, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Three nodes with the controller on each, and the follower after the Raft leader as the
/// bootstrapped primary: (trio, leader, primary, the third node, the primary's generation).
async fn bootstrapped_trio() -> (Trio, usize, usize, usize, Generation) {
    let t = Trio::start().await;
    for (_, n) in t.running() {
        n.spawn("controller", crate::controller::run(n.clone(), n.stop_signal()));
    }
    let l = t.leader_seen_by(1, None).await as usize;
    let primary = 1 + l % 3;
    let other = 1 + primary % 3;
    let name = format!("n{primary}");
    for cmd in [
        Command::ChooseBootstrap { node: name.clone() },
        Command::Bootstrap {
            node: name,
            system_identifier: 7,
        },
    ] {
        let c = t.node(other).propose(cmd, WAIT).await.expect("bootstrap commits");
        t.applied_everywhere(c.log_index).await;
    }
    let generation = t.node(primary).state().state.generation;
    (t, l, primary, other, generation)
}

/// The lease's promise, with the agent's real lease task and the real controller on real
/// Raft: a primary cut off from everyone fences itself before the others' failover commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_primary_fences_itself_before_the_others_fail_over() {
    let (t, l, primary, _, generation) = bootstrapped_trio().await;
    let (holder, mut fenced) = primary_lease_task(t.node(primary), &format!("n{primary}"), generation);
    until("the primary holds a lease", || holder.expiry(generation).is_some()).await;
    let mut changes = t.node(l).subscribe();

    t.net.isolate(&addr(primary));
    let fence = *tokio::time::timeout(WAIT, fenced.wait_for(Option::is_some))
        .await
        .expect("the isolated primary fences itself")
        .expect("the lease task runs");
    tokio::time::timeout(WAIT, changes.wait_for(|s| s.state.generation > generation))
        .await
        .expect("the majority fails over")
        .expect("the state machine runs");
    let failover = tokio::time::Instant::now();
    let fence = fence.expect("checked");
    assert!(
        fence < failover,
        "the failover committed {:?} before the old primary fenced",
        fence - failover
    );
    eprintln!("fenced {:?} before the failover committed", failover - fence);
    t.shutdown().await;
}

/// A change of Raft leader inside the lease: the lease task sends its renewal to the new
/// leader at once, so the primary is neither fenced nor failed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primarys_lease_outlives_a_change_of_raft_leader() {
    let (t, l, primary, other, generation) = bootstrapped_trio().await;
    let (holder, fenced) = primary_lease_task(t.node(primary), &format!("n{primary}"), generation);
    until("the primary holds a lease", || holder.expiry(generation).is_some()).await;
    let lease = Duration::from_millis(t.node(primary).state().state.ha.lease_ms);

    t.net.isolate(&addr(l));
    let new_leader = t.leader_seen_by(primary, Some(l as u64)).await;
    let elected = tokio::time::Instant::now();
    // Renewed by the new leader for longer than its controller's deadline.
    let past = elected + crate::lease::controller_deadline(lease.as_millis() as u64) + lease;
    until("the new leader renews past its controller's deadline", || {
        holder.expiry(generation).is_some_and(|e| e > past)
    })
    .await;
    assert_eq!(
        *fenced.borrow(),
        None,
        "the primary fenced itself while renewing with n{new_leader}"
    );
    let s = t.node(other).state().state;
    assert_eq!(
        s.generation, generation,
        "failed over a renewing primary: {:?}",
        s.pending
    );
    t.shutdown().await;
}

/// Joint consensus on real openraft, with raftpg's membership calls: a fourth member joins
/// (learner, then voter) while one voter is cut off, the cut-off voter is then removed, and
/// the three that are left commit on their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joins_and_another_leaves_while_it_is_cut_off() {
    let mut t = Trio::start().await;
    let l = t.leader_seen_by(1, None).await as usize;
    let cut = 1 + l % 3;
    t.net.isolate(&addr(cut));
    let n4 = Node::start_in_memory(config_of(t.dir.path(), 4, 4), &t.net)
        .await
        .expect("n4 starts");
    let member = n4
        .cfg
        .members
        .iter()
        .find(|m| m.name == "n4")
        .expect("n4 configured")
        .clone();
    t.nodes.push(Some(n4));
    let leader = t.node(l);
    leader
        .add_learner(member.to_member(), false)
        .await
        .expect("n4 joins as a learner and catches up");
    leader.promote_voter("n4").await.expect("n4 becomes a voter");
    let voters: BTreeSet<u64> = leader.raft.voter_ids().collect();
    assert_eq!(voters, BTreeSet::from([1, 2, 3, 4]));
    assert!(leader.state().state.member("n4").is_some(), "n4 is in the state");

    let gone = format!("n{cut}");
    leader.remove_member(&gone).await.expect("the cut-off voter is removed");
    let voters: BTreeSet<u64> = leader.raft.voter_ids().collect();
    assert!(!voters.contains(&(cut as u64)) && voters.len() == 3, "{voters:?}");
    let c = t
        .node(4)
        .propose(set("postgresql.parameters.work_mem", "4MB"), WAIT)
        .await
        .expect("the new voter's proposal commits");
    for k in (1..=4).filter(|k| *k != cut) {
        t.node(k)
            .raft
            .wait(Some(WAIT))
            .applied_index_at_least(Some(c.log_index), "applied")
            .await
            .unwrap_or_else(|e| panic!("n{k}: {e}"));
        let state = t.node(k).state().state;
        assert!(state.member(&gone).is_none(), "n{k} still lists {gone}");
        assert!(state.member("n4").is_some(), "n{k} lacks n4");
    }
    t.shutdown().await;
}
