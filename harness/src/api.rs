//! Request builders, log reads over gRPC, status assertions and time-bounded stream reads.

use std::time::Duration;

use ordo_api::v1::{
    CreateOrderRequest, Event, EventFilter, EventPosition, LineItem, Money, NewEvent,
    PublishRequest, ReadEventsRequest, StartPosition, SubscribeRequest, SubscribeResponse,
    event_service_client::EventServiceClient, start_position::Position,
    subscribe_response::Message,
};
use tonic::{Code, Status, Streaming, transport::Channel};

pub type Events = EventServiceClient<Channel>;
pub type Orders = ordo_api::v1::order_service_client::OrderServiceClient<Channel>;

/// Longest a single stream read may take before the test fails instead of hanging.
pub const STREAM_TIMEOUT: Duration = Duration::from_secs(10);

pub fn money(amount_minor: i64, currency: &str) -> Money {
    Money {
        amount_minor,
        currency: currency.into(),
    }
}

pub fn item(sku: &str, quantity: u32, amount_minor: i64, currency: &str) -> LineItem {
    LineItem {
        sku: sku.into(),
        quantity,
        unit_price: Some(money(amount_minor, currency)),
    }
}

/// A valid one-item order for `customer`.
pub fn create_req(customer: &str) -> CreateOrderRequest {
    CreateOrderRequest {
        customer_id: customer.into(),
        items: vec![item("sku-1", 2, 1250, "EUR")],
        idempotency_key: String::new(),
    }
}

/// A generic event for Publish.
pub fn new_event(stream_id: &str, event_type: &str) -> NewEvent {
    NewEvent {
        stream_id: stream_id.into(),
        r#type: event_type.into(),
        ..Default::default()
    }
}

pub fn new_event_with_id(stream_id: &str, event_type: &str, id: &str) -> NewEvent {
    NewEvent {
        id: id.into(),
        ..new_event(stream_id, event_type)
    }
}

/// One AppendStream request.
pub fn append_req(event: NewEvent, client_seq: u64) -> ordo_api::v1::AppendStreamRequest {
    ordo_api::v1::AppendStreamRequest {
        event: Some(event),
        client_seq,
    }
}

pub fn publish_req(events: Vec<NewEvent>) -> PublishRequest {
    PublishRequest { events }
}

pub fn start() -> Option<StartPosition> {
    Some(StartPosition {
        position: Some(Position::Start(true)),
    })
}

pub fn end() -> Option<StartPosition> {
    Some(StartPosition {
        position: Some(Position::End(true)),
    })
}

pub fn after(offset: u64) -> Option<StartPosition> {
    Some(StartPosition {
        position: Some(Position::AfterOffset(offset)),
    })
}

pub fn from(offset: u64) -> Option<StartPosition> {
    Some(StartPosition {
        position: Some(Position::FromOffset(offset)),
    })
}

pub fn filter(types: &[&str], stream_ids: &[&str]) -> Option<EventFilter> {
    Some(EventFilter {
        types: types.iter().map(|s| s.to_string()).collect(),
        stream_ids: stream_ids.iter().map(|s| s.to_string()).collect(),
    })
}

/// The durable head, as ReadEvents reports it.
pub async fn head(events: &mut Events) -> u64 {
    events
        .read_events(ReadEventsRequest {
            start: end(),
            filter: None,
            limit: 1,
            ..Default::default()
        })
        .await
        .expect("read head")
        .into_inner()
        .head_offset
}

/// Every event in the log, paging with `after_offset`, until `next_after_offset == head`.
pub async fn read_all(events: &mut Events) -> Vec<Event> {
    read_filtered(events, None).await
}

/// Every event matching `filter`, paged.
pub async fn read_filtered(events: &mut Events, filter: Option<EventFilter>) -> Vec<Event> {
    let mut out = Vec::new();
    let mut after_offset = 0;
    for _ in 0..100_000 {
        let page = events
            .read_events(ReadEventsRequest {
                start: after(after_offset),
                filter: filter.clone(),
                limit: 1000,
                ..Default::default()
            })
            .await
            .expect("read page")
            .into_inner();
        out.extend(page.events);
        assert!(
            page.next_after_offset >= after_offset,
            "next_after_offset went backwards"
        );
        if page.next_after_offset == page.head_offset {
            return out;
        }
        assert!(
            page.next_after_offset > after_offset,
            "a page made no progress at {after_offset}"
        );
        after_offset = page.next_after_offset;
    }
    panic!("read_filtered did not reach the head");
}

