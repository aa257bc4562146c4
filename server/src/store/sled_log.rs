//! [`EventLog`] on sled 0.34: one tree, one writer thread, reads straight from the tree.

use std::{
    path::Path,
    sync::{Arc, RwLock},
    thread,
};

use bytes::Bytes;
use ordo_api::v1::Event;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::info;

use super::{
    AppendBatch, AppendFuture, EventLog, RawEvent, Record, StoreError, StoredResponse, chunk, keys,
    tail::Tail,
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
    tail: Arc<Tail>,
    writer: std::sync::Mutex<Option<thread::JoinHandle<()>>>,
}

impl SledLog {
    /// Opens (or creates) the log in `dir`. Start-up reads only the last event key, so its cost
    /// does not grow with the log.
    pub fn open(dir: &Path, sync: SyncMode) -> Result<Arc<Self>, StoreError> {
        std::fs::create_dir_all(dir)?;
        let config = sled::Config::new()
            .path(dir)
            // We flush and sync at every commit; sled's periodic flusher would only add contention.
            .flush_every_ms(None)
            // Larger segments raise sled's blob threshold (a quarter segment) above our node
            // sizes, so nodes stay in the main file; see chunk.rs.
            .segment_size(8 * 1024 * 1024);
        let db = open_when_unlocked(&config)?;
        let tree = db.open_tree("log")?;
        // The head is the last event of the last chunk: one lookup, whatever the log's size.
        let head = match tree.scan_prefix([keys::EVENT]).next_back() {
            Some(entry) => {
                let (key, value) = entry?;
                let first = writer::decode_offset(&key[1..], "event key")?;
                let count = chunk::parse(first, Bytes::copy_from_slice(&value))?.len() as u64;
                first + count.saturating_sub(1)
            }
            None => 0,
        };
        let durability = match sync {
            SyncMode::Fdatasync => Some(DurableFiles::open(dir)?),
            SyncMode::NoFsyncUnsafe => None,
        };
        info!(head, dir = %dir.display(), ?sync, "event log opened");

        let (head_tx, head_rx) = watch::channel(head);
        let tail = Arc::new(Tail::default());
        let (sender, receiver) = mpsc::channel(QUEUE_DEPTH);
        let writer = Writer {
            db: db.clone(),
            tree: tree.clone(),
            durability,
            head,
            head_tx,
            tail: tail.clone(),
        };
        let handle = thread::Builder::new()
            .name("ordo-log-writer".into())
            .spawn(move || writer.run(receiver))?;
        Ok(Arc::new(Self {
            db,
            tree,
            sender: RwLock::new(Some(sender)),
            head_rx,
            tail,
            writer: std::sync::Mutex::new(Some(handle)),
        }))
    }
}

