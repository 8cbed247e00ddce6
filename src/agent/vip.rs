//! A floating IP that follows the primary (`[vip]`): what keepalived or pgpool's watchdog
//! do in the deployments raftpg replaces, bound to the lease instead of to a heartbeat.
//!
//! Only the node that holds the primary's lease has the address. It is added once the lease
//! is granted, announced with gratuitous ARP, and removed `VIP_MARGIN` before the lease
//! runs out without renewal (or at once when the node is no longer the primary). The next
//! primary is promoted only after the controller's own deadline for that lease, which is
//! later still (`lease::controller_deadline`), so two nodes never hold it at once. If raftpg
//! itself is frozen or killed, the fence keeper removes the address when it fences
//! PostgreSQL, at the lease's end.

use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::decide::agent::{wanted, Wanted};
use crate::lease::Holder;
use crate::node::Node;

/// The address goes this long before the lease would run out.
pub const VIP_MARGIN: Duration = Duration::from_millis(200);
/// Re-check at least this often (a change of role, a renewal).
const TICK: Duration = Duration::from_millis(50);
const IP_TIMEOUT: Duration = Duration::from_secs(5);

/// `[vip]` in raftpg.toml.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VipSection {
    /// IPv4 address with its prefix length, e.g. "10.0.0.100/24".
    pub address: String,
    /// The interface that carries it, e.g. "eth0".
    pub interface: String,
}

impl VipSection {
    /// Checks the address and interface; the error names the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, p: String| Err((format!("vip.{k}"), p));
        let Some((ip, prefix)) = self.address.split_once('/') else {
            return bad(
                "address",
                format!("'{}' has no prefix length: write it as 10.0.0.100/24", self.address),
            );
        };
        if ip.parse::<std::net::Ipv4Addr>().is_err() {
            return bad(
                "address",
                format!("'{ip}' is not an IPv4 address (IPv6 floating addresses are not supported)"),
            );
        }
        if !prefix.parse::<u8>().is_ok_and(|p| (1..=32).contains(&p)) {
            return bad("address", format!("'/{prefix}' is not a prefix length from 1 to 32"));
        }
        let ok = !self.interface.is_empty()
            && self.interface.len() < 16
            && self
                .interface
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
        if !ok {
            return bad("interface", format!("'{}' is not an interface name", self.interface));
        }
        Ok(())
    }

    fn ip(&self) -> &str {
        self.address.split_once('/').map_or(&self.address, |(ip, _)| ip)
    }
}

/// What to do with the address now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Desire {
    Hold,
    Release,
    /// Leave it as it is: a primary whose raftpg just (re)started and has no grant yet,
    /// within the lease an earlier process held (a rolling restart keeps the address).
    Keep,
}

/// The rule, pure: `granted_left` is how long the last granted lease of this node's
/// generation still runs (`None`: none granted since this process started), `acquiring_left`
/// how long this process may still run PostgreSQL as primary without a grant.
pub fn desire(primary: bool, paused: bool, granted_left: Option<Duration>, acquiring_left: Option<Duration>) -> Desire {
    if !primary {
        return Desire::Release;
    }
    if paused {
        // Nothing fences while paused: the primary keeps its PostgreSQL, and its address.
        return Desire::Hold;
    }
    match (granted_left, acquiring_left) {
        (Some(left), _) if left > VIP_MARGIN => Desire::Hold,
        (Some(_), _) => Desire::Release,
        (None, Some(left)) if left > VIP_MARGIN => Desire::Keep,
        (None, _) => Desire::Release,
    }
}

/// `ip addr add|del ADDRESS dev INTERFACE`; Ok(false) when there was nothing to do.
pub async fn ip_addr(vip: &VipSection, add: bool) -> anyhow::Result<bool> {
    let verb = if add { "add" } else { "del" };
    let run = tokio::process::Command::new("ip")
        .args(["addr", verb, &vip.address, "dev", &vip.interface])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(IP_TIMEOUT, run)
        .await
        .map_err(|_| anyhow::anyhow!("`ip addr {verb}` did not finish within {IP_TIMEOUT:?}"))??;
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if out.status.success() {
        return Ok(true);
    }
    // Already there, or already gone.
    if (add && err.contains("File exists")) || (!add && err.contains("Cannot assign requested address")) {
        return Ok(false);
    }
    if err.contains("Operation not permitted") {
        anyhow::bail!(
            "`ip addr {verb} {} dev {}`: {err}: raftpg needs CAP_NET_ADMIN for [vip] (in the unit: \
             AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW and the same in CapabilityBoundingSet)",
            vip.address,
            vip.interface
        );
    }
    anyhow::bail!("`ip addr {verb} {} dev {}`: {err}", vip.address, vip.interface)
}

