//! Initialising the Raft group exactly once, whichever node starts first.
//!
//! A pristine node initialises the group only when a majority of the
//! configured members (itself included) answer and all of them are pristine
//! too. Several nodes doing so at once is safe (identical membership, Raft
//! elects one leader). A node whose store was wiped can never re-initialise a
//! running cluster: the members that answer it are initialised, so it waits to
//! be replicated to instead.

use std::collections::BTreeMap;
use std::time::Duration;

use openraft::BasicNode;
use tokio::sync::watch;

use std::sync::Arc;

use crate::config::Config;
use crate::raft::wire::{Wire, WireError};
use crate::raft::Raft;

/// How often a pristine node looks again for its peers.
const PROBE_INTERVAL: Duration = Duration::from_millis(300);

/// What one probe of a peer found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerInit {
    Pristine,
    Initialized,
    Unreachable,
}

/// Pure rule: initialise now? `peers` excludes this (pristine) node.
pub fn should_initialize(members: usize, peers: &[PeerInit]) -> bool {
    let majority = members / 2 + 1;
    let pristine = 1 + peers.iter().filter(|p| **p == PeerInit::Pristine).count();
    let any_initialized = peers.contains(&PeerInit::Initialized);
    !any_initialized && pristine >= majority
}

/// Runs until this node's Raft store is initialised, by itself or by replication.
pub async fn ensure_initialized(
    raft: Raft,
    cfg: Config,
    wire: Arc<dyn Wire>,
    rpc_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let voters: BTreeMap<u64, BasicNode> = cfg
        .members
        .iter()
        .map(|m| (m.id, BasicNode::new(m.raft.clone())))
        .collect();
    let peers: Vec<_> = cfg
        .members
        .iter()
        .filter(|m| m.name != cfg.node.name)
        .cloned()
        .collect();
    let mut waiting_logged = false;
    loop {
        match raft.is_initialized().await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                tracing::error!("Raft stopped before initialisation: {e}");
                return;
            }
        }
        let probes = futures::future::join_all(
            peers
                .iter()
                .map(|p| probe(wire.as_ref(), &p.raft, &cfg.cluster.name, rpc_timeout)),
        )
        .await;
        if should_initialize(cfg.members.len(), &probes) {
            tracing::info!(
                members = cfg.members.len(),
                "a majority of members is up and pristine: initialising the Raft group"
            );
            match raft.initialize(voters.clone()).await {
                Ok(()) => return,
                Err(e) => tracing::info!("initialisation not needed: {e}"),
            }
        } else if !waiting_logged {
            let up: Vec<&str> = peers
                .iter()
                .zip(&probes)
                .filter(|(_, s)| **s != PeerInit::Unreachable)
                .map(|(p, _)| p.name.as_str())
                .collect();
            tracing::info!(
                "waiting for peers: a majority of {} members must be up to form the group (reachable now: [{}])",
                cfg.members.len(),
                up.join(", ")
            );
            waiting_logged = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn probe(wire: &dyn Wire, addr: &str, cluster: &str, timeout: Duration) -> PeerInit {
    let Ok(link) = wire.link(addr, timeout) else {
        return PeerInit::Unreachable;
    };
    match link.probe(cluster.to_string(), timeout).await {
        Ok(true) => PeerInit::Initialized,
        Ok(false) => PeerInit::Pristine,
        Err(WireError::Failed {
            code: tonic::Code::PermissionDenied,
            message,
        }) => {
            tracing::error!(%addr, "peer refused us: {message}");
            PeerInit::Unreachable
        }
        Err(_) => PeerInit::Unreachable,
    }
}

#[cfg(test)]
mod tests {
    use super::PeerInit::*;
    use super::*;

    #[test]
    fn initializes_only_with_a_pristine_majority() {
        assert!(!should_initialize(3, &[Unreachable, Unreachable]), "alone: wait");
        assert!(should_initialize(3, &[Pristine, Unreachable]));
        assert!(should_initialize(3, &[Pristine, Pristine]));
        assert!(
            !should_initialize(3, &[Initialized, Unreachable]),
            "a running cluster replicates to us"
        );
        assert!(!should_initialize(3, &[Initialized, Pristine]));
        assert!(should_initialize(1, &[]), "a single-member cluster initialises alone");
        assert!(!should_initialize(
            5,
            &[Pristine, Unreachable, Unreachable, Unreachable]
        ));
        assert!(should_initialize(5, &[Pristine, Pristine, Unreachable, Unreachable]));
    }
}
