//! Per-token abuse limits: the append rate bucket and the Subscribe stream slots. Refusals are
//! counted in [`crate::rejections`].

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
