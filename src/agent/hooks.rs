//! Operator hooks (`[hooks]`): scripts run when the local PostgreSQL starts, stops or
//! changes role, so the rest of a stack (PgBouncer, a load balancer, monitoring) can follow.
//!
//! Each runs in order, one at a time, off the agent's path (a slow hook never delays a
//! failover), within `timeout_s` (then it is killed). Its arguments are Patroni's
//! (`ACTION ROLE CLUSTER`) and its environment says the rest: `RAFTPG_HOOK`,
//! `RAFTPG_ROLE`, `RAFTPG_GENERATION`, `RAFTPG_TIMELINE`, `RAFTPG_CLUSTER`,
//! `RAFTPG_MEMBER`. Its output is logged line by line; a failure is logged as an error.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;

use crate::protocol::PgRole;
use crate::types::{Generation, Timeline};

/// `[hooks]` in raftpg.toml.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksSection {
    /// After PostgreSQL started (as primary or standby).
    pub on_start: Option<PathBuf>,
    /// After PostgreSQL stopped (or was fenced).
    pub on_stop: Option<PathBuf>,
    /// After the running PostgreSQL became primary, or a standby.
    pub on_role_change: Option<PathBuf>,
    /// Before this standby, chosen as the candidate of a failover or switchover, promotes.
    /// On the failover path: a non-zero exit (or a timeout) vetoes this candidate, and the
    /// controller chooses another.
    pub pre_promote: Option<PathBuf>,
    /// The longest a hook may run before it is killed.
    pub timeout_s: u64,
}

/// Default `[hooks] timeout_s`.
pub const DEFAULT_HOOK_TIMEOUT_S: u64 = 30;

impl Default for HooksSection {
    fn default() -> Self {
        HooksSection {
            on_start: None,
            on_stop: None,
            on_role_change: None,
            pre_promote: None,
            timeout_s: DEFAULT_HOOK_TIMEOUT_S,
        }
    }
}

impl HooksSection {
    /// Every configured hook with its key.
    pub fn configured(&self) -> impl Iterator<Item = (&'static str, &PathBuf)> {
        [
            ("on_start", &self.on_start),
            ("on_stop", &self.on_stop),
            ("on_role_change", &self.on_role_change),
            ("pre_promote", &self.pre_promote),
        ]
        .into_iter()
        .filter_map(|(k, p)| p.as_ref().map(|p| (k, p)))
    }
}

/// Which hook a change of the local PostgreSQL's role calls, and the role it reports.
/// `Unknown` (an observation that failed) changes nothing; the first observation only
/// sets the starting point (raftpg restarted beside a running PostgreSQL starts nothing).
pub fn transition(before: Option<PgRole>, now: PgRole) -> Option<(&'static str, &'static str)> {
    let running = |r: PgRole| matches!(r, PgRole::Primary | PgRole::Standby);
    let before = before?;
    match (before, now) {
        (_, PgRole::Unknown) | (PgRole::Unknown, _) => None,
        (b, n) if b == n => None,
        (b, n) if !running(b) && running(n) => Some(("on_start", role_word(n))),
        (b, n) if running(b) && !running(n) => Some(("on_stop", role_word(n))),
        (b, n) if running(b) && running(n) => Some(("on_role_change", role_word(n))),
        _ => None,
    }
}

fn role_word(r: PgRole) -> &'static str {
    match r {
        PgRole::Primary => "primary",
        PgRole::Standby => "standby",
        PgRole::Stopped | PgRole::NoData => "stopped",
        PgRole::Unknown => "unknown",
    }
}

struct Call {
    hook: &'static str,
    path: PathBuf,
    role: &'static str,
    generation: Generation,
    timeline: Option<Timeline>,
}

/// The agent's side: follows the observed role and queues the hooks it calls.
pub struct Hooks {
    section: HooksSection,
    last: Option<PgRole>,
    tx: Option<mpsc::UnboundedSender<Call>>,
    cluster: String,
    member: String,
}

impl Hooks {
    /// Starts the runner when any hook is configured.
    pub fn start(section: &HooksSection, cluster: &str, member: &str) -> Hooks {
        let tx = section.configured().next().map(|_| {
            let (tx, rx) = mpsc::unbounded_channel();
            let timeout = Duration::from_secs(section.timeout_s);
            tokio::spawn(run(rx, cluster.to_string(), member.to_string(), timeout));
            tx
        });
        Hooks {
            section: section.clone(),
            last: None,
            tx,
            cluster: cluster.to_string(),
            member: member.to_string(),
        }
    }

