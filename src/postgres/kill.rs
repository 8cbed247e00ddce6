//! Stopping a PostgreSQL instance at once, even a frozen one.
//!
//! Fencing must end within the lease's margin (`lease::MARGIN_MS` plus the drift
//! allowance), also when the postmaster or its backends are stopped (SIGSTOP), hung,
//! or the postmaster alone is frozen while its backends still serve clients. An
//! immediate shutdown (SIGQUIT, what `pg_ctl stop -m immediate` sends) is tried first;
//! whatever is still alive after `grace` is killed with SIGKILL, the backends before
//! the postmaster (once the postmaster is gone they are re-parented and can no longer
//! be found). SIGKILL ends a stopped process too.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::read_postmaster_pid;

/// How long a fenced instance gets to shut down on SIGQUIT before it is killed. The
/// controller's deadline leaves `lease * drift + MARGIN_MS` (400 ms by default) past the
/// holder's expiry, and a healthy immediate shutdown takes a few tens of milliseconds.
pub const FENCE_GRACE: Duration = Duration::from_millis(150);
const POLL: Duration = Duration::from_millis(5);
/// How long a SIGKILLed process may take to disappear before we stop waiting.
const KILL_WAIT: Duration = Duration::from_secs(1);

/// How an instance was stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// No postmaster ran.
    NotRunning,
    /// It shut down on SIGQUIT within the grace period.
    Immediate,
    /// It did not: the postmaster and `n` of its processes were SIGKILLed.
    Killed { processes: usize },
}

/// Stops the instance of `data_dir` now: SIGQUIT, then SIGKILL for everything
/// still alive after `grace`. Blocking; returns once the postmaster is gone (or
/// after `KILL_WAIT` more, if the kernel is slow to reap it).
pub fn stop_now(data_dir: &Path, grace: Duration) -> Stopped {
    let Some(pid) = read_postmaster_pid(data_dir).map(Pid::from_raw) else {
        return Stopped::NotRunning;
    };
    // postmaster.pid is written by the PostgreSQL user: as root, signal only a process
    // of the user that owns the data directory, never the pid it would like killed.
    let Some(owner) = uid_of(data_dir) else {
        return Stopped::NotRunning;
    };
    if process_uid(pid) != Some(owner) {
        tracing::warn!(
            %pid, data_dir = %data_dir.display(),
            "postmaster.pid names a process that does not belong to the data directory's owner: not signalled"
        );
        return Stopped::NotRunning;
    }
    if kill(pid, Signal::SIGQUIT).is_err() {
        return Stopped::NotRunning;
    }
    if wait_gone(pid, grace) {
        return Stopped::Immediate;
    }
    let children: Vec<Pid> = children_of(pid)
        .into_iter()
        .filter(|c| process_uid(*c) == Some(owner))
        .collect();
    for c in &children {
        let _ = kill(*c, Signal::SIGKILL);
    }
    let _ = kill(pid, Signal::SIGKILL);
    // A killed postmaster leaves its lock file. Until whoever inherited it reaps it, a
    // zombie with that pid makes the next start believe it still runs ("Is another
    // postmaster running?"); a zombie holds no shared memory, so the lock goes now.
    if wait_gone(pid, KILL_WAIT) && read_postmaster_pid(data_dir) == Some(pid.as_raw()) {
        remove_locks(data_dir, pid);
    }
    Stopped::Killed {
        processes: children.len() + 1,
    }
}

/// Removes the lock files of the dead postmaster `pid`: `postmaster.pid`, and the Unix
/// socket's `.s.PGSQL.<port>.lock` it names (line 4: port, line 5: socket directory).
fn remove_locks(data_dir: &Path, pid: Pid) {
    let pid_file = data_dir.join("postmaster.pid");
    let text = std::fs::read_to_string(&pid_file).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    if let (Some(port), Some(dir)) = (lines.get(3), lines.get(4)) {
        let socket_lock = Path::new(dir.trim()).join(format!(".s.PGSQL.{}.lock", port.trim()));
        let names_pid = std::fs::read_to_string(&socket_lock)
            .is_ok_and(|l| l.lines().next().map(str::trim) == Some(pid.to_string().as_str()));
        if names_pid {
            let _ = std::fs::remove_file(socket_lock);
        }
    }
    let _ = std::fs::remove_file(pid_file);
}

