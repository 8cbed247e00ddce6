//! The agent's transition table as data: for each role the applied state gives a node
//! (a [`Row`]) and each look of its PostgreSQL (a [`Column`]), every kind of action
//! `decide` may take there, whether it may renew the lease and whether it may send a final
//! report.
//!
//! `decide` is code, because a cell's choice among its actions reads timers, the WAL and
//! the history. This table is what that code is held to: the sweep in `agent_tests`
//! runs `decide` over every combination of its inputs (over 100,000) and requires that
//! each decision stays inside its cell and that every entry of every cell is taken by
//! some input, so the table is exact. The README's table is rendered from it
//! ([`render`]) and a test keeps the two equal.

use super::agent::{Action, Decision, LeaseView, Local, Wanted};

/// The role the applied state gives this node, with the lease for a primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Row {
    Uninitialized,
    NotMember,
    AwaitBootstrap,
    Bootstrap,
    PrimaryHeld,
    PrimaryAcquiring,
    PrimaryExpired,
    /// Paused (`ctl pause`): the lease is not enforced.
    PrimaryPaused,
    Candidate,
    OldPrimary,
    Fenced,
    Standby,
    StandbyPaused,
}

impl Row {
    pub const ALL: [Row; 13] = [
        Row::Uninitialized,
        Row::NotMember,
        Row::AwaitBootstrap,
        Row::Bootstrap,
        Row::PrimaryHeld,
        Row::PrimaryAcquiring,
        Row::PrimaryExpired,
        Row::PrimaryPaused,
        Row::Candidate,
        Row::OldPrimary,
        Row::Fenced,
        Row::Standby,
        Row::StandbyPaused,
    ];

    /// The row of a node that the applied state gives `wanted`, with `lease` as the
    /// node sees it, in a cluster `paused` or not.
    pub fn of(wanted: &Wanted, lease: LeaseView, paused: bool) -> Row {
        match (wanted, lease) {
            (Wanted::Primary, _) if paused => Row::PrimaryPaused,
            (Wanted::Standby(_), _) if paused => Row::StandbyPaused,
            (Wanted::Uninitialized, _) => Row::Uninitialized,
            (Wanted::NotMember, _) => Row::NotMember,
            (Wanted::AwaitBootstrap(_), _) => Row::AwaitBootstrap,
            (Wanted::Bootstrap, _) => Row::Bootstrap,
            (Wanted::Primary, LeaseView::Held) => Row::PrimaryHeld,
            (Wanted::Primary, LeaseView::Acquiring) => Row::PrimaryAcquiring,
            (Wanted::Primary, LeaseView::Expired) => Row::PrimaryExpired,
            (Wanted::Candidate, _) => Row::Candidate,
            (Wanted::OldPrimary, _) => Row::OldPrimary,
            (Wanted::Fenced, _) => Row::Fenced,
            (Wanted::Standby(_), _) => Row::Standby,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Row::Uninitialized => "not initialised",
            Row::NotMember => "not a member",
            Row::AwaitBootstrap => "another bootstraps",
            Row::Bootstrap => "bootstrap (chosen)",
            Row::PrimaryHeld => "primary, lease held",
            Row::PrimaryAcquiring => "primary, lease acquiring",
            Row::PrimaryExpired => "primary, lease expired",
            Row::PrimaryPaused => "primary, paused",
            Row::Candidate => "candidate",
            Row::OldPrimary => "old primary",
            Row::Fenced => "fenced standby",
            Row::Standby => "standby of P",
            Row::StandbyPaused => "standby of P, paused",
        }
    }
}

/// What this node's PostgreSQL looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Column {
    NoData,
    Stopped,
    Primary,
    Standby,
    Unknown,
}

impl Column {
    pub const ALL: [Column; 5] = [
        Column::NoData,
        Column::Stopped,
        Column::Primary,
        Column::Standby,
        Column::Unknown,
    ];

    pub fn of(local: &Local) -> Column {
        match local {
            Local::NoData => Column::NoData,
            Local::Stopped { .. } => Column::Stopped,
            Local::Primary(_) => Column::Primary,
            Local::Standby(_) => Column::Standby,
            Local::Unknown(_) => Column::Unknown,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Column::NoData => "no data",
            Column::Stopped => "stopped",
            Column::Primary => "running primary",
            Column::Standby => "running standby",
            Column::Unknown => "unknown",
        }
    }
}

