//! L2: operating a real three-node cluster with `raftpg ctl`, the HTTP checks behind a
//! real HAProxy, and membership changes, with a background writer that must lose nothing.
//! The tests run one at a time (three PostgreSQL servers each, on two cores).

mod common;

use std::time::Duration;

use common::pg::Writer;
use common::{phase, Cluster};
use nix::sys::signal::Signal;
use tokio::sync::Mutex;
use tokio::time::Instant;

const FORM: Duration = Duration::from_secs(90);
const CHANGE: Duration = Duration::from_secs(30);

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

async fn formed(base: u16) -> (Cluster, u16) {
    let c = Cluster::start(base, 3, "");
    let primary = c.wait_streaming(2, FORM).await;
    // Member reports reach every node with the lease renewals: each node's own view
    // (which its HTTP checks answer from) must show every member up, standbys' lag known.
    c.wait_for("every node to see every member running or streaming", FORM, || async {
        for k in 1..=3 {
            let s = c.status(k).await?;
            let ok = s.member_status.len() == 3
                && s.member_status
                    .iter()
                    .all(|m| m.state == "running" || (m.state == "streaming" && m.lag_bytes.is_some()));
            if !ok {
                return None;
            }
        }
        Some(())
    })
    .await;
    (c, primary)
}

/// Every acknowledged id is on each of `nodes`.
async fn check_no_loss(c: &Cluster, writer: Writer, nodes: &[u16]) {
    c.assert_no_loss(writer, nodes, FORM).await;
}

