//! The consumer's side of a subscription.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{sync::mpsc, task::AbortHandle};
use tokio_stream::Stream;

use super::{item::SubscriptionItem, options::SubscribeOptions, task::Task};
use crate::{client::OrdoClient, cursor::CursorFile, error::Result};

/// Items buffered between the background task and the consumer.
const BUFFER: usize = 256;

/// A self-resuming subscription: a `Stream` of [`SubscriptionItem`]s. It ends only with an
/// error that retrying cannot fix (e.g. an invalid filter), after `max_attempts`, or never.
///
/// With a cursor file, an item counts as processed once the consumer asks for the next one:
/// each `poll_next` first saves the position of the items already returned. Call
/// [`Subscription::commit`] before exiting to save the last one too. So after a crash the
/// consumer sees at most the one item it was processing again, and never misses one.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Result<SubscriptionItem>>,
    task: AbortHandle,
    cursor: Option<CursorFile>,
    /// Position of everything returned to the consumer so far.
    returned: Option<u64>,
    /// Position last written to the cursor file.
    saved: Option<u64>,
}

impl Subscription {
    pub(crate) fn start(client: OrdoClient, options: SubscribeOptions) -> Result<Self> {
        let cursor = options.cursor_file.clone().map(CursorFile::new);
        let saved = match &cursor {
            Some(cursor) => cursor.load()?,
            None => None,
        };
        let (tx, rx) = mpsc::channel(BUFFER);
        let task = Task {
            client,
            options,
            resume_after: saved,
            tx,
        };
        let task = tokio::spawn(task.run()).abort_handle();
        Ok(Self {
            rx,
            task,
            cursor,
            returned: saved,
            saved,
        })
    }

    /// Every matching event up to this offset has been returned to the consumer.
    pub fn position(&self) -> Option<u64> {
        self.returned
    }

    /// Saves [`Subscription::position`] to the cursor file now (no-op without one).
    pub fn commit(&mut self) -> Result<()> {
        let (Some(cursor), Some(position)) = (&self.cursor, self.returned) else {
            return Ok(());
        };
        if self.saved != Some(position) {
            cursor.save(position)?;
            self.saved = Some(position);
        }
        Ok(())
    }
}

impl Stream for Subscription {
    type Item = Result<SubscriptionItem>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // Asking for the next item acknowledges the previous ones.
        if let Err(err) = this.commit() {
            return Poll::Ready(Some(Err(err)));
        }
        let polled = this.rx.poll_recv(cx);
        if let Poll::Ready(Some(Ok(item))) = &polled
            && let Some(position) = item.position()
        {
            this.returned = Some(this.returned.map_or(position, |p| p.max(position)));
        }
        polled
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}
