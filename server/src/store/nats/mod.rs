//! [`EventLog`] on a NATS JetStream cluster: JetStream holds the log (stream sequence = global
//! offset) and the records; every Ordo node keeps a derived copy in a local [`SledLog`], fed in
//! log order by `follower.rs`, and serves every read from it. Appends go to JetStream, which
//! decides their order and concurrency checks, and are answered once this node's copy shows
//! them, so a client reads its own writes on the node it wrote to. See docs/scale-out.md.

mod append;
mod follower;
mod headers;
mod lease;
mod names;
mod pipeline;
mod publish;
mod setup;

use std::{
    io::Write,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::jetstream;
use ordo_api::v1::Event;
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use follower::{Derive, Records};
pub use lease::LeaseState;
pub use names::Names;

use super::{
    AppendBatch, AppendFuture, BackupSummary, CompactionReport, DeleteFuture, EnqueueFuture,
    EventLog, LogInfo, LogOptions, OutcomesFuture, Page, Record, RetentionRules, SledLog,
    StoreError, StoredResponse, SyncMode,
};
use crate::config::NatsConfig;

/// Headers and event fields around a payload, at most (ids, types, metadata are bounded).
const ENVELOPE_ROOM: usize = 64 * 1024;

/// The JetStream-backed log. Cheap to share: the state lives in [`append::Shared`].
pub struct NatsLog {
    shared: Arc<append::Shared>,
    js: jetstream::Context,
    lease_bucket: String,
    replicas: usize,
    stop: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Wraps a NATS client error with what Ordo was doing; retryable for the caller.
pub(super) fn nats_error(doing: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Nats(format!("{doing}: {err}"))
}

/// The client's settings; credentials in a URL (`nats://user:password@host`, or a token as
/// `nats://token@host`) are sent as such (the client library does not read them from URLs).
fn connect_options(addrs: &[async_nats::ServerAddr]) -> async_nats::ConnectOptions {
    let options = async_nats::ConnectOptions::new()
        .name("ordo-server")
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(5)));
    let credentials = addrs.iter().find(|addr| addr.has_user_pass());
    match credentials.map(|addr| (addr.username(), addr.password())) {
        Some((Some(user), Some(password))) => {
            options.user_and_password(user.to_string(), password.to_string())
        }
        Some((Some(token), None)) => options.token(token.to_string()),
        _ => options,
    }
}

/// The servers without their credentials, for logs and errors.
fn redacted(addrs: &[async_nats::ServerAddr]) -> String {
    addrs
        .iter()
        .map(|addr| format!("{}://{}:{}", addr.scheme(), addr.host(), addr.port()))
        .collect::<Vec<_>>()
        .join(",")
}

impl NatsLog {
    /// Connects, creates the streams if missing, rebuilds this node's copy of the log in
    /// `dir/replica` from JetStream and returns once it has caught up with the head.
    pub async fn open(
        config: &NatsConfig,
        dir: &Path,
        derive: Arc<dyn Derive>,
    ) -> Result<Arc<Self>, StoreError> {
        let names = Names::new(&config.stream)?;
        if !matches!(config.replicas, 1 | 3 | 5) {
            return Err(StoreError::Unsupported(format!(
                "--nats-replicas {} is not valid: use 1, 3 or 5",
                config.replicas
            )));
        }
        let addrs = config
            .urls
            .iter()
            .map(|url| url.parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Unsupported(format!("--nats-url is not valid: {e}")))?;
        let servers = redacted(&addrs);
        let client = connect_options(&addrs)
            .connect(addrs)
            .await
            .map_err(|e| nats_error(&format!("connecting to {servers}"), e))?;
        let js = jetstream::new(client.clone());
        setup::ensure_streams(&js, &names, config.replicas).await?;

        // This node's copy is derived: start it afresh, so it can never disagree with the log.
        let replica_dir = dir.join("replica");
        let opened = tokio::task::spawn_blocking(move || {
            if replica_dir.exists() {
                std::fs::remove_dir_all(&replica_dir)?;
            }
            SledLog::open_with(
                &replica_dir,
                LogOptions {
                    sync: SyncMode::NoFsyncUnsafe,
                    ..LogOptions::default()
                },
            )
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))??;
        let replica = opened;

        let stop = CancellationToken::new();
        let (records_tx, records_rx) = watch::channel(0);
        let kicks = append::Kicks::default();
        let tasks = vec![
            tokio::spawn(follower::follow_events(
                js.clone(),
                names.clone(),
                replica.clone(),
                derive,
                kicks.events.clone(),
                stop.clone(),
            )),
            tokio::spawn(follower::follow_records(
                js.clone(),
                names.clone(),
                replica.clone(),
                records_tx,
                kicks.records.clone(),
                stop.clone(),
            )),
        ];
        let lease_bucket = names.lease_bucket.clone();
        let shared = Arc::new(append::Shared::new(
            client,
            js.clone(),
            names,
            replica,
            records_rx,
            kicks,
        ));
        let log = Arc::new(Self {
            shared,
            js,
            lease_bucket,
            replicas: config.replicas,
            stop,
            tasks: Mutex::new(tasks),
        });
        // As long as it takes while the copy moves: start-up time grows with the log.
        log.shared.catch_up().await?;
        info!(
            stream = %config.stream,
            head = log.head(),
            urls = %servers,
            "nats log opened"
        );
        Ok(log)
    }

