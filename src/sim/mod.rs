//! A deterministic simulation of the composed protocol: every node's real agent decisions
//! (`decide::agent`), the real controller (`decide::controller`, with the real election)
//! and the real replicated state (`cluster::apply`), over a model of PostgreSQL, of Raft
//! and of the network, under random faults. Seeded, single-threaded, no I/O and no clock:
//! the same seed gives the same run, and a failing seed prints the trace that replays it.
//!
//! What is modelled, and how:
//! - **Time** advances in steps of `STEP_MS`; each node's clock runs at its own rate (up
//!   to 5 % fast or slow, inside the 10 % the lease assumes).
//! - **Raft** is one linearizable log: a proposal commits at once if its node reaches the
//!   leader; the leader is a live node in a group holding a majority, and a new one is
//!   elected `ELECTION_MS` after the old one is lost. Nodes cut off from the leader keep
//!   deciding on the state they last applied.
//! - **The lease and the controller's inputs** are the real code on each node's clock
//!   (`Sim::clock`): every agent's `lease::Holder`, and on every node its `lease::Book`
//!   (reports, the grant rule `Book::renew`, the lease clock restarted with each tenure)
//!   and `controller::Timers`, lost when raftpg restarts. The fence keeper is armed with
//!   the last expiry and survives a raftpg restart.
//! - **Reports** are the real ones (`decide::report::derive`).
//! - **PostgreSQL** (`FakePg`): WAL as a list of records with their timeline, a timeline
//!   counter, clean or crashed stops, standby or primary control data, streaming (a standby
//!   receives while its WAL is a prefix of its upstream's), `ANY k` quorum commit with
//!   acknowledgements only once `k` listed standbys flushed, promote, pg_rewind (back to the
//!   common prefix), pg_basebackup, crash and freeze.
//! - **Clients** write to every node whose own view names it primary and whose PostgreSQL
//!   runs as one, as clients behind Patroni-style health checks do.
//!
//! - **Pauses** (`SimConfig::pauses`): raftpg stopped for 0.2-4 s keeps its memory; on
//!   resuming, its lease task sends the report made before the pause, and it acts once on
//!   the state it applied before it. Its PostgreSQL, its clients' connections and its fence
//!   keeper run on.
//! - **Switchovers** (`SimConfig::switchovers`): an operator asks for one to a standby the
//!   leader's last report says streams; a clean shutdown writes a shutdown checkpoint
//!   record and sends it to the connected standbys before it exits.
//! - **Delays** (`SimConfig::delays`): reports and grants take 0-800 ms each way; a grant
//!   counts from when its renewal was sent, as `lease::Holder::granted`.
//! - **The agent's table**: every decision must stay inside its cell of `decide::table`.
//!
//! Not modelled: openraft itself (elections, terms, log replication), the gRPC transport,
//! the effects code in `agent/` (actions are carried out by the model below), message
//! delays within a step, joint consensus (a membership change takes effect when it
//! commits), a disk that fills anywhere but pg_wal's filesystem.
//!
//! Invariants, checked after every step:
//! - acknowledgements never go back to an older primary: the epoch (the generation under
//!   which the acknowledging PostgreSQL became primary) never decreases, and one epoch has
//!   one node;
//! - a promotion starts from a WAL that holds every acknowledged write;
//! - when a PostgreSQL promotes, no PostgreSQL that held a lease still runs as primary.
//!
//! Liveness: once every fault heals, a primary is recorded, writable, and acknowledges a
//! write within `LIVENESS_BOUND_MS`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;

use tokio::time::Instant;

use crate::agent::keeper::{armed_until, still_inherited};
use crate::agent::timers::{renews, LeaseTask, Timers as AgentTimers};
use crate::cluster::{apply, ClusterState, Command, Member, Tags};
use crate::controller::Timers;
use crate::decide::agent::{decide as agent_decide, wanted, Action, AgentInput, LeaseView, Local, Wanted};
use crate::decide::controller::{decide as controller_decide, ControllerAction, ControllerInput, Report};
use crate::decide::report::{derive, grants_renewal, renews_primary};
use crate::decide::table::{self, Column, Row};
use crate::lease::{Book, Holder, LeaseTerms};
use crate::postgres::ctl::DbState;
use crate::postgres::{conf, Controldata, PgState, Replica};
use crate::types::{Generation, Timeline};

/// `SimConfig::delays`: the longest one-way delay of a report or a grant, longer than the
/// margin the controller adds to the lease (200 ms and 10 %), as on a saturated machine.
const DELAY_MAX_MS: u64 = 800;

/// The write id of a shutdown checkpoint record in a modelled WAL (clients' ids start at 1).
const SHUTDOWN_CHECKPOINT: u64 = 0;

/// One simulated step.
pub const STEP_MS: u64 = 50;
/// A lost Raft leader is replaced after this long.
pub const ELECTION_MS: u64 = 1_000;
/// Once all faults heal, a primary acknowledges a write within this long. The worst case,
/// term by term: an election (1 s); the old lease's controller deadline (2.4 s); final
/// reports; a candidate that does not finish replaced after `4 x (2 x lease + 1 s)` = 20 s;
/// a diverged standby rewound after 5 s; with margin for two such rounds.
pub const LIVENESS_BOUND_MS: u64 = 60_000;
/// `SimConfig::rewind_race`: how long a rewound standby takes to start streaming.
const REWIND_CATCH_UP_MS: u64 = 2_000;

/// A deliberately broken protocol, to show that the invariants catch it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mutation {
    #[default]
    None,
    /// The controller fences the primary as soon as one renewal is late, without waiting
    /// for its lease to run out.
    NoLeaseWait,
    /// The controller promotes on any one final report, ignoring the quorum the old
    /// primary ran.
    IgnoreQuorum,
    /// A candidate whose WAL stops short of consistency starts in recovery anyway instead
    /// of declining (finding 17; caught only with `SimConfig::rewind_race`).
    IgnoreShortWal,
    /// The fence keeper does nothing while raftpg is paused: only raftpg's own lease task
    /// would fence, so a paused raftpg leaves PostgreSQL serving (`SimConfig::pauses`). A
    /// killed raftpg is still covered, so what this breaks, pauses break.
    NoKeeperWhilePaused,
    /// The lease holder counts a granted lease from the reply's arrival instead of from
    /// when it sent the renewal (`lease::Holder::granted` takes the send time): with
    /// delayed replies (`SimConfig::delays`) it outlives the leader's deadline.
    LeaseFromReply,
    /// The leader times every renewal with the `lease_ms` it has now, a new tenure too, and
    /// the holder counts the length it has applied: lowering `lease_ms` then cuts short a
    /// lease granted under the longer one, or counted under it by a holder that has not
    /// applied the change (`SimConfig::lease_changes`).
    LeaseLengthNow,
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub nodes: usize,
    /// Steps with faults, before everything heals.
    pub fault_steps: u64,
    /// Faults per thousand steps.
    pub fault_rate: u64,
    pub mutation: Mutation,
    /// An operator also tags members `nosync` and clears it again, between the faults.
    /// Off by default, so that the seeds of the default run stay as they were.
    pub operator: bool,
    /// pg_rewind races its source: the rewound database must replay to where the source's
    /// WAL was at the end of the copy (its minimum recovery point) before it is consistent,
    /// and it holds only the WAL before the divergence, so it needs the source's to get
    /// there (finding 17 of docs/jepsen.md). Off by default, as `operator`.
    pub rewind_race: bool,
    /// raftpg processes are also paused (SIGSTOP) for 0.2-4 s, around the 2 s lease, and
    /// resume with their memory: the lease task first, with the report the agent left
    /// before the pause, and both on the state applied before it. Off by default, as
    /// `operator`.
    pub pauses: bool,
    /// An operator also asks for switchovers to a standby the Raft leader's last report
    /// says streams (as `ctl switchover` checks), under the faults. Off by default.
    pub switchovers: bool,
    /// Reports and their replies take 0-800 ms each way (in steps), so that renewals
    /// arrive late, after a pause, or under a Raft leader that changed meanwhile. Off by
    /// default, as `operator`.
    pub delays: bool,
    /// An operator also removes members (`ctl member remove`) and adds them back (`ctl
    /// member add`) under the faults: the Raft majority is then counted over the members
    /// left, a removed member's raftpg applies nothing more (its removal, or not, at
    /// random), and its PostgreSQL runs on as it was. Every removed member is added back
    /// once the faults heal. Off by default, as `operator`.
    pub membership: bool,
    /// The filesystem of a node's pg_wal also fills up, and is freed again, under the faults:
    /// a primary that writes then PANICs and is down (its crash recovery cannot write either),
    /// a standby stops receiving, and nothing starts, promotes, clones or rewinds there until
    /// there is room; a clean stop cannot write its shutdown checkpoint. The agent sees it as
    /// the real one does (`disk_full` while PostgreSQL is down). The heal frees every disk.
    /// Off by default, as `operator`.
    pub disk_full: bool,
    /// An operator also changes `lease_ms` (`ctl config set lease_ms=...`) between 750 and
    /// 3000 ms under the faults. Off by default, as `operator`.
    pub lease_changes: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 3,
            fault_steps: 1_200,
            fault_rate: 25,
            mutation: Mutation::None,
            operator: false,
            rewind_race: false,
            pauses: false,
            switchovers: false,
            delays: false,
            membership: false,
            disk_full: false,
            lease_changes: false,
        }
    }
}

