//! Issue 15, the package and the service: `deploy/build-deb` builds the Debian package,
//! `dpkg -i` installs it, `systemd-analyze verify` passes on its unit, and the installed
//! binary runs a three-node cluster as the `postgres` user (the unit's `User=`), with
//! scram-sha-256, password files and mutual TLS, through a failover. Needs root, as the
//! partition suite does; it installs and then purges the package.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::pg::Writer;
use common::{phase, Cluster};
use tokio::time::Instant;

const FORM: Duration = Duration::from_secs(120);
const FAILOVER: Duration = Duration::from_secs(30);

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

/// Purges the package when the test ends, however it ends.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "raftpg"]).output();
        // The package never removes its data; the test's own leaves nothing behind.
        let _ = std::fs::remove_dir_all("/var/lib/raftpg");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_package_installs_a_verified_unit_and_its_binary_runs_a_cluster_as_postgres() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the package test installs a .deb: run it as root (CI does)"
    );
    let installed_before = Command::new("dpkg").args(["-s", "raftpg"]).output().unwrap();
    assert!(
        !installed_before.status.success(),
        "raftpg is already installed on this machine (dpkg -s raftpg): this test installs and purges it"
    );

    phase("bash deploy/build-deb, packaging this build's binary");
    let out = tempfile::tempdir().unwrap();
    let text = run(Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/build-deb"))
        .env("RAFTPG_BINARY", common::BIN)
        .env("RAFTPG_DEB_COMPRESS", "none")
        .env("CARGO_TARGET_DIR", out.path()));
    let deb = text.lines().last().unwrap().trim().to_string();
    assert!(deb.ends_with(".deb") && Path::new(&deb).exists(), "{text}");
    let contents = run(Command::new("dpkg-deb").args(["--contents", &deb]));
    for path in [
        "./usr/bin/raftpg",
        "./lib/systemd/system/raftpg.service",
        "./etc/raftpg/raftpg.toml.example",
        "./usr/share/doc/raftpg/install.md",
    ] {
        assert!(contents.contains(path), "{path} missing from the package: {contents}");
    }
    let depends = run(Command::new("dpkg-deb").args(["--field", &deb, "Depends"]));
    assert!(depends.contains("postgresql-15"), "{depends}");

    phase("dpkg -i: binary, unit, directories owned by postgres");
    let _installed = Installed;
    run(Command::new("dpkg").args(["-i", &deb]));
    let version = run(Command::new("/usr/bin/raftpg").arg("--version"));
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    let postgres = nix::unistd::User::from_name("postgres").unwrap().unwrap();
    let state = std::fs::metadata("/var/lib/raftpg").unwrap();
    assert_eq!((state.uid(), state.mode() & 0o777), (postgres.uid.as_raw(), 0o700));
    let etc = std::fs::metadata("/etc/raftpg").unwrap();
    assert_eq!(
        (etc.uid(), etc.gid(), etc.mode() & 0o777),
        (0, postgres.gid.as_raw(), 0o750)
    );

    phase("systemd-analyze verify on the installed unit");
    let verify = run(Command::new("systemd-analyze").args(["verify", "/lib/systemd/system/raftpg.service"]));
    assert!(
        verify.trim().is_empty(),
        "systemd-analyze verify found problems: {verify}"
    );
    let unit = std::fs::read_to_string("/lib/systemd/system/raftpg.service").unwrap();
    for line in [
        "User=postgres",
        "ExecStart=/usr/bin/raftpg run",
        "CapabilityBoundingSet=\n",
        "TimeoutStopSec=90",
    ] {
        assert!(unit.contains(line), "the unit lacks {line:?}");
    }

    phase("the installed binary, as postgres: three nodes, TLS, passwords, a failover");
    let mut c = Cluster::configured(25500, 3, "");
    c.bin = "/usr/bin/raftpg".into();
    c.run_as("postgres");
    for k in 1..=3 {
        c.start_node(k);
    }
    let old = c.wait_streaming(2, FORM).await;
    let pid = c.raftpg_pid(old).unwrap();
    let owner = std::fs::metadata(format!("/proc/{pid}")).unwrap().uid();
    assert_eq!(owner, postgres.uid.as_raw(), "raftpg runs as postgres");
    let pm = c.postmaster_pid(old).unwrap();
    let pm_owner = std::fs::metadata(format!("/proc/{pm}")).unwrap().uid();
    assert_eq!(pm_owner, postgres.uid.as_raw(), "PostgreSQL runs as postgres");
    let w = Writer::start(&c.libpq()).await;
    w.wait_ack_after(Instant::now(), None, FAILOVER).await;
    let old_port = c.pg_port(old) as i32;
    c.kill9(old);
    c.kill9_postmaster(old);
    let killed = Instant::now();
    let first = w.wait_ack_after(killed, Some(old_port), FAILOVER).await;
    phase(&format!(
        "failed over: a write acknowledged {:?} after the kill",
        first.at - killed
    ));
    c.start_node(old);
    c.wait_streaming(2, FORM).await;
    let nodes: Vec<u16> = (1..=3).collect();
    c.assert_no_loss(w, &nodes, FORM).await;
}
