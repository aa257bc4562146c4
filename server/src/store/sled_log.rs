//! [`EventLog`] on sled 0.34: one tree, one writer thread, reads straight from the tree.

use std::{
    path::Path,
    sync::{Arc, RwLock},
    thread,
};

use ordo_api::v1::Event;
use prost::Message;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::info;

use super::{
    AppendBatch, AppendFuture, EventLog, Record, StoreError, StoredResponse, keys,
    writer::{self, DurableFiles, Job, Writer},
};

/// Appends that may wait for the writer before `append` itself waits: the queue's bound.
const QUEUE_DEPTH: usize = 4096;

/// How an acknowledged append is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// sled flush plus fdatasync of its data file before every ack: survives power loss.
    #[default]
    Fdatasync,
    /// sled flush only (`sync_file_range`): survives a process crash, NOT a power loss or kernel
    /// crash. Opt-in, for those who trade that risk for throughput.
    NoFsyncUnsafe,
}

/// The sled-backed event log.
pub struct SledLog {
    db: sled::Db,
    tree: sled::Tree,
    sender: RwLock<Option<mpsc::Sender<Job>>>,
    head_rx: watch::Receiver<u64>,
    writer: std::sync::Mutex<Option<thread::JoinHandle<()>>>,
}

impl SledLog {
    /// Opens (or creates) the log in `dir`. Start-up reads only the last event key, so its cost
    /// does not grow with the log.
    pub fn open(dir: &Path, sync: SyncMode) -> Result<Arc<Self>, StoreError> {
        std::fs::create_dir_all(dir)?;
        let db = sled::Config::new()
            .path(dir)
            // We flush and sync at every commit; sled's periodic flusher would only add contention.
            .flush_every_ms(None)
            .open()?;
        let tree = db.open_tree("log")?;
        let head = match tree.scan_prefix([keys::EVENT]).next_back() {
            Some(entry) => {
                let (key, _) = entry?;
                writer::decode_offset(&key[1..], "event key")?
            }
            None => 0,
        };
        let durability = match sync {
            SyncMode::Fdatasync => Some(DurableFiles::open(dir)?),
            SyncMode::NoFsyncUnsafe => None,
        };
        info!(head, dir = %dir.display(), ?sync, "event log opened");

        let (head_tx, head_rx) = watch::channel(head);
        let (sender, receiver) = mpsc::channel(QUEUE_DEPTH);
        let writer = Writer {
            db: db.clone(),
            tree: tree.clone(),
            durability,
            head,
            head_tx,
        };
        let handle = thread::Builder::new()
            .name("ordo-log-writer".into())
            .spawn(move || writer.run(receiver))?;
        Ok(Arc::new(Self {
            db,
            tree,
            sender: RwLock::new(Some(sender)),
            head_rx,
            writer: std::sync::Mutex::new(Some(handle)),
        }))
    }

    fn decode(bytes: &[u8]) -> Result<Event, StoreError> {
        Event::decode(bytes).map_err(|e| writer::corrupt("event", e.to_string()))
    }
}

impl EventLog for SledLog {
    fn append(&self, batch: AppendBatch) -> AppendFuture {
        let sender = self.sender.read().ok().and_then(|guard| guard.clone());
        Box::pin(async move {
            let sender = sender.ok_or(StoreError::Closed)?;
            let (reply, rx) = oneshot::channel();
            sender
                .send(Job { batch, reply })
                .await
                .map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn read(&self, from: u64, max: usize, max_bytes: usize) -> Result<Vec<Event>, StoreError> {
        let head = self.head();
        let from = from.max(1);
        if from > head || max == 0 {
            return Ok(Vec::new());
        }
        let to = head.min(from.saturating_add(max as u64 - 1));
        let mut events = Vec::with_capacity((to - from + 1) as usize);
        let mut bytes = 0;
        for entry in self.tree.range(keys::event(from)..=keys::event(to)) {
            let (_, value) = entry?;
            bytes += value.len();
            events.push(Self::decode(&value)?);
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(events)
    }

    fn read_stream(
        &self,
        stream_id: &str,
        from_version: u64,
        to_version: u64,
    ) -> Result<Vec<Event>, StoreError> {
        let head = self.head();
        let start = keys::stream_entry(stream_id, from_version.max(1));
        let end = keys::stream_entry(stream_id, to_version);
        let mut events = Vec::new();
        if from_version > to_version {
            return Ok(events);
        }
        for entry in self.tree.range(start..=end) {
            let (_, offset) = entry?;
            let offset = writer::decode_offset(&offset, "stream index")?;
            if offset > head {
                break;
            }
            let Some(bytes) = self.tree.get(keys::event(offset))? else {
                return Err(writer::corrupt(
                    "stream index",
                    format!("offset {offset} missing"),
                ));
            };
            events.push(Self::decode(&bytes)?);
        }
        Ok(events)
    }

    fn stream_version(&self, stream_id: &str) -> Result<u64, StoreError> {
        writer::read_version(&self.tree, stream_id)
    }

    fn head(&self) -> u64 {
        *self.head_rx.borrow()
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.head_rx.clone()
    }

    fn get_record(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(keys::record(key))?.map(|v| v.to_vec()))
    }

    fn scan_records(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let full_prefix = keys::record(prefix);
        let start = match after {
            Some(after) => {
                // The smallest key strictly greater than `after`.
                let mut key = keys::record(after);
                key.push(0);
                key
            }
            None => full_prefix.clone(),
        };
        let mut out = Vec::new();
        for entry in self.tree.range(start..) {
            let (key, value) = entry?;
            if !key.starts_with(&full_prefix) || out.len() >= limit {
                break;
            }
            out.push((key[1..].to_vec(), value.to_vec()));
        }
        Ok(out)
    }

    fn idempotent_response(&self, key: &str) -> Result<Option<StoredResponse>, StoreError> {
        writer::read_idempotency(&self.tree, key)
    }

    fn expire_idempotency(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        let mut removed = 0;
        let start = [keys::IDEMPOTENCY_TIME];
        let end = keys::idempotency_time(cutoff_ms, "");
        for entry in self.tree.range(start.to_vec()..end) {
            let (key, _) = entry?;
            let claim = String::from_utf8_lossy(&key[9..]).into_owned();
            self.tree.remove(keys::idempotency(&claim))?;
            self.tree.remove(key)?;
            removed += 1;
        }
        Ok(removed)
    }

    fn close(&self) -> Result<(), StoreError> {
        if let Ok(mut sender) = self.sender.write() {
            sender.take();
        }
        if let Some(handle) = self.writer.lock().ok().and_then(|mut h| h.take()) {
            let _ = handle.join();
        }
        self.db.flush()?;
        Ok(())
    }
}
