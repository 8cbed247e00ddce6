//! Issue 12: the attacks of the security review, each refused with the error a user sees.
//! Three real `raftpg run` processes with mutual TLS (as every integration test runs).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{phase, Cluster, BIN, RAFT_ONLY};
use raftpg::demo::ports;
use raftpg::pb::raft::raft_service_client::RaftServiceClient;
use raftpg::pb::raft::RaftMessage;
use raftpg::protocol::{PgRole, Report, ReportRequest};
use raftpg::raft::codec::encode;
use raftpg::tls::{make, Role, Transport, CLUSTER_HEADER, MEMBER_HEADER};

const FORM: Duration = Duration::from_secs(30);

/// `raftpg ctl` with the given TLS files (None: plaintext): (ok, stdout, stderr).
fn ctl_with(c: &Cluster, env: &[(&str, &std::path::Path)], args: &[&str]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["ctl", "--yes", "--endpoints", &c.grpc_addr(1)]).args(args);
    for var in ["RAFTPG_CACERT", "RAFTPG_CERT", "RAFTPG_KEY"] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.stdin(std::process::Stdio::null()).output().expect("run ctl");
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    eprintln!("$ raftpg ctl {}\n{o}{e}", args.join(" "));
    (out.status.success(), o, e)
}

/// A Raft client that presents member `name`'s certificate and claims to be `claim`.
async fn raft_client(
    c: &Cluster,
    name: &str,
    claim: &str,
) -> (RaftServiceClient<tonic::transport::Channel>, Transport) {
    let tls = c.tls.as_ref().expect("tests run with TLS");
    let (crt, key) = make::paths(&tls.dir, name);
    let config = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(&tls.ca).unwrap()))
        .identity(tonic::transport::Identity::from_pem(
            std::fs::read(crt).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    let addr = format!("127.0.0.1:{}", ports(c.base, 1).raft);
    let ch = raftpg::tls::endpoint(&addr, Some(&config))
        .unwrap()
        .connect()
        .await
        .expect("connect with a member's certificate");
    (RaftServiceClient::new(ch), Transport::plaintext("raftpg-demo", claim))
}

fn report_as(node: &str) -> RaftMessage {
    RaftMessage {
        payload: encode(&ReportRequest {
            node: node.into(),
            report: Report {
                generation: raftpg::types::Generation(1),
                pg: PgRole::Primary,
                streaming: false,
                timeline: Some(raftpg::types::Timeline(1)),
                lsn: Some(1),
                standby_flush: BTreeMap::new(),
                final_position: None,
                reason: "forged".into(),
                sync_applied: None,
                pending_restart: false,
            },
            renew: true,
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attack_of_the_review_is_refused() {
    let c = Cluster::start(26000, 3, RAFT_ONLY);
    for k in 1..=3 {
        c.wait_leader_seen_by(k, FORM).await;
    }
    let tls = c.tls.clone().expect("tests run with TLS");

    phase("a plaintext client is refused, and told to pass the certificates");
    let (ok, _, err) = ctl_with(&c, &[], &["list"]);
    assert!(!ok);
    assert!(err.contains("RAFTPG_CACERT"), "{err}");

    phase("a client whose certificate comes from another CA is refused");
    let other = tempfile::tempdir().unwrap();
    let other_ca = make::ca("elsewhere").unwrap();
    make::write(other.path(), "ca", &other_ca, false).unwrap();
    let (oc, ok_) = make::write(
        other.path(),
        "mallory",
        &make::leaf(&other_ca, "mallory", Role::Admin, &[], &[]).unwrap(),
        false,
    )
    .unwrap();
    let (ok, _, err) = ctl_with(
        &c,
        &[("RAFTPG_CACERT", &tls.ca), ("RAFTPG_CERT", &oc), ("RAFTPG_KEY", &ok_)],
        &["list"],
    );
    assert!(!ok);
    assert!(err.contains("was not issued by the CA in --cacert"), "{err}");
    phase("a client that trusts another CA does not trust the nodes");
    let (ok, _, err) = ctl_with(
        &c,
        &[
            ("RAFTPG_CACERT", &other.path().join("ca.crt")),
            ("RAFTPG_CERT", &oc),
            ("RAFTPG_KEY", &ok_),
        ],
        &["list"],
    );
    assert!(!ok);
    assert!(err.contains("not from the CA given with --cacert"), "{err}");

    phase("a read-only client may look, not change");
    let reader = [
        ("RAFTPG_CACERT", tls.ca.as_path()),
        ("RAFTPG_CERT", tls.reader_cert.as_path()),
        ("RAFTPG_KEY", tls.reader_key.as_path()),
    ];
    let (ok, out, _) = ctl_with(&c, &reader, &["list"]);
    assert!(ok && out.contains("n1"), "{out}");
    let (ok, _, _) = ctl_with(&c, &reader, &["history"]);
    assert!(ok);
    for args in [
        &["failover", "--to", "n2", "--force"][..],
        &["config", "set", "lease_ms=3000"],
        &["pause"],
        &["member", "remove", "n3"],
    ] {
        let (ok, _, err) = ctl_with(&c, &reader, args);
        assert!(!ok, "{args:?}");
        assert!(
            err.contains("needs the admin role") && err.contains("read-only"),
            "{err}"
        );
    }
    let (ok, _, err) = ctl_with(
        &c,
        &[
            ("RAFTPG_CACERT", &tls.ca),
            ("RAFTPG_CERT", &tls.admin_cert),
            ("RAFTPG_KEY", &tls.admin_key),
        ],
        &["config", "set", "lease_ms=3000"],
    );
    assert!(ok, "an admin may: {err}");

    phase("n2's certificate sending a Report as n1 is refused");
    let (mut raft, as_n2) = raft_client(&c, "n2", "n2").await;
    let e = raft.report(as_n2.request(report_as("n1"))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(
        e.message().contains("sent as 'n1'") && e.message().contains("'n2'"),
        "{e}"
    );
    let fine = raft.report(as_n2.request(report_as("n2"))).await;
    assert!(fine.is_ok(), "its own report is accepted: {fine:?}");

    phase("n2's certificate sending an AppendEntries as leader n1 is refused");
    let append = raftpg::raft::AppendEntriesRequest {
        vote: raftpg::raft::Vote::new_committed(1_000, 1),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    };
    let e = raft
        .append_entries(as_n2.request(RaftMessage {
            payload: encode(&append),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("node 1") && e.message().contains("'n2'"), "{e}");
    let vote = raftpg::raft::VoteRequest {
        vote: raftpg::raft::Vote::new(1_000, 1),
        last_log_id: None,
        leadership_transfer: false,
    };
    let e = raft
        .vote(as_n2.request(RaftMessage { payload: encode(&vote) }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "a vote for n1 from n2: {e}");

    phase("n2's certificate claiming to be n1 in the header is refused");
    let (mut raft, as_n1) = raft_client(&c, "n2", "n1").await;
    let e = raft.report(as_n1.request(report_as("n1"))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("claims to come from 'n1'"), "{e}");

    phase("a request for another cluster is refused");
    let (mut raft, _) = raft_client(&c, "n2", "n2").await;
    let mut req = tonic::Request::new(report_as("n2"));
    req.metadata_mut().insert(CLUSTER_HEADER, "other".parse().unwrap());
    req.metadata_mut().insert(MEMBER_HEADER, "n2".parse().unwrap());
    let e = raft.report(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("cluster"), "{e}");

    phase("an admin client certificate cannot speak Raft");
    let (mut raft, _) = raft_client(&c, "admin", "admin").await;
    let e = raft
        .report(Transport::plaintext("raftpg-demo", "admin").request(report_as("admin")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("not a node certificate"), "{e}");

    phase("a node certificate of no current member (a removed one) is refused by Raft and the control API");
    let ca = make::read_ca(&tls.dir).unwrap();
    let n9 = make::leaf(&ca, "n9", Role::Node, &[], &["127.0.0.1".parse().unwrap()]).unwrap();
    make::write(&tls.dir, "n9", &n9, false).unwrap();
    let (mut raft, as_n9) = raft_client(&c, "n9", "n9").await;
    let e = raft.report(as_n9.request(report_as("n9"))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("not a current member"), "{e}");
    let (n9_crt, n9_key) = make::paths(&tls.dir, "n9");
    let (ok, _, err) = ctl_with(
        &c,
        &[
            ("RAFTPG_CACERT", &tls.ca),
            ("RAFTPG_CERT", &n9_crt),
            ("RAFTPG_KEY", &n9_key),
        ],
        &["pause"],
    );
    assert!(!ok && err.contains("not a current member"), "{err}");

    phase("the refusals are logged on the node");
    let log = c.log_of(1);
    assert!(log.contains("refused"), "n1's log names the refusals");
    phase("the cluster still works");
    c.wait_leader_seen_by(1, FORM).await;
}

/// The Python interpreter with grpcio-reflection that `.ci/run` installs.
fn python() -> std::path::PathBuf {
    let p = match std::env::var_os("RAFTPG_TEST_PYTHON") {
        Some(p) => std::path::PathBuf::from(p),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyvenv/bin/python"),
    };
    assert!(
        p.exists(),
        "{} is missing: run bash .ci/run (it installs grpcio-reflection into target/pyvenv), \
         or set RAFTPG_TEST_PYTHON to a python with grpcio and grpcio-reflection",
        p.display()
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_reflection_v1alpha_lists_with_admin_and_reads_with_read_only() {
    let python = python();
    let c = Cluster::start(18000, 3, RAFT_ONLY);
    c.wait_leader_seen_by(1, FORM).await;
    let tls = c.tls.clone().expect("tests run with TLS");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/reflection_client.py");
    let run = |cert: &std::path::Path, key: &std::path::Path, action: &[&str]| {
        let out = std::process::Command::new(&python)
            .arg(&script)
            .arg(c.grpc_addr(1))
            .args([&tls.ca, cert, key])
            .args(action)
            .output()
            .expect("run python");
        let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        eprintln!("$ reflection_client.py {}\n{said}", action.join(" "));
        (out.status.success(), said)
    };
    phase("grpcio-reflection (v1alpha) lists the services with an admin certificate");
    let (ok, said) = run(&tls.admin_cert, &tls.admin_key, &["list"]);
    assert!(ok, "{said}");
    for service in ["raftpg.control.v1.Control", "grpc.reflection.v1alpha.ServerReflection"] {
        assert!(said.lines().any(|l| l == service), "{service} missing: {said}");
    }
    phase("a read-only certificate calls Status, found through reflection");
    let (ok, said) = run(&tls.reader_cert, &tls.reader_key, &["call", "Status"]);
    assert!(
        ok && said.contains("n1") && said.contains("initialized: true"),
        "{said}"
    );
    phase("and is denied Pause, with the role it needs");
    let (ok, said) = run(&tls.reader_cert, &tls.reader_key, &["call", "Pause"]);
    assert!(
        ok && said.contains("DENIED") && said.contains("needs the admin role"),
        "{said}"
    );
}

/// One HTTPS/1.0 request, trusting `ca`, with optional basic credentials: (code, body).
async fn https(addr: &str, ca: &std::path::Path, path: &str, basic: Option<&str>) -> (u16, String) {
    use base64::Engine as _;
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut s = connector
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the HTTP port");
    let auth = basic
        .map(|b| {
            format!(
                "Authorization: Basic {}\r\n",
                base64::engine::general_purpose::STANDARD.encode(b)
            )
        })
        .unwrap_or_default();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    (
        code,
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_health_without_credentials_cluster_and_metrics_with_basic_auth_over_https() {
    let secrets = tempfile::tempdir().unwrap();
    let pw = secrets.path().join("http.password");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let extra = format!(
        "manage = false\n\n[http]\ntls = true\nusername = \"monitor\"\npassword_file = \"{}\"\n",
        pw.display()
    );
    let c = Cluster::start(18500, 3, &extra);
    c.wait_leader_seen_by(1, FORM).await;
    let tls = c.tls.clone().expect("tests run with TLS");
    let addr = format!("127.0.0.1:{}", ports(c.base, 1).http);

    phase("health paths answer over HTTPS without credentials, and say only the role");
    let (code, body) = https(&addr, &tls.ca, "/health", None).await;
    assert!(code == 200 || code == 503, "{code} {body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json.as_object().unwrap().keys().collect::<Vec<_>>(), ["role"], "{body}");

    phase("/cluster and /metrics need the user and password");
    for path in ["/cluster", "/metrics"] {
        let (code, body) = https(&addr, &tls.ca, path, None).await;
        assert_eq!(code, 401, "{path}: {body}");
        let (code, _) = https(&addr, &tls.ca, path, Some("monitor:wrong")).await;
        assert_eq!(code, 401, "{path} with a wrong password");
        let (code, body) = https(&addr, &tls.ca, path, Some("monitor:s3cret")).await;
        assert_eq!(code, 200, "{path}: {body}");
    }

    phase("plain HTTP gets no answer from the HTTPS port");
    assert_eq!(c.http(1, "GET", "/health").await.map(|(code, _)| code), None);
}
