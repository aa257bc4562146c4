//! Per-token abuse limits and the rejection counters.
//!
//! Counters are process-wide atomics: cheap on the hot path, readable by tests, and logged on
//! the 1st, 2nd, 4th, 8th... and every 1000th rejection of each kind, so a flood cannot flood
//! the log while an operator still sees that it happens and how often.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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

/// State one token carries across calls and reloads: its append bucket and stream slots.
#[derive(Debug)]
pub struct TokenQuota {
    bucket: Option<Mutex<Bucket>>,
    streams: Arc<Semaphore>,
    max_streams: usize,
}

#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenQuota {
    /// `rate` appends per second sustained, `burst` at once (0 rate = unlimited).
    pub fn new(rate: u32, burst: u32, max_streams: usize) -> Self {
        let bucket = (rate > 0).then(|| {
            let burst = f64::from(burst.max(1));
            Mutex::new(Bucket {
                rate: f64::from(rate),
                burst,
                tokens: burst,
                last: Instant::now(),
            })
        });
        Self {
            bucket,
            streams: Arc::new(Semaphore::new(max_streams)),
            max_streams,
        }
    }

    /// Takes one append from the bucket, or says how long until one is available.
    pub fn take_append(&self) -> Result<(), Duration> {
        let Some(bucket) = &self.bucket else {
            return Ok(());
        };
        // A poisoned lock only means another call panicked mid-update: the numbers are still
        // usable, and refusing every append forever would be worse.
        let mut b = bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let elapsed = now.duration_since(b.last).as_secs_f64();
        b.last = now;
        b.tokens = (b.tokens + elapsed * b.rate).min(b.burst);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - b.tokens) / b.rate;
        Err(Duration::from_secs_f64(wait).max(Duration::from_millis(1)))
    }

    /// One of this token's stream slots, held for the life of a Subscribe stream.
    pub fn take_stream(&self) -> Result<OwnedSemaphorePermit, usize> {
        self.streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| self.max_streams)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refuses_with_a_wait() {
        let quota = TokenQuota::new(10, 3, 1);
        for _ in 0..3 {
            assert!(quota.take_append().is_ok());
        }
        let wait = quota.take_append().unwrap_err();
        assert!(wait <= Duration::from_millis(101), "{wait:?}");
        std::thread::sleep(Duration::from_millis(120));
        assert!(quota.take_append().is_ok());
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let quota = TokenQuota::new(0, 0, 1);
        for _ in 0..10_000 {
            assert!(quota.take_append().is_ok());
        }
    }

    #[test]
    fn stream_slots_are_capped() {
        let quota = TokenQuota::new(0, 0, 2);
        let a = quota.take_stream().unwrap();
        let _b = quota.take_stream().unwrap();
        assert_eq!(quota.take_stream().unwrap_err(), 2);
        drop(a);
        assert!(quota.take_stream().is_ok());
    }
}
