//! One delivery task per enabled webhook.
//!
//! The task is a loop of small steps, each re-reading the webhook's definition and durable
//! cursor, so an update (new url, filters, rotated secret) applies at the next attempt and a
//! restart resumes exactly where the last acknowledged write left off:
//!
//! 1. an event being retried (`pending_offset`): wait for its due time, then attempt it;
//! 2. else the oldest dead letter queued for redrive;
//! 3. else the next matching event after `delivered_through`, reading the log in bounded chunks
//!    and waiting on the durable head (never polling) when there is none.
//!
//! Each attempt is one HTTP request; its outcome, the attempt record and the cursor move are
//! written together in one durable batch. The cursor moves past an event only after a 2xx or a
//! dead-lettering, so delivery is at-least-once: a crash between the 2xx and the write repeats
//! that one event (with the same `webhook-id`, for receivers to deduplicate).

//!
//! The task is split by job: `ordered` and `parallel` are the two engines, `outcome` records
//! what an attempt meant, [`send`] does the HTTP and [`retry`] is the retry policy as pure
//! functions.

mod ordered;
mod outcome;
mod parallel;
pub mod retry;
pub mod send;
mod trimmed;

use std::{collections::VecDeque, sync::Arc, time::Duration};

use ordo_api::v1::Event;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::state::WebhookState;
use crate::store::{Page, RawEvent, SharedLog, StoreError};
pub use send::Sender;

/// Read-ahead per webhook: at most this many events and (beyond the first) bytes, so even the
/// maximum number of webhooks holds a bounded amount of the log in memory.
const READ_CHUNK_EVENTS: usize = 128;
const READ_CHUNK_BYTES: usize = 256 * 1024;
/// Offsets a parallel webhook tracks at once above its cursor (settled ones included), so one
/// stuck event among many filtered-out ones cannot grow the window without bound.
const MAX_WINDOW: usize = 4096;
/// Pause after an unexpected storage error before the task tries again.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Why a step failed; the task logs it and tries again shortly.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("event at offset {0} is missing from the log")]
    MissingEvent(u64),
    /// Retention removed events the webhook had not delivered yet: handled by recording the
    /// skipped range (`trimmed.rs`), not by retrying.
    #[error("events from offset {requested} were removed by retention (the log begins at {first})")]
    Trimmed { requested: u64, first: u64 },
    #[error("a delivery attempt panicked: {0}")]
    Panicked(String),
}

/// What the task does after a step.
enum Flow {
    Continue,
    Stop,
}

pub struct DeliveryTask {
    state: Arc<WebhookState>,
    sender: Arc<Sender>,
    id: String,
    cancel: CancellationToken,
    wake: Arc<Notify>,
    head: watch::Receiver<u64>,
    /// Read-ahead: the log from the next offset to examine on, one bounded chunk at most, so
    /// delivering a chunk costs one read rather than one per event.
    ahead: VecDeque<Event>,
    /// The offsets `ahead` covers, `[start, end)`: every event in them that is not in `ahead`
    /// was already taken or belongs to a deleted stream.
    ahead_range: std::ops::Range<u64>,
    /// Ordered mode removed leftover parallel-mode retry records (after a mode switch).
    parallel_cleared: bool,
}

impl DeliveryTask {
    pub fn new(
        state: Arc<WebhookState>,
        sender: Arc<Sender>,
        id: String,
        cancel: CancellationToken,
        wake: Arc<Notify>,
    ) -> Self {
        let head = state.log().watch_head();
        Self {
            state,
            sender,
            id,
            cancel,
            wake,
            head,
            ahead: VecDeque::new(),
            ahead_range: 0..0,
            parallel_cleared: false,
        }
    }

