//! `AppendStream`: a producer sends events one by one and gets one answer per event, in send
//! order, as each becomes durable.
//!
//! Two tasks per stream. The *reader* takes requests in order, checks each one (token
//! prefixes, then the same validation as Publish) and queues it in the log with
//! [`EventLog::enqueue`](crate::store::EventLog::enqueue), which returns as soon as the event is
//! in the writer's queue: events are therefore committed in send order while many of them wait
//! for the same group commit. The *answerer* awaits each event's outcome in that same order and
//! sends its ack or rejection. Each event is its own `AppendBatch`, so a version conflict or a
//! bad event refuses only that event; the writer still folds many of them into one fdatasync.
//!
//! Flow control: the reader holds a permit per unanswered event (and per byte of it) and stops
//! reading when the window is used up; HTTP/2 flow control then stops the client. The answerer
//! gives a permit back only once its answer is in the bounded response channel, so a client
//! that stops reading acks stalls the reader instead of growing memory.

use std::{sync::Arc, time::SystemTime};

use ordo_api::v1::{
    AppendAck, AppendStreamRequest, AppendStreamResponse, AppendWindow,
    append_stream_response::Message,
};
use prost::Message as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;

use crate::{
    auth::{Principal, StreamAccess},
    config::Limits,
    error::{OrdoError, Refused},
    events::publish::{check, to_event, to_wire},
    store::{AppendBatch, AppendFuture, AppendOutcome, SharedLog, StoreError},
};

pub const APPEND_STREAM_PATH: &str = "/ordo.v1.EventService/AppendStream";

/// Answers buffered for a client that is slow to read them, beyond the window. Small: the
/// window is what bounds a stream; this only smooths bursts of acks from one group commit.
const ANSWER_BUFFER: usize = 64;

/// One open AppendStream.
pub struct AppendStream {
    pub log: SharedLog,
    pub limits: Limits,
    pub principal: Principal,
    pub access: StreamAccess,
    pub shutdown: CancellationToken,
}

/// An event the reader has taken and the answerer has not answered yet.
struct InFlight {
    client_seq: u64,
    outcome: Outcome,
    /// Given back once the answer is queued for the client.
    _permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
}

enum Outcome {
    /// Refused before reaching the log.
    Rejected(OrdoError),
    /// Queued in the log; resolves once durable or refused there.
    Queued(AppendFuture),
}

/// What the reader hands to the answerer, in order.
enum Item {
    Event(InFlight),
    /// The reader stopped for this reason: answer what is in flight, then end the stream with it.
    End(OrdoError),
}

impl AppendStream {
    /// Starts the stream's tasks. The first answer is the window; the stream ends when the client
    /// half-closes (after every event is answered), or with an error on shutdown or revocation.
    pub fn spawn<S, E>(self, requests: S) -> ReceiverStream<Result<AppendStreamResponse, OrdoError>>
    where
        S: Stream<Item = Result<AppendStreamRequest, E>> + Send + Unpin + 'static,
        E: Send + 'static,
    {
        let window = self.limits.append_stream_window.max(1);
        let (out, answers) = mpsc::channel(ANSWER_BUFFER);
        let (queue, in_flight) = mpsc::channel(window);
        let hello = AppendStreamResponse {
            message: Some(Message::Window(AppendWindow {
                max_in_flight: u32::try_from(window).unwrap_or(u32::MAX),
            })),
        };
        tokio::spawn(answer(hello, in_flight, out));
        tokio::spawn(self.read(requests, queue, window));
        ReceiverStream::new(answers)
    }

