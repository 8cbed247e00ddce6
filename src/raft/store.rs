//! The sled database behind the log store and the state machine, with real durability.
//!
//! sled's `flush()` ends in `sync_file_range` on Linux, which does not reach
//! the disk (spacejam/sled#1452). Raft's safety rests on the vote and the log
//! surviving power loss, so every durable write is followed by an `fdatasync`
//! of sled's data file. One `sled::Db` per process, several trees.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Failure to open the store. Each variant tells the operator what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreOpenError {
    #[error(
        "the Raft store at {path} is corrupt ({detail}). raftpg will not wipe it: this node's vote and log \
         may be all that proves what it promised. Move the directory aside, remove this member from the cluster \
         (on a healthy node), and add the machine back under a new Raft id"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error("cannot open the Raft store at {path}: {source}. Check that the directory exists and is writable")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "the Raft store at {path} has format {found}, written by a newer raftpg; this raftpg reads formats up to \
         {supported}. Run the newer raftpg on this node: downgrading a node is not supported (README, \"Upgrading raftpg\")"
    )]
    Newer { path: PathBuf, found: u32, supported: u32 },
}

/// The encoding of stored records and of messages between nodes (postcard, golden-tested
/// in `raft::golden_tests`). Raised only by a change that an older raftpg cannot read; a
/// node refuses to open a store of a newer format.
pub const FORMAT_VERSION: u32 = 1;
const FORMAT_KEY: &str = "format";

/// The opened database, its trees and the file to fdatasync.
#[derive(Clone)]
pub struct Store {
    pub db: sled::Db,
    /// Vote, committed log id, last purged log id.
    pub meta: sled::Tree,
    /// Log entries keyed by big-endian index.
    pub log: sled::Tree,
    /// The current snapshot: metadata and data.
    pub snapshot: sled::Tree,
    data_file: Arc<File>,
    dir: PathBuf,
}

/// A copy of the last vote kept outside sled. sled opens some damaged stores
/// as empty without an error; a node that forgot its vote could vote twice in
/// one term. The guard makes that a refusal to start instead.
const VOTE_GUARD: &str = "vote.guard";

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreOpenError> {
        let io_err = |source| StoreOpenError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let created = !dir.exists();
        std::fs::create_dir_all(dir).map_err(io_err)?;
        // No background flusher: every write that must survive is made durable by `sync`
        // (the vote and the log before Raft answers, the state machine at a snapshot), so
        // sled's flush every 500 ms only woke an idle node twice a second for nothing.
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(None)
            .open()
            .map_err(|e| match e {
                sled::Error::Corruption { .. } => StoreOpenError::Corrupt {
                    path: dir.to_path_buf(),
                    detail: e.to_string(),
                },
                sled::Error::Io(source) => io_err(source),
                other => StoreOpenError::Corrupt {
                    path: dir.to_path_buf(),
                    detail: other.to_string(),
                },
            })?;
        let tree = |name: &str| {
            db.open_tree(name).map_err(|e| StoreOpenError::Corrupt {
                path: dir.to_path_buf(),
                detail: e.to_string(),
            })
        };
        let (meta, log, snapshot) = (tree("meta")?, tree("log")?, tree("snapshot")?);
        check_format(&meta, dir)?;
        let data_file = File::open(dir.join("db")).map_err(io_err)?;
        if created {
            // The directory entry of a new store must survive a crash too.
            if let Some(parent) = dir.parent() {
                File::open(parent).and_then(|d| d.sync_all()).map_err(io_err)?;
            }
            File::open(dir).and_then(|d| d.sync_all()).map_err(io_err)?;
        }
        Ok(Store {
            db,
            meta,
            log,
            snapshot,
            data_file: Arc::new(data_file),
            dir: dir.to_path_buf(),
        })
    }

    /// Makes every write so far durable: sled flush, then fdatasync of its data file.
    pub fn sync(&self) -> io::Result<()> {
        self.db.flush().map_err(to_io)?;
        self.data_file.sync_data()
    }

    /// `sync` on a blocking thread: an fdatasync on a busy disk can take long, and must
    /// not hold one of the runtime's few workers (the lease renewals run there).
    /// Outside a tokio runtime (a plain executor) it syncs in place.
    pub async fn sync_off_runtime(&self) -> io::Result<()> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return self.sync();
        };
        let store = self.clone();
        match runtime.spawn_blocking(move || store.sync()).await {
            Ok(result) => result,
            Err(e) => Err(io::Error::other(format!("the sync task failed: {e}"))),
        }
    }
}

impl Store {
    fn guard_path(&self) -> PathBuf {
        self.dir.join(VOTE_GUARD)
    }

    /// Atomically replaces the vote guard: temp file, fsync, rename, fsync of the directory.
    pub fn write_guard(&self, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(format!("{VOTE_GUARD}.tmp"));
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.guard_path())?;
        File::open(&self.dir)?.sync_all()
    }

    /// The last vote recorded outside sled, if any.
    pub fn read_guard(&self) -> io::Result<Option<Vec<u8>>> {
        match std::fs::read(self.guard_path()) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Records the format of a new store (or of one from before formats were recorded, which
/// is format 1) and refuses one of a newer format.
fn check_format(meta: &sled::Tree, dir: &Path) -> Result<(), StoreOpenError> {
    let corrupt = |detail: String| StoreOpenError::Corrupt {
        path: dir.to_path_buf(),
        detail,
    };
    match meta.get(FORMAT_KEY).map_err(|e| corrupt(e.to_string()))? {
        None => {
            meta.insert(FORMAT_KEY, &FORMAT_VERSION.to_be_bytes())
                .map_err(|e| corrupt(e.to_string()))?;
            Ok(())
        }
        Some(bytes) => {
            let found = <[u8; 4]>::try_from(bytes.as_ref())
                .map(u32::from_be_bytes)
                .map_err(|_| corrupt(format!("the store format is {} bytes long, not 4", bytes.len())))?;
            if found > FORMAT_VERSION {
                return Err(StoreOpenError::Newer {
                    path: dir.to_path_buf(),
                    found,
                    supported: FORMAT_VERSION,
                });
            }
            Ok(())
        }
    }
}

pub fn to_io(e: sled::Error) -> io::Error {
    match e {
        sled::Error::Io(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_records_its_format_and_refuses_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft");
        let store = Store::open(&path).unwrap();
        let recorded = store.meta.get(FORMAT_KEY).unwrap().unwrap();
        assert_eq!(recorded.as_ref(), FORMAT_VERSION.to_be_bytes());
        store
            .meta
            .insert(FORMAT_KEY, &(FORMAT_VERSION + 1).to_be_bytes())
            .unwrap();
        store.sync().unwrap();
        drop(store);
        // sled lets go of its lock file only once its last internal reference is gone,
        // which can be a moment after the drop (CI saw "could not acquire lock" once).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let err = loop {
            match Store::open(&path) {
                Ok(_) => panic!("a newer format is refused"),
                Err(e) if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => break e,
            }
        };
        let msg = err.to_string();
        assert!(
            msg.contains("newer raftpg") && msg.contains(&format!("format {}", FORMAT_VERSION + 1)),
            "{msg}"
        );
    }
}
