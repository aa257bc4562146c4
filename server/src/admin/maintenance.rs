//! The compaction task and its settings: retention, plus the physical removal of deleted
//! streams, every `interval`, and on demand (`AdminService/Compact`).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    error::OrdoError,
    store::{CompactionReport, LogInfo, RetentionRules, SharedLog, StoreError},
};

/// Retention settings. Without a limit nothing is ever removed by age or size; compaction
/// still runs, to remove deleted streams from storage.
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// Remove events older than this (by the time the server accepted them).
    pub max_age: Option<Duration>,
    /// Remove the oldest events while the retained events take more than this many bytes
    /// (their encoded size: payload and envelope, not the storage engine's overhead).
    pub max_bytes: Option<u64>,
    /// How often compaction runs.
    pub interval: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            max_age: None,
            max_bytes: None,
            interval: Duration::from_secs(60),
        }
    }
}

impl RetentionConfig {
    pub fn rules(&self) -> RetentionRules {
        RetentionRules {
            max_age: self.max_age,
            max_bytes: self.max_bytes,
        }
    }
}

/// A consumer's reaction to the first retained offset moving: called, on a blocking thread,
/// with the new first offset after each compaction that moved it.
pub type TrimHook = Arc<dyn Fn(u64) + Send + Sync>;

/// Whoever keeps a position in the log registers here to learn when retention overtakes it:
/// the webhooks wake their delivery tasks, which record the skipped range (see
/// `webhooks::delivery::trimmed`). Consumer groups plug in the same way: a hook that moves
/// every group cursor below the new first offset up to it and records the skip visibly.
#[derive(Clone, Default)]
pub struct TrimHooks {
    hooks: Arc<Mutex<Vec<TrimHook>>>,
}

impl TrimHooks {
    pub fn register(&self, hook: impl Fn(u64) + Send + Sync + 'static) {
        if let Ok(mut hooks) = self.hooks.lock() {
            hooks.push(Arc::new(hook));
        }
    }

    fn notify(&self, first: u64) {
        let hooks: Vec<TrimHook> = match self.hooks.lock() {
            Ok(hooks) => hooks.clone(),
            Err(_) => return,
        };
        for hook in hooks {
            hook(first);
        }
    }
}

/// What one compaction did, with the data dir's size around it.
#[derive(Debug, Clone)]
pub struct Compaction {
    pub report: CompactionReport,
    pub disk_bytes_before: u64,
    pub disk_bytes_after: u64,
}

/// Runs compactions: one at a time, off the async threads.
#[derive(Clone)]
pub struct Maintenance {
    log: SharedLog,
    config: RetentionConfig,
    hooks: TrimHooks,
}

impl Maintenance {
    pub fn new(log: SharedLog, config: RetentionConfig) -> Self {
        Self {
            log,
            config,
            hooks: TrimHooks::default(),
        }
    }

    pub fn config(&self) -> &RetentionConfig {
        &self.config
    }

    pub fn hooks(&self) -> &TrimHooks {
        &self.hooks
    }

    /// The log's retained range and size.
    pub async fn info(&self) -> Result<LogInfo, OrdoError> {
        let log = self.log.clone();
        blocking(move || log.info()).await
    }

    /// Runs one compaction now and tells the hooks if the first offset moved.
    pub async fn compact(&self) -> Result<Compaction, OrdoError> {
        let log = self.log.clone();
        let rules = self.config.rules();
        let hooks = self.hooks.clone();
        let done = blocking(move || {
            let before = log.info()?.disk_bytes;
            let report = log.compact(&rules)?;
            if report.first_after > report.first_before {
                hooks.notify(report.first_after);
            }
            let after = log.info()?.disk_bytes;
            Ok(Compaction {
                report,
                disk_bytes_before: before,
                disk_bytes_after: after,
            })
        })
        .await?;
        let report = &done.report;
        if report.events_trimmed > 0 || report.streams_removed > 0 {
            info!(
                first_offset = report.first_after,
                events_trimmed = report.events_trimmed,
                bytes_trimmed = report.bytes_trimmed,
                streams_removed = report.streams_removed,
                deleted_events_removed = report.deleted_events_removed,
                disk_bytes_before = done.disk_bytes_before,
                disk_bytes_after = done.disk_bytes_after,
                "compaction done"
            );
        }
        Ok(done)
    }

    /// Compacts every `interval` until `shutdown`.
    pub fn spawn(self, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.config.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is immediate: skip it, a server that just started has other work.
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let Err(err) = self.compact().await {
                    warn!(error = %err, "compaction failed; trying again next interval");
                }
            }
        })
    }
}

/// Runs storage work on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, OrdoError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| OrdoError::Unavailable(format!("storage task failed: {err}; retry")))?
        .map_err(OrdoError::from)
}
