//! The agent's role transition table, run on every node each tick.
//!
//! From the applied state, what this node's PostgreSQL looks like and the
//! state of its lease, it returns the actions that make PostgreSQL match the
//! state, with the reason a person reads. `decide` runs one row per (wanted role,
//! local state), in the spirit of pg_auto_failover's FSM; what each cell may do is data
//! in `decide::table`, which the sweep holds `decide` to and the README renders. The
//! effects layer (`crate::agent`) executes the actions after checking that the
//! generation they were decided under is still the applied one.

use crate::cluster::{ChangeKind, ClusterState, PendingKind};
use crate::decide::election::lsn;
use crate::postgres::conf::{self, Upstream};
use crate::postgres::{Controldata, PgState};
use crate::types::{Generation, Timeline};

/// A standby that follows the primary but has not streamed for this long, on an older
/// timeline, has diverged (it holds WAL the new primary never had) and is rewound.
pub const DIVERGED_AFTER_MS: u64 = 5_000;

/// A cascading standby that has not streamed from its upstream for this long follows the
/// primary instead: its upstream is down, or serves no WAL (stopped, or not a standby).
pub const CASCADE_FALLBACK_MS: u64 = 3_000;
/// A cascading standby that fell back to the primary tries its upstream again after this
/// long (and falls back again `CASCADE_FALLBACK_MS` later if it still cannot stream).
pub const CASCADE_RETRY_MS: u64 = 60_000;

/// Where `me` streams from while it follows: (member, through its slot). Its source by
/// design (`ClusterState::source_of`), whose slot it uses; or, for a cascading standby that
/// fell back, the primary without a slot (the primary keeps none for it, so that a slot
/// nobody uses never holds the primary's WAL).
pub fn stream_from<'a>(state: &'a ClusterState, me: &str, fallen_back: bool) -> Option<(&'a str, bool)> {
    let source = state.source_of(me)?;
    let primary = state.primary_name()?;
    if fallen_back && source != primary {
        Some((primary, false))
    } else {
        Some((source, true))
    }
}

/// Whether a standby streams from the primary instead of its `replicatefrom` upstream this
/// tick. `cascading`: its source by design is another standby; `fallen_back_ms`: how long
/// it has streamed from the primary instead (`None`: it follows its upstream);
/// `not_streaming_ms`: how long it has followed its current source without streaming.
pub fn cascade_falls_back(cascading: bool, fallen_back_ms: Option<u64>, not_streaming_ms: u64) -> bool {
    match fallen_back_ms {
        _ if !cascading => false,
        None => not_streaming_ms >= CASCADE_FALLBACK_MS,
        Some(ms) => ms < CASCADE_RETRY_MS,
    }
}

/// Whether raftpg manages the slot `name`: a member's (`raftpg_` prefix) or a permanent
/// one, declared or removed. Every other slot is the operator's, and left alone.
pub fn manages_slot(state: &ClusterState, name: &str) -> bool {
    name.starts_with(conf::SLOT_PREFIX) || state.slots.contains_key(name)
}

/// The slots `me` keeps by design: one for each member that streams from it
/// (`slots_kept_by`), and, as primary, every permanent slot.
pub fn wanted_slots(state: &ClusterState, me: &str, primary: bool) -> std::collections::BTreeSet<String> {
    let mut wanted: std::collections::BTreeSet<String> =
        state.slots_kept_by(me).iter().map(|m| conf::slot_name(m)).collect();
    if primary {
        wanted.extend(state.declared_slots().map(|(n, _)| n.clone()));
    }
    wanted
}

/// Whether `me`'s slots (`slots`, every slot it has) differ from those it keeps by design
/// (`wanted_slots`). A slot nobody streams from would hold WAL for ever, on a primary or a
/// standby alike.
fn slots_differ(state: &ClusterState, me: &str, slots: &[String], primary: bool) -> bool {
    let wanted = wanted_slots(state, me, primary);
    wanted.iter().any(|s| !slots.contains(s)) || slots.iter().any(|s| manages_slot(state, s) && !wanted.contains(s))
}

/// The slots raftpg manages that have held WAL with no consumer for `slot_ttl_ms` or
/// longer (`idle_ms`: how long each slot has, as the agent counted): dropped, so that a
/// consumer gone for good cannot fill the disk.
pub fn stale_slots(state: &ClusterState, idle_ms: &std::collections::BTreeMap<String, u64>) -> Vec<String> {
    let ttl = state.slot_ttl_ms();
    if ttl == 0 {
        return Vec::new();
    }
    idle_ms
        .iter()
        .filter(|(name, ms)| **ms >= ttl && manages_slot(state, name))
        .map(|(name, _)| name.clone())
        .collect()
}

/// What this node's PostgreSQL looks like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Local {
    /// No database in PGDATA.
    NoData,
    /// A database and no postmaster; `control` is `None` when pg_controldata failed.
    Stopped { control: Option<Controldata> },
    /// Running, not in recovery.
    Primary(PgState),
    /// Running, in recovery.
    Standby(PgState),
    /// A postmaster may run but could not be observed: never taken as healthy.
    Unknown(String),
}

/// The primary's lease as this node sees it, on its own monotonic clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseView {
    /// Renewed, and `send_time + lease` is still ahead.
    Held,
    /// Not granted yet since this process started (within one lease period).
    Acquiring,
    /// Not renewed in time: this node must not accept writes.
    Expired,
}

