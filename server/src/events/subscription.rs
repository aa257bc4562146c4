//! One task per `Subscribe` stream: it reads the log from the subscriber's cursor and feeds a
//! small bounded channel.
//!
//! History and live events take the same path: read from the log up to the durable head, then
//! wait for the head to move. So the catch-up/live seam cannot gap or duplicate, and a slow
//! subscriber costs one chunk plus the channel, never a growing buffer: when it stops reading,
//! the channel fills and its task simply waits, while appends and other subscribers go on.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{pacer::Pacer, read::READ_CHUNK_BYTES};
use crate::{
    auth::StreamAccess,
    error::OrdoError,
    filter::Matcher,
    store::{RawEvent, SharedLog, StoreError},
};

/// Messages buffered per subscriber between its task and the network.
const CHANNEL_DEPTH: usize = 64;
/// Events read from the store per step.
const READ_CHUNK_EVENTS: usize = 512;
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(100);
/// How long a stream ending on shutdown waits for its client to make room for the final status.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How long a stream ended by revocation waits for its client to make room for the status.
const REVOKED_GRACE: Duration = Duration::from_secs(2);

/// What a subscription yields; `grpc::events` turns each into a wire frame, and an error into
/// the status that ends the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A matching event, in its stored encoding (sent as is: no decode or re-encode per event).
    Event(Bytes),
    /// Everything up to `head_offset` was sent: what follows is live. Sent once.
    CaughtUp { head_offset: u64, first_offset: u64 },
    /// Nothing to send for a while; `scanned_offset` tells how far a filtered scan got (events
    /// of deleted streams are scanned past like events the filter does not match).
    Heartbeat {
        head_offset: u64,
        scanned_offset: u64,
        first_offset: u64,
        time: SystemTime,
    },
}

/// The stream of a subscription, ended by an error (shutdown, revocation, storage failure) or
/// by the client going away.
pub type ItemStream = ReceiverStream<Result<Item, OrdoError>>;

/// What a subscription needs to run.
pub struct Subscription {
    pub log: SharedLog,
    pub first_offset: u64,
    /// The request's `start_at_first_retained`: if retention moves the first offset past
    /// `first_offset` before anything was read, begin at the new first offset too.
    pub start_at_first_retained: bool,
    pub matcher: Matcher,
    pub heartbeat: Duration,
    pub shutdown: CancellationToken,
    /// Held for the life of the stream: counts against the server's subscriber cap.
    pub permit: OwnedSemaphorePermit,
    /// The caller's token: a per-token stream slot, and revocation, which ends the stream
    /// with UNAUTHENTICATED.
    pub access: StreamAccess,
    /// When many streams are open, live waits go through the paced head (see `pacer.rs`).
    pub pacer: Pacer,
}

impl Subscription {
    /// Starts the feeding task and returns its stream.
    pub fn spawn(self) -> ItemStream {
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        tokio::spawn(self.run(tx));
        ReceiverStream::new(rx)
    }

