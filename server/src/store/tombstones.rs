//! Deleted streams: the tombstones that hide a stream's events from every read until compaction
//! has removed them from storage.
//!
//! A tombstone says "every event of stream S up to version V is deleted". It is written through
//! the journal like any record (durable, ordered with the appends around it), kept in memory for
//! the read paths, and dropped, from memory and sled, by the compaction that removed the events
//! (`compaction.rs`). Versions are never reused: the stream's next event is V + 1 and is
//! visible.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use super::{
    StoreError,
    codec::{EventKey, RawEvent, decode_offset},
    keys,
};

/// The reserved corner of the record space tombstones live in: callers' record keys never
/// start with 0x00.
const RECORD_PREFIX: &[u8] = b"\x00tombstone/";

/// One deleted stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tombstone {
    /// Every event of the stream with `stream_version <= version` is deleted.
    pub version: u64,
    /// The head of the log when the stream was deleted: its deleted events all lie at or below
    /// it, so compaction can remove them once sled holds the log up to here.
    pub through_offset: u64,
}

impl Tombstone {
    pub fn encode(&self) -> Vec<u8> {
        let mut value = Vec::with_capacity(16);
        value.extend_from_slice(&self.version.to_be_bytes());
        value.extend_from_slice(&self.through_offset.to_be_bytes());
        value
    }

    pub fn decode(value: &[u8]) -> Result<Self, StoreError> {
        if value.len() != 16 {
            return Err(super::codec::corrupt(
                "tombstone",
                format!("{} bytes, expected 16", value.len()),
            ));
        }
        Ok(Self {
            version: decode_offset(&value[..8], "tombstone")?,
            through_offset: decode_offset(&value[8..], "tombstone")?,
        })
    }
}

/// The tombstone's key in the record space (what `AppendBatch` records use).
pub fn record_key(stream_id: &str) -> Vec<u8> {
    let mut key = RECORD_PREFIX.to_vec();
    key.extend_from_slice(stream_id.as_bytes());
    key
}

/// The tombstone's full sled key.
pub fn sled_key(stream_id: &str) -> Vec<u8> {
    keys::record(&record_key(stream_id))
}

/// The sled key range every tombstone lives in.
pub fn sled_prefix() -> Vec<u8> {
    keys::record(RECORD_PREFIX)
}

/// The stream id of a tombstone's sled key.
pub fn stream_of(sled_key: &[u8]) -> String {
    let skip = 1 + RECORD_PREFIX.len();
    String::from_utf8_lossy(sled_key.get(skip..).unwrap_or_default()).into_owned()
}

/// The deleted streams that reads must still hide, by stream id.
pub type Hidden = Arc<HashMap<String, Tombstone>>;

/// The tombstones in force, shared by the readers (who take a snapshot per read) and by the
/// writers of tombstones: `delete_stream` and compaction.
#[derive(Default)]
pub struct Tombstones {
    set: RwLock<Hidden>,
}

impl Tombstones {
    /// The tombstones stored in sled (at open, after the journal was replayed).
    pub fn load(tree: &sled::Tree) -> Result<Self, StoreError> {
        let mut set = HashMap::new();
        for entry in tree.scan_prefix(sled_prefix()) {
            let (key, value) = entry?;
            set.insert(stream_of(&key), Tombstone::decode(&value)?);
        }
        Ok(Self {
            set: RwLock::new(Arc::new(set)),
        })
    }

    /// The tombstones now, or None when there are none (the common case: reads then look at no
    /// event's stream). Taken before a read: a tombstone dropped after the snapshot was dropped
    /// only once its events were gone from storage and from the in-memory tail.
    pub fn snapshot(&self) -> Option<Hidden> {
        let set = self.set.read().ok()?;
        (!set.is_empty()).then(|| set.clone())
    }

    /// Hides a stream from now on (a durable tombstone was just written).
    pub fn insert(&self, stream_id: &str, tombstone: Tombstone) {
        if let Ok(mut set) = self.set.write() {
            let mut next = (**set).clone();
            let entry = next.entry(stream_id.to_string()).or_insert(tombstone);
            if tombstone.version > entry.version {
                *entry = tombstone;
            }
            *set = Arc::new(next);
        }
    }

    /// Forgets a tombstone whose events compaction removed, unless it was raised since.
    pub fn remove_if(&self, stream_id: &str, tombstone: Tombstone) {
        if let Ok(mut set) = self.set.write()
            && set.get(stream_id) == Some(&tombstone)
        {
            let mut next = (**set).clone();
            next.remove(stream_id);
            *set = Arc::new(next);
        }
    }

    /// The tombstone of one stream, if any.
    pub fn get(&self, stream_id: &str) -> Option<Tombstone> {
        self.set.read().ok()?.get(stream_id).copied()
    }
}

/// Whether `hidden` hides this event (a removed event is always hidden).
pub fn hides(hidden: Option<&Hidden>, event: &RawEvent) -> Result<bool, StoreError> {
    if event.is_removed() {
        return Ok(true);
    }
    let Some(hidden) = hidden else {
        return Ok(false);
    };
    let key = event.key()?;
    Ok(hides_key(hidden, &key))
}

/// Whether `hidden` hides the event with this key.
pub fn hides_key(hidden: &Hidden, key: &EventKey) -> bool {
    hidden
        .get(&key.stream_id)
        .is_some_and(|t| key.stream_version <= t.version)
}