/// Everything one decision looks at, gathered before deciding.
#[derive(Clone, Debug)]
pub struct AgentInput<'a> {
    pub me: &'a str,
    pub state: &'a ClusterState,
    pub local: &'a Local,
    pub lease: LeaseView,
    /// How long PostgreSQL has been down (or unobservable) while this node is primary.
    pub down_ms: u64,
    /// How long this standby has followed the primary without streaming.
    pub not_streaming_ms: u64,
    /// Set after a crash restart: clients are refused until a standby holds this LSN.
    pub gate_lsn: Option<u64>,
    /// Where this node streams from while it follows the current primary (none while a
    /// change is pending, or as primary): the `primary_conninfo` it should run, and what
    /// the actions that write the configuration carry.
    pub upstream: Option<&'a Upstream>,
    /// `ctl restart` asked for a restart this agent has not done yet.
    pub restart_requested: bool,
    /// `ctl reinit` asked for a re-clone this agent has not done yet.
    pub reinit_requested: bool,
    /// This node, primary of the applied generation, stopped its PostgreSQL because it
    /// hung (it could not prove a commit before its lease ran out).
    pub fenced_hung: bool,
    /// During a primary change, a stopped standby's or primary's database: where its WAL
    /// on disk ends (`(lsn, timeline)`, read with pg_waldump), when that could be read;
    /// never after a pg_rewind that did not finish (the directory may be part rewound).
    pub wal_end: Option<(u64, Timeline)>,
    /// During a primary change: how long the WAL receiver has kept running since this
    /// standby stopped following (its `primary_conninfo` emptied).
    pub receiver_lingering_ms: u64,
    /// PostgreSQL is down and has no room to start: where and how full (less than one WAL
    /// segment free where pg_wal or PGDATA lives).
    pub disk_full: Option<&'a str>,
    /// PGDATA's `postgresql.conf` was not written by raftpg (a database to adopt that
    /// raftpg has not taken over yet). Read only while this node adopts.
    pub foreign_conf: bool,
    /// `[cluster] adopt` in this node's own configuration file.
    pub adopt_configured: Option<&'a str>,
    /// Slots raftpg manages that held WAL with no consumer for `slot_ttl_ms` (`stale_slots`).
    pub stale_slots: &'a [String],
    /// PostgreSQL runs in recovery and is not consistent yet, so it refuses connections and
    /// is observed `Unknown`: its control file, read while it runs. Read only for a standby.
    pub inconsistent: Option<&'a Controldata>,
}

/// A WAL receiver told to stop exits within milliseconds; one that has not after this long
/// is hung, and would hold the failover hostage: PostgreSQL is stopped instead.
pub const RECEIVER_STOP_MS: u64 = 1_000;

impl AgentInput<'_> {
    fn start_standby(&self) -> Action {
        Action::StartStandby {
            upstream: self.upstream.cloned(),
        }
    }

    fn reconfigure(&self) -> Action {
        Action::Reconfigure {
            upstream: self.upstream.cloned(),
        }
    }

    fn restart_done(&self) -> Action {
        Action::RestartDone {
            upto: self.state.requests_of(self.me).0,
        }
    }

    fn reinit_done(&self) -> Action {
        Action::ReinitDone {
            upto: self.state.requests_of(self.me).1,
        }
    }

    fn reload(&self) -> Action {
        Action::Reload {
            upstream: self.upstream.cloned(),
        }
    }
}

/// One PostgreSQL action. Executed in order; a failure skips the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// initdb with checksums, then write the configuration.
    Initdb,
    /// Start as primary; `gated` refuses clients until a standby holds the WAL end.
    StartPrimary {
        gated: bool,
    },
    /// Create roles and propose `Bootstrap` with the system identifier.
    ProposeBootstrap,
    /// Immediate stop: this PostgreSQL must not accept or acknowledge writes.
    Fence,
    /// Switchover: CHECKPOINT, end the WAL senders of standbys that stopped answering (never
    /// the `target`'s), then a fast stop, which sends all WAL to the standbys first.
    CleanStop {
        target: String,
    },
    /// Propose `SwitchoverStopped`: this old primary stopped cleanly at checkpoint `lsn`.
    ReportStopped {
        lsn: u64,
    },
    /// The requested restart (or re-clone) is done: the requests counted up to `upto` in
    /// the state (`ClusterState::requests_of`) are served.
    RestartDone {
        upto: u64,
    },
    ReinitDone {
        upto: u64,
    },
    /// Clean fast stop (a standby about to be rewound).
    Stop,
    /// Render postgresql.conf and pg_hba.conf for the applied state, streaming from
    /// `upstream` (none: no `primary_conninfo`); reload if they changed.
    Reconfigure {
        upstream: Option<Upstream>,
    },
    /// Render them and reload whether or not they changed: the running PostgreSQL's
    /// settings differ from the ones wanted.
    Reload {
        upstream: Option<Upstream>,
    },
    /// `primary_conninfo = ''` and reload: stop streaming from the fenced primary.
    StopStreaming,
    /// Create the missing replication slots of the members that stream from this node by
    /// design (`ClusterState::slots_kept_by`) and, as primary, the permanent ones; drop the
    /// other slots raftpg manages (`wanted_slots`).
    EnsureSlots,
    /// Drop these slots: inactive while holding WAL for `slot_ttl_ms` (`stale_slots`); a
    /// permanent one is removed from the state too, so that no primary recreates it.
    DropSlots(Vec<String>),
    /// Let clients in: a standby holds the WAL written before the crash restart.
    OpenGate,
    /// End recovery (`pg_ctl promote`). The `candidate` of a pending change runs its
    /// `pre_promote` hook first (which may veto) and has the Raft leader confirm its
    /// candidacy; a primary recorded already (in recovery after a restart, or adopted) does not.
    Promote {
        candidate: bool,
    },
    /// Propose `VetoCandidate`: this candidate cannot promote (its database cannot become
    /// consistent from its own WAL), so the change starts again without it.
    DeclineCandidacy {
        reason: String,
    },
    /// Propose `RecordTimeline`: this node is the new primary on `timeline` (the fork
    /// point is read from the timeline history file; `write_lsn` if that fails).
    RecordTimeline {
        timeline: Timeline,
        write_lsn: Option<u64>,
    },
    /// pg_basebackup from member `from` (the primary) into an empty PGDATA.
    Clone {
        from: String,
    },
    /// pg_rewind onto member `source`'s timeline (the primary); re-clone from it on
    /// failure if configured.
    Rewind {
        source: String,
    },
    /// Write standby.signal and the configuration (streaming from `upstream`), then start.
    StartStandby {
        upstream: Option<Upstream>,
    },
    /// Take over an existing database's files: its `postgresql.conf` is kept as
    /// `postgresql.base.conf` (included first, raftpg's settings after it), `pg_hba.conf`
    /// is saved aside, and the parameters raftpg manages are removed from
    /// `postgresql.auto.conf` (saved aside first).
    AdoptConfig,
    /// Create roles and propose `Adopted`: this node's existing database is the first
    /// primary, on `timeline`.
    ProposeAdopted {
        timeline: Timeline,
    },
}

