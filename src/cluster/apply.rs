//! The pure state transition: `apply(&mut ClusterState, &Command)`.
//!
//! A rejected command leaves the state untouched, byte for byte, and its
//! rejection is returned to whoever proposed it. Rejections are ordinary
//! outcomes of a replicated log (two controllers raced, a view was stale),
//! not errors of the node.

use serde::{Deserialize, Serialize};

use super::command::Command;
use super::state::{
    ChangeKind, ClusterState, Degraded, Flag, HistoryEntry, Member, Pending, PendingKind, PermanentSlot, Primary,
    SlotKind, TagChange,
};
use crate::types::{Generation, Timeline};

/// What an accepted command did, for logs and replies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub message: String,
    pub revision: u64,
}

/// Why a command was refused by the state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("the cluster state is not initialised yet")]
    NotInitialized,
    #[error("the cluster state is already initialised")]
    AlreadyInitialized,
    #[error("stale generation: the command expects {expected}, the cluster is at {actual}")]
    StaleGeneration { expected: Generation, actual: Generation },
    #[error("unknown member '{0}'")]
    UnknownMember(String),
    #[error("member name '{0}' is already taken")]
    DuplicateName(String),
    #[error("Raft id {id} is already used by member '{by}'")]
    DuplicateId { id: u64, by: String },
    #[error("'{0}' is the primary: switch over to another member first")]
    IsPrimary(String),
    #[error("the cluster already has a primary or was bootstrapped")]
    AlreadyBootstrapped,
    #[error("there is no primary")]
    NoPrimary,
    #[error("no failover or switchover is in progress")]
    NothingPending,
    #[error("a failover or switchover is already in progress")]
    AlreadyPending,
    #[error("'{node}' cannot be promoted: {why}")]
    NotEligible { node: String, why: String },
    #[error("{0}")]
    BadConfig(String),
}

/// Applies `cmd` to `state`. On `Err`, `state` is unchanged.
pub fn apply(state: &mut ClusterState, cmd: &Command) -> Result<Applied, Rejection> {
    if !state.initialized && !matches!(cmd, Command::Init { .. } | Command::InitAdopting { .. }) {
        return Err(Rejection::NotInitialized);
    }
    let sync_before = state.sync_config();
    let lease_before = state.ha.lease_ms;
    let was_pending = state.pending.is_some();
    let had_candidate = state.pending.as_ref().is_some_and(|p| p.candidate.is_some());
    let message = apply_inner(state, cmd)?;
    // A lease granted before `lease_ms` was lowered runs under the old length
    // (`ClusterState::lease_ms_before`); a new primary's leases all run under the new one.
    if state.ha.lease_ms < lease_before {
        state.lease_ms_before = Some(state.lease_ms_before.unwrap_or(0).max(lease_before));
    }
    if matches!(cmd, Command::Bootstrap { .. } | Command::Adopted { .. })
        || (was_pending && matches!(cmd, Command::RecordTimeline { .. }))
    {
        state.lease_ms_before = None;
    }
    match cmd {
        // A new primary runs the current configuration from its first commit on.
        Command::Bootstrap { .. } | Command::Adopted { .. } => state.sync_unconfirmed.clear(),
        // The writes acknowledged before the new timeline forked are on the new primary
        // (elected holding them) and on the old one (it wrote them), and on no other member
        // for sure until the new primary's standbys stream past the fork: the next election
        // must find one of the two, until the controller confirms that they did.
        Command::RecordTimeline { .. } if was_pending => {
            state.sync_unconfirmed = fork_holders(state).into_iter().collect();
        }
        // A candidate replaced before it recorded its timeline may have promoted: the
        // timeline it would have taken is never taken again.
        Command::BeginFailover { .. } if had_candidate => {
            let taken = state.newest_timeline_taken().next();
            state.unrecorded_timeline = Some(taken);
        }
        // The candidate may never record its timeline and be replaced (`BeginFailover`):
        // the configuration the fenced primary ran is kept, last, for the next election.
        Command::Promote { .. } if !had_candidate => {
            state.sync_unconfirmed.retain(|c| *c != sync_before);
            state.sync_unconfirmed.push(sync_before);
        }
        // The primary may still run the configuration it had: keep it until it confirms the new one.
        _ if state.sync_config() != sync_before
            && state.primary.is_some()
            && !state.sync_unconfirmed.contains(&sync_before) =>
        {
            state.sync_unconfirmed.push(sync_before)
        }
        _ => {}
    }
    state.revision += 1;
    Ok(Applied {
        message,
        revision: state.revision,
    })
}

