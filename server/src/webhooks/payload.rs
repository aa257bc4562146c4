//! The request body: the CloudEvents 1.0 JSON form of an event
//! (<https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/formats/json-format.md>).
//!
//! JSON payloads are embedded as `data` so receivers need no second decode; other payloads go
//! as `data_base64` (text as a string). Order events carry a typed protobuf payload, which is
//! rendered with the proto3 JSON mapping (camelCase names, int64 as strings, enum names), the
//! same form `grpcurl` prints, with `datacontenttype: application/json`.

use base64::{Engine, engine::general_purpose::STANDARD};
use ordo_api::v1::{Event, LineItem, OrderEvent, OrderStatus, event::Payload, order_event::Kind};
use serde_json::{Map, Value, json};

/// The CloudEvents JSON of `event`, as bytes ready to sign and send.
pub fn cloudevent_json(event: &Event) -> Result<Vec<u8>, serde_json::Error> {
    let mut ce = Map::new();
    ce.insert("specversion".into(), json!("1.0"));
    ce.insert("id".into(), json!(event.id));
    let source = if event.source.is_empty() {
        "ordo"
    } else {
        &event.source
    };
    ce.insert("source".into(), json!(source));
    ce.insert("type".into(), json!(event.r#type));
    if !event.subject.is_empty() {
        ce.insert("subject".into(), json!(event.subject));
    }
    if let Some(time) = &event.time {
        // prost-types renders RFC 3339 in UTC.
        ce.insert("time".into(), json!(time.to_string()));
    }
    // Extension attributes: lower-case alphanumeric names, as CloudEvents requires.
    ce.insert("ordooffset".into(), json!(event.offset));
    ce.insert("ordostream".into(), json!(event.stream_id));
    ce.insert("ordostreamversion".into(), json!(event.stream_version));
    match &event.payload {
        Some(Payload::Order(order)) => {
            ce.insert("datacontenttype".into(), json!("application/json"));
            ce.insert("data".into(), order_event(order));
        }
        Some(Payload::Data(data)) => {
            let content_type = if event.datacontenttype.is_empty() {
                "application/octet-stream"
            } else {
                &event.datacontenttype
            };
            ce.insert("datacontenttype".into(), json!(content_type));
            insert_data(&mut ce, content_type, data);
        }
        None => {
            if !event.datacontenttype.is_empty() {
                ce.insert("datacontenttype".into(), json!(event.datacontenttype));
            }
        }
    }
    serde_json::to_vec(&Value::Object(ce))
}

fn insert_data(ce: &mut Map<String, Value>, content_type: &str, data: &[u8]) {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let is_json = essence == "application/json" || essence.ends_with("+json");
    if is_json && let Ok(value) = serde_json::from_slice::<Value>(data) {
        ce.insert("data".into(), value);
        return;
    }
    if essence.starts_with("text/")
        && let Ok(text) = std::str::from_utf8(data)
    {
        ce.insert("data".into(), json!(text));
        return;
    }
    ce.insert("data_base64".into(), json!(STANDARD.encode(data)));
}

fn order_event(order: &OrderEvent) -> Value {
    match &order.kind {
        Some(Kind::Created(c)) => json!({"created": {
            "orderId": c.order_id,
            "customerId": c.customer_id,
            "items": c.items.iter().map(line_item).collect::<Vec<_>>(),
        }}),
        Some(Kind::StatusChanged(s)) => json!({"statusChanged": {
            "orderId": s.order_id,
            "from": status(s.from),
            "to": status(s.to),
        }}),
        Some(Kind::Cancelled(c)) => json!({"cancelled": {
            "orderId": c.order_id,
            "from": status(c.from),
            "reason": c.reason,
        }}),
        None => json!({}),
    }
}

fn line_item(item: &LineItem) -> Value {
    let mut out = json!({"sku": item.sku, "quantity": item.quantity});
    if let (Some(price), Some(obj)) = (&item.unit_price, out.as_object_mut()) {
        obj.insert(
            "unitPrice".into(),
            json!({"amountMinor": price.amount_minor.to_string(), "currency": price.currency}),
        );
    }
    out
}

fn status(value: i32) -> Value {
    match OrderStatus::try_from(value) {
        Ok(status) => json!(status.as_str_name()),
        Err(_) => json!(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ordo_api::v1::OrderStatusChanged;

    fn parse(event: &Event) -> Value {
        serde_json::from_slice(&cloudevent_json(event).unwrap()).unwrap()
    }

    #[test]
    fn json_data_is_embedded_and_binary_is_base64() {
        let mut event = Event {
            offset: 7,
            id: "e1".into(),
            r#type: "payment.confirmed".into(),
            subject: "payment-1".into(),
            stream_id: "payment-1".into(),
            stream_version: 1,
            datacontenttype: "application/json; charset=utf-8".into(),
            payload: Some(Payload::Data(br#"{"amount":5}"#.to_vec())),
            time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            ..Event::default()
        };
        let ce = parse(&event);
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["source"], "ordo");
        assert_eq!(ce["data"]["amount"], 5);
        assert_eq!(ce["time"], "2023-11-14T22:13:20Z");
        assert_eq!(ce["ordooffset"], 7);
        event.datacontenttype = "application/octet-stream".into();
        event.payload = Some(Payload::Data(vec![0, 159, 146, 150]));
        let ce = parse(&event);
        assert_eq!(ce["data_base64"], "AJ+Slg==");
        assert!(ce.get("data").is_none());
    }

    #[test]
    fn order_payload_uses_proto3_json() {
        let event = Event {
            id: "e2".into(),
            r#type: "order.status_changed".into(),
            datacontenttype: "application/protobuf".into(),
            payload: Some(Payload::Order(OrderEvent {
                kind: Some(Kind::StatusChanged(OrderStatusChanged {
                    order_id: "o1".into(),
                    from: OrderStatus::Created as i32,
                    to: OrderStatus::Paid as i32,
                })),
            })),
            ..Event::default()
        };
        let ce = parse(&event);
        assert_eq!(ce["datacontenttype"], "application/json");
        assert_eq!(ce["data"]["statusChanged"]["to"], "ORDER_STATUS_PAID");
        assert_eq!(ce["data"]["statusChanged"]["orderId"], "o1");
    }
}
