//! Ordered delivery (the default): one event at a time in log order; the event being retried
//! lives in the cursor (`pending_*`) and holds up the ones after it.

use std::time::Duration;

use ordo_api::v1::Event;

use super::{DeliveryError, DeliveryTask, Flow, outcome::Mode, read_one, retry::Decision};
use crate::{
    clock::now_ms,
    filter::Matcher,
    webhooks::records::{self, StoredWebhook},
};

impl DeliveryTask {
    /// One step of ordered delivery: the pending retry, else a redrive, else the next event.
    pub(super) async fn step_ordered(
        &mut self,
        hook: &StoredWebhook,
        matcher: &Matcher,
    ) -> Result<Flow, DeliveryError> {
        if !self.parallel_cleared {
            self.clear_parallel_records().await?;
            self.parallel_cleared = true;
        }
        let cursor = self.state.load_cursor(&self.id)?;
        let log = self.state.log().clone();

        if cursor.pending_offset != 0 {
            let wait = cursor.next_attempt_ms.saturating_sub(now_ms());
            if wait > 0 {
                // Re-enter the step afterwards: the definition may have changed meanwhile, or
                // retention may have removed the event (it wakes the task).
                return Ok(tokio::select! {
                    _ = self.cancel.cancelled() => Flow::Stop,
                    _ = tokio::time::sleep(Duration::from_millis(wait)) => Flow::Continue,
                    _ = self.wake.notified() => Flow::Continue,
                });
            }
            let offset = cursor.pending_offset;
            let event = read_one(&log, offset)?;
            let unwanted = match &event {
                // Its stream was deleted while it was being retried.
                None => true,
                Some(event) => !cursor.pending_redrive && !matcher.matches(event),
            };
            if unwanted && cursor.pending_redrive {
                self.state
                    .modify(&self.id, |_, c| {
                        if c.pending_offset == offset && c.pending_redrive {
                            c.clear_pending();
                        }
                        (
                            vec![records::delete(records::redrive_key(&self.id, offset))],
                            (),
                        )
                    })
                    .await?;
                return Ok(Flow::Continue);
            }
            if unwanted {
                // The filters changed while the event was being retried: it is no longer wanted.
                self.state
                    .modify(&self.id, |_, c| {
                        if c.pending_offset == offset && !c.pending_redrive {
                            c.clear_pending();
                            c.delivered_through = c.delivered_through.max(offset);
                        }
                        (Vec::new(), ())
                    })
                    .await?;
                return Ok(Flow::Continue);
            }
            let Some(event) = event else {
                return Ok(Flow::Continue);
            };
            let attempt = cursor.pending_attempts + 1;
            return self
                .attempt(hook, &event, cursor.pending_redrive, attempt)
                .await;
        }

        let redrive = log.scan_records(&records::redrive_prefix(&self.id), None, 1)?;
        if let Some((key, _)) = redrive.first()
            && let Some(offset) = records::trailing_u64(key)
        {
            let Some(event) = read_one(&log, offset)? else {
                // Its stream was deleted: nothing left to redrive.
                let writes = vec![records::delete(records::redrive_key(&self.id, offset))];
                self.state.modify(&self.id, |_, _| (writes, ())).await?;
                return Ok(Flow::Continue);
            };
            return self.attempt(hook, &event, true, 1).await;
        }

        let from = cursor.delivered_through + 1;
        if !self.fill_ahead(from)? {
            tokio::select! {
                _ = self.cancel.cancelled() => return Ok(Flow::Stop),
                changed = self.head.changed() => if changed.is_err() {
                    return Ok(Flow::Stop);
                },
                _ = self.wake.notified() => {}
            }
            return Ok(Flow::Continue);
        }
        if let Some(index) = self.ahead.iter().position(|e| matcher.matches(e)) {
            self.ahead.drain(..index);
            if let Some(event) = self.ahead.pop_front() {
                return self.attempt(hook, &event, false, 1).await;
            }
        }
        // Nothing read ahead matches (or only deleted events are left): remember that, so a
        // restart does not re-scan it.
        let last = self.ahead_range.end - 1;
        self.ahead.clear();
        self.ahead_range = 0..0;
        self.state
            .modify(&self.id, |_, c| {
                if c.pending_offset == 0 {
                    c.delivered_through = c.delivered_through.max(last);
                }
                (Vec::new(), ())
            })
            .await?;
        Ok(Flow::Continue)
    }

    /// Deletes parallel-mode retry records: after a switch to ordered mode, the cursor alone
    /// decides, and events above it are delivered again from their first attempt.
    async fn clear_parallel_records(&self) -> Result<(), DeliveryError> {
        loop {
            let page =
                self.state
                    .log()
                    .scan_records(&records::parallel_prefix(&self.id), None, 1000)?;
            if page.is_empty() {
                return Ok(());
            }
            let writes = page.into_iter().map(|(k, _)| records::delete(k)).collect();
            self.state.modify(&self.id, |_, _| (writes, ())).await?;
        }
    }

    /// One HTTP attempt at `event`, and the durable record of its outcome (ordered mode).
    async fn attempt(
        &mut self,
        hook: &StoredWebhook,
        event: &Event,
        redrive: bool,
        attempt: u32,
    ) -> Result<Flow, DeliveryError> {
        let started_ms = now_ms();
        let Some(sent) = self.sender.send(&self.cancel, hook, event).await else {
            return Ok(Flow::Stop);
        };
        let outcome = self
            .record(event, redrive, attempt, started_ms, &sent, Mode::Ordered)
            .await?;
        Ok(match outcome {
            None | Some(Decision::Disable(_)) => Flow::Stop,
            Some(_) => Flow::Continue,
        })
    }
}
