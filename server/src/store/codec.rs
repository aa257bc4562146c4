//! Every byte layout the store writes, encoded and decoded in one place: chunks (the events of
//! one append batch, stored as one sled value), the stream index, the event id index and
//! idempotency records. The writer, the readers and recovery all go through here.
//!
//! Chunks: one sled value per append batch, holding that batch's events.
//!
//! Storing a batch as one value (keyed by its first offset) instead of one value per event cuts
//! sled inserts per event from several to a fraction of one, which is where batched appends and
//! catch-up reads spend their time. Inside, each event is `varint(len) + encoded Event`, so a
//! reader can hand out each event's bytes (a zero-copy slice of the chunk) without decoding it.

use std::sync::Arc;

use bytes::Bytes;
use ordo_api::v1::Event;
use prost::{
    Message,
    encoding::{decode_varint, encode_varint, encoded_len_varint},
};

use super::{Position, StoreError, StoredResponse, keys};

/// One stored event, still encoded: what subscriptions send on unchanged.
#[derive(Debug, Clone)]
pub struct RawEvent {
    pub offset: u64,
    /// The protobuf encoding of the `Event` (offset and stream_version included).
    pub bytes: Bytes,
    /// Type and stream id when already known (events from the in-memory tail), so filtered
    /// live subscribers share one copy instead of each decoding it.
    pub known_key: Option<Arc<EventKey>>,
}

impl RawEvent {
    pub fn decode(&self) -> Result<Event, StoreError> {
        Event::decode(self.bytes.as_ref()).map_err(|e| corrupt("event", e.to_string()))
    }

