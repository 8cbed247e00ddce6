//! The hosts: one network namespace per node, joined by veth pairs to a
//! bridge in the root namespace, where the harness lives and is never cut
//! off. Partitions are nftables rules inside the node namespaces; pauses use
//! a cgroup-v1 freezer group per node. Every name starts with `rpj`, so a
//! sweep finds whatever an earlier, crashed run left behind.

use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::Signal;

const BRIDGE: &str = "rpj-br";
const SUBNET: [u8; 3] = [10, 77, 0];
/// The harness's address on the bridge.
pub const HARNESS_HOST: u8 = 254;
const FREEZER: &str = "/sys/fs/cgroup/freezer";
const CHECK_PORT: u16 = 9099;

pub fn netns(k: u16) -> String {
    format!("rpj-n{k}")
}

fn veth(k: u16) -> String {
    format!("rpj-v{k}")
}

/// Node `k`'s address (1-based).
pub fn ip(k: u16) -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], k as u8)
}

/// The node whose address this is.
pub fn node_of(addr: &str) -> Option<u16> {
    let a: Ipv4Addr = addr.split('/').next()?.parse().ok()?;
    let o = a.octets();
    (o[..3] == SUBNET && (1..HARNESS_HOST).contains(&o[3])).then_some(u16::from(o[3]))
}

pub fn cgroup(k: u16) -> PathBuf {
    PathBuf::from(FREEZER).join(format!("rpj-n{k}"))
}

/// Unmounts (lazily) every filesystem mounted at or under `dir`: what a run that stopped
/// early left of full-disk-primary's disks.
pub fn unmount_under(dir: &Path) {
    let Ok(dir) = std::path::absolute(dir) else {
        return;
    };
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    for point in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)) {
        if Path::new(point).starts_with(&dir) {
            let _ = sh("umount", &["-l", point]);
        }
    }
}

/// Runs a command; its stderr in the error when it fails.
pub fn sh(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}: is it installed? (bash .ci/run installs it)"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Namespaces, links and freezer groups need root.
pub fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("raftpg-jepsen needs root: it creates network namespaces, nftables rules and freezer cgroups (run it with sudo)");
    }
    for (tool, pkg) in [("ip", "iproute2"), ("nft", "nftables")] {
        if sh("sh", &["-c", &format!("command -v {tool}")]).is_err() {
            bail!("`{tool}` is missing: apt-get install {pkg}");
        }
    }
    if !PathBuf::from(FREEZER).is_dir() {
        bail!("no cgroup-v1 freezer at {FREEZER}: pause-node faults need it");
    }
    Ok(())
}

/// Removes everything an earlier run may have left: processes in our
/// namespaces and freezer groups (thawed and continued first, since a frozen
/// or stopped process cannot die), the namespaces, links and groups.
/// Returns what it removed.
pub fn sweep() -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    let groups: Vec<PathBuf> = fs::read_dir(FREEZER)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    let groups: Vec<PathBuf> = groups
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("rpj-")))
        .collect();
    for g in &groups {
        let _ = fs::write(g.join("freezer.state"), "THAWED");
    }
    let namespaces: Vec<String> = sh("ip", &["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("rpj-"))
        .map(String::from)
        .collect();
    let pids = || {
        let mut pids: Vec<i32> = groups.iter().flat_map(|g| pids_in(&g.join("cgroup.procs"))).collect();
        for ns in &namespaces {
            pids.extend(
                sh("ip", &["netns", "pids", ns])
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse::<i32>().ok()),
            );
        }
        pids
    };
    kill_until_gone(
        pids,
        &[Signal::SIGCONT, Signal::SIGKILL],
        50,
        Duration::from_millis(100),
    );
    for ns in namespaces {
        sh("ip", &["netns", "del", &ns])?;
        removed.push(format!("namespace {ns}"));
    }
    for link in sh("ip", &["-o", "link", "show"])?.lines() {
        let Some(name) = link
            .split(':')
            .nth(1)
            .map(|s| s.trim().split('@').next().unwrap_or("").to_string())
        else {
            continue;
        };
        // Deleting a namespace deletes the peers of its veths, but the kernel
        // does it after `ip netns del` returns: a link listed here may be gone
        // by the time it is deleted. Only a link that is still there is an error.
        if name.starts_with("rpj-") {
            match sh("ip", &["link", "del", &name]) {
                Ok(_) => removed.push(format!("link {name}")),
                Err(_) if sh("ip", &["link", "show", &name]).is_err() => {}
                Err(e) => return Err(e),
            }
        }
    }
    for g in groups {
        fs::remove_dir(&g).with_context(|| format!("cannot remove the freezer group {}", g.display()))?;
        removed.push(format!("cgroup {}", g.display()));
    }
    Ok(removed)
}

