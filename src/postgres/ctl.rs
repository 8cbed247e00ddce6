//! Running PostgreSQL's tools: initdb, pg_ctl, pg_basebackup, pg_rewind,
//! pg_controldata, each with a timeout.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::{PgBinaries, PgError, RunAs};
use crate::types::Timeline;

/// How often a promotion or a stop checks whether it is done (pg_ctl checks every 100 ms).
const POLL: Duration = Duration::from_millis(5);
/// `DBState` in `global/pg_control` is the `u32` after the system identifier (`u64`), the
/// control file's version and the catalog version (`u32` each), in the machine's byte
/// order: the layout of the file's head has not changed since PostgreSQL 8.x.
const CONTROL_STATE_OFFSET: usize = 16;
/// `DB_IN_PRODUCTION` in `DBState`: the value pg_ctl waits for after a promote.
const DB_IN_PRODUCTION: u32 = 6;

/// The cluster state recorded in the control file `path`, if it can be read.
pub fn control_state(path: &Path) -> Option<u32> {
    use std::io::Read;
    let mut head = [0u8; CONTROL_STATE_OFFSET + 4];
    std::fs::File::open(path).ok()?.read_exact(&mut head).ok()?;
    let state: [u8; 4] = head[CONTROL_STATE_OFFSET..].try_into().ok()?;
    Some(u32::from_ne_bytes(state))
}

/// How to stop the postmaster (pg_ctl's `-m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Wait for clients to disconnect.
    Smart,
    /// Disconnect clients, checkpoint, stop: the clean way.
    Fast,
    /// Stop at once, no checkpoint (crash recovery at next start). The fencing stop.
    Immediate,
}