    /// An event whose stream was deleted and that compaction removed from its chunk: its slot
    /// keeps the offsets of the chunk's other events, its bytes are gone (see [`remove_events`]).
    pub fn is_removed(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Just the fields filters look at; prost skips the rest without allocating for them.
    pub fn key(&self) -> Result<Arc<EventKey>, StoreError> {
        if let Some(key) = &self.known_key {
            return Ok(key.clone());
        }
        EventKey::decode(self.bytes.as_ref())
            .map(Arc::new)
            .map_err(|e| corrupt("event", e.to_string()))
    }
}

/// The `type`, `stream_id` and `stream_version` fields of an `Event`, decoded alone (same
/// field numbers): what filters and deleted-stream checks look at.
#[derive(Clone, PartialEq, Message)]
pub struct EventKey {
    #[prost(string, tag = "4")]
    pub r#type: String,
    #[prost(string, tag = "6")]
    pub stream_id: String,
    #[prost(uint64, tag = "7")]
    pub stream_version: u64,
}

/// The `time` field of an `Event`, decoded alone: what age-based retention looks at.
#[derive(Clone, PartialEq, Message)]
pub struct EventTime {
    #[prost(message, optional, tag = "8")]
    pub time: Option<prost_types::Timestamp>,
}

impl EventTime {
    /// The event's time in Unix milliseconds (0 when unset or undecodable).
    pub fn ms(bytes: &[u8]) -> u64 {
        let Ok(decoded) = Self::decode(bytes) else {
            return 0;
        };
        decoded.time.map_or(0, |t| {
            let ms = i128::from(t.seconds) * 1000 + i128::from(t.nanos) / 1_000_000;
            u64::try_from(ms).unwrap_or(0)
        })
    }
}

/// Bytes after which a chunk is closed and the next event starts a new one. sled leaves hold
/// up to 16 values and write a node larger than a quarter segment (2 MiB with our 8 MiB
/// segments) as a separate "blob" file, which costs an extra file sync; 64 KiB chunks keep
/// nodes under that.
const CHUNK_TARGET_BYTES: usize = 64 * 1024;

/// The identity fields of an `Event`, decoded alone (same field numbers).
#[derive(Clone, PartialEq, Message)]
pub struct EventIdentity {
    #[prost(string, tag = "2")]
    pub id: String,
    #[prost(string, tag = "6")]
    pub stream_id: String,
    #[prost(uint64, tag = "7")]
    pub stream_version: u64,
}

/// A server-assigned event id: a ULID (time-ordered, 26 characters) whose random part carries
/// the event's offset. Unique because offsets are, and recognisable without an index: see
/// [`offset_in_id`].
pub fn server_id(offset: u64, unix_ms: u64) -> String {
    let random = (u128::from(offset) << 16) | u128::from(rand::random::<u16>());
    ulid::Ulid::from_parts(unix_ms, random).to_string()
}

/// The offset a server-assigned id would name, if `id` has that form.
pub fn offset_in_id(id: &str) -> Option<u64> {
    let ulid = ulid::Ulid::from_string(id).ok()?;
    u64::try_from(ulid.random() >> 16).ok()
}

/// Builds a chunk from events in offset order.
pub struct ChunkWriter {
    first: u64,
    buf: Vec<u8>,
    keys: Vec<Arc<EventKey>>,
}

/// A finished chunk: where it starts, its bytes, and each event's key.
pub struct Chunk {
    pub first: u64,
    pub bytes: Vec<u8>,
    pub keys: Vec<Arc<EventKey>>,
}

impl Chunk {
    /// The chunk's events (slices of one shared buffer, keys attached) and that buffer.
    pub fn into_events(self) -> Result<(Vec<RawEvent>, Bytes), StoreError> {
        let bytes = Bytes::from(self.bytes);
        let mut events = parse(self.first, bytes.clone())?;
        for (event, key) in events.iter_mut().zip(self.keys) {
            event.known_key = Some(key);
        }
        Ok((events, bytes))
    }
}

impl ChunkWriter {
    /// A chunk whose first event will have offset `first`.
    pub fn new(first: u64) -> Self {
        Self {
            first,
            buf: Vec::new(),
            keys: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.buf.len() >= CHUNK_TARGET_BYTES
    }

    pub fn push(&mut self, event: &Event) {
        let len = event.encoded_len();
        self.buf.reserve(len + encoded_len_varint(len as u64));
        encode_varint(len as u64, &mut self.buf);
        // Encoding into a Vec cannot run out of room.
        let _ = event.encode(&mut self.buf);
        self.keys.push(Arc::new(EventKey {
            r#type: event.r#type.clone(),
            stream_id: event.stream_id.clone(),
            stream_version: event.stream_version,
        }));
    }

    pub fn finish(self) -> Chunk {
        Chunk {
            first: self.first,
            bytes: self.buf,
            keys: self.keys,
        }
    }
}

/// Splits a chunk whose first event has offset `first` into its events.
pub fn parse(first: u64, chunk: Bytes) -> Result<Vec<RawEvent>, StoreError> {
    let mut events = Vec::new();
    let mut rest = &chunk[..];
    let mut offset = first;
    while !rest.is_empty() {
        let len = decode_varint(&mut rest).map_err(|e| corrupt("chunk", e.to_string()))? as usize;
        if len > rest.len() {
            return Err(corrupt(
                "chunk",
                format!("event at offset {offset} is truncated"),
            ));
        }
        let start = chunk.len() - rest.len();
        events.push(RawEvent {
            offset,
            bytes: chunk.slice(start..start + len),
            known_key: None,
        });
        rest = &rest[len..];
        offset += 1;
    }
    Ok(events)
}

/// The chunk starting at `first` with the events at `offsets` removed: each keeps its slot as a
/// zero-length entry, so the offsets of the others do not move and readers skip it
/// ([`RawEvent::is_removed`]). Returns the new chunk and the removed events' stored bytes.
pub fn remove_events(
    first: u64,
    chunk: Bytes,
    offsets: &std::collections::BTreeSet<u64>,
) -> Result<(Vec<u8>, Vec<RawEvent>), StoreError> {
    let mut out = Vec::with_capacity(chunk.len());
    let mut removed = Vec::new();
    for event in parse(first, chunk)? {
        if offsets.contains(&event.offset) && !event.is_removed() {
            encode_varint(0, &mut out);
            removed.push(event);
        } else {
            encode_varint(event.bytes.len() as u64, &mut out);
            out.extend_from_slice(&event.bytes);
        }
    }
    Ok((out, removed))
}

/// Byte ranges (start, length) within a chunk that hold the events at `offsets`, length prefix
/// included; consecutive events make one range. What a stream deletion zeroes in a segment.
pub fn event_ranges(
    first: u64,
    chunk: &[u8],
    offsets: &std::collections::BTreeSet<u64>,
) -> Result<Vec<(u64, u64)>, StoreError> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut rest = chunk;
    let mut offset = first;
    while !rest.is_empty() {
        let start = (chunk.len() - rest.len()) as u64;
        let len = decode_varint(&mut rest).map_err(|e| corrupt("chunk", e.to_string()))? as usize;
        if len > rest.len() {
            return Err(corrupt("chunk", "event runs past the chunk".into()));
        }
        rest = &rest[len..];
        let end = (chunk.len() - rest.len()) as u64;
        if offsets.contains(&offset) {
            match ranges.last_mut() {
                Some(last) if last.0 + last.1 == start => last.1 = end - last.0,
                _ => ranges.push((start, end - start)),
            }
        }
        offset += 1;
    }
    Ok(ranges)
}

/// Events in a chunk, counted from the length prefixes alone.
pub fn count_events(chunk: &[u8]) -> Result<u64, StoreError> {
    let mut rest = chunk;
    let mut n = 0;
    while !rest.is_empty() {
        let len = decode_varint(&mut rest).map_err(|e| corrupt("chunk", e.to_string()))? as usize;
        if len > rest.len() {
            return Err(corrupt("chunk", "event runs past the chunk".into()));
        }
        rest = &rest[len..];
        n += 1;
    }
    Ok(n)
}

/// Where a chunk's bytes lie in a journal segment: what sled stores under an `e` key instead
/// of the chunk itself (see `bodies.rs`), so that each event is written to disk once.
///
/// ```text
/// "ORDL" | segment u64 | position u64 | len u32 | crc32 u32 | events u32   (little-endian)
/// ```
///
/// No chunk can be taken for a locator: a chunk starts with the varint length of its first
/// event, and `O` (0x4F) read as a varint is 79, more than a value of [`LOCATOR_LEN`] bytes
/// can hold after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locator {
    pub segment: u64,
    /// Byte position of the chunk in the segment file.
    pub pos: u64,
    pub len: u32,
    /// crc32 of the chunk's bytes: a damaged or overwritten segment is detected on read.
    pub crc: u32,
    /// Events in the chunk, so counting them needs no read.
    pub events: u32,
}

