//! The fence keeper: a small separate process (`raftpg fence-keeper`) that
//! fences PostgreSQL when the primary's lease runs out, even if raftpg itself is
//! frozen (SIGSTOP) or killed. raftpg writes the lease expiry, as a
//! CLOCK_MONOTONIC time shared by all processes of the machine, to a file; the
//! keeper reads it every 20 ms and stops the postmaster (SIGQUIT: immediate
//! shutdown, then SIGKILL) once it has passed. "0" means disarmed (not the
//! primary, or paused). When raftpg is gone the keeper fences a lease that is
//! still armed once it expires, then exits.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::time::{clock_gettime, ClockId};
use nix::unistd::getppid;

const POLL: Duration = Duration::from_millis(20);

/// Now on CLOCK_MONOTONIC, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always available");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// raftpg's side: the running keeper and its lease file.
pub struct Keeper {
    file: PathBuf,
    child: std::process::Child,
    written: Option<u64>,
}

impl Keeper {
    pub fn spawn(lease_file: &Path, data_dir: &Path) -> anyhow::Result<Keeper> {
        let mut k = Keeper {
            file: lease_file.to_path_buf(),
            child: std::process::Command::new(std::env::current_exe()?)
                .arg("fence-keeper")
                .arg("--lease-file")
                .arg(lease_file)
                .arg("--data-dir")
                .arg(data_dir)
                .stdin(std::process::Stdio::null())
                .spawn()?,
            written: None,
        };
        k.write(0)?;
        Ok(k)
    }

    /// Arms the keeper until `expiry` (a tokio instant of this process), or disarms it.
    pub fn set(&mut self, expiry: Option<tokio::time::Instant>) {
        let ns = expiry.map_or(0, |e| {
            let left = e.saturating_duration_since(tokio::time::Instant::now());
            (monotonic_ns() + left.as_nanos() as u64).max(1)
        });
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
        std::fs::write(&tmp, format!("{ns}\n"))?;
        std::fs::rename(&tmp, &self.file)?;
        self.written = Some(ns);
        Ok(())
    }

    /// Disarms and stops the keeper (clean shutdown of raftpg).
    pub fn stop(mut self) {
        let _ = self.write(0);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The keeper process's main loop.
pub fn run(lease_file: &Path, data_dir: &Path) {
    let parent = getppid();
    let mut fenced_for = 0;
    loop {
        let expiry: u64 = std::fs::read_to_string(lease_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let now = monotonic_ns();
        if expiry != 0 && now >= expiry && expiry != fenced_for {
            fenced_for = expiry;
            fence(data_dir);
        }
        if getppid() != parent && (expiry == 0 || now >= expiry) {
            return;
        }
        std::thread::sleep(POLL);
    }
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