/// How long `open` waits for another holder of the data dir's lock (e.g. a server in the same
/// process that is still finishing its shutdown) before giving up.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens sled, retrying while the directory is locked by a holder that is going away, and
/// saying plainly what is wrong if it is not.
fn open_when_unlocked(config: &sled::Config) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Err(sled::Error::Io(err))
                if err.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(sled::Error::Io(err)) if err.to_string().contains("could not acquire lock") => {
                return Err(StoreError::Io(std::io::Error::other(format!(
                    "the data dir is in use by another ordo-server (or another sled user): {err}"
                ))));
            }
            other => return Ok(other?),
        }
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

    fn read_raw(
        &self,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<RawEvent>, StoreError> {
        let head = self.head();
        let from = from.max(1);
        if from > head || max == 0 {
            return Ok(Vec::new());
        }
        if let Some(events) = self.tail.read(from, head, max, max_bytes) {
            return Ok(events);
        }
        let mut events = Vec::new();
        let mut bytes = 0;
        for (first, chunk) in chunk::read_chunks(&self.tree, from, head, max_bytes)? {
            for event in chunk::parse(first, chunk)? {
                if event.offset < from {
                    continue;
                }
                if event.offset > head || events.len() >= max || bytes >= max_bytes {
                    return Ok(events);
                }
                bytes += event.bytes.len();
                events.push(event);
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
        let from_version = from_version.max(1);
        let mut events = Vec::new();
        if from_version > to_version {
            return Ok(events);
        }
        let head = self.head();
        // The index entry holding `from_version` starts at or before it.
        let start = match self
            .tree
            .range(keys::stream_entry(stream_id, 0)..=keys::stream_entry(stream_id, from_version))
            .next_back()
        {
            Some(entry) => entry?.0.to_vec(),
            None => keys::stream_entry(stream_id, from_version),
        };
        for entry in self
            .tree
            .range(start..=keys::stream_entry(stream_id, to_version))
        {
            let (key, value) = entry?;
            let first = writer::decode_offset(&key[key.len() - 8..], "stream index key")?;
            for (i, offset) in chunk::unpack_offsets(&value)?.into_iter().enumerate() {
                let version = first + i as u64;
                if version < from_version || version > to_version || offset > head {
                    continue;
                }
                let Some(event) = self.read_raw(offset, 1, 1)?.into_iter().next() else {
                    return Err(writer::corrupt(
                        "stream index",
                        format!("offset {offset} missing"),
                    ));
                };
                events.push(event.decode()?);
            }
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

#[cfg(test)]
mod tests {
    use ordo_api::v1::{Event, event::Payload};

    use super::*;

    fn event(stream: &str, n: usize) -> Event {
        Event {
            id: format!("id-{n}"),
            r#type: "t".into(),
            stream_id: stream.into(),
            payload: Some(Payload::Data(vec![b'x'; 300])),
            ..Default::default()
        }
    }

    fn batch(events: Vec<Event>) -> AppendBatch {
        AppendBatch {
            events,
            expected_versions: Vec::new(),
            idempotency: None,
            index_ids: true,
            project: None,
        }
    }

    /// A batch larger than one chunk is split, and every read path sees across the seams; a
    /// reopen finds the head from the last chunk alone.
    #[tokio::test]
    async fn batches_span_chunks_and_reads_cross_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = SledLog::open(dir.path(), SyncMode::Fdatasync).expect("open");
        let events: Vec<Event> = (0..500)
            .map(|n| event(if n % 2 == 0 { "even" } else { "odd" }, n))
            .collect();
        log.append(batch(events)).await.expect("append");
        assert_eq!(log.head(), 500);
        let chunks = log.tree.scan_prefix([keys::EVENT]).count();
        assert!(
            chunks > 1,
            "500 x 300 B should need several chunks, got {chunks}"
        );

        for from in [1, 199, 200, 217, 499, 500] {
            let got = log.read(from, 1000, usize::MAX).expect("read");
            let offsets: Vec<u64> = got.iter().map(|e| e.offset).collect();
            assert_eq!(offsets, (from..=500).collect::<Vec<_>>(), "from {from}");
            assert_eq!(got[0].id, format!("id-{}", from - 1));
        }
        let odd = log.read_stream("odd", 100, 150).expect("read stream");
        let versions: Vec<u64> = odd.iter().map(|e| e.stream_version).collect();
        assert_eq!(versions, (100..=150).collect::<Vec<_>>());
        assert!(
            odd.iter()
                .all(|e| e.stream_id == "odd" && e.offset == e.stream_version * 2)
        );

        log.close().expect("close");
        drop(log);
        let reopened = SledLog::open(dir.path(), SyncMode::Fdatasync).expect("reopen");
        assert_eq!(reopened.head(), 500);
        let more = reopened
            .append(batch(vec![event("odd", 500)]))
            .await
            .expect("append");
        match more {
            crate::store::AppendOutcome::Appended { positions, .. } => {
                assert_eq!(positions[0].offset, 501);
                assert_eq!(positions[0].stream_version, 251);
            }
            other => panic!("unexpected {other:?}"),
        }
        let dup = reopened
            .append(batch(vec![event("odd", 7)]))
            .await
            .expect("dedupe");
        assert!(matches!(
            dup,
            crate::store::AppendOutcome::Deduplicated { .. }
        ));
    }
}