fn pids_in(procs: &std::path::Path) -> Vec<i32> {
    fs::read_to_string(procs)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The bridge, one namespace, veth pair and freezer group per node.
pub fn setup(n: u16) -> anyhow::Result<()> {
    let harness = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], HARNESS_HOST);
    sh("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
    sh("ip", &["addr", "add", &format!("{harness}/24"), "dev", BRIDGE])?;
    sh("ip", &["link", "set", BRIDGE, "up"])?;
    for k in 1..=n {
        let (ns, v) = (netns(k), veth(k));
        sh("ip", &["netns", "add", &ns])?;
        sh(
            "ip",
            &["link", "add", &v, "type", "veth", "peer", "name", "eth0", "netns", &ns],
        )?;
        sh("ip", &["link", "set", &v, "master", BRIDGE, "up"])?;
        let inside = |args: &[&str]| -> anyhow::Result<String> {
            let mut all = vec!["netns", "exec", &ns];
            all.extend_from_slice(args);
            sh("ip", &all)
        };
        inside(&["ip", "addr", "add", &format!("{}/24", ip(k)), "dev", "eth0"])?;
        inside(&["ip", "link", "set", "eth0", "up"])?;
        inside(&["ip", "link", "set", "lo", "up"])?;
        fs::create_dir_all(cgroup(k)).with_context(|| format!("cannot create {}", cgroup(k).display()))?;
    }
    Ok(())
}

/// Proves that TCP flows between every pair of nodes and from the harness
/// to every node: a listener on each node's address, entered with setns(2).
pub fn check_traffic(n: u16) -> anyhow::Result<()> {
    let listeners: Vec<TcpListener> = (1..=n)
        .map(|k| in_netns(k, move || TcpListener::bind(SocketAddrV4::new(ip(k), CHECK_PORT))))
        .collect::<anyhow::Result<Result<Vec<_>, _>>>()?
        .context("cannot listen inside a node namespace")?;
    let connect =
        |to: u16| TcpStream::connect_timeout(&SocketAddrV4::new(ip(to), CHECK_PORT).into(), Duration::from_secs(2));
    for to in 1..=n {
        connect(to).with_context(|| format!("the harness cannot reach n{to} at {}", ip(to)))?;
        for from in (1..=n).filter(|f| *f != to) {
            in_netns(from, move || connect(to))?.with_context(|| format!("n{from} cannot reach n{to}"))?;
        }
    }
    drop(listeners);
    Ok(())
}

/// Runs `f` on a fresh thread that has entered node `k`'s namespace; sockets
/// made there stay in that namespace.
pub fn in_netns<T: Send>(k: u16, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let path = format!("/var/run/netns/{}", netns(k));
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> anyhow::Result<T> {
                let file = fs::File::open(&path).with_context(|| format!("cannot open {path}"))?;
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
    })
}

/// How a cut link behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Packets vanish: connections hang until their timeouts.
    Drop,
    /// TCP gets a reset at once; other packets vanish.
    Reset,
}

/// The nftables rules of node `k`'s chains for a cut to `peers`: `(input, output)`.
///
/// A reset cut rejects the peers' TCP with a reset in both hooks, and lets resets
/// themselves through. The reset that the input hook answers with leaves through the
/// output hook, and the one the output hook sends back to a local connect arrives
/// through the input hook from the peer's address: a rule that dropped every packet
/// of a peer (as the first version did) swallowed both, and a reset cut behaved like a drop.
fn cut_rules(peers: &[String], how: Cut) -> (String, String) {
    let set = peers.join(", ");
    let (rin, rout) = match how {
        Cut::Drop => (String::new(), String::new()),
        Cut::Reset => (
            format!(
                " ip saddr {{ {set} }} tcp flags rst accept\n ip saddr {{ {set} }} meta l4proto tcp reject with tcp reset\n"
            ),
            format!(
                " ip daddr {{ {set} }} tcp flags rst accept\n ip daddr {{ {set} }} meta l4proto tcp reject with tcp reset\n"
            ),
        ),
    };
    (
        format!("{rin} ip saddr {{ {set} }} drop\n"),
        format!("{rout} ip daddr {{ {set} }} drop\n"),
    )
}

