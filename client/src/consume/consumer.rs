//! The caller's side of a consumer-group membership.

use std::{
    pin::Pin,
    sync::{Arc, atomic::AtomicU64},
    task::{Context, Poll},
    time::Duration,
};

use ordo_api::v1::ConsumerGroup;
use tokio::{
    sync::{mpsc, oneshot},
    task::AbortHandle,
};
use tokio_stream::Stream;

use super::{
    delivery::{Command, Delivery, Link},
    options::ConsumeOptions,
    task::Task,
};
use crate::{
    client::OrdoClient,
    error::{ClientError, Result},
};

/// Items waiting between the background task and the caller. Small on purpose: the server's
/// `max_in_flight` bounds the deliveries out at once, and the task keeps those it could not hand
/// over yet (never more than that) instead of blocking, so it always reads the server's answers.
const ITEMS: usize = 64;
/// Acks, nacks and extends waiting for the task; a caller that outpaces it waits in `ack()`.
const COMMANDS: usize = 256;

/// One item of a [`Consumer`].
///
/// Deliveries are not boxed although they are large: they are nearly every item, so boxing
/// would add an allocation per event to save space on the rare notes.
#[derive(Debug)]
#[non_exhaustive]
#[allow(clippy::large_enum_variant)]
pub enum ConsumerItem {
    /// The member (re)joined the group. Sent after every reconnect too.
    Joined {
        /// Unique while connected; it changes with each rejoin.
        member_id: String,
        /// The deliveries this member may hold at once.
        max_in_flight: u32,
        /// The group's settings and progress when it joined.
        group: Box<ConsumerGroup>,
    },
    /// An event to process, then ack or nack.
    Delivery(Delivery),
    /// The stream broke; the consumer rejoins after `delay`. Deliveries not acked (and
    /// confirmed) before the break are delivered again.
    Reconnecting {
        /// Consecutive failed attempts, from 1.
        attempt: u32,
        /// How long it waits before rejoining.
        delay: Duration,
        /// Why the previous stream ended.
        reason: String,
    },
}

/// A member of a consumer group that rejoins by itself: a `Stream` of [`ConsumerItem`]s.
///
/// Delivery is **at-least-once**. When the stream breaks (network, `UNAVAILABLE`, a server
/// restart) the consumer rejoins with capped, jittered backoff and goes on; every delivery that
/// was not acked and confirmed before the break is delivered again, to this member or another.
/// Deliveries of a broken stream that were not read yet are skipped, and settling one that was
/// read fails its [`super::Settlement`] with `FailedPrecondition` without reaching the server.
/// Make processing idempotent (e.g. keyed by the event's `id`).
///
/// The stream ends with an error retrying cannot fix: the group does not exist or was deleted
/// (`NotFound`), the token may not use it (`PermissionDenied`, `Unauthenticated`), a bad
/// request (`InvalidArgument`); or with `Unavailable` after `max_attempts` failed rejoins.
///
/// Memory is bounded by the server's `max_in_flight`: it sends nothing more until deliveries are
/// settled, and every queue between the stream and the caller is a bounded channel. There are no
/// heartbeats on this stream: a dead connection is found by the client's HTTP/2 keepalive pings.
#[derive(Debug)]
pub struct Consumer {
    rx: mpsc::Receiver<Result<ConsumerItem>>,
    link: Link,
    task: AbortHandle,
}

impl Consumer {
    pub(crate) fn start(client: OrdoClient, options: ConsumeOptions) -> Result<Self> {
        let (items, rx) = mpsc::channel(ITEMS);
        let (commands, queue) = mpsc::channel(COMMANDS);
        let link = Link {
            commands,
            generation: Arc::new(AtomicU64::new(0)),
        };
        // Fail with an error, not tokio's panic, when called outside a runtime.
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            ClientError::Config("consume must be called from within a tokio runtime".into())
        })?;
        let task = Task::new(client, options, link.clone(), queue, items);
        let task = runtime.spawn(task.run()).abort_handle();
        Ok(Self { rx, link, task })
    }

    /// Sends the acks and nacks queued so far, waits until the server has answered each, then
    /// leaves the group. Deliveries received but not settled go to other members (the server
    /// counts them as failed deliveries). Fails if the stream broke with answers still owed:
    /// those deliveries will be delivered again.
    pub async fn close(self) -> Result<()> {
        let (reply, done) = oneshot::channel();
        if self
            .link
            .commands
            .send(Command::Close { reply })
            .await
            .is_err()
        {
            return Ok(());
        }
        done.await.unwrap_or(Ok(()))
    }
}

impl Stream for Consumer {
    type Item = Result<ConsumerItem>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match this.rx.poll_recv(cx) {
                // Given out again by the server since the stream it came on broke.
                Poll::Ready(Some(Ok(ConsumerItem::Delivery(delivery))))
                    if delivery.generation != this.link.current() => {}
                other => return other,
            }
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
