//! Choosing the standby to promote (DESIGN §4, failover step 3).
//!
//! In quorum mode the primary acknowledges a commit once it is on `k` of the
//! other members (`ANY k (...)`). Of `s` standbys, any `s - k + 1` therefore
//! include one that holds every acknowledged commit, so the controller waits
//! for that many *final* reports (streaming from the old primary stopped)
//! and promotes the most advanced. A member that did not report is `Unknown`:
//! it never counts and is never promoted.

use std::collections::BTreeMap;

use crate::cluster::{Degraded, SyncConfig, SyncMode, Tags};
use crate::types::Timeline;

/// A standby's final position after it stopped streaming from the old primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalReport {
    /// Last WAL position flushed to its disk.
    pub flush_lsn: u64,
    /// 0: the member holds no acknowledged write (no database, or not a standby's): the
    /// report counts towards those needed, and the member is never promoted.
    pub timeline: Timeline,
    pub tags: Tags,
}

/// Everything the ranking looks at.
#[derive(Clone, Debug)]
pub struct ElectionInput<'a> {
    /// Members other than the old primary, with their final report or `None` (Unknown).
    pub standbys: BTreeMap<&'a str, Option<FinalReport>>,
    pub sync_mode: SyncMode,
    /// The synchronous configurations the fenced primary may have run (`ANY k (standbys)`):
    /// the current one and any it had not confirmed yet. Each must be covered.
    pub quorums: Vec<SyncConfig>,
    /// Async mode: the old primary's last known write position, and the allowed lag.
    pub last_primary_lsn: Option<u64>,
    pub maximum_lag_bytes: u64,
    /// The fenced primary. A configuration that names it is `cluster::fork_holders`: members
    /// that each hold every write acknowledged before its timeline forked.
    pub old_primary: Option<&'a str>,
    /// The fenced primary's timeline and the LSN where it forked off its parent, from the
    /// history. A member that reports a position on that timeline at or past the fork holds
    /// the whole prefix too, so it covers the fork holders as well as they do.
    pub fork: Option<(Timeline, u64)>,
    /// A switchover's old primary stopped cleanly at this position of this timeline (its
    /// shutdown checkpoint, sent to the standbys before it exited), and the switchover
    /// became this failover (`Pending::stop_lsn`): it acknowledged nothing after it, nor did
    /// a candidate replaced before it recorded its timeline. A member whose final report is
    /// on that timeline past it holds every acknowledged write, and covers every quorum.
    pub clean_stop: Option<(Timeline, u64)>,
    /// Manual failover target; with `forced`, promoted whatever it may lose.
    pub requested: Option<&'a str>,
    pub forced: bool,
    /// The fenced primary ran degraded (`synchronous_mode = degradable`): writes it
    /// acknowledged in the window may be on it alone, and only the members that streamed
    /// throughout may be promoted.
    pub degraded: Option<&'a Degraded>,
}

/// The ranking's verdict, always with the reason a person reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Election {
    Promote {
        node: String,
        reason: String,
    },
    /// Not enough is known yet; ask again when more reports arrive.
    Wait {
        reason: String,
    },
    /// Enough is known, and no member may be promoted without losing data.
    Refuse {
        reason: String,
    },
}

