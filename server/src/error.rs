//! Ordo's domain errors and the one place where they become gRPC statuses.

use thiserror::Error;
use tonic::{Code, Status};
use tracing::error;

use crate::store::StoreError;

/// Everything a request can fail with. Messages are lower-case and say what to fix.
#[derive(Debug, Error)]
pub enum OrdoError {
    /// The request is malformed or breaks a limit; retrying it unchanged will fail again.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    /// The request is valid but the entity's state forbids it (e.g. an illegal status change).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Optimistic concurrency failed: re-read and retry.
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// A position outside the log.
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl OrdoError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidArgument(message.into())
    }
}

impl From<OrdoError> for Status {
    fn from(err: OrdoError) -> Self {
        let message = err.to_string();
        let code = match err {
            OrdoError::InvalidArgument(_) => Code::InvalidArgument,
            OrdoError::NotFound(_) => Code::NotFound,
            OrdoError::FailedPrecondition(_) => Code::FailedPrecondition,
            OrdoError::Aborted(_) => Code::Aborted,
            OrdoError::AlreadyExists(_) => Code::AlreadyExists,
            OrdoError::OutOfRange(_) => Code::OutOfRange,
            OrdoError::Unavailable(_) => Code::Unavailable,
            OrdoError::Store(store) => match store {
                StoreError::VersionConflict { .. } => Code::Aborted,
                StoreError::IdempotencyMismatch { .. } | StoreError::DuplicateEventId { .. } => {
                    Code::AlreadyExists
                }
                StoreError::Closed | StoreError::Poisoned(_) => Code::Unavailable,
                StoreError::Sled(_)
                | StoreError::Io(_)
                | StoreError::Journal(_)
                | StoreError::Corrupt { .. } => {
                    error!(error = %message, "storage failure");
                    Code::Internal
                }
            },
        };
        Status::new(code, clip(&message).into_owned())
    }
}

/// Longest status message sent, in bytes. Messages quote the offending value, and a hostile
/// 1 MB id must not become a 1 MB `grpc-message` header, which HTTP/2 peers reject as a
/// protocol error (found by tests/fuzz.rs).
pub const MAX_STATUS_MESSAGE: usize = 1024;

/// `text` cut to [`MAX_STATUS_MESSAGE`] bytes at a character boundary, marked when cut.
pub fn clip(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= MAX_STATUS_MESSAGE {
        return text.into();
    }
    let mut end = MAX_STATUS_MESSAGE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes, truncated)", &text[..end], text.len()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_clipped_on_a_char_boundary() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(MAX_STATUS_MESSAGE);
        let clipped = clip(&long);
        assert!(clipped.len() < MAX_STATUS_MESSAGE + 40, "{}", clipped.len());
        assert!(clipped.ends_with("truncated)"));
    }
}
