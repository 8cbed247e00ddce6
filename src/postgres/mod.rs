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
    let (hi, lo) = text.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
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
}
