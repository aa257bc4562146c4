//! [`Producer`]: a streaming producer on `EventService.AppendStream`.
//!
//! [`Producer::send`] queues an event and returns at once with an [`AckFuture`]; it waits only
//! when the server's window of unacknowledged events is full, which is how a fast producer is
//! slowed to what the server can make durable. Acks arrive in send order, each once its event is
//! durable; await the futures that matter (or none, and call [`Producer::flush`]).
//!
//! Reconnecting is the caller's job, on purpose: only the caller knows which events it still
//! has. When a send or an ack fails with a retryable error ([`ClientError::is_retryable`]), open
//! a new producer and resend every event that was not acked, with the same ids: ids already
//! stored are answered with their original positions (`deduplicated`), so each event ends up in
//! the log exactly once. Events without an id cannot be deduplicated and may be stored twice.
//!
//! ```no_run
//! use ordo_client::{OrdoClient, v1::NewEvent};
//!
//! # async fn run() -> Result<(), ordo_client::ClientError> {
//! let client = OrdoClient::connect("http://127.0.0.1:50051").await?;
//! let mut producer = client.producer().await?;
//! let mut acks = Vec::new();
//! for n in 0..10_000 {
//!     let event = NewEvent {
//!         stream_id: "sensor-7".into(),
//!         r#type: "sensor.reading".into(),
//!         id: format!("sensor-7-{n}"),
//!         data: format!("{{\"n\": {n}}}").into_bytes(),
//!         ..Default::default()
//!     };
//!     acks.push(producer.send(event).await?);
//! }
//! producer.flush().await;
//! for ack in acks {
//!     println!("stored at offset {}", ack.await?.position.offset);
//! }
//! producer.close().await?;
//! # Ok(())
//! # }
//! ```

use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use ordo_api::v1::{AppendStreamRequest, EventPosition, NewEvent, append_stream_response::Message};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot},
    task::JoinHandle,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

use crate::error::{ClientError, Result};

/// Where an acknowledged event is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The number [`Producer::send`] gave the event (1, 2, 3... per producer).
    pub client_seq: u64,
    pub position: EventPosition,
    /// True when the id was already stored: `position` is the original one, nothing was added.
    pub deduplicated: bool,
}

type Reply = oneshot::Sender<Result<Ack>>;

/// Events sent and not yet answered, oldest first. Bounded by the window: each entry holds one
/// of its permits.
#[derive(Default)]
struct Queue {
    entries: VecDeque<(u64, Reply, OwnedSemaphorePermit)>,
    /// Set once the stream ended: nothing will answer an event registered after that.
    ended: bool,
}

type Pending = Arc<Mutex<Queue>>;

/// A streaming producer. Not `Clone`: one producer is one ordered stream; open one per task
/// (they share the client's connection).
pub struct Producer {
    requests: Option<mpsc::Sender<AppendStreamRequest>>,
    pending: Pending,
    window: Arc<Semaphore>,
    max_in_flight: u32,
    next_seq: u64,
    answers: JoinHandle<Result<()>>,
}

impl Producer {
    pub(crate) async fn open(
        mut events: ordo_api::v1::event_service_client::EventServiceClient<
            crate::client::AuthChannel,
        >,
    ) -> Result<Self> {
        // Requests wait in this channel only until the server reads them; the window below
        // bounds how many there are.
        let (requests, rx) = mpsc::channel(64);
        let mut answers = events
            .append_stream(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let max_in_flight = match answers.message().await? {
            Some(response) => match response.message {
                Some(Message::Window(window)) => window.max_in_flight.max(1),
                _ => return Err(protocol("the server's first answer was not the window")),
            },
            None => return Err(protocol("the server ended the stream before its window")),
        };
        let pending: Pending = Arc::default();
        let answers = tokio::spawn(route(answers, pending.clone()));
        Ok(Self {
            requests: Some(requests),
            pending,
            window: Arc::new(Semaphore::new(max_in_flight as usize)),
            max_in_flight,
            next_seq: 1,
            answers,
        })
    }

    /// The server's window: the most events in flight before [`Producer::send`] waits.
    pub fn max_in_flight(&self) -> u32 {
        self.max_in_flight
    }

    /// Events sent and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight as usize - self.window.available_permits()
    }

