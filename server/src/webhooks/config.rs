//! Webhook delivery settings: plain data, read by the engine, the service and the retry policy.

use std::time::Duration;

use super::ssrf::IpNet;

/// Webhook delivery settings. The defaults follow Svix: a schedule spanning about a day and a
/// half, and endpoints disabled after five days of nothing but failures.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Networks webhooks may reach even though they are not public (e.g. `127.0.0.0/8` in
    /// tests, or a trusted internal subnet). Empty by default: SSRF protection is on.
    pub allow_nets: Vec<IpNet>,
    /// Refuse `http://` URLs.
    pub require_https: bool,
    /// Limit for one HTTP attempt: connect, send and response headers.
    pub attempt_timeout: Duration,
    /// Delays before the 2nd, 3rd, ... attempt. The first attempt is immediate, so an event gets
    /// `retry_schedule.len() + 1` attempts before it is dead-lettered. Jitter of +-20% is added.
    pub retry_schedule: Vec<Duration>,
    /// Cap on a receiver's `Retry-After`, so one header cannot park a webhook for days.
    pub max_retry_after: Duration,
    /// A webhook whose every attempt has failed for this long is disabled.
    pub disable_after: Duration,
    /// HTTP requests in flight across all webhooks.
    pub max_concurrent_deliveries: usize,
    /// Delivery attempts kept per webhook for `ListDeliveries` (older ones are deleted).
    pub max_attempts_kept: u64,
    /// Dead letters kept per webhook; beyond it the oldest is dropped (with a warning).
    pub max_dead_letters: usize,
    /// Most webhooks on one server.
    pub max_webhooks: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        Self {
            allow_nets: Vec::new(),
            require_https: false,
            attempt_timeout: Duration::from_secs(10),
            retry_schedule: vec![
                Duration::from_secs(5),
                minutes(5),
                minutes(30),
                minutes(120),
                minutes(300),
                minutes(600),
                minutes(600),
            ],
            max_retry_after: minutes(60),
            disable_after: Duration::from_secs(5 * 24 * 3600),
            max_concurrent_deliveries: 64,
            max_attempts_kept: 1000,
            max_dead_letters: 10_000,
            max_webhooks: 1000,
        }
    }
}
