//! `raftpg demo`: a local cluster of separate `raftpg run` processes on loopback.
//!
//! Node k uses PostgreSQL port P+k, Raft P+100+k, gRPC P+200+k, HTTP P+300+k.
//! The demo never restarts a node that dies (tests kill nodes on purpose);
//! `raftpg run --config DIR/nK/raftpg.toml` brings one back.

use std::fs;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::ctl;
use crate::pb::control::StatusRequest;

/// How long the demo waits for the cluster to form.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a node may take to stop (PostgreSQL included) after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Directory for configs, data and logs.
    #[arg(long, default_value = "./raftpg-demo")]
    pub dir: PathBuf,
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// Base port P (node k: PostgreSQL P+k, Raft P+100+k, gRPC P+200+k, HTTP P+300+k).
    #[arg(long, default_value_t = 15400)]
    pub base_port: u16,
    /// Plaintext instead of mutual TLS (loopback only; for comparing the cost of TLS).
    #[arg(long)]
    pub insecure: bool,
}

/// Ports of node `k` (1-based).
pub struct Ports {
    pub pg: u16,
    pub raft: u16,
    pub grpc: u16,
    pub http: u16,
}

pub fn ports(base: u16, k: u16) -> Ports {
    Ports {
        pg: base + k,
        raft: base + 100 + k,
        grpc: base + 200 + k,
        http: base + 300 + k,
    }
}

/// The passwords of a loopback cluster, generated once into its directory and kept
/// across runs (PGDATA holds the roles they were set for).
#[derive(Clone, Debug)]
pub struct Secrets {
    /// The superuser's (`postgres`) password, for clients.
    pub superuser_password: String,
    /// A libpq password file for the superuser (`DIR/pgpass`, mode 0600).
    pub pgpass: PathBuf,
}

impl Secrets {
    /// Reads the passwords under `dir`, generating those that are missing.
    pub fn ensure(dir: &Path) -> anyhow::Result<Secrets> {
        let (superuser_file, replication_file) = password_files(dir);
        let secrets_dir = superuser_file.parent().expect("a file in a directory");
        fs::create_dir_all(secrets_dir).with_context(|| format!("cannot create {}", secrets_dir.display()))?;
        fs::set_permissions(secrets_dir, fs::Permissions::from_mode(0o700))?;
        let superuser_password = password_in(&superuser_file)?;
        password_in(&replication_file)?;
        let pgpass = dir.join("pgpass");
        write_private(
            &pgpass,
            &crate::postgres::conf::render_pgpass(&[("postgres", &superuser_password)]),
        )?;
        Ok(Secrets {
            superuser_password,
            pgpass,
        })
    }
}

/// The certificates of a loopback cluster in `DIR/tls/`, made once and kept across runs:
/// the CA, one node certificate per member (`nK`), an admin and a read-only client.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    pub reader_cert: PathBuf,
    pub reader_key: PathBuf,
}

impl TlsFiles {
    /// Reads or makes the certificates of an `n`-node cluster under `dir/tls`.
    pub fn ensure(dir: &Path, n: u16) -> anyhow::Result<TlsFiles> {
        use crate::tls::{make, Role};
        let tls_dir = dir.join("tls");
        fs::create_dir_all(&tls_dir).with_context(|| format!("cannot create {}", tls_dir.display()))?;
        let (ca_crt, _) = make::paths(&tls_dir, "ca");
        let ca = match ca_crt.exists() {
            true => make::read_ca(&tls_dir)?,
            false => {
                let ca = make::ca("raftpg-demo")?;
                make::write(&tls_dir, "ca", &ca, true)?;
                ca
            }
        };
        let loopback = ["127.0.0.1".parse().expect("an IP")];
        let leaf = |stem: &str, name: &str, role: Role| -> anyhow::Result<(PathBuf, PathBuf)> {
            let (crt, key) = make::paths(&tls_dir, stem);
            if !(crt.exists() && key.exists()) {
                let dns = ["localhost".to_string()];
                let (dns, ips): (&[String], &[std::net::IpAddr]) = match role {
                    Role::Node => (&dns, &loopback),
                    _ => (&[], &[]),
                };
                make::write(&tls_dir, stem, &make::leaf(&ca, name, role, dns, ips)?, true)?;
            }
            Ok((crt, key))
        };
        for k in 1..=n {
            leaf(&format!("n{k}"), &format!("n{k}"), Role::Node)?;
        }
        let (admin_cert, admin_key) = leaf("admin", "admin", Role::Admin)?;
        let (reader_cert, reader_key) = leaf("reader", "reader", Role::ReadOnly)?;
        Ok(TlsFiles {
            dir: tls_dir,
            ca: ca_crt,
            admin_cert,
            admin_key,
            reader_cert,
            reader_key,
        })
    }

