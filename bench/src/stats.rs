//! Latency summaries. Samples are kept whole (microseconds, u32) and sorted once: a few million
//! samples cost a few MB, and exact percentiles beat a histogram's buckets at this scale.

use std::time::Duration;

/// Sorted latency samples in microseconds.
#[derive(Debug, Default, Clone)]
pub struct Latencies(Vec<u32>);

impl Latencies {
    pub fn from_samples(mut samples: Vec<u32>) -> Self {
        samples.sort_unstable();
        Self(samples)
    }

    pub fn merge(parts: impl IntoIterator<Item = Vec<u32>>) -> Self {
        Self::from_samples(parts.into_iter().flatten().collect())
    }

    pub fn count(&self) -> usize {
        self.0.len()
    }

    /// The q-quantile (0.0..=1.0) in milliseconds, or 0 with no samples.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        let rank = ((self.0.len() as f64 - 1.0) * q).round() as usize;
        f64::from(self.0[rank.min(self.0.len() - 1)]) / 1000.0
    }
}

/// Microseconds, saturating at u32::MAX (71 minutes).
pub fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}