impl StopMode {
    fn arg(self) -> &'static str {
        match self {
            StopMode::Smart => "smart",
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// One PostgreSQL instance on this machine.
#[derive(Clone, Debug)]
pub struct PgCtl {
    pub bins: PgBinaries,
    pub run_as: Option<RunAs>,
    pub data_dir: PathBuf,
    /// Directory of the Unix socket (`-k`), also where raftpg connects locally.
    pub socket_dir: PathBuf,
    pub listen_addresses: String,
    pub port: u16,
    /// Server log written by pg_ctl (`-l`).
    pub log_file: PathBuf,
    /// With PostgreSQL TLS: the cluster CA that the tools' connections verify servers with.
    pub ssl_root_cert: Option<PathBuf>,
}

impl PgCtl {
    /// initdb with data checksums (pg_rewind needs them or wal_log_hints).
    pub async fn initdb(&self, superuser: &str, timeout: Duration) -> Result<(), PgError> {
        let mut cmd = self.command("initdb");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["--data-checksums", "--encoding=UTF8", "--no-instructions"])
            .arg(format!("--username={superuser}"))
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"]);
        self.run("initdb", cmd, timeout).await.map(|_| ())
    }

    /// Starts the postmaster and waits until it accepts connections.
    pub async fn start(&self, timeout: Duration) -> Result<(), PgError> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses='{}'",
            self.port,
            self.socket_dir.display(),
            self.listen_addresses
        );
        let mut cmd = self.command("pg_ctl");
        cmd.arg("start")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_file)
            .args(["-w", "-t", &timeout.as_secs().max(1).to_string(), "-o", &opts]);
        match self.run("pg_ctl start", cmd, timeout + Duration::from_secs(5)).await {
            Ok(_) => Ok(()),
            Err(PgError::Failed { what, status, .. }) => Err(PgError::Failed {
                what,
                status,
                output: format!("server log {}: {}", self.log_file.display(), self.log_tail(3)),
            }),
            Err(e) => Err(e),
        }
    }

    /// The last `n` lines of the server log, joined.
    pub fn log_tail(&self, n: usize) -> String {
        last_lines(&std::fs::read_to_string(&self.log_file).unwrap_or_default(), n)
    }

    /// Stops the postmaster in `mode` and waits for it to exit, as `pg_ctl stop -w` does (its
    /// pid file gone), but checking every `POLL` rather than every 100 ms: pg_ctl's
    /// polling cost a switchover 50 ms on average. `pg_ctl stop -W` signals the server and
    /// returns. A postmaster that exits without removing its pid file (it crashed during the
    /// stop) is an error, as with pg_ctl.
    pub async fn stop(&self, mode: StopMode, timeout: Duration) -> Result<(), PgError> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", mode.arg(), "-W"]);
        // One deadline for the signal and the wait: `timeout` bounds the whole stop.
        let deadline = tokio::time::Instant::now() + timeout;
        self.run("pg_ctl stop", cmd, timeout).await?;
        while let Some(pid) = self.postmaster_pid() {
            let gone = !super::kill::alive(nix::unistd::Pid::from_raw(pid));
            // The file may have gone between the two looks: that is a clean exit.
            if gone && self.postmaster_pid().is_some() {
                return Err(PgError::Failed {
                    what: "pg_ctl stop".into(),
                    status: "the postmaster exited during the stop and left postmaster.pid (it crashed)".into(),
                    output: self.log_tail(5),
                });
            }
            poll_again(deadline, timeout, "the stop (the postmaster did not exit)").await?;
        }
        Ok(())
    }

    /// Whether a postmaster runs on this data directory (pg_ctl status).
    pub async fn is_running(&self, timeout: Duration) -> Result<bool, PgError> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("status").arg("-D").arg(&self.data_dir);
        match self.run("pg_ctl status", cmd, timeout).await {
            Ok(_) => Ok(true),
            // 3: not running; 4: no accessible data directory.
            Err(PgError::Failed { status, .. }) if status.ends_with("3") || status.ends_with("4") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Re-reads the configuration files (`pg_ctl reload`).
    pub async fn reload(&self, timeout: Duration) -> Result<(), PgError> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("reload").arg("-D").arg(&self.data_dir).arg("-s");
        self.run("pg_ctl reload", cmd, timeout).await.map(|_| ())
    }

    /// Ends recovery and waits until the control file says "in production", as
    /// `pg_ctl promote -w` does, but checking every `POLL` rather than every 100 ms:
    /// a promotion takes a few tens of milliseconds, and pg_ctl's polling made it cost
    /// 130 ms of every failover. `pg_ctl promote -W` signals the server and returns.
    pub async fn promote(&self, timeout: Duration) -> Result<(), PgError> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("promote").arg("-D").arg(&self.data_dir).arg("-W");
        // One deadline for the signal and the wait: `timeout` bounds the whole promotion.
        let deadline = tokio::time::Instant::now() + timeout;
        self.run("pg_ctl promote", cmd, timeout).await?;
        let control = self.data_dir.join("global").join("pg_control");
        while control_state(&control) != Some(DB_IN_PRODUCTION) {
            // A startup process that fails ends the postmaster: say so at once rather than
            // wait out the timeout (finding 21 of docs/jepsen.md waited 60 s).
            if !self.postmaster_alive() {
                return Err(PgError::Failed {
                    what: "the promotion".into(),
                    status: "PostgreSQL stopped".into(),
                    output: self.log_tail(5),
                });
            }
            poll_again(
                deadline,
                timeout,
                "the promotion (pg_control never said \"in production\")",
            )
            .await?;
        }
        Ok(())
    }

    /// Clones the primary at `host:port` into the (empty) data directory. pg_basebackup's
    /// progress (`--progress`, a line a second) goes to `progress` as it comes.
    pub async fn basebackup(
        &self,
        host: &str,
        port: u16,
        user: &str,
        passfile: Option<&Path>,
        timeout: Duration,
        progress: &tokio::sync::watch::Sender<Option<CloneProgress>>,
    ) -> Result<(), PgError> {
        use tokio::io::AsyncReadExt;
        let mut cmd = self.command("pg_basebackup");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-h", host, "-p", &port.to_string(), "-U", user])
            .args(["-X", "stream", "-c", "fast", "--no-password", "--progress"]);
        if let Some(p) = passfile {
            cmd.env("PGPASSFILE", p);
        }
        let mut child = cmd.spawn()?;
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let read = async {
            // Lines end in '\n' (or '\r' on a terminal); the last ones are kept for an error.
            let mut text = String::new();
            let mut buf = [0u8; 4096];
            let mut line = Vec::new();
            loop {
                let n = stderr.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                for &b in &buf[..n] {
                    if b == b'\n' || b == b'\r' {
                        let l = String::from_utf8_lossy(&line).to_string();
                        if let Some(p) = CloneProgress::parse(&l) {
                            progress.send_replace(Some(p));
                        } else if !l.trim().is_empty() {
                            text.push_str(&l);
                            text.push('\n');
                        }
                        line.clear();
                    } else {
                        line.push(b);
                    }
                }
            }
            text.push_str(&String::from_utf8_lossy(&line));
            let status = child.wait().await?;
            Ok::<_, std::io::Error>((status, text))
        };
        let (status, text) = tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| PgError::Timeout {
                what: "pg_basebackup".into(),
                secs: timeout.as_secs(),
            })??;
        if status.success() {
            return Ok(());
        }
        Err(PgError::Failed {
            what: "pg_basebackup".into(),
            status: status
                .code()
                .map_or("killed by a signal".into(), |c| format!("exit status {c}")),
            output: last_lines(&text, 5),
        })
    }

    /// Rewinds the (stopped) data directory onto the timeline of `source` (libpq string).
    /// Returns pg_rewind's output ("no rewind required" when it had nothing to do). When
    /// `abandon` completes first, pg_rewind is killed and waited for, and the result is
    /// `PgError::Abandoned`: the data directory may then be part rewound.
    pub async fn rewind(
        &self,
        source: &str,
        passfile: Option<&Path>,
        timeout: Duration,
        abandon: impl std::future::Future<Output = ()>,
    ) -> Result<String, PgError> {
        let mut cmd = self.command("pg_rewind");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg(format!("--source-server={source}"))
            .arg("--no-sync");
        if let Some(p) = passfile {
            cmd.env("PGPASSFILE", p);
        }
        self.run_until("pg_rewind", cmd, timeout, abandon).await
    }

    /// What pg_controldata says about a data directory.
    pub async fn controldata(&self, timeout: Duration) -> Result<Controldata, PgError> {
        let mut cmd = self.command("pg_controldata");
        cmd.arg("-D").arg(&self.data_dir);
        let out = self.run("pg_controldata", cmd, timeout).await?;
        Ok(Controldata {
            from_backup: self.data_dir.join("backup_label").exists(),
            ..Controldata::parse(&out)
        })
    }

    /// Where the valid WAL in the (stopped) data directory's `pg_wal` ends, on the newest
    /// timeline it holds: `(lsn, timeline)`, read with pg_waldump. This is what a standby
    /// flushed, so what it can have acknowledged; `None` when no valid record was found.
    pub async fn wal_end(&self, seg_size: u64, timeout: Duration) -> Result<Option<(u64, Timeline)>, PgError> {
        let dir = self.data_dir.join("pg_wal");
        let mut segments: Vec<(u32, u64)> = std::fs::read_dir(&dir)?
            .filter_map(|e| segment_of(e.ok()?.file_name().to_str()?, seg_size))
            .collect();
        segments.sort_unstable();
        let Some(&(tli, newest)) = segments.last() else {
            return Ok(None);
        };
        // The newest files may be recycled ones, named ahead of the WAL: go back until
        // a segment holds a valid record, and read from there to the end.
        let deadline = tokio::time::Instant::now() + timeout;
        let last = dir.join(segment_name(tli, newest, seg_size));
        for &(_, segno) in segments.iter().rev().filter(|(t, _)| *t == tli).take(64) {
            let path = dir.join(segment_name(tli, segno, seg_size));
            let out = self.waldump(&path, &last, deadline, timeout).await?;
            if let Some(end) = last_record_end(&String::from_utf8_lossy(&out.stdout), seg_size) {
                return Ok(Some((end, Timeline(tli))));
            }
        }
        Ok(None)
    }

    /// `pg_wal/<TLI>.history`: timeline `tl`'s history file.
    pub fn history_path(&self, tl: Timeline) -> PathBuf {
        self.data_dir.join("pg_wal").join(format!("{:08X}.history", tl.0))
    }

    /// The timeline recovery with `recovery_target_timeline = 'latest'` goes to, starting
    /// from `from` (the last checkpoint's): the last of the timelines after it whose history
    /// files `pg_wal` holds without a gap, as PostgreSQL probes them.
    pub fn latest_timeline(&self, from: Timeline) -> Timeline {
        let mut tl = from;
        while self.history_path(tl.next()).exists() {
            tl = tl.next();
        }
        tl
    }

    /// Removes the history files without a single fork line (raftpg's placeholders, which
    /// `recorded_histories` writes for timelines whose forks it does not know) that
    /// recovery with `recovery_target_timeline = 'latest'` from `from` would target: it
    /// cannot read such a history, and PostgreSQL PANICs ("could not locate a valid
    /// checkpoint record"). A placeholder matters only to a promotion, which writes it
    /// again. From the top down, since recovery targets the last of an unbroken run; the
    /// removed paths.
    pub fn remove_placeholder_targets(&self, from: Timeline) -> Result<Vec<PathBuf>, PgError> {
        let mut removed = Vec::new();
        loop {
            let target = self.latest_timeline(from);
            if target <= from {
                break;
            }
            let path = self.history_path(target);
            if !crate::postgres::timeline_switches(&std::fs::read_to_string(&path)?).is_empty() {
                break;
            }
            std::fs::remove_file(&path)?;
            removed.push(path);
        }
        Ok(removed)
    }

    /// Sets right, before a standby starts, the segments where a timeline of `target`'s
    /// history forked and whose file recovery would read ends before that fork (finding 21
    /// of docs/jepsen.md; the rule and why it loses nothing: [`crate::decide::wal`]).
    /// Returns what it did, a line each.
    pub async fn repair_fork_segments(
        &self,
        target: Timeline,
        seg_size: u64,
        timeout: Duration,
    ) -> Result<Vec<String>, PgError> {
        use crate::decide::wal::{fork_segment_repair, spans};
        let dir = self.data_dir.join("pg_wal");
        if target <= Timeline::FIRST || seg_size == 0 {
            return Ok(Vec::new());
        }
        let Ok(text) = std::fs::read_to_string(self.history_path(target)) else {
            return Ok(Vec::new());
        };
        let chain = spans(&crate::postgres::timeline_switches(&text), target.0);
        let names: std::collections::HashSet<String> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        let mut forks: Vec<u64> = chain.iter().skip(1).map(|s| s.begin / seg_size).collect();
        forks.dedup();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut done = Vec::new();
        for segno in forks {
            let here: Vec<u32> = chain
                .iter()
                .rev()
                .filter(|s| s.begin / seg_size <= segno)
                .map(|s| s.timeline)
                .filter(|t| names.contains(&segment_name(*t, segno, seg_size)))
                .collect();
            let Some(&chosen) = here.first() else {
                continue;
            };
            // Most segments are read on from the file recovery chooses: read only that one.
            let files = async {
                let chosen_end = self.segment_end(chosen, segno, seg_size, deadline, timeout).await?;
                if fork_segment_repair(&chain, segno, seg_size, &[(chosen, chosen_end)]).is_none() {
                    return Ok(None);
                }
                let mut files = vec![(chosen, chosen_end)];
                for &t in &here[1..] {
                    files.push((t, self.segment_end(t, segno, seg_size, deadline, timeout).await?));
                }
                Ok::<_, PgError>(Some(files))
            };
            let files = match files.await {
                Ok(Some(files)) => files,
                Ok(None) => continue,
                Err(e) => {
                    done.push(format!(
                        "left the files of segment {} as they are: cannot read one: {e}",
                        segment_name(chosen, segno, seg_size)
                    ));
                    continue;
                }
            };
            let Some(repair) = fork_segment_repair(&chain, segno, seg_size, &files) else {
                done.push(format!(
                    "left {} as it is: it ends before timeline {chosen} begins, and a file recovery \
                     would read next holds WAL past its own timeline's end (pg_rewind's case)",
                    segment_name(chosen, segno, seg_size)
                ));
                continue;
            };
            let end_of = |t: u32| {
                files.iter().find(|f| f.0 == t).and_then(|f| f.1).map_or_else(
                    || "no valid record".to_string(),
                    |e| format!("WAL to {}", crate::types::Lsn(e)),
                )
            };
            if let Some((from, to)) = repair.copy {
                let (src, dst) = (
                    dir.join(segment_name(from, segno, seg_size)),
                    dir.join(segment_name(to, segno, seg_size)),
                );
                let tmp = dir.join(format!(".{}.raftpg-new", segment_name(to, segno, seg_size)));
                std::fs::copy(&src, &tmp)?;
                if let Some(u) = &self.run_as {
                    u.chown(&tmp)?;
                }
                std::fs::File::open(&tmp)?.sync_all()?;
                std::fs::rename(&tmp, &dst)?;
                done.push(format!(
                    "copied {} ({}) to {}, the file of the timeline where that WAL ends",
                    src.display(),
                    end_of(from),
                    dst.display()
                ));
            }
            for t in repair.remove {
                let path = dir.join(segment_name(t, segno, seg_size));
                std::fs::remove_file(&path)?;
                done.push(format!(
                    "removed {} ({}, before timeline {t} begins; a copy of older WAL that pg_wal keeps)",
                    path.display(),
                    end_of(t)
                ));
            }
            std::fs::File::open(&dir)?.sync_all()?;
        }
        Ok(done)
    }

    /// Where the valid WAL of timeline `tli`'s file of segment `segno` ends (read with
    /// pg_waldump, that file only); `None` when it surely holds no valid record. A file
    /// pg_waldump cannot read for another reason is an error, never "no valid record".
    async fn segment_end(
        &self,
        tli: u32,
        segno: u64,
        seg_size: u64,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<Option<u64>, PgError> {
        let path = self.data_dir.join("pg_wal").join(segment_name(tli, segno, seg_size));
        // A file the receiver created and never wrote: zeros, no page header at all.
        let mut head = [0u8; 40];
        {
            use std::io::Read as _;
            std::fs::File::open(&path)?.read_exact(&mut head)?;
        }
        if head.iter().all(|b| *b == 0) {
            return Ok(None);
        }
        let out = self.waldump(&path, &path, deadline, timeout).await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        match last_record_end(&stdout, seg_size) {
            Some(end) => Ok(Some(end)),
            None if stderr.contains("could not find a valid record") => Ok(None),
            None => Err(PgError::Failed {
                what: format!("pg_waldump of {}", path.display()),
                status: out.status.to_string(),
                output: last_lines(&stderr, 3),
            }),
        }
    }

    /// pg_waldump from the start of the WAL file at `start` to where its timeline's valid
    /// WAL ends, or the end of the file `end` names (of the same timeline, in the same
    /// directory). Given a file, pg_waldump takes the segment size from it; given only
    /// `pg_wal` (`-p`), it takes it from whichever file it lists first, and fails on every
    /// call while that one is a zero-filled file a receiver created (the 300 s tier's
    /// promote-laggard at 847f945).
    async fn waldump(
        &self,
        start: &Path,
        end: &Path,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<std::process::Output, PgError> {
        let mut cmd = self.command("pg_waldump");
        cmd.arg(start).arg(end);
        tokio::time::timeout_at(deadline, cmd.spawn()?.wait_with_output())
            .await
            .map_err(|_| PgError::Timeout {
                what: "pg_waldump".into(),
                secs: timeout.as_secs(),
            })?
            .map_err(PgError::from)
    }

    /// The newest timeline this database's WAL reaches: the highest of its segments' that
    /// PostgreSQL can recover to (timeline 1, or one whose history file is in `pg_wal`).
    /// `None` without a readable `pg_wal` or any segment.
    pub fn wal_timeline(&self) -> Option<Timeline> {
        let dir = self.data_dir.join("pg_wal");
        let names: Vec<String> = std::fs::read_dir(&dir)
            .ok()?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        newest_timeline(&names).map(Timeline)
    }

    /// The postmaster's pid from `postmaster.pid`, if the file exists.
    pub fn postmaster_pid(&self) -> Option<i32> {
        read_postmaster_pid(&self.data_dir)
    }

    /// Whether the postmaster named in postmaster.pid runs (a killed one that nobody has
    /// reaped yet, a zombie, does not).
    pub fn postmaster_alive(&self) -> bool {
        self.postmaster_pid()
            .is_some_and(|pid| crate::postgres::kill::alive(nix::unistd::Pid::from_raw(pid)))
    }

    /// Whether the data directory holds a database (PG_VERSION exists).
    pub fn has_data(&self) -> bool {
        self.data_dir.join("PG_VERSION").is_file()
    }

    fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(self.bins.tool(tool));
        // The caller's working directory may not be readable by the postgres user.
        cmd.current_dir("/")
            .env("LC_ALL", "C.UTF-8")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(u) = &self.run_as {
            // HOME too: libpq looks for ~/.postgresql/postgresql.crt, and root's home is
            // not the postgres user's to read (a TLS connection would fail on it).
            cmd.uid(u.uid)
                .gid(u.gid)
                .env("USER", &u.name)
                .env("HOME", &self.socket_dir);
        }
        if let Some(ca) = &self.ssl_root_cert {
            // pg_basebackup and pg_rewind connect over TLS and check the server's certificate.
            cmd.env("PGSSLMODE", "verify-ca").env("PGSSLROOTCERT", ca);
        }
        cmd
    }

    /// Runs a tool to completion within `timeout`; a timeout kills it.
    async fn run(&self, what: &str, cmd: Command, timeout: Duration) -> Result<String, PgError> {
        self.run_until(what, cmd, timeout, std::future::pending()).await
    }

    /// Runs a tool to completion within `timeout`, unless `abandon` completes first. A
    /// timeout or an abandon kills the tool and waits for it to exit, so that a tool that
    /// writes the data directory is gone before the caller acts on it again.
    async fn run_until(
        &self,
        what: &str,
        mut cmd: Command,
        timeout: Duration,
        abandon: impl std::future::Future<Output = ()>,
    ) -> Result<String, PgError> {
        use tokio::io::AsyncReadExt;
        // A group of its own, so that a kill reaches what the tool started: pg_rewind runs
        // a single-user postgres for crash recovery, which would go on writing PGDATA.
        // (`pg_ctl start`'s postmaster starts a session of its own anyway.)
        cmd.process_group(0);
        let mut child = cmd.spawn()?;
        let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
        let ended = {
            let finished = async {
                let (mut out, mut err) = (Vec::new(), Vec::new());
                let read_out = async {
                    if let Some(s) = stdout.as_mut() {
                        s.read_to_end(&mut out).await?;
                    }
                    std::io::Result::Ok(())
                };
                let read_err = async {
                    if let Some(s) = stderr.as_mut() {
                        s.read_to_end(&mut err).await?;
                    }
                    std::io::Result::Ok(())
                };
                let (o, e, status) = tokio::join!(read_out, read_err, child.wait());
                o?;
                e?;
                std::io::Result::Ok((status?, out, err))
            };
            tokio::select! {
                done = tokio::time::timeout(timeout, finished) => done.ok(),
                () = abandon => {
                    kill_tool(&mut child, what).await;
                    return Err(PgError::Abandoned { what: what.to_string() });
                }
            }
        };
        let Some(done) = ended else {
            kill_tool(&mut child, what).await;
            return Err(PgError::Timeout {
                what: what.to_string(),
                secs: timeout.as_secs(),
            });
        };
        let (status, out, err) = done?;
        let text = format!("{}{}", String::from_utf8_lossy(&out), String::from_utf8_lossy(&err));
        if status.success() {
            return Ok(text);
        }
        Err(PgError::Failed {
            what: what.to_string(),
            status: status
                .code()
                .map_or("killed by a signal".into(), |c| format!("exit status {c}")),
            output: last_lines(&text, 5),
        })
    }
}

