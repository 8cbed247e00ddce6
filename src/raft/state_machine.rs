//! The applied `ClusterState` (`RaftStateMachine`), with snapshots kept in sled.
//!
//! The state itself lives in memory: it is small, and after a restart openraft
//! rebuilds it from the last durable snapshot plus the durable log. Snapshots
//! are fdatasync'ed before they are reported built or installed, so the log
//! behind them can be purged safely and disk use stays bounded.

use std::io;
use std::sync::{Arc, Mutex};

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use tokio::sync::watch;

use super::codec::{decode, decode_state, encode};
use super::store::{to_io, Store};
use super::types::{LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig};
use crate::cluster::{apply, ClusterState, Command};

const SNAPSHOT_META: &str = "meta";
const SNAPSHOT_DATA: &str = "data";

/// The applied state as readers see it: a consistent copy and the log index it reflects.
#[derive(Clone, Debug, Default)]
pub struct AppliedState {
    pub log_index: u64,
    pub state: Arc<ClusterState>,
}

struct Data {
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    state: ClusterState,
}

/// Shared handle to the state machine; openraft's snapshot builder is a clone of it.
#[derive(Clone)]
pub struct StateMachine {
    store: Store,
    data: Arc<Mutex<Data>>,
    tx: Arc<watch::Sender<AppliedState>>,
}

impl StateMachine {
    /// Opens the state machine at the last durable snapshot (or empty).
    pub fn open(store: Store) -> io::Result<StateMachine> {
        let mut data = Data {
            last_applied: None,
            last_membership: StoredMembership::default(),
            state: ClusterState::default(),
        };
        if let Some(snap) = read_snapshot(&store)? {
            data.state = decode_state(&snap.snapshot, "snapshot data")?;
            data.last_applied = snap.meta.last_log_id;
            data.last_membership = snap.meta.last_membership;
        }
        let view = view_of(&data);
        Ok(StateMachine {
            store,
            data: Arc::new(Mutex::new(data)),
            tx: Arc::new(watch::Sender::new(view)),
        })
    }

    /// Subscribe to every change of the applied state.
    pub fn subscribe(&self) -> watch::Receiver<AppliedState> {
        self.tx.subscribe()
    }

    /// The applied state now.
    pub fn current(&self) -> AppliedState {
        self.tx.borrow().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn persist_snapshot(&self, meta: &SnapshotMeta, bytes: &[u8]) -> io::Result<()> {
        let mut batch = sled::Batch::default();
        batch.insert(SNAPSHOT_META, encode(meta));
        batch.insert(SNAPSHOT_DATA, bytes);
        self.store.snapshot.apply_batch(batch).map_err(to_io)?;
        self.store.sync()
    }
}

fn view_of(d: &Data) -> AppliedState {
    AppliedState {
        log_index: d.last_applied.as_ref().map_or(0, |l| l.index),
        state: Arc::new(d.state.clone()),
    }
}

fn read_snapshot(store: &Store) -> io::Result<Option<Snapshot>> {
    let meta = store.snapshot.get(SNAPSHOT_META).map_err(to_io)?;
    let data = store.snapshot.get(SNAPSHOT_DATA).map_err(to_io)?;
    match (meta, data) {
        (Some(meta), Some(data)) => Ok(Some(Snapshot {
            meta: decode(&meta, "snapshot metadata")?,
            snapshot: data.to_vec(),
        })),
        _ => Ok(None),
    }
}

fn log_applied(index: u64, cmd: &Command, result: &super::types::CommandResult) {
    match result {
        Ok(a) if cmd.is_topology() => {
            tracing::info!(index, command = %cmd, revision = a.revision, "applied: {}", a.message)
        }
        Ok(a) => tracing::debug!(index, command = %cmd, revision = a.revision, "applied: {}", a.message),
        Err(r) => tracing::warn!(index, command = %cmd, "rejected: {r}"),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let (meta, bytes) = {
            let d = self.lock();
            let meta = SnapshotMeta {
                last_log_id: d.last_applied,
                last_membership: d.last_membership.clone(),
            };
            (meta, encode(&d.state))
        };
        self.persist_snapshot(&meta, &bytes)?;
        tracing::info!(
            last_log_index = meta.last_log_id.as_ref().map(|l| l.index),
            bytes = bytes.len(),
            "snapshot built"
        );
        Ok(Snapshot { meta, snapshot: bytes })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let d = self.lock();
        Ok((d.last_applied, d.last_membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        // Answered once the batch's state is published: a caller whose command committed
        // reads it back at once from `current()` (a removal checked the state before its
        // Raft membership change, and read the state before its last command).
        let mut replies = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            let result = {
                let mut d = self.lock();
                d.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => None,
                    EntryPayload::Normal(cmd) => {
                        let result = apply(&mut d.state, &cmd);
                        log_applied(entry.log_id.index, &cmd, &result);
                        Some(result)
                    }
                    EntryPayload::Membership(m) => {
                        tracing::info!(index = entry.log_id.index, membership = %m, "applied Raft membership");
                        d.last_membership = StoredMembership::new(Some(entry.log_id), m);
                        None
                    }
                }
            };
            if let Some(responder) = responder {
                let result = result.unwrap_or_else(|| {
                    Ok(crate::cluster::Applied {
                        message: "no-op".into(),
                        revision: self.lock().state.revision,
                    })
                });
                replies.push((responder, result));
            }
        }
        let view = view_of(&self.lock());
        self.tx.send_replace(view);
        for (responder, result) in replies {
            responder.send(result);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotData) -> io::Result<()> {
        let state: ClusterState = decode_state(&snapshot, "received snapshot")?;
        self.persist_snapshot(meta, &snapshot)?;
        let view = {
            let mut d = self.lock();
            d.state = state;
            d.last_applied = meta.last_log_id;
            d.last_membership = meta.last_membership.clone();
            view_of(&d)
        };
        tracing::info!(last_log_index = view.log_index, "snapshot installed");
        self.tx.send_replace(view);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        read_snapshot(&self.store)
    }
}
