//! Parallel delivery (`max_in_flight` > 1): several events in flight, each on its own retry
//! schedule, with the cursor as the low-water mark of settled events.

use std::{collections::BTreeMap, time::Duration};

use ordo_api::v1::Event;
use tokio::task::JoinSet;

use super::{
    DeliveryError, DeliveryTask, Flow, MAX_WINDOW, outcome::Mode, read_one, retry::Decision,
    send::Sent,
};
use crate::{
    clock::now_ms,
    webhooks::records::{self, ParallelRetry, StoredWebhook, decode},
};

impl DeliveryTask {
    /// Parallel mode: up to `max_in_flight` events in flight at once, each on its own retry
    /// schedule, so one failing event does not hold up the rest (order is not kept).
    ///
    /// The cursor is the low-water mark: every event at or below it is settled. Events settled
    /// above it are known only in memory, so a restart may deliver those again (still
    /// at-least-once); retry state is durable per event (`wp` records), so a restart resumes
    /// attempt counts and due times as in ordered mode. Returns only to stop or on an error
    /// (the caller then re-enters from the durable state).
    pub(super) async fn run_parallel(&mut self) -> Result<Flow, DeliveryError> {
        let mut jobs: JoinSet<Job> = JoinSet::new();
        let result = self.parallel_loop(&mut jobs).await;
        // Wait for aborted attempts to be dropped, so no request of this webhook is still in
        // flight once its task has returned (shutdown joins the tasks, then closes the log).
        jobs.shutdown().await;
        result
    }