/// Kills a tool's process group with SIGKILL and waits for the tool to exit, for at most
/// `KILL_WAIT`: a process in uninterruptible sleep (a hung disk) must not hold its caller.
async fn kill_tool(child: &mut tokio::process::Child, what: &str) {
    if let Some(pid) = child.id() {
        let group = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    }
    let _ = child.start_kill();
    if tokio::time::timeout(KILL_WAIT, child.wait()).await.is_err() {
        tracing::error!("{what} did not exit within {KILL_WAIT:?} of SIGKILL (a hung disk?); not waiting for it");
    }
}

/// How long a killed tool is waited for.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// One line of `pg_basebackup --progress`: `1234/56789 kB (2%), 0/1 tablespace`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloneProgress {
    pub done_kb: u64,
    pub total_kb: u64,
    pub percent: u32,
}

impl CloneProgress {
    pub fn parse(line: &str) -> Option<CloneProgress> {
        let line = line.trim();
        let (sizes, rest) = line.split_once(" kB (")?;
        let (done, total) = sizes.split_once('/')?;
        let percent = rest.split_once('%')?.0;
        Some(CloneProgress {
            done_kb: done.trim().parse().ok()?,
            total_kb: total.trim().parse().ok()?,
            percent: percent.trim().parse().ok()?,
        })
    }
}

