//! Webhooks: durable, signed, retried delivery of events to HTTP endpoints, with a dead-letter
//! queue.
//!
//! - this module: the engine, which starts and stops one delivery task per enabled webhook.
//! - [`service`]: the CRUD, rotation, delivery-history and dead-letter operations.
//! - [`delivery`]: one task per enabled webhook, reading the log from its durable cursor.
//! - [`state`]: a webhook's definition and cursor, read and changed under its lock.
//! - [`config`]: the settings. [`records`]: what is stored where.
//!   [`signing`]: Standard Webhooks signatures.
//!   [`ssrf`]: which addresses requests may reach. [`payload`]: the CloudEvents JSON body.
//!
//! Ordering: by default events reach an endpoint in log order, one at a time, and the next
//! event waits while one is retried. Receivers that project state (an order's status) are then
//! correct without reordering logic, and at-least-once with a single cursor stays simple to
//! reason about across restarts. The price is head-of-line blocking by a failing event, bounded
//! by the retry schedule after which the event is dead-lettered. A webhook whose receiver does
//! not care about order can opt into parallel delivery (`max_in_flight` > 1): several events in
//! flight, each retried on its own, with the cursor as the low-water mark.

pub mod config;
pub mod delivery;
mod gauges;
pub mod payload;
pub mod records;
pub mod service;
pub mod signing;
pub mod ssrf;
pub mod state;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::Notify, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::store::{RecordWrite, SharedLog, StoreError};
pub use config::WebhookConfig;
use delivery::{DeliveryTask, Sender};
use records::{Cursor, StoredWebhook, decode};
pub use ssrf::{AddressPolicy, IpNet};
use state::{LockMap, WebhookState};

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
    state: Arc<WebhookState>,
    sender: Arc<Sender>,
    shutdown: CancellationToken,
    tasks: Mutex<HashMap<String, TaskHandle>>,
    /// Serialises starting and stopping one webhook's task, so two never run at once.
    task_locks: LockMap,
}

struct TaskHandle {
    cancel: CancellationToken,
    wake: Arc<Notify>,
    join: JoinHandle<()>,
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
        let sender = Arc::new(Sender::new(&config, policy)?);
        let webhooks = Self {
            inner: Arc::new(Inner {
                state: Arc::new(WebhookState::new(log, config)),
                sender,
                shutdown,
                tasks: Mutex::default(),
                task_locks: LockMap::default(),
            }),
        };
        let mut started = 0;
        let mut dead_letters = 0;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = webhooks.log().scan_records(
                &records::all_webhooks_prefix(),
                after.as_deref(),
                256,
            )?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (_, value) in page {
                let hook = decode::<StoredWebhook>(&value, "webhook")?;
                if crate::metrics::enabled() {
                    dead_letters += webhooks.count_dead_letters(&hook.id)?;
                }
                if hook.enabled {
                    webhooks.spawn_task(&hook.id);
                    started += 1;
                }
            }
        }
        crate::metrics::dead_letters_added(dead_letters);
        info!(started, "webhook delivery started");
        Ok(webhooks)
    }

    pub fn config(&self) -> &WebhookConfig {
        self.inner.state.config()
    }

    pub fn policy(&self) -> &AddressPolicy {
        self.inner.sender.policy()
    }

    pub(crate) fn log(&self) -> &SharedLog {
        self.inner.state.log()
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
        self.inner.state.forget(id);
        self.inner.task_locks.remove(id);
    }

    /// Wakes every delivery task, e.g. after retention removed events: each re-reads its cursor
    /// and records what it can no longer deliver.
    pub fn wake_all(&self) {
        let tasks = self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner());
        for handle in tasks.values() {
            handle.wake.notify_one();
        }
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
        let task = DeliveryTask::new(
            self.inner.state.clone(),
            self.inner.sender.clone(),
            id.to_string(),
            cancel.clone(),
            wake.clone(),
        );
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
        self.inner.state.modify(id, change).await
    }

    pub(crate) fn load_webhook(&self, id: &str) -> Result<Option<StoredWebhook>, StoreError> {
        self.inner.state.load_webhook(id)
    }

    pub(crate) fn load_cursor(&self, id: &str) -> Result<Cursor, StoreError> {
        self.inner.state.load_cursor(id)
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
