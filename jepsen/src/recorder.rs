//! Writes the history as it happens: every record goes to `history.jsonl`
//! at once (a crashed run still leaves what it saw) and stays in memory for
//! the checkers.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use crate::history::{History, Op, Record};

pub struct Recorder {
    t0: Instant,
    inner: Mutex<Inner>,
}

struct Inner {
    file: BufWriter<File>,
    records: Vec<Record>,
    /// Per node: when the last write that reached it started (`Op::node`).
    last_write: std::collections::BTreeMap<String, u64>,
    next_index: u64,
}

impl Recorder {
    pub fn create(path: &Path) -> anyhow::Result<Recorder> {
        Ok(Recorder {
            t0: Instant::now(),
            inner: Mutex::new(Inner {
                file: BufWriter::new(File::create(path)?),
                records: Vec::new(),
                last_write: Default::default(),
                next_index: 0,
            }),
        })
    }

    /// Nanoseconds since the run started: the history's one clock.
    pub fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    pub fn ns_of(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.t0).as_nanos() as u64
    }

    /// Records a completed operation, giving it the next index.
    pub fn op(&self, mut op: Op) {
        let mut inner = self.inner.lock().expect("recorder lock");
        op.index = inner.next_index;
        inner.next_index += 1;
        if let Some(node) = op.node.as_ref().filter(|_| op.f.is_write()) {
            let last = inner.last_write.entry(node.clone()).or_default();
            *last = (*last).max(op.start_ns);
        }
        inner.push(Record::Op(op));
    }

    pub fn record(&self, r: Record) {
        self.inner.lock().expect("recorder lock").push(r);
    }

    /// When the last write that reached `node` started (history nanoseconds).
    pub fn last_write_ns(&self, node: &str) -> Option<u64> {
        self.inner.lock().expect("recorder lock").last_write.get(node).copied()
    }

    pub fn history(&self) -> History {
        History::from_records(self.inner.lock().expect("recorder lock").records.clone())
    }

    pub fn flush(&self) -> std::io::Result<()> {
        self.inner.lock().expect("recorder lock").file.flush()
    }
}

impl Inner {
    fn push(&mut self, r: Record) {
        // A history line that cannot be written is a broken run: say so loudly.
        let line = serde_json::to_string(&r).expect("history records serialise");
        if let Err(e) = writeln!(self.file, "{line}") {
            eprintln!("raftpg-jepsen: cannot write the history: {e}");
        }
        self.records.push(r);
    }
}