/// What a run found.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub seed: u64,
    /// The first broken invariant, if any.
    pub violation: Option<String>,
    /// Time from the heal to the first acknowledged write.
    pub recovery_ms: Option<u64>,
    pub acked: usize,
    pub failovers: u64,
    /// Accepted operator tag changes (`SimConfig::operator`).
    pub tag_changes: u64,
    /// Members removed and added back that the Raft state accepted
    /// (`SimConfig::membership`).
    pub membership_changes: u64,
    /// pg_wal filesystems that filled up (`SimConfig::disk_full`).
    pub disk_fills: u64,
    /// Changes of `lease_ms` the Raft state accepted (`SimConfig::lease_changes`).
    pub lease_changes: u64,
    /// Candidates that declined because their WAL stopped short of consistency
    /// (`SimConfig::rewind_race`).
    pub declined: u64,
    /// raftpg processes paused (`SimConfig::pauses`).
    pub pauses: u64,
    /// Switchovers the Raft state accepted (`SimConfig::switchovers`), and those that
    /// ended as switchovers (the target or another standby recorded its timeline), not
    /// turned into failovers.
    pub switchovers: u64,
    pub switchovers_done: u64,
    /// The last events, to replay the failure by hand.
    pub trace: Vec<String>,
}

impl Outcome {
    pub fn report(&self) -> String {
        let mut out = format!(
            "seed {}: {} (acknowledged {}, failovers {}, recovery {:?} ms)\n",
            self.seed,
            self.violation.as_deref().unwrap_or("ok"),
            self.acked,
            self.failovers,
            self.recovery_ms
        );
        for line in &self.trace {
            let _ = writeln!(out, "  {line}");
        }
        out
    }
}

/// splitmix64: small, fast, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn per_mille(&mut self, p: u64) -> bool {
        self.below(1000) < p
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    Down,
    Primary,
    Standby,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Data {
    /// (timeline, write id) per record; an LSN is `BASE_LSN + position`.
    wal: Vec<(Timeline, u64)>,
    timeline: Timeline,
    /// Where the timeline forked, as its history file says: (parent timeline, WAL length).
    fork: Option<(Timeline, usize)>,
    /// Stopped cleanly (a checkpoint ends the WAL).
    clean: bool,
    /// Last ran in recovery.
    was_standby: bool,
    system: u64,
    /// After a pg_rewind that raced its source (`SimConfig::rewind_race`): the source's WAL
    /// at the end of the copy, which its data files reflect. Recovery must replay all of it
    /// (the minimum recovery point is its end) before the database is consistent.
    min_recovery: Option<Vec<(Timeline, u64)>>,
    /// The timeline pg_rewind records with that point: its source's at the time.
    min_recovery_timeline: Timeline,
}

impl Data {
    /// Not consistent yet: it refuses connections and cannot be promoted.
    fn short(&self) -> bool {
        self.min_recovery
            .as_ref()
            .is_some_and(|need| !self.wal.starts_with(need))
    }
}

impl Data {
    /// What pg_controldata says of this database.
    fn control(&self) -> Controldata {
        Controldata {
            state: match (self.clean, self.was_standby) {
                (true, true) => DbState::ShutDownInRecovery,
                (true, false) => DbState::ShutDown,
                (false, true) => DbState::InArchiveRecovery,
                (false, false) => DbState::InProduction,
            },
            timeline: Some(self.timeline),
            system_identifier: Some(self.system),
            // A primary's clean shutdown ends its WAL with the shutdown checkpoint record:
            // pg_controldata names where that record starts.
            checkpoint_lsn: Some(lsn_of(match self.wal.last() {
                Some((_, SHUTDOWN_CHECKPOINT)) if self.clean && !self.was_standby => self.wal.len() - 1,
                _ => self.wal.len(),
            })),
            wal_segment_size: Some(16 << 20),
            // A clone is modelled as a standby at once (`Action::Clone`), which is what the
            // real agent reads from a backup_label.
            from_backup: false,
            min_recovery: Some(self.min_recovery.as_ref().map_or(0, |need| lsn_of(need.len()))),
            min_recovery_timeline: Some(if self.min_recovery.is_some() {
                self.min_recovery_timeline
            } else {
                Timeline::NONE
            }),
            backup_end: Some(0),
        }
    }
}

