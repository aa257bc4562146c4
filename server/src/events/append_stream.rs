//! `AppendStream`: a producer sends events one by one and gets one answer per event, in send
//! order, as each becomes durable.
//!
//! Two tasks per stream. The *reader* takes requests in order, checks each one (token
//! prefixes, then the same validation as Publish) and queues it in the log with
//! [`EventLog::enqueue_many`](crate::store::EventLog::enqueue_many), which returns as soon as
//! the events are in the writer's queue: events are therefore committed in send order while
//! many of them wait for the same group commit. Events that have already arrived when the
//! reader looks are queued together (one queue entry, one reply), which is what makes a stream
//! of single events as cheap as a batch. The *answerer* awaits the outcomes in that same order
//! and sends each event's ack or rejection. Each event is still its own `AppendBatch`, so a
//! version conflict or a duplicate id refuses or deduplicates only that event.
//!
//! Flow control: the reader holds a permit per unanswered event (and per byte of it) and stops
//! reading when the window is used up; HTTP/2 flow control then stops the client. The answerer
//! gives a permit back only once its answer is in the bounded response channel, so a client
//! that stops reading acks stalls the reader instead of growing memory.

use std::{pin::Pin, sync::Arc, task::Poll, time::SystemTime};

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
    store::{AppendBatch, AppendOutcome, OutcomesFuture, SharedLog, StoreError},
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

/// Events the reader took together (whatever had arrived when it looked) and the answerer has
/// not answered yet.
#[derive(Default)]
struct InFlight {
    /// Each event's `client_seq`, and its refusal if it never reached the log. The others have
    /// one batch each in `queued`, in the same order.
    events: Vec<(u64, Option<OrdoError>)>,
    batches: Vec<AppendBatch>,
    queued: Option<OutcomesFuture>,
    /// Given back once the answers are queued for the client.
    permits: Vec<OwnedSemaphorePermit>,
}

impl InFlight {
    fn take(&mut self, stream: &AppendStream, request: AppendStreamRequest) {
        let client_seq = request.client_seq;
        match stream.prepare(request) {
            Ok(batch) => {
                self.batches.push(batch);
                self.events.push((client_seq, None));
            }
            Err(err) => self.events.push((client_seq, Some(err))),
        }
    }
}

/// What the reader hands to the answerer, in order.
enum Item {
    Events(InFlight),
    /// The reader stopped for this reason: answer what is in flight, then end the stream with it.
    End(OrdoError),
}

/// Most events queued in the log as one entry: enough to amortise the queue and the wake-ups,
/// small enough that the first of them is not held back.
const MAX_TAKEN_TOGETHER: usize = 256;

impl AppendStream {
    /// Starts the stream's tasks. The first answer is the window; the stream ends when the client
    /// half-closes (after every event is answered), or with an error on shutdown or revocation.
    pub fn spawn<S>(self, requests: S) -> ReceiverStream<Result<AppendStreamResponse, OrdoError>>
    where
        S: Stream<Item = Result<AppendStreamRequest, OrdoError>> + Send + Unpin + 'static,
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

