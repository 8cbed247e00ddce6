//! The Raft log and vote in sled (`RaftLogStorage`).
//!
//! Vote and appended entries are fdatasync'ed before openraft is told they
//! are stored: a vote forgotten after a crash lets a node vote twice in one
//! term, which is how two Raft leaders (and two primaries) happen.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;

use super::codec::{decode, encode};
use super::store::{to_io, Store};
use super::types::{Entry, IOFlushed, LogId, LogState, TypeConfig, Vote};

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// Log storage over the shared sled store. Cheap to clone (the reader is a clone).
#[derive(Clone)]
pub struct LogStore {
    store: Store,
}

impl LogStore {
    pub fn new(store: Store) -> LogStore {
        LogStore { store }
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> io::Result<Option<T>> {
        match self.store.meta.get(key).map_err(to_io)? {
            Some(bytes) => Ok(Some(decode(&bytes, key)?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, key: &str, value: &T) -> io::Result<()> {
        self.store.meta.insert(key, encode(value)).map_err(to_io)?;
        Ok(())
    }

    /// True once this node has ever voted or stored a log entry.
    pub fn is_pristine(&self) -> io::Result<bool> {
        Ok(self.get_meta::<Vote>(VOTE)?.is_none() && self.store.log.is_empty())
    }

    fn last_entry_log_id(&self) -> io::Result<Option<LogId>> {
        match self.store.log.last().map_err(to_io)? {
            Some((_, bytes)) => {
                let entry: Entry = decode(&bytes, "log entry")?;
                Ok(Some(entry.log_id))
            }
            None => Ok(None),
        }
    }
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn bound_key(b: Bound<&u64>) -> Bound<[u8; 8]> {
    match b {
        Bound::Included(i) => Bound::Included(key(*i)),
        Bound::Excluded(i) => Bound::Excluded(key(*i)),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let range = (bound_key(range.start_bound()), bound_key(range.end_bound()));
        let mut out = Vec::new();
        for item in self.store.log.range(range) {
            let (_, bytes) = item.map_err(to_io)?;
            out.push(decode(&bytes, "log entry")?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        self.get_meta(VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> io::Result<LogState> {
        let last_purged_log_id: Option<LogId> = self.get_meta(LAST_PURGED)?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        self.put_meta(VOTE, vote)?;
        self.store.sync_off_runtime().await?;
        self.store.write_guard(&encode(vote))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        // Not synced: losing it only means re-applying committed entries after a restart.
        match committed {
            Some(c) => self.put_meta(COMMITTED, &c),
            None => self.store.meta.remove(COMMITTED).map(|_| ()).map_err(to_io),
        }
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        self.get_meta(COMMITTED)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            batch.insert(&key(entry.log_id.index), encode(&entry));
        }
        self.store.log.apply_batch(batch).map_err(to_io)?;
        let result = self.store.sync_off_runtime().await;
        let ret = result
            .as_ref()
            .map(|_| ())
            .map_err(|e| io::Error::new(e.kind(), e.to_string()));
        callback.io_completed(result);
        ret
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        let mut batch = sled::Batch::default();
        for item in self.store.log.range(key(from)..) {
            let (k, _) = item.map_err(to_io)?;
            batch.remove(k);
        }
        self.store.log.apply_batch(batch).map_err(to_io)?;
        self.store.sync_off_runtime().await
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        // Record the purge point first: a crash in between leaves entries that are merely unused.
        self.put_meta(LAST_PURGED, &log_id)?;
        self.store.sync_off_runtime().await?;
        let mut batch = sled::Batch::default();
        for item in self.store.log.range(..=key(log_id.index)) {
            let (k, _) = item.map_err(to_io)?;
            batch.remove(k);
        }
        self.store.log.apply_batch(batch).map_err(to_io)?;
        self.store.sync_off_runtime().await
    }
}

/// Checks at start-up that every stored record decodes and the log has no gaps.
///
/// sled checksums its own pages, but a record damaged in a way that passes
/// them, or a log with a hole, would otherwise surface later as a crash in
/// the middle of replication. Refusing to start is the safe answer.
pub fn verify(store: &Store, dir: &std::path::Path) -> Result<(), super::store::StoreOpenError> {
    let corrupt = |detail: String| super::store::StoreOpenError::Corrupt {
        path: dir.to_path_buf(),
        detail,
    };
    let unreadable = |e: io::Error| corrupt(e.to_string());
    let log = LogStore::new(store.clone());
    let vote: Option<Vote> = log.get_meta(VOTE).map_err(unreadable)?;
    if let Some(guard) = store.read_guard().map_err(unreadable)? {
        let guard: Vote = decode(&guard, "vote guard").map_err(unreadable)?;
        let behind = match &vote {
            None => true,
            Some(v) => v.partial_cmp(&guard).is_none_or(|o| o == std::cmp::Ordering::Less),
        };
        if behind {
            return Err(corrupt(format!(
                "the store's vote ({}) is older than the last vote this node made ({guard}): \
                 the store lost data",
                vote.map_or("none".to_string(), |v| v.to_string())
            )));
        }
    }
    let _: Option<LogId> = log.get_meta(COMMITTED).map_err(unreadable)?;
    let purged: Option<LogId> = log.get_meta(LAST_PURGED).map_err(unreadable)?;
    let mut expected: Option<u64> = None;
    for item in store.log.iter() {
        let (k, bytes) = item.map_err(|e| unreadable(to_io(e)))?;
        let entry: Entry = decode(&bytes, "log entry").map_err(unreadable)?;
        let index = entry.log_id.index;
        if k.as_ref() != key(index) {
            return Err(corrupt(format!("log entry {index} is stored under another index")));
        }
        if purged.as_ref().is_some_and(|p| index <= p.index) {
            continue; // left over from an interrupted purge: harmless
        }
        if let Some(e) = expected {
            if index != e {
                return Err(corrupt(format!("the log jumps from index {} to {index}", e - 1)));
            }
        }
        expected = Some(index + 1);
    }
    Ok(())
}