    async fn parallel_loop(&mut self, jobs: &mut JoinSet<Job>) -> Result<Flow, DeliveryError> {
        let log = self.state.log().clone();
        let cursor = self.state.load_cursor(&self.id)?;
        let mut low = cursor.delivered_through;
        let mut persisted_low = low;
        let mut next = low + 1;
        let mut window: BTreeMap<u64, Slot> = BTreeMap::new();
        let mut stale = Vec::new();
        for (key, value) in
            log.scan_records(&records::parallel_prefix(&self.id), None, MAX_WINDOW)?
        {
            let Some(offset) = records::trailing_u64(&key) else {
                continue;
            };
            if offset <= low {
                stale.push(records::delete(key));
                continue;
            }
            let retry: ParallelRetry = decode(&value, "webhook retry state")?;
            window.insert(
                offset,
                Slot::Waiting {
                    attempts: retry.attempts,
                    due_ms: retry.next_attempt_ms,
                },
            );
        }
        // An event left pending by ordered mode keeps its attempt count.
        let carried = (cursor.pending_offset > low && !cursor.pending_redrive).then_some((
            cursor.pending_offset,
            cursor.pending_attempts,
            cursor.next_attempt_ms,
        ));
        if let Some((offset, attempts, due_ms)) = carried {
            window
                .entry(offset)
                .or_insert(Slot::Waiting { attempts, due_ms });
        }
        if cursor.pending_offset != 0 || !stale.is_empty() {
            let mut writes = stale;
            if let Some((offset, attempts, due_ms)) = carried {
                writes.push(records::put(
                    records::parallel_key(&self.id, offset),
                    &ParallelRetry {
                        attempts,
                        next_attempt_ms: due_ms,
                    },
                ));
            }
            self.state
                .modify(&self.id, |_, c| {
                    c.clear_pending();
                    (writes, ())
                })
                .await?;
        }

        let mut redrive: Option<Slot> = None;
        let mut redrive_offset = 0;
        loop {
            let Some(hook) = self.state.load_webhook(&self.id)? else {
                return Ok(Flow::Stop);
            };
            if !hook.enabled {
                return Ok(Flow::Stop);
            }
            let max = hook.max_in_flight.max(1) as usize;
            let Ok(matcher) = hook.matcher() else {
                return Ok(Flow::Stop);
            };
            let now = now_ms();

            // Retries that are due.
            let due: Vec<(u64, u32)> = window
                .iter()
                .filter_map(|(offset, slot)| match slot {
                    Slot::Waiting { attempts, due_ms } if *due_ms <= now => {
                        Some((*offset, *attempts))
                    }
                    _ => None,
                })
                .take(max.saturating_sub(jobs.len()))
                .collect();
            for (offset, attempts) in due {
                let event = read_one(&log, offset)?;
                if let Some(event) = event.filter(|e| matcher.matches(e)) {
                    window.insert(offset, Slot::Busy);
                    self.spawn_job(jobs, &hook, event, false, attempts + 1);
                } else {
                    // The filters changed, or its stream was deleted: no longer wanted.
                    window.insert(offset, Slot::Done);
                    let writes = vec![records::delete(records::parallel_key(&self.id, offset))];
                    self.state.modify(&self.id, |_, _| (writes, ())).await?;
                }
            }

            // Redriven dead letters, one at a time.
            match redrive {
                None if jobs.len() < max => {
                    let queued = log.scan_records(&records::redrive_prefix(&self.id), None, 1)?;
                    if let Some(offset) = queued.first().and_then(|(k, _)| records::trailing_u64(k))
                    {
                        match read_one(&log, offset)? {
                            Some(event) => {
                                redrive = Some(Slot::Busy);
                                redrive_offset = offset;
                                self.spawn_job(jobs, &hook, event, true, 1);
                            }
                            None => self.drop_redrive(offset).await?,
                        }
                    }
                }
                Some(Slot::Waiting { attempts, due_ms }) if due_ms <= now && jobs.len() < max => {
                    match read_one(&log, redrive_offset)? {
                        Some(event) => {
                            redrive = Some(Slot::Busy);
                            self.spawn_job(jobs, &hook, event, true, attempts + 1);
                        }
                        None => {
                            redrive = None;
                            self.drop_redrive(redrive_offset).await?;
                        }
                    }
                }
                _ => {}
            }

            // New events.
            while jobs.len() < max && window.len() < MAX_WINDOW {
                if window.contains_key(&next) {
                    next += 1;
                    continue;
                }
                if !self.fill_ahead(next)? {
                    break;
                }
                let Some(event) = self.ahead.pop_front() else {
                    // Only events of deleted streams are left in what was read: past them.
                    next = self.ahead_range.end;
                    continue;
                };
                next = event.offset + 1;
                if matcher.matches(&event) {
                    window.insert(event.offset, Slot::Busy);
                    self.spawn_job(jobs, &hook, event, false, 1);
                } else {
                    window.insert(event.offset, Slot::Done);
                }
            }

            // Settled events at the bottom of the window move the cursor.
            low = advance(&mut window, next);
            if low > persisted_low && jobs.is_empty() {
                // Only filtered-out events settled: record that, so a restart skips them.
                let mark = low;
                self.state
                    .modify(&self.id, |_, c| {
                        c.delivered_through = c.delivered_through.max(mark);
                        (Vec::new(), ())
                    })
                    .await?;
                persisted_low = low;
            }

            let can_fill = jobs.len() < max && window.len() < MAX_WINDOW;
            let next_due = window
                .values()
                .chain(redrive.iter())
                .filter_map(|slot| match slot {
                    Slot::Waiting { due_ms, .. } => Some(*due_ms),
                    _ => None,
                })
                .min();
            let sleep = next_due.map(|due| Duration::from_millis(due.saturating_sub(now)));
            tokio::select! {
                _ = self.cancel.cancelled() => return Ok(Flow::Stop),
                joined = jobs.join_next(), if !jobs.is_empty() => {
                    let job = match joined {
                        Some(Ok(job)) => job,
                        Some(Err(err)) => return Err(DeliveryError::Panicked(err.to_string())),
                        None => continue,
                    };
                    let Some(sent) = job.sent else {
                        return Ok(Flow::Stop);
                    };
                    let offset = job.event.offset;
                    let low_water = if job.redrive {
                        low
                    } else {
                        settled_low(&window, next, offset)
                    };
                    let decision = self
                        .record(
                            &job.event,
                            job.redrive,
                            job.attempt,
                            job.started_ms,
                            &sent,
                            Mode::Parallel { low_water },
                        )
                        .await?;
                    let slot = match decision {
                        None | Some(Decision::Disable(_)) => return Ok(Flow::Stop),
                        Some(Decision::Delivered | Decision::DeadLetter) => None,
                        Some(Decision::Retry(at)) => Some(Slot::Waiting {
                            attempts: job.attempt,
                            due_ms: at,
                        }),
                    };
                    if job.redrive {
                        redrive = slot;
                    } else {
                        window.insert(offset, slot.unwrap_or(Slot::Done));
                        low = advance(&mut window, next);
                        persisted_low = persisted_low.max(low_water.min(low));
                    }
                }
                changed = self.head.changed(), if can_fill => {
                    if changed.is_err() {
                        return Ok(Flow::Stop);
                    }
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep.unwrap_or_default()), if sleep.is_some() => {}
            }
        }
    }

