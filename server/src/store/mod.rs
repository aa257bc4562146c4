//! The event log: an append-only, durable, gapless sequence of events plus the records (order
//! projection, idempotency keys) that must change atomically with them.
//!
//! The gRPC layer talks only to the [`EventLog`] trait, so a second backend can be added without
//! touching it. [`SledLog`] is the embedded default.

mod applier;
mod backup;
mod bodies;
mod codec;
mod compaction;
mod error;
mod first;
mod journal;
mod keys;
mod nats;
mod pending;
mod progress;
mod reader;
mod scrubs;
mod sled_files;
mod sled_log;
mod staging;
mod tail;
mod tombstones;
mod view;
mod writer;

use std::{future::Future, io::Write, pin::Pin, sync::Arc};

use ordo_api::v1::Event;
use tokio::sync::watch;

pub use backup::{BackupSummary, RestoreSummary, restore};
pub use codec::{EventKey, RawEvent};
pub use compaction::{CompactionReport, RetentionRules};
pub use error::StoreError;
pub use journal::JournalError;
pub use nats::{Derive, LeaseState, NatsLog, Records};
pub use sled_log::{LogOptions, SledLog, SyncMode};
pub use tombstones::Tombstone;

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

/// A put of a protobuf message: records (webhook cursors, group checkpoints, ...) are stored as
/// their encoding, so every domain writes and reads them the same way.
pub fn put_record(key: Vec<u8>, message: &impl prost::Message) -> RecordWrite {
    RecordWrite {
        key,
        value: Some(message.encode_to_vec()),
    }
}

pub fn delete_record(key: Vec<u8>) -> RecordWrite {
    RecordWrite { key, value: None }
}

/// Decodes a stored record; a failure means the record is corrupt.
pub fn decode_record<M: prost::Message + Default>(
    bytes: &[u8],
    what: &str,
) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|err| StoreError::Corrupt {
        what: what.to_string(),
        detail: err.to_string(),
    })
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

/// Resolves once a stream's tombstone is durable (see [`EventLog::delete_stream`]).
pub type DeleteFuture = Pin<Box<dyn Future<Output = Result<Tombstone, StoreError>> + Send>>;

/// One step of reading the log: the events found and where to go on from.
#[derive(Debug, Default)]
pub struct Page {
    /// Events in offset order, without those of deleted streams.
    pub events: Vec<RawEvent>,
    /// Every offset below this was examined (returned, or skipped as deleted): read on from
    /// here. Equal to the `from` asked for only when nothing was there to read.
    pub next: u64,
}

/// The log's retained range and size, for operators.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogInfo {
    pub first_offset: u64,
    pub head: u64,
    /// Allocated bytes of every file in the data dir (sled and the journal).
    pub disk_bytes: u64,
    /// Of `disk_bytes`, the journal's (preallocated segments).
    pub journal_bytes: u64,
    pub pending_deleted_streams: u64,
}

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
    /// reader's memory stays bounded whatever the payload sizes. Events of deleted streams are
    /// skipped (so offsets may jump); [`StoreError::Trimmed`] when `from` is below the first
    /// retained offset.
    fn read(&self, from: u64, max: usize, max_bytes: usize) -> Result<Vec<Event>, StoreError> {
        self.read_raw(from, max, max_bytes)?
            .iter()
            .map(RawEvent::decode)
            .collect()
    }
    /// [`EventLog::read`] without decoding: subscriptions forward the stored bytes as they are.
    /// Empty only when no event is left up to the head (it reads past windows that hold only
    /// deleted events); callers that track how far they scanned use [`EventLog::read_page`].
    fn read_raw(
        &self,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<RawEvent>, StoreError> {
        let mut from = from;
        loop {
            let page = self.read_page(from, max, max_bytes)?;
            if !page.events.is_empty() || page.next <= from || page.next > self.head() {
                return Ok(page.events);
            }
            from = page.next;
        }
    }
    /// One bounded step of [`EventLog::read_raw`] that also says how far it examined the log,
    /// so a reader moves past deleted events it was not given.
    fn read_page(&self, from: u64, max: usize, max_bytes: usize) -> Result<Page, StoreError>;
    /// Whether `DeleteStream` hid this event of `stream_id`: a cheap in-memory check for
    /// readers that keep events they read earlier (consumer groups), so a deleted stream's
    /// events are not handed out from a copy.
    fn is_deleted(&self, stream_id: &str, stream_version: u64) -> bool;
    /// The first retained offset: retention removed every event below it (1 when none were).
    fn first_offset(&self) -> u64;
    /// Changes whenever retention moves the first retained offset.
    fn watch_first(&self) -> watch::Receiver<u64>;
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
    /// Deletes every event of a stream up to its current version: a tombstone written through
    /// the journal like any append, after which no read returns those events; the next
    /// [`EventLog::compact`] removes them from storage. Versions are not reused: the next
    /// append continues after the deleted version. [`StoreError::UnknownStream`] when the
    /// stream has no events; deleting it again with nothing new is a no-op.
    fn delete_stream(&self, stream_id: &str) -> DeleteFuture;
    /// Applies `rules` (moving the first retained offset) and removes from storage what is below
    /// it and the events of deleted streams. Blocking (it reads and rewrites sled): call it
    /// from a blocking thread. One at a time; backups wait for it and it waits for them.
    fn compact(&self, rules: &RetentionRules) -> Result<CompactionReport, StoreError>;
    /// Writes a consistent backup of the whole log and its records to `out` while appends go
    /// on; it holds every write acknowledged before it began. Blocking: call it from a blocking
    /// thread. Restore it with [`restore`].
    fn backup(&self, out: &mut dyn Write) -> Result<BackupSummary, StoreError>;
    /// The retained range and the data dir's size on disk. Blocking (it stats the files).
    fn info(&self) -> Result<LogInfo, StoreError>;
    /// Makes everything durable and stops accepting appends; used on graceful shutdown.
    fn close(&self) -> Result<(), StoreError>;
}

/// Shared handle to whichever log the server runs on.
pub type SharedLog = Arc<dyn EventLog>;
