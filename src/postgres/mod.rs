//! PostgreSQL effects: finding the binaries, running them (as the `postgres`
//! OS user when raftpg runs as root), and observing a running server.
//!
//! Every call has a timeout. A failed observation is `Unknown`, never a
//! default that looks healthy.

pub mod bin;
pub mod conf;
pub mod ctl;
pub mod kill;
pub mod observe;

pub use bin::{PgBinaries, RunAs};
pub use ctl::{read_postmaster_pid, Controldata, PgCtl, StopMode};
pub use observe::{observe, Observation, Observer, PgState, Replica};

use crate::types::Timeline;

/// An LSN as PostgreSQL prints it (`X/Y`, hexadecimal).
/// Bytes an unprivileged user may still write on the filesystem that holds `path`, or
/// would hold it (the nearest existing ancestor: a data directory not created yet).
pub fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    let existing = path.ancestors().find(|a| a.exists()).unwrap_or(path);
    let s = nix::sys::statvfs::statvfs(existing).map_err(std::io::Error::from)?;
    Ok(s.blocks_available() as u64 * s.fragment_size() as u64)
}

/// How a filesystem too full for PostgreSQL is described, in the log and `ctl list`.
pub fn no_room(what: &str, path: &std::path::Path, free: u64, need: u64) -> String {
    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    format!(
        "the filesystem of {what} ({}) is full: {:.1} MB free, less than one {:.0} MB WAL segment",
        path.display(),
        mb(free),
        mb(need)
    )
}

pub fn parse_lsn(text: &str) -> Option<u64> {
    crate::types::Lsn::parse(text).map(|l| l.0)
}

/// Every switch a timeline history file (`pg_wal/<TLI>.history`) records, oldest
/// first: the parent timeline and the LSN where the next timeline of the chain starts.
pub fn timeline_switches(text: &str) -> Vec<(u32, u64)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.parse().ok()?, parse_lsn(parts.next()?)?))
        })
        .collect()
}

/// The fork point of `timeline`, from its history file (`pg_wal/<TLI>.history`): the
/// parent timeline and the LSN where the new timeline starts (the last line).
pub fn parse_timeline_history(text: &str) -> Option<(u32, u64)> {
    timeline_switches(text).last().copied()
}

/// The history files a member must have in `pg_wal` before it promotes, so that PostgreSQL,
/// which takes one more than the newest timeline whose history file it finds, never takes a
/// timeline another member already took (a collision lets pg_rewind find "no rewind
/// required" between two diverged databases). One file per recorded timeline: its content
/// as the recorded chain of forks gives it, or, where a fork is not known, only a comment
/// (PostgreSQL only looks for the file). `newest`: the newest timeline taken, recorded or
/// not (`ClusterState::newest_timeline_taken`). Pairs of (timeline, file text).
pub fn recorded_histories(history: &[crate::cluster::HistoryEntry], newest: Timeline) -> Vec<(Timeline, String)> {
    let lines = |mut tl: Timeline| -> Option<String> {
        let mut out = Vec::new();
        while tl > Timeline::FIRST {
            let h = history.iter().rev().find(|h| h.timeline == tl)?;
            let (parent, switch) = (h.parent_timeline.filter(|p| *p < tl)?, h.switch_lsn?);
            out.push(format!(
                "{parent}\t{switch}\t{} of generation {} to {}",
                h.kind.as_str(),
                h.generation,
                h.to
            ));
            tl = parent;
        }
        out.reverse();
        Some(out.join("\n") + "\n")
    };
    (2..=newest.0)
        .map(Timeline)
        .map(|tl| {
            let text = lines(tl).unwrap_or_else(|| {
                format!("# timeline {tl} was taken by a member of this raftpg cluster; its forks are not recorded\n")
            });
            (tl, text)
        })
        .collect()
}

/// A failure of a PostgreSQL action, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error(
        "no PostgreSQL binaries found (looked in: {looked}). Install PostgreSQL (Debian/Ubuntu: \
         apt-get install postgresql) or set postgres.bin_dir in the config"
    )]
    NotFound { looked: String },
    #[error("{tool} is missing from {dir}: the PostgreSQL installation is incomplete")]
    ToolMissing { tool: String, dir: String },
    #[error("raftpg runs as root, and PostgreSQL refuses to: create the OS user '{0}' or set postgres.os_user")]
    NoOsUser(String),
    #[error(
        "PostgreSQL runs as OS user '{user}', who cannot enter {dir}: run `chmod o+x {dir}` or move the data directory"
    )]
    Unreachable { user: String, dir: String },
    #[error("{what} did not finish within {secs}s")]
    Timeout { what: String, secs: u64 },
    #[error("{what} was abandoned and killed")]
    Abandoned { what: String },
    #[error("{what} failed ({status}): {output}")]
    Failed {
        what: String,
        status: String,
        output: String,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Generation;

    #[test]
    fn lsn_and_history_parse_like_postgres_prints_them() {
        assert_eq!(parse_lsn("3/60"), Some(0x3_0000_0060));
        assert_eq!(parse_lsn("0/3000060 "), Some(0x300_0060));
        assert_eq!(parse_lsn("nope"), None);
        let history = "1\t0/3000060\tno recovery target specified\n\n2\t0/5000128\tno recovery target specified\n";
        assert_eq!(parse_timeline_history(history), Some((2, 0x500_0128)));
        assert_eq!(parse_timeline_history(""), None);
        assert_eq!(
            timeline_switches(history).len(),
            history.lines().filter(|l| !l.trim().is_empty()).count()
        );
    }

    #[test]
    fn recorded_timelines_become_history_files_postgres_reads_back() {
        use crate::cluster::{ChangeKind, HistoryEntry};
        let entry = |timeline, parent, switch: Option<&str>| HistoryEntry {
            kind: ChangeKind::Failover,
            timeline,
            parent_timeline: parent,
            switch_lsn: switch.and_then(crate::types::Lsn::parse),
            reason: "r".into(),
            from: None,
            to: "n2".into(),
            generation: Generation(u64::from(timeline.0)),
        };
        assert!(recorded_histories(&[], Timeline::FIRST).is_empty());
        let history = [
            entry(Timeline(1), None, None),
            entry(Timeline(2), Some(Timeline(1)), Some("0/3000060")),
            entry(Timeline(3), None, None),
            entry(Timeline(4), Some(Timeline(2)), Some("0/5000128")),
        ];
        let files = recorded_histories(&history, Timeline(4));
        assert_eq!(
            files.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            [2, 3, 4].map(Timeline)
        );
        // A replaced candidate may have taken timeline 5 unrecorded: it gets a file too.
        let files = recorded_histories(&history, Timeline(5));
        assert_eq!(files.len(), 4);
        assert!(files[3].1.starts_with('#') && timeline_switches(&files[3].1).is_empty());
        assert_eq!(timeline_switches(&files[0].1), [(1, 0x300_0060)]);
        assert!(timeline_switches(&files[1].1).is_empty(), "{}", files[1].1);
        assert!(files[1].1.starts_with('#'));
        assert_eq!(timeline_switches(&files[2].1), [(1, 0x300_0060), (2, 0x500_0128)]);
    }
}
