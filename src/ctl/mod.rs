//! `raftpg ctl`: the control client. Any node answers; writes reach the Raft leader.
//!
//! Every failure ends in one line that says what went wrong and what to do, and a
//! non-zero exit status. Commands that change the primary or discard data ask first
//! when a person is at the terminal (skip with `--yes`).

mod edit;
mod render;

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use tonic::transport::{Channel, ClientTlsConfig};

use crate::pb::control as pb;
use crate::pb::control::control_client::ControlClient;
pub use render::{render_history, render_reasons, render_table, status_json};

/// The demo's gRPC ports, used when neither --endpoints nor RAFTPG_ENDPOINTS is set.
pub const DEFAULT_ENDPOINTS: &str = "127.0.0.1:15601,127.0.0.1:15602,127.0.0.1:15603";
/// How long one endpoint may take to answer before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Switchover and failover wait for the new primary; adding a member waits for a clone.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Args, Debug)]
pub struct CtlArgs {
    /// Comma-separated gRPC endpoints (host:port); the first that answers is used.
    #[arg(long, env = "RAFTPG_ENDPOINTS", default_value = DEFAULT_ENDPOINTS)]
    pub endpoints: String,
    /// The cluster CA certificate (PEM): connect with TLS and accept only nodes it issued.
    #[arg(long, env = "RAFTPG_CACERT", global = true)]
    pub cacert: Option<std::path::PathBuf>,
    /// This client's certificate (PEM, role admin or read-only), shown to the node.
    #[arg(long, env = "RAFTPG_CERT", global = true, requires = "cacert")]
    pub cert: Option<std::path::PathBuf>,
    /// This client's private key (PEM).
    #[arg(long, env = "RAFTPG_KEY", global = true, requires = "cert")]
    pub key: Option<std::path::PathBuf>,
    /// Do not ask for confirmation (also skipped when stdin is not a terminal).
    #[arg(long, short = 'y', global = true)]
    pub yes: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Subcommand, Debug, Clone)]
pub enum CtlCommand {
    /// Members with role, state, timeline and lag; Raft leader, generation and pause state.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also print each member's last decision.
        #[arg(long, short)]
        verbose: bool,
    },
    /// A libpq connection string: to member NAME, or (without NAME) one that always
    /// reaches the primary (every member, target_session_attrs=read-write).
    Dsn {
        /// The member to connect to.
        name: Option<String>,
    },
    /// Every member's raftpg and PostgreSQL versions (asked of each member directly).
    Version,
    /// Timeline history: every change of primary.
    History {
        #[arg(long)]
        json: bool,
    },
    /// Planned switchover: clean shutdown of the primary, no acknowledged write lost.
    Switchover {
        /// The standby to promote.
        #[arg(long, required_unless_present = "cancel")]
        to: Option<String>,
        /// The current primary (refused if another member is primary).
        #[arg(long)]
        from: Option<String>,
        /// When: an RFC 3339 time (2026-11-21T03:00:00Z) or a delay (+10m, 90s).
        #[arg(long)]
        at: Option<String>,
        /// Cancel a scheduled switchover.
        #[arg(long, conflicts_with_all = ["to", "from", "at"])]
        cancel: bool,
        /// Change nothing: print the candidate, the reports it would wait for and the
        /// worst-case loss, from the controller's own decision on the live state.
        #[arg(long, conflicts_with_all = ["at", "cancel"])]
        dry_run: bool,
    },
    /// Manual failover to a member, without a clean shutdown of the primary.
    Failover {
        #[arg(long)]
        to: String,
        /// Promote even if acknowledged writes may be lost.
        #[arg(long)]
        force: bool,
        /// Change nothing: print the candidate, the reports it would wait for and the
        /// worst-case loss, from the controller's own decision on the live state.
        #[arg(long)]
        dry_run: bool,
    },
    /// Stop automatic failover and fencing decisions.
    Pause,
    /// Resume automatic failover decisions.
    Resume,
    /// Restart one member's PostgreSQL (for parameters that need it), or with `--pending`
    /// every member whose parameters need it, one at a time, standbys first.
    Restart {
        #[arg(required_unless_present = "pending", conflicts_with = "pending")]
        member: Option<String>,
        /// Every member that shows a pending restart, standbys first, the primary last,
        /// each once the one before runs again.
        #[arg(long)]
        pending: bool,
    },
    /// Discard one standby's data and clone it again from the primary.
    Reinit { member: String },
    /// Add, remove or replace members.
    Member {
        #[command(subcommand)]
        action: MemberAction,
    },
    /// Permanent replication slots that every primary keeps (for CDC or backup consumers).
    Slots {
        #[command(subcommand)]
        action: SlotsAction,
    },
    /// Show or change cluster-wide configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Edit the cluster-wide configuration in $EDITOR (or $VISUAL, else vi); shows the
    /// difference, asks, and applies every change in one commit.
    EditConfig,
}

