//! The single writer thread and its group commit.
//!
//! Every append goes through one thread, which makes offsets gapless and version checks
//! race-free without locks. It takes whatever appends queued up while the previous sync ran,
//! stages them into one sled batch, applies it, flushes and fdatasyncs once, and only then
//! answers them all and moves the durable head. A lone append is synced at once (no timer);
//! under load, many appends share one sync.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    path::{Path, PathBuf},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use prost::Message;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::error;

use super::{
    AppendBatch, AppendOutcome, Position, StoreError, StoredResponse,
    chunk::{self, ChunkWriter, EventIdentity},
    keys,
    tail::{Tail, TailChunk},
};

/// Most appends folded into one commit; bounds the work done before anyone is answered.
const MAX_GROUP: usize = 1024;

pub(super) struct Job {
    pub batch: AppendBatch,
    pub reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

pub(super) struct Writer {
    pub db: sled::Db,
    pub tree: sled::Tree,
    /// Makes sled's files durable after every commit (None in the opt-in unsafe mode).
    pub durability: Option<DurableFiles>,
    pub head: u64,
    pub head_tx: watch::Sender<u64>,
    /// Recent chunks for live subscribers, updated before the head moves.
    pub tail: Arc<Tail>,
}

impl Writer {
    /// Runs until every sender is gone.
    pub fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut poisoned: Option<String> = None;
        while let Some(first) = rx.blocking_recv() {
            let mut jobs = vec![first];
            while jobs.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            if let Some(reason) = &poisoned {
                for job in jobs {
                    let _ = job.reply.send(Err(StoreError::Poisoned(reason.clone())));
                }
                continue;
            }
            if let Err(err) = self.commit(jobs) {
                // After a failed write or sync we cannot know what reached the disk: refuse
                // everything until a restart recovers from what is really there.
                error!(error = %err, "event log commit failed; refusing writes until restart");
                poisoned = Some(err.to_string());
            }
        }
        if let Err(err) = self.db.flush() {
            error!(error = %err, "final flush of the event log failed");
        }
    }

    fn commit(&mut self, jobs: Vec<Job>) -> Result<(), StoreError> {
        let mut group = Group::new(self.head);
        let mut replies = Vec::with_capacity(jobs.len());
        for job in jobs {
            let result = group.stage(&self.tree, job.batch);
            replies.push((job.reply, result));
        }
        if group.ops > 0 {
            if let Err(err) = self.persist(std::mem::take(&mut group.batch)) {
                for (reply, _) in replies {
                    let _ = reply.send(Err(StoreError::Poisoned(err.to_string())));
                }
                return Err(err);
            }
            for chunk in group.chunks {
                self.tail.push(chunk);
            }
            self.head = group.head;
            self.head_tx.send_replace(self.head);
        }
        for (reply, result) in replies {
            let _ = reply.send(result);
        }
        Ok(())
    }

    fn persist(&mut self, batch: sled::Batch) -> Result<(), StoreError> {
        self.tree.apply_batch(batch)?;
        self.db.flush()?;
        if let Some(files) = &mut self.durability {
            files.sync()?;
        }
        Ok(())
    }
}

/// sled's own flush only issues `sync_file_range`, which survives a process crash but not a
/// power loss, and it never syncs the files it writes for large nodes (`blobs/`). This syncs both.
pub(super) struct DurableFiles {
    data: File,
    blobs_dir: PathBuf,
    blobs_seen: Option<SystemTime>,
    /// Blob files already synced; sled never rewrites a blob file, it writes a new one.
    blobs_synced: HashSet<std::ffi::OsString>,
}

impl DurableFiles {
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        Ok(Self {
            data: File::open(dir.join("db"))?,
            blobs_dir: dir.join("blobs"),
            blobs_seen: None,
            blobs_synced: HashSet::new(),
        })
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.data.sync_data()?;
        // Blobs are rare (nodes over a quarter of a segment): one stat per commit notices them.
        let Ok(modified) = std::fs::metadata(&self.blobs_dir).and_then(|m| m.modified()) else {
            return Ok(());
        };
        if self.blobs_seen == Some(modified) {
            return Ok(());
        }
        let mut present = HashSet::new();
        for entry in std::fs::read_dir(&self.blobs_dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if !self.blobs_synced.contains(&name) && entry.file_type()?.is_file() {
                File::open(entry.path())?.sync_data()?;
            }
            present.insert(name);
        }
        File::open(&self.blobs_dir)?.sync_all()?;
        self.blobs_synced = present;
        self.blobs_seen = Some(modified);
        Ok(())
    }
}