fn other_than(primary: u16, skip: &[u16]) -> u16 {
    (1..=3).find(|k| *k != primary && !skip.contains(k)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_commands_their_errors_and_a_switchover_that_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (c, primary) = formed(30000).await;

    phase("list: a table with a header line, and JSON with role, state, lag and reason per member");
    let table = c.ctl_ok(&["list"]);
    assert!(
        table.starts_with("Cluster: raftpg-demo (generation 1, Raft leader "),
        "{table}"
    );
    for col in ["Member", "Host", "Role", "State", "TL", "Lag in MB"] {
        assert!(table.contains(col), "{table}");
    }
    assert!(table.contains("Primary") && table.contains("Quorum Standby"), "{table}");
    let json: serde_json::Value = serde_json::from_str(&c.ctl_ok(&["list", "--json"])).unwrap();
    let members = json["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    for m in members {
        assert!(m["reason"].as_str().is_some_and(|r| !r.is_empty()), "{m}");
        assert!(m["state"].as_str().is_some(), "{m}");
    }
    let p = &members[(primary - 1) as usize];
    assert_eq!(p["role"], "primary");
    assert!(
        p["lease_remaining_ms"].as_u64().is_some(),
        "the primary shows its lease: {p}"
    );
    let h = c.ctl_ok(&["history"]);
    assert!(h.contains("bootstrap"), "{h}");
    let dsn = c.ctl_ok(&["dsn", &format!("n{primary}")]);
    assert_eq!(dsn.trim(), format!("host=127.0.0.1 port={}", c.pg_port(primary)));
    let all = c.ctl_ok(&["dsn"]);
    assert!(all.contains("target_session_attrs=read-write"), "{all}");
    let versions = c.ctl_ok(&["version"]);
    for k in 1..=3 {
        let line = versions
            .lines()
            .find(|l| l.contains(&format!("| n{k} ")))
            .unwrap_or_else(|| panic!("no row for n{k}: {versions}"));
        assert!(line.contains(env!("CARGO_PKG_VERSION")), "{line}");
        assert!(line.contains("postgres (PostgreSQL) 15"), "{line}");
        assert!(line.contains("| 15."), "the running server's version: {line}");
    }

    phase("--dry-run: the plan from the controller's own decision, nothing changed");
    let generation = c.status(1).await.unwrap().generation;
    let target = other_than(primary, &[]);
    // Right after bootstrap a standby's last report may still be a WAL segment behind
    // (CI: 16 MB), and a failover refuses such a target.
    c.wait_switchover_target(target, FORM).await;
    let plan = c.ctl_ok(&["failover", "--to", &format!("n{target}"), "--dry-run"]);
    assert!(plan.contains("nothing was changed"), "{plan}");
    assert!(plan.contains("would promote: n"), "{plan}");
    assert!(plan.contains("waits for reports from: n"), "{plan}");
    assert!(plan.contains("worst-case loss: none"), "{plan}");
    let plan = c.ctl_ok(&["switchover", "--to", &format!("n{target}"), "--dry-run"]);
    assert!(plan.contains(&format!("would promote: n{target}")), "{plan}");
    assert!(
        plan.contains(&format!("n{primary} checkpoints and stops cleanly")),
        "{plan}"
    );
    c.ctl_fails(&["switchover", "--to", "n9", "--dry-run"], "unknown member 'n9'");
    let s = c.status(1).await.unwrap();
    assert_eq!(s.generation, generation, "a dry run changed the state");
    assert_eq!(s.primary.unwrap().node, format!("n{primary}"));

    phase("error paths: unknown member, no endpoint, switchover to a stopped node");
    c.ctl_fails(&["switchover", "--to", "n9"], "unknown member 'n9'");
    c.ctl_fails(&["failover", "--to", "n9"], "unknown member 'n9'");
    c.ctl_fails(&["restart", "n9"], "unknown member");
    c.ctl_fails(&["reinit", &format!("n{primary}")], "is the primary");
    c.ctl_fails(&["member", "remove", &format!("n{primary}")], "is the primary");
    let (ok, _, err) = c.ctl_at("127.0.0.1:1", &["list"]);
    assert!(!ok && err.contains("no endpoint answered"), "{err}");
    let stopped = other_than(primary, &[]);
    let stopped_name = format!("n{stopped}");
    let mut c = c;
    assert!(c.stop(stopped), "n{stopped} stops cleanly");
    // ctl asks whichever node answers, and each judges from its own view: wait until the
    // stopped member's report has gone stale in every running node's view.
    c.wait_for(
        "the stopped member to show as not streaming on every node",
        CHANGE,
        || async {
            for k in (1..=3).filter(|k| *k != stopped) {
                let s = c.status(k).await?;
                let m = s.member_status.iter().find(|m| m.name == stopped_name)?;
                if m.state == "streaming" {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    c.ctl_fails(&["switchover", "--to", &stopped_name], "not a streaming standby");
    c.ctl_fails(&["failover", "--to", &stopped_name], "--force");
    c.start_node(stopped);
    c.wait_streaming(2, FORM).await;

    phase("failover without --force to a lagging standby is refused");
    let lagging = other_than(primary, &[]);
    let w = Writer::start(&c.libpq()).await;
    w.wait_ack_after(Instant::now(), None, CHANGE).await;
    let receiver: i32 = c
        .query_one(lagging, "SELECT pid FROM pg_stat_wal_receiver")
        .await
        .expect("walreceiver pid")
        .get(0);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(receiver), Signal::SIGSTOP).unwrap();
    c.ctl_ok(&["config", "set", "maximum_lag_on_failover=1"]);
    let lag_name = format!("n{lagging}");
    c.wait_for("the lagging standby to show lag", CHANGE, || async {
        let s = c.status(1).await?;
        let m = s.member_status.iter().find(|m| m.name == lag_name)?;
        m.lag_bytes.filter(|l| *l > 1).map(|_| ())
    })
    .await;
    c.ctl_fails(&["failover", "--to", &lag_name], "--force");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(receiver), Signal::SIGCONT).unwrap();
    c.ctl_ok(&["config", "set", "maximum_lag_on_failover="]);

    phase("pause shows everywhere and refuses a switchover; resume");
    c.ctl_ok(&["pause"]);
    for k in 1..=3 {
        c.wait_for(&format!("n{k} to show paused"), CHANGE, || async {
            let s = c.status(k).await?;
            let (code, body) = c.http(k, "GET", "/cluster").await?;
            (s.paused && code == 200 && body.contains("\"pause\":true")).then_some(())
        })
        .await;
    }
    let target = other_than(primary, &[]);
    c.ctl_fails(&["switchover", "--to", &format!("n{target}")], "paused");
    c.ctl_ok(&["resume"]);

    phase("switchover under writes: no acknowledged write lost, no rewind, the old primary follows");
    c.wait_switchover_target(target, CHANGE).await;
    let out = c.ctl_ok(&[
        "switchover",
        "--from",
        &format!("n{primary}"),
        "--to",
        &format!("n{target}"),
    ]);
    assert!(out.contains(&format!("to n{target} (timeline 2")), "{out}");
    w.wait_ack_after(Instant::now(), Some(c.pg_port(primary) as i32), CHANGE)
        .await;
    let s = c.status(target).await.unwrap();
    let last = s.history.last().unwrap();
    assert_eq!(
        (last.kind.as_str(), last.timeline, last.parent_timeline),
        ("switchover", 2, 1)
    );
    c.wait_for(
        "the old primary to stream from the new one on timeline 2",
        FORM,
        || async {
            let row = c
                .query_one(primary, "SELECT status, received_tli FROM pg_stat_wal_receiver")
                .await?;
            let (status, tli): (String, i32) = (row.get(0), row.get(1));
            (status == "streaming" && tli == 2).then_some(())
        },
    )
    .await;
    assert!(
        !c.log_of(primary).contains("pg_rewind onto"),
        "the old primary was rewound"
    );
    assert!(c.log_of(primary).contains("without a rewind"));
    check_no_loss(&c, w, &[1, 2, 3]).await;

    phase("config set refuses what would run commands, load code or name files, in any case");
    for (kv, says) in [
        (
            "postgresql.parameters.archive_command=touch /tmp/raftpg-pwned",
            "runs a shell command",
        ),
        (
            "postgresql.parameters.ARCHIVE_COMMAND=touch /tmp/raftpg-pwned",
            "runs a shell command",
        ),
        ("postgresql.parameters.include=/etc/passwd", "names a file"),
        ("postgresql.parameters.shared_preload_libraries=evil", "loads code"),
        ("postgresql.parameters.Hba_File=/tmp/hba", "raftpg sets it itself"),
        ("postgresql.parameters.synchronous_commit=local", "quorum"),
        ("postgresql.parameters.wrok_mem=16MB", "did you mean work_mem?"),
    ] {
        c.ctl_fails(&["config", "set", kv], says);
    }
    // One misspelt name refuses the whole command: nothing of it is committed.
    c.ctl_fails(
        &[
            "config",
            "set",
            "lease_ms=2500",
            "postgresql.parameters.shared_bufers=64MB",
        ],
        "did you mean shared_buffers?",
    );
    let shown = c.ctl_ok(&["config", "show"]);
    assert!(!shown.to_ascii_lowercase().contains("archive_command"), "{shown}");
    assert!(
        !shown.contains("wrok_mem") && !shown.contains("shared_bufers"),
        "{shown}"
    );
    assert!(!shown.contains("lease_ms = 2500"), "{shown}");

    phase("a parameter that needs a restart shows as pending until `ctl restart`");
    c.ctl_ok(&["config", "set", "postgresql.parameters.max_locks_per_transaction=128"]);
    c.wait_for("every member to show a pending restart", CHANGE, || async {
        let s = c.status(1).await?;
        s.member_status.iter().all(|m| m.pending_restart).then_some(())
    })
    .await;
    let table = c.ctl_ok(&["list"]);
    assert!(table.contains("Pending restart"), "{table}");
    let primary_now = c.wait_streaming(2, FORM).await;
    let (ok, out, err) = c.ctl(&["--yes", "restart", "--pending"]);
    assert!(ok, "{err}");
    let order: Vec<&str> = err
        .lines()
        .filter_map(|l| l.strip_prefix("restarting ")?.strip_suffix("..."))
        .collect();
    assert_eq!(order.len(), 3, "{err}");
    assert_eq!(order[2], format!("n{primary_now}"), "the primary last: {err}");
    assert_eq!(out.matches("runs again").count(), 3, "{out}");
    c.wait_for("the restarts to apply the parameter everywhere", FORM, || async {
        for k in 1..=3 {
            let v: String = c.query_one(k, "SHOW max_locks_per_transaction").await?.get(0);
            if v != "128" {
                return None;
            }
        }
        let s = c.status(1).await?;
        s.member_status.iter().all(|m| !m.pending_restart).then_some(())
    })
    .await;

    phase("reinit re-clones a standby, which streams again");
    let standby = other_than(target, &[]);
    let clones_before = c.log_of(standby).matches("clone finished").count();
    c.ctl_ok(&["reinit", &format!("n{standby}")]);
    c.wait_for("the re-cloned standby to stream again", FORM, || async {
        let again = c.log_of(standby).matches("clone finished").count() > clones_before;
        (again && c.topology().await?.1.len() == 2).then_some(())
    })
    .await;

    phase("/metrics parses as Prometheus text and counts the switchover");
    let (code, body) = c.http(1, "GET", "/metrics").await.expect("metrics");
    assert_eq!(code, 200);
    check_prometheus_text(&body);
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
    let value = |name: &str| {
        scrape.samples.iter().find(|s| s.metric == name).map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
            _ => f64::NAN,
        })
    };
    assert_eq!(value("raftpg_switchovers_total"), Some(1.0));
    assert_eq!(value("raftpg_generation"), Some(2.0));
    assert!(value("raftpg_last_switchover_duration_seconds").is_some_and(|v| v > 0.0));
    assert!(scrape
        .samples
        .iter()
        .any(|s| s.metric == "raftpg_replication_lag_bytes"));
}

/// Strict check of the exposition format: every sample belongs to a family declared by
/// `# TYPE` before it, and is `name{labels} value` with a number.
fn check_prometheus_text(body: &str) {
    let mut declared = std::collections::BTreeSet::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let name = it.next().unwrap();
            let kind = it.next().unwrap();
            assert!(["gauge", "counter"].contains(&kind), "{line}");
            declared.insert(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line: {line}"));
        assert!(value.parse::<f64>().is_ok(), "bad value: {line}");
        let name = series.split('{').next().unwrap();
        assert!(declared.contains(name), "sample before its TYPE: {line}");
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad name: {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "{line}"
            );
        }
    }
    assert!(declared.len() >= 10, "{body}");
}