impl std::fmt::Display for CloneProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}% ({} of {} MB)",
            self.percent,
            self.done_kb / 1024,
            self.total_kb.div_ceil(1024)
        )
    }
}

/// `(timeline, segment number)` of a WAL segment file name (24 hex digits).
/// Of the file names in `pg_wal`, the highest timeline with a segment that recovery can
/// target: 1, or one whose `%08X.history` is there too.
pub fn newest_timeline(names: &[String]) -> Option<u32> {
    names
        .iter()
        .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .filter_map(|n| u32::from_str_radix(&n[..8], 16).ok())
        .filter(|tl| *tl == 1 || names.iter().any(|n| *n == format!("{tl:08X}.history")))
        .max()
}

/// The name of timeline `tli`'s file of segment `segno` (the inverse of [`segment_of`]).
pub fn segment_name(tli: u32, segno: u64, seg_size: u64) -> String {
    let per_id = 0x1_0000_0000 / seg_size.max(1);
    format!("{tli:08X}{:08X}{:08X}", segno / per_id, segno % per_id)
}

pub fn segment_of(name: &str, seg_size: u64) -> Option<(u32, u64)> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) || seg_size == 0 {
        return None;
    }
    let tli = u32::from_str_radix(&name[..8], 16).ok()?;
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..], 16).ok()?;
    Some((tli, log * (0x1_0000_0000 / seg_size) + seg))
}

