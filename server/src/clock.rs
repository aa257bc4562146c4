//! The millisecond wall clock that records and cursors store, and its protobuf form.
//!
//! Stored times are Unix milliseconds (`u64`, 0 = "not set") so records stay small and compare
//! as integers; the API shows them as `google.protobuf.Timestamp`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    to_ms(SystemTime::now())
}

/// Unix milliseconds `ago` before now; 0 if that is before the epoch.
pub fn ms_ago(ago: Duration) -> u64 {
    SystemTime::now().checked_sub(ago).map_or(0, to_ms)
}

fn to_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Unix milliseconds as a protobuf timestamp; None for 0 ("not set").
pub fn timestamp(ms: u64) -> Option<prost_types::Timestamp> {
    (ms != 0).then(|| prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    })
}

/// Unix milliseconds as RFC 3339 text, for messages; empty for 0.
pub fn rfc3339(ms: u64) -> String {
    timestamp(ms).map(|t| t.to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_means_not_set() {
        assert_eq!(timestamp(0), None);
        assert_eq!(rfc3339(0), "");
        let t = timestamp(1_500).expect("set");
        assert_eq!((t.seconds, t.nanos), (1, 500_000_000));
        assert!(ms_ago(Duration::from_secs(60)) < now_ms());
    }
}
