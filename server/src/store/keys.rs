//! Key layout of the single sled tree. One tree, because sled's `apply_batch` is atomic only
//! within a tree and events, indexes and records must commit together.
//!
//! - `e` + first offset (u64 BE)            -> where the events of one append batch lie in the
//!   journal (a locator), or the batch itself (codec.rs, bodies.rs)
//! - `s` + stream id + 0x00 + first version -> varint offsets of that stream's events in one batch
//! - `v` + stream id                        -> current stream version (u64 BE)
//! - `i` + event id (caller-chosen only)    -> offset, stream version (u64 BE each) + stream id
//! - `k` + idempotency key                  -> fingerprint (32) + claimed-at ms (u64 BE) + response
//! - `t` + claimed-at ms (BE) + key         -> empty (expiry index for `k`)
//! - `r` + caller-defined key               -> caller-defined value (projections)
//! - `j`                                    -> last journal frame applied (u64 BE): where
//!   recovery resumes replaying the journal (journal/)
//! - `f`                                    -> first retained offset (u64 BE), absent = 1:
//!   retention removed every event below it (compaction.rs)
//! - `r` + 0x00 `tombstone/` + stream id    -> a deleted stream's tombstone (tombstones.rs): a
//!   record in the reserved 0x00 corner of the record space, written through the journal
//! - `z` + segment (u64 BE) + position (BE) -> length + first offset of its chunk (u64 BE each):
//!   journal bytes of a deleted stream waiting to be zeroed (scrubs.rs); written by compaction,
//!   straight to sled, and never backed up

pub const EVENT: u8 = b'e';
const RECORD: u8 = b'r';
const STREAM: u8 = b's';
const VERSION: u8 = b'v';
const EVENT_ID: u8 = b'i';
const IDEMPOTENCY: u8 = b'k';
pub const IDEMPOTENCY_TIME: u8 = b't';
/// The one key that records how far sled has applied the journal.
pub const JOURNAL_APPLIED: &[u8] = b"j";
/// The first retained offset; written by compaction only, straight to sled.
pub const FIRST_RETAINED: &[u8] = b"f";
/// Journal bytes to zero (scrubs.rs).
pub const SCRUB: u8 = b'z';

pub fn event(offset: u64) -> [u8; 9] {
    let mut key = [EVENT; 9];
    key[1..].copy_from_slice(&offset.to_be_bytes());
    key
}

pub fn scrub(segment: u64, pos: u64) -> [u8; 17] {
    let mut key = [SCRUB; 17];
    key[1..9].copy_from_slice(&segment.to_be_bytes());
    key[9..].copy_from_slice(&pos.to_be_bytes());
    key
}

pub fn stream_entry(stream_id: &str, version: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream_id.len() + 10);
    key.push(STREAM);
    key.extend_from_slice(stream_id.as_bytes());
    key.push(0);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

pub fn stream_version(stream_id: &str) -> Vec<u8> {
    prefixed(VERSION, stream_id.as_bytes())
}

pub fn event_id(id: &str) -> Vec<u8> {
    prefixed(EVENT_ID, id.as_bytes())
}

pub fn idempotency(key: &str) -> Vec<u8> {
    prefixed(IDEMPOTENCY, key.as_bytes())
}

pub fn idempotency_time(claimed_ms: u64, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 9);
    out.push(IDEMPOTENCY_TIME);
    out.extend_from_slice(&claimed_ms.to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

pub fn record(key: &[u8]) -> Vec<u8> {
    prefixed(RECORD, key)
}

fn prefixed(tag: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(rest.len() + 1);
    key.push(tag);
    key.extend_from_slice(rest);
    key
}

/// Decodes a big-endian u64 value.
pub fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}
