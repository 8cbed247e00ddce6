//! One test per configuration error: each names the key and says how to fix it.

use super::*;

const GOOD: &str = r#"
[node]
name = "n1"
data_dir = "/tmp/raftpg-n1"

[[members]]
name = "n1"
id = 1
raft = "127.0.0.1:15501"
grpc = "127.0.0.1:15601"
pg = "127.0.0.1:15401"
http = "127.0.0.1:15701"

[[members]]
name = "n2"
id = 2
raft = "127.0.0.1:15502"
grpc = "127.0.0.1:15602"
pg = "127.0.0.1:15402"
http = "127.0.0.1:15702"

[postgres]
superuser_password_file = "/etc/raftpg/superuser.password"
replication_password_file = "/etc/raftpg/replication.password"
"#;

fn error_of(text: &str) -> ConfigError {
    Config::parse(text, "test.toml").expect_err("configuration should be rejected")
}

#[test]
fn good_config_parses_with_defaults() {
    let c = Config::parse(GOOD, "test.toml").unwrap();
    assert_eq!(c.me().id, 1);
    assert_eq!(c.cluster.name, DEFAULT_CLUSTER_NAME);
    assert_eq!(c.raft.heartbeat_ms, DEFAULT_HEARTBEAT_MS);
    assert_eq!(c.initial_members().len(), 2);
}

#[test]
fn postgres_defaults_are_production_ones() {
    let c = Config::parse(GOOD, "test.toml").unwrap();
    assert!(c.postgres.manage);
    assert_eq!(c.postgres.host_auth, DEFAULT_HOST_AUTH);
    assert_eq!(c.postgres.replication_user, DEFAULT_REPLICATION_USER);
    assert_eq!(c.pg_data(), PathBuf::from("/tmp/raftpg-n1/pgdata"));
}

#[test]
fn password_files_are_required_unless_trust() {
    let e = error_of(&GOOD.replace("replication_password_file = \"/etc/raftpg/replication.password\"\n", ""));
    assert_eq!(e.key, "postgres.replication_password_file");
    assert!(e.problem.contains("mode 0600"), "{e}");
    let trusted = GOOD.replace("[postgres]\n", "[postgres]\nhost_auth = \"trust\"\n");
    Config::parse(&trusted, "test.toml").expect("trust needs no password");
    // Issue 12: trust only where nobody else can connect.
    for listen in ["10.0.0.1", "127.0.0.1, 10.0.0.1", "*", "0.0.0.0"] {
        let open = trusted.replace(
            "[postgres]\n",
            &format!("[postgres]\nlisten_addresses = \"{listen}\"\n"),
        );
        let e = error_of(&open);
        assert_eq!(e.key, "postgres.host_auth", "{listen}");
        assert!(
            e.problem.contains("scram-sha-256") && e.problem.contains("loopback"),
            "{e}"
        );
    }
    let local = trusted.replace("[postgres]\n", "[postgres]\nlisten_addresses = \"localhost, ::1\"\n");
    Config::parse(&local, "test.toml").expect("trust on loopback");
    let remote = trusted.replace("pg = \"127.0.0.1:15401\"", "pg = \"10.0.0.1:15401\"");
    assert_eq!(error_of(&remote).key, "postgres.host_auth");
    let e = error_of(&GOOD.replace("[postgres]\n", "[postgres]\nhost_auth = \"password\"\n"));
    assert_eq!(e.key, "postgres.host_auth");
    assert!(e.problem.contains("scram-sha-256"), "{e}");
}

#[test]
fn managed_postgres_parameters_are_refused() {
    let e = error_of(&format!("{GOOD}\n[postgres.parameters]\nport = \"5555\"\n"));
    assert_eq!(e.key, "postgres.parameters.port");
    assert!(e.problem.contains("managed by raftpg"), "{e}");
    let e = error_of(&GOOD.replace("[postgres]\n", "[postgres]\nreplication_user = \"postgres\"\n"));
    assert_eq!(e.key, "postgres.replication_user");
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let e = error_of(&GOOD.replace("[node]\n", "[node]\nbogus = 1\n"));
    assert_eq!(e.key, "bogus");
    assert!(e.file.starts_with("test.toml:"), "{e}");
    assert!(e.problem.contains("unknown field"), "{e}");
}

#[test]
fn missing_key_is_named() {
    let e = error_of(&GOOD.replace("data_dir = \"/tmp/raftpg-n1\"\n", ""));
    assert_eq!(e.key, "data_dir");
}

#[test]
fn bad_address_is_named() {
    let e = error_of(&GOOD.replace("127.0.0.1:15502", "127.0.0.1"));
    assert_eq!(e.key, "members[1].raft");
    assert!(e.problem.contains("no port"), "{e}");
    let e = error_of(&GOOD.replace("127.0.0.1:15702", "127.0.0.1:99999"));
    assert_eq!(e.key, "members[1].http");
}