fn apply_inner(state: &mut ClusterState, cmd: &Command) -> Result<String, Rejection> {
    let message = match cmd {
        Command::Init { members } => init(state, members)?,
        Command::AddMember { member } => {
            // A retried add of a replica without --replica would make it a Raft voter.
            if state.has_flag(&member.name, Flag::Replica) {
                return Err(Rejection::BadConfig(format!(
                    "{} is a replica: add it with --replica, or remove it first to add it as a voter",
                    member.name
                )));
            }
            add_member(state, member)?
        }
        Command::RemoveMember { name } => remove_member(state, name)?,
        Command::SetTags { name, tags } => {
            state
                .members
                .get_mut(name)
                .ok_or_else(|| Rejection::UnknownMember(name.clone()))?
                .tags = tags.clone();
            format!("tags of {name} set")
        }
        Command::ChangeTags { name, changes } => change_tags(state, name, changes)?,
        Command::AddReplica { member } => {
            if state.members.get(&member.name) == Some(member) && !state.has_flag(&member.name, Flag::Replica) {
                return Err(Rejection::BadConfig(format!(
                    "{} is already a member of the quorum: a voter cannot become a replica",
                    member.name
                )));
            }
            add_member(state, member)?;
            state
                .flags
                .entry(member.name.clone())
                .or_default()
                .insert(Flag::Replica);
            format!("replica {} added (outside the quorum)", member.name)
        }
        Command::AddSlot { name, kind } => add_slot(state, name, kind)?,
        Command::RemoveSlot { name, reason } => {
            let slot = state
                .slots
                .get_mut(name)
                .filter(|s| s.removed.is_none())
                .ok_or_else(|| {
                    Rejection::BadConfig(format!("no permanent slot is called {name} (`ctl slots list`)"))
                })?;
            slot.removed = Some(reason.clone());
            format!("permanent slot {name} removed: {reason}")
        }
        Command::ChooseBootstrap { node } => {
            known(state, node)?;
            if state.system_identifier.is_some() || state.primary.is_some() {
                return Err(Rejection::AlreadyBootstrapped);
            }
            if let Some(a) = state.adopt.as_deref().filter(|a| a != node) {
                return Err(Rejection::BadConfig(format!(
                    "{node} cannot run initdb: the cluster adopts the existing database of {a}"
                )));
            }
            state.bootstrap_node = Some(node.clone());
            format!("{node} chosen to run initdb")
        }
        Command::Bootstrap {
            node,
            system_identifier,
        } => bootstrap(state, node, *system_identifier)?,
        Command::InitAdopting { members, adopt } => {
            if !members.iter().any(|m| m.name == *adopt) {
                return Err(Rejection::UnknownMember(adopt.clone()));
            }
            let message = init(state, members)?;
            state.adopt = Some(adopt.clone());
            state.bootstrap_node = Some(adopt.clone());
            format!("{message}; adopting the existing database of {adopt}")
        }
        Command::Adopted {
            node,
            system_identifier,
            timeline,
        } => adopted(state, node, *system_identifier, *timeline)?,
        Command::BeginFailover {
            generation,
            to,
            forced,
            reason,
        } => {
            let saved = state.clone();
            begin_failover(state, *generation, to.as_ref(), *forced, false, reason).inspect_err(|_| *state = saved)?
        }
        Command::VetoCandidate {
            generation,
            node,
            reason,
        } => {
            let candidate = state.pending.as_ref().and_then(|p| p.candidate.as_deref());
            if candidate != Some(node.as_str()) {
                return Err(Rejection::NotEligible {
                    node: node.clone(),
                    why: "it is not the candidate of the change in progress".into(),
                });
            }
            // It never promoted (it says so: only a standby runs pre_promote, and only a
            // stopped database declines for want of WAL): it acknowledged nothing, whatever
            // the mode, so it is replaced like a candidate that died before promoting.
            let saved = state.clone();
            let why = format!("{node} refused the promotion: {reason}");
            let message =
                begin_failover(state, *generation, None, false, true, &why).inspect_err(|_| *state = saved)?;
            state.vetoed.insert(node.clone());
            message
        }
        Command::BeginSwitchover { generation, to, reason } => {
            check_generation(state, *generation)?;
            let from = state.primary_name().ok_or(Rejection::NoPrimary)?;
            if from == to {
                return Err(Rejection::NotEligible {
                    node: to.clone(),
                    why: "it is already the primary".into(),
                });
            }
            eligible(state, to, false)?;
            begin(state, PendingKind::Switchover, Some(to.clone()), false, reason)?
        }
        Command::Promote { generation, node } => promote(state, *generation, node)?,
        Command::RecordTimeline {
            generation,
            node,
            timeline,
            switch_lsn,
            parent_timeline,
        } => record_timeline(state, *generation, node, *timeline, *switch_lsn, *parent_timeline)?,
        Command::SetSyncStandbys { generation, standbys } => {
            check_generation(state, *generation)?;
            // A sync set belongs to a primary; without one it could later name the new primary.
            state.primary.as_ref().ok_or(Rejection::NoPrimary)?;
            for s in standbys {
                known(state, s)?;
                if state.primary_name() == Some(s.as_str()) {
                    return Err(Rejection::IsPrimary(s.clone()));
                }
            }
            state.sync_standbys = standbys.iter().cloned().collect();
            format!("sync standbys now [{}]", standbys.join(", "))
        }
        Command::Pause => {
            state.paused = true;
            "automatic failover paused".into()
        }
        Command::Resume => {
            state.paused = false;
            "automatic failover resumed".into()
        }
        Command::SetConfig { key, value } => set_config(state, key, value.as_deref())?,
        Command::SetConfigs { pairs } => {
            if pairs.is_empty() {
                return Err(Rejection::BadConfig("nothing to set".into()));
            }
            let mut seen = std::collections::BTreeSet::new();
            if let Some((k, _)) = pairs.iter().find(|(k, _)| !seen.insert(k.to_ascii_lowercase())) {
                return Err(Rejection::BadConfig(format!("{k} is set twice in one change")));
            }
            // All or nothing: each on a copy, kept only if every one is accepted.
            let mut next = state.clone();
            let mut messages = Vec::new();
            for (k, v) in pairs {
                messages.push(set_config(&mut next, k, v.as_deref())?);
            }
            *state = next;
            messages.join("; ")
        }
        Command::SwitchoverStopped { generation, node, lsn } => {
            check_generation(state, *generation)?;
            let p = state.pending.as_mut().ok_or(Rejection::NothingPending)?;
            if p.kind != PendingKind::Switchover || p.from.as_deref() != Some(node.as_str()) {
                return Err(Rejection::NotEligible {
                    node: node.clone(),
                    why: "it is not the old primary of a switchover in progress".into(),
                });
            }
            p.stop_lsn = Some(*lsn);
            format!("{node} stopped cleanly at {}", crate::decide::election::lsn(*lsn))
        }
        Command::ConfirmSync { generation, config } => {
            check_generation(state, *generation)?;
            if *config != state.sync_config() {
                return Err(Rejection::BadConfig(
                    "the confirmed synchronous configuration is not the current one".into(),
                ));
            }
            state.sync_unconfirmed.clear();
            // The quorum is back: every write acknowledged in the window is on `k` of its
            // standbys (`decide::report::sync_applied`), so elections need it no more.
            if config.k > 0 && state.degraded.take().is_some() {
                "synchronous quorum confirmed by the primary: the degraded window is over".into()
            } else {
                "synchronous configuration confirmed by the primary".into()
            }
        }
        Command::Degrade {
            generation,
            streaming,
            at_unix_ms,
            lsn,
        } => degrade(state, *generation, streaming, *at_unix_ms, *lsn)?,
        Command::Undegrade { generation } => {
            check_generation(state, *generation)?;
            let primary = state.primary_name().ok_or(Rejection::NoPrimary)?.to_string();
            let d = state
                .degraded
                .as_mut()
                .ok_or_else(|| Rejection::BadConfig("the primary is not degraded: nothing to return from".into()))?;
            if d.restoring {
                format!("{primary} is already returning to its synchronous quorum")
            } else {
                return_to_quorum(d);
                format!("{primary} returns to its synchronous quorum; the degraded window ends once it confirms it")
            }
        }
        Command::Restart { node } => {
            known(state, node)?;
            *state.restarts.entry(node.clone()).or_default() += 1;
            format!("{node} asked to restart PostgreSQL")
        }
        Command::Reinit { node } => {
            not_primary_or_target(state, node)?;
            *state.reinits.entry(node.clone()).or_default() += 1;
            format!("{node} asked to discard its data and clone it again")
        }
        Command::ScheduleSwitchover { switchover } => {
            known(state, &switchover.to)?;
            // A switchover never promotes such a member: scheduled, it would be refused
            // every tick when due, and hold up the controller.
            if state.never_chosen(&switchover.to) {
                return Err(Rejection::NotEligible {
                    node: switchover.to.clone(),
                    why: "it is tagged nofailover or is a replica: a switchover never promotes it".into(),
                });
            }
            if let Some(f) = &switchover.from {
                known(state, f)?;
            }
            state.scheduled_switchover = Some(switchover.clone());
            format!("switchover to {} scheduled", switchover.to)
        }
        Command::CancelScheduledSwitchover => match state.scheduled_switchover.take() {
            Some(s) => format!("scheduled switchover to {} cancelled", s.to),
            None => "no switchover was scheduled".into(),
        },
    };
    Ok(message)
}

