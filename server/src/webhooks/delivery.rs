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
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use ordo_api::v1::{DeadLetter, DeliveryAttempt, DeliveryOutcome, Event, EventFilter};
use reqwest::{StatusCode, header::HeaderMap};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    WebhookConfig, Webhooks, now_ms, payload,
    records::{self, Cursor, StoredWebhook},
    signing,
    ssrf::{AddressPolicy, GuardedResolver},
    timestamp,
};
use crate::{events::filter::Matcher, store::StoreError};

/// Read-ahead per webhook: at most this many events and (beyond the first) bytes, so even the
/// maximum number of webhooks holds a bounded amount of the log in memory.
const READ_CHUNK_EVENTS: usize = 128;
const READ_CHUNK_BYTES: usize = 256 * 1024;
/// Response body bytes kept in an attempt record to explain a failure.
const MAX_ERROR_BODY: usize = 512;
/// Pause after an unexpected storage error before the task tries again.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Why a step failed; the task logs it and tries again shortly.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("event at offset {0} is missing from the log")]
    MissingEvent(u64),
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
    /// Read-ahead: the log from `delivered_through + 1` on, one bounded chunk at most, so
    /// delivering a chunk costs one read rather than one per event.
    ahead: VecDeque<Event>,
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
        while self.ahead.front().is_some_and(|e| e.offset < from) {
            self.ahead.pop_front();
        }
        if self.ahead.front().is_some_and(|e| e.offset != from) {
            // Not contiguous with the cursor (it moved some other way): read afresh.
            self.ahead.clear();
        }
        if self.ahead.is_empty() {
            let head = *self.head.borrow_and_update();
            if from > head {
                tokio::select! {
                    _ = self.cancel.cancelled() => return Ok(Flow::Stop),
                    changed = self.head.changed() => if changed.is_err() {
                        return Ok(Flow::Stop);
                    },
                    _ = self.wake.notified() => {}
                }
                return Ok(Flow::Continue);
            }
            self.ahead = log.read(from, READ_CHUNK_EVENTS, READ_CHUNK_BYTES)?.into();
            if self.ahead.front().map(|e| e.offset) != Some(from) {
                self.ahead.clear();
                return Err(DeliveryError::MissingEvent(from));
            }
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

    /// One HTTP attempt at `event`, and the durable record of its outcome.
    async fn attempt(
        &mut self,
        hook: &StoredWebhook,
        event: &Event,
        redrive: bool,
        attempt: u32,
    ) -> Result<Flow, DeliveryError> {
        let started_ms = now_ms();
        let Some(sent) = self.send(hook, event).await else {
            return Ok(Flow::Stop);
        };
        let config = self.hooks.config();
        let now = now_ms();
        let failing_since = |cursor: &Cursor| {
            if cursor.failing_since_ms == 0 {
                now
            } else {
                cursor.failing_since_ms
            }
        };
        let max_attempts = config.retry_schedule.len() as u32 + 1;
        // Decide the outcome outside the lock; `modify` re-checks the cursor state.
        let decision = match sent.class {
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
                            .get(attempt as usize - 1)
                            .copied()
                            .unwrap_or_default(),
                    ),
                };
                Decision::Retry(now + delay.as_millis() as u64)
            }
        };
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
                let (outcome, next_retry) = match &decision {
                    Decision::Delivered => {
                        if redrive {
                            writes.push(records::delete(records::redrive_key(&id, offset)));
                        } else {
                            cursor.delivered_through = cursor.delivered_through.max(offset);
                        }
                        cursor.clear_pending();
                        cursor.failing_since_ms = 0;
                        (DeliveryOutcome::Succeeded, 0)
                    }
                    Decision::Retry(at) => {
                        cursor.pending_offset = offset;
                        cursor.pending_attempts = attempt;
                        cursor.pending_redrive = redrive;
                        cursor.next_attempt_ms = *at;
                        (DeliveryOutcome::RetryScheduled, *at)
                    }
                    Decision::DeadLetter => {
                        if redrive {
                            writes.push(records::delete(records::redrive_key(&id, offset)));
                        } else {
                            cursor.delivered_through = cursor.delivered_through.max(offset);
                        }
                        if let Some(key) = &evict {
                            warn!(webhook = %id, "dead-letter queue full; dropping the oldest dead letter");
                            writes.push(records::delete(key.clone()));
                        }
                        writes.push(records::put(records::dead_key(&id, offset), &dead_letter));
                        cursor.clear_pending();
                        (DeliveryOutcome::DeadLettered, 0)
                    }
                    Decision::Disable(reason) => {
                        hook.enabled = false;
                        hook.disabled_reason = reason.clone();
                        hook.disabled_at_ms = now;
                        hook.updated_at_ms = now;
                        // The event stays pending: re-enabling delivers it first.
                        cursor.pending_offset = offset;
                        cursor.pending_attempts = 0;
                        cursor.pending_redrive = redrive;
                        cursor.next_attempt_ms = 0;
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
        match outcome {
            None => Ok(Flow::Stop),
            Some(Decision::Disable(reason)) => {
                info!(webhook = %self.id, %reason, "webhook disabled");
                Ok(Flow::Stop)
            }
            Some(Decision::DeadLetter) => {
                info!(webhook = %self.id, offset, attempt, error = %sent.error, "event dead-lettered");
                Ok(Flow::Continue)
            }
            Some(_) => Ok(Flow::Continue),
        }
    }

    /// Signs and POSTs the event. None when the task was cancelled meanwhile.
    async fn send(&self, hook: &StoredWebhook, event: &Event) -> Option<Sent> {
        let started = Instant::now();
        let fail = |error: String| Sent {
            class: Class::Retryable,
            status: None,
            error,
            retry_after: None,
            latency: started.elapsed(),
        };
        let url = match self.hooks.policy().check_url(&hook.url) {
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
        let permits = self.hooks.inner.permits.clone();
        let _permit = tokio::select! {
            _ = self.cancel.cancelled() => return None,
            permit = permits.acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return None,
            },
        };
        let started = Instant::now();
        let request = self
            .hooks
            .inner
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &event.id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .timeout(self.hooks.config().attempt_timeout)
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
            _ = self.cancel.cancelled() => return None,
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
    fn jitter_stays_within_twenty_percent() {
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(10));
            assert!(d >= Duration::from_secs(8) && d <= Duration::from_secs(12));
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }
}
