//! The event log: an append-only, durable, gapless sequence of events plus the records (order
//! projection, idempotency keys) that must change atomically with them.
//!
//! The gRPC layer talks only to the [`EventLog`] trait, so a second backend can be added without
//! touching it. [`SledLog`] is the embedded default.

mod applier;
mod codec;
mod error;
mod journal;
mod keys;
mod pending;
mod reader;
mod sled_files;
mod sled_log;
mod staging;
mod tail;
mod view;
mod writer;

use std::{future::Future, pin::Pin, sync::Arc};

use ordo_api::v1::Event;
use tokio::sync::watch;

pub use codec::{EventKey, RawEvent};
pub use error::StoreError;
pub use journal::JournalError;
pub use sled_log::{LogOptions, SledLog, SyncMode};

/// One atomic append: every event is stored and every record written, or nothing is.
pub struct AppendBatch {
    /// Events to append, in order. The log assigns `offset` and `stream_version`; every other
    /// field is stored as given.
    pub events: Vec<Event>,
    /// Optimistic concurrency: each stream must currently be at the given version (0 = the
    /// stream does not exist) or the whole batch fails with [`StoreError::VersionConflict`].
    pub expected_versions: Vec<(String, u64)>,
    /// Claims an idempotency key. If the key is already claimed with the same fingerprint the
    /// batch appends nothing and the stored response is returned instead.
    pub idempotency: Option<IdempotencyClaim>,
    /// Whether the caller chose the event ids: only then are they indexed and checked for
    /// duplicates (server-generated ULIDs are unique by construction, and skipping the index
    /// saves a write per event).
    pub index_ids: bool,
    /// Computes the records to write atomically with the events, once their positions are known
    /// (e.g. an order's `last_offset`), and the response bytes to store under the idempotency key.
    pub project: Option<Projector>,
}

impl AppendBatch {
    /// A batch that writes only records (e.g. a consumer's cursor), durably and in commit order
    /// with the events around it.
    pub fn records_only(records: Vec<RecordWrite>) -> Self {
        Self {
            events: Vec::new(),
            expected_versions: Vec::new(),
            idempotency: None,
            index_ids: false,
            project: Some(Box::new(move |_| Projection {
                records,
                response: Vec::new(),
            })),
        }
    }
}

/// Turns the assigned positions into record writes plus the response to remember for an
/// idempotency key. Runs on the writer, so it must be cheap and must not block.
pub type Projector = Box<dyn FnOnce(&[Position]) -> Projection + Send>;

/// What a [`Projector`] produced.
#[derive(Default)]
pub struct Projection {
    pub records: Vec<RecordWrite>,
    pub response: Vec<u8>,
}

/// A write to the record space (`value: None` deletes).
pub struct RecordWrite {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// An idempotency key with a fingerprint of the request that claims it.
pub struct IdempotencyClaim {
    /// Scope plus key, e.g. `CreateOrder/abc`.
    pub key: String,
    pub fingerprint: [u8; 32],
}

/// A record's key (without the log's internal prefix) and value.
pub type Record = (Vec<u8>, Vec<u8>);

/// What an idempotency key remembers: which request claimed it and what it answered.
#[derive(Debug, Clone)]
pub struct StoredResponse {
    pub fingerprint: [u8; 32],
    pub response: Vec<u8>,
}

/// Where an appended event landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub id: String,
    pub offset: u64,
    pub stream_id: String,
    pub stream_version: u64,
}

/// The result of a successful [`EventLog::append`].
#[derive(Debug)]
pub enum AppendOutcome {
    /// The events are durable at these positions. `response` is what the projector produced.
    Appended {
        positions: Vec<Position>,
        response: Vec<u8>,
    },
    /// The idempotency key was already claimed by an identical request: nothing was appended.
    Replayed { response: Vec<u8> },
    /// Every event id was already stored: nothing was appended; these are the original positions.
    Deduplicated { positions: Vec<Position> },
}

/// Resolves once the batch is durable (fsync'd) or rejected. Boxed so that [`EventLog`] stays
/// object-safe and the server can hold an `Arc<dyn EventLog>`.
pub type AppendFuture = Pin<Box<dyn Future<Output = Result<AppendOutcome, StoreError>> + Send>>;

/// Resolves to the outcome of each batch of an [`EventLog::enqueue_many`], in order; fails as a
/// whole only if the log closed before answering.
pub type OutcomesFuture = Pin<
    Box<dyn Future<Output = Result<Vec<Result<AppendOutcome, StoreError>>, StoreError>> + Send>,
>;

/// Resolves once batches are in the writer's queue, to the future of their outcomes. Splitting
/// the two lets one task queue many batches in a known order and await their outcomes
/// afterwards (`AppendStream` pipelines its events this way and still stores them in send
/// order).
pub type EnqueueFuture = Pin<Box<dyn Future<Output = Result<OutcomesFuture, StoreError>> + Send>>;

/// The storage interface the gRPC layer depends on.
pub trait EventLog: Send + Sync + 'static {
    /// Queues a batch for the next group commit; waits for room when the queue is full, which is
    /// the backpressure on producers.
    fn append(&self, batch: AppendBatch) -> AppendFuture;
    /// Queues independent batches in this order, as one entry of the writer's queue, and
    /// resolves as soon as they are queued. Each batch is still validated and committed (or
    /// rejected) on its own, exactly as if appended alone; calls whose futures completed one
    /// after another commit in that order. One queue entry and one reply for many small
    /// appends is what lets a stream of single events reach batch throughput.
    fn enqueue_many(&self, batches: Vec<AppendBatch>) -> EnqueueFuture;
    /// Events with `from <= offset <= head` in offset order: at most `max` of them, and no more
    /// once `max_bytes` of encoded events have been read (but always at least one if any), so a
    /// reader's memory stays bounded whatever the payload sizes.
    fn read(&self, from: u64, max: usize, max_bytes: usize) -> Result<Vec<Event>, StoreError> {
        self.read_raw(from, max, max_bytes)?
            .iter()
            .map(RawEvent::decode)
            .collect()
    }
    /// [`EventLog::read`] without decoding: subscriptions forward the stored bytes as they are.
    fn read_raw(
        &self,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<RawEvent>, StoreError>;
    /// Events of one stream with `from_version <= stream_version <= to_version`, in order.
    fn read_stream(
        &self,
        stream_id: &str,
        from_version: u64,
        to_version: u64,
    ) -> Result<Vec<Event>, StoreError>;
    /// The current version of a stream (0 if it has no events).
    fn stream_version(&self, stream_id: &str) -> Result<u64, StoreError>;
    /// The newest durable offset (0 when the log is empty).
    fn head(&self) -> u64;
    /// Changes whenever the durable head moves; subscribers wait on it instead of polling.
    fn watch_head(&self) -> watch::Receiver<u64>;
    /// Reads one record.
    fn get_record(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Records whose key starts with `prefix` and is strictly greater than `after`, in key order.
    fn scan_records(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError>;
    /// The stored fingerprint and response of an idempotency key, if it is still retained.
    fn idempotent_response(&self, key: &str) -> Result<Option<StoredResponse>, StoreError>;
    /// Drops idempotency keys claimed before `cutoff_ms` (Unix milliseconds); returns how many.
    fn expire_idempotency(&self, cutoff_ms: u64) -> Result<usize, StoreError>;
    /// Makes everything durable and stops accepting appends; used on graceful shutdown.
    fn close(&self) -> Result<(), StoreError>;
}

/// Shared handle to whichever log the server runs on.
pub type SharedLog = Arc<dyn EventLog>;