/// One WAL is the other's prefix: neither diverged from the other.
fn compatible(a: &[(Timeline, u64)], b: &[(Timeline, u64)]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

const BASE_LSN: u64 = 0x100;

/// Member `host`'s PostgreSQL as member `me` streams from it: in the simulation a
/// member's name is its host.
fn upstream_as(host: &str, me: &str) -> conf::Upstream {
    conf::Upstream {
        host: host.into(),
        port: 5432,
        user: "replicator".into(),
        application_name: me.into(),
        passfile: None,
        ssl_root_cert: None,
        slot: true,
    }
}

fn lsn_of(len: usize) -> u64 {
    BASE_LSN + len as u64
}

#[derive(Clone, Debug)]
struct FakePg {
    data: Option<Data>,
    run: Run,
    frozen: bool,
    /// `primary_conninfo`: the node a standby follows.
    upstream: Option<usize>,
    /// Rendered `ANY k (names)`.
    sync: (Vec<String>, usize),
    /// Started in recovery on its own timeline (for a final report).
    pinned: bool,
    /// Streaming from `upstream` in the last step.
    streaming: bool,
    /// The generation under which it became primary.
    epoch: u64,
    /// It held a lease as the recorded primary of this epoch.
    leased: bool,
    /// Rewound, it streams only from this time on (`SimConfig::rewind_race`: a real start
    /// and replay after pg_rewind take a while, and its source may be fenced meanwhile).
    streams_from: u64,
    /// No room left on pg_wal's filesystem (`SimConfig::disk_full`).
    full: bool,
}

impl FakePg {
    fn empty() -> FakePg {
        FakePg {
            data: None,
            run: Run::Down,
            frozen: false,
            upstream: None,
            sync: (Vec::new(), 0),
            pinned: false,
            streaming: false,
            epoch: 0,
            leased: false,
            streams_from: 0,
            full: false,
        }
    }

    fn len(&self) -> usize {
        self.data.as_ref().map_or(0, |d| d.wal.len())
    }

    /// A running primary's clean shutdown writes its shutdown checkpoint record first.
    fn shutdown_checkpoint(&mut self) {
        if self.run == Run::Primary && !self.frozen {
            if let Some(d) = self.data.as_mut() {
                d.wal.push((d.timeline, SHUTDOWN_CHECKPOINT));
            }
        }
    }

    fn stop(&mut self, clean: bool) {
        if self.run == Run::Down {
            return;
        }
        let was_standby = self.run == Run::Standby;
        if let Some(d) = self.data.as_mut() {
            d.clean = clean;
            d.was_standby = was_standby;
        }
        self.run = Run::Down;
        self.frozen = false;
        self.streaming = false;
        self.leased = false;
    }
}

/// The agent's and lease task's memory: lost when raftpg restarts.
#[derive(Default)]
struct AgentMemory {
    /// The real lease holder, on this node's clock (`Sim::clock`).
    holder: Holder,
    /// The real agent's timers, on this node's clock.
    timers: AgentTimers,
    restarts_done: u64,
    reinits_done: u64,
    /// The real lease task's schedule and fenced expiry, on this node's clock.
    task: LeaseTask,
    /// The last report, whether it asks for a renewal, and the local time of the
    /// observation behind it (a renewal rests only on a fresh one, as `lease_loop`'s).
    report: Option<(Report, bool, Instant)>,
    sync_seen: crate::decide::report::SyncSeen,
}

/// The controller's memory on a node (its `lease::Book` and its timers), the real ones,
/// on this node's clock: lost when raftpg restarts, kept from one Raft tenure to the next.
#[derive(Default)]
struct ControllerMemory {
    book: Book,
    timers: Timers,
}

struct SimNode {
    name: String,
    /// The raftpg process exists (killed: not).
    alive: bool,
    /// Paused (SIGSTOP) until this time: it neither decides, reports nor takes part in
    /// Raft, and keeps its memory; its PostgreSQL and fence keeper run on.
    paused_until: Option<u64>,
    /// Resumed in this step: it acts on what it knew before the pause.
    resumed: bool,
    /// Counts raftpg's starts: a grant answers only the process that asked.
    incarnation: u64,
    /// The machine runs (PostgreSQL and the fence keeper with it).
    host_up: bool,
    /// Clock rate in thousandths.
    rate: u64,
    group: u8,
    applied: ClusterState,
    pg: FakePg,
    mem: AgentMemory,
    ctl: ControllerMemory,
    /// The fence keeper's expiry (local clock); survives a raftpg restart.
    keeper: Option<u64>,
    /// The expiry a restarted raftpg found armed (`keeper::inherited_expiry`).
    inherited: Option<u64>,
    /// The expiry the keeper last fenced for.
    keeper_fenced: Option<u64>,
}

impl SimNode {
    fn local(&self, now: u64) -> u64 {
        now * self.rate / 1000
    }
}

struct Ack {
    node: usize,
    epoch: u64,
    id: u64,
}

pub struct Sim {
    cfg: SimConfig,
    rng: Rng,
    now: u64,
    state: ClusterState,
    nodes: Vec<SimNode>,
    leader: Option<usize>,
    leaderless_since: u64,
    /// Local time 0 on every node's clock: the real lease and controller code counts in
    /// `Instant`s, and a node's local time `t` is `base + t` ms (`Sim::clock`).
    base: Instant,
    next_id: u64,
    /// Writes waiting for their quorum: (node, epoch, id, position).
    waiting: Vec<(usize, u64, u64, usize)>,
    acks: Vec<Ack>,
    acked_ids: BTreeSet<u64>,
    trace: Vec<String>,
    last_line: String,
    violation: Option<String>,
    failovers: u64,
    tag_changes: u64,
    membership_changes: u64,
    disk_fills: u64,
    lease_changes: u64,
    /// Every member as `Init` recorded it: what `ctl member add` gives back.
    members: Vec<Member>,
    declined: u64,
    pauses: u64,
    switchovers: u64,
    switchovers_done: u64,
    /// Reports on their way to the Raft leader, and grants on their way back
    /// (`SimConfig::delays`).
    inflight: Vec<Message>,
    seed: u64,
}

/// A report (with a renewal, maybe) or its grant, in flight.
#[derive(Clone, Debug)]
enum Message {
    Report {
        arrives: u64,
        from: usize,
        /// The sender's `SimNode::incarnation`.
        incarnation: u64,
        leader: usize,
        report: Report,
        renew: bool,
        sent_local: u64,
    },
    Granted {
        arrives: u64,
        leader: usize,
        to: usize,
        incarnation: u64,
        generation: Generation,
        sent_local: u64,
        /// How long the leader counts this lease (the reply view's `lease_remaining_ms`).
        leader_ms: Option<u64>,
    },
}

const TRACE_KEEP: usize = 400;

/// What a write to a full pg_wal filesystem fails with (`SimConfig::disk_full`).
const NO_ROOM: &str = "No space left on device: pg_wal's filesystem is full";

impl Sim {
    pub fn new(seed: u64, cfg: SimConfig) -> Sim {
        let mut rng = Rng(seed);
        let names: Vec<String> = (1..=cfg.nodes).map(|i| format!("n{i}")).collect();
        let members: Vec<Member> = names
            .iter()
            .enumerate()
            .map(|(i, n)| Member {
                name: n.clone(),
                id: i as u64 + 1,
                raft_addr: format!("{n}:5433"),
                grpc_addr: format!("{n}:5434"),
                pg_addr: format!("{n}:5432"),
                http_addr: format!("{n}:8008"),
                tags: Tags::default(),
            })
            .collect();
        let mut state = ClusterState::default();
        let members_init = members.clone();
        apply(&mut state, &Command::Init { members }).expect("a fresh state takes Init");
        let nodes = names
            .iter()
            .map(|n| SimNode {
                name: n.clone(),
                alive: true,
                paused_until: None,
                resumed: false,
                incarnation: 0,
                host_up: true,
                rate: 950 + rng.below(101),
                group: 0,
                applied: state.clone(),
                pg: FakePg::empty(),
                mem: AgentMemory::default(),
                ctl: ControllerMemory::default(),
                keeper: None,
                inherited: None,
                keeper_fenced: None,
            })
            .collect();
        Sim {
            cfg,
            rng,
            now: 0,
            state,
            nodes,
            leader: None,
            leaderless_since: 0,
            base: Instant::now(),
            next_id: 1,
            waiting: Vec::new(),
            acks: Vec::new(),
            acked_ids: BTreeSet::new(),
            trace: Vec::new(),
            last_line: String::new(),
            violation: None,
            failovers: 0,
            tag_changes: 0,
            membership_changes: 0,
            disk_fills: 0,
            lease_changes: 0,
            members: members_init,
            declined: 0,
            pauses: 0,
            switchovers: 0,
            switchovers_done: 0,
            inflight: Vec::new(),
            seed,
        }
    }

    fn log(&mut self, what: String) {
        // A retry that fails the same way each step says nothing new.
        if self.last_line == what {
            return;
        }
        self.last_line = what.clone();
        if self.trace.len() >= TRACE_KEEP {
            self.trace.remove(0);
        }
        self.trace.push(format!("{:>7} ms  {what}", self.now));
    }

    fn violate(&mut self, what: String) {
        if self.violation.is_none() {
            self.log(format!("VIOLATION: {what}"));
            self.violation = Some(what);
        }
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        let (x, y) = (&self.nodes[a], &self.nodes[b]);
        x.host_up && y.host_up && x.group == y.group
    }

    /// The node's raftpg runs: neither killed nor paused.
    fn runs(&self, i: usize) -> bool {
        self.nodes[i].alive && self.nodes[i].paused_until.is_none()
    }

    /// The node is a member of the state the Raft log committed, so a voter.
    fn voter(&self, i: usize) -> bool {
        self.state.members.contains_key(&self.nodes[i].name)
    }

    /// The node reaches the Raft leader (and so can commit and apply).
    fn reaches_leader(&self, i: usize) -> bool {
        self.runs(i) && self.leader.is_some_and(|l| self.connected(i, l))
    }

    fn propose(&mut self, i: usize, cmd: Command) -> Result<(), String> {
        if !self.reaches_leader(i) {
            return Err("no Raft leader reachable".into());
        }
        let name = self.nodes[i].name.clone();
        self.commit(cmd, &name)
    }

    fn commit(&mut self, cmd: Command, by: &str) -> Result<(), String> {
        let line = cmd.to_string();
        let switching = self
            .state
            .pending
            .as_ref()
            .is_some_and(|p| p.kind == crate::cluster::PendingKind::Switchover);
        match apply(&mut self.state, &cmd) {
            Ok(_) => {
                if matches!(cmd, Command::BeginFailover { .. }) {
                    self.failovers += 1;
                }
                if switching && matches!(cmd, Command::RecordTimeline { .. }) {
                    self.switchovers_done += 1;
                }
                self.log(format!("{by}: commit {line}"));
                // A removed member's raftpg may or may not receive the entry that removes
                // it before the leader stops replicating to it.
                if let Command::RemoveMember { name } = &cmd {
                    if let Some(r) = self.nodes.iter().position(|n| n.name == *name) {
                        if self.reaches_leader(r) && !self.nodes[r].resumed && self.rng.per_mille(500) {
                            self.nodes[r].applied = self.state.clone();
                        }
                    }
                }
                self.sync_applied();
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Every node that reaches the leader applies the latest state.
    fn sync_applied(&mut self) {
        for i in 0..self.nodes.len() {
            // A raftpg that just resumed acts once on the state it applied before the pause.
            if self.reaches_leader(i) && !self.nodes[i].resumed && self.voter(i) {
                self.nodes[i].applied = self.state.clone();
            }
        }
    }

    pub fn run(mut self) -> Outcome {
        let seed = self.seed;
        for _ in 0..self.cfg.fault_steps {
            if self.rng.per_mille(self.cfg.fault_rate) {
                self.fault();
            }
            self.step(true);
            if self.violation.is_some() {
                break;
            }
        }
        let mut recovery_ms = None;
        if self.violation.is_none() {
            self.heal();
            let healed_at = self.now;
            let acked_before = self.acks.len();
            while self.now - healed_at <= LIVENESS_BOUND_MS && self.violation.is_none() {
                self.add_back_removed();
                self.step(true);
                if self.acks.len() > acked_before && self.state.pending.is_none() {
                    recovery_ms = Some(self.now - healed_at);
                    break;
                }
            }
            // Every member then follows the primary: a standby that cannot start or stream
            // (the partition suite's convergence checker) is a liveness failure too.
            if recovery_ms.is_some() {
                while self.now - healed_at <= LIVENESS_BOUND_MS && self.violation.is_none() && !self.converged() {
                    self.add_back_removed();
                    self.step(true);
                }
                if self.violation.is_none() && !self.converged() {
                    let nodes: Vec<String> = self
                        .nodes
                        .iter()
                        .map(|n| {
                            format!(
                                "{}: pg {:?} streaming {} len {} reason: {}",
                                n.name,
                                n.pg.run,
                                n.pg.streaming,
                                n.pg.len(),
                                n.mem.report.as_ref().map_or("", |(r, _, _)| r.reason.as_str())
                            )
                        })
                        .collect();
                    self.violate(format!(
                        "convergence: not every member follows the primary {LIVENESS_BOUND_MS} ms after the heal: {}",
                        nodes.join("; ")
                    ));
                }
            }
            if recovery_ms.is_none() {
                let why = format!(
                    "liveness: no acknowledged write within {LIVENESS_BOUND_MS} ms of the heal; state: primary {:?}, pending {:?}",
                    self.state.primary, self.state.pending
                );
                let nodes: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| {
                        format!(
                            "{}: pg {:?} frozen {} len {} reason: {}",
                            n.name,
                            n.pg.run,
                            n.pg.frozen,
                            n.pg.len(),
                            n.mem.report.as_ref().map_or("", |(r, _, _)| r.reason.as_str())
                        )
                    })
                    .collect();
                for n in nodes {
                    self.log(n);
                }
                self.violate(why);
            }
        }
        Outcome {
            seed,
            violation: self.violation,
            recovery_ms,
            acked: self.acks.len(),
            failovers: self.failovers,
            tag_changes: self.tag_changes,
            membership_changes: self.membership_changes,
            disk_fills: self.disk_fills,
            lease_changes: self.lease_changes,
            declined: self.declined,
            pauses: self.pauses,
            switchovers: self.switchovers,
            switchovers_done: self.switchovers_done,
            trace: self.trace,
        }
    }

    /// One primary, the one the state names, and every other member streaming from it.
    fn converged(&self) -> bool {
        let Some(p) = self.state.primary_name().filter(|_| self.state.pending.is_none()) else {
            return false;
        };
        self.nodes.iter().all(|n| match n.pg.run {
            Run::Primary => n.name == p,
            Run::Standby => n.pg.streaming,
            Run::Down => false,
        })
    }

    fn heal(&mut self) {
        self.log("heal: every node and host up, PostgreSQL unfrozen, network whole".into());
        for i in 0..self.nodes.len() {
            if !self.nodes[i].host_up {
                self.start_host(i);
            }
            if !self.nodes[i].alive {
                self.start_raftpg(i);
            }
            let n = &mut self.nodes[i];
            n.paused_until = None;
            n.pg.frozen = false;
            n.pg.full = false;
            n.group = 0;
        }
    }

    fn fault(&mut self) {
        let i = self.rng.below(self.nodes.len() as u64) as usize;
        let name = self.nodes[i].name.clone();
        let kinds = 7
            + u64::from(self.cfg.operator)
            + u64::from(self.cfg.pauses)
            + u64::from(self.cfg.switchovers)
            + u64::from(self.cfg.membership)
            + u64::from(self.cfg.disk_full)
            + u64::from(self.cfg.lease_changes);
        let kind = self.rng.below(kinds);
        let mut top = kinds;
        if self.cfg.lease_changes {
            top -= 1;
            if kind == top {
                let ms = [750, 1000, 2000, 3000][self.rng.below(4) as usize];
                let cmd = Command::SetConfig {
                    key: "lease_ms".into(),
                    value: Some(ms.to_string()),
                };
                if self.operator_proposes(cmd, &format!("set lease_ms={ms}")) {
                    self.lease_changes += 1;
                }
                return;
            }
        }
        if self.cfg.disk_full {
            top -= 1;
            if kind == top && self.nodes[i].host_up {
                let full = !self.nodes[i].pg.full;
                self.log(format!(
                    "fault: {name}'s pg_wal filesystem {}",
                    if full { "fills up" } else { "has room again" }
                ));
                self.nodes[i].pg.full = full;
                self.disk_fills += u64::from(full);
                return;
            }
            if kind == top {
                return;
            }
        }
        if self.cfg.membership {
            top -= 1;
            if kind == top {
                return self.remove_or_add(i);
            }
        }
        if self.cfg.pauses {
            top -= 1;
            if kind == top {
                return self.pause(i);
            }
        }
        if self.cfg.switchovers {
            top -= 1;
            if kind == top {
                return self.switchover(i);
            }
        }
        match kind {
            7 => {
                let on = !self.state.has_flag(&name, crate::cluster::Flag::NoSync);
                let cmd = Command::ChangeTags {
                    name: name.clone(),
                    changes: vec![crate::cluster::TagChange::Flag(crate::cluster::Flag::NoSync, on)],
                };
                if self.operator_proposes(cmd, &format!("tag {name} nosync={on}")) {
                    self.tag_changes += 1;
                }
            }
            0 if self.nodes[i].alive => {
                self.log(format!(
                    "fault: kill raftpg on {name} (PostgreSQL and the fence keeper keep running)"
                ));
                self.nodes[i].alive = false;
                self.nodes[i].paused_until = None;
            }
            0 if self.nodes[i].host_up => {
                self.log(format!("fault: restart raftpg on {name}"));
                self.start_raftpg(i);
            }
            1 if self.nodes[i].host_up => {
                self.log(format!("fault: crash the host of {name}"));
                let n = &mut self.nodes[i];
                n.alive = false;
                n.paused_until = None;
                n.host_up = false;
                n.pg.stop(false);
                n.keeper = None;
                n.inherited = None;
            }
            1 => {
                self.log(format!("fault: {name}'s host comes back"));
                self.start_host(i);
            }
            2 | 3 if self.nodes[i].pg.run != Run::Down => {
                let frozen = !self.nodes[i].pg.frozen;
                self.log(format!(
                    "fault: {} {name}'s PostgreSQL",
                    if frozen { "freeze" } else { "thaw" }
                ));
                self.nodes[i].pg.frozen = frozen;
            }
            4 | 5 => {
                for n in self.nodes.iter_mut() {
                    n.group = 0;
                }
                let cut = self.rng.below(self.nodes.len() as u64) as usize;
                self.nodes[cut].group = 1;
                if self.rng.per_mille(300) {
                    let other = self.rng.below(self.nodes.len() as u64) as usize;
                    self.nodes[other].group = 1;
                }
                let groups: Vec<String> = self.nodes.iter().map(|n| format!("{}:{}", n.name, n.group)).collect();
                self.log(format!("fault: partition {}", groups.join(" ")));
            }
            _ => {
                self.log("fault: the network heals".into());
                for n in self.nodes.iter_mut() {
                    n.group = 0;
                }
            }
        }
    }

    /// The operator asks for a switchover to member `i`, through any node that reaches the
    /// Raft leader, if the leader's last report from `i` says it streams in this generation.
    fn switchover(&mut self, i: usize) {
        let to = self.nodes[i].name.clone();
        let generation = self.state.generation;
        let streams = self.leader.is_some_and(|l| {
            let view = self.nodes[l].ctl.book.view(&self.state, self.clock(l));
            view.reports
                .get(&to)
                .is_some_and(|(_, r)| r.streaming && r.generation == generation)
        });
        if !streams || self.state.primary_name().is_none_or(|p| p == to) {
            return self.log(format!("operator: no switchover to {to} (not a streaming standby)"));
        }
        let cmd = Command::BeginSwitchover {
            generation,
            to: to.clone(),
            reason: "simulated operator".into(),
        };
        if self.operator_proposes(cmd, &format!("switch over to {to}")) {
            self.log(format!("operator: switchover to {to} begun"));
            self.switchovers += 1;
        }
    }

    /// The operator removes member `i` (`ctl member remove`), or adds it back if it was
    /// removed (`ctl member add`), through any node that reaches the Raft leader.
    fn remove_or_add(&mut self, i: usize) {
        let name = self.nodes[i].name.clone();
        let cmd = match self.voter(i) {
            true => Command::RemoveMember { name: name.clone() },
            false => Command::AddMember {
                member: self.members[i].clone(),
            },
        };
        let what = cmd.to_string();
        if self.operator_proposes(cmd, &what) {
            self.membership_changes += 1;
        }
    }

    /// The operator's `ctl` proposes `cmd` through any node that reaches the Raft leader:
    /// true once committed; a refusal, or no leader, goes into the trace.
    fn operator_proposes(&mut self, cmd: Command, what: &str) -> bool {
        let via = (0..self.nodes.len()).find(|j| self.reaches_leader(*j));
        let Some(j) = via else {
            self.log(format!("operator: no leader to {what}"));
            return false;
        };
        match self.propose(j, cmd) {
            Ok(()) => true,
            Err(e) => {
                self.log(format!("operator: {what} refused: {e}"));
                false
            }
        }
    }

    /// After the heal, the operator adds back every member it removed.
    fn add_back_removed(&mut self) {
        for i in 0..self.nodes.len() {
            if !self.voter(i) && self.leader.is_some() {
                self.remove_or_add(i);
            }
        }
    }

    /// SIGSTOP of raftpg on node `i` for 0.2-4 s (a pause already under way ends early).
    fn pause(&mut self, i: usize) {
        let name = self.nodes[i].name.clone();
        if !self.nodes[i].alive {
            return;
        }
        if self.nodes[i].paused_until.is_some() {
            self.log(format!("fault: {name}'s raftpg resumes early"));
            self.nodes[i].paused_until = Some(self.now);
            return;
        }
        let ms = (200 + self.rng.below(3_800)) / STEP_MS * STEP_MS;
        self.log(format!(
            "fault: pause raftpg on {name} for {ms} ms (PostgreSQL and the fence keeper keep running)"
        ));
        self.nodes[i].paused_until = Some(self.now + ms);
        self.pauses += 1;
    }

    fn start_host(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.host_up = true;
        n.pg.frozen = false;
        self.start_raftpg(i);
    }

    fn start_raftpg(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        // Replies to the process that died went with its connections.
        n.incarnation += 1;
        n.alive = true;
        n.paused_until = None;
        n.inherited = n.keeper;
        n.mem = AgentMemory::default();
        n.ctl = ControllerMemory::default();
        if let Some(k) = n.keeper {
            n.mem
                .holder
                .inherit(n.applied.generation, self.base + Duration::from_millis(k));
        }
    }

    /// Node `i`'s clock now, as an `Instant` for the real lease and controller code.
    fn clock(&self, i: usize) -> Instant {
        self.base + Duration::from_millis(self.nodes[i].local(self.now))
    }

    /// An `Instant` of the real code as local milliseconds.
    fn local_ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_millis() as u64
    }

    /// One step of everything.
    fn step(&mut self, clients: bool) {
        self.now += STEP_MS;
        for i in 0..self.nodes.len() {
            let n = &mut self.nodes[i];
            n.resumed = n.paused_until.is_some_and(|t| t <= self.now);
            if n.resumed {
                n.paused_until = None;
                let name = n.name.clone();
                self.log(format!("{name}'s raftpg resumes"));
            }
        }
        self.raft();
        self.sync_applied();
        self.deliver();
        // A resumed raftpg's lease task may run before its agent observes again: it sends
        // the report made before the pause.
        for i in 0..self.nodes.len() {
            if self.nodes[i].resumed {
                self.lease_loop(i);
            }
        }
        for i in 0..self.nodes.len() {
            if self.runs(i) {
                self.agent(i);
            }
        }
        for i in 0..self.nodes.len() {
            if self.runs(i) && !self.nodes[i].resumed {
                self.lease_loop(i);
            }
            self.keeper(i);
            self.nodes[i].resumed = false;
        }
        if let Some(l) = self.leader {
            self.controller(l);
        }
        self.stream();
        if clients {
            self.clients();
        }
        self.acknowledge();
        self.check();
    }

    fn raft(&mut self) {
        let n = self.nodes.len();
        let voters: Vec<usize> = (0..n).filter(|&i| self.voter(i)).collect();
        let majority = voters.len() / 2 + 1;
        let group_size = |s: &Sim, i: usize| voters.iter().filter(|&&j| s.runs(j) && s.connected(i, j)).count();
        if let Some(l) = self.leader {
            // A leader removed from the membership steps down once that change commits.
            if !self.runs(l) || !self.voter(l) || group_size(self, l) < majority {
                self.log(format!("raft: leader {} lost", self.nodes[l].name));
                // Its tenure ends (a later one starts its clock afresh), as openraft's
                // higher term would tell it.
                let now = self.clock(l);
                let n = &mut self.nodes[l];
                n.ctl.timers.lead(false, &n.ctl.book, &self.state, now);
                self.leader = None;
                self.leaderless_since = self.now;
            }
        }
        if self.leader.is_none() && self.now - self.leaderless_since >= ELECTION_MS {
            let able: Vec<usize> = (0..n)
                .filter(|&i| self.voter(i) && self.runs(i) && group_size(self, i) >= majority)
                .collect();
            if !able.is_empty() {
                let l = able[self.rng.below(able.len() as u64) as usize];
                self.leader = Some(l);
                self.log(format!("raft: {} elected leader", self.nodes[l].name));
            }
        }
    }

    /// What the node's PostgreSQL looks like.
    fn observe(&self, i: usize) -> Local {
        let n = &self.nodes[i];
        let Some(d) = &n.pg.data else {
            return Local::NoData;
        };
        if n.pg.frozen {
            return Local::Unknown("timeout: PostgreSQL does not answer".into());
        }
        let conninfo =
            n.pg.upstream
                .map(|u| conf::conninfo(&upstream_as(&self.nodes[u].name, &n.name)))
                .unwrap_or_default();
        match n.pg.run {
            Run::Down => Local::Stopped {
                control: Some(d.control()),
            },
            Run::Primary => {
                let replication = (0..self.nodes.len())
                    .filter(|&j| self.nodes[j].pg.streaming && self.nodes[j].pg.upstream == Some(i))
                    .map(|j| Replica {
                        application_name: self.nodes[j].name.clone(),
                        state: "streaming".into(),
                        sync_state: "quorum".into(),
                        flush_lsn: Some(lsn_of(self.nodes[j].pg.len())),
                    })
                    .collect();
                Local::Primary(PgState {
                    in_recovery: false,
                    timeline: Some(d.timeline),
                    write_lsn: Some(lsn_of(d.wal.len())),
                    receive_lsn: None,
                    replay_lsn: None,
                    walreceiver: None,
                    primary_conninfo: String::new(),
                    replication,
                    idle_slots: vec![],
                    slots: self.nodes.iter().map(|m| conf::slot_name(&m.name)).collect(),
                    sync_names: conf::sync_standby_names(n.pg.sync.1, &n.pg.sync.0),
                    pending_restart: Vec::new(),
                    timeline_pinned: false,
                })
            }
            Run::Standby if d.short() => {
                Local::Unknown("the database system is not yet accepting connections: consistent recovery state has not been yet reached".into())
            }
            Run::Standby => Local::Standby(PgState {
                in_recovery: true,
                timeline: Some(d.timeline),
                write_lsn: None,
                receive_lsn: Some(lsn_of(d.wal.len())),
                replay_lsn: Some(lsn_of(d.wal.len())),
                walreceiver: match (n.pg.streaming, n.pg.upstream) {
                    (true, _) => Some("streaming".into()),
                    (false, Some(_)) => Some("waiting".into()),
                    (false, None) => None,
                },
                primary_conninfo: conninfo,
                replication: Vec::new(),
                idle_slots: vec![],
                slots: Vec::new(),
                sync_names: String::new(),
                pending_restart: Vec::new(),
                timeline_pinned: n.pg.pinned,
            }),
        }
    }

    fn holder_view(&mut self, i: usize, generation: Generation, lease_ms: u64) -> LeaseView {
        self.nodes[i].mem.holder.view(generation, self.clock(i), lease_ms)
    }

    fn agent(&mut self, i: usize) {
        let state = self.nodes[i].applied.clone();
        let me = self.nodes[i].name.clone();
        let local = self.observe(i);
        let clock = self.clock(i);
        let role = wanted(&state, &me);
        if role != Wanted::Primary {
            self.nodes[i].mem.holder.clear();
        }
        self.nodes[i].mem.timers.observed(&role, &local, clock);
        let lease = match role {
            Wanted::Primary => self.holder_view(i, state.generation, state.ha.lease_ms),
            _ => LeaseView::Expired,
        };
        if role == Wanted::Primary {
            self.nodes[i].mem.timers.primary(&local, lease, state.generation);
        }
        let upstream = match &role {
            Wanted::Standby(p) if *p != me => Some(upstream_as(p, &me)),
            _ => None,
        };
        let wal_end = match (&role, &local, &self.nodes[i].pg.data) {
            (Wanted::Fenced | Wanted::Candidate, Local::Stopped { control: Some(c) }, Some(d))
                if c.was_standby() || c.was_primary() =>
            {
                Some((lsn_of(d.wal.len()), d.timeline))
            }
            _ => None,
        };
        let requested = state.requests_of(&me);
        // As the agent: the control file of a standby that runs but is not consistent yet.
        let inconsistent = match (&role, &local, self.nodes[i].pg.run) {
            (Wanted::Standby(_), Local::Unknown(_), Run::Standby) => self.nodes[i]
                .pg
                .data
                .as_ref()
                .filter(|d| d.short())
                .map(|d| d.control()),
            _ => None,
        };
        let m = &self.nodes[i].mem;
        let decision = agent_decide(&AgentInput {
            stale_slots: &[],
            inconsistent: inconsistent.as_ref(),
            me: &me,
            state: &state,
            local: &local,
            lease,
            down_ms: m.timers.down_ms(clock),
            not_streaming_ms: m.timers.not_streaming_ms(clock),
            gate_lsn: None,
            upstream: upstream.as_ref(),
            restart_requested: requested.0 > m.restarts_done,
            reinit_requested: requested.1 > m.reinits_done,
            fenced_hung: m.timers.fenced_hung(state.generation),
            wal_end,
            receiver_lingering_ms: m.timers.lingering_ms(clock),
            disk_full: (self.nodes[i].pg.full && matches!(local, Local::Stopped { .. } | Local::NoData))
                .then_some(NO_ROOM),
            foreign_conf: false,
            adopt_configured: None,
        });
        // The composed protocol reaches inputs the table's sweep lists by hand: each decision
        // must stay inside its cell of `decide::table` all the same.
        let (row, column) = (Row::of(&role, lease, state.paused), Column::of(&local));
        if !table::at(row, column).allows(&decision) {
            self.violate(format!(
                "{me} decided outside the agent table's cell {row:?} x {column:?}: {decision:?}"
            ));
        }
        let mut decision = decision;
        if self.cfg.mutation == Mutation::IgnoreShortWal
            && matches!(decision.actions[..], [Action::DeclineCandidacy { .. }])
        {
            decision.actions = vec![Action::StartStandby { upstream: None }];
        }
        let report = derive(&state, &local, &decision, &mut self.nodes[i].mem.sync_seen);
        let observed_at = self.clock(i);
        let m = &mut self.nodes[i].mem;
        // As `Agent::publish`: what the controller acts on goes at once.
        let urgent = m.report.as_ref().is_none_or(|(before, renew, _)| {
            crate::decide::report::urgent((before, *renew), &report, decision.renew_lease, state.pending.is_some())
        });
        if urgent {
            m.task.send_now();
        }
        m.report = Some((report, decision.renew_lease, observed_at));
        for action in &decision.actions {
            let current = self.nodes[i].applied.clone();
            if current.generation != state.generation || wanted(&current, &me) != role {
                break;
            }
            if role == Wanted::Primary
                && matches!(
                    action,
                    Action::StartPrimary { .. } | Action::Promote { .. } | Action::OpenGate
                )
                && self.holder_view(i, state.generation, state.ha.lease_ms) != LeaseView::Held
                && !current.paused
            {
                break;
            }
            // As the agent (`confirm_candidate`): a candidate promotes only once the Raft
            // leader's state names it the candidate of this generation.
            if role == Wanted::Candidate
                && matches!(action, Action::Promote { candidate: true })
                && !(self.reaches_leader(i) && grants_renewal(&self.state, &me, state.generation))
            {
                self.log(format!(
                    "{me}: no Raft leader confirms that I am still the candidate: not promoting"
                ));
                break;
            }
            match self.execute(i, action, &state, &role) {
                Ok(()) => {
                    if matches!(action, Action::StartStandby { .. }) {
                        self.nodes[i].mem.timers.streaming_starts_over();
                    }
                }
                Err(e) => {
                    self.log(format!("{me}: {action:?} failed: {e}"));
                    break;
                }
            }
        }
    }

    /// As the agent's render: the configuration streams from the `upstream` the action
    /// carries (a member's name is its host here).
    fn render(&mut self, i: usize, state: &ClusterState, role: &Wanted, upstream: Option<&conf::Upstream>) {
        let upstream = upstream.and_then(|u| self.nodes.iter().position(|n| n.name == u.host));
        let name = self.nodes[i].name.clone();
        let pg = &mut self.nodes[i].pg;
        if pg.run == Run::Standby && pg.upstream != upstream {
            pg.streaming = false;
        }
        pg.upstream = upstream;
        if matches!(role, Wanted::Primary | Wanted::Candidate | Wanted::Bootstrap) {
            let c = state.sync_config_for(&name);
            pg.sync = (c.standbys.into_iter().collect(), c.k);
        }
    }

    fn execute(&mut self, i: usize, action: &Action, state: &ClusterState, role: &Wanted) -> Result<(), String> {
        let me = self.nodes[i].name.clone();
        let frozen = self.nodes[i].pg.frozen;
        if frozen && !matches!(action, Action::Fence) && !is_proposal(action) {
            return Err("PostgreSQL does not answer".into());
        }
        let writes = matches!(
            action,
            Action::Initdb
                | Action::StartPrimary { .. }
                | Action::StartStandby { .. }
                | Action::Clone { .. }
                | Action::Rewind { .. }
                | Action::Promote { .. }
        );
        if writes && self.nodes[i].pg.full {
            // Ending recovery writes its end-of-recovery checkpoint: the startup process
            // PANICs, and crash recovery cannot write either.
            if matches!(action, Action::Promote { .. }) {
                self.nodes[i].pg.stop(false);
            }
            return Err(NO_ROOM.into());
        }
        match action {
            Action::Initdb => {
                let system = 1 + self.rng.below(1 << 20);
                let pg = &mut self.nodes[i].pg;
                pg.data = Some(Data {
                    wal: Vec::new(),
                    timeline: Timeline::FIRST,
                    fork: None,
                    clean: true,
                    was_standby: false,
                    system,
                    min_recovery: None,
                    min_recovery_timeline: Timeline::NONE,
                });
                pg.run = Run::Down;
            }
            Action::StartPrimary { .. } => {
                if self.nodes[i].pg.data.is_none() {
                    return Err("no data directory".into());
                }
                self.render(i, state, role, None);
                let pg = &mut self.nodes[i].pg;
                if pg.run == Run::Down {
                    pg.run = Run::Primary;
                    pg.upstream = None;
                    pg.streaming = false;
                    // The first primary (bootstrap) or a crash restart in place.
                    if pg.epoch == 0 || state.primary_name() == Some(me.as_str()) {
                        pg.epoch = state.generation.max(Generation(1)).0;
                    }
                    pg.leased = role == &Wanted::Primary;
                }
            }
            Action::ProposeBootstrap => {
                let system = self.nodes[i].pg.data.as_ref().map_or(0, |d| d.system);
                if self.nodes[i].pg.run != Run::Primary {
                    return Err("not running as primary".into());
                }
                self.propose(
                    i,
                    Command::Bootstrap {
                        node: me.clone(),
                        system_identifier: system,
                    },
                )?;
                self.nodes[i].pg.epoch = 1;
            }
            Action::Fence => {
                self.nodes[i].pg.stop(false);
            }
            Action::CleanStop { .. } | Action::Stop if self.nodes[i].pg.full => {
                // No room for the shutdown checkpoint: PostgreSQL PANICs on the way down.
                self.nodes[i].pg.stop(false);
            }
            Action::CleanStop { .. } | Action::Stop => {
                if self.nodes[i].pg.run == Run::Primary {
                    // A fast shutdown writes the shutdown checkpoint and sends all WAL, that
                    // record included, to the connected standbys before it exits.
                    self.nodes[i].pg.shutdown_checkpoint();
                    self.stream();
                }
                self.nodes[i].pg.stop(true);
            }
            Action::ReportStopped { lsn } => {
                self.propose(
                    i,
                    Command::SwitchoverStopped {
                        generation: state.generation,
                        node: me.clone(),
                        lsn: *lsn,
                    },
                )?;
            }
            Action::RestartDone { upto } => {
                let m = &mut self.nodes[i].mem;
                m.restarts_done = *upto;
                m.timers.restarted();
            }
            Action::ReinitDone { upto } => self.nodes[i].mem.reinits_done = *upto,
            Action::Reconfigure { upstream } | Action::Reload { upstream } => {
                self.render(i, state, role, upstream.as_ref())
            }
            Action::StopStreaming => {
                let pg = &mut self.nodes[i].pg;
                pg.upstream = None;
                pg.streaming = false;
            }
            Action::EnsureSlots | Action::DropSlots(_) | Action::OpenGate => {}
            Action::Promote { .. } => {
                let pg = &self.nodes[i].pg;
                if pg.run != Run::Standby {
                    return Err("not in recovery".into());
                }
                if pg.data.as_ref().is_some_and(Data::short) {
                    return Err("not consistent yet: it cannot end recovery".into());
                }
                self.promoted(i, state.generation, state.newest_timeline_taken());
            }
            Action::DeclineCandidacy { reason } => {
                self.propose(
                    i,
                    Command::VetoCandidate {
                        generation: state.generation,
                        node: me.clone(),
                        reason: reason.clone(),
                    },
                )?;
                self.declined += 1;
            }
            Action::RecordTimeline { timeline, .. } => {
                let fork = self.nodes[i].pg.data.as_ref().and_then(|d| d.fork);
                self.propose(
                    i,
                    Command::RecordTimeline {
                        generation: state.generation,
                        node: me.clone(),
                        timeline: *timeline,
                        switch_lsn: fork.map(|(_, len)| crate::types::Lsn(lsn_of(len))),
                        parent_timeline: fork.map(|(p, _)| p),
                    },
                )?;
            }
            Action::Clone { from } => {
                let p = self.index_of(from)?;
                let source = self.source(i, p)?;
                let pg = &mut self.nodes[i].pg;
                pg.data = Some(Data {
                    was_standby: true,
                    clean: true,
                    min_recovery: None,
                    min_recovery_timeline: Timeline::NONE,
                    ..source
                });
                pg.run = Run::Down;
            }
            Action::Rewind { source } => {
                let p = self.index_of(source)?;
                let source = self.source(i, p)?;
                let pg = &mut self.nodes[i].pg;
                if pg.run != Run::Down {
                    return Err("pg_rewind needs a stopped server".into());
                }
                let mine = pg.data.take().ok_or("no data directory")?;
                // Short of its minimum recovery point, pg_rewind cannot read the target's WAL
                // up to it ("could not read WAL record"), and the member is re-cloned.
                let common = if mine.system == source.system && !mine.short() {
                    mine.wal.iter().zip(&source.wal).take_while(|(a, b)| a == b).count()
                } else {
                    // Another database: pg_rewind fails, and the member is re-cloned.
                    source.wal.len()
                };
                let race = self.cfg.rewind_race && common < source.wal.len();
                let pg = &mut self.nodes[i].pg;
                pg.data = Some(Data {
                    wal: source.wal[..common].to_vec(),
                    timeline: source.timeline,
                    fork: source.fork,
                    clean: true,
                    was_standby: true,
                    system: source.system,
                    min_recovery: race.then(|| source.wal.clone()),
                    min_recovery_timeline: source.timeline,
                });
                if race {
                    pg.streams_from = self.now + REWIND_CATCH_UP_MS;
                }
            }
            Action::StartStandby { upstream } => {
                if self.nodes[i].pg.data.is_none() {
                    return Err("no data directory".into());
                }
                self.render(i, state, role, upstream.as_ref());
                let pinned = !matches!(role, Wanted::Standby(_));
                let pg = &mut self.nodes[i].pg;
                if pg.run == Run::Down {
                    pg.run = Run::Standby;
                    pg.pinned = pinned;
                    pg.streaming = false;
                    pg.leased = false;
                }
            }
            // The simulated clusters form with initdb; adoption is tested on real
            // PostgreSQL (tests/adopt.rs).
            Action::AdoptConfig | Action::ProposeAdopted { .. } => {
                return Err("adoption is not modelled".into());
            }
        }
        Ok(())
    }

    fn index_of(&self, name: &str) -> Result<usize, String> {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| format!("{name} is not a node"))
    }

    /// The data a clone or rewind copies from `p`, if `i` can reach it.
    fn source(&self, i: usize, p: usize) -> Result<Data, String> {
        let src = &self.nodes[p].pg;
        if !self.connected(i, p) || src.run != Run::Primary || src.frozen {
            return Err(format!("{} is not reachable as a running primary", self.nodes[p].name));
        }
        src.data.clone().ok_or_else(|| "the source has no data".into())
    }

    /// `i`'s PostgreSQL ends recovery under `generation`.
    /// `recorded`: the newest timeline taken, recorded or not; the agent puts its history
    /// file in place first, so PostgreSQL takes a newer one.
    fn promoted(&mut self, i: usize, generation: Generation, recorded: Timeline) {
        let name = self.nodes[i].name.clone();
        // Every acknowledged write must be in the WAL the new primary starts from.
        let wal: BTreeSet<u64> = self.nodes[i]
            .pg
            .data
            .as_ref()
            .map(|d| d.wal.iter().map(|(_, id)| *id).collect())
            .unwrap_or_default();
        if let Some(lost) = self.acked_ids.iter().find(|id| !wal.contains(id)) {
            self.violate(format!(
                "{name} promotes under generation {generation} without acknowledged write {lost}"
            ));
        }
        // The lease: no PostgreSQL that held one may still run as primary.
        for j in 0..self.nodes.len() {
            let o = &self.nodes[j].pg;
            if j != i && o.run == Run::Primary && o.leased {
                let other = self.nodes[j].name.clone();
                self.violate(format!(
                    "{name} promotes under generation {generation} while {other} (primary of generation {}, with a lease) still runs",
                    o.epoch
                ));
            }
        }
        let pg = &mut self.nodes[i].pg;
        let d = pg.data.as_mut().expect("a standby has data");
        let top = d
            .wal
            .iter()
            .map(|(t, _)| *t)
            .max()
            .unwrap_or(Timeline::FIRST)
            .max(d.timeline)
            .max(recorded);
        d.fork = Some((d.timeline, d.wal.len()));
        d.timeline = top.next();
        d.was_standby = false;
        pg.run = Run::Primary;
        pg.upstream = None;
        pg.streaming = false;
        pg.pinned = false;
        pg.epoch = generation.0;
        pg.leased = false;
        self.log(format!(
            "{name}: promoted to timeline {} under generation {generation}",
            top.next()
        ));
    }

    /// As `agent::lease_loop`, with its real `LeaseTask` and holder on this node's clock.
    fn lease_loop(&mut self, i: usize) {
        let local = self.nodes[i].local(self.now);
        let clock = self.clock(i);
        let generation = self.nodes[i].applied.generation;
        let paused = self.nodes[i].applied.paused;
        let lease_ms = self.nodes[i].applied.ha.lease_ms;
        let m = &self.nodes[i].mem;
        let guarded = m.task.guarded(m.holder.guarded_until(generation, lease_ms));
        let expiry = guarded.map(|e| self.local_ms(e));
        let n = &mut self.nodes[i];
        // The keeper is armed with the lease (and, after a restart, what the last one left).
        // The real keeper's rules: the later of its own lease and the inherited one, which
        // stands (even once over) until a later lease of its own is granted.
        n.inherited = still_inherited(n.inherited, expiry, paused);
        n.keeper = Some(armed_until(expiry, n.inherited, paused)).filter(|k| *k != 0);
        if n.mem.task.expired(guarded, clock) && !paused && n.pg.run != Run::Down {
            let name = n.name.clone();
            n.pg.stop(false);
            self.log(format!("{name}: lease expired: fenced PostgreSQL"));
        }
        let n = &mut self.nodes[i];
        if !n.mem.task.due(clock) {
            return;
        }
        let Some((report, renew, observed_at)) = n.mem.report.clone() else {
            return;
        };
        // A stale observation (a raftpg that was paused since) renews nothing.
        let renew = renews(renew, Some(observed_at), clock, lease_ms);
        let Some(leader) = self.leader.filter(|_| self.reaches_leader(i)) else {
            self.nodes[i].mem.task.sent(false, clock, lease_ms);
            return;
        };
        self.nodes[i].mem.task.sent(true, clock, lease_ms);
        let delay = self.delay();
        self.send(Message::Report {
            arrives: self.now + delay,
            from: i,
            incarnation: self.nodes[i].incarnation,
            leader,
            report,
            renew,
            sent_local: local,
        });
    }

    /// One way's delay (`SimConfig::delays`): 0-`DELAY_MAX_MS` in steps; none otherwise.
    fn delay(&mut self) -> u64 {
        if self.cfg.delays {
            self.rng.below(DELAY_MAX_MS / STEP_MS + 1) * STEP_MS
        } else {
            0
        }
    }

    /// Delivers `m` now if it is due, else keeps it in flight.
    fn send(&mut self, m: Message) {
        let arrives = match &m {
            Message::Report { arrives, .. } | Message::Granted { arrives, .. } => *arrives,
        };
        if arrives <= self.now {
            self.receive(m);
        } else {
            self.inflight.push(m);
        }
    }

    /// Delivers the messages that are due, in the order they were sent.
    fn deliver(&mut self) {
        let (due, later): (Vec<Message>, Vec<Message>) =
            std::mem::take(&mut self.inflight).into_iter().partition(|m| match m {
                Message::Report { arrives, .. } | Message::Granted { arrives, .. } => *arrives <= self.now,
            });
        self.inflight = later;
        for m in due {
            self.receive(m);
        }
    }

    /// A report reaches the Raft leader it was sent to (lost if that node no longer leads
    /// or is cut off); a grant reaches its lease holder (lost if cut off or restarted, held
    /// while the holder is paused).
    fn receive(&mut self, m: Message) {
        match m {
            Message::Report {
                from,
                incarnation,
                leader,
                report,
                renew,
                sent_local,
                ..
            } => {
                if self.leader != Some(leader) || !self.runs(leader) || !self.connected(from, leader) {
                    return;
                }
                let name = self.nodes[from].name.clone();
                // As `node::report::handle`, with the real book on the leader's clock.
                let now = self.clock(leader);
                let book = &self.nodes[leader].ctl.book;
                book.record(&name, report.clone(), now);
                if !renew {
                    return;
                }
                let (granted, view) = book.renew(&self.state, &name, report.generation, now);
                if self.cfg.mutation == Mutation::LeaseLengthNow
                    && renews_primary(&self.state, &name, report.generation)
                {
                    // The clock forgets how long the grants before this one were.
                    book.start_tenure(self.state.primary.as_ref(), now, self.state.ha.lease_ms);
                }
                if granted {
                    let delay = self.delay();
                    self.send(Message::Granted {
                        arrives: self.now + delay,
                        leader,
                        to: from,
                        incarnation,
                        generation: report.generation,
                        sent_local,
                        leader_ms: view.lease_remaining_ms,
                    });
                }
            }
            Message::Granted {
                leader,
                to,
                incarnation,
                generation,
                sent_local,
                leader_ms,
                ..
            } => {
                let n = &self.nodes[to];
                if !n.alive || n.incarnation != incarnation || !self.connected(leader, to) {
                    return;
                }
                if self.nodes[to].paused_until.is_some() {
                    // Read once the process runs again.
                    self.inflight.push(Message::Granted {
                        arrives: self.now + STEP_MS,
                        leader,
                        to,
                        incarnation,
                        generation,
                        sent_local,
                        leader_ms,
                    });
                    return;
                }
                // As `agent::send_report`: no longer than the leader counts it.
                let own = self.nodes[to].applied.ha.lease_ms;
                let leader_ms = match self.cfg.mutation {
                    Mutation::LeaseLengthNow => None,
                    _ => leader_ms,
                };
                let sent = match self.cfg.mutation {
                    Mutation::LeaseFromReply => self.clock(to),
                    _ => self.base + Duration::from_millis(sent_local),
                };
                let n = &mut self.nodes[to];
                n.mem.holder.granted_by(generation, sent, own, leader_ms);
                if n.pg.run == Run::Primary && n.pg.epoch == generation.0 {
                    n.pg.leased = true;
                }
            }
        }
    }

    /// The fence keeper, alive with its host whatever raftpg does.
    fn keeper(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let local = n.local(self.now);
        if !n.host_up
            || n.applied.paused
            || (self.cfg.mutation == Mutation::NoKeeperWhilePaused && n.paused_until.is_some())
        {
            return;
        }
        if let Some(k) = n.keeper.filter(|k| local >= *k && n.keeper_fenced != Some(*k)) {
            n.keeper_fenced = Some(k);
            if n.pg.run != Run::Down {
                let name = n.name.clone();
                n.pg.stop(false);
                self.log(format!("{name}: the fence keeper fenced PostgreSQL (expiry {k})"));
            }
        }
    }

    /// The Raft leader's controller: the real `controller::Timers` over the leader's real
    /// `lease::Book`, on its clock, then the real decision.
    fn controller(&mut self, l: usize) {
        let now = self.clock(l);
        let s = self.state.clone();
        let terms = match self.cfg.mutation {
            Mutation::NoLeaseWait => LeaseTerms {
                deadline_override: Some(Duration::from_millis(s.ha.lease_ms / 4 + STEP_MS)),
                ..LeaseTerms::of(&s)
            },
            Mutation::LeaseLengthNow => LeaseTerms {
                ceiling_ms: s.ha.lease_ms,
                ..LeaseTerms::of(&s)
            },
            Mutation::None
            | Mutation::IgnoreQuorum
            | Mutation::IgnoreShortWal
            | Mutation::NoKeeperWhilePaused
            | Mutation::LeaseFromReply => LeaseTerms::of(&s),
        };
        let ControllerMemory { book, timers } = &mut self.nodes[l].ctl;
        if timers.lead(true, book, &s, now) && self.cfg.mutation == Mutation::LeaseLengthNow {
            book.start_tenure(s.primary.as_ref(), now, s.ha.lease_ms);
        }
        let g = timers.gather(book, &s, &terms, now);
        let voters: BTreeSet<String> = s.members.keys().cloned().collect();
        let mut seen = s.clone();
        if self.cfg.mutation == Mutation::IgnoreQuorum && seen.pending.is_some() {
            seen.sync_standbys.clear();
            seen.sync_unconfirmed.clear();
        }
        let me = self.nodes[l].name.clone();
        let d = controller_decide(&ControllerInput {
            me: &me,
            state: &seen,
            reports: &g.reports,
            lease_expired_ms: g.lease_expired_ms,
            voters: &voters,
            pending_ms: g.pending_ms,
            now_unix_ms: 0,
            below_quorum_ms: g.below_quorum_ms,
        });
        if let Some(ControllerAction::Propose(cmd)) = d.action {
            let _ = self.commit(cmd, &format!("controller on {me}"));
        }
    }

    /// Standbys receive from their upstream while their WAL is a prefix of its WAL.
    fn stream(&mut self) {
        for i in 0..self.nodes.len() {
            let pg = &self.nodes[i].pg;
            let Some(p) = pg
                .upstream
                .filter(|_| pg.run == Run::Standby && !pg.frozen && self.now >= pg.streams_from)
            else {
                self.nodes[i].pg.streaming = false;
                continue;
            };
            let src = &self.nodes[p].pg;
            let ok = self.connected(i, p) && src.run == Run::Primary && !src.frozen;
            let (Some(mine), Some(theirs)) = (&pg.data, &src.data) else {
                self.nodes[i].pg.streaming = false;
                continue;
            };
            // A standby with no room receives nothing new (the WAL receiver exits on the
            // write error and starts again, in vain).
            let room = !pg.full || mine.wal.len() >= theirs.wal.len();
            let follows = ok
                && room
                && mine.system == theirs.system
                && mine.wal.len() <= theirs.wal.len()
                && mine.wal[..] == theirs.wal[..mine.wal.len()]
                && (!pg.pinned || mine.timeline == theirs.timeline);
            // Streaming a timeline that forked off before its minimum recovery point,
            // PostgreSQL stops: "unexpected timeline ID in checkpoint record, before reaching
            // minimum recovery point", and then refuses to start on that timeline.
            if follows
                && mine
                    .min_recovery
                    .as_ref()
                    .is_some_and(|need| !compatible(need, &theirs.wal))
            {
                let name = self.nodes[i].name.clone();
                self.log(format!(
                    "{name}: PostgreSQL stops: its upstream's timeline does not contain its minimum recovery point"
                ));
                self.nodes[i].pg.stop(false);
                continue;
            }
            if follows {
                let (wal, timeline) = (theirs.wal.clone(), theirs.timeline);
                let pg = &mut self.nodes[i].pg;
                let d = pg.data.as_mut().expect("checked");
                d.wal = wal;
                d.timeline = timeline;
                if !d.short() {
                    d.min_recovery = None;
                }
                pg.streaming = true;
            } else {
                self.nodes[i].pg.streaming = false;
            }
        }
    }

    fn clients(&mut self) {
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            let believes = n.alive && n.applied.primary_name() == Some(n.name.as_str()) && n.applied.pending.is_none();
            if !believes || n.pg.run != Run::Primary || n.pg.frozen || !self.rng.per_mille(500) {
                continue;
            }
            if n.pg.full {
                let name = n.name.clone();
                self.log(format!("{name}: PostgreSQL PANICs: could not write to WAL: {NO_ROOM}"));
                self.nodes[i].pg.stop(false);
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            let pg = &mut self.nodes[i].pg;
            let d = pg.data.as_mut().expect("a primary has data");
            d.wal.push((d.timeline, id));
            self.waiting.push((i, pg.epoch, id, d.wal.len()));
        }
    }

    /// A write is acknowledged once `k` of the standbys its primary lists have flushed it.
    fn acknowledge(&mut self) {
        let waiting = std::mem::take(&mut self.waiting);
        for (i, epoch, id, pos) in waiting {
            let pg = &self.nodes[i].pg;
            let intact = pg
                .data
                .as_ref()
                .is_some_and(|d| d.wal.get(pos - 1).is_some_and(|r| r.1 == id));
            if pg.run != Run::Primary || pg.epoch != epoch || !intact {
                continue; // outcome unknown to the client: never acknowledged
            }
            if pg.frozen {
                self.waiting.push((i, epoch, id, pos));
                continue;
            }
            let (names, k) = &pg.sync;
            let flushed = self
                .nodes
                .iter()
                .filter(|s| names.contains(&s.name) && s.pg.streaming && s.pg.upstream == Some(i) && s.pg.len() >= pos)
                .count();
            if flushed >= *k {
                self.record_ack(i, epoch, id);
            } else {
                self.waiting.push((i, epoch, id, pos));
            }
        }
    }

    fn record_ack(&mut self, node: usize, epoch: u64, id: u64) {
        if let Some(last) = self.acks.last() {
            if epoch < last.epoch || (epoch == last.epoch && node != last.node) {
                let (a, b) = (self.nodes[last.node].name.clone(), self.nodes[node].name.clone());
                self.violate(format!(
                    "split brain: {b} acknowledged write {id} as primary of generation {epoch} after {a} acknowledged write {} as primary of generation {}",
                    last.id, last.epoch
                ));
            }
        }
        self.acks.push(Ack { node, epoch, id });
        self.acked_ids.insert(id);
    }

    /// The recorded primary, running, holds every acknowledged write.
    fn check(&mut self) {
        let Some(p) = self.state.primary.clone().filter(|p| p.timeline.is_some()) else {
            return;
        };
        let Some(i) = self.nodes.iter().position(|n| n.name == p.node) else {
            return;
        };
        let pg = &self.nodes[i].pg;
        if pg.run != Run::Primary || pg.epoch != p.generation.0 {
            return;
        }
        let wal: BTreeSet<u64> = pg
            .data
            .as_ref()
            .map(|d| d.wal.iter().map(|r| r.1).collect())
            .unwrap_or_default();
        if let Some(lost) = self.acked_ids.iter().find(|id| !wal.contains(id)).copied() {
            self.violate(format!(
                "{} is the primary of generation {} without acknowledged write {lost}",
                p.node, p.generation
            ));
        }
    }
}

fn is_proposal(a: &Action) -> bool {
    matches!(
        a,
        Action::ProposeBootstrap
            | Action::RecordTimeline { .. }
            | Action::ReportStopped { .. }
            | Action::RestartDone { .. }
            | Action::ReinitDone { .. }
    )
}

/// Runs one seed.
pub fn run(seed: u64, cfg: &SimConfig) -> Outcome {
    Sim::new(seed, cfg.clone()).run()
}

#[cfg(test)]
mod tests;
