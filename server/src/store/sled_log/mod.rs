//! [`EventLog`] on sled 0.34 behind a write-ahead journal: one writer thread that makes
//! appends durable in the journal, one applier thread that copies them into sled, and reads
//! that see both (`view.rs`, `reader.rs`). Opening it (recovery, threads) is `open.rs`.

mod open;

pub(super) use open::sled_config;

use std::{
    io::Write,
    ops::Bound,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    thread,
    time::Duration,
};

use ordo_api::v1::Event;
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    AppendBatch, AppendFuture, AppendOutcome, BackupSummary, CompactionReport, DeleteFuture,
    EnqueueFuture, EventLog, LogInfo, OutcomesFuture, Page, Projection, Record, RecordWrite,
    RetentionRules, StoreError, StoredResponse,
    applier::DEFAULT_FLUSH_EVERY,
    backup,
    bodies::Bodies,
    codec::{self, decode_offset},
    compaction::Compactor,
    first::FirstOffset,
    journal::{self, Sealed},
    keys,
    progress::Progress,
    reader::Reader,
    staging,
    tombstones::{self, Tombstone, Tombstones},
    view::{Direction, View},
    writer::Job,
};

/// Appends that may wait for the writer before `append` itself waits: the queue's bound.
const QUEUE_DEPTH: usize = 4096;
/// The one sled tree everything lives in.
pub(super) const TREE: &str = "log";
/// Longest `expire_idempotency` waits for the applier before sweeping what sled has.
const APPLY_WAIT: Duration = Duration::from_secs(5);
/// Times `delete_stream` retries when an append to the stream races it.
const DELETE_ATTEMPTS: usize = 5;

/// How an acknowledged append is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// fdatasync of the journal before every ack (group-committed): survives power loss.
    #[default]
    Fdatasync,
    /// No fsync: the journal write is in the page cache when acknowledged, which survives a
    /// process crash, NOT a power loss or kernel crash. Opt-in, for those who trade that risk
    /// for throughput.
    NoFsyncUnsafe,
}

/// How the log is opened.
#[derive(Debug, Clone, Copy)]
pub struct LogOptions {
    pub sync: SyncMode,
    /// Largest journal segment file.
    pub journal_segment_bytes: u64,
    /// How often sled is flushed: about the most of the journal a restart replays into sled.
    pub sled_flush_interval: Duration,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            sync: SyncMode::Fdatasync,
            journal_segment_bytes: journal::DEFAULT_SEGMENT_BYTES,
            sled_flush_interval: DEFAULT_FLUSH_EVERY,
        }
    }
}

/// The sled-backed event log.
pub struct SledLog {
    db: sled::Db,
    dir: PathBuf,
    view: View,
    reader: Reader,
    sender: RwLock<Option<mpsc::Sender<Job>>>,
    head_rx: watch::Receiver<u64>,
    threads: std::sync::Mutex<Vec<thread::JoinHandle<()>>>,
    first: Arc<FirstOffset>,
    tombstones: Arc<Tombstones>,
    progress: Arc<Progress>,
    sealed: Sealed,
    bodies: Arc<Bodies>,
    compactor: Compactor,
    /// Held by whatever writes to sled outside the journal (compaction, idempotency expiry)
    /// and by backups, which must see every change to sled in the journal while they run.
    maintenance: Mutex<()>,
}

impl SledLog {
    /// Opens (or creates) the log in `dir` with default options.
    pub fn open(dir: &Path, sync: SyncMode) -> Result<Arc<Self>, StoreError> {
        Self::open_with(
            dir,
            LogOptions {
                sync,
                ..LogOptions::default()
            },
        )
    }

    /// Stores batches another log (JetStream) already accepted, in its order, with the offsets
    /// it gave them (see `staging::Mode::Replicated`). Resolves to each batch's outcome; a
    /// batch whose first offset is not this log's next one fails with
    /// [`StoreError::Corrupt`].
    pub fn replicate(&self, batches: Vec<AppendBatch>) -> OutcomesFuture {
        let sender = self.sender.read().ok().and_then(|guard| guard.clone());
        Box::pin(async move {
            let sender = sender.ok_or(StoreError::Closed)?;
            let (reply, rx) = oneshot::channel();
            sender
                .send(Job::Replicated { batches, reply })
                .await
                .map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)
        })
    }

    /// Where the event with this client-chosen id was stored, if an append indexed it.
    pub fn position_of(&self, id: &str) -> Result<Option<super::Position>, StoreError> {
        match self.view.get(&keys::event_id(id))? {
            Some(value) => codec::decode_position(id, &value).map(Some),
            None => Ok(None),
        }
    }

    fn maintenance(&self) -> std::sync::MutexGuard<'_, ()> {
        // The lock guards no data: a panic while it was held leaves nothing inconsistent.
        self.maintenance
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Queues one batch on the writer and waits for its outcome.
async fn send_batch(
    sender: Option<mpsc::Sender<Job>>,
    batch: AppendBatch,
) -> Result<AppendOutcome, StoreError> {
    let sender = sender.ok_or(StoreError::Closed)?;
    let (reply, rx) = oneshot::channel();
    sender
        .send(Job::One { batch, reply })
        .await
        .map_err(|_| StoreError::Closed)?;
    rx.await.map_err(|_| StoreError::Closed)?
}