/// Installs exactly these cuts (each pair both ways), replacing any earlier
/// ones. The harness's address is never cut.
pub fn partition(n: u16, pairs: &[(u16, u16)], how: Cut) -> anyhow::Result<()> {
    for k in 1..=n {
        let peers: Vec<String> = pairs
            .iter()
            .filter_map(|&(a, b)| match k {
                _ if k == a => Some(b),
                _ if k == b => Some(a),
                _ => None,
            })
            .map(|p| ip(p).to_string())
            .collect();
        let mut rules = String::from("table inet rpj\ndelete table inet rpj\n");
        if !peers.is_empty() {
            let (rin, rout) = cut_rules(&peers, how);
            rules += &format!(
                "table inet rpj {{\n chain input {{ type filter hook input priority 0; policy accept;\n{rin} }}\n\
                 chain output {{ type filter hook output priority 0; policy accept;\n{rout} }}\n}}\n"
            );
        }
        nft(k, &rules)?;
    }
    Ok(())
}

/// Proves that the cuts hold as `partition` installed them: a connect across a cut pair
/// (each way) fails, at once with a refusal for a reset cut and by timing out for a drop,
/// and every pair that is not cut still connects. All checks run at once, so a drop
/// costs one connect timeout (300 ms), not one per pair.
pub fn verify_cut(n: u16, pairs: &[(u16, u16)], how: Cut) -> anyhow::Result<()> {
    verify(n, pairs, how, &[])
}