fn init(state: &mut ClusterState, members: &[Member]) -> Result<String, Rejection> {
    if state.initialized {
        return Err(Rejection::AlreadyInitialized);
    }
    let mut fresh = ClusterState::default();
    for m in members {
        add_member(&mut fresh, m)?;
    }
    state.members = fresh.members;
    state.initialized = true;
    Ok(format!("initialised with {} members", members.len()))
}

fn add_member(state: &mut ClusterState, m: &Member) -> Result<String, Rejection> {
    super::params::check_member_name(&m.name).map_err(Rejection::BadConfig)?;
    if let Some(existing) = state.members.get(&m.name) {
        // Idempotent: a retried add of the same member is accepted.
        if existing == m {
            return Ok(format!("member {} already present", m.name));
        }
        return Err(Rejection::DuplicateName(m.name.clone()));
    }
    if let Some(other) = state.member_by_id(m.id) {
        return Err(Rejection::DuplicateId {
            id: m.id,
            by: other.name.clone(),
        });
    }
    state.members.insert(m.name.clone(), m.clone());
    Ok(format!("member {} added", m.name))
}

/// A known member that is neither the primary nor the target of a pending change.
fn not_primary_or_target(state: &ClusterState, name: &str) -> Result<(), Rejection> {
    known(state, name)?;
    let involved = state
        .pending
        .as_ref()
        .is_some_and(|p| p.candidate.as_deref() == Some(name) || p.to.as_deref() == Some(name));
    if state.primary_name() == Some(name) || involved {
        return Err(Rejection::IsPrimary(name.to_string()));
    }
    Ok(())
}

