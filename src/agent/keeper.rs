//! The fence keeper: a small separate process (`raftpg fence-keeper`) that
//! fences PostgreSQL when the primary's lease runs out, even if raftpg itself is
//! frozen (SIGSTOP), killed, or restarting. raftpg writes the lease expiry, as a
//! CLOCK_MONOTONIC time shared by all processes of the machine, to a file; the
//! keeper reads it when that time comes (and at least every 100 ms, to see a new
//! owner, a disarm or its parent gone) and stops the postmaster (SIGQUIT: immediate
//! shutdown, then SIGKILL) once it has passed. "0" means disarmed (not the
//! primary, or paused).
//!
//! The file reads `EXPIRY OWNER BOOT`: the owner is the pid of the keeper in charge,
//! BOOT the kernel's boot id (CLOCK_MONOTONIC restarts at boot, so an expiry written
//! before a reboot means nothing after it). A raftpg that starts (after an upgrade, a crash or a restart) keeps an
//! expiry it finds still ahead, so a lease granted to the process before it stays
//! guarded until it ends or the new process renews it; the keeper it then starts
//! takes over, and the previous keeper exits when it sees another owner. When
//! raftpg is gone and nobody took over, the keeper fences a lease that is still
//! armed once it expires, then exits.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::time::{clock_gettime, ClockId};
use nix::unistd::getppid;

/// The longest sleep between two reads of the lease file. Renewals only move the expiry
/// later, so the keeper wakes at the expiry it read; this bounds how late it sees an
/// expiry moved earlier (a new lease acquired right after another), a new owner, or a
/// parent gone. An idle keeper then wakes 10 times a second, not 50.
const MAX_SLEEP: Duration = Duration::from_millis(100);

/// Now on CLOCK_MONOTONIC, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always available");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// The kernel's id of this boot, if it can be read.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && !s.contains(char::is_whitespace))
}

/// The lease file's content: the expiry (0: disarmed), the keeper in charge and the
/// boot it was written in, when named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseFile {
    pub expiry_ns: u64,
    pub owner: Option<u32>,
    pub boot: Option<String>,
}

impl LeaseFile {
    pub fn parse(text: &str) -> LeaseFile {
        let mut words = text.split_whitespace();
        LeaseFile {
            expiry_ns: words.next().and_then(|w| w.parse().ok()).unwrap_or(0),
            owner: words.next().and_then(|w| w.parse().ok()),
            boot: words.next().map(str::to_string),
        }
    }

    pub fn read(path: &Path) -> LeaseFile {
        LeaseFile::parse(&std::fs::read_to_string(path).unwrap_or_default())
    }

    fn render(&self) -> String {
        let mut out = self.expiry_ns.to_string();
        if let Some(o) = self.owner {
            out += &format!(" {o}");
            if let Some(b) = &self.boot {
                out += &format!(" {b}");
            }
        }
        out + "\n"
    }
}

/// What a new raftpg keeps from the lease file it finds: any expiry written in this boot
/// (`boot`), even one already past, so that its keeper fences at once a PostgreSQL the old
/// keeper may not have fenced before it saw the new owner; nothing from a file that does
/// not say which boot (CLOCK_MONOTONIC restarts at boot).
pub fn inherited_expiry(found: &LeaseFile, boot: Option<&str>) -> Option<u64> {
    let same_boot = boot.is_some() && found.boot.as_deref() == boot;
    (same_boot && found.expiry_ns > 0).then_some(found.expiry_ns)
}

/// The inherited expiry stands, even once over, until this raftpg holds a lease of its own
/// at least as long, or the cluster is paused.
pub fn still_inherited(inherited_ns: Option<u64>, own_ns: Option<u64>, paused: bool) -> Option<u64> {
    let superseded = inherited_ns.is_some_and(|i| own_ns.is_some_and(|o| o >= i));
    inherited_ns.filter(|_| !paused && !superseded)
}

/// What the keeper writes: the later of its own lease and the inherited one, even once
/// that is over (the keeper fences when it sees an expiry passed; dropping it first would
/// leave a PostgreSQL without a lease unguarded); nothing while the cluster is paused.
pub fn armed_until(own_ns: Option<u64>, inherited_ns: Option<u64>, paused: bool) -> u64 {
    if paused {
        return 0;
    }
    own_ns.into_iter().chain(inherited_ns).max().unwrap_or(0)
}

/// raftpg's side: the running keeper and its lease file.
pub struct Keeper {
    file: PathBuf,
    child: std::process::Child,
    written: Option<u64>,
    /// A lease granted to an earlier raftpg on this machine, still guarded.
    inherited: Option<u64>,
    boot: Option<String>,
}