/// Where the last record pg_waldump printed ends (its next record would start there):
/// its start plus its total length, the page headers it crosses, aligned to 8 bytes. A WAL
/// switch record (`pg_switch_wal`, `archive_timeout`, a base backup's start) ends, as
/// PostgreSQL counts it, at the end of its segment: a standby that replayed one last has
/// its minimum recovery point there.
pub fn last_record_end(waldump: &str, seg_size: u64) -> Option<u64> {
    let (start, len, switch) = waldump.lines().rev().find_map(|l| {
        let len = l.split("len (rec/tot):").nth(1)?.split(',').next()?;
        let len: u64 = len.split('/').nth(1)?.trim().parse().ok()?;
        let at = l.split(" lsn: ").nth(1)?.split(',').next()?;
        let switch = l.trim_start().starts_with("rmgr: XLOG") && l.contains("desc: SWITCH");
        Some((crate::postgres::parse_lsn(at.trim())?, len, switch))
    })?;
    let end = record_end(start, len, seg_size);
    Some(match switch {
        true if seg_size > 0 && end % seg_size != 0 => (end / seg_size + 1) * seg_size,
        _ => end,
    })
}

/// The end of a WAL record of `len` bytes starting at `start` (XLOG_BLCKSZ pages, a
/// short page header on each page, a long one on the first page of a segment).
pub fn record_end(start: u64, len: u64, seg_size: u64) -> u64 {
    const PAGE: u64 = 8192;
    const SHORT_HEADER: u64 = 24;
    const LONG_HEADER: u64 = 40;
    let (mut pos, mut left) = (start, len);
    loop {
        let page_end = (pos / PAGE + 1) * PAGE;
        if left <= page_end - pos {
            pos += left;
            break;
        }
        left -= page_end - pos;
        let header = if seg_size > 0 && page_end % seg_size == 0 {
            LONG_HEADER
        } else {
            SHORT_HEADER
        };
        pos = page_end + header;
    }
    (pos + 7) & !7
}

