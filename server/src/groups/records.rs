//! Consumer-group state in the log's record space, all under `g` (orders use `o`/`S`,
//! webhooks `w`):
//!
//! - `gd` + name + 0   -> [`StoredGroup`]: the definition
//! - `gc` + name + 0   -> [`Checkpoint`]: what is settled
//! - `gf` + name + 0 + offset (u64 BE) -> [`Failure`]: an unsettled event that failed before, or
//!   a replayed one
//! - `gp` + name + 0 + offset (u64 BE) -> [`Parked`]: the dead-letter queue
//!
//! Names never contain a 0 byte, so `prefix + name + 0` never prefixes another group's keys.
//! Everything is written through the log's group-committed, fdatasync'd path.

const DEF: &[u8] = b"gd";
const CHECKPOINT: &[u8] = b"gc";
const FAILURE: &[u8] = b"gf";
const PARKED: &[u8] = b"gp";

/// A group's settings, as validated at creation or update (defaults filled in).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredGroup {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, repeated, tag = "2")]
    pub types: Vec<String>,
    #[prost(string, repeated, tag = "3")]
    pub stream_ids: Vec<String>,
    /// The start position as the creator gave it, shown back by GetGroup.
    #[prost(message, optional, tag = "4")]
    pub start: Option<ordo_api::v1::StartPosition>,
    #[prost(uint32, tag = "5")]
    pub ack_timeout_ms: u32,
    #[prost(uint32, tag = "6")]
    pub max_deliveries: u32,
    #[prost(uint32, tag = "7")]
    pub backoff_initial_ms: u32,
    #[prost(uint32, tag = "8")]
    pub backoff_max_ms: u32,
    #[prost(uint32, tag = "9")]
    pub max_in_flight: u32,
    #[prost(int32, tag = "10")]
    pub strategy: i32,
    #[prost(uint64, tag = "11")]
    pub created_at_ms: u64,
    #[prost(uint64, tag = "12")]
    pub updated_at_ms: u64,
}

/// Everything at or below `settled_through` is settled, and so is every offset in the
/// `[starts[i], ends[i]]` ranges above it. The ranges stay few: they are the gaps left by events
/// still in flight or retrying, which the group bounds.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Checkpoint {
    #[prost(uint64, tag = "1")]
    pub settled_through: u64,
    #[prost(uint64, repeated, tag = "2")]
    pub starts: Vec<u64>,
    #[prost(uint64, repeated, tag = "3")]
    pub ends: Vec<u64>,
    /// Events retention removed before the group settled them (skipped, and counted here).
    #[prost(uint64, tag = "4")]
    pub trimmed: u64,
}

/// An event that failed (nack, ack timeout, member gone) and waits for its next delivery, or a
/// parked event being replayed. Written at each failure, so a restart keeps the count: a
/// delivery cut short by a server crash is the only one not counted.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Failure {
    #[prost(uint32, tag = "1")]
    pub failures: u32,
    #[prost(uint64, tag = "2")]
    pub not_before_ms: u64,
    /// A replay of a parked event: its offset is already settled in the checkpoint.
    #[prost(bool, tag = "3")]
    pub replay: bool,
}

/// A parked event: out of the flow until replayed.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Parked {
    #[prost(uint32, tag = "1")]
    pub attempts: u32,
    #[prost(string, tag = "2")]
    pub reason: String,
    #[prost(uint64, tag = "3")]
    pub parked_at_ms: u64,
}

fn key(kind: &[u8], name: &str, offset: Option<u64>) -> Vec<u8> {
    let mut key = Vec::with_capacity(kind.len() + name.len() + 9);
    key.extend_from_slice(kind);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    if let Some(offset) = offset {
        key.extend_from_slice(&offset.to_be_bytes());
    }
    key
}

pub fn def_key(name: &str) -> Vec<u8> {
    key(DEF, name, None)
}

/// Every group's definition, in name order.
pub fn all_defs_prefix() -> &'static [u8] {
    DEF
}

/// The group name in a `gd` key.
pub fn name_from_def_key(key: &[u8]) -> String {
    let name = key
        .get(DEF.len()..key.len().saturating_sub(1))
        .unwrap_or_default();
    String::from_utf8_lossy(name).into_owned()
}

pub fn checkpoint_key(name: &str) -> Vec<u8> {
    key(CHECKPOINT, name, None)
}

pub fn failure_prefix(name: &str) -> Vec<u8> {
    key(FAILURE, name, None)
}

pub fn failure_key(name: &str, offset: u64) -> Vec<u8> {
    key(FAILURE, name, Some(offset))
}

pub fn parked_prefix(name: &str) -> Vec<u8> {
    key(PARKED, name, None)
}

pub fn parked_key(name: &str, offset: u64) -> Vec<u8> {
    key(PARKED, name, Some(offset))
}

/// The offset at the end of a failure or parked key.
pub fn trailing_offset(key: &[u8]) -> Option<u64> {
    let start = key.len().checked_sub(8)?;
    Some(u64::from_be_bytes(key.get(start..)?.try_into().ok()?))
}

pub use crate::store::{decode_record as decode, delete_record as delete, put_record as put};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_group_never_prefix_another() {
        let a = failure_prefix("a");
        assert!(!failure_key("ab", 1).starts_with(&a));
        assert!(failure_key("a", 1).starts_with(&a));
        assert_eq!(trailing_offset(&parked_key("a", 42)), Some(42));
        assert_eq!(name_from_def_key(&def_key("orders-svc")), "orders-svc");
    }
}
