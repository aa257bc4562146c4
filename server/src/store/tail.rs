//! The most recent chunks, kept in memory, already split into events with their keys. Live
//! subscribers read the head of the log from here instead of each going to sled, copying and
//! parsing the same bytes: fan-out costs a reference-count bump per event and subscriber.
//!
//! The tail also covers every chunk that is durable in the journal but not yet applied to
//! sled: a chunk is evicted only once sled has it, so a reader sent to sled (because the tail
//! does not reach back far enough) never finds a hole there.

use std::{
    collections::VecDeque,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use super::codec::RawEvent;

/// Bytes of chunks kept once sled has them; older chunks are read from sled as usual.
const TAIL_BYTES: usize = 8 * 1024 * 1024;

/// One durable chunk's events.
pub struct TailChunk {
    events: Arc<[RawEvent]>,
    bytes: usize,
}

impl TailChunk {
    pub fn new(events: Vec<RawEvent>, bytes: usize) -> Self {
        Self {
            events: events.into(),
            bytes,
        }
    }

    fn first(&self) -> u64 {
        self.events.first().map_or(0, |e| e.offset)
    }

    fn last(&self) -> u64 {
        self.events.last().map_or(0, |e| e.offset)
    }
}

#[derive(Default)]
pub struct Tail {
    chunks: RwLock<TailChunks>,
    /// The highest offset sled has applied: chunks above it are never evicted.
    applied: AtomicU64,
}

#[derive(Default)]
struct TailChunks {
    /// Contiguous and in offset order.
    chunks: VecDeque<TailChunk>,
    bytes: usize,
}

impl Tail {
    /// Adds a durable chunk. Called by the writer, in offset order, before the head moves.
    pub fn push(&self, chunk: TailChunk) {
        if chunk.events.is_empty() {
            return;
        }
        let Ok(mut tail) = self.chunks.write() else {
            return;
        };
        tail.bytes += chunk.bytes;
        tail.chunks.push_back(chunk);
        let applied = self.applied.load(Ordering::Acquire);
        while tail.bytes > TAIL_BYTES
            && tail.chunks.len() > 1
            && tail.chunks.front().is_some_and(|c| c.last() <= applied)
        {
            if let Some(old) = tail.chunks.pop_front() {
                tail.bytes -= old.bytes;
            }
        }
    }

    /// Drops the chunks that end at or below `offset` and that sled has: compaction calls it
    /// after removing events there (retention, deleted streams), so readers find sled's
    /// copy from then on, not the removed events.
    pub fn drop_through(&self, offset: u64) {
        let Ok(mut tail) = self.chunks.write() else {
            return;
        };
        let applied = self.applied.load(Ordering::Acquire);
        while tail
            .chunks
            .front()
            .is_some_and(|c| c.last() <= offset && c.last() <= applied)
        {
            if let Some(old) = tail.chunks.pop_front() {
                tail.bytes -= old.bytes;
            }
        }
    }

    /// Called by the applier once sled holds every event up to `offset`.
    pub fn set_applied(&self, offset: u64) {
        self.applied.fetch_max(offset, Ordering::Release);
    }

    /// Events from `from` to `to` (inclusive), at most `max` and about `max_bytes`, if the tail
    /// still reaches back to `from`; `None` sends the reader to sled.
    pub fn read(&self, from: u64, to: u64, max: usize, max_bytes: usize) -> Option<Vec<RawEvent>> {
        let tail = self.chunks.read().ok()?;
        if from < tail.chunks.front()?.first() {
            return None;
        }
        // Chunks are contiguous: find the last one starting at or before `from`.
        let start = tail
            .chunks
            .partition_point(|c| c.first() <= from)
            .checked_sub(1)?;
        let mut out = Vec::new();
        let mut bytes = 0;
        for chunk in tail.chunks.range(start..) {
            for event in chunk.events.iter().filter(|e| e.offset >= from) {
                if event.offset > to || out.len() >= max || bytes >= max_bytes {
                    return Some(out);
                }
                bytes += event.bytes.len();
                out.push(event.clone());
            }
        }
        Some(out)
    }
}
