//! [`Delivery`]: one event handed to this member, and the handle to settle it with.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use ordo_api::v1::{Event, NackAction};
use tokio::sync::{mpsc, oneshot};

use crate::error::{ClientError, Result};

/// What the caller asks of the background task.
#[derive(Debug)]
pub(super) enum Command {
    /// Ack or nack one delivery; `reply` gets the server's answer.
    Settle {
        generation: u64,
        id: String,
        how: How,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Push a delivery's deadline out; the server answers only a refusal.
    Extend {
        generation: u64,
        id: String,
        by: Option<Duration>,
    },
    /// Send what is queued, wait for every answer, then leave the group.
    Close { reply: oneshot::Sender<Result<()>> },
}

#[derive(Debug, Clone)]
pub(super) enum How {
    Ack,
    Nack(Nack),
}

/// The way from a delivery (or the [`super::Consumer`]) to the background task: its command
/// queue, and the generation (connection number) whose deliveries can still be settled.
#[derive(Debug, Clone)]
pub(super) struct Link {
    pub commands: mpsc::Sender<Command>,
    pub generation: Arc<AtomicU64>,
}

impl Link {
    pub fn current(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// How to fail a delivery: retry it (now or later) or park it in the group's dead-letter queue.
#[derive(Debug, Clone)]
pub struct Nack {
    pub(super) action: NackAction,
    pub(super) delay: Option<Duration>,
    pub(super) reason: String,
}

impl Nack {
    /// Deliver it again after the group's backoff. Counts as a failed delivery: the group's
    /// last allowed one parks the event instead.
    pub fn retry() -> Self {
        Self {
            action: NackAction::Retry,
            delay: None,
            reason: String::new(),
        }
    }

    /// Deliver it again after `delay` (at most a day) instead of the group's backoff.
    pub fn retry_after(delay: Duration) -> Self {
        Self {
            delay: Some(delay),
            ..Self::retry()
        }
    }

    /// Park it now, whatever its delivery count: it waits in the dead-letter queue until
    /// `ReplayParked`.
    pub fn park() -> Self {
        Self {
            action: NackAction::Park,
            ..Self::retry()
        }
    }

    /// Why, kept with the event if it is parked (at most 512 characters).
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = reason.into();
        self
    }
}

/// One event delivered to this member. Settle it with [`Delivery::ack`] or [`Delivery::nack`]
/// before its `ack_deadline`, or push the deadline out with [`Delivery::extend`]; a delivery
/// that is dropped unsettled is delivered again once its deadline passes.
#[derive(Debug)]
pub struct Delivery {
    /// `group/offset/attempt`: names this delivery of this event.
    pub id: String,
    /// 1 for the first delivery of the event, one more for each redelivery.
    pub attempt: u32,
    pub event: Event,
    /// When the server gives the event to someone again unless it is settled or extended.
    pub ack_deadline: Option<prost_types::Timestamp>,
    pub(super) generation: u64,
    pub(super) link: Link,
}

impl Delivery {
    /// The event's offset in the log.
    pub fn offset(&self) -> u64 {
        self.event.offset
    }

    /// Queues the ack and returns once it is on its way (waiting only for room in the queue);
    /// acks queued together go to the server as one request. Await the [`Settlement`] to know
    /// the ack is durable; dropping it is fine too ([`super::Consumer::close`] waits for every
    /// answer). Fails only when the consumer is closed.
    pub async fn ack(self) -> Result<Settlement> {
        self.settle(How::Ack).await
    }

    /// Queues a nack (retry or park); see [`Delivery::ack`].
    pub async fn nack(self, nack: Nack) -> Result<Settlement> {
        self.settle(How::Nack(nack)).await
    }

    /// Moves the ack deadline to `by` from now (`None`: the group's ack timeout), for work that
    /// takes longer than the timeout. Nothing to await: a refused extend means the delivery is
    /// no longer this member's, which its ack or nack then reports.
    pub async fn extend(&self, by: Option<Duration>) -> Result<()> {
        if self.generation != self.link.current() {
            return Ok(());
        }
        let command = Command::Extend {
            generation: self.generation,
            id: self.id.clone(),
            by,
        };
        self.link.commands.send(command).await.map_err(|_| closed())
    }

    async fn settle(self, how: How) -> Result<Settlement> {
        if self.generation != self.link.current() {
            return Ok(Settlement::failed(stale(&self.id)));
        }
        let (reply, answer) = oneshot::channel();
        let command = Command::Settle {
            generation: self.generation,
            id: self.id,
            how,
            reply,
        };
        self.link
            .commands
            .send(command)
            .await
            .map_err(|_| closed())?;
        Ok(Settlement(State::Waiting(answer)))
    }
}

/// Resolves once the server has made an ack or nack durable (`Ok`), refused it (the server's
/// error: e.g. `FailedPrecondition` when the delivery timed out and went to someone else), or
/// when the connection broke first (`Unavailable`: the event will be delivered again).
#[derive(Debug)]
pub struct Settlement(State);

#[derive(Debug)]
enum State {
    Waiting(oneshot::Receiver<Result<()>>),
    Failed(Option<ClientError>),
}

impl Settlement {
    pub(super) fn failed(err: ClientError) -> Self {
        Self(State::Failed(Some(err)))
    }
}

impl Future for Settlement {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            State::Waiting(answer) => Pin::new(answer).poll(cx).map(|answer| {
                answer.unwrap_or_else(|_| {
                    Err(ClientError::Unavailable(
                        "the consumer stopped before the server confirmed this; the delivery will be delivered again".into(),
                    ))
                })
            }),
            State::Failed(err) => Poll::Ready(Err(err.take().unwrap_or_else(|| {
                ClientError::Config("this settlement was already awaited".into())
            }))),
        }
    }
}

/// Settling a delivery from a connection that broke: the server has handed it out again.
pub(super) fn stale(id: &str) -> ClientError {
    ClientError::FailedPrecondition(format!(
        "delivery {id} came over a connection that broke since; the event is delivered again, settle the new delivery"
    ))
}

pub(super) fn closed() -> ClientError {
    ClientError::Config(
        "this consumer is closed; its unsettled deliveries will be delivered again".into(),
    )
}
