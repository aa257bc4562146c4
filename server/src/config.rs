//! Server settings, with defaults that work with no flags at all.

use std::{path::PathBuf, time::Duration};

use crate::{store::SyncMode, webhooks::WebhookConfig};

/// Everything the server needs to run; `ServerConfig::new(dir)` gives the defaults.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub sync: SyncMode,
    /// Default heartbeat period for subscriptions that do not ask for one.
    pub heartbeat_interval: Duration,
    /// How long idempotency keys are remembered.
    pub idempotency_retention: Duration,
    pub limits: Limits,
    /// Webhook delivery: SSRF allow-list, timeouts, retry schedule, bounds.
    pub webhooks: WebhookConfig,
}

impl ServerConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            sync: SyncMode::Fdatasync,
            heartbeat_interval: Duration::from_secs(5),
            idempotency_retention: Duration::from_secs(24 * 60 * 60),
            limits: Limits::default(),
            webhooks: WebhookConfig::default(),
        }
    }
}

/// Request limits: each one protects memory or latency for every other client.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest gRPC message the server decodes (tonic answers RESOURCE_EXHAUSTED above it).
    pub max_message_bytes: usize,
    pub max_items_per_order: usize,
    pub max_events_per_publish: usize,
    pub max_payload_bytes: usize,
    pub max_metadata_entries: usize,
    /// Cap on simultaneously open Subscribe streams across the server.
    pub max_subscribers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 4 * 1024 * 1024,
            max_items_per_order: 100,
            max_events_per_publish: 1000,
            max_payload_bytes: 1024 * 1024,
            max_metadata_entries: 32,
            max_subscribers: 10_000,
        }
    }
}
