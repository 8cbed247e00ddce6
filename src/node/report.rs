//! Status reports and lease renewals, from every agent to the Raft leader.
//!
//! Reports are volatile: they live in the leader's memory (`lease::Book`), not
//! in the Raft log. A renewal is granted only after the leader confirmed its
//! leadership with a ReadIndex round (a heartbeat quorum) and found, in its
//! applied state, the reporter as primary of the reported generation with no
//! change pending.

use std::time::Duration;

use std::sync::Arc;

use openraft::ReadPolicy;
use tokio::time::Instant;

use crate::lease::Book;
pub use crate::protocol::{ReportReply, ReportRequest};
use crate::raft::codec::{decode, encode};
use crate::raft::state_machine::StateMachine;
use crate::raft::wire::{Link, Rpc, Wire, WireError};
use crate::raft::Raft;

/// The leader's handler (called over gRPC or in-process).
pub async fn handle(raft: &Raft, sm: &StateMachine, book: &Book, req: ReportRequest) -> ReportReply {
    let me = *raft.node_id();
    let leader = raft.current_leader().await;
    if leader != Some(me) {
        return ReportReply::NotLeader { leader };
    }
    book.record(&req.node, req.report.clone(), Instant::now());
    if !req.renew {
        let view = book.view(&sm.current().state, Instant::now());
        return ReportReply::Accepted {
            lease_granted: false,
            view,
        };
    }
    if let Err(e) = raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
        tracing::debug!(node = %req.node, "lease renewal not granted: leadership not confirmed: {e}");
        return ReportReply::NotLeader {
            leader: e.forward_to_leader().and_then(|f| f.leader_id),
        };
    }
    let (lease_granted, view) = book.renew(&sm.current().state, &req.node, req.report.generation, Instant::now());
    ReportReply::Accepted { lease_granted, view }
}

/// The agent's side: sends to whoever leads, keeping one link per address.
pub struct ReportClient {
    wire: Arc<dyn Wire>,
    cached: Option<(String, Box<dyn Link>)>,
}

impl ReportClient {
    pub fn new(wire: Arc<dyn Wire>) -> ReportClient {
        ReportClient { wire, cached: None }
    }

    /// Sends `req` to the Raft leader at `addr` within `timeout`.
    pub async fn send(&mut self, addr: &str, req: &ReportRequest, timeout: Duration) -> Result<ReportReply, String> {
        if self.cached.as_ref().is_none_or(|(a, _)| a != addr) {
            self.cached = Some((addr.to_string(), self.wire.link(addr, timeout)?));
        }
        let (_, link) = self.cached.as_ref().expect("set above");
        let reply = link.call(Rpc::Report, encode(req), timeout).await.map_err(|e| {
            // A timeout keeps the link; a refused or broken call opens a new one next time.
            if !matches!(e, WireError::Timeout(_)) {
                self.cached = None;
            }
            e.to_string()
        })?;
        decode(&reply, "report reply").map_err(|e| e.to_string())
    }
}