    async fn read<S>(self, mut requests: S, queue: mpsc::Sender<Item>, window: usize)
    where
        S: Stream<Item = Result<AppendStreamRequest, OrdoError>> + Send + Unpin + 'static,
    {
        let count = Arc::new(Semaphore::new(window));
        let budget = self
            .limits
            .append_stream_window_bytes
            .clamp(1, Semaphore::MAX_PERMITS) as u32;
        let bytes = Arc::new(Semaphore::new(budget as usize));
        // A request read while the byte budget was used up by its own group: it starts the next.
        let mut carried: Option<(AppendStreamRequest, OwnedSemaphorePermit)> = None;
        loop {
            let mut group = InFlight::default();
            let (first, permit) = match carried.take() {
                Some(carried) => carried,
                None => {
                    // Room in the window before reading on: while it is full, requests stay
                    // unread and HTTP/2 flow control holds the client.
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
                            // Half-closed by the client: answer what is in flight and end.
                            None => return,
                            // Broken (an oversized or undecodable message, or the client went
                            // away): answer what is in flight, then end with why.
                            Some(Err(err)) => return send_end(&queue, err).await,
                            Some(Ok(request)) => request,
                        },
                    };
                    (request, permit)
                }
            };
            let size = (first.encoded_len() as u32).clamp(1, budget);
            let byte_permit = tokio::select! {
                biased;
                end = self.stopped() => return send_end(&queue, end).await,
                permit = bytes.clone().acquire_many_owned(size) => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            group.permits.extend([permit, byte_permit]);
            group.take(&self, first);
            // Whatever else has already arrived joins this group, without waiting for more.
            let mut ended: Option<Option<OrdoError>> = None;
            while group.events.len() < MAX_TAKEN_TOGETHER {
                let Ok(permit) = count.clone().try_acquire_owned() else {
                    break;
                };
                let request = match ready(&mut requests).await {
                    None => break,
                    Some(Some(Ok(request))) => request,
                    Some(None) => {
                        ended = Some(None);
                        break;
                    }
                    Some(Some(Err(err))) => {
                        ended = Some(Some(err));
                        break;
                    }
                };
                let size = (request.encoded_len() as u32).clamp(1, budget);
                match bytes.clone().try_acquire_many_owned(size) {
                    Ok(byte_permit) => {
                        group.permits.extend([permit, byte_permit]);
                        group.take(&self, request);
                    }
                    Err(_) => {
                        carried = Some((request, permit));
                        break;
                    }
                }
            }
            let mut closed = false;
            if !group.batches.is_empty() {
                let batches = std::mem::take(&mut group.batches);
                match self.log.enqueue_many(batches).await {
                    Ok(outcomes) => group.queued = Some(outcomes),
                    Err(_) => closed = true,
                }
            }
            if queue.send(Item::Events(group)).await.is_err() {
                return;
            }
            if closed {
                let end = OrdoError::Unavailable(
                    "the event log is closed (the server is stopping); reconnect and resend the unacknowledged events with the same ids".into(),
                );
                return send_end(&queue, end).await;
            }
            match ended {
                None => {}
                Some(None) => return,
                Some(Some(err)) => return send_end(&queue, err).await,
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

/// The next request if one has already arrived: `None` when none is ready now, `Some(None)` when
/// the stream ended.
async fn ready<S>(requests: &mut S) -> Option<Option<Result<AppendStreamRequest, OrdoError>>>
where
    S: Stream<Item = Result<AppendStreamRequest, OrdoError>> + Unpin,
{
    std::future::poll_fn(|cx| {
        Poll::Ready(match Pin::new(&mut *requests).poll_next(cx) {
            Poll::Ready(next) => Some(next),
            Poll::Pending => None,
        })
    })
    .await
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
        let group = match item {
            Item::Events(group) => group,
            Item::End(err) => {
                let _ = out.send(Err(err)).await;
                return;
            }
        };
        let mut outcomes = match group.queued {
            None => Ok(Vec::new().into_iter()),
            Some(queued) => queued.await.map(Vec::into_iter),
        };
        for (client_seq, refused) in group.events {
            let result = match (refused, &mut outcomes) {
                (Some(err), _) => Err(err),
                (None, Ok(outcomes)) => match outcomes.next() {
                    Some(outcome) => outcome.map_err(OrdoError::from),
                    None => Err(missing()),
                },
                // The log closed before answering: none of these is known to be stored.
                (None, Err(_)) => Err(OrdoError::Store(StoreError::Closed)),
            };
            let message = match result.and_then(single_position) {
                Ok((position, deduplicated)) => Message::Ack(AppendAck {
                    client_seq,
                    position: Some(to_wire(position)),
                    deduplicated,
                }),
                Err(err) => Message::Rejected(err.into_rejection(client_seq)),
            };
            let response = AppendStreamResponse {
                message: Some(message),
            };
            // The client stopped listening: nothing to answer, but keep draining so the events
            // already queued in the log are awaited rather than abandoned mid-flight.
            let _ = out.send(Ok(response)).await;
        }
        drop(group.permits);
    }
}

fn missing() -> OrdoError {
    OrdoError::Store(StoreError::Corrupt {
        what: "append outcome".into(),
        detail: "the log answered fewer appends than it was given".into(),
    })
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