/// The appends staged for one commit, with the state they changed, so that later appends in the
/// same group see earlier ones (versions, event ids, idempotency keys) before they hit sled.
struct Group {
    batch: sled::Batch,
    ops: usize,
    /// The head before this group: what sled can be read up to.
    durable_head: u64,
    head: u64,
    versions: HashMap<String, u64>,
    event_ids: HashMap<String, Position>,
    idempotency: HashMap<String, StoredResponse>,
    /// Every chunk staged, for the in-memory tail once durable.
    chunks: Vec<TailChunk>,
}

impl Group {
    fn new(head: u64) -> Self {
        Self {
            batch: sled::Batch::default(),
            ops: 0,
            durable_head: head,
            head,
            versions: HashMap::new(),
            event_ids: HashMap::new(),
            idempotency: HashMap::new(),
            chunks: Vec::new(),
        }
    }

    /// Validates one append against the log plus this group, and stages it if it passes.
    /// A rejected append stages nothing.
    fn stage(
        &mut self,
        tree: &sled::Tree,
        batch: AppendBatch,
    ) -> Result<AppendOutcome, StoreError> {
        if let Some(claim) = &batch.idempotency
            && let Some(stored) = self.claimed(tree, &claim.key)?
        {
            if stored.fingerprint == claim.fingerprint {
                return Ok(AppendOutcome::Replayed {
                    response: stored.response,
                });
            }
            return Err(StoreError::IdempotencyMismatch {
                key: claim.key.clone(),
            });
        }

        if batch.index_ids {
            let mut existing = Vec::new();
            for event in &batch.events {
                if let Some(position) = self.stored_position(tree, &event.id)? {
                    existing.push(position);
                }
            }
            if !existing.is_empty() {
                if existing.len() == batch.events.len() {
                    return Ok(AppendOutcome::Deduplicated {
                        positions: existing,
                    });
                }
                let first = &existing[0];
                return Err(StoreError::DuplicateEventId {
                    id: first.id.clone(),
                    offset: first.offset,
                });
            }
        }

        for (stream_id, expected) in &batch.expected_versions {
            let actual = self.version(tree, stream_id)?;
            if actual != *expected {
                return Err(StoreError::VersionConflict {
                    stream_id: stream_id.clone(),
                    expected: *expected,
                    actual,
                });
            }
        }

        let mut ops: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::with_capacity(8);
        // Per stream touched: (version before this batch, offsets of its events in this batch).
        let mut streams: HashMap<String, (u64, Vec<u64>)> = HashMap::new();
        let mut positions = Vec::with_capacity(batch.events.len());
        let mut batch_ids = HashSet::new();
        let now = unix_ms();
        let mut chunk = ChunkWriter::new(self.head + 1);
        let mut new_chunks = Vec::new();
        let mut offset = self.head;
        for mut event in batch.events {
            offset += 1;
            if batch.index_ids && !batch_ids.insert(event.id.clone()) {
                return Err(StoreError::DuplicateEventId {
                    id: event.id,
                    offset: 0,
                });
            }
            let version = match streams.get_mut(&event.stream_id) {
                Some((before, offsets)) => {
                    offsets.push(offset);
                    *before + offsets.len() as u64
                }
                None => {
                    let before = self.version(tree, &event.stream_id)?;
                    streams.insert(event.stream_id.clone(), (before, vec![offset]));
                    before + 1
                }
            };
            event.offset = offset;
            event.stream_version = version;
            if event.id.is_empty() {
                event.id = chunk::server_id(offset, now);
            }
            if chunk.is_full() {
                new_chunks.push(std::mem::replace(&mut chunk, ChunkWriter::new(offset)).finish());
            }
            chunk.push(&event);
            if batch.index_ids {
                ops.push((
                    keys::event_id(&event.id),
                    Some(encode_position(offset, version, &event.stream_id)),
                ));
            }
            positions.push(Position {
                id: event.id,
                offset,
                stream_id: event.stream_id,
                stream_version: version,
            });
        }
        if !chunk.is_empty() {
            new_chunks.push(chunk.finish());
        }
        let mut tail_chunks = Vec::with_capacity(new_chunks.len());
        for chunk in new_chunks {
            let first = chunk.first;
            let (events, bytes) = chunk.into_events()?;
            ops.push((keys::event(first).to_vec(), Some(bytes.to_vec())));
            tail_chunks.push(TailChunk::new(events, bytes.len()));
        }
        for (stream_id, (before, offsets)) in &streams {
            ops.push((
                keys::stream_entry(stream_id, before + 1),
                Some(chunk::pack_offsets(offsets)),
            ));
            let version = before + offsets.len() as u64;
            ops.push((
                keys::stream_version(stream_id),
                Some(version.to_be_bytes().to_vec()),
            ));
        }

        let projection = batch
            .project
            .map(|project| project(&positions))
            .unwrap_or_default();
        for record in projection.records {
            ops.push((keys::record(&record.key), record.value));
        }
        if let Some(claim) = &batch.idempotency {
            let now = unix_ms();
            let mut value = Vec::with_capacity(40 + projection.response.len());
            value.extend_from_slice(&claim.fingerprint);
            value.extend_from_slice(&now.to_be_bytes());
            value.extend_from_slice(&projection.response);
            ops.push((keys::idempotency(&claim.key), Some(value)));
            ops.push((keys::idempotency_time(now, &claim.key), Some(Vec::new())));
            self.idempotency.insert(
                claim.key.clone(),
                StoredResponse {
                    fingerprint: claim.fingerprint,
                    response: projection.response.clone(),
                },
            );
        }

        self.ops += ops.len();
        for (key, value) in ops {
            match value {
                Some(value) => self.batch.insert(key, value),
                None => self.batch.remove(key),
            }
        }
        self.head = offset;
        for (stream_id, (before, offsets)) in streams {
            self.versions
                .insert(stream_id, before + offsets.len() as u64);
        }
        if batch.index_ids {
            for position in &positions {
                self.event_ids.insert(position.id.clone(), position.clone());
            }
        }
        self.chunks.extend(tail_chunks);
        Ok(AppendOutcome::Appended {
            positions,
            response: projection.response,
        })
    }

