//! Order commands: validate, decide against the current state, append, answer.
//!
//! Decisions are made on a read of the projection, and the append carries the version that read
//! saw, so the writer rejects it if anything changed in between. Without an `expected_version`
//! from the caller such a race is retried transparently; with one, it is the caller's ABORTED.

use std::{
    sync::{Arc, Mutex},
    time::SystemTime,
};

use ordo_api::v1::{
    CancelOrderRequest, CreateOrderRequest, Event, ListOrdersRequest, ListOrdersResponse, Order,
    OrderCancelled, OrderCreated, OrderEvent, OrderStatus, OrderStatusChanged,
    UpdateOrderStatusRequest, event::Payload, order_event::Kind,
};
use prost::Message;
use sha2::{Digest, Sha256};

use super::{model, records};
use crate::{
    config::Limits,
    error::OrdoError,
    paging,
    store::{AppendBatch, AppendOutcome, IdempotencyClaim, Projection, SharedLog, StoreError},
    validate,
};

/// Attempts for a command whose caller gave no expected version and lost a race.
const MAX_ATTEMPTS: usize = 5;
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;
const MAX_REASON: usize = 512;

/// Executes order commands against the log.
#[derive(Clone)]
pub struct OrderCommands {
    log: SharedLog,
    limits: Limits,
    /// Monotonic within a millisecond, so ListOrders (ordered by id) is creation order even for
    /// orders created in the same millisecond.
    ids: Arc<Mutex<ulid::Generator>>,
}

impl OrderCommands {
    pub fn new(log: SharedLog, limits: Limits) -> Self {
        Self {
            log,
            limits,
            ids: Arc::new(Mutex::new(ulid::Generator::new())),
        }
    }

    fn next_order_id(&self) -> String {
        match self.ids.lock().ok().and_then(|mut ids| ids.generate().ok()) {
            Some(id) => id.to_string(),
            // The generator fails only when 2^80 ids were made in one millisecond.
            None => ulid::Ulid::new().to_string(),
        }
    }

    pub async fn create(&self, req: CreateOrderRequest) -> Result<Order, OrdoError> {
        self.validate_create(&req)?;
        let claim = claim("CreateOrder", &req.idempotency_key, &req)?;
        if let Some(order) = self.replay(claim.as_ref())? {
            return Ok(order);
        }
        let order_id = self.next_order_id();
        let payload = Kind::Created(OrderCreated {
            order_id: order_id.clone(),
            customer_id: req.customer_id,
            items: req.items,
        });
        self.append(&order_id, None, 0, model::CREATED, payload, claim)
            .await
    }

    pub fn get(&self, order_id: &str, at_version: Option<u64>) -> Result<Order, OrdoError> {
        let current = self.load(order_id)?;
        let Some(version) = at_version else {
            return Ok(current);
        };
        if version == 0 || version > current.version {
            return Err(OrdoError::invalid(format!(
                "at_version {version} is out of range; order {order_id} has versions 1 to {}",
                current.version
            )));
        }
        let events = self
            .log
            .read_stream(&model::stream_id(order_id), 1, version)?;
        // Retention may have removed the stream's oldest events: the current order (its
        // projection) stays, but a past version can no longer be folded from the start.
        if events.first().map(|e| e.stream_version) != Some(1) || events.len() as u64 != version {
            let removed = events
                .first()
                .map_or(version, |e| e.stream_version.saturating_sub(1));
            return Err(OrdoError::OutOfRange(format!(
                "order {order_id} versions 1 to {removed} were removed by retention, so at_version {version} cannot be rebuilt; GetOrder without at_version returns the current order (version {})",
                current.version
            )));
        }
        Ok(model::fold(&events))
    }

    pub fn list(&self, req: &ListOrdersRequest) -> Result<ListOrdersResponse, OrdoError> {
        let page_size = paging::page_size("page_size", req.page_size, DEFAULT_PAGE, MAX_PAGE)?;
        let status = OrderStatus::try_from(req.status).map_err(|_| {
            OrdoError::invalid(format!("status {} is not a known OrderStatus", req.status))
        })?;
        if !req.page_token.is_empty() && ulid::Ulid::from_string(&req.page_token).is_err() {
            return Err(OrdoError::invalid(
                "page_token is not one this server issued; pass next_page_token from the last response",
            ));
        }
        let prefix = match status {
            OrderStatus::Unspecified => records::all_orders_prefix(),
            status => records::status_prefix(status),
        };
        let after = paging::after_key(&prefix, &req.page_token);
        // One extra row tells whether another page exists.
        let rows = self
            .log
            .scan_records(&prefix, after.as_deref(), page_size + 1)?;
        let more = rows.len() > page_size;
        let mut orders = Vec::with_capacity(page_size);
        for (key, value) in rows.into_iter().take(page_size) {
            let order = match status {
                OrderStatus::Unspecified => decode_order(&value)?,
                _ => self.load(&records::id_from_key(&key))?,
            };
            orders.push(order);
        }
        let next_page_token = paging::next_page_token(more, orders.last().map(|o| o.id.as_str()));
        Ok(ListOrdersResponse {
            orders,
            next_page_token,
        })
    }

