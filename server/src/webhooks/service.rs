//! The operations behind `WebhookService`: validation, durable writes, and telling the delivery
//! engine what changed.

use std::time::Duration;

use ordo_api::v1::{
    CreateWebhookRequest, CreateWebhookResponse, DeadLetter, DeliveryAttempt,
    ListDeadLettersRequest, ListDeadLettersResponse, ListDeliveriesRequest, ListDeliveriesResponse,
    ListWebhooksRequest, ListWebhooksResponse, RedriveDeadLettersRequest,
    RedriveDeadLettersResponse, RotateSecretRequest, RotateSecretResponse, UpdateWebhookRequest,
    Webhook, redrive_dead_letters_request::Selection, start_position::Position,
};

use super::{
    Webhooks,
    records::{self, Cursor, StoredWebhook, decode},
    signing,
    ssrf::{GuardedResolver, RefusedHost},
};
use crate::{
    clock::{now_ms, timestamp},
    error::OrdoError,
    events::position,
    paging,
    store::{AppendBatch, RecordWrite},
    validate,
};

const MAX_DESCRIPTION: usize = 512;
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;
const DEFAULT_ATTEMPTS: usize = 50;
const MAX_ATTEMPTS_PAGE: usize = 1000;
const DEFAULT_DEAD_PAGE: usize = 100;
const MAX_DEAD_PAGE: usize = 1000;
/// Most events a parallel webhook may have in flight.
const MAX_IN_FLIGHT: u32 = 64;
const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);
const MAX_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long registration waits for DNS before accepting a name (it is checked again at connect).
const REGISTRATION_DNS_TIMEOUT: Duration = Duration::from_secs(2);
/// Records deleted per batch when a webhook is deleted.
const DELETE_BATCH: usize = 1000;

impl Webhooks {
    pub async fn create(
        &self,
        req: CreateWebhookRequest,
    ) -> Result<CreateWebhookResponse, OrdoError> {
        let url = self.check_url(&req.url).await?;
        check_filters(&req.event_types, &req.stream_ids)?;
        validate::text("description", &req.description, MAX_DESCRIPTION, false)?;
        check_in_flight(req.max_in_flight)?;
        let existing = self.log().scan_records(
            &records::all_webhooks_prefix(),
            None,
            self.config().max_webhooks,
        )?;
        if existing.len() >= self.config().max_webhooks {
            return Err(OrdoError::FailedPrecondition(format!(
                "this server already has {} webhooks, its limit; delete unused ones first",
                existing.len()
            )));
        }
        let head = self.log().head();
        let delivered_through = match req.start.as_ref().and_then(|s| s.position) {
            None | Some(Position::End(_)) => head,
            Some(_) => {
                let range = position::Range {
                    first: self.log().first_offset(),
                    head,
                };
                position::first_offset(req.start.as_ref(), range, false)? - 1
            }
        };
        let now = now_ms();
        let secret = signing::generate_secret();
        let hook = StoredWebhook {
            id: ulid::Ulid::new().to_string(),
            url,
            event_types: req.event_types,
            stream_ids: req.stream_ids,
            description: req.description,
            max_in_flight: req.max_in_flight.max(1),
            enabled: true,
            created_at_ms: now,
            updated_at_ms: now,
            secret: secret.clone(),
            ..StoredWebhook::default()
        };
        let cursor = Cursor {
            delivered_through,
            ..Cursor::default()
        };
        self.log()
            .append(AppendBatch::records_only(vec![
                records::put(records::webhook_key(&hook.id), &hook),
                records::put(records::cursor_key(&hook.id), &cursor),
            ]))
            .await?;
        self.restart(&hook.id).await?;
        Ok(CreateWebhookResponse {
            webhook: Some(self.to_api(&hook, &cursor)?),
            secret,
        })
    }

    pub fn get(&self, id: &str) -> Result<Webhook, OrdoError> {
        let hook = self.require(id)?;
        let cursor = self.load_cursor(id)?;
        self.to_api(&hook, &cursor)
    }

