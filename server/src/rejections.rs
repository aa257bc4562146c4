//! The rejection counters: how many calls each security or abuse limit refused.
//!
//! A leaf module, so that `error.rs` (which counts every refusal it turns into a status) and
//! `auth` both depend on it rather than on each other. Counters are process-wide atomics:
//! cheap on the hot path, readable by tests, and logged on the 1st, 2nd, 4th, 8th... and every
//! 1000th rejection of each kind, so a flood cannot flood the log while an operator still sees
//! that it happens and how often.

use std::sync::atomic::{AtomicU64, Ordering};

use tracing::warn;

/// The rejection counters' keys. Refusals are [`crate::error::OrdoError`] values; turning one
/// into a status counts it here (see `OrdoError::rejection`). Only `Oversized`, which tonic
/// answers before any Ordo code runs, is counted by the auth layer directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No token or an unknown token.
    Unauthenticated,
    /// Valid token without the scope, or an event outside its prefixes.
    PermissionDenied,
    /// Per-token append rate exceeded.
    RateLimited,
    /// Per-token open subscription cap reached.
    TokenStreams,
    /// Server-wide subscriber cap reached.
    Subscribers,
    /// A call ran past the request timeout.
    Timeout,
    /// An open stream ended because its token was revoked or changed.
    Revoked,
    /// A request over the message size limit (refused by tonic's decoder, seen by the layer).
    Oversized,
}

const KINDS: usize = 8;
static COUNTS: [AtomicU64; KINDS] = [const { AtomicU64::new(0) }; KINDS];

impl Rejection {
    fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Unauthenticated => "unauthenticated",
            Rejection::PermissionDenied => "permission_denied",
            Rejection::RateLimited => "rate_limited",
            Rejection::TokenStreams => "token_stream_cap",
            Rejection::Subscribers => "subscriber_cap",
            Rejection::Timeout => "request_timeout",
            Rejection::Revoked => "stream_revoked",
            Rejection::Oversized => "message_too_large",
        }
    }

    /// Counts one rejection and logs it (sampled, see the module doc). `who` is a token *name*
    /// or "anonymous", never a token.
    pub fn record(self, who: &str, path: &str, reason: &str) -> u64 {
        let total = COUNTS[self.index()].fetch_add(1, Ordering::Relaxed) + 1;
        if total.is_power_of_two() || total.is_multiple_of(1000) {
            warn!(
                rejection = self.as_str(),
                total,
                token = who,
                path,
                reason,
                "request rejected"
            );
        }
        total
    }

    /// How many rejections of this kind since the process started.
    pub fn count(self) -> u64 {
        COUNTS[self.index()].load(Ordering::Relaxed)
    }
}

/// A snapshot of every counter, for the shutdown summary.
pub fn summary() -> Vec<(&'static str, u64)> {
    [
        Rejection::Unauthenticated,
        Rejection::PermissionDenied,
        Rejection::RateLimited,
        Rejection::TokenStreams,
        Rejection::Subscribers,
        Rejection::Timeout,
        Rejection::Revoked,
        Rejection::Oversized,
    ]
    .into_iter()
    .map(|r| (r.as_str(), r.count()))
    .collect()
}
