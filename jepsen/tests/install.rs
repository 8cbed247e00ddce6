//! Issue 15: docs/install.md followed step by step on three network-namespace hosts with
//! their own addresses (10.77.0.1-3 instead of the document's 10.0.0.1-3). The package is
//! built and installed with dpkg; each host gets its own /etc/raftpg (`ip netns exec` binds
//! /etc/netns/HOST/raftpg over it) and its own /var/lib/raftpg (bound over the package's);
//! raftpg runs as the unit runs it (`User=postgres`, its ExecStart), since there is no
//! systemd here. Then `raftpg ctl list`, HAProxy with the document's configuration, a client
//! through HAProxy, a host killed outright, and the client following. Needs root.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftpg_jepsen::hosts;
use tokio::time::Instant;

const FORM: Duration = Duration::from_secs(120);
const HOSTS: [&str; 3] = ["db1", "db2", "db3"];
const HAPROXY_PORT: u16 = 5000;

fn ip(k: usize) -> String {
    hosts::ip(k as u16 + 1).to_string()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

fn chown_postgres(path: &Path) {
    run(Command::new("chown").args(["-R", "postgres:postgres"]).arg(path));
}

struct Cleanup {
    children: Vec<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = hosts::sweep();
        for k in 1..=3u16 {
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", hosts::netns(k)));
        }
        let _ = Command::new("dpkg").args(["--purge", "raftpg"]).output();
        let _ = std::fs::remove_dir_all("/var/lib/raftpg");
    }
}

