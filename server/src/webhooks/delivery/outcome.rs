//! Recording an attempt's outcome: the attempt record, the cursor or retry-state move, a dead
//! letter or the disabling of the webhook, written together in one durable batch.

use ordo_api::v1::{DeadLetter, DeliveryAttempt, DeliveryOutcome, Event};
use tracing::{info, warn};

use super::{
    DeliveryError, DeliveryTask,
    retry::{self, Decision},
    send::Sent,
};
use crate::{
    clock::{now_ms, timestamp},
    store::RecordWrite,
    webhooks::records::{self, Cursor, ParallelRetry},
};

/// Where an attempt's retry state lives.
#[derive(Clone, Copy)]
pub(super) enum Mode {
    /// In the cursor (`pending_*`); the cursor moves to the event once it is settled.
    Ordered,
    /// In a `wp` record per event; the cursor moves to `low_water` once the event is settled.
    Parallel { low_water: u64 },
}

impl DeliveryTask {
    /// Decides what an attempt's result means and writes it durably in one batch: the attempt
    /// record, the cursor or retry state, a dead letter, or the disabling of the webhook.
    /// Returns the final decision (None when the webhook was deleted meanwhile).
    pub(super) async fn record(
        &self,
        event: &Event,
        redrive: bool,
        attempt: u32,
        started_ms: u64,
        sent: &Sent,
        mode: Mode,
    ) -> Result<Option<Decision>, DeliveryError> {
        let config = self.state.config();
        let now = now_ms();
        let failing_since = |cursor: &Cursor| {
            if cursor.failing_since_ms == 0 {
                now
            } else {
                cursor.failing_since_ms
            }
        };
        let decision = retry::decide(
            config,
            sent.class,
            sent.retry_after,
            attempt,
            now,
            retry::jitter_factor(),
        );
        let dead_letter = DeadLetter {
            event_offset: event.offset,
            event_id: event.id.clone(),
            event_type: event.r#type.clone(),
            attempts: attempt,
            last_http_status: sent.status.unwrap_or(0).into(),
            last_error: sent.error.clone(),
            dead_lettered_at: timestamp(now),
        };
        // Keep the dead-letter queue bounded: find the oldest entry to drop, if it is full.
        let evict = if matches!(decision, Decision::DeadLetter) {
            let max = config.max_dead_letters.max(1);
            let dead = self
                .state
                .log()
                .scan_records(&records::dead_prefix(&self.id), None, max)?;
            (dead.len() >= max)
                .then(|| dead.first().map(|(k, _)| k.clone()))
                .flatten()
        } else {
            None
        };
        let disable_after = config.disable_after;
        let max_kept = config.max_attempts_kept.max(1);
        let id = self.id.clone();
        let offset = event.offset;
        let outcome = self
            .state
            .modify(&self.id, |hook, cursor| {
                let mut decision = decision;
                let mut writes = Vec::new();
                if !matches!(decision, Decision::Delivered) {
                    let since = failing_since(cursor);
                    cursor.failing_since_ms = since;
                    decision =
                        retry::disable_if_failing_too_long(decision, since, now, disable_after);
                }
                // The event is settled (delivered or dead-lettered): where the cursor may go.
                let settle = |cursor: &mut Cursor, writes: &mut Vec<RecordWrite>| {
                    if redrive {
                        writes.push(records::delete(records::redrive_key(&id, offset)));
                        return;
                    }
                    match mode {
                        Mode::Ordered => {
                            cursor.delivered_through = cursor.delivered_through.max(offset);
                            cursor.clear_pending();
                        }
                        Mode::Parallel { low_water } => {
                            writes.push(records::delete(records::parallel_key(&id, offset)));
                            cursor.delivered_through = cursor.delivered_through.max(low_water);
                        }
                    }
                };
                let (outcome, next_retry) = match &decision {
                    Decision::Delivered => {
                        settle(cursor, &mut writes);
                        cursor.failing_since_ms = 0;
                        (DeliveryOutcome::Succeeded, 0)
                    }
                    Decision::Retry(at) => {
                        match mode {
                            Mode::Ordered => {
                                cursor.pending_offset = offset;
                                cursor.pending_attempts = attempt;
                                cursor.pending_redrive = redrive;
                                cursor.next_attempt_ms = *at;
                            }
                            Mode::Parallel { .. } if redrive => {}
                            Mode::Parallel { .. } => writes.push(records::put(
                                records::parallel_key(&id, offset),
                                &ParallelRetry {
                                    attempts: attempt,
                                    next_attempt_ms: *at,
                                },
                            )),
                        }
                        (DeliveryOutcome::RetryScheduled, *at)
                    }
                    Decision::DeadLetter => {
                        settle(cursor, &mut writes);
                        if let Some(key) = &evict {
                            warn!(webhook = %id, "dead-letter queue full; dropping the oldest dead letter");
                            writes.push(records::delete(key.clone()));
                        }
                        writes.push(records::put(records::dead_key(&id, offset), &dead_letter));
                        (DeliveryOutcome::DeadLettered, 0)
                    }
                    Decision::Disable(reason) => {
                        hook.enabled = false;
                        hook.disabled_reason = reason.clone();
                        hook.disabled_at_ms = now;
                        hook.updated_at_ms = now;
                        // The event stays pending: re-enabling delivers it first.
                        match mode {
                            Mode::Ordered => {
                                cursor.pending_offset = offset;
                                cursor.pending_attempts = 0;
                                cursor.pending_redrive = redrive;
                                cursor.next_attempt_ms = 0;
                            }
                            Mode::Parallel { .. } if redrive => {}
                            Mode::Parallel { low_water } => {
                                writes.push(records::put(
                                    records::parallel_key(&id, offset),
                                    &ParallelRetry::default(),
                                ));
                                let below = low_water.min(offset.saturating_sub(1));
                                cursor.delivered_through = cursor.delivered_through.max(below);
                            }
                        }
                        (DeliveryOutcome::WebhookDisabled, 0)
                    }
                };
                let seq = cursor.attempt_seq;
                cursor.attempt_seq += 1;
                writes.push(records::put(
                    records::attempt_key(&id, seq),
                    &DeliveryAttempt {
                        event_id: dead_letter.event_id.clone(),
                        event_offset: offset,
                        event_type: dead_letter.event_type.clone(),
                        attempt,
                        time: timestamp(started_ms),
                        http_status: sent.status.unwrap_or(0).into(),
                        error: sent.error.clone(),
                        latency_ms: sent.latency.as_millis().min(u32::MAX as u128) as u32,
                        outcome: outcome as i32,
                        next_retry_at: timestamp(next_retry),
                        redrive,
                    },
                ));
                if seq >= max_kept {
                    writes.push(records::delete(records::attempt_key(&id, seq - max_kept)));
                }
                (writes, decision)
            })
            .await?;
        if let Some(decision) = &outcome {
            count(decision, evict.is_some());
        }
        match &outcome {
            Some(Decision::Disable(reason)) => {
                info!(webhook = %self.id, %reason, "webhook disabled");
            }
            Some(Decision::DeadLetter) => {
                info!(webhook = %self.id, offset, attempt, error = %sent.error, "event dead-lettered");
            }
            _ => {}
        }
        Ok(outcome)
    }
}

/// The attempt in the metrics: its outcome, and a dead letter stored (unless it replaced the
/// oldest one of a full queue).
fn count(decision: &Decision, evicted: bool) {
    use crate::metrics::{DeliveryOutcome, dead_letters_added, webhook_delivery};
    webhook_delivery(match decision {
        Decision::Delivered => DeliveryOutcome::Succeeded,
        Decision::Retry(_) => DeliveryOutcome::RetryScheduled,
        Decision::DeadLetter => DeliveryOutcome::DeadLettered,
        Decision::Disable(_) => DeliveryOutcome::WebhookDisabled,
    });
    if matches!(decision, Decision::DeadLetter) && !evicted {
        dead_letters_added(1);
    }
}