impl Keeper {
    pub fn spawn(
        lease_file: &Path,
        data_dir: &Path,
        vip: Option<&crate::agent::vip::VipSection>,
    ) -> anyhow::Result<Keeper> {
        let found = LeaseFile::read(lease_file);
        let boot = boot_id();
        let inherited = inherited_expiry(&found, boot.as_deref());
        if let Some(e) = inherited {
            tracing::info!(
                "an earlier raftpg left a lease armed for {} ms more: PostgreSQL stays guarded until I renew it",
                e.saturating_sub(monotonic_ns()) / 1_000_000
            );
        }
        let mut cmd = std::process::Command::new(std::env::current_exe()?);
        cmd.arg("fence-keeper")
            .arg("--lease-file")
            .arg(lease_file)
            .arg("--data-dir")
            .arg(data_dir)
            .stdin(std::process::Stdio::null());
        if let Some(v) = vip {
            cmd.args(["--vip-address", &v.address, "--vip-interface", &v.interface]);
        }
        let mut k = Keeper {
            file: lease_file.to_path_buf(),
            child: cmd.spawn()?,
            written: None,
            inherited,
            boot,
        };
        k.write(inherited.unwrap_or(0))?;
        if let Some(old) = found.owner.filter(|o| *o != k.child.id()) {
            reap_in_background(old);
        }
        Ok(k)
    }

    /// Arms the keeper until `expiry` (a tokio instant of this process), or disarms it.
    pub fn set(&mut self, expiry: Option<tokio::time::Instant>, paused: bool) {
        let now = monotonic_ns();
        let own = expiry.map(|e| {
            let left = e.saturating_duration_since(tokio::time::Instant::now());
            (now + left.as_nanos() as u64).max(1)
        });
        self.inherited = still_inherited(self.inherited, own, paused);
        let ns = armed_until(own, self.inherited, paused);
        // Renewals move the expiry by whole intervals; sub-millisecond jitter is not worth a write.
        if self
            .written
            .is_some_and(|w| w.abs_diff(ns) < 1_000_000 && (w == 0) == (ns == 0))
        {
            return;
        }
        if let Err(e) = self.write(ns) {
            tracing::error!(
                "cannot update the fence keeper's lease file {}: {e}",
                self.file.display()
            );
        }
    }

    fn write(&mut self, ns: u64) -> std::io::Result<()> {
        let tmp = self.file.with_extension("tmp");
        let content = LeaseFile {
            expiry_ns: ns,
            owner: Some(self.child.id()),
            boot: self.boot.clone(),
        };
        std::fs::write(&tmp, content.render())?;
        std::fs::rename(&tmp, &self.file)?;
        self.written = Some(ns);
        Ok(())
    }