    /// Campaigns for the lease that decides which node runs webhook delivery and consumer
    /// groups; `advertise` is how other nodes name this one to clients. Runs until the log
    /// closes (which hands the lease over).
    pub async fn campaign(
        &self,
        advertise: String,
    ) -> Result<watch::Receiver<LeaseState>, StoreError> {
        lease::start(
            self.js.clone(),
            self.lease_bucket.clone(),
            self.replicas,
            advertise,
            self.shared.clone(),
            self.stop.clone(),
        )
        .await
    }

    /// Warns when the NATS server's `max_payload` is below the largest event Ordo accepts (plus
    /// room for its envelope): such appends would then fail at JetStream. NATS defaults to
    /// 1 MiB, Ordo's `--max-payload-bytes` too.
    pub fn check_max_payload(&self, max_event_payload: usize) {
        let max_payload = self.shared.max_payload();
        let needed = max_event_payload + ENVELOPE_ROOM;
        if max_payload < needed {
            tracing::warn!(
                max_payload,
                needed,
                "the NATS server's max_payload is below Ordo's largest event (--max-payload-bytes) plus its envelope: raise max_payload in the NATS config or lower --max-payload-bytes, or appends that large will be refused"
            );
        }
    }

    fn replica(&self) -> &SledLog {
        &self.shared.replica
    }
}

impl EventLog for NatsLog {
    fn append(&self, batch: AppendBatch) -> AppendFuture {
        let shared = self.shared.clone();
        Box::pin(async move { shared.append(batch).await })
    }

    fn enqueue_many(&self, batches: Vec<AppendBatch>) -> EnqueueFuture {
        let shared = self.shared.clone();
        Box::pin(async move {
            // Queued in call order: the next caller's batches publish after these.
            let turn = shared.order.clone().lock_owned().await;
            let (tx, rx) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                let _ = tx.send(shared.append_many(batches, turn).await);
            });
            let outcomes: OutcomesFuture =
                Box::pin(async move { rx.await.map_err(|_| StoreError::Closed) });
            Ok(outcomes)
        })
    }

    fn read_page(&self, from: u64, max: usize, max_bytes: usize) -> Result<Page, StoreError> {
        self.replica().read_page(from, max, max_bytes)
    }

    fn is_deleted(&self, stream_id: &str, stream_version: u64) -> bool {
        self.replica().is_deleted(stream_id, stream_version)
    }

    fn first_offset(&self) -> u64 {
        self.replica().first_offset()
    }

    fn watch_first(&self) -> watch::Receiver<u64> {
        self.replica().watch_first()
    }

    fn read_stream(
        &self,
        stream_id: &str,
        from_version: u64,
        to_version: u64,
    ) -> Result<Vec<Event>, StoreError> {
        self.replica()
            .read_stream(stream_id, from_version, to_version)
    }

    fn stream_version(&self, stream_id: &str) -> Result<u64, StoreError> {
        self.replica().stream_version(stream_id)
    }

    fn head(&self) -> u64 {
        self.replica().head()
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.replica().watch_head()
    }

    fn get_record(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.replica().get_record(key)
    }

    fn scan_records(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        self.replica().scan_records(prefix, after, limit)
    }

    fn idempotent_response(&self, key: &str) -> Result<Option<StoredResponse>, StoreError> {
        self.replica().idempotent_response(key)
    }

    /// Each node forgets expired keys in its own copy; JetStream's dedupe window (two minutes)
    /// is separate.
    fn expire_idempotency(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        self.replica().expire_idempotency(cutoff_ms)
    }

    fn delete_stream(&self, _stream_id: &str) -> DeleteFuture {
        Box::pin(async {
            Err(StoreError::Unsupported(
                "DeleteStream is not available with --store nats: the JetStream stream denies deletes so that offsets stay gapless".into(),
            ))
        })
    }

    fn compact(&self, rules: &RetentionRules) -> Result<CompactionReport, StoreError> {
        if rules.is_off() {
            // Nothing to remove; deleted streams do not exist here (`delete_stream`).
            return Ok(CompactionReport {
                first_before: self.first_offset(),
                first_after: self.first_offset(),
                ..CompactionReport::default()
            });
        }
        Err(StoreError::Unsupported(
            "retention is not available with --store nats: the JetStream stream denies purges so that offsets stay gapless".into(),
        ))
    }

    fn backup(&self, _out: &mut dyn Write) -> Result<BackupSummary, StoreError> {
        Err(StoreError::Unsupported(
            "Backup is not available with --store nats: JetStream holds the log; back up its streams with `nats stream backup`".into(),
        ))
    }

    fn info(&self) -> Result<LogInfo, StoreError> {
        self.replica().info()
    }

    fn close(&self) -> Result<(), StoreError> {
        self.stop.cancel();
        if let Ok(mut tasks) = self.tasks.lock() {
            for task in tasks.drain(..) {
                task.abort();
            }
        }
        self.replica().close()
    }
}
