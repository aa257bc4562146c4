//! Webhooks: durable, signed, retried delivery of events to HTTP endpoints, with a dead-letter
//! queue.
//!
//! - [`service`]: the CRUD, rotation, delivery-history and dead-letter operations.
//! - [`delivery`]: one task per enabled webhook, reading the log from its durable cursor.
//! - [`records`]: what is stored where. [`signing`]: Standard Webhooks signatures.
//!   [`ssrf`]: which addresses requests may reach. [`payload`]: the CloudEvents JSON body.
//!
//! Ordering: by default events reach an endpoint in log order, one at a time, and the next
//! event waits while one is retried. Receivers that project state (an order's status) are then
//! correct without reordering logic, and at-least-once with a single cursor stays simple to
//! reason about across restarts. The price is head-of-line blocking by a failing event, bounded
//! by the retry schedule after which the event is dead-lettered. A webhook whose receiver does
//! not care about order can opt into parallel delivery (`max_in_flight` > 1): several events in
//! flight, each retried on its own, with the cursor as the low-water mark.

pub mod delivery;
pub mod payload;
pub mod records;
pub mod service;
pub mod signing;
pub mod ssrf;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prost::Message;
use tokio::{
    sync::{Notify, Semaphore},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::store::{AppendBatch, RecordWrite, SharedLog, StoreError};
use records::{Cursor, StoredWebhook};
pub use ssrf::{AddressPolicy, IpNet};

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

/// Why the webhook subsystem could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookStartError {
    #[error("cannot build the webhook HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("cannot load webhooks: {0}")]
    Store(#[from] StoreError),
}

/// The webhook engine: shared by the gRPC service and the delivery tasks.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

struct Inner {
    log: SharedLog,
    config: WebhookConfig,
    policy: Arc<AddressPolicy>,
    client: reqwest::Client,
    permits: Arc<Semaphore>,
    shutdown: CancellationToken,
    tasks: Mutex<HashMap<String, TaskHandle>>,
    /// Serialises read-modify-write of one webhook's records (definition and cursor) between
    /// the service and its delivery task. Never held across an HTTP request.
    state_locks: LockMap,
    /// Serialises starting and stopping one webhook's task, so two never run at once.
    task_locks: LockMap,
}

struct TaskHandle {
    cancel: CancellationToken,
    wake: Arc<Notify>,
    join: JoinHandle<()>,
}

/// One async mutex per webhook id, created on demand.
#[derive(Default)]
struct LockMap(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl LockMap {
    fn get(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(id.to_string()).or_default().clone()
    }

    fn remove(&self, id: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

impl Webhooks {
    /// Builds the HTTP client and starts a delivery task for every enabled webhook. Tasks stop
    /// when `shutdown` is cancelled; [`Webhooks::join`] waits for them.
    pub fn start(
        log: SharedLog,
        config: WebhookConfig,
        shutdown: CancellationToken,
    ) -> Result<Self, WebhookStartError> {
        let policy = Arc::new(AddressPolicy {
            allow_nets: config.allow_nets.clone(),
            require_https: config.require_https,
        });
        let client = delivery::http_client(&config, policy.clone())?;
        let webhooks = Self {
            inner: Arc::new(Inner {
                log,
                permits: Arc::new(Semaphore::new(config.max_concurrent_deliveries.max(1))),
                config,
                policy,
                client,
                shutdown,
                tasks: Mutex::default(),
                state_locks: LockMap::default(),
                task_locks: LockMap::default(),
            }),
        };
        let mut started = 0;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = webhooks.inner.log.scan_records(
                &records::all_webhooks_prefix(),
                after.as_deref(),
                256,
            )?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (_, value) in page {
                let hook = decode::<StoredWebhook>(&value, "webhook")?;
                if hook.enabled {
                    webhooks.spawn_task(&hook.id);
                    started += 1;
                }
            }
        }
        info!(started, "webhook delivery started");
        Ok(webhooks)
    }

    pub fn config(&self) -> &WebhookConfig {
        &self.inner.config
    }

    pub fn policy(&self) -> &AddressPolicy {
        &self.inner.policy
    }

    pub(crate) fn log(&self) -> &SharedLog {
        &self.inner.log
    }

    /// Waits (up to 10 s) for every delivery task to stop after shutdown was cancelled, so none
    /// writes to the log after it is closed.
    pub async fn join(&self) {
        let handles: Vec<TaskHandle> = {
            let mut tasks = self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner());
            tasks.drain().map(|(_, handle)| handle).collect()
        };
        for handle in handles {
            handle.cancel.cancel();
            stop_handle(handle).await;
        }
    }

    /// Stops the webhook's task (if any) and starts a new one if the webhook is enabled.
    pub(crate) async fn restart(&self, id: &str) -> Result<(), StoreError> {
        let lock = self.inner.task_locks.get(id);
        let _guard = lock.lock().await;
        self.stop_task(id).await;
        if self.inner.shutdown.is_cancelled() {
            return Ok(());
        }
        if let Some(hook) = self.load_webhook(id)?
            && hook.enabled
        {
            self.spawn_task(id);
        }
        Ok(())
    }

    /// Stops the webhook's task and forgets its locks (after a delete).
    pub(crate) async fn forget(&self, id: &str) {
        let lock = self.inner.task_locks.get(id);
        {
            let _guard = lock.lock().await;
            self.stop_task(id).await;
        }
        self.inner.state_locks.remove(id);
        self.inner.task_locks.remove(id);
    }

    /// Tells a waiting task to look for work again (e.g. after a redrive or a filter change).
    pub(crate) fn wake(&self, id: &str) {
        let tasks = self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(handle) = tasks.get(id) {
            handle.wake.notify_one();
        }
    }

    async fn stop_task(&self, id: &str) {
        let handle = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Some(handle) = handle {
            handle.cancel.cancel();
            stop_handle(handle).await;
        }
    }

    fn spawn_task(&self, id: &str) {
        let cancel = self.inner.shutdown.child_token();
        let wake = Arc::new(Notify::new());
        let task =
            delivery::DeliveryTask::new(self.clone(), id.to_string(), cancel.clone(), wake.clone());
        let join = tokio::spawn(task.run());
        let old = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), TaskHandle { cancel, wake, join });
        if let Some(old) = old {
            // Only reachable if a caller skipped the task lock; never leave two tasks running.
            old.cancel.cancel();
            old.join.abort();
        }
    }

    /// Runs `change` on the webhook's current definition and cursor under its state lock and
    /// writes what it returns durably. None when the webhook does not exist.
    pub(crate) async fn modify<T>(
        &self,
        id: &str,
        change: impl FnOnce(&mut StoredWebhook, &mut Cursor) -> (Vec<RecordWrite>, T),
    ) -> Result<Option<T>, StoreError> {
        let lock = self.inner.state_locks.get(id);
        let _guard = lock.lock().await;
        let Some(mut hook) = self.load_webhook(id)? else {
            return Ok(None);
        };
        let mut cursor = self.load_cursor(id)?;
        let (hook_before, cursor_before) = (hook.clone(), cursor.clone());
        let (mut writes, out) = change(&mut hook, &mut cursor);
        if hook != hook_before {
            writes.push(records::put(records::webhook_key(id), &hook));
        }
        if cursor != cursor_before {
            writes.push(records::put(records::cursor_key(id), &cursor));
        }
        if !writes.is_empty() {
            self.inner
                .log
                .append(AppendBatch::records_only(writes))
                .await?;
        }
        Ok(Some(out))
    }

    pub(crate) fn load_webhook(&self, id: &str) -> Result<Option<StoredWebhook>, StoreError> {
        self.inner
            .log
            .get_record(&records::webhook_key(id))?
            .map(|bytes| decode(&bytes, "webhook"))
            .transpose()
    }

    pub(crate) fn load_cursor(&self, id: &str) -> Result<Cursor, StoreError> {
        Ok(self
            .inner
            .log
            .get_record(&records::cursor_key(id))?
            .map(|bytes| decode(&bytes, "webhook cursor"))
            .transpose()?
            .unwrap_or_default())
    }
}

async fn stop_handle(handle: TaskHandle) {
    let mut join = handle.join;
    if tokio::time::timeout(Duration::from_secs(10), &mut join)
        .await
        .is_err()
    {
        warn!("webhook delivery task did not stop within 10 s; aborting it");
        join.abort();
    }
}

pub(crate) fn decode<M: Message + Default>(bytes: &[u8], what: &str) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|err| StoreError::Corrupt {
        what: what.to_string(),
        detail: err.to_string(),
    })
}

/// Unix milliseconds now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Unix milliseconds as a protobuf timestamp; None for 0 ("not set").
pub(crate) fn timestamp(ms: u64) -> Option<prost_types::Timestamp> {
    (ms != 0).then(|| prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    })
}