/// A decision: the actions, what to tell the Raft leader, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub actions: Vec<Action>,
    /// Ask the Raft leader to renew this node's primary lease.
    pub renew_lease: bool,
    /// Final (flush LSN, timeline) after streaming from the fenced primary stopped.
    pub final_position: Option<(u64, Timeline)>,
    pub reason: String,
}

impl Decision {
    fn new(actions: Vec<Action>, reason: impl Into<String>) -> Decision {
        Decision {
            actions,
            renew_lease: false,
            final_position: None,
            reason: reason.into(),
        }
    }

    fn idle(reason: impl Into<String>) -> Decision {
        Decision::new(Vec::new(), reason)
    }

    fn renewing(mut self) -> Decision {
        self.renew_lease = true;
        self
    }
}

/// The role the applied state gives this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wanted {
    Uninitialized,
    NotMember,
    /// Chosen to run initdb.
    Bootstrap,
    /// Someone else bootstraps (or nobody is chosen yet).
    AwaitBootstrap(Option<String>),
    Primary,
    /// Told to promote under the pending change.
    Candidate,
    /// Primary of the fenced generation.
    OldPrimary,
    /// A change is pending and this node is neither side of it.
    Fenced,
    /// Follow this primary.
    Standby(String),
}

pub fn wanted(state: &ClusterState, me: &str) -> Wanted {
    if !state.initialized {
        return Wanted::Uninitialized;
    }
    if state.member(me).is_none() {
        return Wanted::NotMember;
    }
    if let Some(p) = &state.pending {
        return match (p.candidate.as_deref(), p.from.as_deref()) {
            (Some(c), _) if c == me => Wanted::Candidate,
            (_, Some(f)) if f == me => Wanted::OldPrimary,
            _ => Wanted::Fenced,
        };
    }
    match &state.primary {
        Some(p) if p.node == me => Wanted::Primary,
        Some(p) => Wanted::Standby(p.node.clone()),
        None if state.bootstrap_node.as_deref() == Some(me) && state.system_identifier.is_none() => Wanted::Bootstrap,
        None => Wanted::AwaitBootstrap(state.bootstrap_node.clone()),
    }
}

/// The transition table.
pub fn decide(i: &AgentInput) -> Decision {
    let g = i.state.generation;
    if let Some(a) = i
        .adopt_configured
        .filter(|a| i.state.initialized && i.state.adopt.as_deref() != Some(*a))
    {
        // Another node formed the cluster without [cluster] adopt: following its plan
        // could clone over the database this file says to keep.
        return Decision::idle(format!(
            "raftpg.toml says [cluster] adopt = \"{a}\", but the cluster was formed {}: doing nothing to \
             PostgreSQL; give every member the same [cluster] section, stop all nodes, clear their Raft stores \
             (DATA_DIR/raft) and start them again",
            match &i.state.adopt {
                Some(other) => format!("to adopt {other}"),
                None => "without adopting a database".to_string(),
            }
        ));
    }
    match wanted(i.state, i.me) {
        Wanted::Uninitialized => Decision::idle("the cluster state is not initialised yet"),
        Wanted::NotMember => Decision::idle(format!("{} is not a member of the cluster: doing nothing", i.me)),
        Wanted::Bootstrap if i.state.adopt.as_deref() == Some(i.me) => adopt(i),
        Wanted::Bootstrap => bootstrap(i),
        Wanted::AwaitBootstrap(None) => {
            Decision::idle("waiting for the Raft leader to choose the node that runs initdb")
        }
        Wanted::AwaitBootstrap(Some(b)) => Decision::idle(format!("waiting for {b} to bootstrap the cluster")),
        Wanted::Primary => primary(i),
        Wanted::Candidate => candidate(i),
        Wanted::OldPrimary => fenced(i, g, true),
        Wanted::Fenced => fenced(i, g, false),
        Wanted::Standby(p) => standby(i, &p),
    }
}

/// Whether a pending change is a switchover whose target has not been told to promote:
/// until then the standbys keep streaming from the old primary as it shuts down.
fn switchover_draining(state: &ClusterState) -> Option<(&str, Option<u64>)> {
    let p = state.pending.as_ref()?;
    (p.kind == PendingKind::Switchover && p.candidate.is_none()).then(|| (p.to.as_deref().unwrap_or("?"), p.stop_lsn))
}

fn bootstrap(i: &AgentInput) -> Decision {
    match i.local {
        Local::NoData => Decision::new(
            vec![
                Action::Initdb,
                Action::StartPrimary { gated: false },
                Action::ProposeBootstrap,
            ],
            "chosen to bootstrap: initdb, start, record as first primary",
        ),
        Local::Stopped { .. } => Decision::new(
            vec![Action::StartPrimary { gated: false }, Action::ProposeBootstrap],
            "chosen to bootstrap and initdb already ran: start and record as first primary",
        ),
        Local::Primary(_) => Decision::new(
            vec![Action::ProposeBootstrap],
            "bootstrapped: recording as first primary",
        ),
        Local::Standby(_) | Local::Unknown(_) => {
            Decision::idle("chosen to bootstrap, but the local PostgreSQL is a standby or unobservable: waiting")
        }
    }
}