const LOCATOR_MAGIC: &[u8; 4] = b"ORDL";
pub const LOCATOR_LEN: usize = 32;

impl Locator {
    pub fn encode(&self) -> [u8; LOCATOR_LEN] {
        let mut out = [0u8; LOCATOR_LEN];
        out[0..4].copy_from_slice(LOCATOR_MAGIC);
        out[4..12].copy_from_slice(&self.segment.to_le_bytes());
        out[12..20].copy_from_slice(&self.pos.to_le_bytes());
        out[20..24].copy_from_slice(&self.len.to_le_bytes());
        out[24..28].copy_from_slice(&self.crc.to_le_bytes());
        out[28..32].copy_from_slice(&self.events.to_le_bytes());
        out
    }

    /// The locator an `e` value holds, or `None` when the value is the chunk itself.
    pub fn decode(value: &[u8]) -> Option<Self> {
        if value.len() != LOCATOR_LEN || !value.starts_with(LOCATOR_MAGIC) {
            return None;
        }
        let u32_at = |at: usize| {
            u32::from_le_bytes([value[at], value[at + 1], value[at + 2], value[at + 3]])
        };
        let u64_at = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&value[at..at + 8]);
            u64::from_le_bytes(bytes)
        };
        Some(Self {
            segment: u64_at(4),
            pos: u64_at(12),
            len: u32_at(20),
            crc: u32_at(24),
            events: u32_at(28),
        })
    }
}

/// Bytes of the chunk an `e` value stands for, without reading it.
pub fn chunk_len(value: &[u8]) -> u64 {
    Locator::decode(value).map_or(value.len() as u64, |l| u64::from(l.len))
}

