//! `ClusterState`: members, primary, generation, sync set, pending change, pause,
//! cluster-wide configuration and timeline history (DESIGN §3).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::config::HaConfig;
use crate::types::{Generation, Timeline};

/// Per-member tags, as in Patroni.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tags {
    /// Never promote this member.
    pub nofailover: bool,
    /// Higher wins among candidates with the same WAL position.
    pub failover_priority: i32,
}

/// A tag added after `Tags` was first stored, kept in `ClusterState::flags` so that older
/// snapshots and log entries still decode. Variants are only ever appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Flag {
    /// Never a synchronous standby: streams asynchronously and never counts in `ANY k`.
    NoSync,
    /// `/replica` and `/read-only` answer 503, so load balancers leave it out.
    NoLoadBalance,
    /// Added with `ctl member add --replica`: a Raft learner for good, outside the quorum
    /// and the synchronous set, never promoted by an automatic failover.
    Replica,
}

impl Flag {
    pub const ALL: [Flag; 2] = [Flag::NoSync, Flag::NoLoadBalance];

    /// The name an operator types (`ctl member tags n2 nosync=true`).
    pub fn key(self) -> &'static str {
        match self {
            Flag::NoSync => "nosync",
            Flag::NoLoadBalance => "noloadbalance",
            Flag::Replica => "replica",
        }
    }
}

/// One change of a member's tags (`ctl member tags`). Variants are only ever appended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TagChange {
    NoFailover(bool),
    FailoverPriority(i32),
    Flag(Flag, bool),
    /// `replicatefrom`: stream from this other standby (cascading); `None` clears it.
    ReplicateFrom(Option<String>),
}

impl TagChange {
    /// `key=value` as an operator types it; the error says what is accepted.
    pub fn parse(key: &str, value: &str) -> Result<TagChange, String> {
        let boolean = || match value.to_ascii_lowercase().as_str() {
            "true" | "on" | "yes" | "1" => Ok(true),
            "false" | "off" | "no" | "0" => Ok(false),
            _ => Err(format!("{key}={value}: {key} is true or false")),
        };
        match key.to_ascii_lowercase().as_str() {
            "nofailover" => Ok(TagChange::NoFailover(boolean()?)),
            "failover_priority" => value
                .parse()
                .map(TagChange::FailoverPriority)
                .map_err(|_| format!("{key}={value}: failover_priority is a whole number (higher wins)")),
            "replicatefrom" => Ok(TagChange::ReplicateFrom(match value.trim() {
                "" => None,
                v if v.eq_ignore_ascii_case("none") => None,
                v => Some(v.to_string()),
            })),
            "replica" => Err(format!(
                "{key}={value}: whether a member is a replica is chosen when it is added (`ctl member add --replica`)"
            )),
            k => match Flag::ALL.into_iter().find(|f| f.key() == k) {
                Some(f) => Ok(TagChange::Flag(f, boolean()?)),
                None => Err(format!(
                    "unknown tag '{key}': the tags are nofailover, failover_priority, replicatefrom, {}",
                    Flag::ALL.map(Flag::key).join(", ")
                )),
            },
        }
    }
}

impl std::fmt::Display for TagChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TagChange::NoFailover(v) => write!(f, "nofailover={v}"),
            TagChange::FailoverPriority(v) => write!(f, "failover_priority={v}"),
            TagChange::Flag(flag, v) => write!(f, "{}={v}", flag.key()),
            TagChange::ReplicateFrom(u) => write!(f, "replicatefrom={}", u.as_deref().unwrap_or("")),
        }
    }
}

/// A permanent replication slot (`ctl slots add`): every primary keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SlotKind {
    /// A physical slot (pg_receivewal, a backup tool, a standby outside the cluster).
    Physical,
    /// A logical slot, decoded by `plugin`, in `database`.
    Logical { plugin: String, database: String },
}

/// A declared permanent slot. A removed one stays as a tombstone, so that every primary
/// drops its copy; declaring the name again revives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermanentSlot {
    pub kind: SlotKind,
    /// Why it was removed (`ctl slots remove`, or its consumer gone past `slot_ttl_ms`).
    pub removed: Option<String>,
}

