//! One delivery task per enabled webhook.
//!
//! The task is a loop of small steps, each re-reading the webhook's definition and durable
//! cursor, so an update (new url, filters, rotated secret) applies at the next attempt and a
//! restart resumes exactly where the last acknowledged write left off:
//!
//! 1. an event being retried (`pending_offset`): wait for its due time, then attempt it;
//! 2. else the oldest dead letter queued for redrive;
//! 3. else the next matching event after `delivered_through`, reading the log in bounded chunks
//!    and waiting on the durable head (never polling) when there is none.
//!
//! Each attempt is one HTTP request; its outcome, the attempt record and the cursor move are
//! written together in one durable batch. The cursor moves past an event only after a 2xx or a
//! dead-lettering, so delivery is at-least-once: a crash between the 2xx and the write repeats
//! that one event (with the same `webhook-id`, for receivers to deduplicate).

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use ordo_api::v1::{DeadLetter, DeliveryAttempt, DeliveryOutcome, Event, EventFilter};
use reqwest::{StatusCode, header::HeaderMap};
use tokio::{
    sync::{Notify, watch},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    WebhookConfig, Webhooks, decode, now_ms, payload,
    records::{self, Cursor, ParallelRetry, StoredWebhook},
    signing,
    ssrf::{AddressPolicy, GuardedResolver},
    timestamp,
};
use crate::{
    events::filter::Matcher,
    store::{RecordWrite, StoreError},
};

/// Read-ahead per webhook: at most this many events and (beyond the first) bytes, so even the
/// maximum number of webhooks holds a bounded amount of the log in memory.
const READ_CHUNK_EVENTS: usize = 128;
const READ_CHUNK_BYTES: usize = 256 * 1024;
/// Response body bytes kept in an attempt record to explain a failure.
const MAX_ERROR_BODY: usize = 512;
/// Offsets a parallel webhook tracks at once above its cursor (settled ones included), so one
/// stuck event among many filtered-out ones cannot grow the window without bound.
const MAX_WINDOW: usize = 4096;
/// Pause after an unexpected storage error before the task tries again.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Why a step failed; the task logs it and tries again shortly.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("event at offset {0} is missing from the log")]
    MissingEvent(u64),
    #[error("a delivery attempt panicked: {0}")]
    Panicked(String),
}

