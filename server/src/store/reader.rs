//! Reading events: the in-memory tail first, sled below it.

use std::sync::Arc;

use bytes::Bytes;

use super::{
    StoreError,
    bodies::Bodies,
    codec::{self, RawEvent, decode_offset},
    keys,
    tail::Tail,
};

#[derive(Clone)]
pub struct Reader {
    pub tree: sled::Tree,
    pub tail: Arc<Tail>,
    pub bodies: Arc<Bodies>,
}

impl Reader {
    /// Events with `from <= offset <= head`, at most `max` and about `max_bytes` (at least one
    /// if any). May return fewer than exist: callers read on from the last offset returned.
    pub fn read_raw(
        &self,
        from: u64,
        head: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<RawEvent>, StoreError> {
        let from = from.max(1);
        if from > head || max == 0 {
            return Ok(Vec::new());
        }
        if let Some(events) = self.tail.read(from, head, max, max_bytes) {
            return Ok(events);
        }
        // Below the tail's first chunk, sled has every chunk (the tail keeps the rest).
        let mut events = Vec::new();
        let mut bytes = 0;
        for (first, chunk) in read_chunks(&self.tree, &self.bodies, from, head, max, max_bytes)? {
            for event in codec::parse(first, chunk)? {
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

    /// The stored event at `offset`, if it exists at or below `head`.
    pub fn read_one(&self, offset: u64, head: u64) -> Result<Option<RawEvent>, StoreError> {
        if offset == 0 {
            return Ok(None);
        }
        Ok(self
            .read_raw(offset, head, 1, 1)?
            .into_iter()
            .find(|e| e.offset == offset))
    }
}

/// Chunks from sled covering `from..=head`, up to `max` events or about `max_bytes` (at least
/// one chunk). Counted from sled's values, so no chunk past the page is read from its segment.
fn read_chunks(
    tree: &sled::Tree,
    bodies: &Bodies,
    from: u64,
    head: u64,
    max: usize,
    max_bytes: usize,
) -> Result<Vec<(u64, Bytes)>, StoreError> {
    // The chunk holding `from` is the last one starting at or before it.
    let start = match tree.range(keys::event(0)..=keys::event(from)).next_back() {
        Some(entry) => entry?.0.to_vec(),
        None => keys::event(from).to_vec(),
    };
    let mut chunks = Vec::new();
    let mut bytes = 0;
    for entry in tree.range(start..=keys::event(head).to_vec()) {
        let (key, value) = entry?;
        let first = decode_offset(&key[1..], "event key")?;
        let end = first + codec::chunk_events(&value)?;
        bytes += codec::chunk_len(&value) as usize;
        chunks.push((first, bodies.chunk(&value)?));
        if bytes >= max_bytes || end.saturating_sub(from) >= max as u64 {
            break;
        }
    }
    Ok(chunks)
}
