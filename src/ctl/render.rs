//! How `raftpg ctl` prints: the `patronictl list`-like table, the history, and JSON.

use crate::pb::control as pb;

/// A table with a header row, column widths fitted to the cells.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!(" {c:<w$} ", w = *w))
            .collect();
        format!("|{}|\n", padded.join("|"))
    };
    let sep = format!(
        "+{}+\n",
        widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("+")
    );
    let mut out = sep.clone();
    out += &line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    out += &sep;
    for r in rows {
        out += &line(r);
    }
    out += &sep;
    out
}

fn role_word(role: &str) -> &str {
    match role {
        "primary" => "Primary",
        "quorum_standby" => "Quorum Standby",
        "replica" => "Replica",
        "candidate" => "Candidate",
        "fenced" => "Fenced",
        "learner" => "Learner",
        other => other,
    }
}

/// Lag as patronictl prints it: megabytes, `unknown` when not known.
fn lag_mb(m: &pb::MemberStatus) -> String {
    match (m.role.as_str(), m.lag_bytes) {
        ("primary", _) => String::new(),
        (_, Some(b)) => {
            let mb = b as f64 / (1024.0 * 1024.0);
            if b == 0 {
                "0".into()
            } else if mb < 0.1 {
                "<0.1".into()
            } else {
                format!("{mb:.1}")
            }
        }
        (_, None) => "unknown".into(),
    }
}

/// A member's tags as `ctl member tags` takes them; empty when it has none.
pub fn tags_text(m: &pb::Member) -> String {
    let mut out = Vec::new();
    if m.replica {
        out.push("replica".to_string());
    }
    if m.nofailover {
        out.push("nofailover".to_string());
    }
    if m.failover_priority != 0 {
        out.push(format!("failover_priority={}", m.failover_priority));
    }
    if m.nosync {
        out.push("nosync".into());
    }
    if m.noloadbalance {
        out.push("noloadbalance".into());
    }
    if !m.replicatefrom.is_empty() {
        out.push(format!("replicatefrom={}", m.replicatefrom));
    }
    out.join(" ")
}

/// A `patronictl list`-like table with a header line, and what is pending below it.
pub fn render_table(s: &pb::ClusterStatus) -> String {
    let leader = if s.raft_leader.is_empty() {
        "none"
    } else {
        &s.raft_leader
    };
    let mut out = format!(
        "Cluster: {} (generation {}, Raft leader {}, paused: {})\n",
        s.cluster,
        s.generation,
        leader,
        if s.paused { "yes" } else { "no" },
    );
    let pending_restart = s.member_status.iter().any(|m| m.pending_restart);
    let mut header = vec!["Member", "Host", "Role", "State", "TL", "Lag in MB", "Raft"];
    if pending_restart {
        header.push("Pending restart");
    }
    let tags = |name: &str| {
        s.members
            .iter()
            .find(|x| x.name == name)
            .map(tags_text)
            .unwrap_or_default()
    };
    let any_tags = s.member_status.iter().any(|m| !tags(&m.name).is_empty());
    if any_tags {
        header.push("Tags");
    }
    let rows: Vec<Vec<String>> = s
        .member_status
        .iter()
        .map(|m| {
            let raft = match (m.raft.as_str(), m.raft_leader) {
                (r, true) => format!("{r} (leader)"),
                (r, false) => r.to_string(),
            };
            let mut row = vec![
                m.name.clone(),
                m.host.clone(),
                role_word(&m.role).to_string(),
                m.state.clone(),
                if m.timeline == 0 {
                    String::new()
                } else {
                    m.timeline.to_string()
                },
                lag_mb(m),
                raft,
            ];
            if pending_restart {
                row.push(if m.pending_restart { "*".into() } else { String::new() });
            }
            if any_tags {
                row.push(tags(&m.name));
            }
            row
        })
        .collect();
    out += &table(&header, &rows);
    // A member that is not running or streaming says why, in its own words.
    for m in s
        .member_status
        .iter()
        .filter(|m| !matches!(m.state.as_str(), "running" | "streaming"))
    {
        let why = if m.reason.is_empty() {
            "no report from its raftpg"
        } else {
            &m.reason
        };
        out += &format!("{} is {}: {why}\n", m.name, m.state);
    }
    if let Some(d) = &s.degraded {
        let since = crate::decide::election::utc(d.since_unix_ms);
        let primary = s.primary.as_ref().map_or("the primary", |p| p.node.as_str());
        out += &if d.restoring {
            format!("Degraded since {since}: {primary} is returning to its synchronous quorum\n")
        } else {
            format!(
                "Degraded since {since}: {primary} acknowledges writes asynchronously (too few synchronous standbys \
                 stream); a failover may lose them and promotes only [{}]\n",
                d.streaming.join(", ")
            )
        };
    }
    if !s.pending.is_empty() {
        out += &format!("In progress: {}\n", s.pending);
    }
    if let Some(sw) = &s.scheduled_switchover {
        out += &format!(
            "Switchover to {} scheduled at {}\n",
            sw.to,
            crate::decide::election::utc(sw.at_unix_ms)
        );
    }
    out
}

/// What each member is doing, in its own words (`list --verbose` and the demo).
pub fn render_reasons(s: &pb::ClusterStatus) -> String {
    s.member_status
        .iter()
        .map(|m| format!("  {}: {}\n", m.name, if m.reason.is_empty() { "-" } else { &m.reason }))
        .collect()
}

pub fn render_history(entries: &[pb::HistoryEntry]) -> String {
    let header = ["TL", "Kind", "Switch LSN", "From", "To", "Generation", "Reason"];
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|h| {
            vec![
                h.timeline.to_string(),
                h.kind.clone(),
                h.switch_lsn.clone(),
                h.from.clone(),
                h.to.clone(),
                h.generation.to_string(),
                h.reason.clone(),
            ]
        })
        .collect();
    table(&header, &rows)
}