/// Bytes the files under `dir` take on disk (allocated blocks, so sparse or preallocated files
/// count what they really use).
fn disk_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            // Removed since it was listed (a released journal segment).
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        if meta.is_dir() {
            total += disk_bytes(&entry.path())?;
        } else {
            total += meta.blocks() * 512;
        }
    }
    Ok(total)
}

/// The smallest key above every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Bound<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Bound::Excluded(end);
        }
    }
    Bound::Unbounded
}

impl EventLog for SledLog {
    fn append(&self, batch: AppendBatch) -> AppendFuture {
        let sender = self.sender.read().ok().and_then(|guard| guard.clone());
        Box::pin(send_batch(sender, batch))
    }

    fn enqueue_many(&self, batches: Vec<AppendBatch>) -> EnqueueFuture {
        let sender = self.sender.read().ok().and_then(|guard| guard.clone());
        Box::pin(async move {
            let sender = sender.ok_or(StoreError::Closed)?;
            let (reply, rx) = oneshot::channel();
            sender
                .send(Job::Many { batches, reply })
                .await
                .map_err(|_| StoreError::Closed)?;
            let outcomes: OutcomesFuture =
                Box::pin(async move { rx.await.map_err(|_| StoreError::Closed) });
            Ok(outcomes)
        })
    }

    fn is_deleted(&self, stream_id: &str, stream_version: u64) -> bool {
        self.tombstones
            .get(stream_id)
            .is_some_and(|t| stream_version <= t.version)
    }

    fn read_page(&self, from: u64, max: usize, max_bytes: usize) -> Result<Page, StoreError> {
        let from = from.max(1);
        self.first.check(from)?;
        let head = self.head();
        if from > head || max == 0 {
            return Ok(Page {
                events: Vec::new(),
                next: from,
            });
        }
        // Taken before reading: see `Tombstones::snapshot`.
        let hidden = self.tombstones.snapshot();
        let raw = match self.reader.read_raw(from, head, max, max_bytes) {
            Ok(raw) => raw,
            Err(err) => {
                // Retention may have deleted the segment a chunk was read from.
                self.first.check(from)?;
                return Err(err);
            }
        };
        // Retention may have removed the range while it was read: it raises the first offset
        // before it deletes anything, so a read that started below it fails here, not with a
        // gap.
        self.first.check(from)?;
        match raw.first() {
            Some(event) if event.offset == from => {}
            other => {
                return Err(codec::corrupt(
                    "event log",
                    format!(
                        "reading from offset {from} (head {head}) found {:?}",
                        other.map(|e| e.offset)
                    ),
                ));
            }
        }
        let next = raw.last().map_or(from, |e| e.offset + 1);
        let mut events = Vec::with_capacity(raw.len());
        for event in raw {
            if !tombstones::hides(hidden.as_ref(), &event)? {
                events.push(event);
            }
        }
        Ok(Page { events, next })
    }

    fn first_offset(&self) -> u64 {
        self.first.get()
    }

    fn watch_first(&self) -> watch::Receiver<u64> {
        self.first.watch()
    }