    async fn read<S, E>(self, mut requests: S, queue: mpsc::Sender<Item>, window: usize)
    where
        S: Stream<Item = Result<AppendStreamRequest, E>> + Send + Unpin + 'static,
    {
        let count = Arc::new(Semaphore::new(window));
        let budget = self
            .limits
            .append_stream_window_bytes
            .clamp(1, Semaphore::MAX_PERMITS) as u32;
        let bytes = Arc::new(Semaphore::new(budget as usize));
        loop {
            // Room in the window before reading on: while it is full, requests stay unread.
            let permit = tokio::select! {
                biased;
                end = self.stopped() => return send_end(&queue, end).await,
                permit = count.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let request = tokio::select! {
                biased;
                end = self.stopped() => return send_end(&queue, end).await,
                request = requests.next() => match request {
                    // Half-closed by the client, or broken: answer what is in flight and end.
                    None | Some(Err(_)) => return,
                    Some(Ok(request)) => request,
                },
            };
            let size = (request.encoded_len() as u32).clamp(1, budget);
            let byte_permit = tokio::select! {
                biased;
                end = self.stopped() => return send_end(&queue, end).await,
                permit = bytes.clone().acquire_many_owned(size) => permit.ok(),
            };
            let client_seq = request.client_seq;
            let (outcome, closed) = match self.prepare(request) {
                Err(err) => (Outcome::Rejected(err), false),
                Ok(batch) => match self.log.enqueue(batch).await {
                    Ok(reply) => (Outcome::Queued(reply), false),
                    Err(err) => (Outcome::Rejected(err.into()), true),
                },
            };
            let item = Item::Event(InFlight {
                client_seq,
                outcome,
                _permits: (permit, byte_permit),
            });
            if queue.send(item).await.is_err() {
                return;
            }
            if closed {
                let end = OrdoError::Unavailable(
                    "the event log is closed (the server is stopping); reconnect and resend the unacknowledged events with the same ids".into(),
                );
                return send_end(&queue, end).await;
            }
        }
    }

    /// Resolves when the stream must stop reading: shutdown, or its token was revoked.
    async fn stopped(&self) -> OrdoError {
        tokio::select! {
            _ = self.shutdown.cancelled() => OrdoError::Unavailable(
                "the server is shutting down; reconnect and resend the unacknowledged events with the same ids".into(),
            ),
            _ = self.access.revoked() => self.access.revoked_error(),
        }
    }

    /// The checks Publish makes, for one event: the token's prefixes, then validation.
    fn prepare(&self, request: AppendStreamRequest) -> Result<AppendBatch, OrdoError> {
        let Some(new) = request.event else {
            return Err(OrdoError::invalid(
                "event is required: each AppendStreamRequest carries one event",
            ));
        };
        if !self.principal.may_write(&new.r#type, &new.stream_id) {
            return Err(OrdoError::PermissionDenied {
                message: format!(
                    "event (type {:?}, stream {:?}) is outside the event types/streams token {:?} may publish; nothing was appended",
                    new.r#type,
                    new.stream_id,
                    self.principal.name()
                ),
                refused: Refused::new(self.principal.name(), APPEND_STREAM_PATH, "event prefix"),
            });
        }
        check("event", &new, &self.limits)?;
        let expected_versions = new
            .expected_stream_version
            .map(|version| vec![(new.stream_id.clone(), version)])
            .unwrap_or_default();
        let index_ids = !new.id.is_empty();
        Ok(AppendBatch {
            events: vec![to_event(new, SystemTime::now())],
            expected_versions,
            idempotency: None,
            index_ids,
            project: None,
        })
    }
}

async fn send_end(queue: &mpsc::Sender<Item>, end: OrdoError) {
    let _ = queue.send(Item::End(end)).await;
}

/// Answers events in the order the reader took them.
async fn answer(
    hello: AppendStreamResponse,
    mut in_flight: mpsc::Receiver<Item>,
    out: mpsc::Sender<Result<AppendStreamResponse, OrdoError>>,
) {
    if out.send(Ok(hello)).await.is_err() {
        return;
    }
    while let Some(item) = in_flight.recv().await {
        let event = match item {
            Item::Event(event) => event,
            Item::End(err) => {
                let _ = out.send(Err(err)).await;
                return;
            }
        };
        let result = match event.outcome {
            Outcome::Rejected(err) => Err(err),
            Outcome::Queued(reply) => reply.await.map_err(OrdoError::from),
        };
        let message = match result.and_then(single_position) {
            Ok((position, deduplicated)) => Message::Ack(AppendAck {
                client_seq: event.client_seq,
                position: Some(to_wire(position)),
                deduplicated,
            }),
            Err(err) => Message::Rejected(err.into_rejection(event.client_seq)),
        };
        let response = AppendStreamResponse {
            message: Some(message),
        };
        // The client stopped listening: nothing to answer, but keep draining so the events
        // already queued in the log are awaited rather than abandoned mid-flight.
        let _ = out.send(Ok(response)).await;
    }
}

/// The position of a one-event append, and whether it was already stored.
fn single_position(outcome: AppendOutcome) -> Result<(crate::store::Position, bool), OrdoError> {
    let (positions, deduplicated) = match outcome {
        AppendOutcome::Appended { positions, .. } => (positions, false),
        AppendOutcome::Deduplicated { positions } => (positions, true),
        AppendOutcome::Replayed { .. } => (Vec::new(), true),
    };
    positions
        .into_iter()
        .next()
        .map(|p| (p, deduplicated))
        .ok_or_else(|| {
            OrdoError::Store(StoreError::Corrupt {
                what: "append outcome".into(),
                detail: "the log answered a one-event append without its position".into(),
            })
        })
}
