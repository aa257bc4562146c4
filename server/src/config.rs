//! Server settings, with defaults that work with no flags at all.
//!
//! Plain data only: no handles, no open files. What the server builds from it (the loaded
//! token set, the log) lives in `server::run`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use crate::{
    admin::RetentionConfig,
    store::{LogOptions, SyncMode},
    webhooks::WebhookConfig,
};

/// Everything the server needs to run; `ServerConfig::new(dir)` gives the defaults.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// With sled: the log itself. With NATS: only this node's derived copy of the log (rebuilt
    /// from JetStream at every start), so nothing in it needs a backup.
    pub data_dir: PathBuf,
    /// Where the log lives: the embedded sled store (default) or a NATS JetStream cluster.
    pub store: StoreBackend,
    /// How other nodes name this one to clients (`host:port`), e.g. in the UNAVAILABLE that
    /// points webhook and consumer-group calls at the node running them. Defaults to the
    /// listen address.
    pub advertise_addr: Option<String>,
    pub sync: SyncMode,
    /// Largest journal segment file, in bytes.
    pub journal_segment_bytes: u64,
    /// How often sled is flushed behind the journal.
    pub sled_flush_interval: Duration,
    /// Default heartbeat period for subscriptions that do not ask for one.
    pub heartbeat_interval: Duration,
    /// How long idempotency keys are remembered.
    pub idempotency_retention: Duration,
    /// Which events are kept, and how often compaction runs (docs/operations.md).
    pub retention: RetentionConfig,
    pub limits: Limits,
    /// Webhook delivery: SSRF allow-list, timeouts, retry schedule, bounds.
    pub webhooks: WebhookConfig,
    /// Bearer tokens; off (dev mode) by default, which only a loopback bind allows.
    pub auth: AuthConfig,
    /// TLS for the gRPC port; plaintext when `None`.
    pub tls: Option<TlsConfig>,
    /// Where to serve Prometheus metrics (`GET /metrics`, plain HTTP); off when `None`, and then
    /// nothing is recorded. See `crate::metrics`.
    pub metrics_listen: Option<SocketAddr>,
}

impl ServerConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            store: StoreBackend::Sled,
            advertise_addr: None,
            sync: SyncMode::Fdatasync,
            journal_segment_bytes: LogOptions::default().journal_segment_bytes,
            sled_flush_interval: LogOptions::default().sled_flush_interval,
            heartbeat_interval: Duration::from_secs(5),
            idempotency_retention: Duration::from_secs(24 * 60 * 60),
            retention: RetentionConfig::default(),
            limits: Limits::default(),
            webhooks: WebhookConfig::default(),
            auth: AuthConfig::default(),
            tls: None,
            metrics_listen: None,
        }
    }
}

/// Which log the server runs on. See docs/scale-out.md.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreBackend {
    /// The embedded journal + sled store in `data_dir`: zero infrastructure, one node.
    #[default]
    Sled,
    /// A JetStream stream is the log; any number of stateless Ordo nodes serve it.
    Nats(NatsConfig),
}

/// How to reach and lay out the JetStream log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// Seed URLs of the cluster (`nats://host:4222`); the client learns the rest.
    pub urls: Vec<String>,
    /// Name of the JetStream stream that holds the log; the records stream and the lease
    /// bucket are named after it, so several Ordo deployments can share one cluster.
    pub stream: String,
    /// Replicas of every stream Ordo creates (1, 3 or 5). Only used when creating them.
    pub replicas: usize,
}

impl NatsConfig {
    pub fn new(urls: Vec<String>) -> Self {
        Self {
            urls,
            stream: "ORDO".into(),
            replicas: 3,
        }
    }
}

/// Who may call. See docs/security.md.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The tokens file (TOML, see docs/security.md), read when the server starts. `None` turns
    /// auth off: allowed only on a loopback address unless `insecure` is set. Callers that
    /// reload it keep their own handle and use `server::run_with_auth`.
    pub tokens_file: Option<PathBuf>,
    /// Serve without auth on a non-loopback address. Never the default: an open event log on a
    /// network is a data leak.
    pub insecure: bool,
    /// Health checks without a token (load balancers rarely carry one).
    pub open_health: bool,
    /// Reflection without a token (it reveals only the public API).
    pub open_reflection: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            tokens_file: None,
            insecure: false,
            open_health: true,
            open_reflection: true,
        }
    }
}

/// PEM files for TLS; with `client_ca`, clients must present a certificate it signed (mTLS).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
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
    /// HTTP/2 streams (concurrent calls) one connection may open; more wait for a free one.
    pub max_concurrent_streams_per_connection: u32,
    /// Open Subscribe streams per token, so one client cannot take every subscriber slot.
    pub max_subscriptions_per_token: usize,
    /// Append calls (Publish, CreateOrder, UpdateOrderStatus, CancelOrder, and opening an
    /// AppendStream) per second per token, sustained; 0 = unlimited. Not applied in dev mode
    /// (no tokens).
    pub append_rate_per_token: u32,
    /// Append calls a token may make at once before the rate applies.
    pub append_burst_per_token: u32,
    /// Events one AppendStream may have unanswered (received, not yet acked or rejected): the
    /// server stops reading the stream while this many are in flight, so a producer that does
    /// not read its acks holds at most this many events' worth of server memory.
    pub append_stream_window: usize,
    /// Bytes of events one AppendStream may have unanswered, whatever their count: with 1 MiB
    /// payloads, the count alone would allow a gigabyte per stream.
    pub append_stream_window_bytes: usize,
    /// Longest a call may take to answer (a Subscribe stream's headers, not its life);
    /// `None` = no limit.
    pub request_timeout: Option<Duration>,
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
            max_concurrent_streams_per_connection: 256,
            max_subscriptions_per_token: 256,
            append_rate_per_token: 5_000,
            append_burst_per_token: 10_000,
            append_stream_window: 1000,
            append_stream_window_bytes: 16 * 1024 * 1024,
            request_timeout: Some(Duration::from_secs(30)),
        }
    }
}