/// This node's existing database becomes the first primary: stop a PostgreSQL raftpg did
/// not start, take over its files, start it under raftpg (a standby is promoted to a new
/// timeline, so a former sibling's WAL can never pass for its own), then record it with
/// the timeline it runs.
fn adopt(i: &AgentInput) -> Decision {
    match i.local {
        Local::NoData => Decision::idle(
            "[cluster] adopt names me, but my PGDATA holds no database: not running initdb (that would start an \
             empty cluster); point [postgres] data_dir at the database to adopt",
        ),
        Local::Unknown(e) if i.foreign_conf => Decision::new(
            vec![Action::Stop],
            format!(
                "adopting: a PostgreSQL runs in PGDATA with its own configuration and does not answer raftpg ({e}): \
                 stopping it cleanly to start it under raftpg"
            ),
        ),
        Local::Unknown(e) => Decision::idle(format!(
            "adopting: PostgreSQL runs under raftpg's configuration but does not answer ({e}); check that the role \
             [postgres] superuser exists in the adopted database"
        )),
        Local::Primary(_) | Local::Standby(_) if i.foreign_conf => Decision::new(
            vec![Action::Stop],
            "adopting: stopping the running PostgreSQL cleanly (fast) to restart it under raftpg's configuration",
        ),
        // Whether it was a standby decides between a promotion (a timeline of its own) and
        // a plain start: never guessed.
        Local::Stopped { control: None } => Decision::idle(
            "adopting: pg_controldata cannot read the database's control file, so whether it was a primary or a \
             standby is unknown: check PGDATA and [postgres] bin_dir (the same major version)",
        ),
        Local::Stopped { control: Some(c) } if c.was_standby() => Decision::new(
            vec![Action::AdoptConfig, i.start_standby()],
            "adopting a standby whose primary is gone: starting it without a primary, to promote it",
        ),
        Local::Stopped { .. } => Decision::new(
            vec![Action::AdoptConfig, Action::StartPrimary { gated: false }],
            "adopting: starting the existing database as primary under raftpg's configuration",
        ),
        Local::Standby(_) => Decision::new(
            vec![Action::Promote { candidate: false }],
            "adopting a standby: promoting it to a timeline of its own",
        ),
        Local::Primary(pg) => match pg.timeline {
            Some(timeline) => Decision::new(
                vec![Action::ProposeAdopted { timeline }],
                format!("adopted: recording my database as the first primary, on timeline {timeline}"),
            ),
            None => Decision::idle("adopting: PostgreSQL runs as primary but its timeline cannot be read yet"),
        },
    }
}

fn primary(i: &AgentInput) -> Decision {
    let paused = i.state.paused;
    let bound = i.state.ha.primary_restart_timeout_ms;
    let tl = i.state.primary_timeline().unwrap_or(Timeline::NONE);
    let g = i.state.generation;
    if i.fenced_hung && !paused && !i.restart_requested {
        // Restarting a PostgreSQL that hung in place would race the failover the
        // controller is about to start, and a hung disk would hang it again.
        return match i.local {
            Local::Primary(_) | Local::Unknown(_) => Decision::new(
                vec![Action::Fence],
                format!("my PostgreSQL hung and lost the lease of generation {g}: stopping it, not renewing"),
            ),
            _ => Decision::idle(format!(
                "my PostgreSQL hung and was stopped: not renewing my lease as primary of generation {g}, so a standby is promoted"
            )),
        };
    }
    if let (Some(full), Local::Stopped { .. } | Local::NoData, false) = (i.disk_full, i.local, paused) {
        // A full pg_wal stopped it and would stop it again at once: waiting for the
        // restart bound only lengthens the outage, and restarts would loop.
        return Decision::idle(format!(
            "PostgreSQL is down and {full}: not restarting it, and not renewing my lease as primary of \
             generation {g}, so a standby is promoted; free space there and I rejoin as a standby"
        ));
    }
    if i.lease == LeaseView::Expired && !paused {
        return match i.local {
            Local::Primary(_) => Decision::new(
                vec![Action::Fence],
                format!("my lease as primary of generation {g} expired: fencing my PostgreSQL"),
            )
            .renewing(),
            Local::Unknown(_) => Decision::new(
                vec![Action::Fence],
                format!("my lease as primary of generation {g} expired and PostgreSQL does not answer: fencing it"),
            ),
            _ if i.down_ms > bound => Decision::idle(format!(
                "PostgreSQL has been down {} ms (bound {bound} ms): letting the lease lapse so a standby is promoted",
                i.down_ms
            )),
            _ => Decision::idle(format!(
                "my lease expired: renewing it before PostgreSQL may run as primary of generation {g}"
            ))
            .renewing(),
        };
    }
    if i.restart_requested {
        return match i.local {
            Local::Primary(_) if i.lease == LeaseView::Held => Decision::new(
                vec![Action::Stop, Action::StartPrimary { gated: false }, i.restart_done()],
                "restart requested: stopping and starting PostgreSQL as primary",
            )
            .renewing(),
            Local::Primary(_) => Decision::idle("restart requested: waiting for my lease").renewing(),
            Local::Unknown(e) => Decision::idle(format!(
                "restart requested, but I cannot prove my PostgreSQL commits ({e}): not renewing my lease"
            )),
            _ => Decision::new(
                vec![i.restart_done()],
                "restart requested while PostgreSQL is not running: starting it is enough",
            )
            .renewing(),
        };
    }
    match i.local {
        Local::Primary(pg) => {
            let mut actions = vec![i.reconfigure()];
            if !i.stale_slots.is_empty() {
                actions.push(Action::DropSlots(i.stale_slots.to_vec()));
            } else if slots_differ(i.state, i.me, &pg.slots, true) {
                actions.push(Action::EnsureSlots);
            }
            let mut reason = format!("I am the primary (generation {g}, timeline {tl}) and hold the lease");
            if let Some(gate) = i.gate_lsn {
                let k = i.state.sync_quorum();
                // Only members' walreceivers count (not a pg_basebackup in progress).
                let holding = pg
                    .replication
                    .iter()
                    .filter(|r| i.state.member(&r.application_name).is_some())
                    .filter(|r| r.flush_lsn.is_some_and(|f| f >= gate))
                    .count();
                if holding >= k.max(1) || k == 0 {
                    actions.push(Action::OpenGate);
                    reason = format!("a standby holds my WAL up to {}: letting clients in", lsn(gate));
                } else {
                    reason = format!(
                        "restarted after a crash: clients wait until a standby holds {}",
                        lsn(gate)
                    );
                }
            }
            Decision::new(actions, reason).renewing()
        }
        _ if i.down_ms > bound && !paused => Decision::idle(format!(
            "PostgreSQL did not come back within {bound} ms: letting the lease lapse so a standby is promoted"
        )),
        Local::Stopped { control } if i.lease == LeaseView::Held || paused => {
            let clean = control.as_ref().is_some_and(Controldata::clean_primary_shutdown);
            let why = if clean { "stopped" } else { "crashed" };
            Decision::new(
                vec![i.reconfigure(), Action::StartPrimary { gated: !clean }],
                format!("I am the primary of generation {g} and PostgreSQL {why}: restarting it in place"),
            )
            .renewing()
        }
        Local::Stopped { .. } => {
            Decision::idle("PostgreSQL is down: waiting for my lease before restarting it as primary").renewing()
        }
        Local::Standby(_) if i.lease == LeaseView::Held => Decision::new(
            vec![i.reconfigure(), Action::Promote { candidate: false }],
            format!("recorded as primary of generation {g} but in recovery: promoting"),
        )
        .renewing(),
        Local::Standby(_) => Decision::idle("recorded as primary but in recovery: waiting for my lease").renewing(),
        Local::NoData => {
            Decision::idle("I am the recorded primary but have no data directory: letting the lease lapse")
        }
        // Only a commit proves a primary healthy: without one the lease is not renewed,
        // and it fences PostgreSQL when it runs out.
        Local::Unknown(e) => Decision::idle(format!(
            "cannot prove my PostgreSQL commits ({e}): not renewing my lease, which fences it if this lasts"
        )),
    }
}