/// Whether the final reports are enough for a promotion that cannot lose an acknowledged
/// commit: for every `ANY k (S)` the old primary may have run, `|S| - k + 1` members of
/// `S` reported (any such group holds each commit that `k` members of `S` acknowledged).
/// A member that reports holding nothing (timeline 0) counts: it lost no data during the
/// fenced generation, so it never acknowledged a commit of it. Not so in a configuration
/// of fork holders (it names the fenced primary, which a configuration it ran never does):
/// they held those writes, so only a real report counts there, or the report of any member
/// that has streamed the fenced primary's timeline past its fork (it holds the same prefix;
/// without this a new primary killed before its standbys confirmed, whose old primary then
/// failed a rewind, stalled the cluster for ever: the partition suite's
/// pause-primary-pg-kill-candidate). `Err` names who is still missing.
fn covered(input: &ElectionInput, reported: &[(&str, &FinalReport)]) -> Result<(), String> {
    if reported.is_empty() {
        let all: Vec<&str> = input.standbys.keys().copied().collect();
        return Err(format!("no final report yet; waiting for [{}]", all.join(", ")));
    }
    if past_clean_stop(input, reported).is_some() {
        return Ok(());
    }
    let past_fork = input.fork.is_some_and(|(timeline, at)| {
        reported
            .iter()
            .any(|(_, f)| f.timeline == timeline && f.flush_lsn >= at)
    });
    for q in input.quorums.iter().filter(|q| q.k > 0) {
        let holders = input.old_primary.is_some_and(|o| q.standbys.contains(o));
        if holders && past_fork {
            continue;
        }
        let has = |n: &str| {
            reported
                .iter()
                .any(|(r, f)| *r == n && (f.timeline > Timeline::NONE || !holders))
        };
        let needed = (q.standbys.len() + 1).saturating_sub(q.k);
        let have = q.standbys.iter().filter(|n| has(n)).count();
        if have < needed {
            let missing: Vec<&str> = q.standbys.iter().map(String::as_str).filter(|n| !has(n)).collect();
            // A member removed after the primary last confirmed its configuration still
            // counts, and reports no more: nothing but the operator ends the wait.
            let gone: Vec<&str> = missing
                .iter()
                .copied()
                .filter(|n| !input.standbys.contains_key(n) && input.old_primary != Some(*n))
                .collect();
            let hint = match gone.as_slice() {
                [] => String::new(),
                [one] => format!(
                    "; {one} is no longer a member, and may hold writes only its final report can show: add it \
                     back (`raftpg ctl member add`, its database kept), or accept the loss (`raftpg ctl failover --force`)"
                ),
                gone => format!(
                    "; {} are no longer members, and may hold writes only their final reports can show: add them \
                     back (`raftpg ctl member add`, their databases kept), or accept the loss (`raftpg ctl failover --force`)",
                    gone.join(", ")
                ),
            };
            return Err(format!(
                "{have} of {needed} final reports needed under ANY {} ({}) to be sure no acknowledged write is lost; waiting for [{}]{hint}",
                q.k,
                q.standbys.iter().cloned().collect::<Vec<_>>().join(", "),
                missing.join(", ")
            ));
        }
    }
    Ok(())
}

/// The old primary's clean stop (`ElectionInput::clean_stop`), when a member reported past it.
fn past_clean_stop(input: &ElectionInput, reported: &[(&str, &FinalReport)]) -> Option<(Timeline, u64)> {
    input.clean_stop.filter(|(timeline, at)| {
        reported
            .iter()
            .any(|(_, f)| f.timeline == *timeline && f.flush_lsn > *at)
    })
}