    /// Queues `event`; returns as soon as it is on its way (waiting only while the window is
    /// full) with a future that resolves to its [`Ack`] once it is durable, or to the error the
    /// server refused it with (the stream goes on). Fails at once if the stream is broken:
    /// reconnect and resend what was not acked.
    pub async fn send(&mut self, event: NewEvent) -> Result<AckFuture> {
        let permit = self
            .window
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ended())?;
        let Some(requests) = &self.requests else {
            return Err(ClientError::Config(
                "this producer was closed; open a new one".into(),
            ));
        };
        let client_seq = self.next_seq;
        self.next_seq += 1;
        let (reply, rx) = oneshot::channel();
        // Registered before it is sent, so its answer always finds it.
        {
            let mut queue = lock(&self.pending);
            if queue.ended {
                return Err(ended());
            }
            queue.entries.push_back((client_seq, reply, permit));
        }
        let request = AppendStreamRequest {
            event: Some(event),
            client_seq,
        };
        if requests.send(request).await.is_err() {
            // Answered by the stream's end (the answer task fails every pending event).
            return Err(ended());
        }
        Ok(AckFuture(rx))
    }

    /// Waits until every event sent so far is answered (acked or refused).
    pub async fn flush(&self) {
        // All permits free means nothing in flight; a closed window means the stream ended and
        // every pending event was failed.
        if let Ok(all) = self.window.acquire_many(self.max_in_flight).await {
            drop(all);
        }
    }

    /// Half-closes the stream, waits for every answer, and reports how the stream ended.
    pub async fn close(mut self) -> Result<()> {
        self.requests = None;
        (&mut self.answers)
            .await
            .map_err(|err| protocol(&format!("the answer task failed: {err}")))?
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        if self.requests.is_some() {
            self.answers.abort();
        }
    }
}

/// Resolves to an event's [`Ack`], or to why it was refused or never answered.
pub struct AckFuture(oneshot::Receiver<Result<Ack>>);

impl Future for AckFuture {
    type Output = Result<Ack>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|answer| answer.unwrap_or_else(|_| Err(ended())))
    }
}

/// Matches each answer to the oldest pending event; on the stream's end, fails the rest.
async fn route(
    mut answers: Streaming<ordo_api::v1::AppendStreamResponse>,
    pending: Pending,
) -> Result<()> {
    let end = loop {
        let response = match answers.message().await {
            Ok(Some(response)) => response,
            Ok(None) => break Ok(()),
            Err(status) => break Err(ClientError::from(status)),
        };
        let (client_seq, answer) = match response.message {
            Some(Message::Ack(ack)) => {
                let Some(position) = ack.position else {
                    break Err(protocol("an ack without a position"));
                };
                let client_seq = ack.client_seq;
                (
                    client_seq,
                    Ok(Ack {
                        client_seq,
                        position,
                        deduplicated: ack.deduplicated,
                    }),
                )
            }
            Some(Message::Rejected(rejected)) => (
                rejected.client_seq,
                Err(ClientError::from(Status::new(
                    Code::from_i32(rejected.code),
                    rejected.message,
                ))),
            ),
            _ => continue,
        };
        let Some((seq, reply, _permit)) = lock(&pending).entries.pop_front() else {
            break Err(protocol("an answer for an event that was not sent"));
        };
        if seq != client_seq {
            break Err(protocol(&format!(
                "answer for event {client_seq} while {seq} was the oldest unanswered"
            )));
        }
        let _ = reply.send(answer);
    };
    let unanswered: Vec<_> = {
        let mut queue = lock(&pending);
        queue.ended = true;
        queue.entries.drain(..).collect()
    };
    for (_, reply, _) in unanswered {
        let error = match &end {
            Err(err) => same_error(err),
            Ok(()) => ended(),
        };
        let _ = reply.send(Err(error));
    }
    end
}

fn lock(pending: &Pending) -> std::sync::MutexGuard<'_, Queue> {
    pending
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The stream's error again, for each event it left unanswered (ClientError is not Clone).
fn same_error(err: &ClientError) -> ClientError {
    if err.is_retryable() {
        ClientError::Unavailable(format!(
            "the append stream broke before this event was acked ({err}); reconnect and resend it with the same id"
        ))
    } else {
        ClientError::Other {
            code: Code::Aborted,
            message: format!("the append stream ended before this event was acked: {err}"),
        }
    }
}

fn ended() -> ClientError {
    ClientError::Unavailable(
        "the append stream ended before this event was acked; reconnect and resend it with the same id".into(),
    )
}

fn protocol(what: &str) -> ClientError {
    ClientError::Other {
        code: Code::Internal,
        message: format!("unexpected AppendStream answer: {what}"),
    }
}
