//! PostgreSQL effects against a real PostgreSQL (the one `.ci/run` installs):
//! initdb with checksums, start, observe as a primary, stop, observe Unknown.
//! As root, PostgreSQL runs as the `postgres` OS user.

use std::time::Duration;

use raftpg::postgres::{observe, Observation, PgBinaries, PgCtl, RunAs, StopMode};

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initdb_start_observe_stop_a_real_postgres() {
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
        port: 26001,
        log_file: dir.path().join("postgres.log"),
    };
    let conninfo = format!("host={} port=26001 user=postgres dbname=postgres", dir.path().display());

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
    assert_eq!(state.timeline, Some(1));
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
    assert_eq!(tli, 1);
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