/// The last `n` lines of `text`, joined with " / " (for one-line error messages).
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().rev().take(n).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" / ")
}

/// Waits one `POLL` before the next look at whether `what` is done, or fails once
/// `deadline`, `timeout` after the start, has passed.
async fn poll_again(deadline: tokio::time::Instant, timeout: Duration, what: &str) -> Result<(), PgError> {
    if tokio::time::Instant::now() >= deadline {
        return Err(PgError::Timeout {
            what: what.into(),
            secs: timeout.as_secs(),
        });
    }
    tokio::time::sleep(POLL).await;
    Ok(())
}

/// The postmaster's pid from `data_dir/postmaster.pid`. Never 0 or 1, which a signal
/// would turn into "the whole process group" or init.
pub fn read_postmaster_pid(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok().filter(|p| *p > 1)
}

/// pg_controldata's "Database cluster state".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DbState {
    /// The field was missing.
    #[default]
    Unknown,
    StartingUp,
    /// A primary's clean shutdown.
    ShutDown,
    /// A standby's clean shutdown.
    ShutDownInRecovery,
    ShuttingDown,
    InCrashRecovery,
    InArchiveRecovery,
    InProduction,
    /// A state this version of raftpg does not know, as printed.
    Other(String),
}

impl DbState {
    const NAMED: [(DbState, &'static str); 7] = [
        (DbState::StartingUp, "starting up"),
        (DbState::ShutDown, "shut down"),
        (DbState::ShutDownInRecovery, "shut down in recovery"),
        (DbState::ShuttingDown, "shutting down"),
        (DbState::InCrashRecovery, "in crash recovery"),
        (DbState::InArchiveRecovery, "in archive recovery"),
        (DbState::InProduction, "in production"),
    ];

    /// As pg_controldata prints it.
    pub fn parse(text: &str) -> DbState {
        let text = text.trim();
        if text.is_empty() {
            return DbState::Unknown;
        }
        DbState::NAMED
            .into_iter()
            .find(|(_, name)| *name == text)
            .map_or_else(|| DbState::Other(text.to_string()), |(s, _)| s)
    }
}

impl From<&str> for DbState {
    fn from(text: &str) -> DbState {
        DbState::parse(text)
    }
}

impl std::fmt::Display for DbState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbState::Unknown => f.write_str("unknown"),
            DbState::Other(text) => f.write_str(text),
            named => {
                let name = DbState::NAMED.iter().find(|(s, _)| s == named).map_or("", |(_, n)| *n);
                f.write_str(name)
            }
        }
    }
}

/// The fields of pg_controldata raftpg decides on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Controldata {
    pub state: DbState,
    pub timeline: Option<Timeline>,
    pub system_identifier: Option<u64>,
    /// Start of the latest checkpoint record (after a clean shutdown: the last record).
    pub checkpoint_lsn: Option<u64>,
    /// "Bytes per WAL segment".
    pub wal_segment_size: Option<u64>,
    /// PGDATA holds a `backup_label`: a base backup (pg_basebackup, or pg_rewind's output)
    /// that has not started yet. Its control file still says what the source's did ("in
    /// production" for a clone of a primary), yet it is a standby to be: started without a
    /// signal file (pg_rewind's single-user crash recovery does that), it would end
    /// recovery and write WAL of its own on the source's timeline, where the source's WAL
    /// differs, and pg_rewind would then find "no rewind required" (the 300 s tier,
    /// zombie-straddle, seed 662009: a member re-cloned just as the generation moved,
    /// then streamed over its own checkpoint record and could never start again).
    pub from_backup: bool,
    /// "Minimum recovery ending location" and its timeline: recovery must replay at least
    /// this far before the database is consistent (pg_rewind sets it to its source's
    /// position at the end of the copy). `Some(0)` when there is none.
    pub min_recovery: Option<u64>,
    pub min_recovery_timeline: Option<Timeline>,
    /// "Backup end location": a base backup, or pg_rewind's output, is consistent only once
    /// recovery has replayed this far. `Some(0)` when there is none.
    pub backup_end: Option<u64>,
}

