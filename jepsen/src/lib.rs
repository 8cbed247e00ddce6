//! raftpg-jepsen: Jepsen's method, in Rust, for raftpg. Real nodes in network
//! namespaces, real faults (nftables, signals, the cgroup freezer), concurrent
//! workloads with client-side timeouts, and checkers that read the history.

pub mod canary;
pub mod checker;
pub mod cluster;
pub mod history;
pub mod hosts;
pub mod nemesis;
pub mod recorder;
pub mod report;
pub mod run;
pub mod suite;
pub mod verdict;
pub mod workload;