    pub fn list(&self, req: &ListWebhooksRequest) -> Result<ListWebhooksResponse, OrdoError> {
        let size = paging::page_size("page_size", req.page_size, DEFAULT_PAGE, MAX_PAGE)?;
        let after = paging::after_key(&records::all_webhooks_prefix(), &req.page_token);
        let page =
            self.log()
                .scan_records(&records::all_webhooks_prefix(), after.as_deref(), size + 1)?;
        let more = page.len() > size;
        let mut webhooks = Vec::with_capacity(size);
        for (key, value) in page.into_iter().take(size) {
            let hook: StoredWebhook = decode(&value, "webhook")?;
            let cursor = self.load_cursor(&records::id_from_webhook_key(&key))?;
            webhooks.push(self.to_api(&hook, &cursor)?);
        }
        let next_page_token = paging::next_page_token(more, webhooks.last().map(|w| w.id.as_str()));
        Ok(ListWebhooksResponse {
            webhooks,
            next_page_token,
        })
    }

    pub async fn update(&self, req: UpdateWebhookRequest) -> Result<Webhook, OrdoError> {
        self.require(&req.id)?;
        let url = match &req.url {
            Some(url) => Some(self.check_url(url).await?),
            None => None,
        };
        if let Some(types) = &req.event_types {
            let streams = req
                .stream_ids
                .as_ref()
                .map(|s| s.values.as_slice())
                .unwrap_or(&[]);
            check_filters(&types.values, streams)?;
        } else if let Some(streams) = &req.stream_ids {
            records::filter_matcher(&[], &streams.values)?;
        }
        if let Some(description) = &req.description {
            validate::text("description", description, MAX_DESCRIPTION, false)?;
        }
        if let Some(max) = req.max_in_flight {
            check_in_flight(max)?;
        }
        let now = now_ms();
        let changed = self
            .modify(&req.id, |hook, cursor| {
                let was_enabled = hook.enabled;
                let mode_before = hook.max_in_flight.max(1) > 1;
                if let Some(url) = url {
                    hook.url = url;
                }
                if let Some(types) = req.event_types {
                    hook.event_types = types.values;
                }
                if let Some(streams) = req.stream_ids {
                    hook.stream_ids = streams.values;
                }
                if let Some(description) = req.description {
                    hook.description = description;
                }
                if let Some(max) = req.max_in_flight {
                    hook.max_in_flight = max.max(1);
                }
                match req.enabled {
                    Some(true) if !was_enabled => {
                        hook.enabled = true;
                        hook.disabled_reason.clear();
                        hook.disabled_at_ms = 0;
                        // A fresh start: the pending event gets a full retry schedule again.
                        cursor.pending_attempts = 0;
                        cursor.next_attempt_ms = 0;
                        cursor.failing_since_ms = 0;
                    }
                    Some(false) if was_enabled => {
                        hook.enabled = false;
                        hook.disabled_reason = "disabled by UpdateWebhook".into();
                        hook.disabled_at_ms = now;
                    }
                    _ => {}
                }
                hook.updated_at_ms = now;
                // Enabling, disabling or switching between ordered and parallel delivery
                // restarts the task; everything else applies at its next attempt.
                let mode_after = hook.max_in_flight > 1;
                (
                    Vec::new(),
                    was_enabled != hook.enabled || mode_before != mode_after,
                )
            })
            .await?
            .ok_or_else(|| not_found(&req.id))?;
        if changed {
            self.restart(&req.id).await?;
        } else {
            self.wake(&req.id);
        }
        self.get(&req.id)
    }

    pub async fn delete(&self, id: &str) -> Result<(), OrdoError> {
        self.require(id)?;
        self.forget(id).await;
        for prefix in [
            records::attempt_prefix(id),
            records::dead_prefix(id),
            records::redrive_prefix(id),
            records::parallel_prefix(id),
        ] {
            loop {
                let page = self.log().scan_records(&prefix, None, DELETE_BATCH)?;
                if page.is_empty() {
                    break;
                }
                let deleted = page.len() as u64;
                let writes = page.into_iter().map(|(k, _)| records::delete(k)).collect();
                self.log().append(AppendBatch::records_only(writes)).await?;
                if prefix == records::dead_prefix(id) {
                    crate::metrics::dead_letters_removed(deleted);
                }
            }
        }
        self.log()
            .append(AppendBatch::records_only(vec![
                records::delete(records::cursor_key(id)),
                records::delete(records::webhook_key(id)),
            ]))
            .await?;
        Ok(())
    }