    /// Disarms and stops the keeper (clean shutdown of raftpg, PostgreSQL stopped).
    pub fn stop(mut self) {
        let _ = self.write(0);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Leaves the keeper running and armed (raftpg restarts, PostgreSQL keeps running):
    /// it fences a lease that the next raftpg does not renew in time.
    pub fn leave_armed(self) {
        tracing::info!(
            "the fence keeper (pid {}) keeps guarding PostgreSQL until the next raftpg renews the lease",
            self.child.id()
        );
    }
}

/// Collects the exit status of an earlier keeper that was this process's child (after
/// a re-exec in place), so that it does not stay a zombie; anyone else's is not ours.
fn reap_in_background(pid: u32) {
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    std::thread::spawn(move || {
        let _ = nix::sys::wait::waitpid(pid, None);
    });
}

/// The keeper process's main loop.
pub fn run(lease_file: &Path, data_dir: &Path, vip: Option<&crate::agent::vip::VipSection>) {
    let parent = getppid();
    let me = std::process::id();
    let mut in_charge = false;
    let mut fenced_for = 0;
    loop {
        let file = LeaseFile::read(lease_file);
        match file.owner {
            Some(o) if o == me => in_charge = true,
            // A keeper started by a newer raftpg took over this lease file.
            Some(_) if in_charge => return,
            _ => {}
        }
        let expiry = file.expiry_ns;
        let now = monotonic_ns();
        if expiry != 0 && now >= expiry && expiry != fenced_for {
            fenced_for = expiry;
            // The floating IP first: it must be gone before another node may take it.
            if let Some(v) = vip {
                crate::agent::vip::release_now(v);
            }
            fence(data_dir);
        }
        if getppid() != parent && (expiry == 0 || now >= expiry) {
            return;
        }
        std::thread::sleep(until_next_read(expiry, now));
    }
}

/// How long the keeper sleeps before it reads the lease file again: until the expiry it
/// read, at most `MAX_SLEEP`. Disarmed, or past the expiry (fenced already: a frozen raftpg
/// leaves that expiry in the file until it runs again), there is nothing to wait for.
fn until_next_read(expiry_ns: u64, now_ns: u64) -> Duration {
    if expiry_ns == 0 || expiry_ns <= now_ns {
        return MAX_SLEEP;
    }
    Duration::from_nanos(expiry_ns - now_ns).clamp(Duration::from_millis(1), MAX_SLEEP)
}

fn fence(data_dir: &Path) {
    use crate::postgres::kill::{stop_now, Stopped, FENCE_GRACE};
    match stop_now(data_dir, FENCE_GRACE) {
        Stopped::NotRunning => {}
        Stopped::Immediate => {
            eprintln!("raftpg fence-keeper: lease expired without renewal: stopped PostgreSQL (immediate shutdown)")
        }
        Stopped::Killed { processes } => eprintln!(
            "raftpg fence-keeper: lease expired without renewal and PostgreSQL did not stop on SIGQUIT: killed {processes} processes"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(expiry_ns: u64, owner: Option<u32>, boot: Option<&str>) -> LeaseFile {
        LeaseFile {
            expiry_ns,
            owner,
            boot: boot.map(String::from),
        }
    }

    #[test]
    fn the_keeper_wakes_at_the_expiry_and_at_least_every_max_sleep() {
        const MS: u64 = 1_000_000;
        assert_eq!(until_next_read(0, 5 * MS), MAX_SLEEP);
        assert_eq!(until_next_read(5_030 * MS, 5_000 * MS), Duration::from_millis(30));
        assert_eq!(until_next_read(9_000 * MS, 5_000 * MS), MAX_SLEEP);
        // Passed: fenced in this round already; a frozen raftpg does not make it spin.
        assert_eq!(until_next_read(4_000 * MS, 5_000 * MS), MAX_SLEEP);
        assert_eq!(until_next_read(5_000 * MS, 5_000 * MS), MAX_SLEEP);
        assert_eq!(until_next_read(5_000 * MS + 10, 5_000 * MS), Duration::from_millis(1));
    }

    #[test]
    fn the_lease_file_reads_with_or_without_an_owner_and_a_boot() {
        assert_eq!(LeaseFile::parse("123 45 b-1\n"), file(123, Some(45), Some("b-1")));
        assert_eq!(LeaseFile::parse("123 45\n"), file(123, Some(45), None));
        assert_eq!(LeaseFile::parse("123\n"), file(123, None, None));
        assert_eq!(LeaseFile::parse(""), file(0, None, None));
        assert_eq!(LeaseFile::parse("garbage").expiry_ns, 0);
        for f in [
            file(9, Some(7), Some("b-1")),
            file(9, Some(7), None),
            file(0, None, None),
        ] {
            assert_eq!(LeaseFile::parse(&f.render()), f);
        }
    }

    #[test]
    fn any_lease_of_this_boot_is_inherited_even_one_that_ran_out() {
        let this = Some("b-1");
        let at = |e| file(e, Some(1), this);
        assert_eq!(inherited_expiry(&at(0), this), None, "disarmed");
        // Found by the simulation (seed 2509): a lease that ran out while raftpg restarted
        // was dropped, and the PostgreSQL it guarded ran on as primary during a failover.
        assert_eq!(inherited_expiry(&at(99), this), Some(99));
        assert_eq!(inherited_expiry(&at(101), this), Some(101));
        // CLOCK_MONOTONIC restarted at boot: an expiry from another boot means nothing.
        assert_eq!(inherited_expiry(&file(101, Some(1), Some("b-0")), this), None);
        assert_eq!(inherited_expiry(&file(101, Some(1), None), this), None);
        assert_eq!(inherited_expiry(&at(101), None), None);
    }

    #[test]
    fn this_boot_has_an_id() {
        assert!(boot_id().is_some_and(|b| b.len() >= 16), "{:?}", boot_id());
    }

    #[test]
    fn the_keeper_is_armed_until_the_later_of_both_leases_unless_paused() {
        for own in [None, Some(500), Some(1_500), Some(3_000)] {
            for inherited in [None, Some(900), Some(1_000), Some(2_000)] {
                let armed = armed_until(own, inherited, false);
                // Never shorter than either lease, even one already over: the keeper
                // fences when it sees an expiry passed.
                assert!(own.is_none_or(|o| armed >= o), "{own:?} {inherited:?}");
                assert!(inherited.is_none_or(|i| armed >= i), "{own:?} {inherited:?}");
                // Never longer than what was granted.
                assert!(armed == 0 || Some(armed) == own || Some(armed) == inherited);
                assert_eq!(armed == 0, own.is_none() && inherited.is_none());
                assert_eq!(armed_until(own, inherited, true), 0);
            }
        }
    }
}