#[derive(Args, Debug, Clone)]
pub struct NewMember {
    /// Member name (also PostgreSQL's application_name).
    #[arg(long)]
    pub name: String,
    /// Raft node id: unique, never reused.
    #[arg(long)]
    pub id: u64,
    /// Raft address, host:port.
    #[arg(long)]
    pub raft: String,
    /// Control API address, host:port.
    #[arg(long)]
    pub grpc: String,
    /// PostgreSQL address, host:port.
    #[arg(long)]
    pub pg: String,
    /// HTTP health address, host:port.
    #[arg(long)]
    pub http: String,
    #[arg(long)]
    pub nofailover: bool,
    #[arg(long, default_value_t = 0)]
    pub failover_priority: i32,
    /// Keep it a replica: a Raft learner outside the quorum and the synchronous set,
    /// streaming asynchronously, never promoted by an automatic failover.
    #[arg(long)]
    pub replica: bool,
}

#[derive(Subcommand, Debug, Clone)]
pub enum MemberAction {
    /// Add a member whose `raftpg run` is already running: learner, clone, voter.
    Add(NewMember),
    /// Remove a member (not the primary).
    Remove { member: String },
    /// Change a member's tags through Raft, in one commit: nofailover, failover_priority,
    /// nosync (never a synchronous standby), noloadbalance (/replica answers 503) and
    /// replicatefrom=NAME (stream from that standby; replicatefrom= clears it).
    Tags {
        /// The member whose tags change.
        member: String,
        /// KEY=VALUE, e.g. nosync=true failover_priority=2
        #[arg(required = true)]
        tags: Vec<String>,
    },
    /// Remove a dead member and add its replacement.
    Replace {
        /// The member to remove.
        old: String,
        #[command(flatten)]
        new: NewMember,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum SlotsAction {
    /// Declare a slot: created on the primary now, and on every new primary after a failover.
    Add {
        /// The slot's name (a-z, 0-9, _), as its consumer names it.
        name: String,
        /// A logical slot (needs --plugin and --database, and wal_level = logical).
        #[arg(long)]
        logical: bool,
        /// The output plugin of a logical slot, e.g. pgoutput.
        #[arg(long, requires = "logical")]
        plugin: Option<String>,
        /// The database of a logical slot.
        #[arg(long, requires = "logical")]
        database: Option<String>,
    },
    /// Stop keeping a slot: every primary drops it.
    Remove { name: String },
    /// List the declared slots.
    List,
}

#[derive(Subcommand, Debug, Clone)]
pub enum ConfigAction {
    /// Print every key and value.
    Show,
    /// Set KEY=VALUE (an empty value resets the key); several are applied in one commit,
    /// all of them or none.
    Set {
        /// KEY=VALUE, e.g. lease_ms=4000 or postgresql.parameters.work_mem=8MB
        #[arg(required = true)]
        assignments: Vec<String>,
    },
}

impl CtlArgs {
    /// The TLS settings from --cacert, --cert and --key (or RAFTPG_CACERT, RAFTPG_CERT,
    /// RAFTPG_KEY); `None` for plaintext.
    pub fn tls(&self) -> anyhow::Result<Option<ClientTlsConfig>> {
        match &self.cacert {
            None => Ok(None),
            Some(ca) => crate::tls::Tls::client_from_files(ca, self.cert.as_deref(), self.key.as_deref()).map(Some),
        }
    }
}

/// Runs the command on the first endpoint that answers. An endpoint whose node knows no
/// Raft leader (a member being added, or one cut off from the others) took nothing: the
/// command goes to the next endpoint that answers, so `--endpoints` may list every node.
pub async fn run(args: CtlArgs) -> anyhow::Result<()> {
    let tls = args.tls()?;
    PLAINTEXT.store(tls.is_none(), std::sync::atomic::Ordering::Relaxed);
    let list = endpoint_list(&args.endpoints)?;
    let (mut from, mut yes) = (0, args.yes);
    loop {
        let (c, at) = connect_first(&list[from..], tls.as_ref()).await?;
        let used = from + at;
        match execute(c, args.command.clone(), yes, tls.as_ref()).await {
            Err(e) if knows_no_leader(&e) && used + 1 < list.len() => {
                eprintln!("{}: {e:#}; trying the next endpoint", list[used]);
                // Anything to confirm was confirmed before this attempt.
                (from, yes) = (used + 1, true);
            }
            done => return done,
        }
    }
}

/// Whether the node that answered refused because it knows no Raft leader: nothing was
/// proposed, so another node may take the same command.
fn knows_no_leader(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        let text = c.to_string();
        text.starts_with("no Raft leader is known") || text.starts_with("no Raft leader could commit")
    })
}