/// docs/install.md's `raftpg.toml` for host `k`, with this test's addresses.
fn config(k: usize) -> String {
    let mut out = format!(
        "[node]\nname = \"{}\"\ndata_dir = \"/var/lib/raftpg\"\n\n[cluster]\nname = \"orders\"\n",
        HOSTS[k]
    );
    for (i, name) in HOSTS.iter().enumerate() {
        let a = ip(i);
        out += &format!(
            "\n[[members]]\nname = \"{name}\"\nid = {}\nraft = \"{a}:7401\"\ngrpc = \"{a}:7501\"\npg = \"{a}:5432\"\nhttp = \"{a}:8008\"\n",
            i + 1
        );
    }
    out += &format!(
        "\n[tls]\nca_file = \"/etc/raftpg/tls/ca.crt\"\ncert_file = \"/etc/raftpg/tls/{0}.crt\"\nkey_file = \"/etc/raftpg/tls/{0}.key\"\n",
        HOSTS[k]
    );
    out + "\n[postgres]\nsuperuser_password_file = \"/etc/raftpg/superuser.password\"\nreplication_password_file = \"/etc/raftpg/replication.password\"\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_md_on_three_hosts_then_a_host_dies_and_clients_follow() {
    hosts::require_root().expect("the install test builds network namespaces: run it as root (CI does)");
    let installed = Command::new("dpkg").args(["-s", "raftpg"]).output().unwrap();
    assert!(
        !installed.status.success(),
        "raftpg is already installed here (dpkg -s raftpg): this test installs and purges it"
    );
    hosts::sweep().unwrap();
    hosts::setup(3).unwrap();
    let mut cleanup = Cleanup { children: Vec::new() };
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    eprintln!("=== 1. the package: bash deploy/build-deb, dpkg -i");
    let exe = std::env::current_exe().unwrap();
    let binary = exe.parent().unwrap().parent().unwrap().join("raftpg");
    let text = run(Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/build-deb"))
        .env("RAFTPG_BINARY", &binary)
        .env("RAFTPG_DEB_COMPRESS", "none")
        .env("CARGO_TARGET_DIR", work.path().join("build")));
    let deb = text.lines().last().unwrap().trim().to_string();
    run(Command::new("dpkg").args(["-i", &deb]));
    let raftpg = PathBuf::from("/usr/bin/raftpg");

    eprintln!("=== 2. certificates, on one machine");
    let tls = work.path().join("tls");
    let t = tls.to_str().unwrap();
    run(Command::new(&raftpg).args(["tls", "ca", "--dir", t, "--cluster", "orders"]));
    for (k, name) in HOSTS.iter().enumerate() {
        run(Command::new(&raftpg).args(["tls", "node", name, "--ip", &ip(k), "--dir", t]));
    }
    run(Command::new(&raftpg).args(["tls", "client", "alice", "--role", "admin", "--dir", t]));

    eprintln!("=== 3. on every host: its /etc/raftpg (certificates, passwords, raftpg.toml)");
    let superuser = format!("{:032x}", rand_u128());
    let replication = format!("{:032x}", rand_u128());
    for (k, name) in HOSTS.iter().enumerate() {
        let etc = PathBuf::from(format!("/etc/netns/{}/raftpg", hosts::netns(k as u16 + 1)));
        std::fs::create_dir_all(etc.join("tls")).unwrap();
        for f in ["ca.crt".to_string(), format!("{name}.crt"), format!("{name}.key")] {
            std::fs::copy(tls.join(&f), etc.join("tls").join(&f)).unwrap();
        }
        std::fs::write(etc.join("superuser.password"), format!("{superuser}\n")).unwrap();
        std::fs::write(etc.join("replication.password"), format!("{replication}\n")).unwrap();
        std::fs::write(etc.join("raftpg.toml"), config(k)).unwrap();
        chown_postgres(&etc);
        for f in [
            format!("tls/{name}.key"),
            "superuser.password".into(),
            "replication.password".into(),
        ] {
            std::fs::set_permissions(etc.join(f), std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o750)).unwrap();
        // Each host's own /var/lib/raftpg, as the package makes it.
        let state = work.path().join(name).join("var-lib-raftpg");
        std::fs::create_dir_all(&state).unwrap();
        chown_postgres(&state);
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    }

    eprintln!("=== 4. start: the unit's ExecStart as User=postgres, on all three hosts");
    let unit = std::fs::read_to_string("/lib/systemd/system/raftpg.service").unwrap();
    let exec_start = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart")
        .to_string();
    let postgres = nix::unistd::User::from_name("postgres").unwrap().unwrap();
    for (k, name) in HOSTS.iter().enumerate() {
        let state = work.path().join(name).join("var-lib-raftpg");
        let log = std::fs::File::create(work.path().join(format!("{name}.log"))).unwrap();
        // `ip netns exec` binds /etc/netns/HOST/raftpg over /etc/raftpg in its own mount
        // namespace; /var/lib/raftpg is bound there too.
        let script = format!(
            "mount --bind {} /var/lib/raftpg && exec setpriv --reuid postgres --regid postgres --init-groups -- {exec_start}",
            state.display()
        );
        // In the host's freezer group, so that killing the host kills everything on it.
        let outer = format!(
            "echo $$ > {}/cgroup.procs && exec ip netns exec {} sh -c \"$0\"",
            hosts::cgroup(k as u16 + 1).display(),
            hosts::netns(k as u16 + 1)
        );
        let child = Command::new("sh")
            .args(["-c", &outer, &script])
            .env("HOME", &postgres.dir)
            .env("USER", "postgres")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        cleanup.children.push(child);
    }

    eprintln!("=== 5. check: raftpg ctl list with the admin certificate");
    let endpoints: Vec<String> = (0..3).map(|k| format!("{}:7501", ip(k))).collect();
    let ctl = |args: &[&str]| {
        Command::new(&raftpg)
            .arg("ctl")
            .args(args)
            .env("RAFTPG_ENDPOINTS", endpoints.join(","))
            .env("RAFTPG_CACERT", tls.join("ca.crt"))
            .env("RAFTPG_CERT", tls.join("alice.crt"))
            .env("RAFTPG_KEY", tls.join("alice.key"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + FORM;
    let table = loop {
        let out = ctl(&["list"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let streaming = text
            .lines()
            .filter(|l| l.contains("Quorum Standby") && l.contains("streaming"))
            .count();
        if out.status.success() && text.contains("| Primary") && streaming == 2 {
            break text;
        }
        if Instant::now() > deadline {
            for name in HOSTS {
                eprintln!(
                    "--- {name}.log:\n{}",
                    std::fs::read_to_string(work.path().join(format!("{name}.log"))).unwrap_or_default()
                );
            }
            panic!(
                "no primary with two streaming standbys: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("{table}");
    let primary = HOSTS
        .iter()
        .position(|n| {
            table
                .lines()
                .any(|l| l.contains(&format!("| {n} ")) && l.contains("| Primary"))
        })
        .expect("a primary row");
    let dsn = String::from_utf8_lossy(&ctl(&["dsn"]).stdout).to_string();
    assert!(dsn.contains("target_session_attrs=read-write"), "{dsn}");

    eprintln!("=== 6. HAProxy in front, with the document's configuration");
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/install.md")).unwrap();
    let listen = doc
        .split("```\nlisten primary")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/install.md has the HAProxy listen section");
    let mut listen = format!("listen primary{listen}");
    for k in 0..3 {
        listen = listen.replace(&format!("10.0.0.{}", k + 1), &ip(k));
    }
    let cfg = work.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!("global\n    maxconn 200\ndefaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30m\n    timeout server 30m\n    timeout check 1s\n{listen}"),
    )
    .unwrap();
    let haproxy = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy is installed (bash .ci/run installs it)");
    cleanup.children.push(haproxy);

    let acks = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let writing = Arc::new(AtomicBool::new(true));
    let writer = tokio::spawn({
        let (acks, writing) = (acks.clone(), writing.clone());
        let conninfo = format!(
            "host=127.0.0.1 port={HAPROXY_PORT} user=postgres password={superuser} dbname=postgres connect_timeout=1"
        );
        async move {
            let mut client: Option<tokio_postgres::Client> = None;
            while writing.load(Ordering::Relaxed) {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    client = match tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await {
                        Ok((cl, conn)) => {
                            tokio::spawn(conn);
                            let _ = cl
                                .batch_execute("CREATE TABLE IF NOT EXISTS orders (at timestamptz)")
                                .await;
                            Some(cl)
                        }
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                }
                let done = tokio::time::timeout(
                    Duration::from_secs(2),
                    client
                        .as_ref()
                        .unwrap()
                        .execute("INSERT INTO orders VALUES (now())", &[]),
                )
                .await;
                match done {
                    Ok(Ok(_)) => acks.lock().unwrap().push(Instant::now()),
                    _ => client = None,
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let deadline = Instant::now() + FORM;
    while acks.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no write went through HAProxy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    eprintln!(
        "=== 7. a failover: {} dies outright (every process on the host)",
        HOSTS[primary]
    );
    hosts::kill_node(primary as u16 + 1).unwrap();
    let killed = Instant::now();
    let deadline = killed + FORM;
    let first = loop {
        if let Some(a) = acks.lock().unwrap().iter().copied().find(|a| *a > killed) {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "no write through HAProxy after the host died"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "=== the client wrote through HAProxy again {:?} after the host died",
        first - killed
    );
    let history = String::from_utf8_lossy(&ctl(&["history"]).stdout).to_string();
    assert!(history.contains("failover"), "{history}");
    writing.store(false, Ordering::Relaxed);
    let _ = writer.await;
    drop(cleanup);
}

fn rand_u128() -> u128 {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut b).unwrap();
    u128::from_le_bytes(b)
}
