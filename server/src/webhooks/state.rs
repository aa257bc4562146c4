//! A webhook's durable state (definition and cursor), and the per-webhook lock that keeps the
//! service and the delivery task from overwriting each other's read-modify-write.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use super::{
    config::WebhookConfig,
    records::{self, Cursor, StoredWebhook, decode},
};
use crate::store::{AppendBatch, RecordWrite, SharedLog, StoreError};

/// Shared by the engine, the service and every delivery task.
pub struct WebhookState {
    log: SharedLog,
    config: WebhookConfig,
    /// Serialises read-modify-write of one webhook's records (definition and cursor) between
    /// the service and its delivery task. Never held across an HTTP request.
    locks: LockMap,
}

impl WebhookState {
    pub fn new(log: SharedLog, config: WebhookConfig) -> Self {
        Self {
            log,
            config,
            locks: LockMap::default(),
        }
    }

    pub fn log(&self) -> &SharedLog {
        &self.log
    }

    pub fn config(&self) -> &WebhookConfig {
        &self.config
    }

    /// Forgets the webhook's lock (after a delete).
    pub fn forget(&self, id: &str) {
        self.locks.remove(id);
    }

    /// Runs `change` on the webhook's current definition and cursor under its state lock and
    /// writes what it returns durably. None when the webhook does not exist.
    pub async fn modify<T>(
        &self,
        id: &str,
        change: impl FnOnce(&mut StoredWebhook, &mut Cursor) -> (Vec<RecordWrite>, T),
    ) -> Result<Option<T>, StoreError> {
        let lock = self.locks.get(id);
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
            self.log.append(AppendBatch::records_only(writes)).await?;
        }
        Ok(Some(out))
    }

    pub fn load_webhook(&self, id: &str) -> Result<Option<StoredWebhook>, StoreError> {
        self.log
            .get_record(&records::webhook_key(id))?
            .map(|bytes| decode(&bytes, "webhook"))
            .transpose()
    }

    pub fn load_cursor(&self, id: &str) -> Result<Cursor, StoreError> {
        Ok(self
            .log
            .get_record(&records::cursor_key(id))?
            .map(|bytes| decode(&bytes, "webhook cursor"))
            .transpose()?
            .unwrap_or_default())
    }
}

/// One async mutex per webhook id, created on demand.
#[derive(Default)]
pub(crate) struct LockMap(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl LockMap {
    pub(crate) fn get(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(id.to_string()).or_default().clone()
    }

    pub(crate) fn remove(&self, id: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}