    fn read_stream(
        &self,
        stream_id: &str,
        from_version: u64,
        to_version: u64,
    ) -> Result<Vec<Event>, StoreError> {
        let deleted = self.tombstones.get(stream_id).map_or(0, |t| t.version);
        let from_version = from_version.max(1).max(deleted + 1);
        let mut events = Vec::new();
        if from_version > to_version {
            return Ok(events);
        }
        let head = self.head();
        // The index entry holding `from_version` starts at or before it.
        let lowest = keys::stream_entry(stream_id, 0);
        let wanted = keys::stream_entry(stream_id, from_version);
        let start = match self
            .view
            .range(
                Bound::Included(&lowest),
                Bound::Included(&wanted),
                Direction::Backward,
                1,
            )?
            .pop()
        {
            Some((key, _)) => key,
            None => wanted,
        };
        let end = keys::stream_entry(stream_id, to_version);
        let entries = self.view.range(
            Bound::Included(&start),
            Bound::Included(&end),
            Direction::Forward,
            usize::MAX,
        )?;
        for (key, value) in entries {
            let first = decode_offset(&key[key.len() - 8..], "stream index key")?;
            for (i, offset) in codec::unpack_offsets(&value)?.into_iter().enumerate() {
                let version = first + i as u64;
                if version < from_version
                    || version > to_version
                    || offset > head
                    || offset < self.first.get()
                {
                    continue;
                }
                let event = match self.reader.read_one(offset, head)? {
                    Some(event) if !event.is_removed() => event,
                    // Removed by a compaction running meanwhile: a deleted stream, skipped.
                    Some(_) => continue,
                    // Trimmed by retention meanwhile: dropped below, with the rest under it.
                    None if offset < self.first.get() => continue,
                    None => {
                        return Err(codec::corrupt(
                            "stream index",
                            format!("offset {offset} missing"),
                        ));
                    }
                };
                events.push(event.decode()?);
            }
        }
        // Retention removes a prefix of the log: what is left of the stream is contiguous.
        let first = self.first.get();
        events.retain(|e| e.offset >= first);
        Ok(events)
    }

    fn stream_version(&self, stream_id: &str) -> Result<u64, StoreError> {
        staging::read_version(&self.view, stream_id)
    }

    fn head(&self) -> u64 {
        *self.head_rx.borrow()
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.head_rx.clone()
    }