/// Applies `changes` to `name`'s tags, in order. `nosync` takes effect through the
/// controller's next `SetSyncStandbys`, which keeps the configuration the primary ran
/// until it confirms the new one, as for every other change of the sync set.
fn change_tags(state: &mut ClusterState, name: &str, changes: &[TagChange]) -> Result<String, Rejection> {
    known(state, name)?;
    if changes.is_empty() {
        return Err(Rejection::BadConfig(format!("no tag to change for {name}")));
    }
    let mut after = state.clone();
    let mut flags = after.flags.remove(name).unwrap_or_default();
    let tags = &mut after.members.get_mut(name).expect("known").tags;
    for change in changes {
        match change {
            TagChange::NoFailover(v) => tags.nofailover = *v,
            TagChange::FailoverPriority(v) => tags.failover_priority = *v,
            TagChange::Flag(f, true) => {
                flags.insert(*f);
            }
            TagChange::Flag(f, false) => {
                flags.remove(f);
            }
            TagChange::ReplicateFrom(None) => {
                after.upstreams.remove(name);
            }
            TagChange::ReplicateFrom(Some(u)) => {
                after.upstreams.insert(name.to_string(), u.clone());
            }
        }
    }
    if !flags.is_empty() {
        after.flags.insert(name.to_string(), flags);
    }
    if let Some(u) = after.replicates_from(name) {
        cascade_allowed(&after, name, u)?;
    }
    enough_sync_candidates(&after, &format!("changing the tags of {name}"))?;
    *state = after;
    let changes: Vec<String> = changes.iter().map(ToString::to_string).collect();
    Ok(format!("tags of {name} changed: {}", changes.join(" ")))
}

