//! Issue 12: `postgres.ssl = true`. PostgreSQL serves TLS with the node's certificate,
//! accepts TCP only over TLS (`hostssl`), and replication, pg_basebackup, pg_rewind and
//! raftpg's own connections verify the cluster CA: through bootstrap, a kill -9 failover
//! and the old primary's rewind, with nothing acknowledged lost.

mod common;

use std::time::Duration;

use common::pg::Writer;
use common::{phase, Cluster};
use tokio::time::Instant;

const FORM: Duration = Duration::from_secs(90);
const FAILOVER: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_rewind_and_clients_run_over_tls_verified_by_the_cluster_ca() {
    let mut c = Cluster::start(19000, 3, "ssl = true\n");
    let old = c.wait_streaming(2, FORM).await;

    phase("both standbys stream over TLS; a plaintext TCP client is refused");
    let row = c
        .query_one(
            old,
            "SELECT count(*) FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) WHERE s.ssl AND r.state = 'streaming'",
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 2, "walsenders over TLS");
    let plain = format!("{} sslmode=disable", c.pg_conninfo(old));
    let refused = tokio_postgres::connect(&plain, tokio_postgres::NoTls)
        .await
        .err()
        .expect("a plaintext connection is refused");
    let said = refused
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(said.contains("no encryption"), "{refused:?}");
    let conninfo = c
        .query_one(old, "SELECT current_setting('ssl'), current_setting('ssl_ca_file')")
        .await
        .unwrap();
    assert_eq!(conninfo.get::<_, String>(0), "on");
    assert!(conninfo.get::<_, String>(1).ends_with("root.crt"));

    phase("a managed value overridden with ALTER SYSTEM is found, logged and reset");
    let sql = common::pg::connect(&c.pg_conninfo(old))
        .await
        .expect("connect over TLS");
    sql.batch_execute("ALTER SYSTEM SET synchronous_standby_names = ''")
        .await
        .unwrap();
    sql.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    c.wait_for("raftpg to restore synchronous_standby_names", FORM, || async {
        let row = c.query_one(old, "SHOW synchronous_standby_names").await?;
        row.get::<_, String>(0).starts_with("ANY 1 (").then_some(())
    })
    .await;
    assert!(
        c.log_of(old).contains("overriding the value raftpg manages"),
        "the override is logged"
    );
    let auto = sql
        .query_one(
            "SELECT count(*) FROM pg_file_settings WHERE sourcefile LIKE '%auto.conf'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(auto.get::<_, i64>(0), 0, "postgresql.auto.conf no longer sets it");

    phase("writes are acknowledged; the primary's node is killed");
    let w = Writer::start(&c.libpq()).await;
    w.wait_ack_after(Instant::now(), None, FAILOVER).await;
    let old_port = c.pg_port(old) as i32;
    c.kill9(old);
    c.kill9_postmaster(old);
    let killed = Instant::now();
    let first = w.wait_ack_after(killed, Some(old_port), FAILOVER).await;
    phase(&format!(
        "a new primary took a write {:?} after the kill",
        first.at - killed
    ));

    phase(&format!("n{old} comes back, rewound over TLS, and streams again"));
    c.start_node(old);
    let primary = c.wait_streaming(2, FORM).await;
    assert_ne!(primary, old);
    assert!(c.log_of(old).contains("pg_rewind onto"), "the old primary was rewound");
    let nodes: Vec<u16> = (1..=c.n).collect();
    c.assert_no_loss(w, &nodes, FORM).await;
}