    async fn run(self, tx: mpsc::Sender<Result<Item, OrdoError>>) {
        let _open = crate::metrics::SubscriberGauge::open();
        let mut feed = Feed {
            tx,
            shutdown: self.shutdown.clone(),
        };
        let mut head_rx = self.log.watch_head();
        let mut paced_rx = self.pacer.paced();
        let mut next = self.first_offset;
        let mut caught_up = false;
        let mut last_beat = Instant::now();
        loop {
            let head = *head_rx.borrow_and_update();
            paced_rx.borrow_and_update();
            while next <= head {
                crate::metrics::subscriber_lag(head + 1 - next);
                // A subscriber that retention overtakes (it lags behind the oldest retained
                // event) ends here with OUT_OF_RANGE naming the first retained offset.
                let page = match self
                    .log
                    .read_page(next, READ_CHUNK_EVENTS, READ_CHUNK_BYTES)
                {
                    Ok(page) if page.next > next => page,
                    Ok(_) => break,
                    Err(StoreError::Trimmed { first, .. })
                        if self.start_at_first_retained && next == self.first_offset =>
                    {
                        next = first;
                        continue;
                    }
                    Err(err) => {
                        feed.fail(OrdoError::from(err)).await;
                        return;
                    }
                };
                for event in page.events {
                    // Checked per event too, so a long catch-up cannot outlive a revoked token.
                    if self.access.is_revoked() {
                        feed.revoked(&self.access).await;
                        return;
                    }
                    let offset = event.offset;
                    let wanted = match self.wanted(&event) {
                        Ok(wanted) => wanted,
                        Err(err) => {
                            feed.fail(err).await;
                            return;
                        }
                    };
                    if wanted && !feed.event(event.bytes).await {
                        feed.end(offset - 1).await;
                        return;
                    }
                }
                // Past the page's events and the deleted ones around them.
                next = page.next;
                // A long scan with a sparse filter still tells the client where it is.
                if last_beat.elapsed() >= self.heartbeat {
                    last_beat = Instant::now();
                    if !feed
                        .heartbeat(head, next - 1, self.log.first_offset())
                        .await
                    {
                        feed.end(next - 1).await;
                        return;
                    }
                }
            }
            if !caught_up {
                caught_up = true;
                let marker = Item::CaughtUp {
                    head_offset: next - 1,
                    first_offset: self.log.first_offset(),
                };
                if !feed.send(marker).await {
                    feed.end(next - 1).await;
                    return;
                }
            }
            let beat_in = self.heartbeat.saturating_sub(last_beat.elapsed());
            let watched = if self.pacer.crowded() {
                &mut paced_rx
            } else {
                &mut head_rx
            };
            tokio::select! {
                _ = self.shutdown.cancelled() => {
                    feed.end(next - 1).await;
                    return;
                }
                _ = feed.tx.closed() => {
                    debug!(next, "subscriber went away");
                    return;
                }
                _ = self.access.revoked() => {
                    feed.revoked(&self.access).await;
                    return;
                }
                changed = watched.changed() => {
                    if changed.is_err() {
                        feed.fail(OrdoError::Unavailable("the event log closed; reconnect".into())).await;
                        return;
                    }
                }
                _ = tokio::time::sleep(beat_in) => {
                    last_beat = Instant::now();
                    let head = *head_rx.borrow();
                    if !feed.heartbeat(head, next - 1, self.log.first_offset()).await {
                        feed.end(next - 1).await;
                        return;
                    }
                }
            }
        }
    }
}

impl Subscription {
    /// Whether the filter wants this event. An unfiltered subscription never decodes anything;
    /// a filtered one decodes only the type and stream id.
    fn wanted(&self, event: &RawEvent) -> Result<bool, OrdoError> {
        if self.matcher.is_everything() {
            return Ok(true);
        }
        let key = event.key()?;
        Ok(self.matcher.matches_parts(&key.r#type, &key.stream_id))
    }
}

/// The sending half, which gives up as soon as the client leaves or the server shuts down.
struct Feed {
    tx: mpsc::Sender<Result<Item, OrdoError>>,
    shutdown: CancellationToken,
}

impl Feed {
    async fn event(&mut self, encoded: Bytes) -> bool {
        self.send(Item::Event(encoded)).await
    }

    async fn heartbeat(&mut self, head: u64, scanned: u64, first: u64) -> bool {
        self.send(Item::Heartbeat {
            head_offset: head,
            scanned_offset: scanned,
            first_offset: first,
            time: SystemTime::now(),
        })
        .await
    }

    async fn send(&mut self, item: Item) -> bool {
        if self.shutdown.is_cancelled() {
            return false;
        }
        // Room in the channel (the usual case for a live subscriber): no futures to build. A
        // thousand subscribers take this path a million times a second.
        let item = match self.tx.try_send(Ok(item)) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
            Err(mpsc::error::TrySendError::Full(item)) => item,
        };
        tokio::select! {
            sent = self.tx.send(item) => sent.is_ok(),
            _ = self.shutdown.cancelled() => false,
        }
    }

    /// On shutdown, ends the stream with UNAVAILABLE naming the resume point, so the client can
    /// tell it from a clean end. Waits a moment for room: the channel may be full of history the
    /// client is still reading. Does nothing if the client went away.
    async fn end(&mut self, resume: u64) {
        if !self.shutdown.is_cancelled() {
            return;
        }
        let err = OrdoError::Unavailable(format!(
            "server is shutting down; resume with start.after_offset = {resume}"
        ));
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.tx.send(Err(err))).await;
    }

    /// Ends the stream with UNAUTHENTICATED because its token was revoked; waits a moment for
    /// room so the client learns why.
    async fn revoked(&mut self, access: &StreamAccess) {
        let err = access.revoked_error();
        let _ = tokio::time::timeout(REVOKED_GRACE, self.tx.send(Err(err))).await;
    }

    /// Ends the stream with `err` once the client has read what is queued before it (a
    /// subscriber that retention overtook is typically one that reads slowly): ending without
    /// it would look like a clean end. Gives up if the client leaves or the server shuts down.
    async fn fail(&mut self, err: OrdoError) {
        tokio::select! {
            _ = self.tx.send(Err(err)) => {}
            _ = self.shutdown.cancelled() => {}
        }
    }
}
