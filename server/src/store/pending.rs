//! Writes that are durable in the journal but not yet applied to sled, readable at once.
//!
//! An append is acknowledged as soon as its journal frame is synced, while sled catches up in
//! the background. Every read of a key therefore looks here first, then in sled: a key leaves
//! this map only after the applier has written it to sled, so at any moment it is in one or the
//! other (read-your-writes). Chunks (`e` keys) are not kept here: the in-memory tail holds every
//! chunk sled does not have yet (see `tail.rs`).

use std::{collections::BTreeMap, ops::Bound, sync::RwLock};

use bytes::Bytes;

use super::{journal::Op, keys};

#[derive(Default)]
pub struct Pending {
    map: RwLock<BTreeMap<Vec<u8>, Entry>>,
}

struct Entry {
    /// The frame that wrote this value last: only applying that frame removes the entry.
    lsn: u64,
    value: Option<Bytes>,
}

/// A pending key's state: `Some(None)` is a delete that sled has not applied yet.
pub type Lookup = Option<Option<Bytes>>;

impl Pending {
    /// Records a durable frame's writes. Called by the writer before it acknowledges them.
    pub fn insert(&self, lsn: u64, ops: &[Op]) {
        let Ok(mut map) = self.map.write() else {
            return;
        };
        for op in ops.iter().filter(|op| !is_chunk(&op.key)) {
            map.insert(
                op.key.clone(),
                Entry {
                    lsn,
                    value: op.value.clone(),
                },
            );
        }
    }

    /// Forgets a frame's writes once sled has them, unless a later frame wrote the key again.
    pub fn applied(&self, lsn: u64, ops: &[Op]) {
        let Ok(mut map) = self.map.write() else {
            return;
        };
        for op in ops.iter().filter(|op| !is_chunk(&op.key)) {
            if map.get(&op.key).is_some_and(|entry| entry.lsn == lsn) {
                map.remove(&op.key);
            }
        }
    }

    pub fn get(&self, key: &[u8]) -> Lookup {
        let map = self.map.read().ok()?;
        map.get(key).map(|entry| entry.value.clone())
    }

    /// A copy of the pending entries in a key range, in key order.
    pub fn range(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Vec<(Vec<u8>, Option<Bytes>)> {
        let Ok(map) = self.map.read() else {
            return Vec::new();
        };
        map.range::<[u8], _>((start, end))
            .map(|(key, entry)| (key.clone(), entry.value.clone()))
            .collect()
    }
}

fn is_chunk(key: &[u8]) -> bool {
    key.first() == Some(&keys::EVENT)
}
