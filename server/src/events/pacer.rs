//! Paced head changes for crowded servers.
//!
//! A live subscriber wakes when the durable head moves. With a few subscribers that should be
//! at once (the e2e latency is the product). With a thousand, every commit would wake a
//! thousand tasks, each sending one event into its own HTTP/2 stream: a million wake-ups a
//! second at 1k events/s, more CPU than a small machine has. When many streams are open,
//! subscribers wait on this paced copy of the head instead, which moves at most once per
//! linger: each wake-up then carries every event committed meanwhile, and the frames of one
//! stream go out together.

use std::{sync::Arc, time::Duration};

use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::store::SharedLog;

/// Open subscriptions from which live subscribers wait on the paced head.
const CROWDED: usize = 64;

/// How long the paced head holds changes back, by open subscriptions.
fn linger(open: usize) -> Duration {
    if open >= 512 {
        Duration::from_millis(5)
    } else {
        Duration::from_millis(2)
    }
}

/// The paced head, and the count that says when to use it.
#[derive(Clone)]
pub struct Pacer {
    paced: watch::Receiver<u64>,
    /// The subscriber cap's semaphore: `max - available` is the number of open streams.
    subscribers: Arc<Semaphore>,
    max: usize,
}

impl Pacer {
    /// Starts the pacing task; it ends with the log's head watch or at shutdown.
    pub fn spawn(
        log: &SharedLog,
        subscribers: Arc<Semaphore>,
        max: usize,
        shutdown: CancellationToken,
    ) -> Self {
        let mut head = log.watch_head();
        let (tx, paced) = watch::channel(*head.borrow());
        let open = subscribers.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = head.changed() => if changed.is_err() { return },
                    _ = shutdown.cancelled() => return,
                }
                tx.send_replace(*head.borrow_and_update());
                // Changes that arrive meanwhile go out together at the next round.
                let open = max.saturating_sub(open.available_permits());
                tokio::time::sleep(linger(open)).await;
            }
        });
        Self {
            paced,
            subscribers,
            max,
        }
    }

    /// Whether live subscribers should wait on [`Pacer::paced`] rather than the raw head.
    pub fn crowded(&self) -> bool {
        self.max
            .saturating_sub(self.subscribers.available_permits())
            >= CROWDED
    }

    /// A receiver of the paced head.
    pub fn paced(&self) -> watch::Receiver<u64> {
        self.paced.clone()
    }
}
