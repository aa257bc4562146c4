//! JSON renderings of the proto messages for `--json`, built by hand so the output shape is a
//! deliberate, stable contract (not whatever a derive would produce): snake_case keys as in the
//! proto, statuses without their `ORDER_STATUS_` prefix, offsets as numbers, timestamps in
//! RFC 3339.

use base64::Engine;
use ordo_client::v1::{
    ConsumerGroup, ConsumerStrategy, Event, EventPosition, LineItem, Order, OrderEvent,
    OrderStatus, ParkedEvent, StartPosition, event::Payload, order_event, start_position::Position,
};
use prost_types::Timestamp;
use serde_json::{Map, Value, json};

pub fn status_name(status: i32) -> &'static str {
    match OrderStatus::try_from(status) {
        Ok(OrderStatus::Created) => "CREATED",
        Ok(OrderStatus::Paid) => "PAID",
        Ok(OrderStatus::Fulfilled) => "FULFILLED",
        Ok(OrderStatus::Delivered) => "DELIVERED",
        Ok(OrderStatus::Cancelled) => "CANCELLED",
        _ => "UNSPECIFIED",
    }
}

pub fn time(ts: Option<&Timestamp>) -> Value {
    ts.map_or(Value::Null, |ts| Value::String(ts.to_string()))
}

fn items(items: &[LineItem]) -> Value {
    items
        .iter()
        .map(|item| {
            let price = item.unit_price.as_ref();
            json!({
                "sku": item.sku,
                "quantity": item.quantity,
                "unit_price": {
                    "amount_minor": price.map_or(0, |p| p.amount_minor),
                    "currency": price.map_or("", |p| p.currency.as_str()),
                },
            })
        })
        .collect()
}

pub fn order(order: &Order) -> Value {
    json!({
        "id": order.id,
        "customer_id": order.customer_id,
        "status": status_name(order.status),
        "version": order.version,
        "items": items(&order.items),
        "created_at": time(order.created_at.as_ref()),
        "updated_at": time(order.updated_at.as_ref()),
        "cancel_reason": order.cancel_reason,
        "last_offset": order.last_offset,
    })
}

fn order_event(event: &OrderEvent) -> Value {
    match &event.kind {
        Some(order_event::Kind::Created(created)) => json!({"created": {
            "order_id": created.order_id,
            "customer_id": created.customer_id,
            "items": items(&created.items),
        }}),
        Some(order_event::Kind::StatusChanged(changed)) => json!({"status_changed": {
            "order_id": changed.order_id,
            "from": status_name(changed.from),
            "to": status_name(changed.to),
        }}),
        Some(order_event::Kind::Cancelled(cancelled)) => json!({"cancelled": {
            "order_id": cancelled.order_id,
            "from": status_name(cancelled.from),
            "reason": cancelled.reason,
        }}),
        None => Value::Null,
    }
}

/// An event; the payload goes to `data` (JSON value for JSON content, else text),
/// `data_base64` (binary), or `order` (typed order events).
pub fn event(event: &Event) -> Value {
    let mut object = Map::new();
    object.insert("offset".into(), json!(event.offset));
    object.insert("id".into(), json!(event.id));
    object.insert("type".into(), json!(event.r#type));
    object.insert("stream_id".into(), json!(event.stream_id));
    object.insert("stream_version".into(), json!(event.stream_version));
    object.insert("time".into(), time(event.time.as_ref()));
    object.insert("source".into(), json!(event.source));
    object.insert("subject".into(), json!(event.subject));
    object.insert("datacontenttype".into(), json!(event.datacontenttype));
    object.insert("metadata".into(), json!(event.metadata));
    match &event.payload {
        Some(Payload::Order(order)) => {
            object.insert("order".into(), order_event(order));
        }
        Some(Payload::Data(data)) => {
            let (key, value) = data_value(&event.datacontenttype, data);
            object.insert(key.into(), value);
        }
        None => {}
    }
    Value::Object(object)
}

fn data_value(content_type: &str, data: &[u8]) -> (&'static str, Value) {
    if content_type.contains("json")
        && let Ok(value) = serde_json::from_slice::<Value>(data)
    {
        return ("data", value);
    }
    match std::str::from_utf8(data) {
        Ok(text) => ("data", Value::String(text.to_string())),
        Err(_) => (
            "data_base64",
            Value::String(base64::engine::general_purpose::STANDARD.encode(data)),
        ),
    }
}

pub fn position(position: &EventPosition, deduplicated: bool) -> Value {
    json!({
        "id": position.id,
        "offset": position.offset,
        "stream_id": position.stream_id,
        "stream_version": position.stream_version,
        "deduplicated": deduplicated,
    })
}

/// A group's strategy without its `CONSUMER_STRATEGY_` prefix (unset means round robin).
pub fn strategy_name(strategy: i32) -> &'static str {
    match ConsumerStrategy::try_from(strategy) {
        Ok(ConsumerStrategy::PinnedByStream) => "PINNED_BY_STREAM",
        _ => "ROUND_ROBIN",
    }
}

/// A start position as its oneof field: `{"start": true}`, `{"after_offset": 5}`...
fn start(position: Option<&StartPosition>) -> Value {
    match position.and_then(|p| p.position) {
        Some(Position::Start(_)) => json!({"start": true}),
        Some(Position::End(_)) | None => json!({"end": true}),
        Some(Position::AfterOffset(offset)) => json!({"after_offset": offset}),
        Some(Position::FromOffset(offset)) => json!({"from_offset": offset}),
    }
}

pub fn group(group: &ConsumerGroup) -> Value {
    let filter = group.filter.clone().unwrap_or_default();
    let backoff = group.retry_backoff.unwrap_or_default();
    json!({
        "name": group.name,
        "filter": {"types": filter.types, "stream_ids": filter.stream_ids},
        "start": start(group.start.as_ref()),
        "strategy": strategy_name(group.strategy),
        "ack_timeout_ms": group.ack_timeout_ms,
        "max_deliveries": group.max_deliveries,
        "retry_backoff": {"initial_ms": backoff.initial_ms, "max_ms": backoff.max_ms},
        "max_in_flight": group.max_in_flight,
        "created_at": time(group.created_at.as_ref()),
        "updated_at": time(group.updated_at.as_ref()),
        "settled_through_offset": group.settled_through_offset,
        "head_offset": group.head_offset,
        "members": group.members,
        "in_flight": group.in_flight,
        "retrying": group.retrying,
        "parked": group.parked,
    })
}

/// A parked event: the event itself, and why and when it was parked.
pub fn parked(parked: &ParkedEvent) -> Value {
    json!({
        "event": parked.event.as_ref().map_or(Value::Null, event),
        "attempts": parked.attempts,
        "reason": parked.reason,
        "parked_at": time(parked.parked_at.as_ref()),
    })
}
