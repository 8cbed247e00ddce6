//! PostgreSQL effects: finding the binaries, running them (as the `postgres`
//! OS user when raftpg runs as root), and observing a running server.
//!
//! Every call has a timeout. A failed observation is `Unknown`, never a
//! default that looks healthy.

pub mod bin;
pub mod conf;
pub mod ctl;
pub mod observe;

pub use bin::{PgBinaries, RunAs};
pub use ctl::{read_postmaster_pid, Controldata, PgCtl, StopMode};
pub use observe::{observe, Observation, PgState, Replica};

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