/// Waits up to `within` for `pid` to exit (or become a zombie); true if it did.
fn wait_gone(pid: Pid, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if !alive(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// The owner of a file or directory (not following a final symlink).
fn uid_of(path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| m.uid())
}

/// The real user of process `pid`.
fn process_uid(pid: Pid) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}")).ok().map(|m| m.uid())
}

/// Running (stopped counts) and not a zombie.
pub fn alive(pid: Pid) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat_fields(&stat).is_some_and(|(state, _)| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// The parent of process `pid`, while it runs.
pub fn parent_of(pid: Pid) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_fields(&stat).map(|(_, ppid)| ppid)
}

/// (state, parent pid) from the text of `/proc/PID/stat`; the command name may hold
/// spaces and parentheses, so fields are counted from the last ')'.
fn stat_fields(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Every process whose parent is `parent`.
fn children_of(parent: Pid) -> Vec<Pid> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| stat_fields(&s))
                .is_some_and(|(_, ppid)| ppid == parent.as_raw())
        })
        .map(Pid::from_raw)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_file_naming_another_users_process_is_not_signalled() {
        // As root, a data directory owned by an unprivileged user whose postmaster.pid
        // names a root process (pid 1 in an attack; a root child here).
        if !nix::unistd::Uid::effective().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut victim = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let pid = victim.id();
        std::fs::write(dir.path().join("postmaster.pid"), format!("{pid}\n")).unwrap();
        std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
        assert_eq!(stop_now(dir.path(), Duration::from_millis(50)), Stopped::NotRunning);
        assert!(alive(Pid::from_raw(pid as i32)), "the root process was not signalled");
        let _ = victim.kill();
        let _ = victim.wait();
    }

    #[test]
    fn stat_fields_survive_odd_command_names() {
        let stat = "4242 (postgres: n1: walsender (x) 127.0.0.1) T 4200 4200 4200 0 -1";
        assert_eq!(stat_fields(stat), Some(('T', 4200)));
        assert_eq!(stat_fields("garbage"), None);
    }

    #[test]
    fn a_stopped_process_and_its_children_are_killed() {
        // A stand-in postmaster: a shell with a child, both frozen; SIGQUIT cannot end them.
        let dir = tempfile::tempdir().unwrap();
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sleep 60 & wait"])
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(sh.id() as i32);
        let socket_lock = dir.path().join(".s.PGSQL.5432.lock");
        std::fs::write(&socket_lock, format!("{pid}\n")).unwrap();
        std::fs::write(
            dir.path().join("postmaster.pid"),
            format!("{pid}\n{0}\n0\n5432\n{0}\n", dir.path().display()),
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while children_of(pid).is_empty() {
            assert!(Instant::now() < deadline, "the child never started");
            std::thread::sleep(POLL);
        }
        let child = children_of(pid)[0];
        kill(child, Signal::SIGSTOP).unwrap();
        kill(pid, Signal::SIGSTOP).unwrap();
        // A signal takes effect when its target next runs: until both show as stopped a
        // SIGQUIT could still be taken first and end them.
        for p in [child, pid] {
            while stat_fields(&std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap()).map(|(state, _)| state)
                != Some('T')
            {
                assert!(Instant::now() < deadline, "{p} never stopped");
                std::thread::sleep(POLL);
            }
        }
        let stopped = stop_now(dir.path(), Duration::from_millis(100));
        assert_eq!(stopped, Stopped::Killed { processes: 2 });
        assert!(
            !dir.path().join("postmaster.pid").exists(),
            "the dead postmaster's lock file is gone"
        );
        assert!(!socket_lock.exists(), "and so is its socket's");
        let _ = sh.wait();
        // SIGKILL was sent; on a loaded machine the kernel may take a moment to end it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(child) {
            assert!(Instant::now() < deadline, "the frozen child outlived the fence");
            std::thread::sleep(POLL);
        }
    }

    #[test]
    fn no_pid_file_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(stop_now(dir.path(), Duration::from_millis(10)), Stopped::NotRunning);
    }
}
