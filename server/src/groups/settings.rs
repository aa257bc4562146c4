//! Checks a group's settings and fills in their defaults, so a stored group is always complete.

use std::time::Duration;

use ordo_api::v1::{
    ConsumerGroup, ConsumerStrategy, CreateGroupRequest, RetryBackoff, UpdateGroupRequest,
};

use super::records::StoredGroup;
use crate::{clock, error::OrdoError, filter::Matcher};

pub const DEFAULT_ACK_TIMEOUT_MS: u32 = 30_000;
pub const DEFAULT_MAX_DELIVERIES: u32 = 5;
pub const DEFAULT_BACKOFF_INITIAL_MS: u32 = 1_000;
pub const DEFAULT_BACKOFF_MAX_MS: u32 = 60_000;
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 100;
pub const MAX_IN_FLIGHT: u32 = 1_000;
/// Longest ack timeout, nack delay or extension: a day. Longer holds are usually a bug.
pub const MAX_DELAY_MS: u32 = 86_400_000;
/// Deliveries per event at most; beyond it a retry loop is a storm, not a retry.
pub const MAX_DELIVERIES: u32 = 1_000;
const MAX_NAME: usize = 64;

/// Group names: 1..=64 characters of `[A-Za-z0-9._-]`. They are key parts and appear in every
/// delivery id (`group/offset/attempt`), so `/` and `:` are out.
pub fn check_name(field: &str, name: &str) -> Result<(), OrdoError> {
    if name.is_empty() {
        return Err(OrdoError::invalid(format!("{field} is required")));
    }
    if name.len() > MAX_NAME {
        return Err(OrdoError::invalid(format!(
            "{field} is {} characters; the limit is {MAX_NAME}",
            name.len()
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(OrdoError::invalid(format!(
            "{field} contains {bad:?}; use only letters, digits and . _ -"
        )));
    }
    Ok(())
}

/// A new group's stored form. `start` is checked by the caller against the log's head.
pub fn from_create(req: &CreateGroupRequest) -> Result<StoredGroup, OrdoError> {
    check_name("name", &req.name)?;
    let filter = req.filter.clone().unwrap_or_default();
    Matcher::new(Some(&filter))?;
    let now = clock::now_ms();
    let mut group = StoredGroup {
        name: req.name.clone(),
        types: filter.types,
        stream_ids: filter.stream_ids,
        start: req.start,
        created_at_ms: now,
        updated_at_ms: now,
        ..StoredGroup::default()
    };
    apply(
        &mut group,
        Changes {
            ack_timeout_ms: Some(req.ack_timeout_ms),
            max_deliveries: Some(req.max_deliveries),
            backoff: req.retry_backoff.as_ref(),
            max_in_flight: Some(req.max_in_flight),
            strategy: Some(req.strategy),
        },
    )?;
    Ok(group)
}

/// `group` with the settings an update sets; the rest unchanged.
pub fn updated(group: &StoredGroup, req: &UpdateGroupRequest) -> Result<StoredGroup, OrdoError> {
    let mut next = group.clone();
    apply(
        &mut next,
        Changes {
            ack_timeout_ms: req.ack_timeout_ms,
            max_deliveries: req.max_deliveries,
            backoff: req.retry_backoff.as_ref(),
            max_in_flight: req.max_in_flight,
            strategy: req.strategy,
        },
    )?;
    next.updated_at_ms = clock::now_ms();
    Ok(next)
}

struct Changes<'a> {
    ack_timeout_ms: Option<u32>,
    max_deliveries: Option<u32>,
    backoff: Option<&'a RetryBackoff>,
    max_in_flight: Option<u32>,
    strategy: Option<i32>,
}

fn apply(group: &mut StoredGroup, changes: Changes<'_>) -> Result<(), OrdoError> {
    if let Some(ms) = changes.ack_timeout_ms {
        group.ack_timeout_ms = bounded("ack_timeout_ms", ms, DEFAULT_ACK_TIMEOUT_MS, MAX_DELAY_MS)?;
    }
    if let Some(n) = changes.max_deliveries {
        group.max_deliveries =
            bounded("max_deliveries", n, DEFAULT_MAX_DELIVERIES, MAX_DELIVERIES)?;
    }
    if let Some(backoff) = changes.backoff {
        let initial = bounded(
            "retry_backoff.initial_ms",
            backoff.initial_ms,
            DEFAULT_BACKOFF_INITIAL_MS,
            MAX_DELAY_MS,
        )?;
        let max = bounded(
            "retry_backoff.max_ms",
            backoff.max_ms,
            DEFAULT_BACKOFF_MAX_MS.max(initial),
            MAX_DELAY_MS,
        )?;
        if max < initial {
            return Err(OrdoError::invalid(format!(
                "retry_backoff.max_ms {max} is below retry_backoff.initial_ms {initial}"
            )));
        }
        group.backoff_initial_ms = initial;
        group.backoff_max_ms = max;
    } else if group.backoff_initial_ms == 0 {
        group.backoff_initial_ms = DEFAULT_BACKOFF_INITIAL_MS;
        group.backoff_max_ms = DEFAULT_BACKOFF_MAX_MS;
    }
    if let Some(n) = changes.max_in_flight {
        group.max_in_flight = bounded("max_in_flight", n, DEFAULT_MAX_IN_FLIGHT, MAX_IN_FLIGHT)?;
    }
    if let Some(strategy) = changes.strategy {
        group.strategy = match ConsumerStrategy::try_from(strategy) {
            Ok(ConsumerStrategy::Unspecified) | Ok(ConsumerStrategy::RoundRobin) => {
                ConsumerStrategy::RoundRobin as i32
            }
            Ok(ConsumerStrategy::PinnedByStream) => ConsumerStrategy::PinnedByStream as i32,
            Err(_) => {
                return Err(OrdoError::invalid(format!(
                    "strategy {strategy} is unknown; use CONSUMER_STRATEGY_ROUND_ROBIN or CONSUMER_STRATEGY_PINNED_BY_STREAM"
                )));
            }
        };
    }
    Ok(())
}

fn bounded(field: &str, value: u32, default: u32, max: u32) -> Result<u32, OrdoError> {
    match value {
        0 => Ok(default),
        n if n > max => Err(OrdoError::invalid(format!(
            "{field} {n} is over the maximum of {max}"
        ))),
        n => Ok(n),
    }
}

impl StoredGroup {
    pub fn matcher(&self) -> Result<Matcher, OrdoError> {
        Matcher::from_lists(
            ("filter.types", &self.types),
            ("filter.stream_ids", &self.stream_ids),
        )
    }

    pub fn pinned(&self) -> bool {
        self.strategy == ConsumerStrategy::PinnedByStream as i32
    }

    pub fn ack_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.ack_timeout_ms))
    }

    /// The wait before delivery `failures + 1`: the initial backoff, doubling per failure.
    pub fn backoff(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(31);
        let ms = u64::from(self.backoff_initial_ms)
            .saturating_mul(1u64 << shift)
            .min(u64::from(self.backoff_max_ms));
        Duration::from_millis(ms)
    }

    /// The API view of the settings; progress fields are left for the caller.
    pub fn to_api(&self) -> ConsumerGroup {
        ConsumerGroup {
            name: self.name.clone(),
            filter: Some(ordo_api::v1::EventFilter {
                types: self.types.clone(),
                stream_ids: self.stream_ids.clone(),
            }),
            start: self.start,
            ack_timeout_ms: self.ack_timeout_ms,
            max_deliveries: self.max_deliveries,
            retry_backoff: Some(RetryBackoff {
                initial_ms: self.backoff_initial_ms,
                max_ms: self.backoff_max_ms,
            }),
            max_in_flight: self.max_in_flight,
            strategy: self.strategy,
            created_at: clock::timestamp(self.created_at_ms),
            updated_at: clock::timestamp(self.updated_at_ms),
            ..ConsumerGroup::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bounds() {
        let group = from_create(&CreateGroupRequest {
            name: "billing".into(),
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(group.ack_timeout_ms, DEFAULT_ACK_TIMEOUT_MS);
        assert_eq!(group.max_deliveries, DEFAULT_MAX_DELIVERIES);
        assert_eq!(group.max_in_flight, DEFAULT_MAX_IN_FLIGHT);
        assert!(!group.pinned());
        assert_eq!(group.backoff(1), Duration::from_secs(1));
        assert_eq!(group.backoff(2), Duration::from_secs(2));
        assert_eq!(group.backoff(40), Duration::from_secs(60));
        let err = from_create(&CreateGroupRequest {
            name: "a/b".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("contains '/'"), "{err}");
        let err = from_create(&CreateGroupRequest {
            name: "g".into(),
            max_in_flight: 5000,
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "max_in_flight 5000 is over the maximum of 1000"
        );
    }
}