#[test]
fn duplicate_name_is_rejected() {
    let e = error_of(&GOOD.replace("name = \"n2\"", "name = \"n1\""));
    assert_eq!(e.key, "members[1].name");
    assert!(e.problem.contains("duplicate member name"), "{e}");
}

#[test]
fn duplicate_id_is_rejected() {
    let e = error_of(&GOOD.replace("id = 2", "id = 1"));
    assert_eq!(e.key, "members[1].id");
    assert!(e.problem.contains("duplicate id"), "{e}");
}

#[test]
fn duplicate_address_is_rejected() {
    let e = error_of(&GOOD.replace("127.0.0.1:15602", "127.0.0.1:15601"));
    assert_eq!(e.key, "members[1].grpc");
}

#[test]
fn node_missing_from_members_is_rejected() {
    let e = error_of(&GOOD.replace("name = \"n1\"\ndata_dir", "name = \"n9\"\ndata_dir"));
    assert_eq!(e.key, "node.name");
    assert!(e.problem.contains("not in the member list"), "{e}");
}

#[test]
fn election_timeouts_must_be_ordered() {
    let e = error_of(&format!(
        "{GOOD}\n[raft]\nelection_timeout_min_ms = 900\nelection_timeout_max_ms = 800\n"
    ));
    assert_eq!(e.key, "raft.election_timeout_max_ms");
    let e = error_of(&format!("{GOOD}\n[raft]\nheartbeat_ms = 400\n"));
    assert_eq!(e.key, "raft.election_timeout_min_ms");
}

#[test]
fn no_members_is_rejected() {
    let text = "[node]\nname = \"n1\"\ndata_dir = \"/tmp/x\"\n";
    assert_eq!(error_of(text).key, "members");
}

#[test]
fn unreadable_file_says_so() {
    let e = Config::load(Path::new("/nonexistent/raftpg.toml")).unwrap_err();
    assert!(e.problem.contains("cannot read"), "{e}");
}

#[test]
fn shipped_example_config_is_valid() {
    let text = include_str!("../deploy/raftpg.example.toml");
    let c = Config::parse(text, "deploy/raftpg.example.toml").expect("the example must stay valid");
    assert_eq!(c.members.len(), 3);
    assert_eq!(c.cluster.name, "orders");
}

#[test]
fn relative_paths_are_made_absolute_against_the_start_directory() {
    let text = GOOD
        .replace("/tmp/raftpg-n1", "nodes/n1")
        .replace("/etc/raftpg/superuser.password", "secrets/su");
    let mut c = Config::parse(&text, "test.toml").unwrap();
    c.resolve_paths(Path::new("/srv/raftpg"));
    assert_eq!(c.node.data_dir, Path::new("/srv/raftpg/nodes/n1"));
    assert_eq!(c.pg_data(), Path::new("/srv/raftpg/nodes/n1/pgdata"));
    assert_eq!(c.raft_dir(), Path::new("/srv/raftpg/nodes/n1/raft"));
    assert_eq!(
        c.postgres.superuser_password_file.as_deref(),
        Some(Path::new("/srv/raftpg/secrets/su"))
    );
    // Absolute paths are left as they are.
    assert_eq!(
        c.postgres.replication_password_file.as_deref(),
        Some(Path::new("/etc/raftpg/replication.password"))
    );
}

#[test]
fn plaintext_off_loopback_only_on_purpose() {
    // Issue 12: without [tls], a node that listens beyond loopback is refused...
    for (from, to) in [
        ("raft = \"127.0.0.1:15501\"", "raft = \"10.0.0.1:15501\""),
        ("grpc = \"127.0.0.1:15601\"", "grpc = \"0.0.0.0:15601\""),
        ("http = \"127.0.0.1:15701\"", "http = \"192.168.1.5:15701\""),
    ] {
        let open = GOOD.replace(from, to);
        let e = error_of(&open);
        assert_eq!(e.key, "tls", "{to}");
        assert!(
            e.problem.contains("insecure = true") && e.problem.contains("raftpg tls"),
            "{e}"
        );
        // ...unless the operator says so, or configures TLS.
        Config::parse(&format!("insecure = true\n{open}"), "test.toml").expect("insecure on purpose");
        let tls = format!("{open}\n[tls]\nca_file = \"ca.crt\"\ncert_file = \"n1.crt\"\nkey_file = \"n1.key\"\n");
        let c = Config::parse(&tls, "test.toml").expect("TLS");
        assert_eq!(c.tls.unwrap().cert_file, std::path::PathBuf::from("n1.crt"));
    }
    // Another member's address is not this node's listener.
    Config::parse(
        &GOOD.replace("raft = \"127.0.0.1:15502\"", "raft = \"10.0.0.2:15502\""),
        "test.toml",
    )
    .expect("only this node's listeners count");
    let e = error_of(&GOOD.replace("[postgres]\n", "[tls]\nca_file = \"ca.crt\"\n\n[postgres]\n"));
    assert!(e.problem.contains("cert_file"), "{e}");
}