fn candidate(i: &AgentInput) -> Decision {
    let g = i.state.generation;
    // Its minimum recovery point is past its WAL (rewound onto a primary that moved on
    // during the copy and was then fenced): started, it would wait for WAL it cannot get,
    // never consistent, and be chosen again after every replacement (finding 17 of
    // docs/jepsen.md). It declines; its final report still counts as the position the
    // winner must reach.
    if let (Local::Stopped { control: Some(c) }, Some((end, timeline))) = (i.local, i.wal_end) {
        if let Some(need) = c.short_of((end, timeline)) {
            let reason = format!(
                "it cannot become consistent from its own WAL: recovery must reach {} and its WAL ends at {} on \
                 timeline {timeline}",
                lsn(need),
                lsn(end)
            );
            return Decision::new(
                vec![Action::DeclineCandidacy { reason: reason.clone() }],
                format!("chosen to promote under generation {g}, but {reason}: declining"),
            );
        }
    }
    match i.local {
        // Reconfigure drops primary_conninfo (nothing to follow while a change is pending).
        Local::Standby(_) => Decision::new(
            vec![i.reconfigure(), Action::Promote { candidate: true }],
            format!("chosen to promote under generation {g}: promoting"),
        ),
        Local::Primary(pg) => match pg.timeline {
            Some(timeline) => Decision::new(
                vec![Action::RecordTimeline {
                    timeline,
                    write_lsn: pg.write_lsn,
                }],
                format!("promoted on timeline {timeline}: recording it"),
            ),
            None => Decision::idle("promoted, but the timeline is not known yet"),
        },
        Local::Stopped { .. } => Decision::new(
            vec![i.start_standby()],
            "chosen to promote but PostgreSQL is down: starting it in recovery first",
        ),
        Local::NoData => Decision::idle("chosen to promote but there is no data directory"),
        Local::Unknown(e) => Decision::idle(format!("chosen to promote but PostgreSQL cannot be observed: {e}")),
    }
}

/// This stopped database's WAL ends on a timeline the history does not record: it was
/// promoted as a candidate that was then replaced.
fn promoted_unrecorded(i: &AgentInput) -> bool {
    let recorded = i
        .state
        .history
        .iter()
        .map(|h| h.timeline)
        .max()
        .unwrap_or(Timeline::NONE);
    i.wal_end.is_some_and(|(_, tl)| tl > recorded)
}

/// This node was the primary before the fenced one: it is the old primary of the last
/// recorded change, that change made the fenced primary primary, and this node's WAL ends
/// on an older timeline than the fenced primary's (the fenced primary may have promoted
/// twice, after a restart, so its parent is not always this node's timeline). A database
/// still a primary's since then was neither rewound nor cloned.
fn preceded_the_fenced(i: &AgentInput) -> bool {
    let Some(last) = i.state.history.last() else {
        return false;
    };
    let fenced = i.state.pending.as_ref().and_then(|p| p.from.as_deref());
    last.from.as_deref() == Some(i.me)
        && last.to != i.me
        && fenced == Some(last.to.as_str())
        && i.wal_end
            .is_some_and(|(_, tl)| tl > Timeline::NONE && tl < last.timeline)
}

/// The final report of a member that holds no acknowledged write of the fenced
/// generation: timeline 0, which counts towards the reports needed and is never promoted.
fn holds_nothing(g: Generation, why: &str) -> Decision {
    let mut d = Decision::idle(format!(
        "{why}: reporting that I hold no acknowledged write of generation {} and cannot be promoted",
        g.0 - 1
    ));
    d.final_position = Some((0, Timeline::NONE));
    d
}

