//! The retry policy, as pure functions: what an HTTP answer means for an event, when to try
//! again, and when a webhook has failed for so long that it is disabled.
//!
//! Everything here is decided from its arguments alone (the random jitter factor is passed
//! in), so the policy is tested without a network, a clock or a log.

use std::time::{Duration, SystemTime};

use crate::{clock::rfc3339, webhooks::config::WebhookConfig};

/// What an HTTP answer says about trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Success,
    /// 410: the receiver says the endpoint is gone for good.
    Gone,
    /// 4xx other than 408 and 429: sending the same request again will fail again.
    Permanent,
    /// Connection errors, timeouts, 408, 429, 5xx (and anything else unexpected).
    Retryable,
}

/// What happens to an event after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Delivered,
    /// Try again at this time (Unix ms).
    Retry(u64),
    DeadLetter,
    /// Disable the webhook, for this reason.
    Disable(String),
}

pub fn classify(status: u16) -> Class {
    match status {
        200..=299 => Class::Success,
        410 => Class::Gone,
        408 | 429 => Class::Retryable,
        400..=499 => Class::Permanent,
        _ => Class::Retryable,
    }
}

/// What an attempt's result means, given how many attempts the event has had. `jitter` is the
/// factor applied to a scheduled delay (see [`jitter_factor`]); a receiver's `Retry-After` is
/// obeyed as given, capped by `max_retry_after`.
pub fn decide(
    config: &WebhookConfig,
    class: Class,
    retry_after: Option<Duration>,
    attempt: u32,
    now: u64,
    jitter: f64,
) -> Decision {
    let max_attempts = config.retry_schedule.len() as u32 + 1;
    match class {
        Class::Success => Decision::Delivered,
        Class::Gone => Decision::Disable(format!(
            "the endpoint answered 410 Gone at {}; fix the endpoint and re-enable the webhook",
            rfc3339(now)
        )),
        Class::Permanent => Decision::DeadLetter,
        Class::Retryable if attempt >= max_attempts => Decision::DeadLetter,
        Class::Retryable => {
            let delay = match retry_after {
                Some(after) => after.min(config.max_retry_after),
                None => jittered(
                    config
                        .retry_schedule
                        .get(attempt.saturating_sub(1) as usize)
                        .copied()
                        .unwrap_or_default(),
                    jitter,
                ),
            };
            Decision::Retry(now + delay.as_millis() as u64)
        }
    }
}

/// A failed attempt's decision, or disabling the webhook when every attempt has failed since
/// `failing_since` (Unix ms) for at least `disable_after`.
pub fn disable_if_failing_too_long(
    decision: Decision,
    failing_since: u64,
    now: u64,
    disable_after: Duration,
) -> Decision {
    if matches!(decision, Decision::Delivered | Decision::Disable(_))
        || now.saturating_sub(failing_since) < disable_after.as_millis() as u64
    {
        return decision;
    }
    Decision::Disable(format!(
        "every delivery attempt failed since {}; fix the endpoint and re-enable the webhook",
        rfc3339(failing_since)
    ))
}

/// A `Retry-After` value as delay-seconds or an HTTP date (relative to `now`).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

/// A random factor in [0.8, 1.2), so that many webhooks failing together do not retry in
/// lockstep. The only impure part of the policy.
pub fn jitter_factor() -> f64 {
    rand::random_range(0.8..1.2)
}

fn jittered(delay: Duration, factor: f64) -> Duration {
    if delay.is_zero() {
        return delay;
    }
    delay.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> WebhookConfig {
        WebhookConfig {
            retry_schedule: vec![Duration::from_secs(5), Duration::from_secs(60)],
            max_retry_after: Duration::from_secs(30),
            ..WebhookConfig::default()
        }
    }

    #[test]
    fn statuses_are_classified_like_the_issue_says() {
        assert_eq!(classify(200), Class::Success);
        assert_eq!(classify(204), Class::Success);
        assert_eq!(classify(410), Class::Gone);
        assert_eq!(classify(408), Class::Retryable);
        assert_eq!(classify(429), Class::Retryable);
        assert_eq!(classify(400), Class::Permanent);
        assert_eq!(classify(404), Class::Permanent);
        assert_eq!(classify(500), Class::Retryable);
        assert_eq!(classify(503), Class::Retryable);
        assert_eq!(classify(302), Class::Retryable);
    }

    #[test]
    fn retries_follow_the_schedule_then_dead_letter() {
        let config = config();
        let now = 1_000_000;
        let decide =
            |attempt, jitter| decide(&config, Class::Retryable, None, attempt, now, jitter);
        assert_eq!(decide(1, 1.0), Decision::Retry(now + 5_000));
        assert_eq!(decide(1, 0.8), Decision::Retry(now + 4_000));
        assert_eq!(decide(2, 1.2), Decision::Retry(now + 72_000));
        assert_eq!(
            decide(3, 1.0),
            Decision::DeadLetter,
            "schedule of 2 = 3 attempts"
        );
    }

    #[test]
    fn retry_after_is_obeyed_up_to_its_cap_and_without_jitter() {
        let config = config();
        let retry = |after| decide(&config, Class::Retryable, Some(after), 1, 0, 1.2);
        assert_eq!(retry(Duration::from_secs(7)), Decision::Retry(7_000));
        assert_eq!(retry(Duration::from_secs(3600)), Decision::Retry(30_000));
    }

    #[test]
    fn permanent_failures_dead_letter_and_gone_disables() {
        let config = config();
        assert_eq!(
            decide(&config, Class::Permanent, None, 1, 0, 1.0),
            Decision::DeadLetter
        );
        assert_eq!(
            decide(&config, Class::Success, None, 3, 0, 1.0),
            Decision::Delivered
        );
        assert!(matches!(
            decide(&config, Class::Gone, None, 1, 0, 1.0),
            Decision::Disable(reason) if reason.contains("410 Gone")
        ));
    }

    #[test]
    fn a_webhook_failing_for_too_long_is_disabled() {
        let day = Duration::from_secs(24 * 3600);
        let ms = day.as_millis() as u64;
        let keep = disable_if_failing_too_long(Decision::Retry(5), 1, ms, day);
        assert_eq!(keep, Decision::Retry(5));
        let disabled = disable_if_failing_too_long(Decision::DeadLetter, 1, ms + 1, day);
        assert!(matches!(disabled, Decision::Disable(reason) if reason.contains("failed since")));
        let delivered = disable_if_failing_too_long(Decision::Delivered, 1, 10 * ms, day);
        assert_eq!(delivered, Decision::Delivered);
    }

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        let now = SystemTime::now();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        let later = now + Duration::from_secs(120);
        let parsed = parse_retry_after(&httpdate::fmt_http_date(later), now).expect("a date");
        assert!(parsed > Duration::from_secs(100) && parsed <= Duration::from_secs(120));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(10), jitter_factor());
            assert!(d >= Duration::from_secs(8) && d <= Duration::from_secs(12));
        }
        assert_eq!(jittered(Duration::ZERO, 1.1), Duration::ZERO);
    }
}