/// How long a slot raftpg keeps may stay inactive while it holds WAL before it is dropped,
/// unless `slot_ttl_ms` says otherwise: 30 minutes, as Patroni's `member_slots_ttl`.
pub const DEFAULT_SLOT_TTL_MS: u64 = 30 * 60 * 1000;

/// A cluster member: one raftpg process and its PostgreSQL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Unique name; also PostgreSQL's `application_name`.
    pub name: String,
    /// Raft node id, never reused.
    pub id: u64,
    /// Raft transport address, host:port.
    pub raft_addr: String,
    /// Control API address, host:port.
    pub grpc_addr: String,
    /// PostgreSQL address, host:port.
    pub pg_addr: String,
    /// HTTP health API address, host:port.
    pub http_addr: String,
    pub tags: Tags,
}

/// The PostgreSQL instance that accepts writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Primary {
    pub node: String,
    /// Generation under which this node became primary.
    pub generation: Generation,
    /// PostgreSQL timeline; `None` between promotion and its recording.
    pub timeline: Option<Timeline>,
}

/// What kind of primary change is under way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PendingKind {
    /// Unplanned: the old primary lost its lease or died.
    Failover,
    /// Planned: the old primary shuts down cleanly first.
    Switchover,
}

impl PendingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PendingKind::Failover => "failover",
            PendingKind::Switchover => "switchover",
        }
    }
}

/// A primary change that has fenced the old generation but not finished.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Switchover: the old primary shut down cleanly; its last checkpoint starts at this LSN.
    /// The target promotes only once it has received past it.
    pub stop_lsn: Option<u64>,
    pub kind: PendingKind,
    /// Primary of the fenced generation, if there was one.
    pub from: Option<String>,
    /// Requested target (switchover or manual failover); `None` lets the controller choose.
    pub to: Option<String>,
    /// Member chosen and told to promote, once decided.
    pub candidate: Option<String>,
    /// Promotion may lose acknowledged writes (`failover --force`).
    pub forced: bool,
    pub reason: String,
}

/// Why the primary changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    Bootstrap,
    Failover,
    Switchover,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Bootstrap => "bootstrap",
            ChangeKind::Failover => "failover",
            ChangeKind::Switchover => "switchover",
        }
    }
}

/// A synchronous configuration: `ANY k (standbys)`; `k = 0` is asynchronous.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncConfig {
    pub standbys: BTreeSet<String>,
    pub k: usize,
}

/// A switchover to run at a wall-clock time (an operator convenience, not a safety input).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledSwitchover {
    /// The primary expected at that time; the switchover is dropped if another is primary.
    pub from: Option<String>,
    pub to: String,
    /// Milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

/// One switch of primary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub kind: ChangeKind,
    pub timeline: Timeline,
    /// Timeline the new one forked from (from the new primary's history file).
    pub parent_timeline: Option<Timeline>,
    /// WAL position where the new timeline forked (encoded as PostgreSQL prints it, X/Y).
    pub switch_lsn: Option<crate::types::Lsn>,
    pub reason: String,
    pub from: Option<String>,
    pub to: String,
    pub generation: Generation,
}