/// A change is pending and this node is not its candidate; `old_primary`: it was the primary.
fn fenced(i: &AgentInput, g: Generation, old_primary: bool) -> Decision {
    if let Some((to, stop_lsn)) = switchover_draining(i.state) {
        return switchover(i, old_primary, to, stop_lsn);
    }
    match i.local {
        Local::Primary(_) | Local::Unknown(_) if old_primary => Decision::new(
            vec![Action::Fence],
            format!("generation {} was fenced: stopping my PostgreSQL at once", g.0 - 1),
        ),
        Local::Primary(_) => Decision::new(
            vec![Action::Fence],
            "a primary change is under way and I am not its candidate: fencing",
        ),
        Local::Standby(pg) if !pg.primary_conninfo.is_empty() => Decision::new(
            vec![Action::StopStreaming],
            format!("failover under generation {g}: stopping streaming from the fenced primary"),
        ),
        Local::Standby(pg) if pg.walreceiver.is_none() && pg.timeline.is_none() => {
            Decision::idle("stopped streaming; waiting to read my timeline before I report my final position")
        }
        Local::Standby(pg) if pg.walreceiver.is_none() => {
            let flushed = pg.receive_lsn.max(pg.replay_lsn).unwrap_or(0);
            let tl = pg.timeline.unwrap_or(Timeline::NONE);
            let mut d = Decision::idle(format!(
                "stopped streaming; final position {} on timeline {tl}, waiting for the controller",
                lsn(flushed)
            ));
            d.final_position = Some((flushed, tl));
            d
        }
        Local::Standby(_) if i.receiver_lingering_ms > RECEIVER_STOP_MS => Decision::new(
            vec![Action::Fence],
            format!(
                "failover under generation {g}: my WAL receiver has not stopped in {} ms: stopping PostgreSQL to report my final position from disk",
                i.receiver_lingering_ms
            ),
        ),
        Local::Standby(_) => Decision::idle("waiting for the walreceiver to stop"),
        // A hung standby would hold the failover hostage: its final report is needed.
        // Stopped, it is started in recovery without streaming and reports what it holds.
        Local::Unknown(e) => Decision::new(
            vec![Action::Fence],
            format!("failover under generation {g} and my PostgreSQL does not answer ({e}): stopping it to report my final position"),
        ),
        // What a standby flushed is on its disk: read there, the report needs no start
        // (which waits forever for a standby that needs WAL it cannot get to be consistent).
        Local::Stopped { control: Some(c) } if c.was_standby() => match i.wal_end {
            Some((flushed, tl)) if tl > Timeline::NONE => {
                let mut d = Decision::idle(format!(
                    "stopped; final position {} on timeline {tl}, read from my WAL on disk, waiting for the controller",
                    lsn(flushed)
                ));
                d.final_position = Some((flushed, tl));
                d
            }
            _ => Decision::new(
                vec![i.start_standby()],
                "a primary change is under way: starting in recovery, not streaming, to report my position",
            ),
        },
        // A candidate replaced before it recorded its timeline (it died or hung right after
        // pg_promote) holds what it received as a standby, so every acknowledged write it
        // had: its WAL ends on a timeline newer than any the history records, which no
        // other database can (an old primary or a half-done rewind is on a recorded one).
        Local::Stopped { control: Some(_) } if !old_primary && promoted_unrecorded(i) => {
            let (flushed, tl) = i.wal_end.expect("checked by promoted_unrecorded");
            let mut d = Decision::idle(format!(
                "stopped after a promotion that was never recorded; final position {} on timeline {tl}, read from my \
                 WAL on disk, waiting for the controller",
                lsn(flushed)
            ));
            d.final_position = Some((flushed, tl));
            d
        }
        // The old primary of the change that made the fenced primary primary, its database
        // still as it stopped (a failed rewind leaves `rewind.incomplete`, which reads as no
        // data): it holds every write it acknowledged, and the fenced primary's standbys may
        // not have streamed them yet (`cluster::fork_holders`; seed 7206).
        Local::Stopped { control: Some(c) } if !old_primary && c.was_primary() && preceded_the_fenced(i) => {
            let (flushed, tl) = i.wal_end.expect("checked by preceded_the_fenced");
            let mut d = Decision::idle(format!(
                "stopped as the primary before {}; final position {} on timeline {tl}, read from my WAL on \
                 disk, waiting for the controller",
                i.state.pending.as_ref().and_then(|p| p.from.as_deref()).unwrap_or("?"),
                lsn(flushed)
            ));
            d.final_position = Some((flushed, tl));
            d
        }
        // Only a WAL receiver acknowledges a commit. A member with no database, or whose
        // database is not a standby's (a rewind or clone that failed part-way, an old
        // primary of an earlier generation), streamed nothing from the fenced primary that
        // it still holds: it says so, or the failover would wait for it forever.
        Local::NoData if !old_primary => holds_nothing(g, "I have no database"),
        Local::Stopped { control: Some(c) } if !old_primary => holds_nothing(
            g,
            &format!("my stopped database is not a standby's ({})", c.state),
        ),
        _ => Decision::idle(format!("waiting for the primary change of generation {g} to finish")),
    }
}

/// A switchover before its target promotes. The old primary stops cleanly and says where
/// its WAL ends; everyone else keeps streaming from it, so they receive all of it.
fn switchover(i: &AgentInput, old_primary: bool, to: &str, stop_lsn: Option<u64>) -> Decision {
    match i.local {
        Local::Primary(_) if old_primary => Decision::new(
            vec![Action::CleanStop { target: to.to_string() }],
            format!("switchover to {to}: checkpoint, then a clean shutdown that hands all WAL to the standbys"),
        ),
        Local::Primary(_) => Decision::new(
            vec![Action::Fence],
            "a switchover is under way and I am not its old primary: fencing",
        ),
        Local::Stopped { control: Some(c) } if old_primary && c.clean_primary_shutdown() => {
            match (c.checkpoint_lsn, stop_lsn) {
                (Some(end), None) => Decision::new(
                    vec![Action::ReportStopped { lsn: end }],
                    format!(
                        "stopped cleanly for the switchover to {to}: my WAL ends at {}",
                        lsn(end)
                    ),
                ),
                (_, Some(l)) => Decision::idle(format!("stopped cleanly at {}: waiting for {to} to promote", lsn(l))),
                (None, None) => Decision::idle("stopped cleanly, but pg_controldata shows no checkpoint location"),
            }
        }
        Local::Unknown(_) if old_primary => Decision::new(
            vec![Action::Fence],
            "switchover: my PostgreSQL cannot be observed: stopping it at once",
        ),
        Local::Standby(pg) if !pg.primary_conninfo.is_empty() => Decision::idle(format!(
            "switchover to {to}: streaming from the old primary until it has stopped"
        )),
        _ => Decision::idle(format!("switchover to {to} under way")),
    }
}