    pub async fn run(mut self) {
        debug!(webhook = %self.id, "delivery task started");
        loop {
            if self.cancel.is_cancelled() {
                return;
            }
            match self.step().await {
                Ok(Flow::Continue) => {}
                Ok(Flow::Stop) => break,
                Err(DeliveryError::Trimmed { .. }) => {
                    if let Err(err) = self.skip_trimmed().await {
                        warn!(webhook = %self.id, error = %err, "recording events removed by retention failed; retrying");
                        if !self.sleep(ERROR_PAUSE).await {
                            break;
                        }
                    }
                }
                Err(err) => {
                    warn!(webhook = %self.id, error = %err, "webhook delivery step failed; retrying");
                    if !self.sleep(ERROR_PAUSE).await {
                        break;
                    }
                }
            }
        }
        debug!(webhook = %self.id, "delivery task stopped");
    }

    /// Sleeps unless cancelled; false when cancelled.
    async fn sleep(&self, duration: Duration) -> bool {
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            _ = tokio::time::sleep(duration) => true,
        }
    }

    async fn step(&mut self) -> Result<Flow, DeliveryError> {
        let Some(hook) = self.state.load_webhook(&self.id)? else {
            return Ok(Flow::Stop);
        };
        if !hook.enabled {
            return Ok(Flow::Stop);
        }
        let first = self.state.log().first_offset();
        let cursor = self.state.load_cursor(&self.id)?;
        let pending_trimmed = cursor.pending_offset != 0 && cursor.pending_offset < first;
        if cursor.delivered_through + 1 < first || pending_trimmed {
            self.skip_trimmed().await?;
            return Ok(Flow::Continue);
        }
        let matcher = match hook.matcher() {
            Ok(matcher) => matcher,
            Err(err) => {
                warn!(webhook = %self.id, error = %err, "stored webhook filter is invalid; delivery stopped");
                return Ok(Flow::Stop);
            }
        };
        if hook.max_in_flight > 1 {
            return self.run_parallel().await;
        }
        self.step_ordered(&hook, &matcher).await
    }

    /// Makes `ahead` hold the events from offset `from` on, reading a chunk if needed: its
    /// first event may come later than `from` (deleted streams are skipped), or `ahead` may be
    /// empty when only deleted events are left in the range it covers (`ahead_range.end` is
    /// where to go on). False when `from` is beyond the durable head (nothing to read yet).
    fn fill_ahead(&mut self, from: u64) -> Result<bool, DeliveryError> {
        while self.ahead.front().is_some_and(|e| e.offset < from) {
            self.ahead.pop_front();
        }
        if self.ahead_range.contains(&from) {
            self.ahead_range.start = from;
            return Ok(true);
        }
        self.ahead.clear();
        self.ahead_range = 0..0;
        let head = *self.head.borrow_and_update();
        if from > head {
            return Ok(false);
        }
        let page = read_page(self.state.log(), from, READ_CHUNK_EVENTS)?;
        if page.next <= from {
            return Err(DeliveryError::MissingEvent(from));
        }
        self.ahead_range = from..page.next;
        self.ahead = page
            .events
            .iter()
            .map(RawEvent::decode)
            .collect::<Result<_, _>>()?;
        Ok(true)
    }
}

/// One step of reading the log, with retention's removal as its own error.
fn read_page(log: &SharedLog, from: u64, max: usize) -> Result<Page, DeliveryError> {
    log.read_page(from, max, READ_CHUNK_BYTES)
        .map_err(|err| match err {
            StoreError::Trimmed { requested, first } => DeliveryError::Trimmed { requested, first },
            other => DeliveryError::Store(other),
        })
}

/// The event at `offset`; None when its stream was deleted (it is then skipped, like an event
/// the filters no longer match).
fn read_one(log: &SharedLog, offset: u64) -> Result<Option<Event>, DeliveryError> {
    let page = read_page(log, offset, 1)?;
    if page.next <= offset {
        return Err(DeliveryError::MissingEvent(offset));
    }
    match page.events.first() {
        Some(event) if event.offset == offset => Ok(Some(event.decode()?)),
        _ => Ok(None),
    }
}
