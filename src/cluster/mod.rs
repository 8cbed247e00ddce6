//! The replicated cluster state: what every node agrees on through Raft.
//!
//! Pure data and a pure `apply`: no I/O, no clock, no randomness. Everything
//! that changes the primary is a compare-and-set on the generation, so a
//! command decided under an old view can never take effect late.

mod apply;
mod command;
mod config;
pub mod params;
mod state;
#[cfg(test)]
pub(crate) mod testing;

pub use apply::{apply, candidate_acknowledged_nothing, fork_holders, Applied, Rejection};
pub use command::Command;
pub use config::{parse_bytes, HaConfig, SyncMode, CONFIG_KEYS, DEFAULT_MAXIMUM_LAG_ON_FAILOVER_BYTES};
pub use state::{
    ChangeKind, ClusterState, Degraded, Flag, HistoryEntry, Member, Pending, PendingKind, PermanentSlot, Primary,
    ScheduledSwitchover, SlotKind, SyncConfig, TagChange, Tags, DEFAULT_SLOT_TTL_MS,
};