/// After a switchover the old primary, stopped cleanly, follows the new one without a
/// rewind when its WAL ends before the new timeline's fork point.
fn follows_without_rewind(state: &ClusterState, me: &str, c: &Controldata) -> bool {
    let Some(last) = state.history.last() else {
        return false;
    };
    let fork = last.switch_lsn.map(|l| l.0);
    c.clean_primary_shutdown()
        && last.from.as_deref() == Some(me)
        && last.parent_timeline.is_some()
        && last.parent_timeline == c.timeline
        && matches!((c.checkpoint_lsn, fork), (Some(end), Some(fork)) if end < fork)
}

/// Whether a stopped standby's database cannot follow timeline `p_tl` as it is: its last
/// checkpoint lies on a timeline that is not `p_tl` or one of its ancestors in the recorded
/// history, or on an ancestor past the point where the line to `p_tl` forked off it. Such a
/// database was promoted (a candidate that was replaced, then started in recovery for its
/// final report), and PostgreSQL refuses to start it ("requested timeline does not contain
/// minimum recovery point"), so starting it again would fail for ever (the partition suite's
/// pause-primary-pg-kill-raft-leader). False when the history cannot tell (a timeline it
/// does not record the parent of): then the start is tried, and a standby that cannot
/// stream is rewound later (`DIVERGED_AFTER_MS`).
///
/// The same holds for its minimum recovery point: a standby rewound onto a primary that was
/// fenced before it streamed up to that point, when the next primary's timeline forked off
/// before it (the 300 s tier's chaos-multi at stop 33: minimum recovery point 0/CC8E910 on
/// timeline 18, timeline 19 forked at 0/CC8BCC8; PostgreSQL refused every start).
/// `Some((what, why))`: which point is off the line, and how that came about, for the
/// decision's reason.
fn off_history(state: &ClusterState, c: &Controldata, p_tl: Timeline) -> Option<(String, &'static str)> {
    let checkpoint = c.timeline.zip(c.checkpoint_lsn);
    let min_recovery = c
        .min_recovery_timeline
        .zip(c.min_recovery)
        .filter(|&(t, at)| t > Timeline::NONE && at > 0);
    if let Some((t, at)) = checkpoint.filter(|&point| off_line(state, point, p_tl)) {
        return Some((
            format!("my standby database ends on timeline {t} at {}", lsn(at)),
            "a promotion that was replaced",
        ));
    }
    let (t, at) = min_recovery.filter(|&point| off_line(state, point, p_tl))?;
    Some((
        format!(
            "my standby database must recover to {} on timeline {t} to be consistent",
            lsn(at)
        ),
        "rewound onto a primary that was fenced before I streamed that far; if I lack the WAL up to it, pg_rewind \
         fails and I am re-cloned",
    ))
}

/// WAL position `at` on timeline `t` is not on `p_tl`'s line in the recorded history (see
/// `off_history`).
fn off_line(state: &ClusterState, (t, at): (Timeline, u64), p_tl: Timeline) -> bool {
    if t > p_tl {
        return p_tl > Timeline::NONE;
    }
    // Walk from p_tl to its ancestors: (timeline, where the line to p_tl leaves it).
    let mut timeline = p_tl;
    let mut leaves: Option<u64> = None;
    for _ in 0..=state.history.len() {
        if timeline == t {
            return leaves.is_some_and(|fork| at > fork);
        }
        let Some(entry) = state.history.iter().rev().find(|h| h.timeline == timeline) else {
            return false;
        };
        match (entry.parent_timeline, entry.switch_lsn.map(|l| l.0)) {
            (Some(parent), Some(fork)) if parent < timeline => {
                timeline = parent;
                leaves = Some(fork);
            }
            // The first timeline: t is on p_tl's line only if it is this one, which it is not.
            // An adopted database may have started on a later timeline, whose ancestors the
            // history does not know: then only a timeline between them is known to be off it.
            (None, _) if entry.kind == ChangeKind::Bootstrap => return timeline == Timeline::FIRST || t > timeline,
            _ => return false,
        }
    }
    false
}

fn standby(i: &AgentInput, p: &str) -> Decision {
    let mut d = following(i, p);
    // A standby keeps the slots of those that cascade from it, and no other: a slot left
    // from its time as primary would hold its WAL for ever.
    if let Local::Standby(pg) = i.local {
        let renders = matches!(d.actions[..], [Action::Reconfigure { .. }] | [Action::Reload { .. }]);
        if renders && !i.stale_slots.is_empty() {
            d.actions.push(Action::DropSlots(i.stale_slots.to_vec()));
        } else if renders && slots_differ(i.state, i.me, &pg.slots, false) {
            d.actions.push(Action::EnsureSlots);
        }
    }
    d
}