    fn get_record(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.view.get(&keys::record(key))?.map(|v| v.to_vec()))
    }

    fn scan_records(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let full_prefix = keys::record(prefix);
        let after = after.map(keys::record);
        let start = match &after {
            Some(after) => Bound::Excluded(after.as_slice()),
            None => Bound::Included(full_prefix.as_slice()),
        };
        let end = prefix_end(&full_prefix);
        let entries = self.view.range(
            start,
            end.as_ref().map(Vec::as_slice),
            Direction::Forward,
            limit,
        )?;
        Ok(entries
            .into_iter()
            .map(|(key, value)| (key[1..].to_vec(), value.to_vec()))
            .collect())
    }

    fn idempotent_response(&self, key: &str) -> Result<Option<StoredResponse>, StoreError> {
        staging::read_idempotency(&self.view, key)
    }

    fn expire_idempotency(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        // The sweep reads sled only: first let the applier bring in every claim acknowledged
        // so far (a copy rebuilt from JetStream at start holds them all in the journal).
        let committed = self.progress.committed_lsn();
        let deadline = std::time::Instant::now() + APPLY_WAIT;
        while self.progress.applied().lsn < committed && std::time::Instant::now() < deadline {
            thread::sleep(Duration::from_millis(2));
        }
        // Straight to sled, outside the journal: an expiry lost in a crash is simply redone.
        let _maintenance = self.maintenance();
        let tree = &self.view.tree;
        let mut removed = 0;
        let start = [keys::IDEMPOTENCY_TIME];
        let end = keys::idempotency_time(cutoff_ms, "");
        for entry in tree.range(start.to_vec()..end) {
            let (key, _) = entry?;
            let claim = String::from_utf8_lossy(&key[9..]).into_owned();
            tree.remove(keys::idempotency(&claim))?;
            tree.remove(key)?;
            removed += 1;
        }
        Ok(removed)
    }

    fn delete_stream(&self, stream_id: &str) -> DeleteFuture {
        let sender = self.sender.read().ok().and_then(|guard| guard.clone());
        let view = self.view.clone();
        let head = self.head_rx.clone();
        let tombstones = self.tombstones.clone();
        let stream_id = stream_id.to_string();
        Box::pin(async move {
            let mut conflict = None;
            for _ in 0..DELETE_ATTEMPTS {
                let version = staging::read_version(&view, &stream_id)?;
                if version == 0 {
                    return Err(StoreError::UnknownStream { stream_id });
                }
                if let Some(existing) = tombstones.get(&stream_id)
                    && existing.version >= version
                {
                    return Ok(existing);
                }
                // Read after the version: every event up to it lies at or below this head.
                let tombstone = Tombstone {
                    version,
                    through_offset: *head.borrow(),
                };
                let record = RecordWrite {
                    key: tombstones::record_key(&stream_id),
                    value: Some(tombstone.encode()),
                };
                let batch = AppendBatch {
                    events: Vec::new(),
                    // Refused if an append to the stream got in first: then read again.
                    expected_versions: vec![(stream_id.clone(), version)],
                    idempotency: None,
                    index_ids: false,
                    project: Some(Box::new(move |_| Projection {
                        records: vec![record],
                        response: Vec::new(),
                    })),
                };
                match send_batch(sender.clone(), batch).await {
                    Ok(_) => {
                        tombstones.insert(&stream_id, tombstone);
                        return Ok(tombstone);
                    }
                    Err(err @ StoreError::VersionConflict { .. }) => conflict = Some(err),
                    Err(err) => return Err(err),
                }
            }
            // Appends kept landing on the stream: the caller sees ABORTED and retries.
            Err(conflict.unwrap_or(StoreError::Closed))
        })
    }

    fn compact(&self, rules: &RetentionRules) -> Result<CompactionReport, StoreError> {
        let _maintenance = self.maintenance();
        self.compactor.run(rules, crate::clock::now_ms())
    }

    fn backup(&self, out: &mut dyn Write) -> Result<BackupSummary, StoreError> {
        let _maintenance = self.maintenance();
        backup::write(
            backup::Source {
                tree: &self.view.tree,
                sealed: &self.sealed,
                progress: &self.progress,
                first: &self.first,
                bodies: &self.bodies,
            },
            out,
        )
    }

    fn info(&self) -> Result<LogInfo, StoreError> {
        Ok(LogInfo {
            first_offset: self.first.get(),
            head: self.head(),
            disk_bytes: disk_bytes(&self.dir)?,
            journal_bytes: disk_bytes(&self.dir.join("journal"))?,
            pending_deleted_streams: self.tombstones.snapshot().map_or(0, |t| t.len() as u64),
        })
    }

    fn close(&self) -> Result<(), StoreError> {
        if let Ok(mut sender) = self.sender.write() {
            sender.take();
        }
        let threads = self
            .threads
            .lock()
            .map(|mut threads| std::mem::take(&mut *threads))
            .unwrap_or_default();
        for handle in threads {
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
    use crate::store::JournalError;

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

        // Closing waits for the applier: sled then has every chunk.
        log.close().expect("close");
        let chunks = log.view.tree.scan_prefix([keys::EVENT]).count();
        assert!(
            chunks > 1,
            "500 x 300 B should need several chunks, got {chunks}"
        );
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

    /// The backup's second half, the journal frames replayed over the dump, taken from the very
    /// first frame (sled flushes only hourly here, so the journal still holds them all): a
    /// restore of dump + frames gives the same log, and a frame the journal no longer has is
    /// an error, not a silently shorter backup.
    #[tokio::test]
    async fn backups_replay_journal_frames_over_the_dump() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = SledLog::open_with(
            dir.path(),
            LogOptions {
                sled_flush_interval: Duration::from_secs(3600),
                ..LogOptions::default()
            },
        )
        .expect("open");
        for n in 0..3 {
            let events = (0..10).map(|i| event("s", n * 10 + i)).collect();
            log.append(batch(events)).await.expect("append");
        }
        let target = log.progress.committed_lsn();
        assert_eq!(target, 3);
        // sled has them all, so the dump does too, and the frames replay over it.
        while log.progress.applied().lsn < target {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let source = backup::Source {
            tree: &log.view.tree,
            sealed: &log.sealed,
            progress: &log.progress,
            first: &log.first,
            bodies: &log.bodies,
        };
        let mut out = Vec::new();
        let summary = backup::write_held(&source, &mut out, target, 0).expect("backup");
        assert_eq!((summary.first_offset, summary.head), (1, 30));
        let missing = log.sealed.read_frames(0, target + 5, |_, _| Ok(()));
        assert!(
            matches!(missing, Err(JournalError::Missing { from: 4, to: 8, .. })),
            "frames past the journal's end are an error: {missing:?}"
        );

        let file = dir.path().join("b.ordo");
        std::fs::write(&file, &out).expect("write");
        let restored_dir = dir.path().join("restored");
        let done = backup::restore(&file, &restored_dir).expect("restore");
        assert_eq!(done.head, 30);
        assert_eq!(
            done.frames, 4,
            "one dump frame plus the three journal frames"
        );
        let restored = SledLog::open(&restored_dir, SyncMode::Fdatasync).expect("reopen");
        let got = restored.read(1, 100, usize::MAX).expect("read");
        assert_eq!(got, log.read(1, 100, usize::MAX).expect("read"));
    }
}
