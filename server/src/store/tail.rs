//! The most recent chunks, kept in memory, already split into events with their keys. Live
//! subscribers read the head of the log from here instead of each going to sled, copying and
//! parsing the same bytes: fan-out costs a reference-count bump per event and subscriber.

use std::{collections::VecDeque, sync::Arc, sync::RwLock};

use super::chunk::RawEvent;

/// Bytes of chunks kept; older chunks are read from sled as usual.
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
}

#[derive(Default)]
pub struct Tail {
    chunks: RwLock<TailChunks>,
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
        while tail.bytes > TAIL_BYTES && tail.chunks.len() > 1 {
            if let Some(old) = tail.chunks.pop_front() {
                tail.bytes -= old.bytes;
            }
        }
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
