//! Staging one group commit: validating each append against the log as acknowledged so far
//! (plus the appends staged before it in the same group) and turning it into writes.
//!
//! Later appends in a group must see earlier ones (stream versions, event ids, idempotency
//! keys) before any of them is durable, so the group keeps what it changed in its own maps.

use std::{
    collections::{HashMap, HashSet},
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use prost::Message;

use super::{
    AppendBatch, AppendOutcome, Position, StoreError, StoredResponse,
    codec::{self, ChunkWriter, EventIdentity},
    journal::Op,
    keys,
    reader::Reader,
    tail::TailChunk,
    view::View,
};

/// Whether a batch is a new append or a copy of one another log already accepted.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Validated (idempotency, event ids, expected versions); offsets assigned here.
    Append,
    /// Already accepted by the log of record: every event carries its offset, which must be
    /// the next one here. Nothing is refused: an idempotency key or event id seen before keeps
    /// its first owner (as the log of record answered), and the events are stored anyway so
    /// that offsets stay the same as there.
    Replicated,
}

/// What staging reads: keys (pending writes included) and events.
pub struct Stores {
    pub view: View,
    pub reader: Reader,
}

/// The appends staged for one commit, with the state they changed, so that later appends in the
/// same group see earlier ones (versions, event ids, idempotency keys) before they hit sled.
pub struct Group {
    /// Every write of the group, in order: one journal frame.
    pub ops: Vec<Op>,
    /// Event bytes staged, to bound a group's size.
    pub bytes: usize,
    /// The head before this group: what can be read up to.
    durable_head: u64,
    pub head: u64,
    versions: HashMap<String, u64>,
    event_ids: HashMap<String, Position>,
    idempotency: HashMap<String, StoredResponse>,
    /// The events of every append in the group share chunks: one sled key per 64 KiB, not one
    /// per append, which is most of what sled costs per event.
    chunk: ChunkWriter,
    /// Per stream: the first version this group writes and the offsets of its events (one
    /// stream index entry per stream per group).
    streams: HashMap<String, (u64, Vec<u64>)>,
    /// Every chunk staged, for the in-memory tail once durable.
    pub chunks: Vec<TailChunk>,
}

impl Group {
    /// A group starting at `head`, given the stream versions the writer already knows (see
    /// [`Group::take_versions`]).
    pub fn new(head: u64, versions: HashMap<String, u64>) -> Self {
        Self {
            ops: Vec::new(),
            bytes: 0,
            durable_head: head,
            head,
            versions,
            event_ids: HashMap::new(),
            idempotency: HashMap::new(),
            chunk: ChunkWriter::new(head + 1),
            streams: HashMap::new(),
            chunks: Vec::new(),
        }
    }

    /// The stream versions as this group leaves them, for the next group. The writer is the
    /// only one that changes versions, so what it remembers is the truth: hot streams are then
    /// never looked up in sled (whose reads also run sled's epoch garbage collection) on the
    /// commit path.
    pub fn take_versions(&mut self) -> HashMap<String, u64> {
        std::mem::take(&mut self.versions)
    }

    /// Closes the group: its last chunk and its stream index entries become writes.
    pub fn seal(&mut self) -> Result<(), StoreError> {
        self.close_chunk(self.head + 1)?;
        for (stream_id, (first, offsets)) in std::mem::take(&mut self.streams) {
            self.ops.push(put(
                keys::stream_entry(&stream_id, first),
                codec::pack_offsets(&offsets),
            ));
            let version = first + offsets.len() as u64 - 1;
            self.ops.push(put(
                keys::stream_version(&stream_id),
                version.to_be_bytes().to_vec(),
            ));
        }
        Ok(())
    }

    /// Writes the open chunk (if any) and starts the next at offset `next`.
    fn close_chunk(&mut self, next: u64) -> Result<(), StoreError> {
        let chunk = std::mem::replace(&mut self.chunk, ChunkWriter::new(next));
        if chunk.is_empty() {
            return Ok(());
        }
        let chunk = chunk.finish();
        let first = chunk.first;
        let (events, bytes) = chunk.into_events()?;
        self.bytes += bytes.len();
        self.chunks.push(TailChunk::new(events, bytes.len()));
        self.ops.push(Op {
            key: keys::event(first).to_vec(),
            value: Some(bytes),
        });
        Ok(())
    }