pub fn elect(input: &ElectionInput) -> Election {
    let reported: Vec<(&str, &FinalReport)> = input
        .standbys
        .iter()
        .filter_map(|(n, r)| r.as_ref().map(|r| (*n, r)))
        .collect();
    if input.forced {
        return forced(input, &reported);
    }
    if let Some(d) = input.degraded {
        return degraded(input, d, &reported);
    }
    if let Err(reason) = covered(input, &reported) {
        return Election::Wait { reason };
    }
    // Positions compare only within a timeline; a standby left on an older one holds none
    // of the current primary's acknowledged commits. Only members that count in a quorum
    // set the position needed: what a member outside every set (tagged nosync, streaming
    // asynchronously) holds beyond them was never acknowledged (the topology test found a
    // nosync standby ahead of the synchronous one, and no member could be promoted).
    let any_quorum = input.quorums.iter().any(|q| q.k > 0);
    let counts = |n: &str| !any_quorum || input.quorums.iter().any(|q| q.k > 0 && q.standbys.contains(n));
    let counted: Vec<&(&str, &FinalReport)> = reported.iter().filter(|(n, _)| counts(n)).collect();
    // A quorum of fork holders covered by a member past the fork (`covered`) holds writes
    // that perhaps only that member has among those that reported: the new primary must be
    // at or past the fork too, even when no quorum counts that member (tagged nosync, it
    // streamed the fenced primary asynchronously). Found by the simulation (seed 104 with an
    // operator): an old primary promoted again is its own fork's only holder, and a
    // synchronous standby behind the fork was promoted over the nosync one that held them.
    let holders = input
        .quorums
        .iter()
        .any(|q| q.k > 0 && input.old_primary.is_some_and(|o| q.standbys.contains(o)));
    let past_fork = input.fork.filter(|(timeline, at)| {
        holders
            && reported
                .iter()
                .any(|(_, f)| f.timeline == *timeline && f.flush_lsn >= *at)
    });
    // Covered by the old primary's clean stop, the new primary must be past it too, even if
    // the member that is counts in no quorum.
    let past_stop = past_clean_stop(input, &reported);
    let best_tli = counted
        .iter()
        .map(|(_, r)| r.timeline)
        .chain(past_fork.map(|(timeline, _)| timeline))
        .chain(past_stop.map(|(timeline, _)| timeline))
        .max()
        .expect("needed >= 1");
    let best_lsn = counted
        .iter()
        .filter(|(_, r)| r.timeline == best_tli)
        .map(|(_, r)| r.flush_lsn)
        .chain(
            past_fork
                .filter(|(timeline, _)| *timeline == best_tli)
                .map(|(_, at)| at),
        )
        .chain(
            past_stop
                .filter(|(timeline, _)| *timeline == best_tli)
                .map(|(_, at)| at + 1),
        )
        .max()
        .expect("the best timeline has a reporter");
    let floor = match (input.sync_mode, input.last_primary_lsn) {
        (SyncMode::Quorum | SyncMode::Degradable, _) => best_lsn,
        (SyncMode::Off, Some(p)) => p.saturating_sub(input.maximum_lag_bytes),
        (SyncMode::Off, None) => best_lsn,
    };
    let eligible = |n: &str, r: &FinalReport| {
        r.timeline > Timeline::NONE
            && r.flush_lsn >= floor
            && r.timeline == best_tli
            && (!r.tags.nofailover || input.requested == Some(n))
    };
    if let Some(to) = input.requested {
        return match input.standbys.get(to) {
            None => Election::Refuse {
                reason: format!("{to} is not a standby of this cluster"),
            },
            Some(None) => Election::Wait {
                reason: format!("{to} has not reported its final position yet"),
            },
            Some(Some(r)) if eligible(to, r) => Election::Promote {
                node: to.to_string(),
                reason: format!("{to} was requested and holds every acknowledged write (flushed {})", lsn(r.flush_lsn)),
            },
            Some(Some(r)) => Election::Refuse {
                reason: format!(
                    "{to} has flushed {} but {} is needed: promoting it would lose acknowledged writes (use --force to accept that)",
                    lsn(r.flush_lsn),
                    lsn(floor)
                ),
            },
        };
    }
    let mut candidates: Vec<&(&str, &FinalReport)> = reported.iter().filter(|(n, r)| eligible(n, r)).collect();
    candidates.sort_by(|(an, a), (bn, b)| {
        (b.flush_lsn, b.tags.failover_priority, an).cmp(&(a.flush_lsn, a.tags.failover_priority, bn))
    });
    match candidates.first() {
        Some((n, r)) => Election::Promote {
            node: n.to_string(),
            reason: format!(
                "{n} is the most advanced eligible standby (flushed {}, priority {}, {} reports)",
                lsn(r.flush_lsn),
                r.tags.failover_priority,
                reported.len()
            ),
        },
        None => {
            let why = match best_tli == Timeline::NONE {
                true => "every member that reported holds no database that streamed from the old primary".to_string(),
                false => format!(
                    "no eligible standby holds every acknowledged write ({} is needed; the most advanced is tagged nofailover, was refused by its pre_promote hook, or is on another timeline)",
                    lsn(floor)
                ),
            };
            // A standby that counts in no quorum need not report for `covered`, yet may be
            // eligible: it gets its chance before the refusal, which would let the fenced
            // primary be promoted again at once (hooks test: a vetoed switchover target, and
            // the other standby's final report 20 ms behind the veto).
            let missing: Vec<&str> = input
                .standbys
                .iter()
                .filter(|(_, r)| r.is_none())
                .map(|(n, _)| *n)
                .collect();
            match missing.is_empty() {
                true => Election::Refuse {
                    reason: format!("{why}: none can be promoted"),
                },
                false => Election::Wait {
                    reason: format!("{why}; waiting for the final report of [{}]", missing.join(", ")),
                },
            }
        }
    }
}

