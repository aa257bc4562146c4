//! Webhook delivery and consumer groups: the parts of Ordo that act on the log rather than
//! answer calls, so they must run once per deployment, not once per node. With sled there is
//! one node and they run for the server's life; with `--store nats` they run on the node that
//! holds the workers lease and move when it does. Other nodes refuse their RPCs with
//! UNAVAILABLE naming the holder, the way a follower names its leader.

use std::sync::{Arc, RwLock};

use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::{
    error::OrdoError,
    groups::Groups,
    store::{LeaseState, SharedLog},
    webhooks::{WebhookConfig, WebhookStartError, Webhooks},
};

/// The running webhook delivery and consumer groups, if this node runs them.
#[derive(Clone)]
pub struct Workers {
    current: Arc<RwLock<Option<Running>>>,
    lease: Option<watch::Receiver<LeaseState>>,
    /// How this node is named in the lease (its advertised address).
    me: String,
    task: Arc<tokio::sync::Mutex<Option<JoinHandle<()>>>>,
}

#[derive(Clone)]
struct Running {
    webhooks: Webhooks,
    groups: Arc<Groups>,
}

/// Why the workers could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkersError {
    #[error(transparent)]
    Webhooks(#[from] WebhookStartError),
    #[error("cannot start consumer groups: {0}")]
    Groups(#[from] crate::store::StoreError),
}

impl Workers {
    /// Runs both here until `shutdown` (one node: the sled store).
    pub async fn local(
        log: SharedLog,
        config: WebhookConfig,
        shutdown: CancellationToken,
    ) -> Result<Self, WorkersError> {
        let running = start(&log, &config, &shutdown).await?;
        Ok(Self {
            current: Arc::new(RwLock::new(Some(running))),
            lease: None,
            me: String::new(),
            task: Arc::default(),
        })
    }

    /// Runs both here while `lease` says this node (advertised as `me`) holds it.
    pub fn leased(
        log: SharedLog,
        config: WebhookConfig,
        lease: watch::Receiver<LeaseState>,
        me: String,
        shutdown: CancellationToken,
    ) -> Self {
        let current: Arc<RwLock<Option<Running>>> = Arc::default();
        let task = tokio::spawn(follow_lease(
            current.clone(),
            log,
            config,
            lease.clone(),
            shutdown,
        ));
        Self {
            current,
            lease: Some(lease),
            me,
            task: Arc::new(tokio::sync::Mutex::new(Some(task))),
        }
    }

    /// Waits (at most `within`) until this node knows where the workers run: here, started,
    /// or on another node. A lone node then serves webhook and group calls from its first call
    /// on instead of answering UNAVAILABLE while it takes the lease. A lease held under this
    /// node's own address is its previous life's (killed before it could hand over): it is
    /// waited out, since it expires within the lease's TTL.
    pub async fn settled(&self, within: std::time::Duration) {
        let Some(lease) = &self.lease else {
            return;
        };
        let current = self.current.clone();
        let mut lease = lease.clone();
        let me = self.me.clone();
        let wait = async move {
            loop {
                let elsewhere = {
                    let state = lease.borrow_and_update();
                    !state.mine && state.holder.as_ref().is_some_and(|holder| *holder != me)
                };
                let here = current.read().map(|slot| slot.is_some()).unwrap_or(false);
                if here || elsewhere {
                    return;
                }
                // Starting here takes a moment after the lease: poll briefly for that.
                let _ = tokio::time::timeout(std::time::Duration::from_millis(20), lease.changed())
                    .await;
            }
        };
        let _ = tokio::time::timeout(within, wait).await;
    }

    pub fn webhooks(&self) -> Result<Webhooks, OrdoError> {
        self.running().map(|r| r.webhooks)
    }

    pub fn groups(&self) -> Result<Arc<Groups>, OrdoError> {
        self.running().map(|r| r.groups)
    }

    /// Wakes every webhook task (retention moved the first offset), if they run here.
    pub fn wake_all(&self) {
        if let Some(running) = self.current() {
            running.webhooks.wake_all();
        }
    }

    /// Waits until both have stopped (after shutdown was cancelled).
    pub async fn join(&self) {
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
        if let Some(running) = self.take() {
            stop(running).await;
        }
    }

    fn current(&self) -> Option<Running> {
        self.current.read().ok().and_then(|slot| slot.clone())
    }

    fn take(&self) -> Option<Running> {
        self.current.write().ok().and_then(|mut slot| slot.take())
    }

    fn running(&self) -> Result<Running, OrdoError> {
        if let Some(running) = self.current() {
            return Ok(running);
        }
        let holder = self
            .lease
            .as_ref()
            .and_then(|lease| lease.borrow().holder.clone());
        Err(OrdoError::Unavailable(match holder {
            Some(holder) => format!(
                "webhooks and consumer groups run on one node of the cluster, now {holder}; call that node (or retry: this node takes over if it goes away)"
            ),
            None => {
                "webhooks and consumer groups are moving to another node; retry in a few seconds"
                    .into()
            }
        }))
    }
}

async fn start(
    log: &SharedLog,
    config: &WebhookConfig,
    stop: &CancellationToken,
) -> Result<Running, WorkersError> {
    let webhooks = Webhooks::start(log.clone(), config.clone(), stop.clone())?;
    let groups = Groups::start(log.clone(), stop.clone()).await?;
    Ok(Running { webhooks, groups })
}

async fn stop(running: Running) {
    running.webhooks.join().await;
    running.groups.join_tasks().await;
}

/// Starts the workers when the lease is taken, stops them (and waits) when it is lost.
async fn follow_lease(
    current: Arc<RwLock<Option<Running>>>,
    log: SharedLog,
    config: WebhookConfig,
    mut lease: watch::Receiver<LeaseState>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            held = lease.wait_for(|state| state.mine) => if held.is_err() { return },
        }
        let stop_here = shutdown.child_token();
        let running = match start(&log, &config, &stop_here).await {
            Ok(running) => running,
            Err(err) => {
                error!(error = %err, "cannot start webhooks and consumer groups on this node");
                stop_here.cancel();
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Ok(mut slot) = current.write() {
            *slot = Some(running);
        }
        tokio::select! {
            () = shutdown.cancelled() => {}
            _ = lease.wait_for(|state| !state.mine) => {}
        }
        stop_here.cancel();
        let taken = current.write().ok().and_then(|mut slot| slot.take());
        if let Some(running) = taken {
            stop(running).await;
        }
        if shutdown.is_cancelled() {
            return;
        }
    }
}