/// Everything the Raft group agrees on. Changed only by `apply`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Set once by `Command::Init`; until then the state has no members.
    pub initialized: bool,
    /// Members by name.
    pub members: BTreeMap<String, Member>,
    pub primary: Option<Primary>,
    /// Incremented by every change of primary (fencing token).
    pub generation: Generation,
    /// Members that count towards the primary's commit quorum.
    pub sync_standbys: BTreeSet<String>,
    /// Earlier synchronous configurations the primary may still run, until it confirms
    /// the current one. A failover must be safe under each of them too.
    pub sync_unconfirmed: Vec<SyncConfig>,
    pub pending: Option<Pending>,
    /// No automatic failover or fencing decisions while set.
    pub paused: bool,
    pub ha: HaConfig,
    /// Cluster-wide PostgreSQL parameters, name -> value.
    pub parameters: BTreeMap<String, String>,
    pub history: Vec<HistoryEntry>,
    /// PostgreSQL's system identifier, recorded at bootstrap.
    pub system_identifier: Option<u64>,
    /// The member chosen to run initdb, before the first primary exists.
    pub bootstrap_node: Option<String>,
    /// Restart requests per member (`ctl restart`): the agent restarts when the count grows.
    pub restarts: BTreeMap<String, u64>,
    /// Re-clone requests per member (`ctl reinit`).
    pub reinits: BTreeMap<String, u64>,
    pub scheduled_switchover: Option<ScheduledSwitchover>,
    /// Counts every accepted command: a cheap "has anything changed" for watchers.
    pub revision: u64,
    /// `[cluster] adopt`: the member whose existing database becomes the first primary
    /// (no initdb anywhere). Kept after the adoption, as a record. The last field: a
    /// snapshot written before it existed is read with `None` (`codec::decode_state`).
    pub adopt: Option<String>,
    /// Members that refused the promotion of the current change (their `pre_promote` hook
    /// failed, or their database cannot become consistent from its own WAL): never
    /// chosen again by the controller until a primary is recorded (an operator's
    /// `failover --to` one of them lifts it). Appended after `adopt`.
    pub vetoed: BTreeSet<String>,
    /// Tags added after `Member::tags` was first stored (`nosync`, `noloadbalance`), by
    /// member; a member without any has no entry. Appended after `vetoed`.
    pub flags: BTreeMap<String, BTreeSet<Flag>>,
    /// `replicatefrom` tags: member -> the standby it streams from (cascading replication).
    /// Appended after `flags`.
    pub upstreams: BTreeMap<String, String>,
    /// Permanent replication slots (`ctl slots add`), removed ones included. Appended
    /// after `upstreams`.
    pub slots: BTreeMap<String, PermanentSlot>,
    /// `slot_ttl_ms` (`ctl config set`): how long a slot raftpg keeps may be inactive
    /// while holding WAL before it is dropped; `None` is `DEFAULT_SLOT_TTL_MS`, 0 never.
    /// Appended after `slots`.
    pub slot_ttl_ms: Option<u64>,
    /// `synchronous_mode = degradable`: the primary runs asynchronously since too few of
    /// its synchronous standbys streamed, or is returning to its quorum. Appended after
    /// `slot_ttl_ms`.
    pub degraded: Option<Degraded>,
    /// The highest timeline a candidate may have taken without recording it: one told to
    /// promote and replaced (`BeginFailover`) before its `RecordTimeline` (it may have
    /// died or hung just after it promoted). The next candidate puts a history file in
    /// place for it too, so that its PostgreSQL takes a newer timeline: two members on one
    /// timeline number with different forks never stream from each other (simulation seed
    /// 3107967). Appended after `degraded`.
    pub unrecorded_timeline: Option<Timeline>,
    /// The longest `lease_ms` the current primary may still hold a lease under, when
    /// `lease_ms` was lowered since it was recorded: a renewal granted before the change
    /// runs under the old length. A Raft leader that starts its tenure cannot know when the
    /// last of those was granted, so it clocks the primary under this length
    /// (`lease_ceiling_ms`); a new primary's leases are all granted under the new one
    /// (`RecordTimeline` clears it). Appended after `unrecorded_timeline`.
    pub lease_ms_before: Option<u64>,
}

/// A degraded window of `synchronous_mode = degradable` (`Command::Degrade`): writes
/// acknowledged in it may be on the primary alone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Degraded {
    /// The primary's generation when it degraded.
    pub generation: Generation,
    /// Wall clock of the leader that decided it (for people; never a safety input).
    pub since_unix_ms: u64,
    /// The synchronous standbys that streamed when it degraded and have not stopped since:
    /// the only members a failover in the window may promote (each may still lack the
    /// newest writes, which it received asynchronously). Only ever shrinks.
    pub streaming: BTreeSet<String>,
    /// `Command::Undegrade`: enough standbys stream again and the primary is told to run
    /// its quorum; the window ends when it confirms it (`ConfirmSync` with `k > 0`).
    pub restoring: bool,
    /// The primary's write position once it ran asynchronously (its first report showing
    /// it): every write a quorum acknowledged before the window lies before it. Until it is
    /// known the primary may still run its quorum, and elections follow the usual rules.
    pub quorum_lsn: Option<u64>,
}

