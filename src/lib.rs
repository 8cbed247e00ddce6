//! raftpg: PostgreSQL high availability with its own Raft group.
//!
//! `cluster` (pure replicated state) and `raft` (openraft over sled and tonic)
//! are the foundation; `node` runs one Raft member and `app` composes it with
//! the control API (`api`), the controller and the agent;
//! `ctl` and `demo` are the command-line front ends.

pub mod agent;
pub mod api;
pub mod app;
pub mod cluster;
pub mod config;
pub mod controller;
pub mod ctl;
pub mod decide;
pub mod demo;
pub mod lease;
pub mod logging;
pub mod node;
pub mod pb;
pub mod postgres;
pub mod protocol;
pub mod raft;
pub mod sim;
pub mod tls;
pub mod types;
