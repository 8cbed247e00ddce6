//! The public control service (`proto/control.proto`). Protobuf types stop here.
//!
//! Any node answers. Reads come from this node's applied state and the members' last
//! reports; commands are proposed through Raft (forwarded to the leader); membership
//! changes run on the Raft leader, so a follower forwards those RPCs to it.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use openraft::async_runtime::WatchReceiver;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::cluster::{ChangeKind, ClusterState, Command, Member, Pending, Rejection, ScheduledSwitchover, Tags};
use crate::decide::election::lsn;
use crate::decide::requests::{self, Refusal};
use crate::decide::view::{self, MemberRow};
use crate::node::{MembershipError, Node, ProposeError, PROPOSE_TIMEOUT};
use crate::pb::control as pb;
use crate::pb::control::control_client::ControlClient;
use crate::pb::control::control_server::Control;

/// How long a switchover or failover may take before the RPC returns DEADLINE_EXCEEDED.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a new member may take to clone its PostgreSQL and stream.
const CLONE_TIMEOUT: Duration = Duration::from_secs(3600);

type ProgressStream = Pin<Box<dyn Stream<Item = Result<pb::Progress, Status>> + Send>>;
type StatusStream = Pin<Box<dyn Stream<Item = Result<pb::ClusterStatus, Status>> + Send>>;

pub struct ControlServer {
    pub node: Node,
}

fn propose_status(e: ProposeError) -> Status {
    match e {
        ProposeError::Rejected(Rejection::UnknownMember(m)) => Status::not_found(format!("unknown member '{m}'")),
        e @ ProposeError::Rejected(_) => Status::failed_precondition(e.to_string()),
        e @ (ProposeError::NoLeader { .. } | ProposeError::Unknown { .. } | ProposeError::NotLeader { .. }) => {
            Status::unavailable(format!("{e}: is a majority of the members running and connected?"))
        }
        e @ ProposeError::Fatal(_) => Status::internal(e.to_string()),
    }
}

fn refusal_status(r: Refusal) -> Status {
    match r {
        Refusal::UnknownMember(m) => Status::not_found(m),
        Refusal::Precondition(m) => Status::failed_precondition(m),
    }
}

fn membership_status(e: MembershipError) -> Status {
    match e {
        MembershipError::UnknownMember(m) => Status::not_found(format!("unknown member '{m}'")),
        MembershipError::Propose(p) => propose_status(p),
        e @ MembershipError::NotLeader(_) => Status::unavailable(e.to_string()),
        e @ MembershipError::Raft(_) => Status::failed_precondition(e.to_string()),
    }
}

impl ControlServer {
    async fn commit(&self, cmd: Command) -> Result<crate::node::Committed, Status> {
        self.node.propose(cmd, PROPOSE_TIMEOUT).await.map_err(propose_status)
    }

    async fn reply(&self, cmd: Command) -> Result<Response<pb::CommandReply>, Status> {
        let c = self.commit(cmd).await?;
        Ok(Response::new(pb::CommandReply {
            log_index: c.log_index,
            revision: c.applied.revision,
            message: c.applied.message,
        }))
    }

    fn rows(&self, state: &ClusterState) -> Vec<MemberRow> {
        view::rows(state, &self.node.cluster_view(), &self.node.raft_view())
    }

    /// Waits until a primary of at least `generation` is recorded with nothing pending.
    async fn wait_for_primary(&self, generation: u64, started: Instant) -> Result<pb::ChangeReply, Status> {
        let mut rx = self.node.subscribe();
        let deadline = started + CHANGE_TIMEOUT;
        loop {
            let s = rx.borrow_and_update().state.clone();
            if let (None, Some(p)) = (&s.pending, &s.primary) {
                if p.generation >= generation && p.timeline.is_some() {
                    return Ok(pb::ChangeReply {
                        message: String::new(),
                        primary: p.node.clone(),
                        timeline: p.timeline.unwrap_or(0),
                        generation: p.generation,
                        took_ms: started.elapsed().as_millis() as u64,
                    });
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Status::unavailable("the node is shutting down")),
                Err(_) => {
                    return Err(Status::deadline_exceeded(format!(
                        "committed, but not finished after {}s: {}; follow it with `raftpg ctl list`",
                        CHANGE_TIMEOUT.as_secs(),
                        s.pending
                            .as_ref()
                            .map(describe_pending)
                            .unwrap_or_else(|| "no primary yet".into())
                    )))
                }
            }
        }
    }
}

#[tonic::async_trait]
impl Control for ControlServer {
    type WatchStream = StatusStream;
    type AddMemberStream = ProgressStream;

    async fn status(&self, _: Request<pb::StatusRequest>) -> Result<Response<pb::ClusterStatus>, Status> {
        Ok(Response::new(status(&self.node)))
    }