/// The shared HTTP client: connection pooling across attempts, the SSRF-guarded resolver, no
/// redirects (a redirect could lead to a refused address) and no proxies.
pub fn http_client(
    config: &WebhookConfig,
    policy: Arc<AddressPolicy>,
) -> Result<reqwest::Client, reqwest::Error> {
    // One crypto provider for the whole binary (ring); a second install attempt is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver { policy }))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(config.attempt_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(4)
        .user_agent(concat!("ordo-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// What the task does after a step.
enum Flow {
    Continue,
    Stop,
}

pub struct DeliveryTask {
    hooks: Webhooks,
    id: String,
    cancel: CancellationToken,
    wake: Arc<Notify>,
    head: watch::Receiver<u64>,
    /// Read-ahead: the log from the next offset to examine on, one bounded chunk at most, so
    /// delivering a chunk costs one read rather than one per event.
    ahead: VecDeque<Event>,
    /// Ordered mode removed leftover parallel-mode retry records (after a mode switch).
    parallel_cleared: bool,
}

impl DeliveryTask {
    pub fn new(hooks: Webhooks, id: String, cancel: CancellationToken, wake: Arc<Notify>) -> Self {
        let head = hooks.log().watch_head();
        Self {
            hooks,
            id,
            cancel,
            wake,
            head,
            ahead: VecDeque::new(),
            parallel_cleared: false,
        }
    }

    pub async fn run(mut self) {
        debug!(webhook = %self.id, "delivery task started");
        loop {
            if self.cancel.is_cancelled() {
                return;
            }
            match self.step().await {
                Ok(Flow::Continue) => {}
                Ok(Flow::Stop) => break,
                Err(err) => {
                    warn!(webhook = %self.id, error = %err, "webhook delivery step failed; retrying");
                    if !self.sleep(ERROR_PAUSE).await {
                        break;
                    }
                }
            }
        }
        debug!(webhook = %self.id, "delivery task stopped");
    }

    /// Sleeps unless cancelled; false when cancelled.
    async fn sleep(&self, duration: Duration) -> bool {
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            _ = tokio::time::sleep(duration) => true,
        }
    }

    async fn step(&mut self) -> Result<Flow, DeliveryError> {
        let Some(hook) = self.hooks.load_webhook(&self.id)? else {
            return Ok(Flow::Stop);
        };
        if !hook.enabled {
            return Ok(Flow::Stop);
        }
        let matcher = match Matcher::new(Some(&EventFilter {
            types: hook.event_types.clone(),
            stream_ids: hook.stream_ids.clone(),
        })) {
            Ok(matcher) => matcher,
            Err(err) => {
                warn!(webhook = %self.id, error = %err, "stored webhook filter is invalid; delivery stopped");
                return Ok(Flow::Stop);
            }
        };
        if hook.max_in_flight > 1 {
            return self.run_parallel().await;
        }
        if !self.parallel_cleared {
            self.clear_parallel_records().await?;
            self.parallel_cleared = true;
        }
        let cursor = self.hooks.load_cursor(&self.id)?;
        let log = self.hooks.log().clone();

        if cursor.pending_offset != 0 {
            let wait = cursor.next_attempt_ms.saturating_sub(now_ms());
            if wait > 0 {
                // Re-enter the step afterwards: the definition may have changed meanwhile.
                return Ok(if self.sleep(Duration::from_millis(wait)).await {
                    Flow::Continue
                } else {
                    Flow::Stop
                });
            }
            let event = read_one(&log, cursor.pending_offset)?;
            if !cursor.pending_redrive && !matcher.matches(&event) {
                // The filters changed while the event was being retried: it is no longer wanted.
                let offset = event.offset;
                self.hooks
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
            let attempt = cursor.pending_attempts + 1;
            return self
                .attempt(&hook, &event, cursor.pending_redrive, attempt)
                .await;
        }

        let redrive = log.scan_records(&records::redrive_prefix(&self.id), None, 1)?;
        if let Some((key, _)) = redrive.first()
            && let Some(offset) = records::trailing_u64(key)
        {
            let event = read_one(&log, offset)?;
            return self.attempt(&hook, &event, true, 1).await;
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
                return self.attempt(&hook, &event, false, 1).await;
            }
        }
        // Nothing read ahead matches: remember that, so a restart does not re-scan it.
        let Some(last) = self.ahead.back().map(|e| e.offset) else {
            return Ok(Flow::Continue);
        };
        self.ahead.clear();
        self.hooks
            .modify(&self.id, |_, c| {
                if c.pending_offset == 0 {
                    c.delivered_through = c.delivered_through.max(last);
                }
                (Vec::new(), ())
            })
            .await?;
        Ok(Flow::Continue)
    }

    /// Makes `ahead` start at offset `from`, reading a chunk if needed. False when `from` is
    /// beyond the durable head (nothing to read yet).
    fn fill_ahead(&mut self, from: u64) -> Result<bool, DeliveryError> {
        while self.ahead.front().is_some_and(|e| e.offset < from) {
            self.ahead.pop_front();
        }
        if self.ahead.front().is_some_and(|e| e.offset != from) {
            // Not contiguous (the cursor moved some other way): read afresh.
            self.ahead.clear();
        }
        if !self.ahead.is_empty() {
            return Ok(true);
        }
        let head = *self.head.borrow_and_update();
        if from > head {
            return Ok(false);
        }
        self.ahead = self
            .hooks
            .log()
            .read(from, READ_CHUNK_EVENTS, READ_CHUNK_BYTES)?
            .into();
        if self.ahead.front().map(|e| e.offset) != Some(from) {
            self.ahead.clear();
            return Err(DeliveryError::MissingEvent(from));
        }
        Ok(true)
    }

    /// Deletes parallel-mode retry records: after a switch to ordered mode, the cursor alone
    /// decides, and events above it are delivered again from their first attempt.
    async fn clear_parallel_records(&self) -> Result<(), DeliveryError> {
        loop {
            let page =
                self.hooks
                    .log()
                    .scan_records(&records::parallel_prefix(&self.id), None, 1000)?;
            if page.is_empty() {
                return Ok(());
            }
            let writes = page.into_iter().map(|(k, _)| records::delete(k)).collect();
            self.hooks.modify(&self.id, |_, _| (writes, ())).await?;
        }
    }

    /// Parallel mode: up to `max_in_flight` events in flight at once, each on its own retry
    /// schedule, so one failing event does not hold up the rest (order is not kept).
    ///
    /// The cursor is the low-water mark: every event at or below it is settled. Events settled
    /// above it are known only in memory, so a restart may deliver those again (still
    /// at-least-once); retry state is durable per event (`wp` records), so a restart resumes
    /// attempt counts and due times as in ordered mode. Returns only to stop or on an error
    /// (the caller then re-enters from the durable state).
    async fn run_parallel(&mut self) -> Result<Flow, DeliveryError> {
        let mut jobs: JoinSet<Job> = JoinSet::new();
        let result = self.parallel_loop(&mut jobs).await;
        // Wait for aborted attempts to be dropped: they hold the engine (and so the log), which
        // must be released before the server's shutdown closes the log.
        jobs.shutdown().await;
        result
    }

    async fn parallel_loop(&mut self, jobs: &mut JoinSet<Job>) -> Result<Flow, DeliveryError> {
        let log = self.hooks.log().clone();
        let cursor = self.hooks.load_cursor(&self.id)?;
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
            self.hooks
                .modify(&self.id, |_, c| {
                    c.clear_pending();
                    (writes, ())
                })
                .await?;
        }

        let mut redrive: Option<Slot> = None;
        let mut redrive_offset = 0;
        loop {
            let Some(hook) = self.hooks.load_webhook(&self.id)? else {
                return Ok(Flow::Stop);
            };
            if !hook.enabled {
                return Ok(Flow::Stop);
            }
            let max = hook.max_in_flight.max(1) as usize;
            let Ok(matcher) = Matcher::new(Some(&EventFilter {
                types: hook.event_types.clone(),
                stream_ids: hook.stream_ids.clone(),
            })) else {
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
                if matcher.matches(&event) {
                    window.insert(offset, Slot::Busy);
                    self.spawn_job(jobs, &hook, event, false, attempts + 1);
                } else {
                    // The filters changed: the event is no longer wanted.
                    window.insert(offset, Slot::Done);
                    let writes = vec![records::delete(records::parallel_key(&self.id, offset))];
                    self.hooks.modify(&self.id, |_, _| (writes, ())).await?;
                }
            }

            // Redriven dead letters, one at a time.
            match redrive {
                None if jobs.len() < max => {
                    let queued = log.scan_records(&records::redrive_prefix(&self.id), None, 1)?;
                    if let Some(offset) = queued.first().and_then(|(k, _)| records::trailing_u64(k))
                    {
                        redrive = Some(Slot::Busy);
                        redrive_offset = offset;
                        self.spawn_job(jobs, &hook, read_one(&log, offset)?, true, 1);
                    }
                }
                Some(Slot::Waiting { attempts, due_ms }) if due_ms <= now && jobs.len() < max => {
                    redrive = Some(Slot::Busy);
                    let event = read_one(&log, redrive_offset)?;
                    self.spawn_job(jobs, &hook, event, true, attempts + 1);
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
                    break;
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
                self.hooks
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

    fn spawn_job(
        &self,
        jobs: &mut JoinSet<Job>,
        hook: &StoredWebhook,
        event: Event,
        redrive: bool,
        attempt: u32,
    ) {
        let hooks = self.hooks.clone();
        let cancel = self.cancel.clone();
        let hook = hook.clone();
        jobs.spawn(async move {
            let started_ms = now_ms();
            let sent = send(&hooks, &cancel, &hook, &event).await;
            Job {
                event,
                redrive,
                attempt,
                started_ms,
                sent,
            }
        });
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
        let Some(sent) = send(&self.hooks, &self.cancel, hook, event).await else {
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

    /// Decides what an attempt's result means and writes it durably in one batch: the attempt
    /// record, the cursor or retry state, a dead letter, or the disabling of the webhook.
    /// Returns the final decision (None when the webhook was deleted meanwhile).
    async fn record(
        &self,
        event: &Event,
        redrive: bool,
        attempt: u32,
        started_ms: u64,
        sent: &Sent,
        mode: Mode,
    ) -> Result<Option<Decision>, DeliveryError> {
        let config = self.hooks.config();
        let now = now_ms();
        let failing_since = |cursor: &Cursor| {
            if cursor.failing_since_ms == 0 {
                now
            } else {
                cursor.failing_since_ms
            }
        };
        let decision = decide(config, sent, attempt, now);
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
                .hooks
                .log()
                .scan_records(&records::dead_prefix(&self.id), None, max)?;
            (dead.len() >= max)
                .then(|| dead.first().map(|(k, _)| k.clone()))
                .flatten()
        } else {
            None
        };
        let disable_after = config.disable_after.as_millis() as u64;
        let max_kept = config.max_attempts_kept.max(1);
        let id = self.id.clone();
        let offset = event.offset;
        let outcome = self
            .hooks
            .modify(&self.id, |hook, cursor| {
                let mut decision = decision;
                let mut writes = Vec::new();
                if !matches!(decision, Decision::Delivered) {
                    let since = failing_since(cursor);
                    cursor.failing_since_ms = since;
                    if !matches!(decision, Decision::Disable(_))
                        && now.saturating_sub(since) >= disable_after
                    {
                        decision = Decision::Disable(format!(
                            "every delivery attempt failed since {}; fix the endpoint and re-enable the webhook",
                            rfc3339(since)
                        ));
                    }
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

/// Signs and POSTs the event. None when `cancel` fired meanwhile. A free function so the
/// parallel mode can run several at once.
async fn send(
    hooks: &Webhooks,
    cancel: &CancellationToken,
    hook: &StoredWebhook,
    event: &Event,
) -> Option<Sent> {
    let started = Instant::now();
    let fail = |error: String| Sent {
        class: Class::Retryable,
        status: None,
        error,
        retry_after: None,
        latency: started.elapsed(),
    };
    let url = match hooks.policy().check_url(&hook.url) {
        Ok(url) => url,
        Err(err) => return Some(fail(err.to_string())),
    };
    let body = match payload::cloudevent_json(event) {
        Ok(body) => body,
        Err(err) => return Some(fail(format!("cannot encode the event as JSON: {err}"))),
    };
    let now = now_ms();
    let mut secrets = vec![hook.secret.as_str()];
    if hook.previous_secret_expires_ms > now && !hook.previous_secret.is_empty() {
        secrets.push(hook.previous_secret.as_str());
    }
    let ts = now / 1000;
    let signature = match signing::signature_header(&secrets, &event.id, ts, &body) {
        Ok(signature) => signature,
        Err(err) => return Some(fail(err.to_string())),
    };
    let permits = hooks.inner.permits.clone();
    let _permit = tokio::select! {
        _ = cancel.cancelled() => return None,
        permit = permits.acquire_owned() => match permit {
            Ok(permit) => permit,
            Err(_) => return None,
        },
    };
    let started = Instant::now();
    let request = hooks
        .inner
        .client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &event.id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .timeout(hooks.config().attempt_timeout)
        .body(body);
    let exchange = async {
        let mut response = request.send().await?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let mut snippet = Vec::new();
        if !status.is_success() {
            while snippet.len() < MAX_ERROR_BODY {
                match response.chunk().await? {
                    Some(chunk) => snippet.extend_from_slice(&chunk),
                    None => break,
                }
            }
            snippet.truncate(MAX_ERROR_BODY);
        }
        Ok::<_, reqwest::Error>((status, retry_after, snippet))
    };
    let result = tokio::select! {
        _ = cancel.cancelled() => return None,
        result = exchange => result,
    };
    let latency = started.elapsed();
    Some(match result {
        Ok((status, retry_after, snippet)) => Sent {
            class: classify(status),
            status: Some(status.as_u16()),
            error: if status.is_success() {
                String::new()
            } else {
                String::from_utf8_lossy(&snippet).into_owned()
            },
            retry_after,
            latency,
        },
        Err(err) => Sent {
            error: error_chain(&err),
            latency,
            ..fail(String::new())
        },
    })
}

/// The result of one HTTP attempt.
struct Sent {
    class: Class,
    status: Option<u16>,
    error: String,
    retry_after: Option<Duration>,
    latency: Duration,
}

enum Class {
    Success,
    /// 410: the receiver says the endpoint is gone for good.
    Gone,
    /// 4xx other than 408 and 429: sending the same request again will fail again.
    Permanent,
    /// Connection errors, timeouts, 408, 429, 5xx (and anything else unexpected).
    Retryable,
}

enum Decision {
    Delivered,
    Retry(u64),
    DeadLetter,
    Disable(String),
}

/// Where an attempt's retry state lives.
#[derive(Clone, Copy)]
enum Mode {
    /// In the cursor (`pending_*`); the cursor moves to the event once it is settled.
    Ordered,
    /// In a `wp` record per event; the cursor moves to `low_water` once the event is settled.
    Parallel { low_water: u64 },
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

/// What an attempt's result means, given how many attempts the event has had.
fn decide(config: &WebhookConfig, sent: &Sent, attempt: u32, now: u64) -> Decision {
    let max_attempts = config.retry_schedule.len() as u32 + 1;
    match sent.class {
        Class::Success => Decision::Delivered,
        Class::Gone => Decision::Disable(format!(
            "the endpoint answered 410 Gone at {}; fix the endpoint and re-enable the webhook",
            rfc3339(now)
        )),
        Class::Permanent => Decision::DeadLetter,
        Class::Retryable if attempt >= max_attempts => Decision::DeadLetter,
        Class::Retryable => {
            let delay = match sent.retry_after {
                Some(after) => after.min(config.max_retry_after),
                None => jitter(
                    config
                        .retry_schedule
                        .get(attempt.saturating_sub(1) as usize)
                        .copied()
                        .unwrap_or_default(),
                ),
            };
            Decision::Retry(now + delay.as_millis() as u64)
        }
    }
}

fn classify(status: StatusCode) -> Class {
    match status.as_u16() {
        200..=299 => Class::Success,
        410 => Class::Gone,
        408 | 429 => Class::Retryable,
        400..=499 => Class::Permanent,
        _ => Class::Retryable,
    }
}

/// `Retry-After` as delay-seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// +-20% so that many webhooks failing together do not retry in lockstep.
fn jitter(delay: Duration) -> Duration {
    if delay.is_zero() {
        return delay;
    }
    delay.mul_f64(rand::random_range(0.8..1.2))
}

/// reqwest's top-level message hides the cause ("error sending request"); keep every level.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

fn read_one(log: &crate::store::SharedLog, offset: u64) -> Result<Event, DeliveryError> {
    log.read(offset, 1, READ_CHUNK_BYTES)?
        .into_iter()
        .find(|e| e.offset == offset)
        .ok_or(DeliveryError::MissingEvent(offset))
}

fn rfc3339(ms: u64) -> String {
    timestamp(ms).map(|t| t.to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_like_the_issue_says() {
        let class = |code: u16| classify(StatusCode::from_u16(code).unwrap());
        assert!(matches!(class(200), Class::Success));
        assert!(matches!(class(204), Class::Success));
        assert!(matches!(class(410), Class::Gone));
        assert!(matches!(class(408), Class::Retryable));
        assert!(matches!(class(429), Class::Retryable));
        assert!(matches!(class(400), Class::Permanent));
        assert!(matches!(class(404), Class::Permanent));
        assert!(matches!(class(500), Class::Retryable));
        assert!(matches!(class(503), Class::Retryable));
        assert!(matches!(class(302), Class::Retryable));
    }

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(120);
        headers.insert(
            "retry-after",
            httpdate::fmt_http_date(later).parse().unwrap(),
        );
        let parsed = retry_after(&headers).unwrap();
        assert!(parsed > Duration::from_secs(100) && parsed <= Duration::from_secs(120));
        headers.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

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

    #[test]
    fn jitter_stays_within_twenty_percent() {
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(10));
            assert!(d >= Duration::from_secs(8) && d <= Duration::from_secs(12));
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }
}