    /// Validates one append against the log plus this group, and stages it if it passes.
    /// A rejected append stages nothing.
    pub fn stage(
        &mut self,
        store: &Stores,
        batch: AppendBatch,
        mode: Mode,
    ) -> Result<AppendOutcome, StoreError> {
        if mode == Mode::Replicated {
            return self.stage_replicated(store, batch);
        }
        self.stage_at(store, batch, unix_ms())
    }

    /// [`Mode::Append`] with `now` as the time ids and idempotency claims are stamped with.
    fn stage_at(
        &mut self,
        store: &Stores,
        batch: AppendBatch,
        now: u64,
    ) -> Result<AppendOutcome, StoreError> {
        if let Some(claim) = &batch.idempotency
            && let Some(stored) = self.claimed(store, &claim.key)?
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
                if let Some(position) = self.stored_position(store, &event.id)? {
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
            let actual = self.version(store, stream_id)?;
            if actual != *expected {
                return Err(StoreError::VersionConflict {
                    stream_id: stream_id.clone(),
                    expected: *expected,
                    actual,
                });
            }
        }

        if batch.index_ids {
            let mut batch_ids = HashSet::new();
            if let Some(event) = batch
                .events
                .iter()
                .find(|e| !batch_ids.insert(e.id.as_str()))
            {
                return Err(StoreError::DuplicateEventId {
                    id: event.id.clone(),
                    offset: 0,
                });
            }
        }
        // Every read that can fail comes before the first write to the group's state, so a
        // rejected append stages nothing.
        let mut before: HashMap<String, u64> = HashMap::new();
        for event in &batch.events {
            if !before.contains_key(&event.stream_id) {
                let version = self.version(store, &event.stream_id)?;
                before.insert(event.stream_id.clone(), version);
            }
        }

        let mut ops: Vec<Op> = Vec::with_capacity(4);
        let mut positions = Vec::with_capacity(batch.events.len());
        let mut offset = self.head;
        for mut event in batch.events {
            offset += 1;
            let version = before.get(&event.stream_id).copied().unwrap_or(0) + 1;
            before.insert(event.stream_id.clone(), version);
            match self.streams.get_mut(&event.stream_id) {
                Some((_, offsets)) => offsets.push(offset),
                None => {
                    self.streams
                        .insert(event.stream_id.clone(), (version, vec![offset]));
                }
            }
            event.offset = offset;
            event.stream_version = version;
            if event.id.is_empty() {
                event.id = codec::server_id(offset, now);
            }
            if self.chunk.is_full() {
                self.close_chunk(offset)?;
            }
            self.chunk.push(&event);
            if batch.index_ids {
                ops.push(put(
                    keys::event_id(&event.id),
                    codec::encode_position(offset, version, &event.stream_id),
                ));
            }
            positions.push(Position {
                id: event.id,
                offset,
                stream_id: event.stream_id,
                stream_version: version,
            });
        }

        let projection = batch
            .project
            .map(|project| project(&positions))
            .unwrap_or_default();
        for record in projection.records {
            ops.push(Op {
                key: keys::record(&record.key),
                value: record.value.map(Bytes::from),
            });
        }
        if let Some(claim) = &batch.idempotency {
            ops.push(put(
                keys::idempotency(&claim.key),
                codec::encode_idempotency(&claim.fingerprint, now, &projection.response),
            ));
            ops.push(put(keys::idempotency_time(now, &claim.key), Vec::new()));
            self.idempotency.insert(
                claim.key.clone(),
                StoredResponse {
                    fingerprint: claim.fingerprint,
                    response: projection.response.clone(),
                },
            );
        }

        self.ops.extend(ops);
        self.head = offset;
        self.versions.extend(before);
        if batch.index_ids {
            for position in &positions {
                self.event_ids.insert(position.id.clone(), position.clone());
            }
        }
        Ok(AppendOutcome::Appended {
            positions,
            response: projection.response,
        })
    }

