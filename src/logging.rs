//! `tracing` set-up: human format on a terminal, JSON for machines.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Log output format, chosen with `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// Default filter: our own info lines; libraries only when they warn.
const DEFAULT_FILTER: &str = "info,openraft=error,sled=warn,h2=warn,tower=warn,hyper=warn";

/// Installs the global subscriber. `RUST_LOG` overrides the default filter.
pub fn init(format: LogFormat, default_filter: Option<&str>) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter.unwrap_or(DEFAULT_FILTER)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Human => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
    };
}
