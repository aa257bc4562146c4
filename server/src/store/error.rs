use thiserror::Error;

/// Why the log refused or failed an operation.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("stream {stream_id} is at version {actual}, expected {expected}")]
    VersionConflict {
        stream_id: String,
        expected: u64,
        actual: u64,
    },
    #[error("idempotency key {key} was already used for a different request")]
    IdempotencyMismatch { key: String },
    #[error("event id {id} is already stored at offset {offset}")]
    DuplicateEventId { id: String, offset: u64 },
    #[error("the log is closed")]
    Closed,
    #[error("the log failed earlier and refuses writes until restarted: {0}")]
    Poisoned(String),
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Journal(#[from] super::JournalError),
    #[error("corrupt data at {what}: {detail}")]
    Corrupt { what: String, detail: String },
    /// A read below the first retained offset: retention removed those events.
    #[error(
        "offset {requested} is below the first retained offset {first}: retention removed the events before it; resume from offset {first} (start.from_offset = {first}) or set start_at_first_retained"
    )]
    Trimmed { requested: u64, first: u64 },
    #[error("stream {stream_id:?} has no events to delete")]
    UnknownStream { stream_id: String },
    /// The NATS cluster did not answer or refused in a way the caller may retry (no quorum
    /// during a leader election, a lost connection, a timeout).
    #[error("nats: {0}")]
    Nats(String),
    /// What this backend does not do, with what to use instead.
    #[error("{0}")]
    Unsupported(String),
    /// A backup could not be written, or a backup file is incomplete or damaged.
    #[error("backup: {0}")]
    Backup(String),
}