/// An election after the fenced primary ran degraded: no quorum holds what it acknowledged
/// in the window, so no promotion is safe. Of the members that streamed throughout (the
/// others missed writes it acknowledged), every one that is still a standby must report,
/// and the most advanced is promoted, with the loss stated. With none, it is refused: the
/// old primary holds those writes, or an operator accepts the loss with `--force`.
fn degraded(input: &ElectionInput, d: &Degraded, reported: &[(&str, &FinalReport)]) -> Election {
    let window = format!(
        "{} ran degraded (asynchronous) since {}",
        input.old_primary.unwrap_or("the old primary"),
        utc(d.since_unix_ms)
    );
    let streamed: Vec<&str> = d
        .streaming
        .iter()
        .map(String::as_str)
        .filter(|n| input.standbys.contains_key(n))
        .collect();
    if let Some(to) = input.requested.filter(|to| !streamed.contains(to)) {
        return Election::Refuse {
            reason: format!(
                "{to} was not streaming from the old primary throughout its degraded window ({window}): it lacks writes \
                 acknowledged then; start the old primary again, or accept the loss with `raftpg ctl failover --to {to} --force`"
            ),
        };
    }
    if streamed.is_empty() {
        return Election::Refuse {
            reason: format!(
                "no standby was streaming throughout the degraded window ({window}): every write acknowledged since is on \
                 the old primary alone; start it again, or accept the loss with `raftpg ctl failover --to NAME --force`"
            ),
        };
    }
    let missing: Vec<&str> = streamed
        .iter()
        .copied()
        .filter(|n| input.standbys.get(n).is_some_and(Option::is_none))
        .collect();
    if !missing.is_empty() {
        return Election::Wait {
            reason: format!(
                "{window}: waiting for the final reports of [{}], which streamed throughout",
                missing.join(", ")
            ),
        };
    }
    // Where the writes its quorum acknowledged end: unknown if it died before reporting that
    // it ran asynchronously (no member can then be shown to hold them).
    let Some(quorum_lsn) = d.quorum_lsn else {
        return Election::Refuse {
            reason: format!(
                "{window}, and it died before reporting where it went asynchronous, so no standby can be shown to \
                 hold what its quorum acknowledged before; start it again, or accept the loss with \
                 `raftpg ctl failover --to NAME --force`"
            ),
        };
    };
    let mut candidates: Vec<(&str, &FinalReport)> = reported
        .iter()
        .filter(|(n, r)| streamed.contains(n) && r.timeline > Timeline::NONE && r.flush_lsn >= quorum_lsn)
        .filter(|(n, r)| !r.tags.nofailover || input.requested == Some(*n))
        .copied()
        .collect();
    candidates.sort_by(|(an, a), (bn, b)| {
        (b.timeline, b.flush_lsn, b.tags.failover_priority, an).cmp(&(
            a.timeline,
            a.flush_lsn,
            a.tags.failover_priority,
            bn,
        ))
    });
    if let Some(to) = input.requested {
        candidates.retain(|(n, _)| *n == to);
    }
    match candidates.first() {
        Some((n, r)) => Election::Promote {
            node: n.to_string(),
            reason: format!(
                "{n} streamed throughout the degraded window and is the most advanced of those (flushed {}): {window}, \
                 so writes acknowledged then that {n} did not receive are lost",
                lsn(r.flush_lsn)
            ),
        },
        None => Election::Refuse {
            reason: format!(
                "of the standbys that streamed throughout the degraded window ([{}]), none may be promoted (behind {}, \
                 where the writes its quorum acknowledged end, tagged nofailover, refused by its pre_promote hook, or \
                 without a database): {window}; start the old primary again, or accept the loss with \
                 `raftpg ctl failover --to NAME --force`",
                streamed.join(", "),
                lsn(quorum_lsn)
            ),
        },
    }
}

fn forced(input: &ElectionInput, reported: &[(&str, &FinalReport)]) -> Election {
    let Some(to) = input.requested else {
        return Election::Refuse {
            reason: "a forced failover needs a target (--to NAME)".into(),
        };
    };
    if !input.standbys.contains_key(to) {
        return Election::Refuse {
            reason: format!("{to} is not a standby of this cluster"),
        };
    }
    let best = reported.iter().map(|(_, r)| r.flush_lsn).max();
    Election::Promote {
        node: to.to_string(),
        reason: format!(
            "forced failover to {to}: acknowledged writes after {} may be lost (most advanced reported: {})",
            input.standbys[to]
                .as_ref()
                .map_or("an unknown position".into(), |r| lsn(r.flush_lsn)),
            best.map_or("none".into(), lsn)
        ),
    }
}

/// A wall-clock time in milliseconds since the Unix epoch, as people read it (UTC, seconds).
pub fn utc(unix_ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms)).to_string()
}

/// An LSN as PostgreSQL prints it.
pub fn lsn(v: u64) -> String {
    crate::types::Lsn(v).to_string()
}

#[cfg(test)]
#[path = "election_tests.rs"]
mod tests;