/// The same, blocking (the fence keeper has no runtime).
pub fn release_now(vip: &VipSection) {
    let _ = std::process::Command::new("ip")
        .args(["addr", "del", &vip.address, "dev", &vip.interface])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Gratuitous ARP, so that switches and neighbours send the address's traffic here now,
/// not after their ARP caches expire. Best effort: `arping` (iputils-arping) may be missing.
async fn announce(vip: &VipSection) {
    let run = tokio::process::Command::new("arping")
        .args(["-U", "-c", "2", "-w", "2", "-I", &vip.interface, vip.ip()])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(5), run).await {
        Ok(Ok(out)) if out.status.success() => {}
        Ok(Ok(out)) => tracing::warn!(
            "gratuitous ARP for {} failed: {}",
            vip.address,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Ok(Err(e)) => tracing::warn!(
            "cannot send gratuitous ARP for {} ({e}): install iputils-arping, or neighbours find the new owner only when their ARP cache expires",
            vip.address
        ),
        Err(_) => tracing::warn!("gratuitous ARP for {} did not finish", vip.address),
    }
}

/// The task: follows the role and the lease, adds and removes the address.
pub async fn run(node: Node, holder: Holder, vip: VipSection, mut stop: watch::Receiver<bool>) {
    let me = node.cfg.me().name.clone();
    // Unknown at start: an address left by a crashed raftpg is removed unless this node
    // holds (or is acquiring) the lease.
    let mut holding: Option<bool> = None;
    loop {
        let state = node.state().state;
        let now = Instant::now();
        let primary = state.initialized && wanted(&state, &me) == Wanted::Primary;
        let g = state.generation;
        let granted = holder.expiry(g);
        let acquiring = holder.guarded_until(g, state.ha.lease_ms).filter(|_| granted.is_none());
        let left = |e: Option<Instant>| e.map(|e| e.saturating_duration_since(now));
        let want = desire(primary, state.paused, left(granted), left(acquiring));
        let change = match (want, holding) {
            (Desire::Hold, Some(true)) | (Desire::Release, Some(false)) | (Desire::Keep, _) => None,
            (Desire::Hold, _) => Some(true),
            (Desire::Release, _) => Some(false),
        };
        if let Some(add) = change {
            match ip_addr(&vip, add).await {
                Ok(changed) => {
                    holding = Some(add);
                    if add {
                        tracing::info!(address = %vip.address, interface = %vip.interface, "holding the floating IP (generation {g})");
                        tokio::spawn({
                            let vip = vip.clone();
                            async move { announce(&vip).await }
                        });
                    } else if changed {
                        tracing::info!(address = %vip.address, "released the floating IP");
                    }
                }
                Err(e) => tracing::error!("floating IP: {e:#}"),
            }
        }
        // Wake when the lease is about to run out, or at the next tick.
        let deadline = granted
            .and_then(|e| e.checked_sub(VIP_MARGIN))
            .filter(|d| *d > now)
            .map_or(now + TICK, |d| d.min(now + TICK));
        let stopping = tokio::select! {
            _ = stop.wait_for(|s| *s) => true,
            _ = tokio::time::sleep_until(deadline) => false,
        };
        if stopping {
            // A clean stop stops PostgreSQL too; a restart in place keeps both.
            if holding == Some(true) && !node.leaves_postgres_running() {
                let _ = ip_addr(&vip, false).await;
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn only_a_primary_with_a_lease_that_runs_on_holds_the_address() {
        use Desire::*;
        let table = [
            // primary, paused, granted left, acquiring left → desire
            (false, false, Some(MS(2000)), None, Release),
            (false, true, Some(MS(2000)), None, Release),
            (true, false, Some(MS(2000)), None, Hold),
            (true, false, Some(VIP_MARGIN + MS(1)), None, Hold),
            (true, false, Some(VIP_MARGIN), None, Release),
            (true, false, Some(MS(0)), None, Release),
            (true, false, None, Some(MS(1500)), Keep),
            (true, false, None, Some(VIP_MARGIN), Release),
            (true, false, None, None, Release),
            (true, true, None, None, Hold),
        ];
        for (primary, paused, granted, acquiring, want) in table {
            assert_eq!(
                desire(primary, paused, granted, acquiring),
                want,
                "{primary} {paused} {granted:?} {acquiring:?}"
            );
        }
    }

    #[test]
    fn every_input_releases_the_address_before_the_lease_ends() {
        for primary in [false, true] {
            for paused in [false, true] {
                for g in [None, Some(0), Some(100), Some(200), Some(201), Some(5000)] {
                    for a in [None, Some(0), Some(200), Some(201), Some(5000)] {
                        let d = desire(primary, paused, g.map(MS), a.map(MS));
                        if d == Desire::Hold && !paused {
                            assert!(primary && g.is_some_and(|g| MS(g) > VIP_MARGIN));
                        }
                        if !primary {
                            assert_eq!(d, Desire::Release);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_bad_address_or_interface_is_named() {
        let v = |a: &str, i: &str| VipSection {
            address: a.into(),
            interface: i.into(),
        };
        assert!(v("10.0.0.100/24", "eth0").validate().is_ok());
        assert_eq!(v("10.0.0.100", "eth0").validate().unwrap_err().0, "vip.address");
        assert_eq!(v("10.0.0.300/24", "eth0").validate().unwrap_err().0, "vip.address");
        assert_eq!(v("10.0.0.1/33", "eth0").validate().unwrap_err().0, "vip.address");
        assert!(v("fe80::1/64", "eth0").validate().unwrap_err().1.contains("IPv6"));
        assert_eq!(v("10.0.0.1/24", "eth0; rm").validate().unwrap_err().0, "vip.interface");
    }
}