    fn version(&self, tree: &sled::Tree, stream_id: &str) -> Result<u64, StoreError> {
        if let Some(version) = self.versions.get(stream_id) {
            return Ok(*version);
        }
        read_version(tree, stream_id)
    }

    fn claimed(&self, tree: &sled::Tree, key: &str) -> Result<Option<StoredResponse>, StoreError> {
        if let Some(found) = self.idempotency.get(key) {
            return Ok(Some(found.clone()));
        }
        read_idempotency(tree, key)
    }

    fn stored_position(&self, tree: &sled::Tree, id: &str) -> Result<Option<Position>, StoreError> {
        if let Some(position) = self.event_ids.get(id) {
            return Ok(Some(position.clone()));
        }
        // Server-assigned ids name their own offset: check that event instead of an index.
        if let Some(offset) = chunk::offset_in_id(id)
            && let Some(event) = chunk::read_one(tree, offset, self.durable_head)?
        {
            let stored = EventIdentity::decode(event.bytes.as_ref())
                .map_err(|e| corrupt("event", e.to_string()))?;
            if stored.id == id {
                return Ok(Some(Position {
                    id: stored.id,
                    offset,
                    stream_id: stored.stream_id,
                    stream_version: stored.stream_version,
                }));
            }
        }
        match tree.get(keys::event_id(id))? {
            Some(value) => decode_position(id, &value).map(Some),
            None => Ok(None),
        }
    }
}

/// The event id index value: offset, stream version, stream id.
fn encode_position(offset: u64, version: u64, stream_id: &str) -> Vec<u8> {
    let mut value = Vec::with_capacity(16 + stream_id.len());
    value.extend_from_slice(&offset.to_be_bytes());
    value.extend_from_slice(&version.to_be_bytes());
    value.extend_from_slice(stream_id.as_bytes());
    value
}

fn decode_position(id: &str, value: &[u8]) -> Result<Position, StoreError> {
    if value.len() < 16 {
        return Err(corrupt("event id index", format!("{} bytes", value.len())));
    }
    Ok(Position {
        id: id.to_string(),
        offset: decode_offset(&value[..8], "event id index")?,
        stream_version: decode_offset(&value[8..16], "event id index")?,
        stream_id: String::from_utf8_lossy(&value[16..]).into_owned(),
    })
}

pub(super) fn read_version(tree: &sled::Tree, stream_id: &str) -> Result<u64, StoreError> {
    match tree.get(keys::stream_version(stream_id))? {
        Some(bytes) => decode_offset(&bytes, "stream version"),
        None => Ok(0),
    }
}

pub(super) fn read_idempotency(
    tree: &sled::Tree,
    key: &str,
) -> Result<Option<StoredResponse>, StoreError> {
    let Some(value) = tree.get(keys::idempotency(key))? else {
        return Ok(None);
    };
    if value.len() < 40 {
        return Err(corrupt(
            "idempotency record",
            format!("{} bytes", value.len()),
        ));
    }
    let mut fingerprint = [0u8; 32];
    fingerprint.copy_from_slice(&value[..32]);
    Ok(Some(StoredResponse {
        fingerprint,
        response: value[40..].to_vec(),
    }))
}

pub(super) fn decode_offset(bytes: &[u8], what: &str) -> Result<u64, StoreError> {
    keys::decode_u64(bytes)
        .ok_or_else(|| corrupt(what, format!("{} bytes, expected 8", bytes.len())))
}

pub(super) fn corrupt(what: &str, detail: String) -> StoreError {
    StoreError::Corrupt {
        what: what.to_string(),
        detail,
    }
}

pub(super) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
