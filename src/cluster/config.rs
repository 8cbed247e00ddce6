//! Cluster-wide HA settings kept in the replicated state, with their parsing.
//!
//! They live in Raft, not in each node's file, because every node must apply
//! the same lease length and the same failover rules at the same time.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Default primary lease: short enough for a failover in about three seconds,
/// long enough to ride out a Raft election (≈1 s with the default timings)
/// with renewals every lease/4.
pub const DEFAULT_LEASE_MS: u64 = 2_000;
/// Default bound on lag for a failover candidate in async mode: 1 MiB.
pub const DEFAULT_MAXIMUM_LAG_ON_FAILOVER_BYTES: u64 = 1 << 20;
/// Default time a crashed primary may take to come back in place before failover.
pub const DEFAULT_PRIMARY_RESTART_TIMEOUT_MS: u64 = 10_000;

/// The keys `config set` accepts besides `postgresql.parameters.<name>`.
pub const CONFIG_KEYS: [&str; 5] = [
    "synchronous_mode",
    "maximum_lag_on_failover",
    "lease_ms",
    "primary_restart_timeout_ms",
    "slot_ttl_ms",
];

/// How commits are acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncMode {
    /// `ANY k (others)`, k = floor(N/2): a commit is on a majority before it is acknowledged.
    #[default]
    Quorum,
    /// Asynchronous replication; failover bounded by `maximum_lag_on_failover`.
    Off,
    /// Quorum while at least `k` synchronous standbys stream; when fewer do for a lease,
    /// the primary drops to asynchronous replication (recorded in Raft as
    /// `ClusterState::degraded`) and returns to the quorum once they stream again.
    Degradable,
}

impl SyncMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::Quorum => "quorum",
            SyncMode::Off => "off",
            SyncMode::Degradable => "degradable",
        }
    }

    /// Whether commits wait for a quorum of standbys (unless degraded).
    pub fn is_quorum(self) -> bool {
        matches!(self, SyncMode::Quorum | SyncMode::Degradable)
    }

    /// `k` of `ANY k (...)` over `standbys` synchronous standbys: floor(G/2) of the group G
    /// of the primary and its standbys in the quorum modes, so an acknowledged commit is on a
    /// majority of that group; 0 in asynchronous mode.
    pub fn quorum_of(self, standbys: usize) -> usize {
        if self.is_quorum() {
            standbys.div_ceil(2)
        } else {
            0
        }
    }
}

/// HA timings and rules shared by the whole cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaConfig {
    pub synchronous_mode: SyncMode,
    pub maximum_lag_on_failover_bytes: u64,
    pub lease_ms: u64,
    pub primary_restart_timeout_ms: u64,
}

impl Default for HaConfig {
    fn default() -> Self {
        HaConfig {
            synchronous_mode: SyncMode::Quorum,
            maximum_lag_on_failover_bytes: DEFAULT_MAXIMUM_LAG_ON_FAILOVER_BYTES,
            lease_ms: DEFAULT_LEASE_MS,
            primary_restart_timeout_ms: DEFAULT_PRIMARY_RESTART_TIMEOUT_MS,
        }
    }
}

impl HaConfig {
    /// Sets one key; `None` restores its default. Errors say what is accepted.
    pub fn set(&mut self, key: &str, value: Option<&str>) -> Result<(), String> {
        let d = HaConfig::default();
        match key {
            "synchronous_mode" => {
                self.synchronous_mode = match value {
                    None => d.synchronous_mode,
                    Some("quorum" | "on") => SyncMode::Quorum,
                    Some("off") => SyncMode::Off,
                    Some("degradable") => SyncMode::Degradable,
                    Some(v) => {
                        return Err(format!(
                            "synchronous_mode must be 'quorum', 'degradable' or 'off', not '{v}'"
                        ))
                    }
                }
            }
            "maximum_lag_on_failover" => {
                self.maximum_lag_on_failover_bytes = match value {
                    None => d.maximum_lag_on_failover_bytes,
                    Some(v) => parse_bytes(v)?,
                }
            }
            "lease_ms" => {
                self.lease_ms = match value {
                    None => d.lease_ms,
                    Some(v) => parse_ms(key, v, 500, 600_000)?,
                }
            }
            "primary_restart_timeout_ms" => {
                self.primary_restart_timeout_ms = match value {
                    None => d.primary_restart_timeout_ms,
                    Some(v) => parse_ms(key, v, 1_000, 3_600_000)?,
                }
            }
            _ => {
                return Err(format!(
                    "unknown key '{key}': use one of {} or postgresql.parameters.<name>",
                    CONFIG_KEYS.join(", ")
                ))
            }
        }
        Ok(())
    }

    /// All keys with their current values, as text.
    pub fn pairs(&self) -> BTreeMap<String, String> {
        let mode = self.synchronous_mode.as_str();
        BTreeMap::from([
            ("synchronous_mode".to_string(), mode.to_string()),
            (
                "maximum_lag_on_failover".to_string(),
                self.maximum_lag_on_failover_bytes.to_string(),
            ),
            ("lease_ms".to_string(), self.lease_ms.to_string()),
            (
                "primary_restart_timeout_ms".to_string(),
                self.primary_restart_timeout_ms.to_string(),
            ),
        ])
    }
}

fn parse_ms(key: &str, v: &str, min: u64, max: u64) -> Result<u64, String> {
    let n: u64 = v
        .trim()
        .parse()
        .map_err(|_| format!("{key} must be a whole number of milliseconds, not '{v}'"))?;
    if !(min..=max).contains(&n) {
        return Err(format!("{key} must be between {min} and {max}, not {n}"));
    }
    Ok(n)
}

/// Parses `16MB`, `512kB`, `1GB` or a plain byte count, as PostgreSQL and Patroni write sizes.
pub fn parse_bytes(v: &str) -> Result<u64, String> {
    let t = v.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{v}' is not a size: write bytes or a number with B, kB, MB, GB or TB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1 << 10,
        "mb" | "m" => 1 << 20,
        "gb" | "g" => 1 << 30,
        "tb" | "t" => 1 << 40,
        _ => return Err(format!("'{v}' has an unknown unit: use B, kB, MB, GB or TB")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("'{v}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("16MB"), Ok(16 << 20));
        assert_eq!(parse_bytes("512kB"), Ok(512 << 10));
        assert_eq!(parse_bytes("100"), Ok(100));
        assert!(parse_bytes("12XB").is_err());
        assert!(parse_bytes("MB").is_err());
        // As /replica?lag= takes them (Patroni's spellings).
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("1 GB"), Ok(1 << 30));
        assert!(parse_bytes("ten").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
    }

    #[test]
    fn set_rejects_bad_values_and_keys() {
        let mut c = HaConfig::default();
        assert!(c.set("lease_ms", Some("10")).unwrap_err().contains("between"));
        assert!(c.set("synchronous_mode", Some("maybe")).is_err());
        assert!(c.set("nope", Some("1")).unwrap_err().contains("unknown key"));
        c.set("synchronous_mode", Some("off")).unwrap();
        assert_eq!(c.synchronous_mode, SyncMode::Off);
        c.set("synchronous_mode", None).unwrap();
        assert_eq!(c.synchronous_mode, SyncMode::Quorum);
    }
}