/// `name` may stream from `upstream`: another member, and no chain of `replicatefrom`
/// tags leads back to `name` (a loop would leave every member in it streaming from
/// nobody until each gave up and followed the primary).
fn cascade_allowed(state: &ClusterState, name: &str, upstream: &str) -> Result<(), Rejection> {
    if upstream == name {
        return Err(Rejection::BadConfig(format!(
            "replicatefrom={upstream}: {name} cannot stream from itself; name another standby, or clear the tag with replicatefrom="
        )));
    }
    if !state.members.contains_key(upstream) {
        return Err(Rejection::BadConfig(format!(
            "replicatefrom={upstream}: no member is called {upstream} (members: {})",
            state.members.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    let mut chain = vec![name.to_string()];
    let mut at = upstream;
    loop {
        chain.push(at.to_string());
        if at == name {
            return Err(Rejection::BadConfig(format!(
                "replicatefrom={upstream}: the chain {} is a loop; clear replicatefrom on one of them first",
                chain.join(" -> ")
            )));
        }
        match state.replicates_from(at) {
            Some(next) if chain.len() <= state.members.len() => at = next,
            _ => return Ok(()),
        }
    }
}

/// Once any member may not be a synchronous standby (tagged `nosync`, or cascading from
/// another standby), at least two members must be able to: otherwise one of them as
/// primary would have no synchronous standby, and in quorum mode would acknowledge writes
/// that no other member holds. `after` is the state the change would leave.
fn enough_sync_candidates(after: &ClusterState, what: &str) -> Result<(), Rejection> {
    let excluded: Vec<&str> = after
        .members
        .keys()
        .filter(|m| after.has_flag(m, Flag::NoSync) || after.upstreams.contains_key(*m))
        .map(String::as_str)
        .collect();
    let free = after.members.keys().filter(|m| after.may_be_sync(m)).count();
    if excluded.is_empty() || free >= 2 {
        return Ok(());
    }
    Err(Rejection::BadConfig(format!(
        "{what} would leave {free} member(s) that may be synchronous standbys: at least two are needed, so that every \
         primary has a synchronous standby (tagged nosync or replicatefrom: {}); clear nosync or replicatefrom on \
         another member first",
        excluded.join(", ")
    )))
}

fn remove_member(state: &mut ClusterState, name: &str) -> Result<String, Rejection> {
    not_primary_or_target(state, name)?;
    // Its database is the cluster's data: nobody else may bootstrap in its place.
    if state.primary.is_none() && state.adopt.as_deref() == Some(name) {
        return Err(Rejection::BadConfig(format!(
            "{name} cannot be removed: the cluster adopts its existing database, which is not recorded yet"
        )));
    }
    // During a change of primary the election covers every configuration the fenced primary
    // may have run (`decide::controller`): a member named in one may be the only one to hold
    // writes it acknowledged, and only its final report shows it. Removed, it would no longer
    // count, and a member without those writes could be promoted (found by the simulation
    // with membership changes, seed 78: a standby removed during a failover held
    // acknowledged writes its peer lacked). The old primary is needed too: it joins
    // the candidate's synchronous set at `Promote`, which without it could be empty, so that
    // the new primary would acknowledge writes alone (seed 6046). A forced failover accepts
    // the loss; asynchronous commits have no quorum to keep.
    if let Some(p) = state.pending.as_ref().filter(|p| !p.forced) {
        let covered = std::iter::once(state.sync_config())
            .chain(state.sync_unconfirmed.iter().cloned())
            .any(|q| q.k > 0 && q.standbys.contains(name));
        let old_primary = state.ha.synchronous_mode.is_quorum() && p.from.as_deref() == Some(name);
        if covered || old_primary {
            let kind = match p.kind {
                PendingKind::Failover => "failover",
                PendingKind::Switchover => "switchover",
            };
            return Err(Rejection::BadConfig(format!(
                "{name} cannot be removed while the {kind} of generation {} is under way: {}; remove it once a \
                 new primary is recorded (`raftpg ctl list`)",
                state.generation,
                match old_primary {
                    true =>
                        "it is the old primary, which holds every acknowledged write and joins the new \
                             primary's synchronous standbys",
                    false =>
                        "it is in a synchronous configuration the old primary may have run, so it may hold \
                              acknowledged writes that only its final report can show",
                }
            )));
        }
    }
    let mut after = state.clone();
    after.members.remove(name);
    after.flags.remove(name);
    after.upstreams.remove(name);
    // Who streamed from it follows the primary again (and would not cascade from a new
    // member that happens to take the name).
    after.upstreams.retain(|_, u| u != name);
    enough_sync_candidates(&after, &format!("removing {name}"))?;
    // A quorum is never emptied by a removal: the primary would acknowledge writes on no
    // standby. A member added back joins the set only once it streams, so removing the last
    // synchronous standby while the others still clone would do it (found by the simulation
    // with membership changes, seed 197: a write acknowledged by the primary alone was lost
    // at the next failover).
    if state.ha.synchronous_mode.is_quorum() && state.sync_standbys.len() == 1 && state.sync_standbys.contains(name) {
        return Err(Rejection::BadConfig(format!(
            "{name} cannot be removed: it is the last synchronous standby, and without it the primary would \
             acknowledge writes that no standby holds. Wait until another member streams and joins the \
             synchronous set (`raftpg ctl list`), or set synchronous_mode = off first"
        )));
    }
    state.members.remove(name);
    state.sync_standbys.remove(name);
    state.flags = after.flags;
    state.upstreams = after.upstreams;
    // A member chosen to run initdb that is removed is chosen no more: the controller
    // chooses another (issue 11: the cluster waited for it forever).
    if state.bootstrap_node.as_deref() == Some(name) {
        state.bootstrap_node = None;
    }
    state.restarts.remove(name);
    state.reinits.remove(name);
    state.vetoed.remove(name);
    if let Some(d) = state.degraded.as_mut() {
        d.streaming.remove(name);
    }
    Ok(format!("member {name} removed"))
}

fn bootstrap(state: &mut ClusterState, node: &str, system_identifier: u64) -> Result<String, Rejection> {
    known(state, node)?;
    if let Some(a) = &state.adopt {
        return Err(Rejection::BadConfig(format!(
            "{node} cannot bootstrap a new database: the cluster adopts the existing database of {a}"
        )));
    }
    if state.primary.is_some() || state.system_identifier.is_some() || state.generation != Generation(0) {
        return Err(Rejection::AlreadyBootstrapped);
    }
    if let Some(chosen) = state.bootstrap_node.as_deref().filter(|c| *c != node) {
        return Err(Rejection::NotEligible {
            node: node.to_string(),
            why: format!("{chosen} was chosen to bootstrap"),
        });
    }
    state.generation = Generation(1);
    state.sync_standbys = state.sync_candidates(node);
    state.system_identifier = Some(system_identifier);
    state.primary = Some(Primary {
        node: node.to_string(),
        generation: Generation(1),
        timeline: Some(Timeline::FIRST),
    });
    state.history.push(HistoryEntry {
        kind: ChangeKind::Bootstrap,
        parent_timeline: None,
        timeline: Timeline::FIRST,
        switch_lsn: None,
        reason: "bootstrap".into(),
        from: None,
        to: node.to_string(),
        generation: Generation(1),
    });
    Ok(format!("{node} is the first primary (generation 1, timeline 1)"))
}

/// The first primary of an adopting cluster, on the timeline its database already runs.
/// Its quorum starts empty (asynchronous): no other member has a copy yet, so a failover
/// could promote nobody; each standby joins the quorum once it streams, as after `AddMember`.
fn adopted(
    state: &mut ClusterState,
    node: &str,
    system_identifier: u64,
    timeline: Timeline,
) -> Result<String, Rejection> {
    known(state, node)?;
    if state.primary.is_some() || state.system_identifier.is_some() || state.generation != Generation(0) {
        return Err(Rejection::AlreadyBootstrapped);
    }
    if state.adopt.as_deref() != Some(node) {
        return Err(Rejection::BadConfig(match &state.adopt {
            Some(a) => format!("{node} cannot be adopted: the cluster adopts the database of {a}"),
            None => format!(
                "{node} cannot be adopted: the cluster was not initialised to adopt a database ([cluster] adopt)"
            ),
        }));
    }
    state.generation = Generation(1);
    state.sync_standbys.clear();
    state.system_identifier = Some(system_identifier);
    state.primary = Some(Primary {
        node: node.to_string(),
        generation: Generation(1),
        timeline: Some(timeline),
    });
    state.history.push(HistoryEntry {
        kind: ChangeKind::Bootstrap,
        parent_timeline: None,
        timeline,
        switch_lsn: None,
        reason: format!("adopted the existing database of {node}"),
        from: None,
        to: node.to_string(),
        generation: Generation(1),
    });
    Ok(format!(
        "{node} is the first primary, with its existing database (generation 1, timeline {timeline})"
    ))
}

fn begin(
    state: &mut ClusterState,
    kind: PendingKind,
    to: Option<String>,
    forced: bool,
    reason: &str,
) -> Result<String, Rejection> {
    if state.pending.is_some() {
        return Err(Rejection::AlreadyPending);
    }
    // Before the first primary is recorded no database exists to fail over to: a promoted
    // member would hold an empty or foreign one (found by the adoption sweep).
    if state.system_identifier.is_none() {
        return Err(Rejection::NoPrimary);
    }
    let from = state.primary.take().map(|p| p.node);
    state.generation = state.generation.next();
    state.scheduled_switchover = None;
    state.pending = Some(Pending {
        stop_lsn: None,
        kind,
        from: from.clone(),
        to,
        candidate: None,
        forced,
        reason: reason.to_string(),
    });
    Ok(format!(
        "generation {} fenced (primary was {}), {kind:?} under generation {}",
        Generation(state.generation.0 - 1),
        from.as_deref().unwrap_or("none"),
        state.generation
    ))
}

/// The members that hold every write acknowledged before the current primary's timeline
/// forked: the new primary and the old one (when it is still a member), as `ANY n` of those
/// `n`, so that one real report of either covers them (`decide::election`). `None` when
/// commits are not acknowledged by standbys (asynchronous mode) or there is no such change.
pub fn fork_holders(state: &ClusterState) -> Option<super::SyncConfig> {
    if state.sync_quorum() == 0 {
        return None;
    }
    let last = state.history.last().filter(|h| h.kind != ChangeKind::Bootstrap)?;
    let standbys: std::collections::BTreeSet<String> = std::iter::once(last.to.clone())
        .chain(last.from.clone())
        .filter(|n| state.members.contains_key(n))
        .collect();
    Some(super::SyncConfig {
        k: standbys.len(),
        standbys,
    })
}

/// Whether the candidate of the pending change can have acknowledged no commit before it
/// records its timeline, so that it may be replaced. In quorum mode with `k >= 1` it runs
/// `ANY k (...)` from before its promotion (rendered from the state in which it is the
/// candidate), and no standby streams from it until `RecordTimeline` names it primary:
/// every commit it takes waits for standbys that never come. `synchronous_mode` cannot
/// change while a change is pending, and the set only shrinks (`RemoveMember`), so a `k`
/// of at least 1 now was at least 1 since the promotion. Asynchronous mode has no such
/// bound: the candidate may have taken writes alone, and only `failover --force`, from an
/// operator who knows its PostgreSQL is down, replaces it.
pub fn candidate_acknowledged_nothing(state: &ClusterState) -> bool {
    state.ha.synchronous_mode.is_quorum() && state.sync_quorum() >= 1
}

/// The primary is told to run its quorum again: from then on the quorum may acknowledge
/// writes past the recorded position, which the window's members may lack, so no position
/// is known until the window closes (an election in the meantime refuses, or takes the old
/// primary back).
fn return_to_quorum(d: &mut Degraded) {
    d.restoring = true;
    d.quorum_lsn = None;
}

/// `Command::Degrade`: the primary of `generation` runs asynchronously, and only the
/// synchronous standbys in `streaming` (and, once degraded, still in the window's set) may
/// be promoted by an election in the window.
fn degrade(
    state: &mut ClusterState,
    generation: Generation,
    streaming: &[String],
    at_unix_ms: u64,
    lsn: Option<u64>,
) -> Result<String, Rejection> {
    check_generation(state, generation)?;
    let primary = state.primary_name().ok_or(Rejection::NoPrimary)?.to_string();
    if state.ha.synchronous_mode != super::SyncMode::Degradable {
        return Err(Rejection::BadConfig(format!(
            "synchronous_mode is {}, not degradable: the primary never runs asynchronously in it",
            state.ha.synchronous_mode.as_str()
        )));
    }
    for n in streaming {
        known(state, n)?;
    }
    let now: std::collections::BTreeSet<String> = streaming
        .iter()
        .filter(|n| state.sync_standbys.contains(*n))
        .cloned()
        .collect();
    let list = |set: &std::collections::BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(", ");
    Ok(match &mut state.degraded {
        Some(d) => {
            // Only ever shrinks: a member that stopped in the window lacks what was
            // acknowledged while it was away, even once it streams again.
            d.streaming.retain(|n| now.contains(n));
            // Degraded again while returning: its quorum acknowledged writes since, so
            // where they end is recorded anew (`return_to_quorum` forgot the old position).
            d.restoring = false;
            let at = match (d.quorum_lsn, lsn) {
                (None, Some(l)) => {
                    d.quorum_lsn = Some(l);
                    format!("; it runs asynchronously from {}", crate::decide::election::lsn(l))
                }
                _ => String::new(),
            };
            format!(
                "{primary} stays degraded; still streaming since the window began: [{}]{at}",
                list(&d.streaming)
            )
        }
        None => {
            let message = format!(
                "{primary} degrades to asynchronous replication: fewer than {} synchronous standbys stream (streaming: [{}]); \
                 writes acknowledged from now on may be on {primary} alone",
                state.full_quorum(),
                list(&now)
            );
            state.degraded = Some(Degraded {
                generation,
                since_unix_ms: at_unix_ms,
                streaming: now,
                restoring: false,
                quorum_lsn: lsn,
            });
            message
        }
    })
}

/// Fences the current generation and starts a failover under the next one. A change in
/// progress may be superseded: one whose candidate is not chosen yet (a switchover whose old
/// primary did not stop cleanly in time, a requested target that lacks acknowledged writes,
/// a forced failover out of a stuck one), or one whose candidate never recorded its
/// timeline (it died or hung mid-promotion) when it acknowledged nothing, or when forced.
fn begin_failover(
    state: &mut ClusterState,
    generation: Generation,
    to: Option<&String>,
    forced: bool,
    vetoed: bool,
    reason: &str,
) -> Result<String, Rejection> {
    check_generation(state, generation)?;
    if let Some(to) = to {
        known(state, to)?;
        if state.has_flag(to, Flag::Replica) && !forced {
            return Err(Rejection::NotEligible {
                node: to.clone(),
                why: "it is a replica outside the quorum and may lack acknowledged writes: add --force to accept that"
                    .into(),
            });
        }
        // An operator who asks for this member again overrides its earlier veto (its
        // hook runs again before it promotes).
        state.vetoed.remove(to);
    }
    let safe = forced || vetoed || candidate_acknowledged_nothing(state);
    let mut clean_stop = None;
    if let Some(p) = state.pending.take_if(|p| p.candidate.is_none() || safe) {
        // A switchover whose old primary stopped cleanly becomes a failover (or one that
        // came from such a switchover is superseded): that stop still bounds what the old
        // primary acknowledged (`decide::election::ElectionInput::clean_stop`).
        clean_stop = p.stop_lsn;
        if p.candidate.is_some() {
            // Back to the configuration the fenced primary ran (kept last by `Promote`):
            // the candidate's own acknowledged nothing, so only that one must be covered.
            if let Some(c) = state.sync_unconfirmed.pop() {
                // A member removed since keeps counting through the original configuration
                // (kept unconfirmed), but is no longer in the set (found by the sweep).
                let members = &state.members;
                state.sync_standbys = c
                    .standbys
                    .iter()
                    .filter(|n| members.contains_key(*n))
                    .cloned()
                    .collect();
                if state.sync_config() != c {
                    state.sync_unconfirmed.push(c);
                }
            }
        }
        state.primary = p.from.as_ref().map(|f| Primary {
            node: f.clone(),
            generation: state.generation,
            timeline: None,
        });
    }
    let message = begin(state, PendingKind::Failover, to.cloned(), forced, reason)?;
    if let Some(p) = state.pending.as_mut() {
        p.stop_lsn = clean_stop;
    }
    Ok(message)
}

fn promote(state: &mut ClusterState, generation: Generation, node: &str) -> Result<String, Rejection> {
    check_generation(state, generation)?;
    let pending = state.pending.as_ref().ok_or(Rejection::NothingPending)?;
    match pending.candidate.as_deref() {
        Some(c) if c == node => return Ok(format!("{node} was already told to promote")),
        Some(c) => {
            return Err(Rejection::NotEligible {
                node: node.to_string(),
                why: format!("{c} was already told to promote under generation {generation}"),
            })
        }
        None => {}
    }
    // Once a switchover's old primary has stopped cleanly, any standby that received past
    // its shutdown checkpoint holds every write it acknowledged: the controller may promote
    // such a standby when the target stopped too.
    let drained_switchover = pending.kind == PendingKind::Switchover && pending.stop_lsn.is_some();
    if let Some(to) = &pending.to {
        if to != node && !drained_switchover {
            return Err(Rejection::NotEligible {
                node: node.to_string(),
                why: format!("the pending change targets {to}"),
            });
        }
    }
    let forced = pending.forced;
    eligible(state, node, forced)?;
    if let Some(p) = state.pending.as_mut() {
        p.candidate = Some(node.to_string());
    }
    // Recorded before the candidate promotes, so its first commit already waits for a quorum.
    // The old primary joins the set; members not yet in it (learners still cloning) stay out.
    let from = state.pending.as_ref().and_then(|p| p.from.clone());
    state
        .sync_standbys
        .extend(from.filter(|f| state.members.contains_key(f)));
    state.sync_standbys.remove(node);
    Ok(format!("{node} told to promote under generation {generation}"))
}

fn record_timeline(
    state: &mut ClusterState,
    generation: Generation,
    node: &str,
    timeline: Timeline,
    switch_lsn: Option<crate::types::Lsn>,
    parent_timeline: Option<Timeline>,
) -> Result<String, Rejection> {
    check_generation(state, generation)?;
    // Idempotent when retried after it already took effect.
    if let Some(p) = &state.primary {
        if p.node == node && p.timeline == Some(timeline) {
            return Ok(format!("{node} already primary on timeline {timeline}"));
        }
    }
    let pending = state.pending.as_ref().ok_or(Rejection::NothingPending)?;
    if pending.candidate.as_deref() != Some(node) {
        return Err(Rejection::NotEligible {
            node: node.to_string(),
            why: "it is not the promoted candidate".into(),
        });
    }
    let pending = state.pending.take().expect("checked above");
    state.vetoed.clear();
    // The new primary runs its own quorum from its first commit; the old primary's window
    // was the election's concern.
    state.degraded = None;
    state.primary = Some(Primary {
        node: node.to_string(),
        generation,
        timeline: Some(timeline),
    });
    let kind = match pending.kind {
        PendingKind::Failover => ChangeKind::Failover,
        PendingKind::Switchover => ChangeKind::Switchover,
    };
    state.history.push(HistoryEntry {
        kind,
        parent_timeline,
        timeline,
        switch_lsn,
        reason: pending.reason,
        from: pending.from,
        to: node.to_string(),
        generation,
    });
    Ok(format!(
        "{node} is primary on timeline {timeline} (generation {generation})"
    ))
}

/// PostgreSQL's rules for a slot name, and raftpg's prefix kept for its members' slots.
fn check_slot_name(name: &str) -> Result<(), Rejection> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !valid {
        return Err(Rejection::BadConfig(format!(
            "'{name}' is not a slot name PostgreSQL accepts: 1 to 63 characters of a-z, 0-9 and _"
        )));
    }
    if name.starts_with(crate::postgres::conf::SLOT_PREFIX) {
        return Err(Rejection::BadConfig(format!(
            "'{name}': slot names starting with {} are raftpg's own, for its members; choose another name",
            crate::postgres::conf::SLOT_PREFIX
        )));
    }
    Ok(())
}

fn add_slot(state: &mut ClusterState, name: &str, kind: &SlotKind) -> Result<String, Rejection> {
    check_slot_name(name)?;
    if let Some(existing) = state.slots.get(name).filter(|s| s.removed.is_none()) {
        if existing.kind == *kind {
            return Ok(format!("permanent slot {name} is already declared"));
        }
        return Err(Rejection::BadConfig(format!(
            "a permanent slot called {name} is already declared with other settings: `ctl slots remove {name}` first"
        )));
    }
    if let SlotKind::Logical { plugin, database } = kind {
        if plugin.trim().is_empty() || database.trim().is_empty() {
            return Err(Rejection::BadConfig(format!(
                "logical slot {name} needs --plugin (for example pgoutput) and --database"
            )));
        }
        let level = state
            .parameters
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("wal_level"))
            .map(|(_, v)| v.to_ascii_lowercase());
        if level.as_deref() != Some("logical") {
            return Err(Rejection::BadConfig(format!(
                "logical slot {name} needs wal_level = logical: `ctl config set postgresql.parameters.wal_level=logical`, \
                 then `ctl restart --pending`, then add the slot"
            )));
        }
    }
    // Every member's slot and every permanent one must fit max_replication_slots.
    let max = state
        .parameters
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("max_replication_slots"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(10);
    let needed = state.members.len().saturating_sub(1) + state.declared_slots().count() + 1;
    if needed > max {
        return Err(Rejection::BadConfig(format!(
            "slot {name} would make {needed} slots on the primary (one per other member, one per permanent slot), \
             more than max_replication_slots = {max}: raise it first (`ctl config set \
             postgresql.parameters.max_replication_slots=N`, then `ctl restart --pending`)"
        )));
    }
    state.slots.insert(
        name.to_string(),
        PermanentSlot {
            kind: kind.clone(),
            removed: None,
        },
    );
    Ok(format!("permanent slot {name} declared: every primary keeps it"))
}

fn set_config(state: &mut ClusterState, key: &str, value: Option<&str>) -> Result<String, Rejection> {
    if key == "slot_ttl_ms" {
        state.slot_ttl_ms = match value {
            None => None,
            Some(v) => Some(v.trim().parse::<u64>().map_err(|_| {
                Rejection::BadConfig(format!(
                    "slot_ttl_ms={v}: a whole number of milliseconds (0: never drop an inactive slot)"
                ))
            })?),
        };
        return Ok(match value {
            Some(v) => format!("{key} = {v}"),
            None => format!("{key} reset"),
        });
    }
    if key == "lease_ms" && state.pending.is_some() {
        // The candidate's confirmation before it promotes is counted under the length it
        // has applied, and a new primary's clock starts under today's (`RecordTimeline`
        // forgets `lease_ms_before`): a change in between could leave the first longer.
        return Err(Rejection::BadConfig(
            "lease_ms cannot change while a failover or switchover is in progress: wait for it (`raftpg ctl list`)"
                .into(),
        ));
    }
    if key == "synchronous_mode" && state.pending.is_some() {
        // The election, and the replacement of a stuck candidate, rest on the mode the
        // fenced primary and the candidate ran.
        return Err(Rejection::BadConfig(
            "synchronous_mode cannot change while a failover or switchover is in progress: wait for it (`raftpg ctl list`)"
                .into(),
        ));
    }
    if let Some(name) = key.strip_prefix("postgresql.parameters.") {
        let name = super::params::check_parameter(name, value).map_err(Rejection::BadConfig)?;
        let full = state.parameters.len() >= super::params::MAX_PARAMETERS && !state.parameters.contains_key(&name);
        if value.is_some() && full {
            return Err(Rejection::BadConfig(format!(
                "the cluster already sets {} PostgreSQL parameters, the most it keeps: reset one first",
                super::params::MAX_PARAMETERS
            )));
        }
        // One entry per name as PostgreSQL reads it (an older raftpg kept the case given).
        state.parameters.retain(|k, _| !k.eq_ignore_ascii_case(&name));
        if let Some(v) = value {
            state.parameters.insert(name, v.to_string());
        }
    } else {
        state.ha.set(key, value).map_err(Rejection::BadConfig)?;
        if key == "synchronous_mode" {
            match state.ha.synchronous_mode {
                // The quorum comes back as from `Undegrade`: the window ends once the
                // primary confirms it.
                super::SyncMode::Quorum => {
                    if let Some(d) = state.degraded.as_mut() {
                        return_to_quorum(d);
                    }
                }
                // Asynchronous mode bounds a failover by `maximum_lag_on_failover` instead.
                super::SyncMode::Off => state.degraded = None,
                super::SyncMode::Degradable => {}
            }
        }
    }
    Ok(match value {
        Some(v) => format!("{key} = {v}"),
        None => format!("{key} reset"),
    })
}

fn check_generation(state: &ClusterState, expected: Generation) -> Result<(), Rejection> {
    if state.generation != expected {
        return Err(Rejection::StaleGeneration {
            expected,
            actual: state.generation,
        });
    }
    Ok(())
}

fn known<'a>(state: &'a ClusterState, name: &str) -> Result<&'a Member, Rejection> {
    state
        .member(name)
        .ok_or_else(|| Rejection::UnknownMember(name.to_string()))
}

fn eligible(state: &ClusterState, node: &str, forced: bool) -> Result<(), Rejection> {
    let m = known(state, node)?;
    if m.tags.nofailover && !forced {
        return Err(Rejection::NotEligible {
            node: node.to_string(),
            why: "it is tagged nofailover".into(),
        });
    }
    if state.has_flag(node, Flag::Replica) && !forced {
        return Err(Rejection::NotEligible {
            node: node.to_string(),
            why: "it is a replica outside the quorum and may lack acknowledged writes: only a forced failover promotes it".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