    pub async fn rotate_secret(
        &self,
        req: &RotateSecretRequest,
    ) -> Result<RotateSecretResponse, OrdoError> {
        let grace = match req.grace_period_seconds {
            0 => DEFAULT_GRACE,
            s => Duration::from_secs(s.into()),
        };
        if grace > MAX_GRACE {
            return Err(OrdoError::invalid(format!(
                "grace_period_seconds is {}; the limit is {} (7 days)",
                req.grace_period_seconds,
                MAX_GRACE.as_secs()
            )));
        }
        let secret = signing::generate_secret();
        let now = now_ms();
        let expires = now + grace.as_millis() as u64;
        self.modify(&req.id, |hook, _| {
            hook.previous_secret = std::mem::replace(&mut hook.secret, secret.clone());
            hook.previous_secret_expires_ms = expires;
            hook.updated_at_ms = now;
            (Vec::new(), ())
        })
        .await?
        .ok_or_else(|| not_found(&req.id))?;
        Ok(RotateSecretResponse {
            secret,
            previous_secret_expires_at: timestamp(expires),
        })
    }

    pub fn list_deliveries(
        &self,
        req: &ListDeliveriesRequest,
    ) -> Result<ListDeliveriesResponse, OrdoError> {
        let limit = paging::page_size("limit", req.limit, DEFAULT_ATTEMPTS, MAX_ATTEMPTS_PAGE)?;
        self.require(&req.webhook_id)?;
        let cursor = self.load_cursor(&req.webhook_id)?;
        let first = cursor.attempt_seq.saturating_sub(limit as u64);
        let after = first
            .checked_sub(1)
            .map(|seq| records::attempt_key(&req.webhook_id, seq));
        let page = self.log().scan_records(
            &records::attempt_prefix(&req.webhook_id),
            after.as_deref(),
            limit,
        )?;
        let mut attempts = page
            .iter()
            .map(|(_, v)| decode::<DeliveryAttempt>(v, "delivery attempt"))
            .collect::<Result<Vec<_>, _>>()?;
        attempts.reverse();
        Ok(ListDeliveriesResponse { attempts })
    }

    pub fn list_dead_letters(
        &self,
        req: &ListDeadLettersRequest,
    ) -> Result<ListDeadLettersResponse, OrdoError> {
        let limit = paging::page_size("limit", req.limit, DEFAULT_DEAD_PAGE, MAX_DEAD_PAGE)?;
        self.require(&req.webhook_id)?;
        let after =
            (req.after_offset > 0).then(|| records::dead_key(&req.webhook_id, req.after_offset));
        let page = self.log().scan_records(
            &records::dead_prefix(&req.webhook_id),
            after.as_deref(),
            limit + 1,
        )?;
        let more = page.len() > limit;
        let dead_letters = page
            .iter()
            .take(limit)
            .map(|(_, v)| decode::<DeadLetter>(v, "dead letter"))
            .collect::<Result<Vec<_>, _>>()?;
        let next_after_offset = match (more, dead_letters.last()) {
            (true, Some(last)) => last.event_offset,
            _ => 0,
        };
        Ok(ListDeadLettersResponse {
            dead_letters,
            next_after_offset,
        })
    }

    /// Moves the selected dead letters to the redrive queue, in batches, and wakes the task.
    pub async fn redrive(
        &self,
        req: &RedriveDeadLettersRequest,
    ) -> Result<RedriveDeadLettersResponse, OrdoError> {
        let id = &req.webhook_id;
        self.require(id)?;
        let (from, to) = match &req.selection {
            None => {
                return Err(OrdoError::invalid(
                    "selection is required: set all, offset or range",
                ));
            }
            Some(Selection::All(false)) => {
                return Err(OrdoError::invalid(
                    "all must be true when it is the selection; or set offset or range",
                ));
            }
            Some(Selection::All(true)) => (1, u64::MAX),
            Some(Selection::Offset(offset)) => (*offset, *offset),
            Some(Selection::Range(range)) => {
                if range.from_offset > range.to_offset {
                    return Err(OrdoError::invalid(format!(
                        "range.from_offset {} is after range.to_offset {}",
                        range.from_offset, range.to_offset
                    )));
                }
                (range.from_offset, range.to_offset)
            }
        };
        let prefix = records::dead_prefix(id);
        let mut after = from
            .checked_sub(1)
            .filter(|a| *a > 0)
            .map(|a| records::dead_key(id, a));
        let mut redriven = 0u64;
        loop {
            let page = self
                .log()
                .scan_records(&prefix, after.as_deref(), DELETE_BATCH)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            let mut writes: Vec<RecordWrite> = Vec::new();
            let mut moved = 0;
            let mut done = false;
            for (key, value) in page {
                let Some(offset) = records::trailing_u64(&key) else {
                    continue;
                };
                if offset > to {
                    done = true;
                    break;
                }
                writes.push(records::delete(key));
                writes.push(RecordWrite {
                    key: records::redrive_key(id, offset),
                    value: Some(value),
                });
                moved += 1;
            }
            redriven += moved;
            if !writes.is_empty() {
                self.log().append(AppendBatch::records_only(writes)).await?;
                crate::metrics::dead_letters_removed(moved);
            }
            if done {
                break;
            }
        }
        if redriven == 0 && matches!(req.selection, Some(Selection::Offset(_))) {
            return Err(OrdoError::NotFound(format!(
                "webhook {id} has no dead letter at offset {from}; list them with ListDeadLetters"
            )));
        }
        self.wake(id);
        Ok(RedriveDeadLettersResponse { redriven })
    }