impl ClusterState {
    /// The longest lease the primary may hold: `lease_ms`, or what it was before it was
    /// lowered under this primary (`lease_ms_before`).
    pub fn lease_ceiling_ms(&self) -> u64 {
        self.ha.lease_ms.max(self.lease_ms_before.unwrap_or(0))
    }

    /// The newest timeline any member may have taken: recorded, or taken by a candidate
    /// replaced before it recorded one (`unrecorded_timeline`). A candidate's PostgreSQL
    /// must take a newer one.
    pub fn newest_timeline_taken(&self) -> Timeline {
        self.history
            .iter()
            .map(|h| h.timeline)
            .chain(self.unrecorded_timeline)
            .max()
            .unwrap_or(Timeline::FIRST)
    }

    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.get(name)
    }

    pub fn member_by_id(&self, id: u64) -> Option<&Member> {
        self.members.values().find(|m| m.id == id)
    }

    /// A Raft node id as people read it: the member's name, or `node <id>` if unknown.
    pub fn label_of(&self, id: u64) -> String {
        self.member_by_id(id)
            .map_or_else(|| format!("node {id}"), |m| m.name.clone())
    }

    /// Name of the primary of the current generation, if any.
    pub fn primary_name(&self) -> Option<&str> {
        self.primary.as_ref().map(|p| p.node.as_str())
    }

    /// The timeline the current primary recorded; `None` with no primary, or between its
    /// promotion and the record.
    pub fn primary_timeline(&self) -> Option<Timeline> {
        self.primary.as_ref().and_then(|p| p.timeline)
    }

    /// `k` of the primary's `synchronous_standby_names = 'ANY k (...)'`: floor(G/2) for the
    /// group G of the primary and its sync standbys in quorum mode, so an acknowledged
    /// commit is on a majority of that group.
    pub fn sync_quorum(&self) -> usize {
        if self.runs_degraded() {
            return 0;
        }
        self.full_quorum()
    }

    /// Whether the primary of this generation runs asynchronously in a degraded window (not
    /// returning). Only the degraded primary's own generation: a candidate promoted in the
    /// window runs its quorum from its first commit.
    pub fn runs_degraded(&self) -> bool {
        self.degraded
            .as_ref()
            .is_some_and(|d| !d.restoring && d.generation == self.generation)
    }

    /// `k` of the quorum, whether or not the primary runs degraded.
    pub fn full_quorum(&self) -> usize {
        self.ha.synchronous_mode.quorum_of(self.sync_standbys.len())
    }

    /// The synchronous configuration the primary should run now.
    pub fn sync_config(&self) -> SyncConfig {
        SyncConfig {
            standbys: self.sync_standbys.clone(),
            k: self.sync_quorum(),
        }
    }

    /// The synchronous configuration `me`'s PostgreSQL must run: the current one, or, for
    /// the member chosen to bootstrap, the one `Bootstrap` will record. Otherwise the first
    /// primary would run without a quorum between its first start and its next
    /// reconfiguration, and a write it acknowledged then could be on no standby (the
    /// simulation found this).
    pub fn sync_config_for(&self, me: &str) -> SyncConfig {
        let bootstrapping =
            self.primary.is_none() && self.system_identifier.is_none() && self.bootstrap_node.as_deref() == Some(me);
        if !bootstrapping {
            return self.sync_config();
        }
        // An adopted database starts with no standby in its quorum: the others have no
        // copy of it yet, and the set grows as each one streams (as after `AddMember`).
        if self.adopt.as_deref() == Some(me) {
            return SyncConfig::default();
        }
        let standbys = self.sync_candidates(me);
        let k = self.ha.synchronous_mode.quorum_of(standbys.len());
        SyncConfig { standbys, k }
    }

    /// Every member except `name`.
    pub fn others(&self, name: &str) -> BTreeSet<String> {
        self.members.keys().filter(|m| *m != name).cloned().collect()
    }

    /// Whether `name` carries `flag`.
    pub fn has_flag(&self, name: &str, flag: Flag) -> bool {
        self.flags.get(name).is_some_and(|f| f.contains(&flag))
    }

    /// Whether `name` may be a synchronous standby: not tagged `nosync`, not a replica, and
    /// not cascading (a standby that streams from another standby never acknowledges a
    /// commit to the primary).
    pub fn may_be_sync(&self, name: &str) -> bool {
        !self.has_flag(name, Flag::NoSync) && !self.has_flag(name, Flag::Replica) && !self.upstreams.contains_key(name)
    }

    /// Every member except `name` that may be a synchronous standby (`may_be_sync`): the
    /// sync set of `name` as a new primary.
    pub fn sync_candidates(&self, name: &str) -> BTreeSet<String> {
        self.members
            .keys()
            .filter(|m| *m != name && self.may_be_sync(m))
            .cloned()
            .collect()
    }

    /// The `replicatefrom` tag of `name`, if set.
    pub fn replicates_from(&self, name: &str) -> Option<&str> {
        self.upstreams.get(name).map(String::as_str)
    }

    /// The member `name` streams from by design: its `replicatefrom` upstream while that is
    /// another member and not the primary (a standby), else the primary. `None` for the
    /// primary itself, and while there is no primary. The source keeps `name`'s
    /// replication slot (`slots_kept_by`).
    pub fn source_of(&self, name: &str) -> Option<&str> {
        let p = self.primary_name()?;
        if p == name {
            return None;
        }
        match self.replicates_from(name) {
            Some(u) if u != p && u != name && self.members.contains_key(u) => Some(u),
            _ => Some(p),
        }
    }

    /// The members whose replication slot `me` keeps: those that stream from it by design.
    pub fn slots_kept_by(&self, me: &str) -> BTreeSet<String> {
        self.members
            .keys()
            .filter(|m| *m != me && self.source_of(m) == Some(me))
            .cloned()
            .collect()
    }

    /// Whether an automatic failover or switchover may never choose `name`: tagged
    /// `nofailover`, or a replica outside the quorum.
    pub fn never_chosen(&self, name: &str) -> bool {
        self.member(name).is_some_and(|m| m.tags.nofailover) || self.has_flag(name, Flag::Replica)
    }

    /// The permanent slots every primary keeps (declared and not removed).
    pub fn declared_slots(&self) -> impl Iterator<Item = (&String, &SlotKind)> {
        self.slots
            .iter()
            .filter(|(_, s)| s.removed.is_none())
            .map(|(n, s)| (n, &s.kind))
    }

    /// The `slot_ttl_ms` in force (0: never drop).
    pub fn slot_ttl_ms(&self) -> u64 {
        self.slot_ttl_ms.unwrap_or(DEFAULT_SLOT_TTL_MS)
    }

    /// (restart, re-clone) requests made so far for `name` (`ctl restart` / `ctl reinit`).
    pub fn requests_of(&self, name: &str) -> (u64, u64) {
        let count = |m: &BTreeMap<String, u64>| m.get(name).copied().unwrap_or(0);
        (count(&self.restarts), count(&self.reinits))
    }

    /// How many primary changes of `kind` the timeline history records.
    pub fn count_changes(&self, kind: ChangeKind) -> u64 {
        self.history.iter().filter(|h| h.kind == kind).count() as u64
    }

    /// Cluster-wide configuration as flat key/value pairs (`config show`).
    pub fn config_pairs(&self) -> BTreeMap<String, String> {
        let mut out = self.ha.pairs();
        for (k, v) in &self.parameters {
            out.insert(format!("postgresql.parameters.{k}"), v.clone());
        }
        out.insert("slot_ttl_ms".into(), self.slot_ttl_ms().to_string());
        out
    }
}