/// Asserts the call failed with `code` and a message containing `needle`; returns the message.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    needle: &str,
) -> String {
    match result {
        Ok(value) => panic!("expected {code:?} ({needle:?}), got Ok({value:?})"),
        Err(status) => {
            assert_eq!(
                status.code(),
                code,
                "wrong code; message: {:?}",
                status.message()
            );
            assert!(
                status.message().contains(needle),
                "message {:?} does not mention {needle:?}",
                status.message()
            );
            status.message().to_string()
        }
    }
}

/// Opens a subscription.
pub async fn subscribe(
    events: &mut Events,
    req: SubscribeRequest,
) -> Result<Streaming<SubscribeResponse>, Status> {
    events.subscribe(req).await.map(|r| r.into_inner())
}

/// The next message, failing the test if none arrives within [`STREAM_TIMEOUT`] or the stream
/// ends or errors.
pub async fn next_message(stream: &mut Streaming<SubscribeResponse>) -> Message {
    let item = tokio::time::timeout(STREAM_TIMEOUT, stream.message())
        .await
        .expect("no subscription message within the timeout");
    item.expect("subscription failed")
        .expect("subscription ended")
        .message
        .expect("empty SubscribeResponse")
}

/// Reads until `caught_up` and returns the events before it plus the marker's head offset.
/// Heartbeats are skipped; a second `caught_up` would be caught by the callers that keep reading.
pub async fn read_until_caught_up(stream: &mut Streaming<SubscribeResponse>) -> (Vec<Event>, u64) {
    let mut events = Vec::new();
    for _ in 0..1_000_000 {
        match next_message(stream).await {
            Message::Event(event) => events.push(event),
            Message::CaughtUp(marker) => return (events, marker.head_offset),
            Message::Heartbeat(_) => {}
        }
    }
    panic!("no caught_up marker");
}

/// Reads `n` events, skipping heartbeats and failing on a `caught_up`.
pub async fn read_events(stream: &mut Streaming<SubscribeResponse>, n: usize) -> Vec<Event> {
    let mut events = Vec::with_capacity(n);
    while events.len() < n {
        match next_message(stream).await {
            Message::Event(event) => events.push(event),
            Message::CaughtUp(marker) => panic!("unexpected second caught_up: {marker:?}"),
            Message::Heartbeat(_) => {}
        }
    }
    events
}

/// Asserts nothing but heartbeats arrive for `quiet`.
pub async fn assert_quiet(stream: &mut Streaming<SubscribeResponse>, quiet: Duration) {
    let deadline = tokio::time::Instant::now() + quiet;
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => return,
            Ok(Ok(Some(SubscribeResponse {
                message: Some(Message::Heartbeat(_)),
            }))) => {}
            Ok(other) => panic!("expected silence, got {other:?}"),
        }
    }
}

/// Offsets of `events`.
pub fn offsets(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.offset).collect()
}

/// The offsets of a Publish response's positions.
pub fn position_offsets(positions: &[EventPosition]) -> Vec<u64> {
    positions.iter().map(|p| p.offset).collect()
}

/// What a crash must not break, checked on the whole log read back after a restart: offsets
/// run 1..=head with no gap, every acknowledged position holds the event it was acknowledged
/// for, every event is stored once, and each stream's versions count up in offset order.
pub fn assert_log_holds(log: &[Event], acknowledged: &[EventPosition]) {
    assert_eq!(
        offsets(log),
        (1..=log.len() as u64).collect::<Vec<_>>(),
        "offsets are gapless 1..=head"
    );
    for position in acknowledged {
        let event = log
            .get((position.offset.max(1) - 1) as usize)
            .unwrap_or_else(|| panic!("acknowledged offset {} lost", position.offset));
        assert_eq!(event.id, position.id, "acknowledged event lost or moved");
        assert_eq!(event.stream_id, position.stream_id);
        assert_eq!(event.stream_version, position.stream_version);
    }
    let ids: std::collections::HashSet<&str> = log.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), log.len(), "every event is stored once");
    let mut versions: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for event in log {
        let version = versions.entry(event.stream_id.as_str()).or_default();
        *version += 1;
        assert_eq!(
            event.stream_version, *version,
            "stream {} versions count up in offset order",
            event.stream_id
        );
    }
}

/// An order acknowledged by CreateOrder survives as created: version 1, folded from the event at
/// the offset its create returned.
pub async fn assert_order_created(orders: &mut Orders, order_id: &str, last_offset: u64) {
    let order = orders
        .get_order(ordo_api::v1::GetOrderRequest {
            order_id: order_id.to_string(),
            at_version: None,
        })
        .await
        .unwrap_or_else(|status| panic!("acknowledged order {order_id} lost: {status}"))
        .into_inner()
        .order
        .expect("order");
    assert_eq!((order.version, order.last_offset), (1, last_offset));
}