    fn require(&self, id: &str) -> Result<StoredWebhook, OrdoError> {
        if id.is_empty() {
            return Err(OrdoError::invalid("id is required"));
        }
        self.load_webhook(id)?.ok_or_else(|| not_found(id))
    }

    /// Syntax, scheme and IP literals always; for DNS names, a best-effort resolution now so
    /// that an obviously internal name is refused at once (it is checked again at connect time).
    async fn check_url(&self, raw: &str) -> Result<String, OrdoError> {
        let url = self
            .policy()
            .check_url(raw)
            .map_err(|err| OrdoError::invalid(err.to_string()))?;
        if let Some(url::Host::Domain(host)) = url.host() {
            let resolved = tokio::time::timeout(
                REGISTRATION_DNS_TIMEOUT,
                GuardedResolver::resolve_allowed(self.policy(), host),
            )
            .await;
            if let Ok(Err(err)) = resolved
                && err.is::<RefusedHost>()
            {
                return Err(OrdoError::invalid(format!("url {raw:?}: {err}")));
            }
        }
        Ok(url.to_string())
    }

    fn to_api(&self, hook: &StoredWebhook, cursor: &Cursor) -> Result<Webhook, OrdoError> {
        let cap = self.config().max_dead_letters + 1;
        let dead = self
            .log()
            .scan_records(&records::dead_prefix(&hook.id), None, cap)?
            .len();
        let redrive = self
            .log()
            .scan_records(&records::redrive_prefix(&hook.id), None, cap)?
            .len();
        let now = now_ms();
        Ok(Webhook {
            id: hook.id.clone(),
            url: hook.url.clone(),
            event_types: hook.event_types.clone(),
            stream_ids: hook.stream_ids.clone(),
            description: hook.description.clone(),
            enabled: hook.enabled,
            disabled_reason: hook.disabled_reason.clone(),
            disabled_at: timestamp(hook.disabled_at_ms),
            created_at: timestamp(hook.created_at_ms),
            updated_at: timestamp(hook.updated_at_ms),
            delivered_through_offset: cursor.delivered_through,
            failing_since: timestamp(cursor.failing_since_ms),
            pending_offset: cursor.pending_offset,
            pending_attempts: cursor.pending_attempts,
            next_attempt_at: timestamp(cursor.next_attempt_ms),
            dead_letter_count: dead as u64,
            redrive_pending_count: redrive as u64,
            max_in_flight: hook.max_in_flight.max(1),
            previous_secret_expires_at: if hook.previous_secret_expires_ms > now {
                timestamp(hook.previous_secret_expires_ms)
            } else {
                None
            },
        })
    }
}

fn check_in_flight(max: u32) -> Result<(), OrdoError> {
    if max > MAX_IN_FLIGHT {
        return Err(OrdoError::invalid(format!(
            "max_in_flight is {max}; the limit is {MAX_IN_FLIGHT} (use 0 or 1 for ordered delivery)"
        )));
    }
    Ok(())
}

fn check_filters(types: &[String], streams: &[String]) -> Result<(), OrdoError> {
    if types.is_empty() {
        return Err(OrdoError::invalid(
            "event_types is required: list at least one event type, exact (order.created) or prefix (order.*); use * for every event",
        ));
    }
    records::filter_matcher(types, streams)?;
    Ok(())
}

fn not_found(id: &str) -> OrdoError {
    OrdoError::NotFound(format!(
        "webhook {id:?} does not exist; list webhooks with ListWebhooks"
    ))
}
