//! One error type for every client call, so callers can branch on what happened (retry, fix the
//! request, re-read and retry) instead of parsing gRPC status strings.

use tonic::{Code, Status};

/// What a client call failed with. The server's message is kept verbatim: Ordo's messages say
/// what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The order (or other entity) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// Optimistic concurrency failed (`ABORTED`): re-read the entity and retry.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The request is malformed or breaks a limit; sending it again unchanged fails again.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An idempotency key or event id was already used for a different request.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The request is valid but the entity's state forbids it (e.g. paying a cancelled order).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A start position beyond the log's head, usually a cursor from another data dir.
    #[error("out of range: {0}")]
    OutOfRange(String),
    /// The server is down, shutting down or unreachable: retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The server refused the credentials (or their absence).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The credentials are valid but lack the scope (or event prefix) this call needs.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// Any other gRPC status.
    #[error("{code:?}: {message}")]
    Other {
        /// The gRPC status code.
        code: Code,
        /// The server's message.
        message: String,
    },
    /// The client could not be set up: a bad URL, token or an option that is not supported yet.
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// The first connection to the server failed.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The address that was dialled.
        addr: String,
        /// Why, as reported by the transport.
        reason: String,
    },
    /// Reading or writing a subscription cursor file failed.
    #[error("cursor file {path}: {source}")]
    Cursor {
        /// The cursor file.
        path: std::path::PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl ClientError {
    /// True when the same call may succeed later without any change: the server was unreachable,
    /// restarting or busy. Subscriptions reconnect on these and give up on the rest.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Unavailable(_) | ClientError::Connect { .. } => true,
            ClientError::Other { code, .. } => matches!(
                code,
                Code::Unknown
                    | Code::Internal
                    | Code::Cancelled
                    | Code::DeadlineExceeded
                    | Code::ResourceExhausted
            ),
            _ => false,
        }
    }
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        let message = status.message().to_string();
        match status.code() {
            Code::NotFound => ClientError::NotFound(message),
            Code::Aborted => ClientError::Conflict(message),
            Code::InvalidArgument => ClientError::InvalidArgument(message),
            Code::AlreadyExists => ClientError::AlreadyExists(message),
            Code::FailedPrecondition => ClientError::FailedPrecondition(message),
            Code::OutOfRange => ClientError::OutOfRange(message),
            Code::Unavailable => ClientError::Unavailable(message),
            Code::Unauthenticated => ClientError::Unauthenticated(message),
            Code::PermissionDenied => ClientError::PermissionDenied(message),
            code => ClientError::Other { code, message },
        }
    }
}

/// Shorthand for results of client calls.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