    /// The `[tls]` section of node `k`.
    pub fn section(&self, k: u16) -> String {
        let (crt, key) = crate::tls::make::paths(&self.dir, &format!("n{k}"));
        format!(
            "
[tls]
ca_file = \"{}\"
cert_file = \"{}\"
key_file = \"{}\"
",
            self.ca.display(),
            crt.display(),
            key.display()
        )
    }

    /// `RAFTPG_CACERT=… RAFTPG_CERT=… RAFTPG_KEY=…` for an admin.
    pub fn admin_env(&self) -> String {
        format!(
            "RAFTPG_CACERT={} RAFTPG_CERT={} RAFTPG_KEY={}",
            self.ca.display(),
            self.admin_cert.display(),
            self.admin_key.display()
        )
    }

    /// The TLS settings of the admin client.
    pub fn admin_client(&self) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
        crate::tls::Tls::client_from_files(&self.ca, Some(&self.admin_cert), Some(&self.admin_key))
    }
}

/// The superuser's and the replication role's password files of a loopback cluster in `dir`.
fn password_files(dir: &Path) -> (PathBuf, PathBuf) {
    let secrets = dir.join("secrets");
    (secrets.join("superuser.password"), secrets.join("replication.password"))
}

/// The password in `path`, or a new random one written there (mode 0600).
fn password_in(path: &Path) -> anyhow::Result<String> {
    if let Ok(text) = fs::read_to_string(path) {
        let pw = text.trim_end_matches(['\n', '\r']);
        if !pw.is_empty() {
            return Ok(pw.to_string());
        }
    }
    let mut bytes = [0u8; 18];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("cannot read /dev/urandom to generate a password")?;
    let pw: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(path, &format!("{pw}\n"))?;
    Ok(pw)
}

/// Writes `content` to `path`, readable by its owner only.
fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    std::io::Write::write_all(&mut f, content.as_bytes())?;
    Ok(())
}