/// [`verify_cut`], leaving the pairs in `skip` (either way) unchecked.
fn verify(n: u16, pairs: &[(u16, u16)], how: Cut, skip: &[(u16, u16)]) -> anyhow::Result<()> {
    let listeners: Vec<TcpListener> = (1..=n)
        .map(|k| in_netns(k, move || TcpListener::bind(SocketAddrV4::new(ip(k), CHECK_PORT))))
        .collect::<anyhow::Result<Result<Vec<_>, _>>>()?
        .context("cannot listen inside a node namespace")?;
    let cut = |a: u16, b: u16| pairs.iter().any(|&(x, y)| (x, y) == (a, b) || (y, x) == (a, b));
    let skipped = |a: u16, b: u16| skip.iter().any(|&(x, y)| (x, y) == (a, b) || (y, x) == (a, b));
    let checks: Vec<(u16, u16)> = (1..=n)
        .flat_map(|from| (1..=n).filter(move |to| *to != from).map(move |to| (from, to)))
        .filter(|&(a, b)| !skipped(a, b))
        .collect();
    let results: Vec<anyhow::Result<()>> = std::thread::scope(|scope| {
        let handles: Vec<_> = checks
            .iter()
            .map(|&(from, to)| {
                let expect_cut = cut(from, to);
                scope.spawn(move || -> anyhow::Result<()> {
                    let got = in_netns(from, move || connect_across(to, Duration::from_millis(300)))?;
                    match (expect_cut, how, got) {
                        (false, _, Ok(())) => Ok(()),
                        (false, _, Err(e)) => bail!("n{from} cannot reach n{to}, which is not cut: {e}"),
                        (true, Cut::Drop, Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => Ok(()),
                        (true, Cut::Reset, Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
                        (true, _, got) => {
                            bail!("the {how:?} cut n{from}-n{to} does not hold as it should: the connect gave {got:?}")
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a cut check panicked")))
            })
            .collect()
    });
    drop(listeners);
    results.into_iter().collect()
}

/// A TCP connect from the calling thread's namespace to node `to`'s check port.
pub fn connect_across(to: u16, timeout: Duration) -> std::io::Result<()> {
    TcpStream::connect_timeout(&SocketAddrV4::new(ip(to), CHECK_PORT).into(), timeout).map(drop)
}

/// One link cut by [`cut_links`]: the packets from `from` to `to` (and back, when
/// `both_ways`) are dropped; only TCP to or from `ports` when that is not empty; only
/// `loss_percent` of them, at random, when that is set (a lossy link, not a cut).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    pub from: u16,
    pub to: u16,
    pub both_ways: bool,
    pub ports: Vec<u16>,
    pub loss_percent: Option<u8>,
}

/// Node `k`'s rules for `links`: `(input, output)`.
fn link_rules(k: u16, links: &[Link]) -> (String, String) {
    let rule = |dir: &str, peer: u16, l: &Link| -> String {
        let who = format!("ip {dir} {}", ip(peer));
        let drop = match l.loss_percent {
            Some(p) => format!("numgen random mod 100 < {p} drop"),
            None => "drop".to_string(),
        };
        if l.ports.is_empty() {
            return format!(" {who} {drop}\n");
        }
        let set = l.ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
        format!(" {who} tcp dport {{ {set} }} {drop}\n {who} tcp sport {{ {set} }} {drop}\n")
    };
    let (mut rin, mut rout) = (String::new(), String::new());
    for l in links {
        if l.to == k || (l.both_ways && l.from == k) {
            rin += &rule("saddr", if l.to == k { l.from } else { l.to }, l);
        }
        if l.from == k || (l.both_ways && l.to == k) {
            rout += &rule("daddr", if l.from == k { l.to } else { l.from }, l);
        }
    }
    (rin, rout)
}

/// Installs exactly these link cuts (drops), replacing any earlier cuts. One-way
/// cuts and cuts of some ports only are what [`partition`] cannot say.
pub fn cut_links(n: u16, links: &[Link]) -> anyhow::Result<()> {
    for k in 1..=n {
        let (rin, rout) = link_rules(k, links);
        let mut rules = String::from("table inet rpj\ndelete table inet rpj\n");
        if !rin.is_empty() || !rout.is_empty() {
            rules += &format!(
                "table inet rpj {{\n chain input {{ type filter hook input priority 0; policy accept;\n{rin} }}\n\
                 chain output {{ type filter hook output priority 0; policy accept;\n{rout} }}\n}}\n"
            );
        }
        nft(k, &rules)?;
    }
    Ok(())
}

/// Proves that link cuts hold: a connect between two nodes that a link cuts on every
/// port times out (either way: a one-way cut stops the handshake in both directions),
/// and every other pair, port-only cuts included (the check port is not theirs), connects.
/// A lossy link may do either, so its pair is not checked.
pub fn verify_links(n: u16, links: &[Link]) -> anyhow::Result<()> {
    let pairs = |lossy: bool| -> Vec<(u16, u16)> {
        links
            .iter()
            .filter(|l| l.loss_percent.is_some() == lossy && (lossy || l.ports.is_empty()))
            .map(|l| (l.from, l.to))
            .collect()
    };
    verify(n, &pairs(false), Cut::Drop, &pairs(true))
}

/// Removes every cut.
pub fn heal(n: u16) -> anyhow::Result<()> {
    partition(n, &[], Cut::Drop)
}

fn nft(k: u16, rules: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", &netns(k), "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("cannot run nft")?;
    child.stdin.take().context("nft stdin")?.write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft in {} refused the rules: {}\n{rules}",
            netns(k),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Freezes or thaws every process of node `k`.
pub fn freeze(k: u16, frozen: bool) -> anyhow::Result<()> {
    let state = if frozen { "FROZEN" } else { "THAWED" };
    fs::write(cgroup(k).join("freezer.state"), state).with_context(|| format!("cannot freeze n{k}"))
}

/// Every process of node `k` (raftpg, its fence keeper, PostgreSQL).
pub fn node_pids(k: u16) -> Vec<i32> {
    pids_in(&cgroup(k).join("cgroup.procs"))
}

/// SIGKILL to every process of node `k`, until none is left.
pub fn kill_node(k: u16) -> anyhow::Result<()> {
    if kill_until_gone(|| node_pids(k), &[Signal::SIGKILL], 100, Duration::from_millis(50)) {
        return Ok(());
    }
    bail!("n{k}'s processes did not die after SIGKILL")
}

/// Sends `signals` to every pid `pids()` lists, until it lists none (true) or
/// `rounds` have passed (false).
fn kill_until_gone(pids: impl Fn() -> Vec<i32>, signals: &[Signal], rounds: u32, pause: Duration) -> bool {
    for _ in 0..rounds {
        let now = pids();
        if now.is_empty() {
            return true;
        }
        for sig in signals {
            signal(&now, *sig);
        }
        std::thread::sleep(pause);
    }
    pids().is_empty()
}

/// Sends `sig` to each pid; one that is already gone is not an error.
pub fn signal(pids: &[i32], sig: Signal) {
    for pid in pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), sig);
    }
}

/// The children of `pid`, from /proc.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // The command name is in parentheses and may hold spaces.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// A process's command line, spaces between arguments.
pub fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_map_to_nodes_and_back() {
        assert_eq!(ip(2).to_string(), "10.77.0.2");
        assert_eq!(node_of("10.77.0.3"), Some(3));
        assert_eq!(node_of("10.77.0.3/32"), Some(3));
        assert_eq!(node_of("10.77.0.254"), None);
        assert_eq!(node_of("127.0.0.1"), None);
    }
}