    /// `pre_promote`, run now and waited for (the candidate promotes only if it succeeds):
    /// `Err` says why it refused. No hook configured: Ok.
    pub async fn pre_promote(&self, generation: Generation, timeline: Option<Timeline>) -> Result<(), String> {
        let Some(path) = &self.section.pre_promote else {
            return Ok(());
        };
        let call = Call {
            hook: "pre_promote",
            path: path.clone(),
            role: "primary",
            generation,
            timeline,
        };
        let timeout = Duration::from_secs(self.section.timeout_s);
        tracing::info!(hook = "pre_promote", path = %path.display(), %generation, "running pre_promote before promoting");
        run_one(&call, &self.cluster, &self.member, timeout).await
    }

    /// The local PostgreSQL as just observed.
    pub fn observe(&mut self, pg: PgRole, generation: Generation, timeline: Option<Timeline>) {
        let Some(tx) = &self.tx else { return };
        let change = transition(self.last, pg);
        if pg != PgRole::Unknown {
            self.last = Some(pg);
        }
        let Some((hook, role)) = change else { return };
        let path = match hook {
            "on_start" => &self.section.on_start,
            "on_stop" => &self.section.on_stop,
            _ => &self.section.on_role_change,
        };
        if let Some(path) = path {
            let _ = tx.send(Call {
                hook,
                path: path.clone(),
                role,
                generation,
                timeline,
            });
        }
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<Call>, cluster: String, member: String, timeout: Duration) {
    while let Some(c) = rx.recv().await {
        let _ = run_one(&c, &cluster, &member, timeout).await;
    }
}

/// Runs one hook to its end (or its timeout), logging its output; `Err` says why it failed.
async fn run_one(c: &Call, cluster: &str, member: &str, timeout: Duration) -> Result<(), String> {
    {
        let mut cmd = tokio::process::Command::new(&c.path);
        cmd.args([c.hook, c.role, cluster])
            .env("RAFTPG_HOOK", c.hook)
            .env("RAFTPG_ROLE", c.role)
            .env("RAFTPG_GENERATION", c.generation.to_string())
            .env("RAFTPG_TIMELINE", c.timeline.map(|t| t.to_string()).unwrap_or_default())
            .env("RAFTPG_CLUSTER", cluster)
            .env("RAFTPG_MEMBER", member)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let hook = c.hook;
        let path = c.path.display().to_string();
        let output = match output_within(&mut cmd, timeout).await {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(hook, %path, "hook did not run to its end: {e}");
                return Err(format!("{path} did not run to its end: {e}"));
            }
        };
        for line in String::from_utf8_lossy(&output.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&output.stderr).lines())
        {
            tracing::info!(hook, "{line}");
        }
        if output.status.success() {
            tracing::info!(hook, %path, role = c.role, generation = %c.generation, "hook done");
            Ok(())
        } else {
            tracing::error!(hook, %path, role = c.role, "hook failed: {}", output.status);
            Err(format!("{path} failed ({})", output.status))
        }
    }
}

/// Runs `cmd` to its end within `timeout`; past it, the process is killed.
async fn output_within(cmd: &mut tokio::process::Command, timeout: Duration) -> std::io::Result<std::process::Output> {
    match tokio::time::timeout(timeout, cmd.output()).await {
        Ok(r) => r,
        // Dropping the future kills the process (kill_on_drop).
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("killed after {timeout:?} (hooks.timeout_s)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PgRole::*;

    #[tokio::test]
    async fn a_hook_past_its_timeout_is_killed() {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", "echo started; exec sleep 30"]).kill_on_drop(true);
        let t = std::time::Instant::now();
        let e = output_within(&mut cmd, Duration::from_millis(300)).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("hooks.timeout_s"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10), "it did not wait for the hook");
    }

    #[test]
    fn every_role_change_calls_the_right_hook() {
        let all = [NoData, Stopped, Primary, Standby, Unknown];
        for before in all {
            for now in all {
                let got = transition(Some(before), now);
                let running = |r: PgRole| matches!(r, Primary | Standby);
                let want = if before == Unknown || now == Unknown || before == now {
                    None
                } else if !running(before) && running(now) {
                    Some("on_start")
                } else if running(before) && !running(now) {
                    Some("on_stop")
                } else if running(before) && running(now) {
                    Some("on_role_change")
                } else {
                    None
                };
                assert_eq!(got.map(|g| g.0), want, "{before:?} -> {now:?}");
            }
        }
        assert_eq!(transition(Some(Standby), Primary), Some(("on_role_change", "primary")));
        assert_eq!(transition(Some(Stopped), Standby), Some(("on_start", "standby")));
        assert_eq!(transition(None, Primary), None, "the first observation starts nothing");
    }
}
