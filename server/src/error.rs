//! Ordo's domain errors and the one place where they become gRPC statuses.
//!
//! Every refusal a caller can see is an [`OrdoError`]; `From<OrdoError> for Status` is the only
//! code that builds a [`Status`] (it counts refusals in [`crate::rejections`]). So every status message is clipped the same way, every
//! security or abuse refusal is counted and logged the same way, and the mapping from domain
//! to wire codes can be read in one match.

use std::time::Duration;

use ordo_api::v1::AppendRejected;
use thiserror::Error;
use tonic::{Code, Status, metadata::MetadataValue};
use tracing::error;

use crate::{rejections::Rejection, store::StoreError};

/// Who a refusal concerns, for the sampled rejection log: a token's *name* (never the token),
/// the gRPC path and a few words of reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The token's name; "anonymous" before a token is known, "-" when the layer cannot tell.
    pub token: String,
    pub path: String,
    pub reason: &'static str,
}

impl Refused {
    pub fn new(token: impl Into<String>, path: impl Into<String>, reason: &'static str) -> Self {
        Self {
            token: token.into(),
            path: path.into(),
            reason,
        }
    }
}

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
    /// A bound was reached (e.g. a consumer-group member that does not read its deliveries).
    #[error("{0}")]
    ResourceExhausted(String),
    /// A position outside the log.
    #[error("{0}")]
    OutOfRange(String),
    /// Try again later: the server is shutting down or the log closed.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No usable bearer token (missing, malformed or unknown).
    #[error("{message}")]
    Unauthenticated { message: String, refused: Refused },
    /// A valid token without the scope, or the event-type/stream prefixes, the call needs.
    #[error("{message}")]
    PermissionDenied { message: String, refused: Refused },
    /// The token is over its append rate; the status tells when to retry (`retry-after-ms`).
    #[error(
        "token {:?} is over its append rate of {rate}/s (append_rate_per_token); retry in {retry_after_ms} ms",
        .refused.token
    )]
    RateLimited {
        rate: u32,
        retry_after_ms: u64,
        refused: Refused,
    },
    /// The token already holds its share of Subscribe streams.
    #[error(
        "token {:?} already has {max} open subscriptions (max_subscriptions_per_token); close one or retry later",
        .refused.token
    )]
    TokenStreamCap { max: usize, refused: Refused },
    /// The server already serves as many Subscribe streams as it allows.
    #[error("the server already serves {max} subscriptions (max_subscribers); retry later")]
    SubscriberCap { max: usize, refused: Refused },
    /// An open stream's token was revoked or its grant changed.
    #[error(
        "the token {:?} of this subscription was revoked or changed; reconnect with a valid token",
        .refused.token
    )]
    Revoked { refused: Refused },
    /// A client-streaming call's request stream broke mid-call (e.g. a message over
    /// max_message_bytes, or one that does not decode): the answers already sent stand, the rest
    /// of the stream was not read.
    #[error(
        "the request stream broke after the events answered so far: {message}; resend the unanswered events on a new stream"
    )]
    RequestStream { code: Code, message: String },
    /// The call took longer than the server's request timeout to answer.
    #[error(
        "the call took longer than the server's request timeout of {} ms",
        .limit.as_millis()
    )]
    Timeout { limit: Duration, refused: Refused },
}