/// An [`Action`] without its operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Initdb,
    AdoptConfig,
    StartPrimary,
    ProposeBootstrap,
    ProposeAdopted,
    Fence,
    CleanStop,
    ReportStopped,
    Stop,
    StopStreaming,
    Promote,
    DeclineCandidacy,
    RecordTimeline,
    Clone,
    Rewind,
    StartStandby,
    Reconfigure,
    Reload,
    EnsureSlots,
    DropSlots,
    OpenGate,
    RestartDone,
    ReinitDone,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Initdb => "initdb",
            Kind::AdoptConfig => "take over the files",
            Kind::StartPrimary => "start as primary",
            Kind::ProposeBootstrap => "propose Bootstrap",
            Kind::ProposeAdopted => "propose Adopted",
            Kind::Fence => "**fence**",
            Kind::CleanStop => "clean stop",
            Kind::ReportStopped => "propose SwitchoverStopped",
            Kind::Stop => "stop",
            Kind::StopStreaming => "stop streaming",
            Kind::Promote => "promote",
            Kind::DeclineCandidacy => "decline",
            Kind::RecordTimeline => "propose RecordTimeline",
            Kind::Clone => "clone",
            Kind::Rewind => "rewind",
            Kind::StartStandby => "start as standby",
            Kind::Reconfigure => "reconfigure",
            Kind::Reload => "reload",
            Kind::EnsureSlots => "slots",
            Kind::DropSlots => "drop idle slots",
            Kind::OpenGate => "open the gate",
            Kind::RestartDone => "restart done",
            Kind::ReinitDone => "re-clone done",
        }
    }
}

impl Action {
    pub fn kind(&self) -> Kind {
        match self {
            Action::Initdb => Kind::Initdb,
            Action::AdoptConfig => Kind::AdoptConfig,
            Action::StartPrimary { .. } => Kind::StartPrimary,
            Action::ProposeBootstrap => Kind::ProposeBootstrap,
            Action::ProposeAdopted { .. } => Kind::ProposeAdopted,
            Action::Fence => Kind::Fence,
            Action::CleanStop { .. } => Kind::CleanStop,
            Action::ReportStopped { .. } => Kind::ReportStopped,
            Action::Stop => Kind::Stop,
            Action::StopStreaming => Kind::StopStreaming,
            Action::Promote { .. } => Kind::Promote,
            Action::DeclineCandidacy { .. } => Kind::DeclineCandidacy,
            Action::RecordTimeline { .. } => Kind::RecordTimeline,
            Action::Clone { .. } => Kind::Clone,
            Action::Rewind { .. } => Kind::Rewind,
            Action::StartStandby { .. } => Kind::StartStandby,
            Action::Reconfigure { .. } => Kind::Reconfigure,
            Action::Reload { .. } => Kind::Reload,
            Action::EnsureSlots => Kind::EnsureSlots,
            Action::DropSlots(_) => Kind::DropSlots,
            Action::OpenGate => Kind::OpenGate,
            Action::RestartDone { .. } => Kind::RestartDone,
            Action::ReinitDone { .. } => Kind::ReinitDone,
        }
    }
}

/// What `decide` may do in one cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cell {
    /// Every kind of action it may take, in `Kind`'s order (a decision takes any subset, in its own order).
    pub actions: &'static [Kind],
    /// It may ask for the lease's renewal.
    pub renews: bool,
    /// It may send a final report (where its WAL ends, for a primary change).
    pub reports_final: bool,
    /// Some decision here takes no action (it waits, for a timer, a report or the state).
    pub waits: bool,
}

impl Cell {
    /// Whether `d` stays inside this cell.
    pub fn allows(&self, d: &Decision) -> bool {
        (self.waits || !d.actions.is_empty())
            && d.actions.iter().all(|a| self.actions.contains(&a.kind()))
            && (self.renews || !d.renew_lease)
            && (self.reports_final || d.final_position.is_none())
    }