fn haproxy_config(c: &Cluster, listen: u16, stats: u16) -> String {
    let servers: String = (1..=3)
        .map(|k| {
            let p = raftpg::demo::ports(c.base, k);
            format!("    server n{k} 127.0.0.1:{} maxconn 100 check port {}\n", p.pg, p.http)
        })
        .collect();
    // As in Patroni's documented haproxy.cfg, with faster checks for a test.
    format!(
        "global\n    maxconn 100\n\ndefaults\n    mode tcp\n    timeout client 30m\n    timeout server 30m\n    timeout connect 4s\n    timeout check 2s\n\n\
         listen stats\n    mode http\n    bind 127.0.0.1:{stats}\n    stats enable\n    stats uri /\n\n\
         listen primary\n    bind 127.0.0.1:{listen}\n    option httpchk\n    http-check send meth OPTIONS uri /primary\n    http-check expect status 200\n\
         \x20   default-server inter 300ms fall 2 rise 1 on-marked-down shutdown-sessions\n{servers}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_routes_writes_to_the_primary_through_switchover_and_failover() {
    let _one = ONE_AT_A_TIME.lock().await;
    let haproxy = ["/usr/sbin/haproxy", "/usr/local/sbin/haproxy"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("haproxy is not installed: bash .ci/run installs it (apt-get install haproxy)");
    let (mut c, primary) = formed(30400).await;

    phase("HTTP checks: /primary only on the primary, /replica on the standbys, HEAD and OPTIONS alike");
    for k in 1..=3 {
        let want = if k == primary { 200 } else { 503 };
        for method in ["GET", "HEAD", "OPTIONS"] {
            let (code, _) = c.http(k, method, "/primary").await.unwrap();
            assert_eq!(code, want, "{method} /primary on n{k}");
        }
        // A node's view changes with every report it passes on (each lease / 4): a standby's
        // lag can be unknown for one report right after the cluster formed. It must settle.
        let want = 200 + 303 * u16::from(k == primary);
        c.wait_for(
            &format!("/replica on n{k} to answer {want}"),
            Duration::from_secs(10),
            || async {
                let (code, _) = c.http(k, "GET", "/replica?lag=16MB").await?;
                (code == want).then_some(())
            },
        )
        .await;
        assert_eq!(c.http(k, "GET", "/read-only").await.unwrap().0, 200);
        assert_eq!(c.http(k, "GET", "/health").await.unwrap().0, 200);
        assert_eq!(c.http(k, "GET", "/liveness").await.unwrap().0, 200);
        assert_eq!(c.http(k, "GET", "/readiness").await.unwrap().0, 200);
        assert_eq!(c.http(k, "GET", "/replica?lag=lots").await.unwrap().0, 400);
    }
    let (code, body) = c.http(1, "GET", "/cluster").await.unwrap();
    let cluster: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(code, 200);
    assert_eq!(cluster["members"].as_array().unwrap().len(), 3);
    assert!(body.contains("\"role\":\"leader\""), "{body}");

    phase("a real HAProxy configured like a Patroni deployment");
    let listen = c.base + 90;
    let cfg = c.dir.path().join("haproxy.cfg");
    std::fs::write(&cfg, haproxy_config(&c, listen, c.base + 91)).unwrap();
    let mut proxy = std::process::Command::new(haproxy)
        .arg("-f")
        .arg(&cfg)
        .arg("-db")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start haproxy");
    let through = format!(
        "host=127.0.0.1 port={listen} user=postgres password={} dbname=postgres connect_timeout=1",
        c.password
    );
    // HAProxy starts every checked server UP until its checks fail, so wait
    // for its own stats to show the primary alone UP before writing.
    let stats = format!("127.0.0.1:{}", c.base + 91);
    c.wait_for("HAProxy to mark only the primary UP", CHANGE, || async {
        let (_, csv) = common::http_at(&stats, "GET", "/;csv").await?;
        let up: Vec<String> = csv
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f.len() > 17 && f[0] == "primary" && f[1].starts_with('n') && f[17] == "UP").then(|| f[1].to_string())
            })
            .collect();
        (up == [format!("n{primary}")]).then_some(())
    })
    .await;
    let w = Writer::start(&through).await;
    let first = w.wait_ack_after(Instant::now(), None, CHANGE).await;
    assert_eq!(
        first.port,
        c.pg_port(primary) as i32,
        "HAProxy sends writes to the primary"
    );

    phase("switchover: HAProxy follows to the new primary");
    let target = other_than(primary, &[]);
    c.wait_switchover_target(target, CHANGE).await;
    c.ctl_ok(&["switchover", "--to", &format!("n{target}")]);
    let since = Instant::now();
    let ack = w.wait_ack_after(since, Some(c.pg_port(primary) as i32), CHANGE).await;
    assert_eq!(ack.port, c.pg_port(target) as i32);

    phase("kill -9 of the new primary's node: HAProxy follows the failover");
    c.kill9(target);
    c.kill9_postmaster(target);
    let ack = w
        .wait_ack_after(Instant::now(), Some(c.pg_port(target) as i32), Duration::from_secs(60))
        .await;
    let survivor = Cluster::node_index(&c.status(ack.port as u16 - c.base).await.unwrap().primary.unwrap().node);
    assert_eq!(ack.port, c.pg_port(survivor) as i32);
    c.start_node(target);
    let _ = proxy.kill();
    let _ = proxy.wait();
    check_no_loss(&c, w, &[1, 2, 3]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_grow_remove_and_replace_while_writing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (mut c, primary) = formed(30800).await;
    let w = Writer::start(&c.libpq()).await;
    w.wait_ack_after(Instant::now(), None, CHANGE).await;

    phase("grow to four: learner, clone, voter, synchronous set ANY 2");
    c.add_node(4, "");
    let p = raftpg::demo::ports(c.base, 4);
    let (raft, grpc, pg, http) = (
        format!("127.0.0.1:{}", p.raft),
        format!("127.0.0.1:{}", p.grpc),
        format!("127.0.0.1:{}", p.pg),
        format!("127.0.0.1:{}", p.http),
    );
    // n4's own endpoint first, as an operator may list every node: it knows no Raft leader
    // yet, so ctl goes on to the next endpoint. Once it listens: an endpoint that does not
    // answer is skipped without a word (CI once ran ctl before n4's server was up).
    c.wait_for("n4's gRPC server to listen", FORM, || async {
        std::net::TcpStream::connect(&grpc).ok().map(|_| ())
    })
    .await;
    let (ok, out, err) = c.ctl_at(
        &format!("{grpc},{}", c.endpoints()),
        &[
            "member", "add", "--name", "n4", "--id", "4", "--raft", &raft, "--grpc", &grpc, "--pg", &pg, "--http",
            &http,
        ],
    );
    assert!(ok, "{err}");
    assert!(
        err.contains("no Raft leader is known") && err.contains("trying the next endpoint"),
        "{err}"
    );
    assert!(out.contains("Raft learner") && out.contains("n4 added"), "{out}");
    let s = c.status(1).await.unwrap();
    assert!(s.member_status.iter().all(|m| m.raft == "voter"), "{s:?}");
    let names: String = c
        .query_one(primary, "SHOW synchronous_standby_names")
        .await
        .unwrap()
        .get(0);
    assert!(names.starts_with("ANY 2 ("), "{names}");
    w.wait_ack_after(Instant::now(), None, CHANGE).await;

    phase("remove a standby");
    let removed = other_than(primary, &[]);
    c.ctl_ok(&["member", "remove", &format!("n{removed}")]);
    assert!(c.stop(removed));
    let s = c.status(primary).await.unwrap();
    assert_eq!(s.members.len(), 3);
    w.wait_ack_after(Instant::now(), None, CHANGE).await;

    phase("replace a killed standby with a new node");
    let dead = other_than(primary, &[removed]);
    c.kill9(dead);
    c.kill9_postmaster(dead);
    c.wait_for("a Raft leader among the live members", CHANGE, || async {
        let s = c.status(primary).await?;
        // A live member: not the killed node, nor the removed one that may still be named.
        let live = [format!("n{primary}"), "n4".to_string()];
        live.contains(&s.raft_leader).then_some(())
    })
    .await;
    c.add_node(5, "");
    let p = raftpg::demo::ports(c.base, 5);
    let (raft, grpc, pg, http) = (
        format!("127.0.0.1:{}", p.raft),
        format!("127.0.0.1:{}", p.grpc),
        format!("127.0.0.1:{}", p.pg),
        format!("127.0.0.1:{}", p.http),
    );
    let endpoints = format!("{},{}", c.grpc_addr(primary), c.grpc_addr(4));
    let (ok, out, err) = c.ctl_at(
        &endpoints,
        &[
            "member",
            "replace",
            &format!("n{dead}"),
            "--name",
            "n5",
            "--id",
            "5",
            "--raft",
            &raft,
            "--grpc",
            &grpc,
            "--pg",
            &pg,
            "--http",
            &http,
        ],
    );
    assert!(ok, "{out}{err}");
    let s = c.status(primary).await.unwrap();
    let mut names: Vec<String> = s.members.iter().map(|m| m.name.clone()).collect();
    names.sort();
    assert_eq!(names, [format!("n{primary}"), "n4".to_string(), "n5".to_string()]);
    w.wait_ack_after(Instant::now(), None, CHANGE).await;
    check_no_loss(&c, w, &[primary, 4, 5]).await;
}
