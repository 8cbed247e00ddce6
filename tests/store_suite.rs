//! openraft's own storage conformance suite, run against the real sled store.

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;
use raftpg::raft::log_store::{verify, LogStore};
use raftpg::raft::state_machine::StateMachine;
use raftpg::raft::store::Store;
use raftpg::raft::TypeConfig;

/// Opens the store at `path` again. sled 0.34 may still hold the directory's file lock for a
/// moment after the last handle is dropped (its flusher thread exits on its own:
/// spacejam/sled#1289), so a lock held by this process is waited out, up to ten seconds.
/// Every other error is returned as it is.
fn reopen(path: &std::path::Path) -> Result<Store, raftpg::raft::store::StoreOpenError> {
    use raftpg::raft::store::StoreOpenError;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Store::open(path) {
            Err(StoreOpenError::Io { source, .. })
                if source.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for SledBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("raft")).expect("open sled store");
        let sm = StateMachine::open(store.clone()).expect("open state machine");
        Ok((dir, LogStore::new(store), sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_store_passes_openraft_suite() {
    Suite::test_all(SledBuilder).await.expect("storage conformance suite");
}

/// Vote, entries and purge point survive closing and reopening the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vote_log_and_purge_survive_reopen() {
    use openraft::entry::RaftEntry;
    use openraft::storage::{RaftLogReader, RaftLogStorage};
    use openraft::vote::RaftLeaderId;
    use raftpg::raft::{Entry, LogId, Vote};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft");
    let leader = <TypeConfig as openraft::RaftTypeConfig>::LeaderId::new(3, 2);
    let log_id = |i: u64| LogId::new(leader.to_committed(), i);
    let vote = Vote::new(3, 2);
    {
        let store = Store::open(&path).unwrap();
        let mut log = LogStore::new(store);
        log.save_vote(&vote).await.unwrap();
        let entries: Vec<Entry> = (1..=10).map(|i| Entry::new_blank(log_id(i))).collect();
        let (tx, rx) = <TypeConfig as openraft::type_config::TypeConfigExt>::oneshot();
        let cb = openraft::storage::IOFlushed::<TypeConfig>::signal(tx);
        log.append(entries, cb).await.unwrap();
        assert!(rx.await.unwrap().is_ok(), "append reported failure");
        log.purge(log_id(4)).await.unwrap();
    }
    let mut log = LogStore::new(reopen(&path).unwrap());
    assert_eq!(log.read_vote().await.unwrap(), Some(vote));
    let st = log.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id, Some(log_id(4)));
    assert_eq!(st.last_log_id, Some(log_id(10)));
    assert_eq!(log.try_get_log_entries(0..100).await.unwrap().len(), 6);
}

/// A damaged record stops the node with instructions; it is never wiped.
#[test]
fn damaged_record_is_refused_with_instructions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft");
    {
        let store = Store::open(&path).unwrap();
        store.log.insert(5u64.to_be_bytes(), b"not an entry".to_vec()).unwrap();
        store.sync().unwrap();
    }
    let store = reopen(&path).unwrap();
    let err = verify(&store, &path).unwrap_err().to_string();
    assert!(err.contains("corrupt") && err.contains("new Raft id"), "{err}");
    assert!(
        store.log.get(5u64.to_be_bytes()).unwrap().is_some(),
        "the damaged record was removed"
    );
}

/// Damage to sled's file is either refused or fully recovered: never silently different data.
#[test]
fn damaged_file_is_refused_or_recovered_never_silently_wrong() {
    use openraft::storage::RaftLogStorage;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft");
    {
        let store = Store::open(&path).unwrap();
        let mut log = LogStore::new(store.clone());
        futures::executor::block_on(log.save_vote(&raftpg::raft::Vote::new(2, 1))).unwrap();
        for i in 0u32..2000 {
            store.meta.insert(i.to_be_bytes(), vec![7u8; 100]).unwrap();
        }
        store.sync().unwrap();
    }
    let db = path.join("db");
    let mut bytes = std::fs::read(&db).unwrap();
    for b in bytes.iter_mut().skip(64).step_by(7) {
        *b ^= 0x5a;
    }
    std::fs::write(&db, &bytes).unwrap();
    // sled itself may open such a file as empty; the vote guard must catch it.
    let opened = reopen(&path).and_then(|store| {
        verify(&store, &path)?;
        Ok(store)
    });
    match opened {
        Ok(store) => {
            let values: Vec<_> = store
                .meta
                .iter()
                .filter_map(Result::ok)
                .filter(|(k, _)| k.len() == 4)
                .collect();
            assert_eq!(values.len(), 2000, "records silently lost");
            assert!(
                values.iter().all(|(_, v)| v.as_ref() == [7u8; 100]),
                "silently wrong data"
            );
        }
        Err(e) => assert!(
            e.to_string().contains("corrupt") && e.to_string().contains("new Raft id"),
            "{e}"
        ),
    }
}