    /// [`Mode::Replicated`]: the events' offsets must continue the log; what the checks of an
    /// append would refuse is stored without its index entry instead (the first owner keeps
    /// it), since the log of record already stored it.
    fn stage_replicated(
        &mut self,
        store: &Stores,
        mut batch: AppendBatch,
    ) -> Result<AppendOutcome, StoreError> {
        for (i, event) in batch.events.iter().enumerate() {
            let next = self.head + 1 + i as u64;
            if event.offset != next {
                return Err(codec::corrupt(
                    "replicated event",
                    format!("offset {} arrived where {next} was expected", event.offset),
                ));
            }
        }
        let claim = match batch.idempotency.take() {
            Some(claim) if self.claimed(store, &claim.key)?.is_none() => Some(claim),
            _ => None,
        };
        let mut fresh_ids = batch.index_ids;
        if batch.index_ids {
            for event in &batch.events {
                if self.stored_position(store, &event.id)?.is_some() {
                    fresh_ids = false;
                }
            }
        }
        for event in &mut batch.events {
            // Staged below as a fresh append would be: the offset is assigned again (to the
            // same value, checked above) and the version counted here.
            event.offset = 0;
        }
        batch.idempotency = claim;
        batch.index_ids = fresh_ids;
        batch.expected_versions.clear();
        // Claims are stamped with the append's own time, not with when this copy applied it,
        // so that idempotency keys expire at the same moment on every copy.
        let accepted = batch
            .events
            .first()
            .and_then(|event| event.time)
            .and_then(|time| u64::try_from(time.seconds).ok().map(|s| (s, time.nanos)))
            .map(|(seconds, nanos)| seconds * 1000 + u64::from(nanos.unsigned_abs()) / 1_000_000)
            .unwrap_or_else(unix_ms);
        self.stage_at(store, batch, accepted)
    }

    fn version(&self, store: &Stores, stream_id: &str) -> Result<u64, StoreError> {
        if let Some(version) = self.versions.get(stream_id) {
            return Ok(*version);
        }
        read_version(&store.view, stream_id)
    }

    fn claimed(&self, store: &Stores, key: &str) -> Result<Option<StoredResponse>, StoreError> {
        if let Some(found) = self.idempotency.get(key) {
            return Ok(Some(found.clone()));
        }
        read_idempotency(&store.view, key)
    }

    fn stored_position(&self, store: &Stores, id: &str) -> Result<Option<Position>, StoreError> {
        if let Some(position) = self.event_ids.get(id) {
            return Ok(Some(position.clone()));
        }
        // Server-assigned ids name their own offset: check that event instead of an index.
        if let Some(offset) = codec::offset_in_id(id)
            && let Some(event) = store.reader.read_one(offset, self.durable_head)?
        {
            let stored = EventIdentity::decode(event.bytes.as_ref())
                .map_err(|e| codec::corrupt("event", e.to_string()))?;
            if stored.id == id {
                return Ok(Some(Position {
                    id: stored.id,
                    offset,
                    stream_id: stored.stream_id,
                    stream_version: stored.stream_version,
                }));
            }
        }
        match store.view.get(&keys::event_id(id))? {
            Some(value) => codec::decode_position(id, &value).map(Some),
            None => Ok(None),
        }
    }
}

fn put(key: Vec<u8>, value: Vec<u8>) -> Op {
    Op {
        key,
        value: Some(Bytes::from(value)),
    }
}

pub fn read_version(view: &View, stream_id: &str) -> Result<u64, StoreError> {
    match view.get(&keys::stream_version(stream_id))? {
        Some(bytes) => codec::decode_offset(&bytes, "stream version"),
        None => Ok(0),
    }
}

pub fn read_idempotency(view: &View, key: &str) -> Result<Option<StoredResponse>, StoreError> {
    match view.get(&keys::idempotency(key))? {
        Some(value) => codec::decode_idempotency(&value).map(Some),
        None => Ok(None),
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