    /// Forgets a queued redrive whose event's stream was deleted.
    async fn drop_redrive(&self, offset: u64) -> Result<(), DeliveryError> {
        let writes = vec![records::delete(records::redrive_key(&self.id, offset))];
        self.state.modify(&self.id, |_, _| (writes, ())).await?;
        Ok(())
    }

    fn spawn_job(
        &self,
        jobs: &mut JoinSet<Job>,
        hook: &StoredWebhook,
        event: Event,
        redrive: bool,
        attempt: u32,
    ) {
        let sender = self.sender.clone();
        let cancel = self.cancel.clone();
        let hook = hook.clone();
        jobs.spawn(async move {
            let started_ms = now_ms();
            let sent = sender.send(&cancel, &hook, &event).await;
            Job {
                event,
                redrive,
                attempt,
                started_ms,
                sent,
            }
        });
    }
}

/// An offset in a parallel webhook's window.
#[derive(Clone, Copy)]
enum Slot {
    Busy,
    Waiting {
        attempts: u32,
        due_ms: u64,
    },
    /// Delivered, dead-lettered or filtered out.
    Done,
}

/// A finished parallel attempt.
struct Job {
    event: Event,
    redrive: bool,
    attempt: u32,
    started_ms: u64,
    /// None when the task was cancelled during the attempt.
    sent: Option<Sent>,
}

/// Drops the settled offsets at the bottom of the window and returns the new low-water mark:
/// every offset at or below it is settled. Offsets from `next` on have not been read yet, except
/// those restored from retry records after a restart: they stay in the window (settled or not)
/// until reading passes them, so they are not read and delivered a second time.
fn advance(window: &mut BTreeMap<u64, Slot>, next: u64) -> u64 {
    while let Some(entry) = window.first_entry() {
        if *entry.key() >= next || !matches!(entry.get(), Slot::Done) {
            return (entry.key() - 1).min(next - 1);
        }
        entry.remove();
    }
    next - 1
}

/// The low-water mark the window would have once `offset` is settled too.
fn settled_low(window: &BTreeMap<u64, Slot>, next: u64, offset: u64) -> u64 {
    window
        .iter()
        .find(|(o, slot)| **o != offset && !matches!(slot, Slot::Done))
        .map(|(o, _)| (o - 1).min(next - 1))
        .unwrap_or(next - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_water_mark_moves_over_settled_offsets_only() {
        let mut window = BTreeMap::from([(5, Slot::Done), (6, Slot::Busy), (7, Slot::Done)]);
        assert_eq!(advance(&mut window, 8), 5);
        assert_eq!(window.len(), 2);
        // Settling 6 would move the mark to 7 (everything read so far).
        assert_eq!(settled_low(&window, 8, 6), 7);
        window.insert(6, Slot::Done);
        assert_eq!(advance(&mut window, 8), 7);
        assert!(window.is_empty());
        // Restored retries ahead of the read position are kept until reading passes them.
        let mut window = BTreeMap::from([
            (
                3,
                Slot::Waiting {
                    attempts: 2,
                    due_ms: 0,
                },
            ),
            (4, Slot::Done),
        ]);
        assert_eq!(advance(&mut window, 1), 0);
        window.insert(3, Slot::Done);
        assert_eq!(advance(&mut window, 1), 0);
        assert_eq!(
            window.len(),
            2,
            "3 and 4 are not forgotten before offset 1 is read"
        );
        assert_eq!(advance(&mut window, 5), 4);
    }
}
