//! The add-member workflow on the Raft leader (learner, recorded member, streaming,
//! voter, synchronous set) and reaching the leader from a follower.

use super::*;

/// A client to the Raft leader's control API, when this node is not the leader.
///
/// Right after a leader removed itself from the members, the others still name it
/// until they elect a new one: wait (at most 5 s) for a leader that is a member.
pub(super) async fn leader_client(node: &Node) -> Result<Option<ControlClient<Channel>>, Status> {
    let mut rx = node.raft.metrics();
    let found = async {
        loop {
            let leader = rx.borrow_watched().current_leader;
            if let Some(leader) = leader {
                if leader == node.id() {
                    return Ok(None);
                }
                if let Some(m) = node.state().state.member_by_id(leader) {
                    return Ok(Some(m.grpc_addr.clone()));
                }
            }
            if rx.changed().await.is_err() {
                return Err(Status::unavailable("the Raft node has stopped"));
            }
        }
    };
    let addr = match tokio::time::timeout(Duration::from_secs(5), found).await {
        Ok(Ok(Some(addr))) => addr,
        Ok(Ok(None)) => return Ok(None),
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(match node.metrics().current_leader {
                None => {
                    Status::unavailable("no Raft leader is known: is a majority of the members running and connected?")
                }
                Some(l) => Status::unavailable(format!(
                    "the Raft leader (node {l}) is not a member any more and no new leader was elected within 5 s"
                )),
            })
        }
    };
    let ch = node
        .transport
        .endpoint(&addr)
        .map_err(Status::internal)?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| Status::unavailable(format!("cannot reach the Raft leader at {addr}: {e}")))?;
    Ok(Some(ControlClient::new(ch)))
}

/// This node found it is no longer the Raft leader: waits (at most 5 s) until its
/// metrics name another one.
pub(super) async fn wait_leader_moved(node: &Node) {
    let me = node.id();
    let mut rx = node.raft.metrics();
    let moved = async {
        while rx.borrow_watched().current_leader.is_none_or(|l| l == me) {
            if rx.changed().await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), moved).await;
}

/// Why a step of adding a member stopped: leadership moved (ask the new leader), or a
/// real failure.
pub(super) enum Step {
    NotLeader,
    Failed(Status),
}

impl From<Status> for Step {
    fn from(s: Status) -> Step {
        Step::Failed(s)
    }
}

fn step(e: MembershipError) -> Step {
    match e {
        MembershipError::NotLeader(_) => Step::NotLeader,
        other => Step::Failed(membership_status(other)),
    }
}

/// Relays the Raft leader's progress of an `AddMember` to this caller.
pub(super) async fn forward_progress(
    leader: &mut ControlClient<Channel>,
    req: pb::AddMemberRequest,
    tx: &mpsc::Sender<Result<pb::Progress, Status>>,
) -> Result<(), Status> {
    let mut upstream = leader.add_member(req).await?.into_inner();
    while let Some(p) = upstream.message().await? {
        if tx.send(Ok(p)).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// Learner → recorded member (its agent clones) → streaming → voter → synchronous set.
/// A replica stops at streaming: it stays a learner, outside the quorum.
pub(super) async fn add_member(
    node: &Node,
    member: Member,
    replica: bool,
    tx: &mpsc::Sender<Result<pb::Progress, Status>>,
) -> Result<(), Step> {
    let say = |message: String, done: bool| {
        tracing::info!("add member: {message}");
        tx.send(Ok(pb::Progress { message, done }))
    };
    let name = member.name.clone();
    let _ = say(
        format!(
            "adding {name} (id {}) as a Raft learner at {}",
            member.id, member.raft_addr
        ),
        false,
    )
    .await;
    tokio::time::timeout(Duration::from_secs(60), node.add_learner(member, replica))
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!(
                "{name} did not catch up with the Raft log within 60s: is `raftpg run` running there, with this cluster's name?"
            ))
        })?
        .map_err(step)?;
    let _ = say(
        format!("{name} holds the Raft log; its agent now clones PostgreSQL from the primary"),
        false,
    )
    .await;
    let deadline = Instant::now() + CLONE_TIMEOUT;
    let mut last = String::new();
    loop {
        let s = node.state().state;
        let rows = view::rows(&s, &node.cluster_view(), &node.raft_view());
        let row = rows.iter().find(|r| r.name == name);
        if row.is_some_and(|r| r.state == "streaming") {
            break;
        }
        let now = row.map(|r| format!("{}: {}", r.state, r.reason)).unwrap_or_default();
        if now != last {
            let _ = say(format!("{name} is {now}"), false).await;
            last = now;
        }
        if Instant::now() > deadline || tx.is_closed() {
            return Err(Status::deadline_exceeded(format!("{name} did not start streaming: {last}")).into());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if replica {
        let _ = say(
            format!(
                "{name} added as a replica: it streams asynchronously, stays a Raft learner outside the quorum, \
                 and is never promoted by an automatic failover"
            ),
            true,
        )
        .await;
        return Ok(());
    }
    let _ = say(
        format!("{name} streams from the primary: making it a Raft voter"),
        false,
    )
    .await;
    node.promote_voter(&name).await.map_err(step)?;
    let _ = say(
        format!("{name} is a voter; waiting for the synchronous set to include it"),
        false,
    )
    .await;
    let mut rx = node.subscribe();
    let wait = async {
        loop {
            let s = rx.borrow_and_update().state.clone();
            let in_set = s.sync_standbys.contains(&name) || s.ha.synchronous_mode == crate::cluster::SyncMode::Off;
            if in_set && s.sync_unconfirmed.is_empty() {
                return s;
            }
            if rx.changed().await.is_err() {
                return s;
            }
        }
    };
    let s = tokio::time::timeout(Duration::from_secs(30), wait).await.map_err(|_| {
        Status::deadline_exceeded(format!(
            "{name} is a voter but did not join the synchronous set within 30s"
        ))
    })?;
    let _ = say(
        format!(
            "{name} added: synchronous set ANY {} ({})",
            s.sync_quorum(),
            s.sync_standbys.iter().cloned().collect::<Vec<_>>().join(", ")
        ),
        true,
    )
    .await;
    Ok(())
}
