//! Status reports and lease renewals, from every agent to the Raft leader.
//!
//! Reports are volatile: they live in the leader's memory (`lease::Book`), not
//! in the Raft log. A renewal is granted only after the leader confirmed its
//! leadership with a ReadIndex round (a heartbeat quorum) and found, in its
//! applied state, the reporter as primary of the reported generation with no
//! change pending.

use std::time::Duration;

use openraft::ReadPolicy;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::lease::Book;
use crate::pb::raft::raft_service_client::RaftServiceClient;
use crate::pb::raft::RaftMessage;
pub use crate::protocol::{ReportReply, ReportRequest};
use crate::raft::codec::{decode, encode};
use crate::raft::network::channel;
use crate::raft::state_machine::StateMachine;
use crate::raft::Raft;
use crate::tls::Transport;

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

/// The agent's side: sends to whoever leads, keeping one channel per address.
pub struct ReportClient {
    transport: Transport,
    cached: Option<(String, RaftServiceClient<Channel>)>,
}

impl ReportClient {
    pub fn new(transport: Transport) -> ReportClient {
        ReportClient {
            transport,
            cached: None,
        }
    }

    /// Sends `req` to the Raft leader at `addr` within `timeout`.
    pub async fn send(&mut self, addr: &str, req: &ReportRequest, timeout: Duration) -> Result<ReportReply, String> {
        if self.cached.as_ref().is_none_or(|(a, _)| a != addr) {
            let ch = channel(&self.transport, addr, timeout)?;
            self.cached = Some((addr.to_string(), RaftServiceClient::new(ch)));
        }
        let (_, client) = self.cached.as_mut().expect("set above");
        let mut request = self.transport.request(RaftMessage { payload: encode(req) });
        request.set_timeout(timeout);
        let reply = tokio::time::timeout(timeout, client.report(request))
            .await
            .map_err(|_| format!("no answer from {addr} within {timeout:?}"))?
            .map_err(|s| {
                self.cached = None;
                s.message().to_string()
            })?;
        decode(&reply.into_inner().payload, "report reply").map_err(|e| e.to_string())
    }
}