    async fn watch(&self, _: Request<pb::WatchRequest>) -> Result<Response<StatusStream>, Status> {
        let node = self.node.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let mut changes = node.subscribe();
            loop {
                changes.borrow_and_update();
                if tx.send(Ok(status(&node))).await.is_err() {
                    return;
                }
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn history(&self, _: Request<pb::HistoryRequest>) -> Result<Response<pb::HistoryReply>, Status> {
        let s = self.node.state().state;
        Ok(Response::new(pb::HistoryReply { entries: history(&s) }))
    }

    async fn switchover(&self, req: Request<pb::SwitchoverRequest>) -> Result<Response<pb::ChangeReply>, Status> {
        let req = req.into_inner();
        if req.to.trim().is_empty() {
            return Err(Status::invalid_argument("a switchover needs a target: --to NAME"));
        }
        let started = Instant::now();
        let s = self.node.state().state;
        let from = (!req.from.is_empty()).then_some(req.from.as_str());
        if req.at_unix_ms > crate::controller::now_unix_ms() {
            // Health is judged when the time comes; now only the names must be right.
            for name in std::iter::once(req.to.as_str()).chain(from) {
                if s.member(name).is_none() {
                    return Err(Status::not_found(format!("unknown member '{name}'")));
                }
            }
            let c = self
                .commit(Command::ScheduleSwitchover {
                    switchover: ScheduledSwitchover {
                        from: from.map(String::from),
                        to: req.to.clone(),
                        at_unix_ms: req.at_unix_ms,
                    },
                })
                .await?;
            return Ok(Response::new(pb::ChangeReply {
                message: c.applied.message,
                primary: s.primary_name().unwrap_or_default().to_string(),
                timeline: s.primary.as_ref().and_then(|p| p.timeline).unwrap_or(0),
                generation: s.generation,
                took_ms: 0,
            }));
        }
        requests::switchover(&s, &self.rows(&s), &req.to, from).map_err(refusal_status)?;
        let from_name = s.primary_name().unwrap_or_default().to_string();
        self.commit(Command::BeginSwitchover {
            generation: s.generation,
            to: req.to.clone(),
            reason: format!("switchover from {from_name} to {} requested", req.to),
        })
        .await?;
        let mut r = self.wait_for_primary(s.generation + 1, started).await?;
        r.message = if r.primary == req.to {
            format!(
                "switched over from {from_name} to {} (timeline {}, generation {}) in {} ms",
                r.primary, r.timeline, r.generation, r.took_ms
            )
        } else {
            format!(
                "the switchover stalled and became a failover: {} is the primary (timeline {}, generation {})",
                r.primary, r.timeline, r.generation
            )
        };
        Ok(Response::new(r))
    }

    async fn cancel_switchover(
        &self,
        _: Request<pb::CancelSwitchoverRequest>,
    ) -> Result<Response<pb::CommandReply>, Status> {
        self.reply(Command::CancelScheduledSwitchover).await
    }

    async fn failover(&self, req: Request<pb::FailoverRequest>) -> Result<Response<pb::ChangeReply>, Status> {
        let req = req.into_inner();
        if req.to.trim().is_empty() {
            return Err(Status::invalid_argument("a failover needs a target: --to NAME"));
        }
        let started = Instant::now();
        let s = self.node.state().state;
        let warning = requests::failover(&s, &self.rows(&s), &req.to, req.force).map_err(refusal_status)?;
        let reason = match &warning {
            Some(w) => w.clone(),
            None => format!("manual failover to {} requested", req.to),
        };
        self.commit(Command::BeginFailover {
            generation: s.generation,
            to: Some(req.to.clone()),
            forced: req.force,
            reason,
        })
        .await?;
        let mut r = self.wait_for_primary(s.generation + 1, started).await?;
        let mut message = if r.primary == req.to {
            format!(
                "failed over to {} (timeline {}, generation {}) in {} ms",
                r.primary, r.timeline, r.generation, r.took_ms
            )
        } else {
            format!(
                "{} could not be promoted without losing acknowledged writes; {} was promoted instead (timeline {}, generation {})",
                req.to, r.primary, r.timeline, r.generation
            )
        };
        if let Some(w) = warning {
            message = format!("{message}. {w}");
        }
        r.message = message;
        Ok(Response::new(r))
    }

    async fn restart(&self, req: Request<pb::RestartRequest>) -> Result<Response<pb::CommandReply>, Status> {
        let node = req.into_inner().member;
        self.reply(Command::Restart { node }).await
    }

    async fn reinit(&self, req: Request<pb::ReinitRequest>) -> Result<Response<pb::CommandReply>, Status> {
        let name = req.into_inner().member;
        let s = self.node.state().state;
        requests::reinit(&s, &self.rows(&s), &name).map_err(refusal_status)?;
        self.reply(Command::Reinit { node: name }).await
    }

    async fn add_member(&self, req: Request<pb::AddMemberRequest>) -> Result<Response<ProgressStream>, Status> {
        let req = req.into_inner();
        if let Some(mut leader) = leader_client(&self.node).await? {
            let upstream = leader.add_member(req).await?.into_inner();
            return Ok(Response::new(Box::pin(upstream)));
        }
        let again = req.clone();
        let member = to_member(
            req.member
                .ok_or_else(|| Status::invalid_argument("the member is missing"))?,
        )?;
        let s = self.node.state().state;
        if let Some(m) = s.member(&member.name) {
            if *m != member {
                return Err(Status::already_exists(format!(
                    "member name '{}' is already taken",
                    member.name
                )));
            }
        }
        if let Some(m) = s.member_by_id(member.id).filter(|m| m.name != member.name) {
            return Err(Status::already_exists(format!(
                "Raft id {} is already used by member '{}'",
                member.id, m.name
            )));
        }
        let (tx, rx) = mpsc::channel(16);
        let node = self.node.clone();
        tokio::spawn(async move {
            // Leadership can move during the change (an election, or the controller handing it
            // off the primary); every step is idempotent, so the new leader carries on.
            let mut attempts = 0;
            let result = loop {
                match add_member(&node, member.clone(), &tx).await {
                    Ok(()) => break Ok(()),
                    Err(Step::Failed(e)) => break Err(e),
                    Err(Step::NotLeader) if attempts < 3 => {
                        attempts += 1;
                        wait_leader_moved(&node).await;
                        match leader_client(&node).await {
                            Ok(Some(mut leader)) => break forward_progress(&mut leader, again, &tx).await,
                            Ok(None) => continue,
                            Err(e) => break Err(e),
                        }
                    }
                    Err(Step::NotLeader) => {
                        break Err(Status::unavailable(
                            "Raft leadership kept moving while adding the member: run the command again",
                        ))
                    }
                }
            };
            if let Err(e) = result {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn remove_member(&self, req: Request<pb::RemoveMemberRequest>) -> Result<Response<pb::CommandReply>, Status> {
        let req = req.into_inner();
        let s = self.node.state().state;
        requests::remove(&s, &self.rows(&s), &req.member).map_err(refusal_status)?;
        // Leadership can move between the check and the membership change (an election, or
        // the controller handing it off the primary): nothing changed then, so ask again.
        let mut attempts = 0;
        loop {
            if let Some(mut leader) = leader_client(&self.node).await? {
                return leader.remove_member(req).await;
            }
            match self.node.remove_member(&req.member).await {
                Err(MembershipError::NotLeader(_)) if attempts < 3 => {
                    attempts += 1;
                    wait_leader_moved(&self.node).await;
                }
                other => break other.map_err(membership_status)?,
            }
        }
        let s = self.node.state().state;
        Ok(Response::new(pb::CommandReply {
            log_index: self.node.state().log_index,
            revision: s.revision,
            message: format!("member {} removed", req.member),
        }))
    }

    async fn set_config(&self, req: Request<pb::SetConfigRequest>) -> Result<Response<pb::CommandReply>, Status> {
        let req = req.into_inner();
        if req.key.trim().is_empty() {
            return Err(Status::invalid_argument("key is empty: write key=value"));
        }
        let value = (!req.value.is_empty()).then_some(req.value);
        self.reply(Command::SetConfig { key: req.key, value }).await
    }

    async fn pause(&self, _: Request<pb::PauseRequest>) -> Result<Response<pb::CommandReply>, Status> {
        self.reply(Command::Pause).await
    }

    async fn resume(&self, _: Request<pb::ResumeRequest>) -> Result<Response<pb::CommandReply>, Status> {
        self.reply(Command::Resume).await
    }
}

/// A client to the Raft leader's control API, when this node is not the leader.
///
/// Right after a leader removed itself from the members, the others still name it
/// until they elect a new one: wait (at most 5 s) for a leader that is a member.
async fn leader_client(node: &Node) -> Result<Option<ControlClient<Channel>>, Status> {
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
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| Status::internal(e.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| Status::unavailable(format!("cannot reach the Raft leader at {addr}: {e}")))?;
    Ok(Some(ControlClient::new(ch)))
}

/// This node found it is no longer the Raft leader: waits (at most 5 s) until its
/// metrics name another one.
async fn wait_leader_moved(node: &Node) {
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

fn to_member(m: pb::Member) -> Result<Member, Status> {
    if m.name.trim().is_empty() || m.id == 0 {
        return Err(Status::invalid_argument("a member needs a name and a non-zero id"));
    }
    for (field, addr) in [
        ("raft", &m.raft_addr),
        ("grpc", &m.grpc_addr),
        ("pg", &m.pg_addr),
        ("http", &m.http_addr),
    ] {
        let ok = addr
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !ok {
            return Err(Status::invalid_argument(format!(
                "{field} address '{addr}' is not host:port"
            )));
        }
    }
    Ok(Member {
        name: m.name,
        id: m.id,
        raft_addr: m.raft_addr,
        grpc_addr: m.grpc_addr,
        pg_addr: m.pg_addr,
        http_addr: m.http_addr,
        tags: Tags {
            nofailover: m.nofailover,
            failover_priority: m.failover_priority,
        },
    })
}

/// Why a step of adding a member stopped: leadership moved (ask the new leader), or a
/// real failure.
enum Step {
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
async fn forward_progress(
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
async fn add_member(node: &Node, member: Member, tx: &mpsc::Sender<Result<pb::Progress, Status>>) -> Result<(), Step> {
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
    tokio::time::timeout(Duration::from_secs(60), node.add_learner(member))
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

fn history(s: &ClusterState) -> Vec<pb::HistoryEntry> {
    s.history
        .iter()
        .map(|h| pb::HistoryEntry {
            kind: h.kind.as_str().to_string(),
            parent_timeline: h.parent_timeline.unwrap_or(0),
            timeline: h.timeline,
            switch_lsn: h.switch_lsn.clone().unwrap_or_default(),
            reason: h.reason.clone(),
            from: h.from.clone().unwrap_or_default(),
            to: h.to.clone(),
            generation: h.generation,
        })
        .collect()
}

/// Builds the status message from the applied state, the members' reports and this
/// node's Raft metrics.
pub fn status(node: &Node) -> pb::ClusterStatus {
    let applied = node.state();
    let m = node.metrics();
    let s: &ClusterState = &applied.state;
    let raft = node.raft_view();
    let rows = view::rows(s, &node.cluster_view(), &raft);
    let leader = m.current_leader.map(|id| s.label_of(id));
    pb::ClusterStatus {
        cluster: node.cfg.cluster.name.clone(),
        answered_by: node.name().to_string(),
        node_raft_state: format!("{:?}", m.state).to_lowercase(),
        raft_leader: leader.unwrap_or_default(),
        raft_term: m.current_term,
        applied_index: applied.log_index,
        initialized: s.initialized,
        revision: s.revision,
        generation: s.generation,
        primary: s.primary.as_ref().map(|p| pb::Primary {
            node: p.node.clone(),
            generation: p.generation,
            timeline: p.timeline.unwrap_or(0),
        }),
        paused: s.paused,
        members: s
            .members
            .values()
            .map(|x| pb::Member {
                name: x.name.clone(),
                id: x.id,
                raft_addr: x.raft_addr.clone(),
                grpc_addr: x.grpc_addr.clone(),
                pg_addr: x.pg_addr.clone(),
                http_addr: x.http_addr.clone(),
                nofailover: x.tags.nofailover,
                failover_priority: x.tags.failover_priority,
                raft_role: rows
                    .iter()
                    .find(|r| r.name == x.name)
                    .map(|r| r.raft.clone())
                    .unwrap_or_default(),
            })
            .collect(),
        sync_standbys: s.sync_standbys.iter().cloned().collect(),
        config: s.config_pairs().into_iter().collect(),
        history: history(s),
        pending: s.pending.as_ref().map(describe_pending).unwrap_or_default(),
        member_status: rows.iter().map(member_status).collect(),
        scheduled_switchover: s.scheduled_switchover.as_ref().map(|x| pb::ScheduledSwitchover {
            from: x.from.clone().unwrap_or_default(),
            to: x.to.clone(),
            at_unix_ms: x.at_unix_ms,
        }),
        failovers: s.count_changes(ChangeKind::Failover),
        switchovers: s.count_changes(ChangeKind::Switchover),
    }
}

fn member_status(r: &MemberRow) -> pb::MemberStatus {
    pb::MemberStatus {
        name: r.name.clone(),
        role: r.role.clone(),
        state: r.state.clone(),
        timeline: r.timeline.unwrap_or(0),
        lsn: r.lsn.map(lsn).unwrap_or_default(),
        lag_bytes: r.lag_bytes,
        lease_remaining_ms: r.lease_remaining_ms,
        reason: r.reason.clone(),
        report_age_ms: r.report_age_ms,
        pending_restart: r.pending_restart,
        host: r.host.clone(),
        raft: r.raft.clone(),
        raft_leader: r.raft_leader,
    }
}

pub fn describe_pending(p: &Pending) -> String {
    format!(
        "{} from {} to {} ({})",
        p.kind.as_str(),
        p.from.as_deref().unwrap_or("none"),
        p.candidate.as_deref().or(p.to.as_deref()).unwrap_or("to be chosen"),
        p.reason
    )
}
