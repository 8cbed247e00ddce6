//! Between protobuf and raftpg's own types: members in, status and history out.

use super::*;

pub(super) fn to_member(m: pb::Member) -> Result<Member, Status> {
    if m.name.trim().is_empty() || m.id == 0 {
        return Err(Status::invalid_argument("a member needs a name and a non-zero id"));
    }
    for (field, addr) in [
        ("raft", &m.raft_addr),
        ("grpc", &m.grpc_addr),
        ("pg", &m.pg_addr),
        ("http", &m.http_addr),
    ] {
        let ok = addr
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !ok {
            return Err(Status::invalid_argument(format!(
                "{field} address '{addr}' is not host:port"
            )));
        }
    }
    Ok(Member {
        name: m.name,
        id: m.id,
        raft_addr: m.raft_addr,
        grpc_addr: m.grpc_addr,
        pg_addr: m.pg_addr,
        http_addr: m.http_addr,
        tags: Tags {
            nofailover: m.nofailover,
            failover_priority: m.failover_priority,
        },
    })
}

pub(super) fn history(s: &ClusterState) -> Vec<pb::HistoryEntry> {
    s.history
        .iter()
        .map(|h| pb::HistoryEntry {
            kind: h.kind.as_str().to_string(),
            parent_timeline: h.parent_timeline.unwrap_or(Timeline::NONE).0,
            timeline: h.timeline.0,
            switch_lsn: h.switch_lsn.map(|l| l.to_string()).unwrap_or_default(),
            reason: h.reason.clone(),
            from: h.from.clone().unwrap_or_default(),
            to: h.to.clone(),
            generation: h.generation.0,
        })
        .collect()
}

/// Builds the status message from the applied state, the members' reports and this
/// node's Raft metrics.
pub fn status(node: &Node) -> pb::ClusterStatus {
    let applied = node.state();
    let m = node.metrics();
    let s: &ClusterState = &applied.state;
    let raft = node.raft_view();
    let rows = view::rows(s, &node.cluster_view(), &raft);
    let leader = m.current_leader.map(|id| s.label_of(id));
    pb::ClusterStatus {
        cluster: node.cfg.cluster.name.clone(),
        answered_by: node.name().to_string(),
        node_raft_state: format!("{:?}", m.state).to_lowercase(),
        raft_leader: leader.unwrap_or_default(),
        raft_term: m.current_term,
        applied_index: applied.log_index,
        initialized: s.initialized,
        revision: s.revision,
        generation: s.generation.0,
        primary: s.primary.as_ref().map(|p| pb::Primary {
            node: p.node.clone(),
            generation: p.generation.0,
            timeline: p.timeline.unwrap_or(Timeline::NONE).0,
        }),
        paused: s.paused,
        members: s
            .members
            .values()
            .map(|x| pb::Member {
                name: x.name.clone(),
                id: x.id,
                raft_addr: x.raft_addr.clone(),
                grpc_addr: x.grpc_addr.clone(),
                pg_addr: x.pg_addr.clone(),
                http_addr: x.http_addr.clone(),
                nofailover: x.tags.nofailover,
                failover_priority: x.tags.failover_priority,
                nosync: s.has_flag(&x.name, Flag::NoSync),
                noloadbalance: s.has_flag(&x.name, Flag::NoLoadBalance),
                replica: s.has_flag(&x.name, Flag::Replica),
                replicatefrom: s.replicates_from(&x.name).unwrap_or_default().to_string(),
                raft_role: rows
                    .iter()
                    .find(|r| r.name == x.name)
                    .map(|r| r.raft.clone())
                    .unwrap_or_default(),
            })
            .collect(),
        sync_standbys: s.sync_standbys.iter().cloned().collect(),
        config: s.config_pairs().into_iter().collect(),
        history: history(s),
        pending: s.pending.as_ref().map(describe_pending).unwrap_or_default(),
        member_status: rows.iter().map(member_status).collect(),
        scheduled_switchover: s.scheduled_switchover.as_ref().map(|x| pb::ScheduledSwitchover {
            from: x.from.clone().unwrap_or_default(),
            to: x.to.clone(),
            at_unix_ms: x.at_unix_ms,
        }),
        failovers: s.count_changes(ChangeKind::Failover),
        switchovers: s.count_changes(ChangeKind::Switchover),
        slots: s
            .declared_slots()
            .map(|(name, kind)| match kind {
                crate::cluster::SlotKind::Physical => pb::Slot {
                    name: name.clone(),
                    ..Default::default()
                },
                crate::cluster::SlotKind::Logical { plugin, database } => pb::Slot {
                    name: name.clone(),
                    logical: true,
                    plugin: plugin.clone(),
                    database: database.clone(),
                },
            })
            .collect(),
        degraded: s.degraded.as_ref().map(|d| pb::Degraded {
            since_unix_ms: d.since_unix_ms,
            streaming: d.streaming.iter().cloned().collect(),
            restoring: d.restoring,
        }),
    }
}

fn member_status(r: &MemberRow) -> pb::MemberStatus {
    pb::MemberStatus {
        name: r.name.clone(),
        role: r.role.clone(),
        state: r.state.clone(),
        timeline: r.timeline.unwrap_or(Timeline::NONE).0,
        lsn: r.lsn.map(lsn).unwrap_or_default(),
        lag_bytes: r.lag_bytes,
        lease_remaining_ms: r.lease_remaining_ms,
        reason: r.reason.clone(),
        report_age_ms: r.report_age_ms,
        pending_restart: r.pending_restart,
        host: r.host.clone(),
        raft: r.raft.clone(),
        raft_leader: r.raft_leader,
    }
}

pub fn describe_pending(p: &Pending) -> String {
    format!(
        "{} from {} to {} ({})",
        p.kind.as_str(),
        p.from.as_deref().unwrap_or("none"),
        p.candidate.as_deref().or(p.to.as_deref()).unwrap_or("to be chosen"),
        p.reason
    )
}