    fn render(&self) -> String {
        let actions: Vec<&str> = self.actions.iter().map(|k| k.label()).collect();
        let mut text = match (actions.is_empty(), self.waits) {
            (true, _) => "wait".to_string(),
            (false, true) => format!("wait, or {}", actions.join(", ")),
            (false, false) => actions.join(", "),
        };
        if self.reports_final {
            text.push_str("; final report");
        }
        if self.renews {
            text.push_str("; renew");
        }
        text
    }
}

const fn cell(actions: &'static [Kind], renews: bool, reports_final: bool, waits: bool) -> Cell {
    Cell {
        actions,
        renews,
        reports_final,
        waits,
    }
}

const WAIT: Cell = cell(&[], false, false, true);

use Kind::*;

/// Rows in the order of [`Row::ALL`], columns in the order of [`Column::ALL`].
pub const TABLE: [[Cell; 5]; 13] = [
    // Uninitialized
    [WAIT, WAIT, WAIT, WAIT, WAIT],
    // NotMember
    [WAIT, WAIT, WAIT, WAIT, WAIT],
    // AwaitBootstrap
    [WAIT, WAIT, WAIT, WAIT, WAIT],
    // Bootstrap
    [
        cell(&[Initdb, StartPrimary, ProposeBootstrap], false, false, true),
        cell(
            &[AdoptConfig, StartPrimary, ProposeBootstrap, StartStandby],
            false,
            false,
            true,
        ),
        cell(&[ProposeBootstrap, ProposeAdopted, Stop], false, false, false),
        cell(&[Stop, Promote], false, false, true),
        cell(&[Stop], false, false, true),
    ],
    // PrimaryHeld
    [
        cell(&[RestartDone], true, false, true),
        cell(&[StartPrimary, Reconfigure, RestartDone], true, false, true),
        cell(
            &[
                StartPrimary,
                Fence,
                Stop,
                Reconfigure,
                EnsureSlots,
                DropSlots,
                OpenGate,
                RestartDone,
            ],
            true,
            false,
            false,
        ),
        cell(&[Promote, Reconfigure, RestartDone], true, false, true),
        cell(&[Fence], false, false, true),
    ],
    // PrimaryAcquiring
    [
        cell(&[RestartDone], true, false, true),
        cell(&[RestartDone], true, false, true),
        cell(
            &[Fence, Reconfigure, EnsureSlots, DropSlots, OpenGate],
            true,
            false,
            true,
        ),
        cell(&[RestartDone], true, false, true),
        cell(&[Fence], false, false, true),
    ],
    // PrimaryExpired
    [
        cell(&[], true, false, true),
        cell(&[], true, false, true),
        cell(&[Fence], true, false, false),
        cell(&[], true, false, true),
        cell(&[Fence], false, false, false),
    ],
    // PrimaryPaused
    [
        cell(&[RestartDone], true, false, true),
        cell(&[StartPrimary, Reconfigure, RestartDone], true, false, false),
        cell(
            &[
                StartPrimary,
                Stop,
                Reconfigure,
                EnsureSlots,
                DropSlots,
                OpenGate,
                RestartDone,
            ],
            true,
            false,
            true,
        ),
        cell(&[Promote, Reconfigure, RestartDone], true, false, true),
        WAIT,
    ],
    // Candidate
    [
        WAIT,
        cell(&[DeclineCandidacy, StartStandby], false, false, false),
        cell(&[RecordTimeline], false, false, false),
        cell(&[Promote, Reconfigure], false, false, false),
        WAIT,
    ],
    // OldPrimary
    [
        WAIT,
        cell(&[ReportStopped, StartStandby], false, true, true),
        cell(&[Fence, CleanStop], false, false, false),
        cell(&[Fence, StopStreaming], false, true, true),
        cell(&[Fence], false, false, false),
    ],
    // Fenced
    [
        cell(&[], false, true, true),
        cell(&[StartStandby], false, true, true),
        cell(&[Fence], false, false, false),
        cell(&[Fence, StopStreaming], false, true, true),
        cell(&[Fence], false, false, true),
    ],
    // Standby
    [
        cell(&[Clone, StartStandby, RestartDone, ReinitDone], false, false, true),
        cell(
            &[Clone, Rewind, StartStandby, RestartDone, ReinitDone],
            false,
            false,
            true,
        ),
        cell(&[Fence], false, false, false),
        cell(
            &[
                Fence,
                Stop,
                Clone,
                Rewind,
                StartStandby,
                Reconfigure,
                Reload,
                EnsureSlots,
                DropSlots,
                RestartDone,
                ReinitDone,
            ],
            false,
            false,
            false,
        ),
        cell(
            &[Fence, Stop, Clone, Rewind, StartStandby, Reconfigure, ReinitDone],
            false,
            false,
            true,
        ),
    ],
    // StandbyPaused
    [
        cell(&[Clone, StartStandby, RestartDone, ReinitDone], false, false, true),
        cell(
            &[Clone, Rewind, StartStandby, RestartDone, ReinitDone],
            false,
            false,
            true,
        ),
        WAIT,
        cell(
            &[
                Fence,
                Stop,
                Clone,
                Rewind,
                StartStandby,
                Reconfigure,
                Reload,
                EnsureSlots,
                DropSlots,
                RestartDone,
                ReinitDone,
            ],
            false,
            false,
            false,
        ),
        cell(
            &[Fence, Stop, Clone, Rewind, StartStandby, Reconfigure, ReinitDone],
            false,
            false,
            true,
        ),
    ],
];