/// The status as JSON for `list --json`.
pub fn status_json(s: &pb::ClusterStatus) -> serde_json::Value {
    serde_json::json!({
        "cluster": s.cluster,
        "answered_by": s.answered_by,
        "node_raft_state": s.node_raft_state,
        "raft_leader": s.raft_leader,
        "raft_term": s.raft_term,
        "applied_index": s.applied_index,
        "initialized": s.initialized,
        "revision": s.revision,
        "generation": s.generation,
        "paused": s.paused,
        "primary": s.primary.as_ref().map(|p| serde_json::json!({
            "node": p.node, "generation": p.generation, "timeline": p.timeline,
        })),
        "members": s.members.iter().map(|m| {
            let st = s.member_status.iter().find(|x| x.name == m.name);
            serde_json::json!({
                "name": m.name, "id": m.id, "raft_addr": m.raft_addr, "grpc_addr": m.grpc_addr,
                "pg_addr": m.pg_addr, "http_addr": m.http_addr, "raft_role": m.raft_role,
                "nofailover": m.nofailover, "failover_priority": m.failover_priority,
                "nosync": m.nosync, "noloadbalance": m.noloadbalance, "replica": m.replica, "replicatefrom": m.replicatefrom,
                "role": st.map(|x| x.role.clone()),
                "state": st.map(|x| x.state.clone()),
                "timeline": st.map(|x| x.timeline),
                "lsn": st.map(|x| x.lsn.clone()),
                "lag_bytes": st.and_then(|x| x.lag_bytes),
                "lease_remaining_ms": st.and_then(|x| x.lease_remaining_ms),
                "reason": st.map(|x| x.reason.clone()),
                "report_age_ms": st.and_then(|x| x.report_age_ms),
                "pending_restart": st.is_some_and(|x| x.pending_restart),
                "raft_leader": st.is_some_and(|x| x.raft_leader),
            })
        }).collect::<Vec<_>>(),
        "sync_standbys": s.sync_standbys,
        "config": s.config,
        "pending": s.pending,
        "scheduled_switchover": s.scheduled_switchover.as_ref().map(|x| serde_json::json!({
            "from": x.from, "to": x.to, "at_unix_ms": x.at_unix_ms,
        })),
        "failovers": s.failovers,
        "switchovers": s.switchovers,
        "history": history_json(&s.history),
        "degraded": s.degraded.as_ref().map(|d| serde_json::json!({
            "since_unix_ms": d.since_unix_ms, "streaming": d.streaming, "restoring": d.restoring,
        })),
    })
}

pub fn history_json(entries: &[pb::HistoryEntry]) -> serde_json::Value {
    entries
        .iter()
        .map(|h| {
            serde_json::json!({
                "kind": h.kind, "timeline": h.timeline, "parent_timeline": h.parent_timeline,
                "switch_lsn": h.switch_lsn, "reason": h.reason,
                "from": h.from, "to": h.to, "generation": h.generation,
            })
        })
        .collect()
}

/// `ctl version`: one row per member (name, raftpg, PostgreSQL binaries, running server).
pub fn version_table(rows: &[[String; 4]]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut r = r.to_vec();
            for cell in r.iter_mut().skip(2) {
                if cell.is_empty() {
                    *cell = "-".into();
                }
            }
            r
        })
        .collect();
    table(&["Member", "raftpg", "PostgreSQL binaries", "Running server"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, role: &str, state: &str, reason: &str) -> pb::MemberStatus {
        pb::MemberStatus {
            name: name.into(),
            role: role.into(),
            state: state.into(),
            reason: reason.into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_table_says_when_the_primary_runs_degraded_and_who_may_be_promoted() {
        let mut s = pb::ClusterStatus {
            cluster: "c".into(),
            primary: Some(pb::Primary {
                node: "n1".into(),
                ..Default::default()
            }),
            degraded: Some(pb::Degraded {
                since_unix_ms: 1_000,
                streaming: vec!["n3".into()],
                restoring: false,
            }),
            ..Default::default()
        };
        let out = render_table(&s);
        assert!(
            out.contains("Degraded since 1970-01-01T00:00:01Z: n1 acknowledges writes asynchronously")
                && out.contains("promotes only [n3]"),
            "{out}"
        );
        s.degraded.as_mut().unwrap().restoring = true;
        assert!(render_table(&s).contains("n1 is returning to its synchronous quorum"));
        s.degraded = None;
        assert!(!render_table(&s).contains("Degraded"));
        assert!(status_json(&s)["degraded"].is_null());
    }

    #[test]
    fn the_table_says_why_a_member_is_unhealthy() {
        let mut s = pb::ClusterStatus {
            cluster: "c".into(),
            member_status: vec![
                member("n1", "primary", "running", "I am the primary"),
                member("n2", "replica", "streaming", "streaming from n1"),
            ],
            ..Default::default()
        };
        let healthy = render_table(&s);
        assert!(!healthy.contains(" is "), "{healthy}");
        s.member_status.push(member(
            "n3",
            "replica",
            "stopped",
            "PostgreSQL is down and the filesystem of pg_wal (/d/pg_wal) is full",
        ));
        s.member_status.push(member("n4", "replica", "unknown", ""));
        let out = render_table(&s);
        assert!(
            out.contains("n3 is stopped: PostgreSQL is down and the filesystem of pg_wal (/d/pg_wal) is full\n"),
            "{out}"
        );
        assert!(out.contains("n4 is unknown: no report from its raftpg\n"), "{out}");
        assert!(!out.contains("n1 is"), "{out}");
    }
}
