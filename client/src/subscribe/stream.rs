//! The consumer's side of a subscription.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{sync::mpsc, task::AbortHandle};
use tokio_stream::Stream;

use super::{item::SubscriptionItem, options::SubscribeOptions, task::Task};
use crate::{
    client::OrdoClient,
    cursor::CursorFile,
    error::{ClientError, Result},
};

/// Items buffered between the background task and the consumer.
const BUFFER: usize = 256;
/// While items keep flowing, the cursor file is rewritten at most this often: a rewrite per
/// event would cost more than the events (measured: 20k events 1.1 s -> 4.3 s).
const SAVE_EVERY: Duration = Duration::from_millis(200);

/// A self-resuming subscription: a `Stream` of [`SubscriptionItem`]s. It ends only with an
/// error that retrying cannot fix (e.g. an invalid filter), after `max_attempts`, or never.
///
/// With a cursor file, an item counts as processed once the consumer asks for the next one.
/// The position of processed items is saved whenever the consumer waits for new items, and at
/// least every 200 ms while a backlog streams; call [`Subscription::commit`] before exiting to
/// save the last one too. So after a crash the consumer sees at most the last 200 ms of items
/// again, and never misses one.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Result<SubscriptionItem>>,
    task: AbortHandle,
    cursor: Option<CursorFile>,
    /// Position of everything returned to the consumer so far.
    returned: Option<u64>,
    /// Position last written to the cursor file.
    saved: Option<u64>,
    last_save: Instant,
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
        // Fail with an error, not tokio's panic, when called outside a runtime.
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            ClientError::Config("subscribe must be called from within a tokio runtime".into())
        })?;
        let task = runtime.spawn(task.run()).abort_handle();
        Ok(Self {
            rx,
            task,
            cursor,
            returned: saved,
            saved,
            last_save: Instant::now(),
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
            self.last_save = Instant::now();
        }
        Ok(())
    }
}

impl Stream for Subscription {
    type Item = Result<SubscriptionItem>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // Asking for the next item acknowledges the previous ones: save them when the last
        // save is old, or when there is nothing to deliver right now (idle, so it is cheap).
        // Saving before taking an item from the channel means an error here loses no item.
        if this.last_save.elapsed() >= SAVE_EVERY
            && let Err(err) = this.commit()
        {
            return Poll::Ready(Some(Err(err)));
        }
        let polled = this.rx.poll_recv(cx);
        if polled.is_pending()
            && let Err(err) = this.commit()
        {
            return Poll::Ready(Some(Err(err)));
        }
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
