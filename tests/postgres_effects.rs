//! PostgreSQL effects against a real PostgreSQL (the one `.ci/run` installs):
//! initdb with checksums, start, observe as a primary, stop, observe Unknown.
//! As root, PostgreSQL runs as the `postgres` OS user.

use std::time::Duration;

use raftpg::postgres::{observe, Observation, PgBinaries, PgCtl, RunAs, StopMode};
use raftpg::types::Timeline;

const T: Duration = Duration::from_secs(60);

/// A PgCtl for a PostgreSQL in a new temporary directory on `port` (not initialised),
/// and the conninfo of its Unix socket. As root, the `postgres` OS user runs it.
fn local_pg(port: u16) -> (tempfile::TempDir, PgCtl, String) {
    let bins = PgBinaries::find(None).expect("PostgreSQL must be installed for this test (.ci/run installs it)");
    let run_as = RunAs::for_current_process("postgres").expect("an OS user for PostgreSQL");
    let dir = tempfile::tempdir().unwrap();
    if let Some(u) = &run_as {
        u.chown(dir.path()).unwrap();
    }
    let pg = PgCtl {
        bins,
        run_as,
        data_dir: dir.path().join("pgdata"),
        socket_dir: dir.path().to_path_buf(),
        listen_addresses: "127.0.0.1".into(),
        port,
        log_file: dir.path().join("postgres.log"),
        ssl_root_cert: None,
    };
    let conninfo = format!(
        "host={} port={port} user=postgres dbname=postgres",
        dir.path().display()
    );
    (dir, pg, conninfo)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initdb_start_observe_stop_a_real_postgres() {
    let (_dir, pg, conninfo) = local_pg(26001);

    eprintln!("=== initdb with data checksums");
    pg.initdb("postgres", T).await.expect("initdb");
    assert!(!pg.is_running(T).await.unwrap());
    let observed = observe(&conninfo, Duration::from_secs(2)).await;
    assert!(
        matches!(observed, Observation::Unknown(_)),
        "a stopped server must be Unknown: {observed:?}"
    );

    eprintln!("=== start: a primary on timeline 1 with a write position");
    pg.start(T).await.expect("start");
    assert!(pg.is_running(T).await.unwrap());
    let Observation::Up(state) = observe(&conninfo, Duration::from_secs(5)).await else {
        panic!("a running server must be observed");
    };
    assert!(!state.in_recovery);
    assert_eq!(state.timeline, Some(Timeline(1)));
    assert!(state.write_lsn.unwrap() > 0);
    assert_eq!(state.walreceiver, None);

    eprintln!("=== data checksums are on (pg_rewind needs them)");
    let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let row = client.query_one("SHOW data_checksums", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "on");
    client
        .batch_execute("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 10000)")
        .await
        .unwrap();
    let flushed: u64 = client
        .query_one("SELECT pg_current_wal_flush_lsn()", &[])
        .await
        .unwrap()
        .get::<_, tokio_postgres::types::PgLsn>(0)
        .into();
    drop(client);

    eprintln!("=== immediate stop: the WAL on disk ends where the last commit flushed");
    pg.stop(StopMode::Immediate, T).await.expect("immediate stop");
    let control = pg.controldata(T).await.expect("pg_controldata");
    let seg = control
        .wal_segment_size
        .expect("pg_controldata names the WAL segment size");
    assert_eq!(seg, 16 << 20);
    let (end, tli) = pg.wal_end(seg, T).await.unwrap().expect("a valid record on disk");
    assert_eq!(tli, Timeline(1));
    // Nothing but a background record (a standby snapshot) may follow the commit.
    assert!(
        end >= flushed && end - flushed < 8192,
        "WAL ends at {end:X}, the commit flushed to {flushed:X}"
    );
    pg.start(T).await.expect("start after the immediate stop");

    eprintln!("=== fast stop, then nothing answers");
    pg.stop(StopMode::Fast, T).await.expect("stop");
    assert!(!pg.is_running(T).await.unwrap());
    assert!(matches!(
        observe(&conninfo, Duration::from_secs(2)).await,
        Observation::Unknown(_)
    ));
}

/// Issue 14 item 1: the agent's observations reuse one backend instead of forking one per
/// tick; a server that restarts is observed `Unknown` once and then reconnected, and a
/// frozen one is `Unknown` within the deadline, its connection dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observations_reuse_one_connection_and_drop_it_on_failure() {
    use raftpg::postgres::Observer;
    let (_dir, pg, conninfo) = local_pg(26002);
    pg.initdb("postgres", T).await.expect("initdb");
    pg.start(T).await.expect("start");

    let (checker, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let others = "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()";
    let backends = || async {
        let rows = checker.query(others, &[]).await.unwrap();
        rows.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<i32>>()
    };

    let mut observer = Observer::default();
    assert!(matches!(observer.observe(&conninfo, T).await, Observation::Up(_)));
    let first = backends().await;
    assert_eq!(first.len(), 1, "one backend for the observer: {first:?}");
    for _ in 0..5 {
        assert!(matches!(observer.observe(&conninfo, T).await, Observation::Up(_)));
    }
    assert_eq!(backends().await, first, "the observations forked new backends");

    eprintln!("=== a restart: Unknown once (the old connection is gone), then a new one");
    pg.stop(StopMode::Fast, T).await.expect("stop");
    assert!(matches!(observer.observe(&conninfo, T).await, Observation::Unknown(_)));
    assert!(!observer.connected());
    pg.start(T).await.expect("start again");
    assert!(matches!(observer.observe(&conninfo, T).await, Observation::Up(_)));
    assert!(observer.connected());

    eprintln!("=== a frozen server: Unknown within the deadline, the connection dropped");
    // The observer's own backend stops answering (SIGSTOP), as in a hung server.
    let (checker, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let rows = checker.query(others, &[]).await.unwrap();
    assert_eq!(rows.len(), 1);
    let backend = nix::unistd::Pid::from_raw(rows[0].get::<_, i32>(0));
    nix::sys::signal::kill(backend, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let observed = observer.observe(&conninfo, Duration::from_millis(500)).await;
    nix::sys::signal::kill(backend, nix::sys::signal::Signal::SIGCONT).unwrap();
    drop(checker);
    assert!(
        matches!(&observed, Observation::Unknown(e) if e.contains("no answer")),
        "{observed:?}"
    );
    assert!(!observer.connected());
    assert!(matches!(observer.observe(&conninfo, T).await, Observation::Up(_)));
    pg.stop(StopMode::Fast, T).await.expect("stop");
}

/// A member that promotes never takes a timeline another member took: with the recorded
/// timelines' history files in its pg_wal (`recorded_histories`, put there by the agent
/// before `pg_promote`), PostgreSQL, still on timeline 1, takes timeline 4 and not 2. Its
/// own history file then forks from timeline 1, so pg_rewind finds the divergence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_takes_a_timeline_no_member_took() {
    use raftpg::cluster::{ChangeKind, HistoryEntry};
    let (dir, pg, conninfo) = local_pg(26003);
    pg.initdb("postgres", T).await.expect("initdb");
    pg.start(T).await.expect("start");
    pg.stop(StopMode::Fast, T).await.expect("stop");
    let entry = |timeline: u32, parent: Option<u32>, switch: Option<&str>| HistoryEntry {
        kind: ChangeKind::Failover,
        timeline: Timeline(timeline),
        parent_timeline: parent.map(Timeline),
        switch_lsn: switch.and_then(raftpg::types::Lsn::parse),
        reason: "test".into(),
        from: None,
        to: "other".into(),
        generation: raftpg::types::Generation(u64::from(timeline)),
    };
    let history = [
        entry(1, None, None),
        entry(2, Some(1), Some("0/1000000")),
        entry(3, None, None),
    ];
    let write = |path: std::path::PathBuf, text: &str| write_owned(&pg, &path, text);
    for (tl, text) in raftpg::postgres::recorded_histories(&history, Timeline(3)) {
        write(pg.data_dir.join("pg_wal").join(format!("{:08X}.history", tl.0)), &text);
    }
    write(pg.data_dir.join("standby.signal"), "");
    let conf = pg.data_dir.join("postgresql.conf");
    let text = std::fs::read_to_string(&conf).unwrap() + "\nrecovery_target_timeline = 'current'\n";
    write(conf, &text);
    pg.start(T).await.expect("start in recovery");
    let control = pg.data_dir.join("global/pg_control");
    // DB_IN_ARCHIVE_RECOVERY, read from the file's head as promote() reads it.
    assert_eq!(raftpg::postgres::ctl::control_state(&control), Some(5));
    pg.promote(T).await.expect("promote");
    // promote() returns once the control file says DB_IN_PRODUCTION (as pg_ctl -w waits).
    assert_eq!(raftpg::postgres::ctl::control_state(&control), Some(6));
    let timeline = async {
        loop {
            if let Observation::Up(s) = observe(&conninfo, Duration::from_secs(5)).await {
                if !s.in_recovery {
                    return s.timeline;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let timeline = tokio::time::timeout(T, timeline)
        .await
        .expect("promoted within a minute");
    assert_eq!(timeline, Some(Timeline(4)), "{}", pg.log_tail(20));
    let own = std::fs::read_to_string(pg.data_dir.join("pg_wal/00000004.history")).unwrap();
    assert_eq!(raftpg::postgres::parse_timeline_history(&own).map(|(p, _)| p), Some(1));
    pg.stop(StopMode::Fast, T).await.expect("stop");
    drop(dir);
}

/// Writes `text` to `path`, owned by the OS user PostgreSQL runs as.
fn write_owned(pg: &PgCtl, path: &std::path::Path, text: &str) {
    std::fs::write(path, text).unwrap();
    if let Some(u) = &pg.run_as {
        u.chown(path).unwrap();
    }
}

/// A copy of `pg`'s (stopped) data directory at `to`, owners and modes kept.
fn copy_data_dir(pg: &PgCtl, to: &std::path::Path) {
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(&pg.data_dir)
        .arg(to)
        .status()
        .unwrap();
    assert!(cp.success());
}

/// Runs `sql` on a fresh connection and returns the first column of the first row, if any.
async fn query(conninfo: &str, sql: &str) -> Option<String> {
    let (client, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let rows = client.simple_query(sql).await.unwrap();
    rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(String::from),
        _ => None,
    })
}

/// A standby that followed a new primary onto timeline 2 but made no restartpoint there
/// has a control file whose checkpoint is on timeline 1. Started off the stream for a final
/// report or a promotion, `recovery_target_timeline = 'current'` replayed only timeline 1
/// and a candidate promoted so dropped every write of timeline 2 (the partition suite's
/// laggard-and-hung-holder-kill-primary). raftpg now targets the timeline its WAL reaches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_started_off_the_stream_recovers_the_timeline_its_wal_reaches() {
    let (dir, pg, conninfo) = local_pg(26004);
    pg.initdb("postgres", T).await.expect("initdb");
    pg.start(T).await.expect("start");
    query(
        &conninfo,
        "CREATE TABLE t (v text); INSERT INTO t VALUES ('timeline 1')",
    )
    .await;
    pg.stop(StopMode::Fast, T).await.expect("stop");
    let write = |path: std::path::PathBuf, text: &str| write_owned(&pg, &path, text);
    // The copy's control file keeps its checkpoint on timeline 1.
    let copy = dir.path().join("copy");
    copy_data_dir(&pg, &copy);
    // The original is promoted to timeline 2 and writes there.
    write(pg.data_dir.join("standby.signal"), "");
    pg.start(T).await.expect("start in recovery");
    pg.promote(T).await.expect("promote");
    query(&conninfo, "INSERT INTO t VALUES ('timeline 2')").await;
    pg.stop(StopMode::Immediate, T).await.expect("stop");
    // What the copy would have streamed: timeline 2's history and segments.
    for e in std::fs::read_dir(pg.data_dir.join("pg_wal")).unwrap() {
        let e = e.unwrap();
        let to = copy.join("pg_wal").join(e.file_name());
        if e.file_type().unwrap().is_file() && !to.exists() {
            std::fs::copy(e.path(), &to).unwrap();
            if let Some(u) = &pg.run_as {
                u.chown(&to).unwrap();
            }
        }
    }
    let standby = PgCtl {
        data_dir: copy.clone(),
        ..pg.clone()
    };
    assert_eq!(standby.wal_timeline(), Some(Timeline(2)), "its WAL reaches timeline 2");
    write(copy.join("standby.signal"), "");
    let conf = copy.join("postgresql.conf");
    let text = std::fs::read_to_string(&conf).unwrap()
        + &format!("\nrecovery_target_timeline = '{}'\n", standby.wal_timeline().unwrap());
    write(conf, &text);
    standby.start(T).await.expect("start the copy in recovery");
    standby.promote(T).await.expect("promote the copy");
    let rows = query(&conninfo, "SELECT string_agg(v, ', ' ORDER BY v) FROM t").await;
    assert_eq!(
        rows.as_deref(),
        Some("timeline 1, timeline 2"),
        "{}",
        standby.log_tail(20)
    );
    let own = std::fs::read_to_string(copy.join("pg_wal/00000003.history")).unwrap();
    assert_eq!(raftpg::postgres::parse_timeline_history(&own).map(|(p, _)| p), Some(2));
    standby.stop(StopMode::Fast, T).await.expect("stop");
    drop(dir);
}

/// A pg_rewind whose source accepts the connection and then never answers (a paused
/// node) is abandoned when asked, not after its timeout: the tool is killed and waited
/// for, so nothing writes the data directory afterwards (finding 16 of docs/jepsen.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewind_onto_a_source_that_never_answers_is_abandoned_and_killed() {
    use tokio::io::AsyncReadExt;
    let (dir, pg, _conninfo) = local_pg(26005);
    pg.initdb("postgres", T).await.expect("initdb");
    let frozen = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = frozen.local_addr().unwrap().port();
    let (connected_tx, connected) = tokio::sync::oneshot::channel();
    let source = tokio::spawn(async move {
        let (mut socket, _) = frozen.accept().await.unwrap();
        connected_tx.send(()).unwrap();
        // Never answers; reads until pg_rewind's end closes the connection.
        let mut buf = [0u8; 1024];
        while socket.read(&mut buf).await.unwrap_or(0) > 0 {}
    });
    let abandon = async {
        connected.await.expect("pg_rewind connected to the frozen source");
    };
    let conninfo = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=disable");
    let rewound = tokio::time::timeout(T, pg.rewind(&conninfo, None, Duration::from_secs(600), abandon))
        .await
        .expect("pg_rewind abandoned when asked, not after its own timeout");
    assert!(
        matches!(rewound, Err(raftpg::postgres::PgError::Abandoned { .. })),
        "a frozen source must leave pg_rewind running until it is abandoned: {rewound:?}"
    );
    // Killed and reaped: its connection is closed, and no pg_rewind names this directory.
    tokio::time::timeout(T, source)
        .await
        .expect("the killed pg_rewind's connection closes")
        .unwrap();
    let data_dir = pg.data_dir.display().to_string();
    let running: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("pg_rewind") && c.contains(&data_dir))
        .collect();
    assert!(
        running.is_empty(),
        "pg_rewind still runs after it was abandoned: {running:?}"
    );
    drop(dir);
}

/// A standby restarted with no upstream to stream from replays its own pg_wal to the end,
/// and `pg_last_wal_receive_lsn()` then says the start of the segment it asks the upstream
/// for, behind what it replayed. The timeline it reports is the one its WAL reaches, not
/// the one of the segment before (finding 18 of docs/jepsen.md: in chaos-multi a standby
/// so reported timeline 1 for WAL on timeline 5, and a member without the writes it had
/// acknowledged was promoted instead of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_standby_off_the_stream_reports_the_timeline_it_replayed() {
    let (dir, pg, conninfo) = local_pg(26006);
    pg.initdb("postgres", T).await.expect("initdb");
    let write = |path: std::path::PathBuf, text: &str| write_owned(&pg, &path, text);
    // Old segments are kept, as on a member whose WAL was not recycled yet.
    let conf = pg.data_dir.join("postgresql.conf");
    let base = std::fs::read_to_string(&conf).unwrap() + "\nwal_keep_size = '1GB'\n";
    write(conf.clone(), &base);
    pg.start(T).await.expect("start");
    query(
        &conninfo,
        "CREATE TABLE t (v text); INSERT INTO t VALUES ('timeline 1'); SELECT pg_switch_wal()",
    )
    .await;
    pg.stop(StopMode::Fast, T).await.expect("stop");
    // Promoted to timeline 2 in the segment after the switch; the one before is timeline 1's.
    write(pg.data_dir.join("standby.signal"), "");
    pg.start(T).await.expect("start in recovery");
    pg.promote(T).await.expect("promote");
    query(&conninfo, "INSERT INTO t VALUES ('timeline 2')").await;
    pg.stop(StopMode::Fast, T).await.expect("stop");
    // A standby again, of an upstream that refuses connections.
    write(pg.data_dir.join("standby.signal"), "");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    write(
        conf,
        &format!("{base}primary_conninfo = 'host=127.0.0.1 port={port} user=postgres sslmode=disable'\n"),
    );
    pg.start(T).await.expect("start as a standby");
    let state = async {
        loop {
            if let Observation::Up(s) = observe(&conninfo, Duration::from_secs(5)).await {
                if s.in_recovery && s.walreceiver.is_none() && s.receive_lsn.is_some() {
                    return s;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let state = tokio::time::timeout(T, state).await;
    let log = pg.log_tail(20);
    pg.stop(StopMode::Fast, T).await.expect("stop");
    let state = state.expect("the standby asked for streaming within a minute");
    let (receive, replay) = (state.receive_lsn.unwrap(), state.replay_lsn.unwrap());
    assert!(
        receive < replay && receive % (16 << 20) == 0,
        "the receive position is the start of the segment asked for, behind the replay: {state:?}"
    );
    assert_eq!(state.timeline, Some(Timeline(2)), "{state:?}\n{log}");
    drop(dir);
}

/// pg_rewind sets the target's minimum recovery point to where its source's WAL was at
/// the end of the copy. When the target's WAL then stops short of that point (in
/// chaos-multi the source was fenced before the target streamed the rest; here the end of
/// the copied WAL is cut off), the control file and pg_waldump, read as the agent reads
/// them, say that this database cannot become consistent from its own WAL, and a
/// candidate declines (finding 17 of docs/jepsen.md). The same database with its WAL
/// whole is not short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewound_database_whose_wal_stops_short_is_found_short() {
    let (dir, pg, conninfo) = local_pg(26007);
    pg.initdb("postgres", T).await.expect("initdb");
    pg.start(T).await.expect("start");
    query(
        &conninfo,
        "CREATE TABLE t (v text); INSERT INTO t VALUES ('timeline 1')",
    )
    .await;
    pg.stop(StopMode::Fast, T).await.expect("stop");
    // The source: a copy, promoted to timeline 2, that writes on.
    let copy = dir.path().join("source");
    copy_data_dir(&pg, &copy);
    let source = PgCtl {
        data_dir: copy.clone(),
        port: 26008,
        log_file: dir.path().join("source.log"),
        ..pg.clone()
    };
    let source_conninfo = format!("host={} port=26008 user=postgres dbname=postgres", dir.path().display());
    write_owned(&pg, &copy.join("standby.signal"), "");
    source.start(T).await.expect("start the source in recovery");
    source.promote(T).await.expect("promote the source");
    query(
        &source_conninfo,
        "INSERT INTO t SELECT 'timeline 2 ' || g FROM generate_series(1, 20000) g",
    )
    .await;
    // The target diverges on timeline 1, then is rewound onto the source.
    pg.start(T).await.expect("start the target");
    query(&conninfo, "INSERT INTO t VALUES ('diverged')").await;
    pg.stop(StopMode::Fast, T).await.expect("stop the target");
    // As the agent does: the source's control file names its new timeline only after a
    // checkpoint.
    query(&source_conninfo, "CHECKPOINT").await;
    let rewound = pg
        .rewind(&source_conninfo, None, T, std::future::pending())
        .await
        .map_err(|e| e.to_string());
    source.stop(StopMode::Fast, T).await.expect("stop the source");
    let rewound = rewound.expect("pg_rewind");
    let control = pg.controldata(T).await.expect("pg_controldata");
    let need = control.min_recovery.expect("pg_rewind sets a minimum recovery point");
    let seg = control.wal_segment_size.expect("segment size");
    let end = pg.wal_end(seg, T).await.expect("pg_waldump").expect("a WAL end");
    assert_eq!(
        control.min_recovery_timeline,
        Some(Timeline(2)),
        "{control:?}\n{rewound}"
    );
    assert_eq!(
        control.short_of(end),
        None,
        "the WAL copied whole reaches {need:x}: {end:x?}"
    );
    // Cut the copied WAL at the page holding the byte before the point.
    let segno = (need - 1) / seg;
    let name = format!(
        "{:08X}{:08X}{:08X}",
        2,
        segno / (0x1_0000_0000 / seg),
        segno % (0x1_0000_0000 / seg)
    );
    let file = pg.data_dir.join("pg_wal").join(name);
    let mut bytes = std::fs::read(&file).unwrap();
    let page = ((need - 1) % seg) as usize / 8192 * 8192;
    bytes[page..].fill(0);
    std::fs::write(&file, &bytes).unwrap();
    let end = pg.wal_end(seg, T).await.expect("pg_waldump").expect("a WAL end");
    assert!(end.0 < need, "{end:x?} {need:x}");
    assert_eq!(control.short_of(end), Some(need), "{control:?} {end:x?}");
    // Started in recovery, it replays what it has and waits for more, refusing connections: the
    // agent observes it `Unknown` with PostgreSQL's words, which it reads as "inconsistent",
    // and its control file can be read while it runs.
    write_owned(&pg, &pg.data_dir.join("standby.signal"), "");
    // pg_ctl start waits for a consistent state, which never comes: it gives up and leaves
    // the server running.
    let _ = pg.start(Duration::from_secs(2)).await;
    let last = std::sync::Mutex::new(String::new());
    let refused = async {
        loop {
            match observe(&conninfo, Duration::from_secs(5)).await {
                Observation::Unknown(e) if e.contains("not yet accepting connections") => return Ok(e),
                Observation::Up(s) => return Err(format!("consistent: {s:?}")),
                Observation::Unknown(e) => {
                    *last.lock().unwrap() = e;
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
            }
        }
    };
    let refused = tokio::time::timeout(T, refused).await;
    let last = last.lock().unwrap().clone();
    let running = pg.controldata(T).await;
    let log = pg.log_tail(10);
    pg.stop(StopMode::Fast, T).await.expect("stop");
    let refused = refused.unwrap_or_else(|_| panic!("no answer within a minute; the last: {last}\n{log}"));
    assert!(refused.is_ok(), "{refused:?}\n{log}");
    assert_eq!(
        running.expect("pg_controldata on a running server").min_recovery,
        Some(need)
    );
    drop(dir);
}

/// A standby that replayed a WAL switch record last (`pg_switch_wal`, `archive_timeout`)
/// and then stopped has its minimum recovery point at the end of that segment, where
/// PostgreSQL counts the switch as ending. Read from its WAL on disk, its end is there too:
/// it is not taken for a database short of consistency, and would not decline a candidacy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_stopped_after_a_wal_switch_is_not_short() {
    let (dir, primary, primary_conninfo) = local_pg(26009);
    primary.initdb("postgres", T).await.expect("initdb");
    let copy = dir.path().join("standby");
    copy_data_dir(&primary, &copy);
    let standby = PgCtl {
        data_dir: copy.clone(),
        port: 26010,
        log_file: dir.path().join("standby.log"),
        ..primary.clone()
    };
    let standby_conninfo = format!("host={} port=26010 user=postgres dbname=postgres", dir.path().display());
    write_owned(&primary, &copy.join("standby.signal"), "");
    let conf = copy.join("postgresql.conf");
    let text = std::fs::read_to_string(&conf).unwrap()
        + &format!(
            "\nprimary_conninfo = 'host={} port=26009 user=postgres'\n",
            dir.path().display()
        );
    write_owned(&primary, &conf, &text);
    primary.start(T).await.expect("start the primary");
    standby.start(T).await.expect("start the standby");
    let replayed = |at: u64| {
        let conninfo = standby_conninfo.clone();
        async move {
            loop {
                let lsn = query(&conninfo, "SELECT pg_last_wal_replay_lsn()").await;
                if lsn
                    .as_deref()
                    .and_then(raftpg::postgres::parse_lsn)
                    .is_some_and(|l| l >= at)
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let lsn = |s: Option<String>| s.as_deref().and_then(raftpg::postgres::parse_lsn).unwrap();
    // A restartpoint on the standby at the primary's last checkpoint, so that its shutdown
    // skips one and sets the minimum recovery point to the end of what it replayed.
    query(&primary_conninfo, "CREATE TABLE t (v int); INSERT INTO t VALUES (1)").await;
    let checkpoint = lsn(query(&primary_conninfo, "CHECKPOINT; SELECT pg_current_wal_lsn()").await);
    tokio::time::timeout(T, replayed(checkpoint))
        .await
        .expect("replayed the checkpoint");
    query(&standby_conninfo, "CHECKPOINT").await;
    query(&primary_conninfo, "INSERT INTO t VALUES (2)").await;
    let seg = 16u64 << 20;
    let switched = lsn(query(&primary_conninfo, "SELECT pg_switch_wal()").await);
    let boundary = switched.div_ceil(seg) * seg;
    tokio::time::timeout(T, replayed(boundary))
        .await
        .expect("replayed the switch");
    // Nothing after the switch: the primary stops without a shutdown checkpoint.
    primary.stop(StopMode::Immediate, T).await.expect("stop the primary");
    standby.stop(StopMode::Fast, T).await.expect("stop the standby");
    let control = standby.controldata(T).await.expect("pg_controldata");
    assert_eq!(control.min_recovery, Some(boundary), "{control:?}");
    let end = standby.wal_end(seg, T).await.expect("pg_waldump").expect("a WAL end");
    assert_eq!(end, (boundary, Timeline(1)));
    assert_eq!(control.short_of(end), None);
    drop(dir);
}

/// Issue 14: a stop polls for the postmaster's exit itself (pg_ctl's own wait checks every
/// 100 ms, which cost a switchover 50 ms on average), and says so when it does not exit: a
/// frozen postmaster is a timeout; one killed after it took the stop signal and before it
/// removed its pid file is a crash, not a clean stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_that_does_not_end_in_a_clean_exit_is_an_error() {
    use nix::sys::signal::{kill, killpg, Signal};
    use nix::unistd::Pid;
    let (_dir, pg, _) = local_pg(26011);
    pg.initdb("postgres", T).await.expect("initdb");
    pg.start(T).await.expect("start");
    let pid = Pid::from_raw(pg.postmaster_pid().expect("postmaster.pid"));

    eprintln!("=== a frozen postmaster: the stop times out");
    kill(pid, Signal::SIGSTOP).unwrap();
    let e = pg
        .stop(StopMode::Fast, Duration::from_secs(1))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("did not exit") && e.contains("within 1s"), "{e}");

    eprintln!("=== killed while it holds the stop signal: a crash, not a clean stop");
    let stopping = tokio::spawn({
        let pg = pg.clone();
        async move { pg.stop(StopMode::Fast, T).await }
    });
    // The frozen postmaster holds the signal pending: then it is killed.
    let status = format!("/proc/{pid}/status");
    let pending = || {
        std::fs::read_to_string(&status)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("ShdPnd:"))
            .map(|m| u64::from_str_radix(m.trim(), 16).unwrap())
            .unwrap()
    };
    let deadline = std::time::Instant::now() + T;
    while pending() & (1 << (Signal::SIGINT as u64 - 1)) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "pg_ctl never signalled the postmaster"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // pg_ctl made the postmaster a session leader: its group is the server's processes.
    killpg(pid, Signal::SIGKILL).unwrap();
    let e = stopping.await.unwrap().unwrap_err().to_string();
    assert!(e.contains("left postmaster.pid (it crashed)"), "{e}");
    while killpg(pid, None).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the killed server's processes never exited"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    eprintln!("=== it starts again (crash recovery) and stops cleanly");
    pg.start(T).await.expect("start after the crash");
    pg.stop(StopMode::Fast, T).await.expect("a clean stop");
    assert_eq!(pg.postmaster_pid(), None);
}

/// A crashed primary whose last checkpoint and ~2 MB of writes after it lie in one segment,
/// set up as a standby of a server that is not there (`port=1`), on the newest timeline
/// whose history file `pg_wal` holds. Returns the segment number, the segment's size, the
/// content of timeline 1's file of it, the checkpoint's redo offset in it, where the WAL
/// ends and where the writes ended.
async fn crashed_with_writes_in_one_segment(pg: &PgCtl, conninfo: &str) -> (u64, u64, Vec<u8>, u64, u64, u64) {
    pg.initdb("postgres", T).await.expect("initdb");
    pg.start(T).await.expect("start");
    query(conninfo, "CREATE TABLE t (v text)").await;
    query(conninfo, "SELECT pg_switch_wal()").await;
    query(conninfo, "CHECKPOINT").await;
    let redo = query(conninfo, "SELECT redo_lsn FROM pg_control_checkpoint()")
        .await
        .unwrap();
    query(
        conninfo,
        "INSERT INTO t SELECT repeat('x', 1000) FROM generate_series(1, 2000)",
    )
    .await;
    let written = query(conninfo, "SELECT pg_current_wal_lsn()").await.unwrap();
    // A crash, so that the control file keeps the checkpoint before the writes.
    pg.stop(StopMode::Immediate, T).await.expect("stop");
    let seg = pg.controldata(T).await.unwrap().wal_segment_size.unwrap();
    let (end, _) = pg.wal_end(seg, T).await.unwrap().expect("WAL on disk");
    let redo = raftpg::postgres::parse_lsn(&redo).unwrap();
    let written = raftpg::postgres::parse_lsn(&written).unwrap();
    assert!(end >= written, "{end:X} {written:X}");
    assert_eq!(
        redo / seg,
        end / seg,
        "the test needs the writes in the checkpoint's segment"
    );
    let segno = end / seg;
    let file = pg
        .data_dir
        .join("pg_wal")
        .join(raftpg::postgres::ctl::segment_name(1, segno, seg));
    let bytes = std::fs::read(file).unwrap();
    write_owned(pg, &pg.data_dir.join("standby.signal"), "");
    let conf = pg.data_dir.join("postgresql.conf");
    let text = std::fs::read_to_string(&conf).unwrap()
        + "\nrecovery_target_timeline = 'latest'\nprimary_conninfo = 'host=127.0.0.1 port=1'\n";
    write_owned(pg, &conf, &text);
    (segno, seg, bytes, redo % seg, end, written)
}

/// Writes timeline `tli`'s file of segment `segno`: `bytes` up to the page at `cut`, then
/// zeros, as a receiver cut off there leaves it (all of `bytes` when `cut` is `None`).
fn write_segment(pg: &PgCtl, tli: u32, segno: u64, seg: u64, bytes: &[u8], cut: Option<u64>) {
    let mut content = bytes.to_vec();
    if let Some(cut) = cut {
        content[(cut / 8192 * 8192) as usize..].fill(0);
    }
    let path = pg
        .data_dir
        .join("pg_wal")
        .join(raftpg::postgres::ctl::segment_name(tli, segno, seg));
    std::fs::write(&path, content).unwrap();
    if let Some(u) = &pg.run_as {
        u.chown(&path).unwrap();
    }
}

/// Starts `pg` and waits until it has stopped with `message` in its log. A crashed
/// primary started as a standby first replays what pg_wal holds and may accept
/// connections before it fails where that ends, so `pg_ctl start` may succeed first.
async fn start_fails_with(pg: &PgCtl, message: &str) {
    let _ = pg.start(T).await;
    let deadline = std::time::Instant::now() + T;
    while !pg.log_tail(80).contains(message) || pg.postmaster_alive() {
        assert!(
            std::time::Instant::now() < deadline,
            "PostgreSQL did not stop with {message:?}: {}",
            pg.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Where a standby that accepts connections has replayed to.
async fn replayed(conninfo: &str) -> u64 {
    let lsn = query(conninfo, "SELECT pg_last_wal_replay_lsn() WHERE pg_is_in_recovery()").await;
    raftpg::postgres::parse_lsn(&lsn.expect("a standby")).unwrap()
}

/// Finding 21 of docs/jepsen.md: a standby that began to receive a new timeline from the
/// start of the segment where that timeline forked, and lost its upstream before the fork,
/// holds that segment twice: whole on the parent timeline, in part on the new one.
/// PostgreSQL prefers the new timeline's file, replays to where it ends, and then refuses
/// to go on ("... belongs to timeline 1, but previous recovered WAL file came from timeline
/// 2"): the standby never started again. raftpg gives the new timeline's file the parent's
/// content (WAL up to the fork, which is the new timeline's position), and the standby
/// starts and replays every write. A whole copy is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_timelines_file_received_in_part_takes_the_parents_content_and_the_standby_starts() {
    let (dir, pg, conninfo) = local_pg(26012);
    let (segno, seg, bytes, redo, end, written) = crashed_with_writes_in_one_segment(&pg, &conninfo).await;
    let fork = raftpg::types::Lsn(end);
    write_owned(
        &pg,
        &pg.data_dir.join("pg_wal/00000002.history"),
        &format!("1\t{fork}\tno recovery target specified\n"),
    );
    assert_eq!(pg.latest_timeline(Timeline(1)), Timeline(2));
    write_segment(&pg, 2, segno, seg, &bytes, None);
    assert_eq!(
        pg.repair_fork_segments(Timeline(2), seg, T).await.unwrap(),
        Vec::<String>::new(),
        "a whole copy"
    );
    // Received in part: to a page between the checkpoint and the fork. And the next
    // segment's file, created by the receiver and never written: zeros, without a page
    // header (pg_waldump -p took the segment size from such a file and failed on every
    // call, which read as "no valid record" anywhere: the 300 s tier's promote-laggard).
    write_segment(&pg, 2, segno, seg, &bytes, Some((redo + end % seg) / 2));
    write_segment(&pg, 2, segno + 1, seg, &bytes[..seg as usize], Some(0));
    start_fails_with(&pg, "but previous recovered WAL file came from timeline 2").await;

    let done = pg.repair_fork_segments(Timeline(2), seg, T).await.unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    assert!(done[0].starts_with("copied "), "{done:?}");
    let own = pg
        .data_dir
        .join("pg_wal")
        .join(raftpg::postgres::ctl::segment_name(2, segno, seg));
    assert!(
        std::fs::read(&own).unwrap() == bytes,
        "timeline 2's file holds timeline 1's"
    );
    assert_eq!(
        pg.wal_end(seg, T).await.unwrap(),
        Some((end, Timeline(2))),
        "read past the zero-filled file"
    );
    pg.start(T).await.expect("the standby starts");
    let at = replayed(&conninfo).await;
    assert!(
        at >= written,
        "replayed to {at:X}, written to {written:X}: {}",
        pg.log_tail(20)
    );
    pg.stop(StopMode::Fast, T).await.expect("stop");
    drop(dir);
}

/// Many quick failovers with few writes fork several timelines in one segment, and every
/// file of it may be partial: the parent's as much as the children's (the 300 s tier's
/// pause-primary-pg-kill-candidate forked 21 timelines in one segment). Removing every
/// child's file left too little to find the checkpoint. raftpg keeps the longest prefix,
/// under the name of the timeline where it ends, removes the newer timelines' files, and
/// the standby starts past the checkpoint and every write any file held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_a_chain_of_partial_fork_segments_the_longest_is_kept_and_the_standby_starts() {
    let (dir, pg, conninfo) = local_pg(26013);
    let (segno, seg, bytes, redo, end, _) = crashed_with_writes_in_one_segment(&pg, &conninfo).await;
    let (fork2, fork3) = (raftpg::types::Lsn(end), raftpg::types::Lsn(end + 0x100));
    write_owned(
        &pg,
        &pg.data_dir.join("pg_wal/00000002.history"),
        &format!("1\t{fork2}\tfailover\n"),
    );
    write_owned(
        &pg,
        &pg.data_dir.join("pg_wal/00000003.history"),
        &format!("1\t{fork2}\tfailover\n2\t{fork3}\tfailover\n"),
    );
    // Timeline 1's file ends first, timeline 3's next, timeline 2's holds the most.
    let span = end % seg - redo;
    let (c1, c3, c2) = (redo + span / 4, redo + span / 2, redo + span * 3 / 4);
    write_segment(&pg, 1, segno, seg, &bytes, Some(c1));
    write_segment(&pg, 2, segno, seg, &bytes, Some(c2));
    write_segment(&pg, 3, segno, seg, &bytes, Some(c3));
    start_fails_with(&pg, "but previous recovered WAL file came from timeline 3").await;

    let done = pg.repair_fork_segments(Timeline(3), seg, T).await.unwrap();
    assert_eq!(done.len(), 3, "{done:?}");
    let wal = pg.data_dir.join("pg_wal");
    let name = |t| wal.join(raftpg::postgres::ctl::segment_name(t, segno, seg));
    assert!(!name(3).exists() && !name(2).exists(), "{done:?}");
    let mut longest = bytes.clone();
    longest[(c2 / 8192 * 8192) as usize..].fill(0);
    assert!(
        std::fs::read(name(1)).unwrap() == longest,
        "timeline 1's file holds timeline 2's prefix"
    );
    pg.start(T).await.expect("the standby starts");
    let at = replayed(&conninfo).await;
    let held = segno * seg + c2 / 8192 * 8192 - 8192;
    assert!(
        at >= held,
        "replayed to {at:X}, the longest file held WAL past {held:X}: {}",
        pg.log_tail(20)
    );
    pg.stop(StopMode::Fast, T).await.expect("stop");
    drop(dir);
}

/// raftpg writes a placeholder history file, without a fork line, for a timeline whose
/// fork it does not know, before a promotion (a candidate replaced before it recorded its
/// timeline may have taken it). A member that did not promote after all and starts as a
/// standby with `recovery_target_timeline = 'latest'` would target the placeholder, and
/// PostgreSQL PANICs on it: "could not locate a valid checkpoint record". raftpg removes
/// the placeholders recovery would target (only those: one below a real history stays).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placeholder_history_that_recovery_would_target_is_removed_and_the_standby_starts() {
    let (dir, pg, conninfo) = local_pg(26014);
    let (_, _, _, _, _, written) = crashed_with_writes_in_one_segment(&pg, &conninfo).await;
    let wal = pg.data_dir.join("pg_wal");
    let placeholder =
        |tl: u32| format!("# timeline {tl} was taken by a member of this raftpg cluster; its forks are not recorded\n");
    write_owned(&pg, &wal.join("00000002.history"), &placeholder(2));
    write_owned(&pg, &wal.join("00000003.history"), &placeholder(3));
    assert_eq!(pg.latest_timeline(Timeline(1)), Timeline(3));
    start_fails_with(&pg, "could not locate a valid checkpoint record").await;

    let removed = pg.remove_placeholder_targets(Timeline(1)).unwrap();
    assert_eq!(removed, [wal.join("00000003.history"), wal.join("00000002.history")]);
    pg.start(T).await.expect("the standby starts");
    let at = replayed(&conninfo).await;
    assert!(at >= written, "replayed to {at:X}, written to {written:X}");
    pg.stop(StopMode::Fast, T).await.expect("stop");

    // A placeholder below a real history file is passed through, and stays.
    write_owned(&pg, &wal.join("00000002.history"), &placeholder(2));
    write_owned(&pg, &wal.join("00000003.history"), "2\t0/FF000000\tfailover\n");
    assert_eq!(
        pg.remove_placeholder_targets(Timeline(1)).unwrap(),
        Vec::<std::path::PathBuf>::new()
    );
    drop(dir);
}