#[test]
fn http_section_needs_its_parts() {
    let with = |http: &str| GOOD.replace("[postgres]\n", &format!("{http}\n[postgres]\n"));
    let e = error_of(&with("[http]\ntls = true\n"));
    assert_eq!(e.key, "http.tls");
    assert!(e.problem.contains("[tls]"), "{e}");
    assert_eq!(error_of(&with("[http]\nusername = \"m\"\n")).key, "http.password_file");
    assert_eq!(error_of(&with("[http]\npassword_file = \"/p\"\n")).key, "http.username");
    assert_eq!(
        error_of(&with("[http]\nusername = \"a:b\"\npassword_file = \"/p\"\n")).key,
        "http.username"
    );
    Config::parse(&with("[http]\nusername = \"monitor\"\npassword_file = \"/p\"\n"), "t").unwrap();
}

#[test]
fn postgres_ssl_needs_the_node_certificate() {
    let e = error_of(&GOOD.replace("[postgres]\n", "[postgres]\nssl = true\n"));
    assert_eq!(e.key, "postgres.ssl");
    assert!(e.problem.contains("[tls]"), "{e}");
    let with_tls = GOOD.replace(
        "[postgres]\n",
        "[tls]\nca_file = \"ca.crt\"\ncert_file = \"n1.crt\"\nkey_file = \"n1.key\"\n\n[postgres]\nssl = true\n",
    );
    assert!(Config::parse(&with_tls, "t").unwrap().postgres.ssl);
}

#[test]
fn adopt_must_name_a_member() {
    let adopting = GOOD.replace(
        "[[members]]\nname = \"n1\"",
        "[cluster]\nadopt = \"n2\"\n\n[[members]]\nname = \"n1\"",
    );
    let c = Config::parse(&adopting, "test.toml").unwrap();
    assert_eq!(c.cluster.adopt.as_deref(), Some("n2"));
    let e = error_of(&adopting.replace("adopt = \"n2\"", "adopt = \"db9\""));
    assert_eq!(e.key, "cluster.adopt");
    assert!(e.problem.contains("'db9' is not in the member list (n1, n2)"), "{e}");
}

#[test]
fn member_tags_in_the_file_are_committed_after_init_and_checked_first() {
    let third = r#"
[[members]]
name = "n3"
id = 3
raft = "127.0.0.1:15503"
grpc = "127.0.0.1:15603"
pg = "127.0.0.1:15403"
http = "127.0.0.1:15703"
"#;
    let tagged = GOOD.replace(
        "http = \"127.0.0.1:15702\"\n",
        "http = \"127.0.0.1:15702\"\nnoloadbalance = true\nreplicatefrom = \"n3\"\n",
    ) + third;
    let c = Config::parse(&tagged, "test.toml").unwrap();
    let cmds = c.initial_tag_changes();
    assert_eq!(cmds.len(), 1);
    assert_eq!(
        cmds[0].to_string(),
        "change tags of n2: noloadbalance=true replicatefrom=n3"
    );
    // A stranger upstream, or too few members left to be synchronous: refused at start.
    let e = error_of(&GOOD.replace(
        "http = \"127.0.0.1:15702\"\n",
        "http = \"127.0.0.1:15702\"\nreplicatefrom = \"n9\"\n",
    ));
    assert_eq!(e.key, "members[1]");
    assert!(e.problem.contains("no member is called n9"), "{}", e.problem);
    let e = error_of(&GOOD.replace(
        "http = \"127.0.0.1:15702\"\n",
        "http = \"127.0.0.1:15702\"\nnosync = true\n",
    ));
    assert!(e.problem.contains("at least two"), "{}", e.problem);
}

#[test]
fn unsafe_settings_are_off_by_default_named_when_on_and_checked() {
    let c = Config::parse(GOOD, "test.toml").unwrap();
    assert!(c.unsafe_for_testing.warnings().is_empty(), "safe by default");
    let on = format!("{GOOD}\n[unsafe_for_testing]\nno_fence_keeper = true\ncontroller_deadline_ms = 100\nskip_final_reports = true\n");
    let c = Config::parse(&on, "test.toml").unwrap();
    let warnings = c.unsafe_for_testing.warnings();
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(warnings.iter().all(|w| w.starts_with("UNSAFE")), "{warnings:?}");
    assert!(warnings[1].contains("controller_deadline_ms = 100"), "{warnings:?}");
    assert!(warnings[2].contains("skip_final_reports"), "{warnings:?}");
    let typo = format!("{GOOD}\n[unsafe_for_testing]\nno_fence = true\n");
    assert!(error_of(&typo).to_string().contains("no_fence"));
}
