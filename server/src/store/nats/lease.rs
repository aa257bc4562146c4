//! One node at a time runs webhook delivery and consumer groups: the holder of a lease kept in
//! a JetStream key-value bucket. The holder renews it every second; an entry not renewed for
//! [`TTL`] expires in JetStream, and another node's create then succeeds. A holder that could
//! not renew for [`STEP_DOWN`] stops first, so two holders overlap only if clocks or the
//! cluster misbehave (delivery is at-least-once either way).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, kv, stream::StorageType};
use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{super::StoreError, append::Shared, nats_error};

/// How long an unrenewed lease lives.
pub const TTL: Duration = Duration::from_secs(5);
/// Renewal (and, for the others, takeover attempt) period.
const RENEW: Duration = Duration::from_secs(1);
/// A holder that has not renewed for this long stops acting as holder.
const STEP_DOWN: Duration = Duration::from_millis(3500);
const KEY: &str = "workers";

/// Who runs webhook delivery and consumer groups, as this node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseState {
    /// This node holds the lease (and its copy of the log had caught up when it took it).
    pub mine: bool,
    /// The address the holder advertised, when known.
    pub holder: Option<String>,
}

/// Opens (or creates) the bucket; the campaign runs until `stop`.
pub async fn start(
    js: jetstream::Context,
    bucket: String,
    replicas: usize,
    me: String,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> Result<watch::Receiver<LeaseState>, StoreError> {
    let store = match js.get_key_value(bucket.as_str()).await {
        Ok(store) => store,
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: bucket.clone(),
                description: "Ordo: which node runs webhooks and consumer groups".into(),
                history: 1,
                max_age: TTL,
                storage: StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| nats_error("creating the lease bucket", e))?,
    };
    let (tx, rx) = watch::channel(LeaseState::default());
    tokio::spawn(campaign(store, me, shared, tx, stop));
    Ok(rx)
}

async fn campaign(
    store: kv::Store,
    me: String,
    shared: Arc<Shared>,
    tx: watch::Sender<LeaseState>,
    stop: CancellationToken,
) {
    let value = Bytes::from(me.clone());
    // The revision this node last wrote, and when: Some while it holds the lease.
    let mut held: Option<(u64, Instant)> = None;
    loop {
        match held {
            Some((revision, renewed)) => match store.update(KEY, value.clone(), revision).await {
                Ok(next) => held = Some((next, Instant::now())),
                Err(err) => {
                    let lost = matches!(err.kind(), kv::UpdateErrorKind::WrongLastRevision)
                        || renewed.elapsed() >= STEP_DOWN;
                    if lost {
                        warn!(error = %err, "lost the workers lease; stopping webhooks and consumer groups here");
                        held = None;
                        tx.send_replace(LeaseState::default());
                    }
                }
            },
            None => match store.create(KEY, value.clone()).await {
                Ok(revision) => {
                    // Act only on a copy that holds everything the last holder wrote.
                    match shared.catch_up().await {
                        Ok(()) => {
                            info!(node = %me, "took the workers lease: running webhooks and consumer groups");
                            held = Some((revision, Instant::now()));
                            tx.send_replace(LeaseState {
                                mine: true,
                                holder: Some(me.clone()),
                            });
                        }
                        Err(err) => {
                            warn!(error = %err, "took the workers lease but could not catch up; releasing it");
                            let _ = store.delete(KEY).await;
                        }
                    }
                }
                Err(_) => {
                    let holder = match store.entry(KEY).await {
                        Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                            Some(String::from_utf8_lossy(&entry.value).into_owned())
                        }
                        _ => None,
                    };
                    tx.send_if_modified(|state| {
                        let next = LeaseState {
                            mine: false,
                            holder: holder.clone(),
                        };
                        let changed = *state != next;
                        *state = next;
                        changed
                    });
                }
            },
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(RENEW) => {}
        }
    }
    if held.is_some() {
        // Hand over at once instead of after the TTL.
        let _ = store.delete(KEY).await;
    }
}
