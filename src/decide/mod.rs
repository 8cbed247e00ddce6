//! Pure decisions: no I/O, no clock, no randomness. Gather inputs, decide, then act.

pub mod agent;
pub mod controller;
pub mod dry_run;
pub mod election;
pub mod report;
pub mod requests;
pub mod table;
pub mod view;
pub mod wal;