fn following(i: &AgentInput, p: &str) -> Decision {
    let g = i.state.generation;
    let p_tl = i.state.primary_timeline().unwrap_or(Timeline::NONE);
    // A standby database, stopped or running but not consistent, whose last checkpoint or
    // minimum recovery point is off p's line (`off_history`): read once for both arms below.
    let off = match i.local {
        Local::Stopped { control: Some(c) } if c.was_standby() => off_history(i.state, c, p_tl),
        Local::Unknown(_) => i.inconsistent.and_then(|c| off_history(i.state, c, p_tl)),
        _ => None,
    };
    match i.local {
        // A stray primary is fenced first (below); requests wait for that.
        Local::Primary(_) => {}
        _ if i.reinit_requested => {
            let mut actions = match i.local {
                Local::Standby(_) | Local::Unknown(_) => vec![Action::Fence],
                _ => vec![],
            };
            actions.extend([
                Action::Clone { from: p.to_string() },
                i.start_standby(),
                i.reinit_done(),
            ]);
            return Decision::new(
                actions,
                format!("re-clone requested: discarding my data and cloning from {p}"),
            );
        }
        Local::Standby(_) if i.restart_requested => {
            return Decision::new(
                vec![Action::Stop, i.start_standby(), i.restart_done()],
                "restart requested: stopping and starting PostgreSQL as a standby",
            )
        }
        Local::Stopped { .. } | Local::NoData if i.restart_requested => {
            return Decision::new(
                vec![i.restart_done()],
                "restart requested while PostgreSQL is down: the next start is the restart",
            )
        }
        _ => {}
    }
    if let (Some(full), Local::Stopped { .. } | Local::NoData) = (i.disk_full, i.local) {
        return Decision::idle(format!(
            "PostgreSQL is down and {full}: not starting, rewinding or cloning it, which would only fail \
             again; free space there and I follow {p}"
        ));
    }
    match i.local {
        Local::NoData => Decision::new(
            vec![Action::Clone { from: p.to_string() }, i.start_standby()],
            format!("no data directory: cloning from {p}"),
        ),
        Local::Stopped { control: Some(c) }
            if c.system_identifier.is_some()
                && i.state.system_identifier.is_some()
                && c.system_identifier != i.state.system_identifier =>
        {
            Decision::new(
                vec![Action::Clone { from: p.to_string() }, i.start_standby()],
                format!(
                    "my PGDATA holds another database (system identifier {}, the cluster's is {}): cloning from {p}",
                    c.system_identifier.unwrap_or(0),
                    i.state.system_identifier.unwrap_or(0)
                ),
            )
        }
        Local::Stopped { control: Some(c) } if c.was_standby() && off.is_some() => {
            let (what, why) = off.expect("checked by the guard");
            Decision::new(
                vec![Action::Rewind { source: p.to_string() }, i.start_standby()],
                format!("{what}, which is not on {p}'s timeline {p_tl} ({why}): rewinding, then following it"),
            )
        }
        Local::Stopped { control: Some(c) } if c.was_standby() => {
            Decision::new(vec![i.start_standby()], format!("starting as a standby of {p}"))
        }
        Local::Stopped { control: Some(c) } if follows_without_rewind(i.state, i.me, c) => Decision::new(
            vec![i.start_standby()],
            format!("stopped cleanly before the switchover: following {p} on timeline {p_tl} without a rewind"),
        ),
        Local::Stopped { .. } => Decision::new(
            vec![Action::Rewind { source: p.to_string() }, i.start_standby()],
            format!("was a primary or crashed: rewinding onto {p}'s timeline {p_tl}, then following it"),
        ),
        Local::Primary(_) if i.state.paused => Decision::idle(format!(
            "running as a primary while {p} is the primary of generation {g}; paused, so not fencing"
        )),
        Local::Primary(_) => Decision::new(
            vec![Action::Fence],
            format!("{p} is the primary of generation {g}: fencing my stray primary"),
        ),
        // Reload even when the files did not change: PostgreSQL runs another conninfo
        // than the one wanted, so it does not run what they say (a postmaster started
        // before they were written).
        Local::Standby(pg) if i.upstream.is_some_and(|u| conf::conninfo(u) != pg.primary_conninfo) => {
            Decision::new(vec![i.reload()], format!("following the new primary {p}"))
        }
        // Started on its own timeline to give a final report: only a restart lets it
        // follow the new one (recovery_target_timeline takes effect at start).
        Local::Standby(pg) if pg.timeline_pinned && !pg.streaming() && pg.timeline.is_some_and(|t| t < p_tl) => {
            Decision::new(
                vec![Action::Stop, i.start_standby()],
                format!("started on my own timeline for a final report: restarting to follow {p} on timeline {p_tl}"),
            )
        }
        Local::Standby(pg) if pg.streaming() => Decision::new(
            vec![i.reconfigure()],
            format!("streaming from {p} (generation {g}, timeline {p_tl})"),
        ),
        Local::Standby(pg) if i.not_streaming_ms >= DIVERGED_AFTER_MS && pg.timeline.is_some_and(|t| t < p_tl) => {
            Decision::new(
                vec![
                    Action::Stop,
                    Action::Rewind { source: p.to_string() },
                    i.start_standby(),
                ],
                format!(
                    "not streaming from {p} for {} ms and on timeline {} < {p_tl}: diverged, rewinding",
                    i.not_streaming_ms,
                    pg.timeline.unwrap_or(Timeline::NONE)
                ),
            )
        }
        Local::Standby(_) => Decision::new(vec![i.reconfigure()], format!("following {p}, not streaming yet")),
        // Not consistent yet, and it never will be following p: its minimum recovery point is
        // off p's line, so PostgreSQL waits in recovery for good, refusing connections (the
        // simulation, seed 5026 with `rewind_race`: a standby rewound onto a primary fenced
        // before it streamed that far, its WAL then diverged from the next primary's).
        Local::Unknown(_) if off.is_some() => {
            let (what, why) = off.expect("checked by the guard");
            Decision::new(
                vec![
                    Action::Stop,
                    Action::Rewind { source: p.to_string() },
                    i.start_standby(),
                ],
                format!(
                    "{what}, which is not on {p}'s timeline {p_tl} ({why}), so it cannot become consistent: \
                     stopping, rewinding, then following {p}"
                ),
            )
        }
        // Not consistent yet, but it can be: pointed at p (a reload needs no connection), it
        // streams what it lacks (its primary_conninfo may still name a fenced primary).
        Local::Unknown(_) if i.inconsistent.is_some() => {
            let c = i.inconsistent.expect("checked by the guard");
            let until = match (
                c.min_recovery.unwrap_or(0),
                c.min_recovery_timeline.unwrap_or(Timeline::NONE),
            ) {
                (0, _) => String::new(),
                (at, t) => format!(" until it reaches {} on timeline {t}", lsn(at)),
            };
            Decision::new(
                vec![i.reconfigure()],
                format!("in recovery and not consistent{until}: following {p}"),
            )
        }
        Local::Unknown(e) => Decision::idle(format!("cannot observe my PostgreSQL: {e}")),
    }
}

#[cfg(test)]
#[path = "agent_tests.rs"]
mod tests;