impl Controldata {
    pub fn parse(text: &str) -> Controldata {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim_start_matches(':').trim().to_string())
        };
        Controldata {
            state: DbState::parse(&field("Database cluster state").unwrap_or_default()),
            timeline: field("Latest checkpoint's TimeLineID").and_then(|v| v.parse().ok()),
            system_identifier: field("Database system identifier").and_then(|v| v.parse().ok()),
            checkpoint_lsn: field("Latest checkpoint location").and_then(|v| crate::postgres::parse_lsn(&v)),
            wal_segment_size: field("Bytes per WAL segment").and_then(|v| v.parse().ok()),
            from_backup: false,
            min_recovery: field("Minimum recovery ending location").and_then(|v| crate::postgres::parse_lsn(&v)),
            min_recovery_timeline: field("Min recovery ending loc's timeline").and_then(|v| v.parse().ok()),
            backup_end: field("Backup end location").and_then(|v| crate::postgres::parse_lsn(&v)),
        }
    }

    /// Where recovery must reach before this stopped database is consistent, when its own
    /// WAL, ending at `wal_end` (`(lsn, timeline)`), does not reach it: started, it would
    /// wait for WAL from another member and could not be promoted. Only on positive
    /// evidence: a position unknown is not short. A standby's minimum recovery point never
    /// passes the WAL it flushed; pg_rewind's output does when its source moved on during
    /// the copy (finding 17 of docs/jepsen.md: n3 needed 0/486F750 and held 0/486DA68).
    ///
    /// Positions compare only on the point's own timeline: WAL on disk that ends on an older
    /// one cannot reach it; WAL that ends on a newer one (a standby that began to receive
    /// the next timeline from the start of a segment, then stopped) says nothing of it.
    pub fn short_of(&self, (end, timeline): (u64, Timeline)) -> Option<u64> {
        let need = self.min_recovery.unwrap_or(0).max(self.backup_end.unwrap_or(0));
        if need == 0 {
            return None;
        }
        let point_timeline = self
            .min_recovery_timeline
            .filter(|_| self.min_recovery.unwrap_or(0) > 0);
        let short = match point_timeline {
            Some(t) if t > timeline => true,
            Some(t) if t < timeline => false,
            _ => need > end,
        };
        short.then_some(need)
    }

    /// The server was shut down cleanly as a primary: its WAL ends with the shutdown checkpoint.
    pub fn clean_primary_shutdown(&self) -> bool {
        self.state == DbState::ShutDown
    }

    /// The server was last a primary, stopped cleanly or not.
    pub fn was_primary(&self) -> bool {
        !self.from_backup && matches!(self.state, DbState::ShutDown | DbState::InProduction)
    }

    /// The server was last a standby (stopped cleanly or not while in recovery). A primary
    /// that crashed during crash recovery says "in crash recovery": not a standby.
    pub fn was_standby(&self) -> bool {
        self.from_backup || matches!(self.state, DbState::ShutDownInRecovery | DbState::InArchiveRecovery)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_database_state_reads_and_prints_as_pg_controldata_does() {
        for (state, name) in DbState::NAMED {
            assert_eq!(DbState::parse(name), state);
            assert_eq!(state.to_string(), name);
        }
        assert_eq!(DbState::parse(""), DbState::Unknown);
        assert_eq!(DbState::parse("in new state"), DbState::Other("in new state".into()));
        assert_eq!(DbState::parse("in new state").to_string(), "in new state");
        let c = Controldata::parse("Database cluster state:               shut down in recovery\n");
        assert_eq!(c.state, DbState::ShutDownInRecovery);
        assert!(c.was_standby() && !c.was_primary());
    }

    #[test]
    fn basebackup_progress_lines_are_read() {
        let p = CloneProgress::parse("   31079/2100461 kB (1%), 0/1 tablespace").unwrap();
        assert_eq!((p.done_kb, p.total_kb, p.percent), (31079, 2100461, 1));
        assert_eq!(p.to_string(), "1% (30 of 2052 MB)");
        let p =
            CloneProgress::parse("2100470/2100470 kB (100%), 1/1 tablespace (...pgdata/global/pg_control)").unwrap();
        assert_eq!(p.percent, 100);
        assert_eq!(CloneProgress::parse("pg_basebackup: error: connection failed"), None);
        assert_eq!(CloneProgress::parse("waiting for checkpoint"), None);
    }

    #[test]
    fn the_end_of_the_last_record_pg_waldump_printed() {
        // pg_waldump on a standby of the partition suite, which then said
        // "invalid record length at 0/4038240": that is where its WAL ends.
        let out = "rmgr: Transaction len (rec/tot):     34/    34, tx:        782, lsn: 0/040381F0, prev 0/040381C8, desc: COMMIT\n\
                   rmgr: Transaction len (rec/tot):     34/    34, tx:        783, lsn: 0/04038218, prev 0/040381F0, desc: COMMIT 2026-12-02\n";
        assert_eq!(last_record_end(out, 16 << 20), Some(0x0403_8240));
        assert_eq!(
            last_record_end("pg_waldump: error: could not find a valid record", 16 << 20),
            None
        );
        // Crossing a page adds its short header, crossing into a segment the long one.
        assert_eq!(record_end(8192 - 16, 32, 16 << 20), 8192 + 24 + 16);
        assert_eq!(record_end((16 << 20) - 16, 32, 16 << 20), (16 << 20) + 40 + 16);
        assert_eq!(record_end(8192 - 16, 16, 16 << 20), 8192, "ends at the page boundary");
        // A switch record last: the rest of its segment counts as written.
        let switch = "rmgr: XLOG        len (rec/tot):     24/    24, tx:          0, lsn: 0/03000148, prev 0/03000110, desc: SWITCH\n";
        assert_eq!(last_record_end(switch, 16 << 20), Some(0x400_0000));
        let after = format!("{switch}rmgr: XLOG        len (rec/tot):    114/   114, tx:          0, lsn: 0/04000028, prev 0/03000148, desc: CHECKPOINT_SHUTDOWN\n");
        assert_eq!(last_record_end(&after, 16 << 20), Some(0x400_0028 + 120));
        assert_eq!(segment_of("000000020000000100000003", 16 << 20), Some((2, 256 + 3)));
        assert_eq!(segment_of("00000002.history", 16 << 20), None);
        assert_eq!(segment_of("000000020000000000000004.partial", 16 << 20), None);
    }

    #[test]
    fn the_newest_timeline_needs_its_history_file() {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(newest_timeline(&names(&[])), None);
        assert_eq!(
            newest_timeline(&names(&["000000010000000000000005", "archive_status"])),
            Some(1)
        );
        // A standby that followed a new primary: its checkpoint may still be on timeline 1.
        let followed = names(&[
            "000000010000000000000005",
            "00000002.history",
            "000000020000000000000005",
        ]);
        assert_eq!(newest_timeline(&followed), Some(2));
        // A history file alone (no WAL of that timeline) does not move it; nor does a
        // segment whose history is missing, or a partial one.
        let ahead = names(&[
            "000000020000000000000005",
            "00000002.history",
            "00000003.history",
            "000000040000000000000006",
            "000000050000000000000006.partial",
        ]);
        assert_eq!(newest_timeline(&ahead), Some(2));
    }

    #[test]
    fn controldata_fields() {
        let text = "pg_control version number:            1300\nDatabase system identifier:           7312\n\
                    Database cluster state:               shut down in recovery\n\
                    Latest checkpoint's TimeLineID:       3\n";
        let c = Controldata::parse(text);
        assert_eq!(c.system_identifier, Some(7312));
        assert_eq!(c.timeline, Some(Timeline(3)));
        assert!(c.was_standby());
        assert!(!Controldata::parse("Database cluster state: in production").was_standby());
        // A clone of a primary, not started yet, is a standby to be, not a primary.
        let clone = Controldata {
            from_backup: true,
            ..Controldata::parse("Database cluster state: in production")
        };
        assert!(clone.was_standby() && !clone.was_primary());
        assert!(Controldata::parse("Database cluster state: in archive recovery").was_standby());
        assert!(
            !Controldata::parse("Database cluster state: in crash recovery").was_standby(),
            "a primary that crashed while recovering from a crash is no standby"
        );
    }

    #[test]
    fn a_rewound_database_whose_wal_stops_short_of_consistency_says_so() {
        // n3 of chaos-multi (seed 662009), rewound onto n2 three seconds before n2 was fenced.
        let n3 = Controldata::parse(include_str!(
            "../../docs/jepsen-runs/chaos-multi-seed662009/n3-pg_controldata.txt"
        ));
        assert_eq!(n3.min_recovery, Some(0x486_F750));
        assert_eq!(n3.min_recovery_timeline, Some(Timeline(6)));
        assert_eq!(n3.backup_end, Some(0x486_F750));
        assert_eq!(
            n3.short_of((0x486_DA68, Timeline(6))),
            Some(0x486_F750),
            "its WAL ended at 0/486DA68"
        );
        assert_eq!(
            n3.short_of((0x486_F750, Timeline(6))),
            None,
            "WAL up to the point is enough"
        );
        assert_eq!(
            n3.short_of((0x500_0000, Timeline(5))),
            Some(0x486_F750),
            "WAL on an older timeline is not"
        );
        assert_eq!(
            n3.short_of((0x486_0000, Timeline(7))),
            None,
            "WAL on a newer timeline says nothing"
        );
        // A standby stopped cleanly, and a primary: no point past their WAL.
        let standby = "Database cluster state:               shut down in recovery\n\
                       Minimum recovery ending location:     0/3000148\n\
                       Min recovery ending loc's timeline:   2\n\
                       Backup start location:                0/0\n\
                       Backup end location:                  0/0\n";
        assert_eq!(Controldata::parse(standby).short_of((0x300_0148, Timeline(2))), None);
        assert_eq!(
            Controldata::parse(standby).short_of((0x300_0100, Timeline(2))),
            Some(0x300_0148)
        );
        let primary = "Database cluster state:               shut down\n\
                       Minimum recovery ending location:     0/0\n\
                       Min recovery ending loc's timeline:   0\n\
                       Backup end location:                  0/0\n";
        assert_eq!(Controldata::parse(primary).short_of((0x100, Timeline(1))), None);
        // Fields pg_controldata did not print are unknown, not short.
        assert_eq!(
            Controldata::parse("Database cluster state: in archive recovery").short_of((0, Timeline(0))),
            None
        );
    }
}
