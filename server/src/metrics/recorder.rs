//! The process-wide Prometheus recorder: every series' name, help text and buckets, installed
//! once per process (see the module doc of [`crate::metrics`] for why once).

use std::{
    sync::{Mutex, OnceLock},
    time::Duration,
};

use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::MetricsStartError;

pub const GRPC_STARTED: &str = "grpc_server_started_total";
pub const GRPC_HANDLED: &str = "grpc_server_handled_total";
pub const GRPC_HANDLING_SECONDS: &str = "grpc_server_handling_seconds";
pub const GRPC_MSG_RECEIVED: &str = "grpc_server_msg_received_total";
pub const GRPC_MSG_SENT: &str = "grpc_server_msg_sent_total";

pub const HEAD_OFFSET: &str = "ordo_head_offset";
pub const APPENDED_EVENTS: &str = "ordo_appended_events_total";
pub const APPENDED_BYTES: &str = "ordo_appended_bytes_total";
pub const GROUP_COMMIT_EVENTS: &str = "ordo_group_commit_events";
pub const FSYNC_SECONDS: &str = "ordo_journal_fsync_seconds";
pub const DISK_BYTES: &str = "ordo_disk_bytes";
pub const SUBSCRIBERS: &str = "ordo_subscribers";
pub const SUBSCRIBER_LAG: &str = "ordo_subscriber_lag_events";
pub const WEBHOOK_DELIVERIES: &str = "ordo_webhook_deliveries_total";
pub const WEBHOOK_PENDING: &str = "ordo_webhook_pending_events";
pub const WEBHOOK_DEAD_LETTERS: &str = "ordo_webhook_dead_letters";
pub const REJECTIONS: &str = "ordo_rejections_total";
pub const CONSUMER_GROUP_LAG: &str = "ordo_consumer_group_lag_events";

/// go-grpc-prometheus' default buckets, with two below 5 ms: a durable append takes about one
/// fdatasync, often 1-3 ms.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const FSYNC_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Powers of four: a commit holds from 0 (records only) to a few hundred thousand events.
const GROUP_BUCKETS: &[f64] = &[
    0.0, 1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0,
];
const LAG_BUCKETS: &[f64] = &[
    0.0,
    1.0,
    10.0,
    100.0,
    1000.0,
    10_000.0,
    100_000.0,
    1_000_000.0,
];

/// How often histogram samples are folded into their buckets when nobody scrapes, so they
/// never pile up in memory.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static INSTALLING: Mutex<()> = Mutex::new(());

/// Whether a recorder is installed in this process: the gRPC layer's one check per call.
pub fn enabled() -> bool {
    HANDLE.get().is_some()
}

/// Installs the Prometheus recorder if this process has none yet, and returns the handle that
/// renders it. Fails if another recorder was installed by something else (an embedding
/// program), or the upkeep thread cannot start.
pub fn install() -> Result<PrometheusHandle, MetricsStartError> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let _installing = INSTALLING.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in [
        (GRPC_HANDLING_SECONDS, SECONDS_BUCKETS),
        (FSYNC_SECONDS, FSYNC_BUCKETS),
        (GROUP_COMMIT_EVENTS, GROUP_BUCKETS),
        (SUBSCRIBER_LAG, LAG_BUCKETS),
    ] {
        builder = builder.set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)?;
    }
    let handle = builder.install_recorder()?;
    describe();
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("ordo-metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            }
        })
        .map_err(MetricsStartError::Upkeep)?;
    let _ = HANDLE.set(handle.clone());
    Ok(handle)
}

/// The `# HELP` line of every series.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        GRPC_STARTED,
        Unit::Count,
        "RPCs started on the server, refused ones included."
    );
    describe_counter!(
        GRPC_HANDLED,
        Unit::Count,
        "RPCs completed on the server, by gRPC status code (Canceled when the client left first)."
    );
    describe_histogram!(
        GRPC_HANDLING_SECONDS,
        Unit::Seconds,
        "Time from request to final status of unary RPCs (streams are not timed: a subscription lives as long as its client wants)."
    );
    describe_counter!(
        GRPC_MSG_RECEIVED,
        Unit::Count,
        "gRPC messages received from clients."
    );
    describe_counter!(GRPC_MSG_SENT, Unit::Count, "gRPC messages sent to clients.");
    describe_gauge!(
        HEAD_OFFSET,
        Unit::Count,
        "Offset of the newest durable event (0 when the log is empty)."
    );
    describe_counter!(
        APPENDED_EVENTS,
        Unit::Count,
        "Events made durable in the journal."
    );
    describe_counter!(
        APPENDED_BYTES,
        Unit::Bytes,
        "Encoded bytes of the events made durable."
    );
    describe_histogram!(
        GROUP_COMMIT_EVENTS,
        Unit::Count,
        "Events per group commit (one journal frame and one fdatasync each; 0 for records only)."
    );
    describe_histogram!(
        FSYNC_SECONDS,
        Unit::Seconds,
        "Duration of the journal's fdatasync per group commit (none with --sync no-fsync-unsafe)."
    );
    describe_gauge!(
        DISK_BYTES,
        Unit::Bytes,
        "Disk space used by the data directory (allocated blocks, as du counts them)."
    );
    describe_gauge!(SUBSCRIBERS, Unit::Count, "Open Subscribe streams.");
    describe_histogram!(
        SUBSCRIBER_LAG,
        Unit::Count,
        "Events between a subscription's position and the durable head, each time it reads the log."
    );
    describe_counter!(
        WEBHOOK_DELIVERIES,
        Unit::Count,
        "Webhook delivery attempts, by outcome."
    );
    describe_gauge!(
        WEBHOOK_PENDING,
        Unit::Count,
        "Events after the cursors of the enabled webhooks, summed (those their filters skip included)."
    );
    describe_gauge!(
        WEBHOOK_DEAD_LETTERS,
        Unit::Count,
        "Dead letters stored, across webhooks."
    );
    describe_counter!(
        REJECTIONS,
        Unit::Count,
        "Calls refused by a security or abuse limit, by reason."
    );
    describe_gauge!(
        CONSUMER_GROUP_LAG,
        Unit::Count,
        "Events between the head and a consumer group's committed offset."
    );
}
