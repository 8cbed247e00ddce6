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

use crate::cluster::{
    ChangeKind, ClusterState, Command, Flag, Member, Pending, Rejection, ScheduledSwitchover, TagChange, Tags,
};
use crate::decide::dry_run;
use crate::decide::election::lsn;
use crate::decide::requests::{self, Refusal};
use crate::decide::view::{self, MemberRow};
use crate::node::{MembershipError, Node, ProposeError, PROPOSE_TIMEOUT};
use crate::pb::control as pb;
use crate::pb::control::control_client::ControlClient;
use crate::pb::control::control_server::Control;
use crate::types::{Generation, Timeline};

/// How long a switchover or failover may take before the RPC returns DEADLINE_EXCEEDED.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a new member may take to clone its PostgreSQL and stream.
const CLONE_TIMEOUT: Duration = Duration::from_secs(3600);

type ProgressStream = Pin<Box<dyn Stream<Item = Result<pb::Progress, Status>> + Send>>;
type StatusStream = Pin<Box<dyn Stream<Item = Result<pb::ClusterStatus, Status>> + Send>>;

mod convert;
mod membership;

pub use convert::{describe_pending, status};
use convert::{history, to_member};
use membership::{add_member, forward_progress, leader_client, wait_leader_moved, Step};

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
    /// Admin role required (a node certificate counts only for a current member).
    fn admin<T>(&self, req: &Request<T>, method: &str) -> Result<(), Status> {
        let state = self.node.state().state;
        crate::tls::require_admin(req, method, |name| state.members.contains_key(name))
    }

    async fn commit(&self, cmd: Command) -> Result<crate::node::Committed, Status> {
        self.node.propose(cmd, PROPOSE_TIMEOUT).await.map_err(propose_status)
    }

    /// `--dry-run`: the controller's decisions on a copy of the state and of the reports
    /// this node holds (the leader's own, or the view the leader last sent it).
    fn dry_run(&self, s: &ClusterState, change: dry_run::Change) -> Result<Response<pb::ChangeReply>, Status> {
        let max_age = 2_000.max(s.ha.lease_ms);
        let reports = self
            .node
            .cluster_view()
            .reports
            .into_iter()
            .filter(|(_, (age, _))| *age <= max_age)
            .map(|(n, (_, r))| (n, r))
            .collect();
        let raft = self.node.raft_view();
        let voters = raft
            .voters
            .iter()
            .filter_map(|id| s.member_by_id(*id).map(|m| m.name.clone()))
            .collect();
        let leader = raft.leader.map(|id| s.label_of(id)).unwrap_or_default();
        let plan = dry_run::plan(s, &reports, &voters, &leader, change).map_err(Status::failed_precondition)?;
        Ok(Response::new(pb::ChangeReply {
            message: plan.render(change),
            primary: plan.candidate.unwrap_or_default(),
            timeline: s.primary_timeline().unwrap_or(Timeline::NONE).0,
            generation: s.generation.0,
            took_ms: 0,
        }))
    }

    /// Why `to` refused to promote, when the last recorded change of primary went to another
    /// member because it did (`VetoCandidate`'s reason names the hook, or the WAL it lacks).
    fn refusal(&self, to: &str) -> Option<String> {
        let reason = self.node.state().state.history.last()?.reason.clone();
        // Another candidate of the same change may have refused since.
        if !reason.contains(&format!("{to} refused the promotion")) && !reason.contains(&format!("{to}'s pre_promote"))
        {
            return None;
        }
        if reason.contains("pre_promote") {
            Some(format!("{to}'s pre_promote hook refused the promotion"))
        } else if reason.contains("cannot become consistent from its own WAL") {
            Some(format!(
                "{to} refused the promotion: it cannot become consistent from its own WAL"
            ))
        } else {
            None
        }
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
    async fn wait_for_primary(&self, generation: Generation, started: Instant) -> Result<pb::ChangeReply, Status> {
        let mut rx = self.node.subscribe();
        let deadline = started + CHANGE_TIMEOUT;
        loop {
            let s = rx.borrow_and_update().state.clone();
            if let (None, Some(p)) = (&s.pending, &s.primary) {
                if p.generation >= generation && p.timeline.is_some() {
                    return Ok(pb::ChangeReply {
                        message: String::new(),
                        primary: p.node.clone(),
                        timeline: p.timeline.unwrap_or(Timeline::NONE).0,
                        generation: p.generation.0,
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

    async fn version(&self, _: Request<pb::VersionRequest>) -> Result<Response<pb::VersionReply>, Status> {
        let cfg = &self.node.cfg;
        let (postgres, server) = if cfg.postgres.manage {
            (binary_version(cfg).await, server_version(cfg).await)
        } else {
            (String::new(), String::new())
        };
        Ok(Response::new(pb::VersionReply {
            member: cfg.me().name.clone(),
            raftpg: env!("CARGO_PKG_VERSION").to_string(),
            postgres,
            server,
        }))
    }

    async fn history(&self, _: Request<pb::HistoryRequest>) -> Result<Response<pb::HistoryReply>, Status> {
        let s = self.node.state().state;
        Ok(Response::new(pb::HistoryReply { entries: history(&s) }))
    }

    async fn switchover(&self, req: Request<pb::SwitchoverRequest>) -> Result<Response<pb::ChangeReply>, Status> {
        // A dry run changes nothing: the read-only role may ask for one.
        if !req.get_ref().dry_run {
            self.admin(&req, "Switchover")?;
        }
        let req = req.into_inner();
        if req.to.trim().is_empty() {
            return Err(Status::invalid_argument("a switchover needs a target: --to NAME"));
        }
        if req.dry_run {
            let s = self.node.state().state;
            let from = (!req.from.is_empty()).then_some(req.from.as_str());
            requests::switchover(&s, &self.rows(&s), &req.to, from).map_err(refusal_status)?;
            return self.dry_run(&s, dry_run::Change::Switchover { to: &req.to });
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
                timeline: s.primary_timeline().unwrap_or(Timeline::NONE).0,
                generation: s.generation.0,
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
        let mut r = self.wait_for_primary(s.generation.next(), started).await?;
        r.message = if r.primary == req.to {
            format!(
                "switched over from {from_name} to {} (timeline {}, generation {}) in {} ms",
                r.primary, r.timeline, r.generation, r.took_ms
            )
        } else if let Some(why) = self.refusal(&req.to) {
            format!(
                "{why}; {} was promoted instead (timeline {}, generation {})",
                r.primary, r.timeline, r.generation
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
        req: Request<pb::CancelSwitchoverRequest>,
    ) -> Result<Response<pb::CommandReply>, Status> {
        self.admin(&req, "CancelSwitchover")?;
        self.reply(Command::CancelScheduledSwitchover).await
    }

    async fn failover(&self, req: Request<pb::FailoverRequest>) -> Result<Response<pb::ChangeReply>, Status> {
        if !req.get_ref().dry_run {
            self.admin(&req, "Failover")?;
        }
        let req = req.into_inner();
        if req.to.trim().is_empty() {
            return Err(Status::invalid_argument("a failover needs a target: --to NAME"));
        }
        let started = Instant::now();
        let s = self.node.state().state;
        let warning = requests::failover(&s, &self.rows(&s), &req.to, req.force).map_err(refusal_status)?;
        if req.dry_run {
            return self.dry_run(
                &s,
                dry_run::Change::Failover {
                    to: &req.to,
                    force: req.force,
                },
            );
        }
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
        let mut r = self.wait_for_primary(s.generation.next(), started).await?;
        let mut message = if r.primary == req.to {
            format!(
                "failed over to {} (timeline {}, generation {}) in {} ms",
                r.primary, r.timeline, r.generation, r.took_ms
            )
        } else if let Some(why) = self.refusal(&req.to) {
            format!(
                "{why}; {} was promoted instead (timeline {}, generation {})",
                r.primary, r.timeline, r.generation
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
        self.admin(&req, "Restart")?;
        let node = req.into_inner().member;
        self.reply(Command::Restart { node }).await
    }

    async fn reinit(&self, req: Request<pb::ReinitRequest>) -> Result<Response<pb::CommandReply>, Status> {
        self.admin(&req, "Reinit")?;
        let name = req.into_inner().member;
        let s = self.node.state().state;
        requests::reinit(&s, &self.rows(&s), &name).map_err(refusal_status)?;
        self.reply(Command::Reinit { node: name }).await
    }

    async fn add_member(&self, req: Request<pb::AddMemberRequest>) -> Result<Response<ProgressStream>, Status> {
        self.admin(&req, "AddMember")?;
        let req = req.into_inner();
        if let Some(mut leader) = leader_client(&self.node).await? {
            let upstream = leader.add_member(req).await?.into_inner();
            return Ok(Response::new(Box::pin(upstream)));
        }
        let again = req.clone();
        let replica = req.replica;
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
                match add_member(&node, member.clone(), replica, &tx).await {
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
        self.admin(&req, "RemoveMember")?;
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
        self.admin(&req, "SetConfig")?;
        let req = req.into_inner();
        if req.key.trim().is_empty() {
            return Err(Status::invalid_argument("key is empty: write key=value"));
        }
        let value = (!req.value.is_empty()).then_some(req.value);
        known_parameters(&self.node.cfg, [(&req.key, &value)]).await?;
        self.reply(Command::SetConfig { key: req.key, value }).await
    }

    async fn set_configs(&self, req: Request<pb::SetConfigsRequest>) -> Result<Response<pb::CommandReply>, Status> {
        self.admin(&req, "SetConfigs")?;
        let settings = req.into_inner().settings;
        if let Some(bad) = settings.iter().find(|s| s.key.trim().is_empty()) {
            return Err(Status::invalid_argument(format!(
                "a key is empty (value '{}'): write key=value",
                bad.value
            )));
        }
        let pairs = settings
            .into_iter()
            .map(|s| (s.key, (!s.value.is_empty()).then_some(s.value)))
            .collect::<Vec<_>>();
        known_parameters(&self.node.cfg, pairs.iter().map(|(k, v)| (k, v))).await?;
        self.reply(Command::SetConfigs { pairs }).await
    }

    async fn pause(&self, req: Request<pb::PauseRequest>) -> Result<Response<pb::CommandReply>, Status> {
        self.admin(&req, "Pause")?;
        self.reply(Command::Pause).await
    }

    async fn resume(&self, req: Request<pb::ResumeRequest>) -> Result<Response<pb::CommandReply>, Status> {
        self.admin(&req, "Resume")?;
        self.reply(Command::Resume).await
    }

    async fn set_tags(&self, req: Request<pb::SetTagsRequest>) -> Result<Response<pb::CommandReply>, Status> {
        self.admin(&req, "SetTags")?;
        let req = req.into_inner();
        if req.tags.is_empty() {
            return Err(Status::invalid_argument(format!(
                "no tag given for {}: write key=value, for example nosync=true",
                req.member
            )));
        }
        let changes = req
            .tags
            .iter()
            .map(|t| TagChange::parse(t.key.trim(), t.value.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(Status::invalid_argument)?;
        self.reply(Command::ChangeTags {
            name: req.member,
            changes,
        })
        .await
    }

    async fn add_slot(&self, req: Request<pb::AddSlotRequest>) -> Result<Response<pb::CommandReply>, Status> {
        self.admin(&req, "AddSlot")?;
        let req = req.into_inner();
        let kind = if req.logical {
            crate::cluster::SlotKind::Logical {
                plugin: req.plugin.trim().to_string(),
                database: req.database.trim().to_string(),
            }
        } else if !req.plugin.is_empty() || !req.database.is_empty() {
            return Err(Status::invalid_argument(format!(
                "slot {}: --plugin and --database are for a logical slot: add --logical",
                req.name
            )));
        } else {
            crate::cluster::SlotKind::Physical
        };
        self.reply(Command::AddSlot {
            name: req.name.trim().to_string(),
            kind,
        })
        .await
    }

    async fn remove_slot(&self, req: Request<pb::RemoveSlotRequest>) -> Result<Response<pb::CommandReply>, Status> {
        self.admin(&req, "RemoveSlot")?;
        let name = req.into_inner().name.trim().to_string();
        self.reply(Command::RemoveSlot {
            name,
            reason: "removed by an operator (`ctl slots remove`)".into(),
        })
        .await
    }
}

/// `postgres --version` of the binaries this node runs ("" if it cannot be run).
async fn binary_version(cfg: &crate::config::Config) -> String {
    let Ok(bins) = crate::postgres::PgBinaries::find(cfg.postgres.bin_dir.as_deref()) else {
        return String::new();
    };
    let run = tokio::process::Command::new(bins.dir.join("postgres"))
        .arg("--version")
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(std::time::Duration::from_secs(5), run).await {
        Ok(Ok(out)) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        _ => String::new(),
    }
}

/// Refuses a `postgresql.parameters.NAME=VALUE` whose NAME this node's PostgreSQL does not
/// know (`pg_settings`): PostgreSQL would reject the whole `postgresql.conf` that carries
/// it, on reload and on start. Resets are not checked (they remove a bad name), nor are
/// names with a dot (an extension's), nor anything when this node's PostgreSQL is not
/// managed or cannot be asked within 5 s (logged).
async fn known_parameters<'a>(
    cfg: &crate::config::Config,
    pairs: impl IntoIterator<Item = (&'a String, &'a Option<String>)>,
) -> Result<(), Status> {
    // Only names the sandbox accepts (`check_parameter`, in lower case): a refused one gets
    // its own reason from the command.
    let names: Vec<String> = pairs
        .into_iter()
        .filter_map(|(k, v)| {
            let name = k.trim().strip_prefix("postgresql.parameters.")?;
            crate::cluster::params::check_parameter(name, Some(v.as_deref()?)).ok()
        })
        .filter(|n| !n.contains('.'))
        .collect();
    if names.is_empty() || !cfg.postgres.manage {
        return Ok(());
    }
    let Some(known) = local_column(cfg, "SELECT name FROM pg_settings", std::time::Duration::from_secs(5)).await else {
        tracing::warn!(
            "config set: this node's PostgreSQL could not be asked, so {names:?} are not checked against pg_settings"
        );
        return Ok(());
    };
    let unknown: Vec<String> = names
        .iter()
        .filter_map(|n| crate::cluster::params::unknown_parameter(n, &known))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(Status::invalid_argument(format!(
        "{}; nothing was changed (PostgreSQL would reject a postgresql.conf that sets it)",
        unknown.join("; ")
    )))
}

/// The running server's `server_version` ("" if it does not answer within 2 s).
async fn server_version(cfg: &crate::config::Config) -> String {
    local_column(cfg, "SHOW server_version", std::time::Duration::from_secs(2))
        .await
        .and_then(|v| v.into_iter().next())
        .unwrap_or_default()
}

/// The first (text) column of `sql`'s rows on this node's PostgreSQL, over its Unix socket
/// on a connection of its own; `None` if it does not answer within `within`.
async fn local_column(cfg: &crate::config::Config, sql: &str, within: std::time::Duration) -> Option<Vec<String>> {
    let conninfo = crate::agent::pgfiles::local_conninfo_of(cfg)?;
    let ask = async {
        let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await.ok()?;
        let conn = tokio::spawn(conn);
        let rows = client.query(sql, &[]).await.ok();
        conn.abort();
        rows.map(|rows| rows.iter().map(|r| r.get::<_, String>(0)).collect())
    };
    tokio::time::timeout(within, ask).await.ok().flatten()
}
