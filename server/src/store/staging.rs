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
    /// Every chunk staged, for the in-memory tail once durable.
    pub chunks: Vec<TailChunk>,
}

impl Group {
    pub fn new(head: u64) -> Self {
        Self {
            ops: Vec::new(),
            bytes: 0,
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
    pub fn stage(
        &mut self,
        store: &Stores,
        batch: AppendBatch,
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

        let mut ops: Vec<Op> = Vec::with_capacity(8);
        // Per stream touched: (version before this batch, offsets of its events in this batch).
        let mut streams: HashMap<String, (u64, Vec<u64>)> = HashMap::new();
        let mut positions = Vec::with_capacity(batch.events.len());
        let mut batch_ids = HashSet::new();
        let now = unix_ms();
        let mut chunk = ChunkWriter::new(self.head + 1);
        let mut bytes = 0;
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
                    let before = self.version(store, &event.stream_id)?;
                    streams.insert(event.stream_id.clone(), (before, vec![offset]));
                    before + 1
                }
            };
            event.offset = offset;
            event.stream_version = version;
            if event.id.is_empty() {
                event.id = codec::server_id(offset, now);
            }
            if chunk.is_full() {
                new_chunks.push(std::mem::replace(&mut chunk, ChunkWriter::new(offset)).finish());
            }
            chunk.push(&event);
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
        if !chunk.is_empty() {
            new_chunks.push(chunk.finish());
        }
        let mut tail_chunks = Vec::with_capacity(new_chunks.len());
        for chunk in new_chunks {
            let first = chunk.first;
            let (events, chunk_bytes) = chunk.into_events()?;
            bytes += chunk_bytes.len();
            tail_chunks.push(TailChunk::new(events, chunk_bytes.len()));
            ops.push(Op {
                key: keys::event(first).to_vec(),
                value: Some(chunk_bytes),
            });
        }
        for (stream_id, (before, offsets)) in &streams {
            ops.push(put(
                keys::stream_entry(stream_id, before + 1),
                codec::pack_offsets(offsets),
            ));
            let version = before + offsets.len() as u64;
            ops.push(put(
                keys::stream_version(stream_id),
                version.to_be_bytes().to_vec(),
            ));
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
            let now = unix_ms();
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
        self.bytes += bytes;
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