    pub async fn update_status(&self, req: UpdateOrderStatusRequest) -> Result<Order, OrdoError> {
        let to = OrderStatus::try_from(req.status)
            .ok()
            .filter(|s| *s != OrderStatus::Unspecified)
            .ok_or_else(|| {
                OrdoError::invalid(format!(
                    "status {} is not a target status; use ORDER_STATUS_PAID, _FULFILLED or _DELIVERED",
                    req.status
                ))
            })?;
        validate::idempotency_key(&req.idempotency_key)?;
        let claim = claim("UpdateOrderStatus", &req.idempotency_key, &req)?;
        if let Some(order) = self.replay(claim.as_ref())? {
            return Ok(order);
        }
        self.mutate(&req.order_id, req.expected_version, claim, |order| {
            model::check_advance(order.status(), to)?;
            Ok((
                model::STATUS_CHANGED,
                Kind::StatusChanged(OrderStatusChanged {
                    order_id: order.id.clone(),
                    from: order.status,
                    to: to as i32,
                }),
            ))
        })
        .await
    }

    pub async fn cancel(&self, req: CancelOrderRequest) -> Result<Order, OrdoError> {
        validate::text("reason", &req.reason, MAX_REASON, false)?;
        validate::idempotency_key(&req.idempotency_key)?;
        let claim = claim("CancelOrder", &req.idempotency_key, &req)?;
        if let Some(order) = self.replay(claim.as_ref())? {
            return Ok(order);
        }
        self.mutate(&req.order_id, req.expected_version, claim, |order| {
            model::check_cancel(order.status())?;
            Ok((
                model::CANCELLED,
                Kind::Cancelled(OrderCancelled {
                    order_id: order.id.clone(),
                    from: order.status,
                    reason: req.reason.clone(),
                }),
            ))
        })
        .await
    }