async fn execute(
    mut c: ControlClient<Channel>,
    command: CtlCommand,
    yes: bool,
    tls: Option<&ClientTlsConfig>,
) -> anyhow::Result<()> {
    match command {
        CtlCommand::List { json, verbose } => {
            let s = status(&mut c).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status_json(&s))?);
            } else {
                print!("{}", render_table(&s));
                if verbose {
                    print!("{}", render_reasons(&s));
                }
            }
        }
        CtlCommand::Dsn { name } => {
            let s = status(&mut c).await?;
            let addrs: Vec<(String, String)> = s.members.iter().map(|m| (m.name.clone(), m.pg_addr.clone())).collect();
            println!("{}", dsn(&addrs, name.as_deref())?);
        }
        CtlCommand::Version => {
            let s = status(&mut c).await?;
            let mut rows = Vec::new();
            for m in &s.members {
                rows.push(match version_of(&m.grpc_addr, tls).await {
                    Ok(v) => [m.name.clone(), v.raftpg, v.postgres, v.server],
                    Err(e) => [
                        m.name.clone(),
                        format!("unreachable ({e})"),
                        String::new(),
                        String::new(),
                    ],
                });
            }
            print!("{}", render::version_table(&rows));
        }
        CtlCommand::History { json } => {
            let h = c
                .history(pb::HistoryRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            if json {
                println!("{}", serde_json::to_string_pretty(&render::history_json(&h.entries))?);
            } else {
                print!("{}", render_history(&h.entries));
            }
        }
        CtlCommand::Switchover { cancel: true, .. } => {
            let r = c
                .cancel_switchover(pb::CancelSwitchoverRequest {})
                .await
                .map_err(status_error)?;
            println!("{}", r.into_inner().message);
        }
        CtlCommand::Switchover {
            to,
            from,
            dry_run: true,
            ..
        } => {
            let req = pb::SwitchoverRequest {
                to: to.unwrap_or_default(),
                from: from.unwrap_or_default(),
                at_unix_ms: 0,
                dry_run: true,
            };
            print!(
                "{}",
                c.switchover(req).await.map_err(status_error)?.into_inner().message
            );
        }
        CtlCommand::Switchover { to, from, at, .. } => {
            let to = to.unwrap_or_default();
            let at_unix_ms = at.as_deref().map(parse_at).transpose()?.unwrap_or(0);
            let s = status(&mut c).await?;
            let primary = s.primary.as_ref().map_or("none", |p| p.node.as_str());
            let when = at.map(|a| format!(" at {a}")).unwrap_or_default();
            confirm(yes, &format!("Switch over from {primary} to {to}{when}?"))?;
            eprintln!("switching over to {to}...");
            let req = pb::SwitchoverRequest {
                to,
                from: from.unwrap_or_default(),
                at_unix_ms,
                dry_run: false,
            };
            let r = c.switchover(req).await.map_err(status_error)?.into_inner();
            println!("{}", r.message);
        }
        CtlCommand::Failover {
            to,
            force,
            dry_run: true,
        } => {
            let req = pb::FailoverRequest {
                to,
                force,
                dry_run: true,
            };
            print!("{}", c.failover(req).await.map_err(status_error)?.into_inner().message);
        }
        CtlCommand::Failover { to, force, .. } => {
            let what = if force {
                format!("FORCE a failover to {to}? Acknowledged writes {to} has not received will be LOST.")
            } else {
                format!("Fail over to {to}?")
            };
            confirm(yes, &what)?;
            eprintln!("failing over to {to}...");
            let r = c
                .failover(pb::FailoverRequest {
                    to,
                    force,
                    dry_run: false,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            println!("{}", r.message);
        }
        CtlCommand::Pause => println!("{}", reply(c.pause(pb::PauseRequest {}).await)?),
        CtlCommand::Resume => println!("{}", reply(c.resume(pb::ResumeRequest {}).await)?),
        CtlCommand::Restart {
            member: Some(member), ..
        } => {
            confirm(yes, &format!("Restart PostgreSQL on {member}?"))?;
            println!("{}", reply(c.restart(pb::RestartRequest { member }).await)?);
        }
        CtlCommand::Restart { member: None, .. } => restart_pending(&mut c, yes).await?,
        CtlCommand::Reinit { member } => {
            confirm(
                yes,
                &format!("Discard the data directory of {member} and clone it again from the primary?"),
            )?;
            println!("{}", reply(c.reinit(pb::ReinitRequest { member }).await)?);
        }
        CtlCommand::Member { action } => member(&mut c, action, yes).await?,
        CtlCommand::Slots {
            action:
                SlotsAction::Add {
                    name,
                    logical,
                    plugin,
                    database,
                },
        } => {
            let req = pb::AddSlotRequest {
                name,
                logical,
                plugin: plugin.unwrap_or_default(),
                database: database.unwrap_or_default(),
            };
            println!("{}", reply(c.add_slot(req).await)?);
        }
        CtlCommand::Slots {
            action: SlotsAction::Remove { name },
        } => {
            confirm(
                yes,
                &format!("Stop keeping slot {name}? Every primary drops it, and its consumer must start over."),
            )?;
            println!("{}", reply(c.remove_slot(pb::RemoveSlotRequest { name }).await)?);
        }
        CtlCommand::Slots {
            action: SlotsAction::List,
        } => {
            let s = status(&mut c).await?;
            if s.slots.is_empty() {
                println!("no permanent slots (declare one with `raftpg ctl slots add NAME`)");
            }
            for slot in s.slots {
                if slot.logical {
                    println!("{}\tlogical\t{} in {}", slot.name, slot.plugin, slot.database);
                } else {
                    println!("{}\tphysical", slot.name);
                }
            }
        }
        CtlCommand::Config {
            action: ConfigAction::Show,
        } => {
            let s = status(&mut c).await?;
            let mut pairs: Vec<_> = s.config.into_iter().collect();
            pairs.sort();
            for (k, v) in pairs {
                println!("{k} = {v}");
            }
        }
        CtlCommand::Config {
            action: ConfigAction::Set { assignments },
        } => {
            let mut settings = Vec::new();
            for a in &assignments {
                let (key, value) = a.split_once('=').ok_or_else(|| anyhow!("'{a}' is not KEY=VALUE"))?;
                settings.push(pb::SetConfigRequest {
                    key: key.trim().to_string(),
                    value: value.trim().to_string(),
                });
            }
            let answer = match settings.len() {
                // One key: the call every release of raftpg answers.
                1 => c.set_config(settings.remove(0)).await,
                _ => c.set_configs(pb::SetConfigsRequest { settings }).await,
            };
            println!("{}", reply(answer)?);
        }
        CtlCommand::EditConfig => edit_config(&mut c, yes).await?,
    }
    Ok(())
}

async fn member(c: &mut ControlClient<Channel>, action: MemberAction, yes: bool) -> anyhow::Result<()> {
    match action {
        MemberAction::Add(new) => add(c, new).await,
        MemberAction::Remove { member } => {
            confirm(yes, &format!("Remove {member} from the cluster?"))?;
            println!("{}", reply(c.remove_member(pb::RemoveMemberRequest { member }).await)?);
            Ok(())
        }
        MemberAction::Tags { member, tags } => {
            let tags = tags
                .iter()
                .map(|t| {
                    let (key, value) = t
                        .split_once('=')
                        .ok_or_else(|| anyhow!("'{t}' is not KEY=VALUE (for example nosync=true)"))?;
                    Ok(pb::SetConfigRequest {
                        key: key.trim().to_string(),
                        value: value.trim().to_string(),
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            println!("{}", reply(c.set_tags(pb::SetTagsRequest { member, tags }).await)?);
            Ok(())
        }
        MemberAction::Replace { old, new } => {
            confirm(yes, &format!("Remove {old} and add {} in its place?", new.name))?;
            println!(
                "{}",
                reply(c.remove_member(pb::RemoveMemberRequest { member: old }).await)?
            );
            add(c, new).await
        }
    }
}

async fn add(c: &mut ControlClient<Channel>, m: NewMember) -> anyhow::Result<()> {
    let req = pb::AddMemberRequest {
        member: Some(pb::Member {
            name: m.name,
            id: m.id,
            raft_addr: m.raft,
            grpc_addr: m.grpc,
            pg_addr: m.pg,
            http_addr: m.http,
            nofailover: m.nofailover,
            failover_priority: m.failover_priority,
            nosync: false,
            noloadbalance: false,
            replica: false,
            replicatefrom: String::new(),
            raft_role: String::new(),
        }),
        replica: m.replica,
    };
    let mut stream = c.add_member(req).await.map_err(status_error)?.into_inner();
    while let Some(p) = stream.message().await.map_err(status_error)? {
        println!("{}", p.message);
        if p.done {
            return Ok(());
        }
    }
    bail!("the server stopped before the member was added: check `raftpg ctl list`")
}

async fn status(c: &mut ControlClient<Channel>) -> anyhow::Result<pb::ClusterStatus> {
    Ok(c.status(pb::StatusRequest {}).await.map_err(status_error)?.into_inner())
}

fn reply(r: Result<tonic::Response<pb::CommandReply>, tonic::Status>) -> anyhow::Result<String> {
    Ok(r.map_err(status_error)?.into_inner().message)
}

/// Asks on the terminal; without one (scripts, tests) the command goes ahead.
async fn edit_config(c: &mut ControlClient<Channel>, yes: bool) -> anyhow::Result<()> {
    let before: std::collections::BTreeMap<String, String> = status(c).await?.config.into_iter().collect();
    let file = tempfile::Builder::new()
        .prefix("raftpg-config-")
        .suffix(".conf")
        .tempfile()
        .context("cannot create a temporary file to edit")?;
    std::fs::write(file.path(), edit::render(&before))?;
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    // Through the shell, as git does: EDITOR may carry arguments ("code --wait").
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("raftpg-edit-config")
        .arg(file.path())
        .status()
        .with_context(|| format!("cannot run the editor '{editor}'"))?;
    if !status.success() {
        bail!("the editor '{editor}' failed ({status}): nothing was changed");
    }
    let text = std::fs::read_to_string(file.path())?;
    if text.trim().is_empty() {
        println!("the file was emptied: nothing was changed");
        return Ok(());
    }
    let after = edit::parse(&text).map_err(|e| anyhow!("{e}: nothing was changed"))?;
    let changes = edit::diff(&before, &after);
    if changes.is_empty() {
        println!("no changes");
        return Ok(());
    }
    print!("{}", edit::show(&changes));
    confirm(yes, &format!("Apply these {} changes in one commit?", changes.len()))?;
    let settings = changes
        .into_iter()
        .map(|ch| pb::SetConfigRequest {
            key: ch.key,
            value: ch.after.unwrap_or_default(),
        })
        .collect();
    println!("{}", reply(c.set_configs(pb::SetConfigsRequest { settings }).await)?);
    Ok(())
}

fn confirm(yes: bool, question: &str) -> anyhow::Result<()> {
    if yes || !std::io::stdin().is_terminal() {
        return Ok(());
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        bail!("aborted: nothing was changed")
    }
}

/// `--at`: an RFC 3339 time, or a delay from now (`+10m`, `90s`).
fn parse_at(text: &str) -> anyhow::Result<u64> {
    let t = text.trim();
    let at = match humantime::parse_rfc3339_weak(t) {
        Ok(at) => at,
        Err(_) => {
            let d = humantime::parse_duration(t.trim_start_matches('+')).with_context(|| {
                format!("--at '{t}' is neither an RFC 3339 time (2026-11-21T03:00:00Z) nor a delay (+10m)")
            })?;
            SystemTime::now() + d
        }
    };
    let ms = at
        .duration_since(UNIX_EPOCH)
        .context("--at is before 1970")?
        .as_millis() as u64;
    Ok(ms)
}

/// Members with a pending restart in the order to restart them: standbys first (by name),
/// the primary last.
pub fn restart_order(members: &[pb::MemberStatus]) -> Vec<String> {
    let mut pending: Vec<&pb::MemberStatus> = members.iter().filter(|m| m.pending_restart).collect();
    pending.sort_by_key(|m| (m.role == "primary", m.name.clone()));
    pending.into_iter().map(|m| m.name.clone()).collect()
}

/// `ctl restart --pending`: one member at a time, each waited for until it runs again
/// with nothing pending.
async fn restart_pending(c: &mut ControlClient<Channel>, yes: bool) -> anyhow::Result<()> {
    const WAIT: Duration = Duration::from_secs(300);
    let order = restart_order(&status(c).await?.member_status);
    if order.is_empty() {
        println!("no member has a pending restart");
        return Ok(());
    }
    confirm(
        yes,
        &format!("Restart PostgreSQL on {}, in this order?", order.join(", ")),
    )?;
    for name in order {
        eprintln!("restarting {name}...");
        let msg = reply(c.restart(pb::RestartRequest { member: name.clone() }).await)?;
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let s = status(c).await?;
            let me = s.member_status.iter().find(|m| m.name == name);
            if me.is_some_and(|m| !m.pending_restart && (m.state == "running" || m.state == "streaming")) {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "{name} did not run again without a pending restart within {WAIT:?} (now: {}); \
                     the members after it were not restarted",
                    me.map(|m| format!("{}, {}", m.state, m.reason))
                        .unwrap_or_else(|| "no report".into())
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        println!("{msg}; {name} runs again");
    }
    Ok(())
}

/// The libpq string for member `name` (host and port), or for the primary: every member's
/// host and port with `target_session_attrs=read-write`. `members` are (name, host:port).
pub fn dsn(members: &[(String, String)], name: Option<&str>) -> anyhow::Result<String> {
    let split = |addr: &str| -> anyhow::Result<(String, String)> {
        let (h, p) = addr.rsplit_once(':').with_context(|| format!("'{addr}' has no port"))?;
        Ok((
            h.trim_start_matches('[').trim_end_matches(']').to_string(),
            p.to_string(),
        ))
    };
    match name {
        Some(n) => {
            let (_, addr) = members.iter().find(|(m, _)| m == n).with_context(|| {
                let all: Vec<&str> = members.iter().map(|(m, _)| m.as_str()).collect();
                format!("unknown member '{n}' (members: {})", all.join(", "))
            })?;
            let (h, p) = split(addr)?;
            Ok(format!("host={h} port={p}"))
        }
        None => {
            let mut hosts = Vec::new();
            let mut ports = Vec::new();
            for (_, addr) in members {
                let (h, p) = split(addr)?;
                hosts.push(h);
                ports.push(p);
            }
            Ok(format!(
                "host={} port={} target_session_attrs=read-write",
                hosts.join(","),
                ports.join(",")
            ))
        }
    }
}

/// Connects to the first endpoint that accepts a connection (with TLS when `tls` is given).
/// One member's versions, asked at its own control address.
async fn version_of(addr: &str, tls: Option<&ClientTlsConfig>) -> anyhow::Result<pb::VersionReply> {
    let mut c = connect(addr, tls).await?;
    let v = tokio::time::timeout(CONNECT_TIMEOUT * 4, c.version(pb::VersionRequest {}))
        .await
        .map_err(|_| anyhow!("no answer within {:?}", CONNECT_TIMEOUT * 4))??;
    Ok(v.into_inner())
}

pub async fn connect(endpoints: &str, tls: Option<&ClientTlsConfig>) -> anyhow::Result<ControlClient<Channel>> {
    Ok(connect_first(&endpoint_list(endpoints)?, tls).await?.0)
}

fn endpoint_list(endpoints: &str) -> anyhow::Result<Vec<&str>> {
    let list: Vec<&str> = endpoints.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
    if list.is_empty() {
        bail!("no endpoints given: pass --endpoints host:port[,host:port...] or set RAFTPG_ENDPOINTS");
    }
    Ok(list)
}

/// A client of the first endpoint of `list` that answers, and its index.
async fn connect_first(
    list: &[&str],
    tls: Option<&ClientTlsConfig>,
) -> anyhow::Result<(ControlClient<Channel>, usize)> {
    let mut failures = Vec::new();
    for (i, ep) in list.iter().enumerate() {
        let endpoint = crate::tls::endpoint(ep, tls)
            .map_err(|e| anyhow!("'{ep}' is not host:port: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT);
        match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect()).await {
            Ok(Ok(ch)) => return Ok((ControlClient::new(ch), i)),
            Ok(Err(e)) => failures.push(format!("{ep}: {}", transport_error(&e, tls.is_some()))),
            Err(_) => failures.push(format!("{ep}: no answer within {CONNECT_TIMEOUT:?}")),
        }
    }
    bail!(
        "no endpoint answered ({}): is the cluster running? Set --endpoints or RAFTPG_ENDPOINTS",
        failures.join("; ")
    )
}

/// A connection error with its causes, and what to do about the usual TLS mistakes.
fn transport_error(e: &(dyn std::error::Error + 'static), tls: bool) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    let hint = if text.contains("UnknownIssuer") || text.contains("BadSignature") {
        "; the node's certificate is not from the CA given with --cacert (RAFTPG_CACERT)"
    } else if text.contains("CertificateRequired") || text.contains("certificate required") {
        "; the node requires a client certificate: pass --cert and --key (RAFTPG_CERT, RAFTPG_KEY)"
    } else if text.contains("UnknownCA") || text.contains("unknown ca") || text.contains("BadCertificate") {
        "; the node refused this client certificate: it is not from the cluster's CA"
    } else if tls {
        "; if the node closed the connection, it refused this client certificate (--cert, RAFTPG_CERT): \
         it must come from the cluster's CA and carry a raftpg role"
    } else if !tls {
        "; if the cluster uses TLS, pass --cacert, --cert and --key (or RAFTPG_CACERT, RAFTPG_CERT, RAFTPG_KEY)"
    } else {
        ""
    };
    format!("{text}{hint}")
}

/// Set when ctl runs without --cacert: a TLS node then drops the connection.
static PLAINTEXT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn status_error(s: tonic::Status) -> anyhow::Error {
    use std::error::Error as _;
    let transport = matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::Internal
    );
    let plaintext = PLAINTEXT.load(std::sync::atomic::Ordering::Relaxed);
    match s.source() {
        Some(src) if transport => anyhow!("{}: {}", s.message(), transport_error(src, !plaintext)),
        _ if transport && plaintext => anyhow!(
            "{}; the node closed the connection: if the cluster uses TLS, pass --cacert, --cert and --key \
             (or RAFTPG_CACERT, RAFTPG_CERT, RAFTPG_KEY)",
            s.message()
        ),
        _ => anyhow!("{}", s.message()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_restarts_go_standbys_first_primary_last() {
        let m = |name: &str, role: &str, pending: bool| pb::MemberStatus {
            name: name.into(),
            role: role.into(),
            pending_restart: pending,
            ..Default::default()
        };
        let members = [
            m("n1", "primary", true),
            m("n3", "quorum_standby", true),
            m("n2", "quorum_standby", true),
            m("n4", "replica", false),
        ];
        assert_eq!(restart_order(&members), ["n2", "n3", "n1"]);
        assert!(restart_order(&[m("n1", "primary", false)]).is_empty());
    }

    #[test]
    fn dsn_names_a_member_or_every_member_for_the_primary() {
        let m = |n: &str, a: &str| (n.to_string(), a.to_string());
        let members = [
            m("n1", "10.0.0.1:5432"),
            m("n2", "10.0.0.2:5433"),
            m("n3", "[::1]:5434"),
        ];
        assert_eq!(dsn(&members, Some("n2")).unwrap(), "host=10.0.0.2 port=5433");
        assert_eq!(
            dsn(&members, None).unwrap(),
            "host=10.0.0.1,10.0.0.2,::1 port=5432,5433,5434 target_session_attrs=read-write"
        );
        let e = dsn(&members, Some("n9")).unwrap_err().to_string();
        assert!(e.contains("unknown member 'n9'") && e.contains("n1, n2, n3"), "{e}");
    }

    #[test]
    fn at_accepts_times_and_delays() {
        assert_eq!(parse_at("2030-01-01T00:00:00Z").unwrap(), 1_893_456_000_000);
        let soon = parse_at("+10m").unwrap();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        assert!(soon >= now + 590_000 && soon <= now + 610_000);
        assert!(parse_at("tomorrowish").unwrap_err().to_string().contains("RFC 3339"));
    }
}