/// The TOML configuration of node `k` of an `n`-node loopback cluster, with scram-sha-256
/// and the password files of `Secrets::ensure(dir)`, and mutual TLS with `tls`
/// (`TlsFiles::ensure(dir, n)`). `extra` is appended right after the `[postgres]` header:
/// its first keys belong to that section.
pub fn render_config(dir: &Path, k: u16, n: u16, base: u16, tls: Option<&TlsFiles>, extra: &str) -> String {
    let mut out = format!(
        "# Written by `raftpg demo`.\n[node]\nname = \"n{k}\"\ndata_dir = \"{}\"\n\n[cluster]\nname = \"raftpg-demo\"\n",
        dir.join(format!("n{k}")).display()
    );
    for i in 1..=n {
        let p = ports(base, i);
        out += &format!(
            "\n[[members]]\nname = \"n{i}\"\nid = {i}\nraft = \"127.0.0.1:{}\"\ngrpc = \"127.0.0.1:{}\"\npg = \"127.0.0.1:{}\"\nhttp = \"127.0.0.1:{}\"\n",
            p.raft, p.grpc, p.pg, p.http
        );
    }
    if let Some(t) = tls {
        out += &t.section(k);
    }
    let (superuser_file, replication_file) = password_files(dir);
    out + &format!(
        "\n[postgres]\nhost_auth = \"scram-sha-256\"\nsuperuser_password_file = \"{}\"\nreplication_password_file = \"{}\"\n",
        superuser_file.display(),
        replication_file.display()
    ) + extra
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > 9 {
        bail!("--nodes must be between 1 and 9, not {}", args.nodes);
    }
    if u32::from(args.base_port) + 300 + u32::from(args.nodes) > 65535 {
        bail!(
            "--base-port {} leaves no room for the HTTP ports: use a smaller one",
            args.base_port
        );
    }
    fs::create_dir_all(&args.dir).with_context(|| format!("cannot create {}", args.dir.display()))?;
    let dir = fs::canonicalize(&args.dir)?;
    let exe = std::env::current_exe().context("cannot find the raftpg executable")?;
    let secrets = Secrets::ensure(&dir)?;
    // Listen before the first node starts: a Ctrl-C while the cluster forms stops it.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let tls = match args.insecure {
        true => None,
        false => Some(TlsFiles::ensure(&dir, args.nodes)?),
    };
    let mut children = Vec::new();
    let mut nodes_json = Vec::new();
    for k in 1..=args.nodes {
        let node_dir = dir.join(format!("n{k}"));
        fs::create_dir_all(&node_dir)?;
        let config = node_dir.join("raftpg.toml");
        fs::write(
            &config,
            render_config(&dir, k, args.nodes, args.base_port, tls.as_ref(), ""),
        )?;
        let child = spawn_node(&exe, &config, &node_dir)?;
        let pid = child.id().unwrap_or(0);
        fs::write(node_dir.join("raftpg.pid"), format!("{pid}\n"))?;
        let p = ports(args.base_port, k);
        nodes_json.push(serde_json::json!({
            "name": format!("n{k}"),
            "pid_file": node_dir.join("raftpg.pid"),
            "pg": p.pg, "raft": p.raft, "grpc": p.grpc, "http": p.http,
            "pg_data": node_dir.join("pgdata"),
        }));
        children.push((format!("n{k}"), child));
    }
    let mut cluster = serde_json::json!({ "nodes": nodes_json, "pgpass": secrets.pgpass });
    if let Some(t) = &tls {
        cluster["tls"] = serde_json::json!({
            "ca": t.ca, "admin_cert": t.admin_cert, "admin_key": t.admin_key,
            "reader_cert": t.reader_cert, "reader_key": t.reader_key,
        });
    }
    fs::write(dir.join("cluster.json"), serde_json::to_string_pretty(&cluster)?)?;
    let client_tls = tls.as_ref().map(TlsFiles::admin_client).transpose()?;
    let endpoints: Vec<String> = (1..=args.nodes)
        .map(|k| format!("127.0.0.1:{}", ports(args.base_port, k).grpc))
        .collect();
    let endpoints = endpoints.join(",");
    let ready = tokio::select! {
        r = wait_ready(&endpoints, client_tls.as_ref(), args.base_port, args.nodes, &secrets.superuser_password) => r,
        _ = term.recv() => return stop_all(children, "SIGTERM while the cluster formed").await,
        _ = int.recv() => return stop_all(children, "Ctrl-C while the cluster formed").await,
    };
    match ready {
        Ok((table, primary)) => {
            println!("{table}");
            println!(
                "Connect:     PGPASSFILE={} psql \"{}\"",
                secrets.pgpass.display(),
                libpq_string(args.base_port, args.nodes)
            );
            let env = tls.as_ref().map(|t| format!(" {}", t.admin_env())).unwrap_or_default();
            println!("Control it:  RAFTPG_ENDPOINTS={endpoints}{env} raftpg ctl list");
            println!(
                "Fail over:   kill -9 $(cat {0}/n{primary}/raftpg.pid) $(head -1 {0}/n{primary}/pgdata/postmaster.pid)   # n{primary} is the primary now",
                dir.display()
            );
            println!("Node logs:   {}/nK/raftpg.log", dir.display());
            println!("Stop it:     Ctrl-C");
        }
        Err(e) => eprintln!(
            "raftpg demo: the cluster did not form: {e:#} (see {}/nK/raftpg.log)",
            dir.display()
        ),
    }
    supervise(children, term, int).await
}

fn spawn_node(exe: &Path, config: &Path, node_dir: &Path) -> anyhow::Result<Child> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(node_dir.join("raftpg.log"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    // A demo that dies, even by SIGKILL, takes its nodes along: each gets SIGTERM and
    // stops its PostgreSQL. (Spawned from the thread that runs the demo to its end.)
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(std::io::Error::from)
        });
    }
    cmd.spawn().with_context(|| format!("cannot start {}", exe.display()))
}