/// The cell of `row` and `column`.
pub fn at(row: Row, column: Column) -> &'static Cell {
    &TABLE[row as usize][column as usize]
}

/// The table in Markdown, as the README shows it.
pub fn render() -> String {
    let mut out = String::from("| wanted \\ local |");
    for c in Column::ALL {
        out.push_str(&format!(" {} |", c.label()));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(Column::ALL.len()));
    out.push('\n');
    for r in Row::ALL {
        out.push_str(&format!("| {} |", r.label()));
        for c in Column::ALL {
            out.push_str(&format!(" {} |", at(r, c).render()));
        }
        out.push('\n');
    }
    out
}

/// Where the README's copy of the table starts and ends.
pub const README_BEGIN: &str =
    "<!-- generated from src/decide/table.rs: RAFTPG_BLESS=1 cargo test -p raftpg --lib readme rewrites it -->\n";
pub const README_END: &str = "<!-- end of the generated table -->\n";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Timeline;

    #[test]
    fn the_readme_shows_the_agent_table() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
        let readme = std::fs::read_to_string(&path).expect("README.md");
        let begin = readme
            .find(README_BEGIN)
            .expect("README.md has the table's begin marker")
            + README_BEGIN.len();
        let end = begin
            + readme[begin..]
                .find(README_END)
                .expect("README.md has the table's end marker");
        let want = render();
        if readme[begin..end] != want && std::env::var_os("RAFTPG_BLESS").is_some() {
            std::fs::write(&path, format!("{}{want}{}", &readme[..begin], &readme[end..])).expect("write README.md");
            return;
        }
        assert_eq!(
            readme[begin..end],
            want,
            "README.md's agent table is not the one in src/decide/table.rs: \
             RAFTPG_BLESS=1 cargo test -p raftpg --lib readme rewrites it"
        );
    }

    #[test]
    fn every_row_and_column_has_its_place_in_the_table() {
        for (i, r) in Row::ALL.into_iter().enumerate() {
            assert_eq!(r as usize, i);
        }
        for (i, c) in Column::ALL.into_iter().enumerate() {
            assert_eq!(c as usize, i);
        }
        assert_eq!(TABLE.len(), Row::ALL.len());
    }

    #[test]
    fn a_cell_allows_only_what_it_lists() {
        let c = at(Row::PrimaryExpired, Column::Primary);
        let fence = Decision {
            actions: vec![Action::Fence],
            renew_lease: true,
            final_position: None,
            reason: "expired".into(),
        };
        assert!(c.allows(&fence));
        let idle = Decision {
            actions: vec![],
            ..fence.clone()
        };
        assert_eq!(c.allows(&idle), c.waits);
        let promote = Decision {
            actions: vec![Action::Promote { candidate: true }],
            ..fence.clone()
        };
        assert!(!c.allows(&promote));
        let reported = Decision {
            final_position: Some((1, Timeline(1))),
            ..fence
        };
        assert!(!c.allows(&reported));
        assert!(
            !at(Row::PrimaryHeld, Column::Unknown).renews,
            "no renewal on an unknown PostgreSQL"
        );
    }
}
