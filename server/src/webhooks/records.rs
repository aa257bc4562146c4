//! Webhook state in the log's record space. Everything webhook starts with `w`, so it can never
//! collide with the order projection (`o`, `S`).
//!
//! - `wh` + id                    -> [`StoredWebhook`] (definition, secrets, enabled state)
//! - `wc` + id                    -> [`Cursor`] (delivery progress and retry state)
//! - `wa` + id + seq (u64 BE)     -> `DeliveryAttempt` (the last `max_attempts_kept` only)
//! - `wd` + id + offset (u64 BE)  -> `DeadLetter` waiting for a redrive
//! - `wr` + id + offset (u64 BE)  -> `DeadLetter` queued for redrive
//! - `wp` + id + offset (u64 BE)  -> [`ParallelRetry`]: retry state of an event in the window of
//!   a parallel webhook (ordered webhooks keep it in the cursor instead)
//!
//! Ids are ULIDs (26 characters), so `prefix + id` never prefixes another webhook's keys.
//! Attempts and dead letters are stored as their API messages: they carry nothing secret, and
//! one shape for both saves a conversion that could drift.
//!
//! Everything is written through the log's group-committed, fdatasync'd writer, so after an
//! acknowledged write (e.g. a cursor move after a 2xx) a crash cannot undo it.

use crate::{error::OrdoError, filter::Matcher};

const WEBHOOK: &[u8] = b"wh";
const CURSOR: &[u8] = b"wc";
const ATTEMPT: &[u8] = b"wa";
const DEAD: &[u8] = b"wd";
const REDRIVE: &[u8] = b"wr";
const PARALLEL: &[u8] = b"wp";

/// A webhook's definition. Holds the secrets, so it is never returned over the API as is.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredWebhook {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub url: String,
    #[prost(string, repeated, tag = "3")]
    pub event_types: Vec<String>,
    #[prost(string, repeated, tag = "4")]
    pub stream_ids: Vec<String>,
    #[prost(string, tag = "5")]
    pub description: String,
    #[prost(bool, tag = "6")]
    pub enabled: bool,
    #[prost(string, tag = "7")]
    pub disabled_reason: String,
    #[prost(uint64, tag = "8")]
    pub disabled_at_ms: u64,
    #[prost(uint64, tag = "9")]
    pub created_at_ms: u64,
    #[prost(uint64, tag = "10")]
    pub updated_at_ms: u64,
    #[prost(string, tag = "11")]
    pub secret: String,
    /// The secret before the last rotation; signs too until `previous_secret_expires_ms`.
    #[prost(string, tag = "12")]
    pub previous_secret: String,
    #[prost(uint64, tag = "13")]
    pub previous_secret_expires_ms: u64,
    /// 0 or 1: ordered delivery; more: parallel delivery with this many events in flight.
    #[prost(uint32, tag = "14")]
    pub max_in_flight: u32,
}

impl StoredWebhook {
    /// The matcher for this webhook's filters.
    pub fn matcher(&self) -> Result<Matcher, OrdoError> {
        filter_matcher(&self.event_types, &self.stream_ids)
    }
}

/// The matcher for a webhook's `event_types` and `stream_ids`, with errors naming those fields:
/// the one place a webhook's filter is built, for validation and delivery alike.
pub fn filter_matcher(types: &[String], streams: &[String]) -> Result<Matcher, OrdoError> {
    Matcher::from_lists(("event_types", types), ("stream_ids", streams))
}

/// Retry state of one event of a parallel webhook, so a restart resumes its attempt count and
/// due time like the ordered cursor does.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ParallelRetry {
    #[prost(uint32, tag = "1")]
    pub attempts: u32,
    #[prost(uint64, tag = "2")]
    pub next_attempt_ms: u64,
}

/// Delivery progress of one webhook. Written after every attempt, so a restart resumes with
/// the same event, attempt count and due time.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Cursor {
    /// Every event with offset <= this was delivered, dead-lettered or filtered out.
    #[prost(uint64, tag = "1")]
    pub delivered_through: u64,
    /// The event being retried (0 = none).
    #[prost(uint64, tag = "2")]
    pub pending_offset: u64,
    #[prost(uint32, tag = "3")]
    pub pending_attempts: u32,
    /// True when the pending event is a redriven dead letter (so it is not in the log order).
    #[prost(bool, tag = "4")]
    pub pending_redrive: bool,
    #[prost(uint64, tag = "5")]
    pub next_attempt_ms: u64,
    /// Start of the current run of failures (0 = the last attempt succeeded).
    #[prost(uint64, tag = "6")]
    pub failing_since_ms: u64,
    /// Sequence number of the next delivery attempt record.
    #[prost(uint64, tag = "7")]
    pub attempt_seq: u64,
}

impl Cursor {
    pub fn clear_pending(&mut self) {
        self.pending_offset = 0;
        self.pending_attempts = 0;
        self.pending_redrive = false;
        self.next_attempt_ms = 0;
    }
}

fn key(prefix: &[u8], id: &str, suffix: Option<u64>) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + id.len() + 8);
    key.extend_from_slice(prefix);
    key.extend_from_slice(id.as_bytes());
    if let Some(n) = suffix {
        key.extend_from_slice(&n.to_be_bytes());
    }
    key
}

pub fn webhook_key(id: &str) -> Vec<u8> {
    key(WEBHOOK, id, None)
}

pub fn all_webhooks_prefix() -> Vec<u8> {
    WEBHOOK.to_vec()
}

pub fn cursor_key(id: &str) -> Vec<u8> {
    key(CURSOR, id, None)
}

pub fn attempt_prefix(id: &str) -> Vec<u8> {
    key(ATTEMPT, id, None)
}

pub fn attempt_key(id: &str, seq: u64) -> Vec<u8> {
    key(ATTEMPT, id, Some(seq))
}

pub fn dead_prefix(id: &str) -> Vec<u8> {
    key(DEAD, id, None)
}

pub fn dead_key(id: &str, offset: u64) -> Vec<u8> {
    key(DEAD, id, Some(offset))
}

pub fn redrive_prefix(id: &str) -> Vec<u8> {
    key(REDRIVE, id, None)
}

pub fn redrive_key(id: &str, offset: u64) -> Vec<u8> {
    key(REDRIVE, id, Some(offset))
}

pub fn parallel_prefix(id: &str) -> Vec<u8> {
    key(PARALLEL, id, None)
}

pub fn parallel_key(id: &str, offset: u64) -> Vec<u8> {
    key(PARALLEL, id, Some(offset))
}

/// The webhook id in a `wh` key.
pub fn id_from_webhook_key(key: &[u8]) -> String {
    String::from_utf8_lossy(key.get(WEBHOOK.len()..).unwrap_or_default()).into_owned()
}

/// The u64 at the end of an attempt, dead-letter or redrive key.
pub fn trailing_u64(key: &[u8]) -> Option<u64> {
    let start = key.len().checked_sub(8)?;
    Some(u64::from_be_bytes(key.get(start..)?.try_into().ok()?))
}

pub use crate::store::{decode_record as decode, delete_record as delete, put_record as put};
