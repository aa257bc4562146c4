//! The most recent chunks, kept in memory and shared. Live subscribers read the head of the log
//! from here instead of each going to sled and copying the same bytes: fan-out to many
//! subscribers costs a reference-count bump per event, not a read per subscriber.

use std::{collections::VecDeque, sync::RwLock};

use bytes::Bytes;

/// Bytes of chunks kept; older chunks are read from sled as usual.
const TAIL_BYTES: usize = 8 * 1024 * 1024;

#[derive(Default)]
pub struct Tail {
    chunks: RwLock<TailChunks>,
}

#[derive(Default)]
struct TailChunks {
    /// (first offset, chunk), contiguous and in order.
    chunks: VecDeque<(u64, Bytes)>,
    bytes: usize,
}

impl Tail {
    /// Adds a durable chunk. Called by the writer, in offset order, before the head moves.
    pub fn push(&self, first: u64, chunk: Bytes) {
        let Ok(mut tail) = self.chunks.write() else {
            return;
        };
        tail.bytes += chunk.len();
        tail.chunks.push_back((first, chunk));
        while tail.bytes > TAIL_BYTES && tail.chunks.len() > 1 {
            if let Some((_, old)) = tail.chunks.pop_front() {
                tail.bytes -= old.len();
            }
        }
    }

    /// Chunks that together cover `from` onwards, if the tail still reaches back to `from`:
    /// the first returned chunk contains `from` (or starts right at it).
    pub fn from(&self, from: u64, max_bytes: usize) -> Option<Vec<(u64, Bytes)>> {
        let tail = self.chunks.read().ok()?;
        let first = tail.chunks.front()?.0;
        if from < first {
            return None;
        }
        // Chunks are contiguous: find the last one starting at or before `from`.
        let start = tail.chunks.partition_point(|(offset, _)| *offset <= from);
        let start = start.checked_sub(1)?;
        let mut out = Vec::new();
        let mut bytes = 0;
        for (offset, chunk) in tail.chunks.range(start..) {
            bytes += chunk.len();
            out.push((*offset, chunk.clone()));
            if bytes >= max_bytes {
                break;
            }
        }
        Some(out)
    }
}
