//! The background task behind a [`super::Subscription`]: connect, forward, and on any retryable
//! failure wait (backoff) and resume after the last position it forwarded.

use std::time::Duration;

use ordo_api::v1::{
    StartPosition, SubscribeRequest, SubscribeResponse, start_position::Position,
    subscribe_response::Message,
};
use tokio::sync::mpsc;
use tonic::Streaming;

use super::{item::SubscriptionItem, options::SubscribeOptions};
use crate::{
    backoff::Backoff,
    client::OrdoClient,
    error::{ClientError, Result},
};

/// A connection silent for this many heartbeat periods is considered dead.
const STALL_HEARTBEATS: u32 = 3;

pub(super) type Sender = mpsc::Sender<Result<SubscriptionItem>>;

/// Why a connection ended.
enum Ended {
    /// The consumer dropped the subscription: stop quietly.
    ConsumerGone,
    /// Try again after a backoff.
    Retry(String),
    /// Give up: hand this error to the consumer.
    Fatal(ClientError),
}

pub(super) struct Task {
    pub client: OrdoClient,
    pub options: SubscribeOptions,
    /// The last position forwarded to the consumer (exclusive resume point), if any.
    pub resume_after: Option<u64>,
    pub tx: Sender,
}

impl Task {
    pub async fn run(mut self) {
        let mut backoff = Backoff::new(self.options.backoff);
        let stall = self.stall_timeout();
        loop {
            // A server that accepts the call but never answers must not hang us either.
            let opened = tokio::time::timeout(stall, self.client.subscribe_once(self.request()));
            let ended = match opened.await {
                Ok(Ok(stream)) => self.forward(stream, &mut backoff).await,
                Ok(Err(err)) if err.is_retryable() => Ended::Retry(err.to_string()),
                Ok(Err(err)) => Ended::Fatal(err),
                Err(_) => Ended::Retry(format!(
                    "no answer to Subscribe within {} ms",
                    stall.as_millis()
                )),
            };
            let reason = match ended {
                Ended::ConsumerGone => return,
                Ended::Fatal(err) => {
                    let _ = self.tx.send(Err(err)).await;
                    return;
                }
                Ended::Retry(reason) => reason,
            };
            if let Some(max) = self.options.max_attempts
                && backoff.attempt() >= max
            {
                let err = ClientError::Unavailable(format!(
                    "gave up after {max} reconnect attempts: {reason}"
                ));
                let _ = self.tx.send(Err(err)).await;
                return;
            }
            let delay = backoff.next_delay();
            let note = SubscriptionItem::Reconnecting {
                attempt: backoff.attempt(),
                delay,
                reason,
                resume_after: self.resume_after,
            };
            if self.tx.send(Ok(note)).await.is_err() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.tx.closed() => return,
            }
        }
    }

    /// How long a silent connection is trusted: three heartbeat periods.
    fn stall_timeout(&self) -> Duration {
        self.options
            .heartbeat
            .max(Duration::from_millis(100))
            .saturating_mul(STALL_HEARTBEATS)
    }

    /// Resume after the last forwarded position; the original start only before the first one.
    fn request(&self) -> SubscribeRequest {
        let start = match self.resume_after {
            Some(offset) => StartPosition {
                position: Some(Position::AfterOffset(offset)),
            },
            None => self.options.start.to_proto(),
        };
        SubscribeRequest {
            start: Some(start),
            filter: self.options.filter(),
            heartbeat_interval_ms: u32::try_from(self.options.heartbeat.as_millis())
                .unwrap_or(u32::MAX),
            start_at_first_retained: self.resume_after.is_none()
                && self.options.start_at_first_retained,
        }
    }

    async fn forward(
        &mut self,
        mut stream: Streaming<SubscribeResponse>,
        backoff: &mut Backoff,
    ) -> Ended {
        let stall = self.stall_timeout();
        loop {
            let message = tokio::select! {
                _ = self.tx.closed() => return Ended::ConsumerGone,
                next = tokio::time::timeout(stall, stream.message()) => next,
            };
            let response = match message {
                Err(_) => {
                    return Ended::Retry(format!(
                        "no message for {} ms (stalled connection)",
                        stall.as_millis()
                    ));
                }
                Ok(Ok(Some(response))) => response,
                Ok(Ok(None)) => return Ended::Retry("the server ended the stream".into()),
                Ok(Err(status)) => {
                    let err = ClientError::from(status);
                    if err.is_retryable() {
                        return Ended::Retry(err.to_string());
                    }
                    return Ended::Fatal(err);
                }
            };
            // The server answered: the next outage starts with a short delay again.
            backoff.reset();
            let Some(item) = self.item(response.message) else {
                continue;
            };
            if let Some(position) = item.position() {
                self.resume_after = Some(self.resume_after.map_or(position, |p| p.max(position)));
            }
            if self.tx.send(Ok(item)).await.is_err() {
                return Ended::ConsumerGone;
            }
        }
    }

    /// Converts a server message, dropping anything at or before the resume point: the server
    /// never sends such events, but this keeps "exactly once" true even if one did.
    fn item(&self, message: Option<Message>) -> Option<SubscriptionItem> {
        let item = match message? {
            Message::Event(event) => {
                if self.resume_after.is_some_and(|after| event.offset <= after) {
                    return None;
                }
                SubscriptionItem::Event(event)
            }
            Message::CaughtUp(caught_up) => SubscriptionItem::CaughtUp {
                head_offset: caught_up.head_offset,
            },
            Message::Heartbeat(beat) => SubscriptionItem::Heartbeat {
                head_offset: beat.head_offset,
                scanned_offset: beat.scanned_offset,
            },
        };
        Some(item)
    }
}
