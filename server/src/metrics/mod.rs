//! Prometheus metrics: what the server measures, and the `/metrics` listener that serves it.
//!
//! Off by default; `--metrics-listen ADDR` ([`crate::config::ServerConfig::metrics_listen`])
//! turns it on. docs/operations.md lists every series with its type, labels and meaning.
//!
//! # Free when off
//!
//! Everything is recorded through the `metrics` facade. Until a recorder is installed (only
//! [`install`], called by `server::run` when a metrics address is configured), its macros
//! return no-op handles: recording is a load of the global recorder and a branch. Call sites
//! therefore pass only static names and numbers they already have; the gRPC layer, whose labels
//! are per method, checks [`enabled`] once per call and otherwise does nothing at all.
//!
//! # One recorder per process
//!
//! The facade's recorder is process-wide, so it is installed once per process, by the first
//! server that asks for metrics; a second server in the same process (only tests start
//! several) serves the same registry: its counters add up with the first one's. Gauges that
//! describe one server's state (head, disk bytes, webhook backlog) are set by the scrape
//! itself, from the server that answers it ([`ScrapeSources`]), so each server's scrape shows its own.
//! Production runs one server per process, and the tests that assert on metrics run the real
//! binary (one process per server), so their counts are exact.
//!
//! The alternative, a per-server registry (prometheus-client's `Registry`) handed down to the
//! journal writer thread, every subscription task and every webhook task, would thread a handle
//! through the store's options and half the constructors of the server, for an isolation only
//! in-process tests would use.
//!
//! # Where each kind of series comes from
//!
//! - [`grpc`]: the go-grpc-prometheus series (`grpc_server_*`), from a tower layer outside the
//!   auth layer, so refused calls are counted too.
//! - Events where they happen, through the small functions below: group commits and fsyncs
//!   (the writer and the journal), subscriptions, webhook attempts and dead letters.
//! - State read when scraped ([`ScrapeSources`]): the head, disk bytes, the rejection counters of
//!   [`crate::rejections`], the webhook backlog. Reading them costs nothing between scrapes.
//!
//! # Consumer groups
//!
//! Each group's task reports its lag with [`consumer_group_lag`] after every round (head minus
//! the group's settled-through offset); it sets the gauge `ordo_consumer_group_lag_events{group}`.
//! One series per group; a server holds at most 1,000 groups.

mod endpoint;
pub mod framing;
pub mod grpc;
mod recorder;
mod scrape;

use std::time::Duration;

pub use endpoint::{MetricsListener, MetricsServer, MetricsStartError};
pub use recorder::{enabled, install};
pub use scrape::ScrapeSources;

/// Outcome labels of `ordo_webhook_deliveries_total`, one per delivery decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Succeeded,
    RetryScheduled,
    DeadLettered,
    WebhookDisabled,
}

impl DeliveryOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Succeeded => "succeeded",
            DeliveryOutcome::RetryScheduled => "retry_scheduled",
            DeliveryOutcome::DeadLettered => "dead_lettered",
            DeliveryOutcome::WebhookDisabled => "webhook_disabled",
        }
    }
}

/// One group commit reached the journal: `events` events of `bytes` encoded bytes. Called by
/// the writer thread once per frame.
pub fn group_committed(events: u64, bytes: usize) {
    metrics::counter!(recorder::APPENDED_EVENTS).increment(events);
    metrics::counter!(recorder::APPENDED_BYTES).increment(bytes as u64);
    metrics::histogram!(recorder::GROUP_COMMIT_EVENTS).record(events as f64);
}

/// One journal `fdatasync` took `took`.
pub fn fsynced(took: Duration) {
    metrics::histogram!(recorder::FSYNC_SECONDS).record(took.as_secs_f64());
}

/// A live Subscribe stream: counts in `ordo_subscribers` while it is alive.
pub struct SubscriberGauge(());

impl SubscriberGauge {
    pub fn open() -> Self {
        metrics::gauge!(recorder::SUBSCRIBERS).increment(1.0);
        Self(())
    }
}

impl Drop for SubscriberGauge {
    fn drop(&mut self) {
        metrics::gauge!(recorder::SUBSCRIBERS).decrement(1.0);
    }
}

/// A subscription is about to read the log: it is `behind` events behind the durable head.
pub fn subscriber_lag(behind: u64) {
    metrics::histogram!(recorder::SUBSCRIBER_LAG).record(behind as f64);
}

/// A webhook delivery attempt was decided and recorded.
pub fn webhook_delivery(outcome: DeliveryOutcome) {
    metrics::counter!(recorder::WEBHOOK_DELIVERIES, "outcome" => outcome.as_str()).increment(1);
}

/// Dead letters were stored (an event dead-lettered, or the count found at start).
pub fn dead_letters_added(count: u64) {
    metrics::gauge!(recorder::WEBHOOK_DEAD_LETTERS).increment(count as f64);
}

/// Dead letters were removed (redriven, or deleted with their webhook).
pub fn dead_letters_removed(count: u64) {
    metrics::gauge!(recorder::WEBHOOK_DEAD_LETTERS).decrement(count as f64);
}

/// The consumer-group hook (see the module doc): `lag` events between the head and what
/// `group` has committed.
pub fn consumer_group_lag(group: &str, lag: u64) {
    if enabled() {
        metrics::gauge!(recorder::CONSUMER_GROUP_LAG, "group" => group.to_string()).set(lag as f64);
    }
}