impl OrdoError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidArgument(message.into())
    }

    /// The error a broken request stream ends its call with. tonic reports an undecodable
    /// message as INTERNAL, but it is the client's: that becomes INVALID_ARGUMENT.
    pub fn request_stream(status: &Status) -> Self {
        let code = match status.code() {
            Code::Internal | Code::Unknown => Code::InvalidArgument,
            code => code,
        };
        Self::RequestStream {
            code,
            message: status.message().to_string(),
        }
    }

    /// The rejection counter this error counts against, and for whom: security and abuse
    /// refusals only.
    fn rejection(&self) -> Option<(Rejection, &Refused)> {
        Some(match self {
            OrdoError::Unauthenticated { refused, .. } => (Rejection::Unauthenticated, refused),
            OrdoError::PermissionDenied { refused, .. } => (Rejection::PermissionDenied, refused),
            OrdoError::RateLimited { refused, .. } => (Rejection::RateLimited, refused),
            OrdoError::TokenStreamCap { refused, .. } => (Rejection::TokenStreams, refused),
            OrdoError::SubscriberCap { refused, .. } => (Rejection::Subscribers, refused),
            OrdoError::Revoked { refused } => (Rejection::Revoked, refused),
            OrdoError::Timeout { refused, .. } => (Rejection::Timeout, refused),
            _ => return None,
        })
    }

    fn code(&self) -> Code {
        match self {
            OrdoError::InvalidArgument(_) => Code::InvalidArgument,
            OrdoError::NotFound(_) => Code::NotFound,
            OrdoError::FailedPrecondition(_) => Code::FailedPrecondition,
            OrdoError::Aborted(_) => Code::Aborted,
            OrdoError::AlreadyExists(_) => Code::AlreadyExists,
            OrdoError::ResourceExhausted(_) => Code::ResourceExhausted,
            OrdoError::OutOfRange(_) => Code::OutOfRange,
            OrdoError::Unavailable(_) => Code::Unavailable,
            OrdoError::Store(store) => match store {
                StoreError::VersionConflict { .. } => Code::Aborted,
                StoreError::IdempotencyMismatch { .. } | StoreError::DuplicateEventId { .. } => {
                    Code::AlreadyExists
                }
                StoreError::Closed | StoreError::Poisoned(_) | StoreError::Nats(_) => {
                    Code::Unavailable
                }
                StoreError::Unsupported(_) => Code::FailedPrecondition,
                StoreError::Trimmed { .. } => Code::OutOfRange,
                StoreError::UnknownStream { .. } => Code::NotFound,
                StoreError::Backup(_) => Code::FailedPrecondition,
                StoreError::Sled(_)
                | StoreError::Io(_)
                | StoreError::Journal(_)
                | StoreError::Corrupt { .. } => Code::Internal,
            },
            OrdoError::Unauthenticated { .. } | OrdoError::Revoked { .. } => Code::Unauthenticated,
            OrdoError::PermissionDenied { .. } => Code::PermissionDenied,
            OrdoError::RateLimited { .. }
            | OrdoError::TokenStreamCap { .. }
            | OrdoError::SubscriberCap { .. } => Code::ResourceExhausted,
            OrdoError::Timeout { .. } => Code::DeadlineExceeded,
            OrdoError::RequestStream { code, .. } => *code,
        }
    }
}

impl OrdoError {
    /// An AppendStream's refusal of one event: the code and message a Publish of that event
    /// alone would end with, clipped and counted exactly the same way (it goes through the
    /// conversion below), but sent as a message so that the stream goes on.
    pub fn into_rejection(self, client_seq: u64) -> AppendRejected {
        let status = Status::from(self);
        AppendRejected {
            client_seq,
            code: status.code() as i32,
            message: status.message().to_string(),
        }
    }
}

impl From<OrdoError> for Status {
    fn from(err: OrdoError) -> Self {
        let message = err.to_string();
        let code = err.code();
        if code == Code::Internal {
            error!(error = %message, "storage failure");
        }
        if let Some((rejection, refused)) = err.rejection() {
            rejection.record(&refused.token, &refused.path, refused.reason);
        }
        let mut status = Status::new(code, clip(&message).into_owned());
        if let OrdoError::RateLimited { retry_after_ms, .. } = err
            && let Ok(value) = MetadataValue::try_from(retry_after_ms.to_string())
        {
            status.metadata_mut().insert("retry-after-ms", value);
        }
        status
    }
}

/// Longest status message sent, in bytes. Messages quote the offending value, and a hostile
/// 1 MB id must not become a 1 MB `grpc-message` header, which HTTP/2 peers reject as a
/// protocol error (found by the fuzz suite, server/tests/fuzz.rs).
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

    #[test]
    fn refusals_map_to_their_codes_and_are_counted() {
        let refused = || Refused::new("ci", "/ordo.v1.EventService/Publish", "test");
        let before = Rejection::RateLimited.count();
        let status = Status::from(OrdoError::RateLimited {
            rate: 5,
            retry_after_ms: 200,
            refused: refused(),
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status.message().contains("retry in 200 ms"),
            "{}",
            status.message()
        );
        assert_eq!(
            status
                .metadata()
                .get("retry-after-ms")
                .map(|v| v.to_str().ok()),
            Some(Some("200"))
        );
        assert!(Rejection::RateLimited.count() > before);

        let cases = [
            (
                OrdoError::Revoked { refused: refused() },
                Code::Unauthenticated,
            ),
            (
                OrdoError::SubscriberCap {
                    max: 1,
                    refused: refused(),
                },
                Code::ResourceExhausted,
            ),
            (
                OrdoError::Timeout {
                    limit: Duration::from_millis(5),
                    refused: refused(),
                },
                Code::DeadlineExceeded,
            ),
            (
                OrdoError::PermissionDenied {
                    message: "no".into(),
                    refused: refused(),
                },
                Code::PermissionDenied,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(Status::from(err).code(), code);
        }
    }

    #[test]
    fn refusal_messages_are_clipped_too() {
        let status = Status::from(OrdoError::PermissionDenied {
            message: "x".repeat(10 * MAX_STATUS_MESSAGE),
            refused: Refused::new("ci", "-", "test"),
        });
        assert!(status.message().len() < MAX_STATUS_MESSAGE + 40);
    }
}