/// The libpq multi-host string that always reaches the primary.
pub fn libpq_string(base: u16, nodes: u16) -> String {
    let hosts = vec!["127.0.0.1"; nodes as usize].join(",");
    let ports: Vec<String> = (1..=nodes).map(|k| ports(base, k).pg.to_string()).collect();
    format!(
        "host={hosts} port={} user=postgres dbname=postgres target_session_attrs=read-write",
        ports.join(",")
    )
}

/// Waits for one primary with N-1 streaming standbys (asked of PostgreSQL itself);
/// returns the member table and the primary's k.
async fn wait_ready(
    endpoints: &str,
    tls: Option<&tonic::transport::ClientTlsConfig>,
    base: u16,
    nodes: u16,
    password: &str,
) -> anyhow::Result<(String, u16)> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::from("no node answered yet");
    while Instant::now() < deadline {
        match streaming_standbys(base, nodes, password).await {
            Ok((primary, n)) if n + 1 == nodes as usize => {
                let mut c = ctl::connect(endpoints, tls).await?;
                let s = c.status(StatusRequest {}).await?.into_inner();
                // The table shows the agents' reports: wait until they say the same.
                let reported = s.member_status.len() == nodes as usize
                    && s.member_status
                        .iter()
                        .all(|m| m.state == "running" || m.state == "streaming");
                if s.primary.is_some() && reported {
                    return Ok((ctl::render_table(&s), primary));
                }
                last = format!("n{primary} streams to {n} standbys; waiting for the Raft state and reports to show it");
            }
            Ok((primary, n)) => last = format!("primary n{primary} has {n} streaming standbys"),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("not ready after {READY_TIMEOUT:?}: {last}")
}

/// (primary's k, number of streaming standbys) if exactly one node accepts writes.
async fn streaming_standbys(base: u16, nodes: u16, password: &str) -> Result<(u16, usize), String> {
    let mut primaries = Vec::new();
    for k in 1..=nodes {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(ports(base, k).pg)
            .user("postgres")
            .password(password)
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(2));
        let Ok(Ok((client, conn))) =
            tokio::time::timeout(Duration::from_secs(3), config.connect(tokio_postgres::NoTls)).await
        else {
            continue;
        };
        tokio::spawn(conn);
        let q = "SELECT pg_is_in_recovery(), (SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND application_name <> 'pg_basebackup')";
        if let Ok(row) = client.query_one(q, &[]).await {
            if !row.get::<_, bool>(0) {
                primaries.push((k, row.get::<_, i64>(1) as usize));
            }
        }
    }
    match primaries.as_slice() {
        [one] => Ok(*one),
        [] => Err("no PostgreSQL accepts writes yet".into()),
        many => Err(format!("{} nodes accept writes", many.len())),
    }
}

/// Stays in the foreground until SIGINT/SIGTERM, reporting nodes that exit; then stops all.
async fn supervise(
    mut children: Vec<(String, Child)>,
    mut term: tokio::signal::unix::Signal,
    mut int: tokio::signal::unix::Signal,
) -> anyhow::Result<()> {
    let mut exited = vec![false; children.len()];
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                for (i, (name, child)) in children.iter_mut().enumerate() {
                    if !exited[i] {
                        if let Ok(Some(status)) = child.try_wait() {
                            eprintln!("raftpg demo: {name} exited ({status}); not restarting it");
                            exited[i] = true;
                        }
                    }
                }
            }
        }
    }
    stop_all(children, "stop requested").await
}

/// SIGTERM to every node (each stops its PostgreSQL), then waits for them.
async fn stop_all(mut children: Vec<(String, Child)>, why: &str) -> anyhow::Result<()> {
    eprintln!("raftpg demo: {why}: stopping {} nodes", children.len());
    for (_, child) in &children {
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    for (name, child) in &mut children {
        match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("raftpg demo: {name} did not stop within {STOP_TIMEOUT:?}; killing it");
                let _ = child.kill().await;
            }
        }
    }
    eprintln!("raftpg demo: stopped");
    Ok(())
}