/// Events in the chunk an `e` value stands for, without reading a locator's chunk.
pub fn chunk_events(value: &[u8]) -> Result<u64, StoreError> {
    match Locator::decode(value) {
        Some(locator) => Ok(u64::from(locator.events)),
        None => count_events(value),
    }
}

/// Packs the offsets of one stream's events within a batch (the stream index value).
pub fn pack_offsets(offsets: &[u64]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(offsets.len() * 3);
    for offset in offsets {
        encode_varint(*offset, &mut buf);
    }
    buf
}

pub fn unpack_offsets(mut bytes: &[u8]) -> Result<Vec<u64>, StoreError> {
    let mut offsets = Vec::new();
    while !bytes.is_empty() {
        offsets
            .push(decode_varint(&mut bytes).map_err(|e| corrupt("stream index", e.to_string()))?);
    }
    Ok(offsets)
}

/// The event id index value: offset, stream version, stream id.
pub fn encode_position(offset: u64, version: u64, stream_id: &str) -> Vec<u8> {
    let mut value = Vec::with_capacity(16 + stream_id.len());
    value.extend_from_slice(&offset.to_be_bytes());
    value.extend_from_slice(&version.to_be_bytes());
    value.extend_from_slice(stream_id.as_bytes());
    value
}

pub fn decode_position(id: &str, value: &[u8]) -> Result<Position, StoreError> {
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

/// An idempotency record: fingerprint (32 bytes), claimed-at ms (u64 BE), response.
pub fn encode_idempotency(fingerprint: &[u8; 32], claimed_ms: u64, response: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(40 + response.len());
    value.extend_from_slice(fingerprint);
    value.extend_from_slice(&claimed_ms.to_be_bytes());
    value.extend_from_slice(response);
    value
}

pub fn decode_idempotency(value: &[u8]) -> Result<StoredResponse, StoreError> {
    if value.len() < 40 {
        return Err(corrupt(
            "idempotency record",
            format!("{} bytes", value.len()),
        ));
    }
    let mut fingerprint = [0u8; 32];
    fingerprint.copy_from_slice(&value[..32]);
    Ok(StoredResponse {
        fingerprint,
        response: value[40..].to_vec(),
    })
}

pub fn decode_offset(bytes: &[u8], what: &str) -> Result<u64, StoreError> {
    keys::decode_u64(bytes)
        .ok_or_else(|| corrupt(what, format!("{} bytes, expected 8", bytes.len())))
}

pub fn corrupt(what: &str, detail: String) -> StoreError {
    StoreError::Corrupt {
        what: what.to_string(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locators_round_trip_and_no_chunk_reads_as_one() {
        let locator = Locator {
            segment: 7,
            pos: 1 << 40,
            len: 65_000,
            crc: 0xdead_beef,
            events: 100,
        };
        assert_eq!(Locator::decode(&locator.encode()), Some(locator));
        for size in [0usize, 1, 20, 28, 79, 300] {
            let mut writer = ChunkWriter::new(1);
            writer.push(&Event {
                id: "ORDL".repeat(size / 4),
                ..Default::default()
            });
            let chunk = writer.finish().bytes;
            assert_eq!(Locator::decode(&chunk), None, "event of {size} id bytes");
            assert_eq!(chunk_len(&chunk), chunk.len() as u64);
            assert_eq!(chunk_events(&chunk).expect("count"), 1);
        }
    }

    #[test]
    fn event_ranges_cover_the_removed_events_with_their_prefixes() {
        let mut writer = ChunkWriter::new(10);
        for n in 0..4 {
            writer.push(&Event {
                id: format!("event-{n}"),
                ..Default::default()
            });
        }
        let chunk = writer.finish().bytes;
        let each = chunk.len() as u64 / 4;
        let ranges = event_ranges(10, &chunk, &[11, 12].into_iter().collect()).expect("ranges");
        assert_eq!(ranges, [(each, 2 * each)]);
        let ranges = event_ranges(10, &chunk, &[10, 13].into_iter().collect()).expect("ranges");
        assert_eq!(ranges, [(0, each), (3 * each, each)]);
    }
}