    /// Load, decide, append; retried on a lost race unless the caller pinned the version.
    async fn mutate<F>(
        &self,
        order_id: &str,
        expected_version: Option<u64>,
        claim: Option<IdempotencyClaim>,
        decide: F,
    ) -> Result<Order, OrdoError>
    where
        F: Fn(&Order) -> Result<(&'static str, Kind), OrdoError>,
    {
        let mut claim = claim;
        for _ in 0..MAX_ATTEMPTS {
            let current = self.load(order_id)?;
            if let Some(expected) = expected_version
                && expected != current.version
            {
                return Err(version_mismatch(order_id, expected, current.version));
            }
            let (event_type, payload) = decide(&current)?;
            let version = current.version;
            let attempt_claim = claim.take();
            let retry_claim = attempt_claim.as_ref().map(|c| IdempotencyClaim {
                key: c.key.clone(),
                fingerprint: c.fingerprint,
            });
            match self
                .append(
                    order_id,
                    Some(current),
                    version,
                    event_type,
                    payload,
                    attempt_claim,
                )
                .await
            {
                Err(OrdoError::Store(StoreError::VersionConflict { actual, .. })) => {
                    if let Some(expected) = expected_version {
                        return Err(version_mismatch(order_id, expected, actual));
                    }
                    claim = retry_claim;
                }
                other => return other,
            }
        }
        Err(OrdoError::Aborted(format!(
            "order {order_id} changed concurrently {MAX_ATTEMPTS} times; retry"
        )))
    }

    /// Appends one event to the order's stream, expecting it at `version`, and updates the
    /// projection (and the idempotency record) in the same atomic batch.
    async fn append(
        &self,
        order_id: &str,
        before: Option<Order>,
        version: u64,
        event_type: &str,
        payload: Kind,
        claim: Option<IdempotencyClaim>,
    ) -> Result<Order, OrdoError> {
        let stream = model::stream_id(order_id);
        let event = Event {
            // Empty: the log assigns an id that embeds the offset (see store::chunk::server_id).
            id: String::new(),
            source: "ordo/orders".into(),
            r#type: event_type.into(),
            subject: stream.clone(),
            stream_id: stream.clone(),
            time: Some(SystemTime::now().into()),
            datacontenttype: "application/protobuf".into(),
            payload: Some(Payload::Order(OrderEvent {
                kind: Some(payload),
            })),
            ..Default::default()
        };
        let mut projected = event.clone();
        let batch = AppendBatch {
            events: vec![event],
            expected_versions: vec![(stream, version)],
            idempotency: claim,
            index_ids: false,
            project: Some(Box::new(move |positions| {
                let mut after = before.clone().unwrap_or_default();
                if let Some(position) = positions.first() {
                    projected.offset = position.offset;
                    projected.stream_version = position.stream_version;
                }
                model::apply(&mut after, &projected);
                Projection {
                    records: records::writes(before.as_ref(), &after),
                    response: after.encode_to_vec(),
                }
            })),
        };
        match self.log.append(batch).await? {
            AppendOutcome::Appended { response, .. } | AppendOutcome::Replayed { response } => {
                decode_order(&response)
            }
            AppendOutcome::Deduplicated { .. } => Err(OrdoError::Store(StoreError::Corrupt {
                what: "order event".into(),
                detail: "fresh event id reported as duplicate".into(),
            })),
        }
    }

    fn load(&self, order_id: &str) -> Result<Order, OrdoError> {
        if ulid::Ulid::from_string(order_id).is_err() {
            return Err(OrdoError::invalid(format!(
                "order_id {order_id:?} is not a valid order id (a 26-character ULID)"
            )));
        }
        match self.log.get_record(&records::order_key(order_id))? {
            Some(bytes) => decode_order(&bytes),
            None => Err(OrdoError::NotFound(format!("order {order_id} not found"))),
        }
    }

    /// The stored response for a retried idempotency key, if any.
    fn replay(&self, claim: Option<&IdempotencyClaim>) -> Result<Option<Order>, OrdoError> {
        let Some(claim) = claim else {
            return Ok(None);
        };
        match self.log.idempotent_response(&claim.key)? {
            None => Ok(None),
            Some(stored) if stored.fingerprint == claim.fingerprint => {
                decode_order(&stored.response).map(Some)
            }
            Some(_) => Err(StoreError::IdempotencyMismatch {
                key: claim.key.clone(),
            }
            .into()),
        }
    }

    fn validate_create(&self, req: &CreateOrderRequest) -> Result<(), OrdoError> {
        validate::text(
            "customer_id",
            &req.customer_id,
            validate::MAX_NAME_LEN,
            true,
        )?;
        validate::idempotency_key(&req.idempotency_key)?;
        if req.items.is_empty() {
            return Err(OrdoError::invalid(
                "items must contain at least one line item",
            ));
        }
        let max = self.limits.max_items_per_order;
        if req.items.len() > max {
            return Err(OrdoError::invalid(format!(
                "items has {} entries; the limit (max_items_per_order) is {max}",
                req.items.len()
            )));
        }
        let mut currency: Option<&str> = None;
        for (i, item) in req.items.iter().enumerate() {
            validate::text(
                &format!("items[{i}].sku"),
                &item.sku,
                validate::MAX_NAME_LEN,
                true,
            )?;
            if item.quantity == 0 {
                return Err(OrdoError::invalid(format!(
                    "items[{i}].quantity must be at least 1"
                )));
            }
            let Some(price) = &item.unit_price else {
                return Err(OrdoError::invalid(format!(
                    "items[{i}].unit_price is required"
                )));
            };
            if price.amount_minor < 0 {
                return Err(OrdoError::invalid(format!(
                    "items[{i}].unit_price.amount_minor must not be negative"
                )));
            }
            let code = price.currency.as_str();
            if code.len() != 3 || !code.chars().all(|c| c.is_ascii_uppercase()) {
                return Err(OrdoError::invalid(format!(
                    "items[{i}].unit_price.currency {code:?} is not an ISO 4217 code like \"EUR\""
                )));
            }
            match currency {
                Some(first) if first != code => {
                    return Err(OrdoError::invalid(format!(
                        "items[{i}].unit_price.currency is {code} but items[0] is {first}; use one currency per order"
                    )));
                }
                _ => currency = Some(code),
            }
        }
        Ok(())
    }
}

fn claim<M: Message>(
    method: &str,
    key: &str,
    request: &M,
) -> Result<Option<IdempotencyClaim>, OrdoError> {
    if key.is_empty() {
        return Ok(None);
    }
    validate::idempotency_key(key)?;
    Ok(Some(IdempotencyClaim {
        key: format!("{method}/{key}"),
        fingerprint: Sha256::digest(request.encode_to_vec()).into(),
    }))
}

fn version_mismatch(order_id: &str, expected: u64, actual: u64) -> OrdoError {
    OrdoError::Aborted(format!(
        "order {order_id} is at version {actual}, not the expected {expected}; re-read it and retry"
    ))
}

fn decode_order(bytes: &[u8]) -> Result<Order, OrdoError> {
    Order::decode(bytes).map_err(|e| {
        OrdoError::Store(StoreError::Corrupt {
            what: "order record".into(),
            detail: e.to_string(),
        })
    })
}
