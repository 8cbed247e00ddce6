//! The openraft adapter: type configuration, sled storage, the network between nodes.
//!
//! Nothing here decides anything about PostgreSQL; it only makes the
//! replicated log durable and moves Raft messages between nodes.

pub mod codec;
pub mod log_store;
pub mod network;
pub mod service;
pub mod state_machine;
pub mod store;
pub mod types;
pub mod wire;

pub use types::*;

#[cfg(test)]
mod golden_tests;
