//! EventService, black-box over real gRPC: Publish (single, atomic batches, dedupe, optimistic
//! concurrency, every bad input), ReadEvents paging and filters, and Subscribe (history, the
//! caught-up seam under concurrent appends, resume, filters, heartbeats, shutdown, restart).

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use ordo_api::v1::{
    Event, EventFilter, NewEvent, PublishRequest, ReadEventsRequest, ReadEventsResponse,
    SubscribeRequest, event::Payload, subscribe_response::Message,
};
use ordo_test_harness::TestServer;
use ordo_test_harness::api::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tonic::Code;

mod fanout;
mod publish;
mod read;
mod shutdown;
mod subscribe;

async fn publish(events: &mut Events, batch: Vec<NewEvent>) -> ordo_api::v1::PublishResponse {
    events
        .publish(publish_req(batch))
        .await
        .expect("publish")
        .into_inner()
}

async fn read(events: &mut Events, req: ReadEventsRequest) -> ReadEventsResponse {
    events.read_events(req).await.expect("read").into_inner()
}

fn sub(start: Option<ordo_api::v1::StartPosition>) -> SubscribeRequest {
    SubscribeRequest {
        start,
        filter: None,
        heartbeat_interval_ms: 0,
        ..Default::default()
    }
}

/// Publishes `n` single-event batches on `stream`, type `test.tick`.
async fn fill(events: &mut Events, stream: &str, n: usize) {
    for _ in 0..n {
        publish(events, vec![new_event(stream, "test.tick")]).await;
    }
}

/// A log with three kinds of events across five streams, and the offsets of each.
async fn mixed_log(events: &mut Events) -> BTreeMap<u64, (String, String)> {
    let plan = [
        ("pay-1", "payment.confirmed"),
        ("pay-2", "payment.failed"),
        ("ship-1", "shipment.sent"),
        ("pay-1", "payment.refunded"),
        ("pay-10", "payment.confirmed"),
        ("ship-1", "shipment.delivered"),
        ("payroll", "hr.paid"),
        ("pay-2", "payment.confirmed"),
    ];
    let mut log = BTreeMap::new();
    for (stream, event_type) in plan {
        let response = publish(events, vec![new_event(stream, event_type)]).await;
        log.insert(
            response.positions[0].offset,
            (stream.to_string(), event_type.to_string()),
        );
    }
    log
}

fn expected(log: &BTreeMap<u64, (String, String)>, f: impl Fn(&str, &str) -> bool) -> Vec<u64> {
    log.iter()
        .filter(|(_, (s, t))| f(s, t))
        .map(|(o, _)| *o)
        .collect()
}

type FilterCase = (Option<EventFilter>, fn(&str, &str) -> bool);

fn filter_cases() -> Vec<FilterCase> {
    vec![
        (filter(&["payment.confirmed"], &[]), |_, t| {
            t == "payment.confirmed"
        }),
        (filter(&["payment.*"], &[]), |_, t| {
            t.starts_with("payment.")
        }),
        (filter(&["payment"], &[]), |_, _| false),
        (filter(&["payment.failed", "shipment.*"], &[]), |_, t| {
            t == "payment.failed" || t.starts_with("shipment.")
        }),
        (filter(&[], &["pay-1"]), |s, _| s == "pay-1"),
        (filter(&[], &["pay-*"]), |s, _| s.starts_with("pay-")),
        (filter(&[], &["pay*"]), |s, _| s.starts_with("pay")),
        (
            filter(&["payment.confirmed"], &["pay-1", "pay-2"]),
            |s, t| t == "payment.confirmed" && (s == "pay-1" || s == "pay-2"),
        ),
        (filter(&["*"], &["*"]), |_, _| true),
        (filter(&[], &[]), |_, _| true),
        (filter(&["nothing.*"], &[]), |_, _| false),
    ]
}
