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
    }
}

/// Publishes `n` single-event batches on `stream`, type `test.tick`.
async fn fill(events: &mut Events, stream: &str, n: usize) {
    for _ in 0..n {
        publish(events, vec![new_event(stream, "test.tick")]).await;
    }
}

#[tokio::test]
async fn publish_single_event_and_read_it_back() {
    let server = TestServer::start().await;
    let mut events = server.events().await;

    let full = NewEvent {
        stream_id: "payment-42".into(),
        r#type: "payment.confirmed".into(),
        id: "evt-1".into(),
        source: "billing".into(),
        datacontenttype: "application/json".into(),
        data: br#"{"amount":10}"#.to_vec(),
        metadata: HashMap::from([("trace".to_string(), "abc".to_string())]),
        expected_stream_version: Some(0),
    };
    let response = publish(&mut events, vec![full.clone()]).await;
    assert!(!response.deduplicated);
    assert_eq!(response.positions.len(), 1);
    let position = &response.positions[0];
    assert_eq!(
        (
            position.id.as_str(),
            position.offset,
            position.stream_id.as_str(),
            position.stream_version
        ),
        ("evt-1", 1, "payment-42", 1)
    );

    // Defaults: a generated ULID id, source `ordo`, octet-stream.
    let bare = publish(
        &mut events,
        vec![new_event("payment-42", "payment.settled")],
    )
    .await;
    let generated = &bare.positions[0];
    assert!(
        ulid::Ulid::from_string(&generated.id).is_ok(),
        "{generated:?}"
    );
    assert_eq!((generated.offset, generated.stream_version), (2, 2));

    let log = read_all(&mut events).await;
    assert_eq!(log.len(), 2);
    let first = &log[0];
    assert_eq!(first.offset, 1);
    assert_eq!(first.id, "evt-1");
    assert_eq!(first.source, "billing");
    assert_eq!(first.r#type, "payment.confirmed");
    assert_eq!(first.subject, "payment-42");
    assert_eq!(first.stream_id, "payment-42");
    assert_eq!(first.stream_version, 1);
    assert_eq!(first.datacontenttype, "application/json");
    assert_eq!(first.metadata, full.metadata);
    assert_eq!(first.payload, Some(Payload::Data(full.data.clone())));
    assert!(first.time.is_some());
    let second = &log[1];
    assert_eq!(second.id, generated.id);
    assert_eq!(second.source, "ordo");
    assert_eq!(second.datacontenttype, "application/octet-stream");
    assert_eq!(second.payload, Some(Payload::Data(Vec::new())));
    server.stop().await;
}

#[tokio::test]
async fn publish_batch_is_atomic_and_ordered() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    publish(&mut events, vec![new_event("b", "t.x")]).await;

    let response = publish(
        &mut events,
        vec![
            new_event("a", "t.one"),
            new_event("b", "t.two"),
            new_event("a", "t.three"),
        ],
    )
    .await;
    let got: Vec<(u64, &str, u64)> = response
        .positions
        .iter()
        .map(|p| (p.offset, p.stream_id.as_str(), p.stream_version))
        .collect();
    assert_eq!(got, vec![(2, "a", 1), (3, "b", 2), (4, "a", 2)]);
    let log = read_all(&mut events).await;
    let types: Vec<&str> = log.iter().map(|e| e.r#type.as_str()).collect();
    assert_eq!(types, vec!["t.x", "t.one", "t.two", "t.three"]);

    // One bad event at the end refuses the whole batch.
    let result = events
        .publish(publish_req(vec![
            new_event("a", "t.ok"),
            new_event("a", "t.ok"),
            new_event("a", "order.sneaky"),
        ]))
        .await;
    assert_status(result, Code::InvalidArgument, "events[2].type");
    // A version conflict on the second stream refuses the first stream's events too.
    let result = events
        .publish(publish_req(vec![
            NewEvent {
                expected_stream_version: Some(2),
                ..new_event("a", "t.ok")
            },
            NewEvent {
                expected_stream_version: Some(1),
                ..new_event("b", "t.ok")
            },
        ]))
        .await;
    assert_status(
        result,
        Code::Aborted,
        "stream b is at version 2, expected 1",
    );
    assert_eq!(
        head(&mut events).await,
        4,
        "nothing of a refused batch is stored"
    );
    assert_eq!(read_all(&mut events).await, log);

    // Several events of one stream: the expectation applies to the version before the request.
    let response = publish(
        &mut events,
        vec![
            NewEvent {
                expected_stream_version: Some(2),
                ..new_event("a", "t.ok")
            },
            new_event("a", "t.ok"),
            NewEvent {
                expected_stream_version: Some(2),
                ..new_event("a", "t.ok")
            },
        ],
    )
    .await;
    let versions: Vec<u64> = response
        .positions
        .iter()
        .map(|p| p.stream_version)
        .collect();
    assert_eq!(versions, vec![3, 4, 5]);
    server.stop().await;
}

#[tokio::test]
async fn expected_stream_version_guards_streams() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let create = |version| NewEvent {
        expected_stream_version: Some(version),
        ..new_event("acct-1", "acct.opened")
    };
    publish(&mut events, vec![create(0)]).await;
    let result = events.publish(publish_req(vec![create(0)])).await;
    assert_status(
        result,
        Code::Aborted,
        "stream acct-1 is at version 1, expected 0",
    );
    let result = events.publish(publish_req(vec![create(5)])).await;
    assert_status(result, Code::Aborted, "at version 1, expected 5");
    assert_eq!(head(&mut events).await, 1);
    let response = publish(&mut events, vec![create(1)]).await;
    assert_eq!(response.positions[0].stream_version, 2);
    // Inconsistent expectations for one stream within a request are a malformed request.
    let result = events
        .publish(publish_req(vec![create(2), create(3)]))
        .await;
    assert_status(
        result,
        Code::InvalidArgument,
        "events[1].expected_stream_version",
    );
    assert_eq!(head(&mut events).await, 2);
    server.stop().await;
}

#[tokio::test]
async fn publish_deduplicates_by_event_id() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let batch = vec![
        new_event_with_id("s-1", "t.a", "id-a"),
        new_event_with_id("s-2", "t.b", "id-b"),
    ];
    let original = publish(&mut events, batch.clone()).await;
    assert!(!original.deduplicated);
    publish(&mut events, vec![new_event("s-3", "t.c")]).await;

    let retry = publish(&mut events, batch.clone()).await;
    assert!(retry.deduplicated);
    assert_eq!(
        retry.positions, original.positions,
        "the original positions"
    );
    assert_eq!(head(&mut events).await, 3, "a retry appends nothing");
    // A subset of an earlier batch is a retry too.
    let single = publish(&mut events, vec![batch[1].clone()]).await;
    assert!(single.deduplicated);
    assert_eq!(single.positions, vec![original.positions[1].clone()]);
    // Expectations do not matter for an exact retry.
    let retry = publish(
        &mut events,
        vec![NewEvent {
            expected_stream_version: Some(0),
            ..batch[0].clone()
        }],
    )
    .await;
    assert!(retry.deduplicated);

    // A partial overlap is a conflict: nothing of it is stored.
    let result = events
        .publish(publish_req(vec![
            new_event_with_id("s-2", "t.b", "id-b"),
            new_event_with_id("s-9", "t.c", "id-c"),
        ]))
        .await;
    assert_status(
        result,
        Code::AlreadyExists,
        "event id id-b is already stored at offset 2",
    );
    assert_eq!(head(&mut events).await, 3);
    let fresh = publish(&mut events, vec![new_event_with_id("s-9", "t.c", "id-c")]).await;
    assert!(!fresh.deduplicated);
    assert_eq!(fresh.positions[0].offset, 4);
    assert_eq!(
        fresh.positions[0].stream_version, 1,
        "the refused batch did not bump stream s-9"
    );
    server.stop().await;
}

#[tokio::test]
async fn publish_rejects_bad_input_and_appends_nothing() {
    let server = TestServer::start_with(|cfg| {
        cfg.limits.max_events_per_publish = 5;
        cfg.limits.max_payload_bytes = 1024;
    })
    .await;
    let mut events = server.events().await;
    publish(&mut events, vec![new_event("s", "t.seed")]).await;

    let ok = new_event("stream-1", "thing.happened");
    let with = |f: &dyn Fn(&mut NewEvent)| {
        let mut e = ok.clone();
        f(&mut e);
        e
    };
    let cases: Vec<(&str, Vec<NewEvent>, &str)> = vec![
        (
            "empty list",
            vec![],
            "events must contain at least one event",
        ),
        (
            "too many events",
            vec![ok.clone(); 6],
            "events has 6 entries; the limit (max_events_per_publish) is 5",
        ),
        (
            "payload too large",
            vec![ok.clone(), with(&|e| e.data = vec![0; 1025])],
            "events[1].data is 1025 bytes; the limit (max_payload_bytes) is 1024",
        ),
        (
            "empty stream id",
            vec![with(&|e| e.stream_id.clear())],
            "events[0].stream_id is required",
        ),
        (
            "space in stream id",
            vec![with(&|e| e.stream_id = "a b".into())],
            "events[0].stream_id contains ' '",
        ),
        (
            "slash in stream id",
            vec![with(&|e| e.stream_id = "a/b".into())],
            "events[0].stream_id contains '/'",
        ),
        (
            "non-ascii stream id",
            vec![with(&|e| e.stream_id = "caf\u{e9}".into())],
            "events[0].stream_id contains",
        ),
        (
            "long stream id",
            vec![with(&|e| e.stream_id = "s".repeat(129))],
            "events[0].stream_id is 129 characters; the limit is 128",
        ),
        (
            "empty type",
            vec![with(&|e| e.r#type.clear())],
            "events[0].type is required",
        ),
        (
            "bad type chars",
            vec![with(&|e| e.r#type = "thing happened".into())],
            "events[0].type contains ' '",
        ),
        (
            "reserved stream",
            vec![with(&|e| {
                e.stream_id = "order-01ARZ3NDEKTSV4RRFFQ69G5FAV".into()
            })],
            "events[0].stream_id \"order-01ARZ3NDEKTSV4RRFFQ69G5FAV\" is reserved",
        ),
        (
            "reserved type",
            vec![ok.clone(), with(&|e| e.r#type = "order.created".into())],
            "events[1].type \"order.created\" is reserved",
        ),
        (
            "bad event id",
            vec![with(&|e| e.id = "id with space".into())],
            "events[0].id contains ' '",
        ),
        (
            "duplicate ids in one request",
            vec![
                with(&|e| e.id = "dup".into()),
                with(&|e| e.id = "other".into()),
                with(&|e| e.id = "dup".into()),
            ],
            "events[2].id \"dup\" appears twice",
        ),
        (
            "too many metadata entries",
            vec![with(&|e| {
                e.metadata = (0..33).map(|i| (format!("k{i}"), "v".into())).collect()
            })],
            "events[0].metadata has 33 entries; the limit is 32",
        ),
        (
            "empty metadata key",
            vec![with(&|e| {
                e.metadata = HashMap::from([(String::new(), "v".to_string())])
            })],
            "events[0].metadata key is required",
        ),
        (
            "metadata value too long",
            vec![with(&|e| {
                e.metadata = HashMap::from([("k".to_string(), "v".repeat(1025))])
            })],
            "events[0].metadata[k] is 1025 characters; the limit is 1024",
        ),
        (
            "long source",
            vec![with(&|e| e.source = "s".repeat(129))],
            "events[0].source is 129 characters",
        ),
        (
            "control char in datacontenttype",
            vec![with(&|e| e.datacontenttype = "text/\nplain".into())],
            "events[0].datacontenttype contains control characters",
        ),
        (
            "long event id",
            vec![with(&|e| e.id = "i".repeat(129))],
            "events[0].id is 129 characters",
        ),
        (
            "control char in source",
            vec![with(&|e| e.source = "a\u{0}b".into())],
            "events[0].source contains control characters",
        ),
    ];
    for (name, batch, needle) in cases {
        match events.publish(PublishRequest { events: batch }).await {
            Err(status) if status.code() == Code::InvalidArgument => assert!(
                status.message().contains(needle),
                "{name}: message {:?} does not mention {needle:?}",
                status.message()
            ),
            other => panic!("{name}: expected INVALID_ARGUMENT, got {other:?}"),
        }
    }
    assert_eq!(head(&mut events).await, 1, "no refused publish appended");

    // The limits themselves are allowed.
    let response = publish(&mut events, vec![with(&|e| e.data = vec![7; 1024]); 5]).await;
    assert_eq!(offsets_of(&response), vec![2, 3, 4, 5, 6]);
    server.stop().await;
}

fn offsets_of(response: &ordo_api::v1::PublishResponse) -> Vec<u64> {
    response.positions.iter().map(|p| p.offset).collect()
}

#[tokio::test]
async fn oversized_request_is_refused_by_the_transport() {
    let server = TestServer::start_with(|cfg| {
        cfg.limits.max_message_bytes = 64 * 1024;
        cfg.limits.max_payload_bytes = 1024 * 1024;
    })
    .await;
    let mut events = server.events().await;
    let big = NewEvent {
        data: vec![1; 100 * 1024],
        ..new_event("s", "t.big")
    };
    let result = events.publish(publish_req(vec![big])).await;
    let status = result.expect_err("a request over max_message_bytes is refused");
    // gRPC asks for RESOURCE_EXHAUSTED; tonic 0.14's decoder says OUT_OF_RANGE. Either way the
    // message names the size and the limit.
    assert!(
        matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{status:?}"
    );
    assert!(status.message().contains("65536"), "{status:?}");
    assert_eq!(head(&mut events).await, 0);
    // The connection is still usable.
    publish(&mut events, vec![new_event("s", "t.small")]).await;
    assert_eq!(head(&mut events).await, 1);
    server.stop().await;
}

#[tokio::test]
async fn read_events_pages_and_start_positions() {
    let server = TestServer::start().await;
    let mut events = server.events().await;

    // Empty log.
    let page = read(&mut events, ReadEventsRequest::default()).await;
    assert_eq!(
        (page.events.len(), page.next_after_offset, page.head_offset),
        (0, 0, 0)
    );
    let result = events
        .read_events(ReadEventsRequest {
            start: after(1),
            ..Default::default()
        })
        .await;
    assert_status(result, Code::OutOfRange, "after_offset");

    fill(&mut events, "s", 25).await;
    let req = |start, limit| ReadEventsRequest {
        start,
        filter: None,
        limit,
    };
    let page = read(&mut events, req(start(), 10)).await;
    assert_eq!(offsets(&page.events), (1..=10).collect::<Vec<_>>());
    assert_eq!((page.next_after_offset, page.head_offset), (10, 25));
    let page = read(&mut events, req(after(10), 10)).await;
    assert_eq!(offsets(&page.events), (11..=20).collect::<Vec<_>>());
    let page = read(&mut events, req(after(page.next_after_offset), 10)).await;
    assert_eq!(offsets(&page.events), (21..=25).collect::<Vec<_>>());
    assert_eq!(page.next_after_offset, page.head_offset, "read everything");

    // Inclusive vs exclusive.
    let page = read(&mut events, req(from(10), 2)).await;
    assert_eq!(offsets(&page.events), vec![10, 11]);
    let page = read(&mut events, req(after(10), 2)).await;
    assert_eq!(offsets(&page.events), vec![11, 12]);
    for same_as_start in [from(0), from(1), after(0), None] {
        let page = read(&mut events, req(same_as_start, 3)).await;
        assert_eq!(offsets(&page.events), vec![1, 2, 3], "{same_as_start:?}");
    }
    // Defaults: limit 0 means 100 (all 25 here).
    assert_eq!(read(&mut events, req(None, 0)).await.events.len(), 25);
    // `end` is an empty page at the head.
    let page = read(&mut events, req(end(), 10)).await;
    assert_eq!(
        (page.events.len(), page.next_after_offset, page.head_offset),
        (0, 25, 25)
    );
    // The head itself and head + 1 are valid, empty starts; beyond is OUT_OF_RANGE.
    let page = read(&mut events, req(after(25), 10)).await;
    assert!(page.events.is_empty());
    assert_eq!(page.next_after_offset, 25);
    let page = read(&mut events, req(from(26), 10)).await;
    assert!(page.events.is_empty());
    let result = events.read_events(req(after(26), 10)).await;
    assert_status(
        result,
        Code::OutOfRange,
        "start.after_offset is beyond the head of the log (offset 25)",
    );
    let result = events.read_events(req(from(27), 10)).await;
    assert_status(result, Code::OutOfRange, "start.from_offset");
    let result = events.read_events(req(from(u64::MAX), 10)).await;
    assert_status(result, Code::OutOfRange, "from_offset");
    let result = events.read_events(req(after(u64::MAX), 10)).await;
    assert_status(result, Code::OutOfRange, "after_offset");

    // Limits.
    assert_eq!(read(&mut events, req(None, 1000)).await.events.len(), 25);
    let result = events.read_events(req(None, 1001)).await;
    assert_status(
        result,
        Code::InvalidArgument,
        "limit 1001 is over the maximum of 1000",
    );
    server.stop().await;
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

#[tokio::test]
async fn read_events_filters() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let log = mixed_log(&mut events).await;
    for (f, want) in filter_cases() {
        let got = read_filtered(&mut events, f.clone()).await;
        assert_eq!(offsets(&got), expected(&log, want), "filter {f:?}");
        // One at a time: each page's next_after_offset is the matched event, so paging works.
        let mut after_offset = 0;
        let mut paged = Vec::new();
        loop {
            let page = read(
                &mut events,
                ReadEventsRequest {
                    start: after(after_offset),
                    filter: f.clone(),
                    limit: 1,
                },
            )
            .await;
            if let Some(event) = page.events.first() {
                assert_eq!(page.next_after_offset, event.offset);
                paged.push(event.offset);
            }
            after_offset = page.next_after_offset;
            if after_offset == page.head_offset {
                break;
            }
        }
        assert_eq!(paged, expected(&log, want), "paged filter {f:?}");
    }
    // A filter that matches nothing still reports how far it scanned.
    let page = read(
        &mut events,
        ReadEventsRequest {
            start: None,
            filter: filter(&["nothing.*"], &[]),
            limit: 10,
        },
    )
    .await;
    assert!(page.events.is_empty());
    assert_eq!(page.next_after_offset, 8);
    server.stop().await;
}

#[tokio::test]
async fn bad_filters_are_invalid_argument() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let too_many: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    let cases: Vec<(Option<EventFilter>, &str)> = vec![
        (filter(&["bad type"], &[]), "filter.types contains ' '"),
        (filter(&[""], &[]), "filter.types is required"),
        (filter(&["a**"], &[]), "filter.types contains '*'"),
        (filter(&["*a"], &[]), "filter.types contains '*'"),
        (filter(&[], &["a/b"]), "filter.stream_ids contains '/'"),
        (
            filter(&[], &["ok", "a b*"]),
            "filter.stream_ids contains ' '",
        ),
        (
            filter(&too_many, &[]),
            "filter.types has 65 entries; the limit is 64",
        ),
        (filter(&[], &too_many), "filter.stream_ids has 65 entries"),
    ];
    for (f, needle) in cases {
        let result = events
            .read_events(ReadEventsRequest {
                start: None,
                filter: f.clone(),
                limit: 0,
            })
            .await;
        assert_status(result, Code::InvalidArgument, needle);
        let result = subscribe(
            &mut events,
            SubscribeRequest {
                start: None,
                filter: f,
                heartbeat_interval_ms: 0,
            },
        )
        .await;
        assert_status(result, Code::InvalidArgument, needle);
    }
    server.stop().await;
}

#[tokio::test]
async fn subscribe_history_then_caught_up_then_live() {
    let server = TestServer::start().await;
    let mut events = server.events().await;

    // Empty log: caught up at 0 at once.
    let mut empty = subscribe(&mut events, sub(None)).await.expect("subscribe");
    let (history, caught_up) = read_until_caught_up(&mut empty).await;
    assert!(history.is_empty());
    assert_eq!(caught_up, 0);

    fill(&mut events, "s", 5).await;
    let first_live = read_events(&mut empty, 5).await;
    assert_eq!(offsets(&first_live), vec![1, 2, 3, 4, 5]);

    let cases = [
        (start(), vec![1, 2, 3, 4, 5]),
        (None, vec![1, 2, 3, 4, 5]),
        (after(0), vec![1, 2, 3, 4, 5]),
        (from(0), vec![1, 2, 3, 4, 5]),
        (after(3), vec![4, 5]),
        (from(3), vec![3, 4, 5]),
        (after(5), vec![]),
        (from(6), vec![]),
        (end(), vec![]),
    ];
    let mut streams = Vec::new();
    for (start, want) in cases {
        let mut stream = subscribe(&mut events, sub(start)).await.expect("subscribe");
        let (history, caught_up) = read_until_caught_up(&mut stream).await;
        assert_eq!(offsets(&history), want, "history from {start:?}");
        assert_eq!(caught_up, 5, "caught_up from {start:?}");
        streams.push(stream);
    }
    let log = read_all(&mut events).await;
    assert_eq!(
        &log[..],
        &first_live[..],
        "subscribe delivers the stored events"
    );

    fill(&mut events, "s", 3).await;
    for stream in streams.iter_mut().chain([&mut empty]) {
        let live = read_events(stream, 3).await;
        assert_eq!(offsets(&live), vec![6, 7, 8]);
    }
    // Nothing more, and no second caught_up.
    assert_quiet(&mut streams[0], Duration::from_millis(200)).await;

    for start in [after(9), from(10), after(u64::MAX)] {
        let result = subscribe(&mut events, sub(start)).await;
        assert_status(
            result,
            Code::OutOfRange,
            "beyond the head of the log (offset 8)",
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn subscribe_filters_and_heartbeats() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let log = mixed_log(&mut events).await;

    // History plus live with each filter.
    let mut streams = Vec::new();
    for (f, want) in filter_cases() {
        let mut stream = subscribe(
            &mut events,
            SubscribeRequest {
                start: None,
                filter: f.clone(),
                heartbeat_interval_ms: 0,
            },
        )
        .await
        .expect("subscribe");
        let (history, caught_up) = read_until_caught_up(&mut stream).await;
        assert_eq!(offsets(&history), expected(&log, want), "filter {f:?}");
        assert_eq!(caught_up, 8);
        streams.push((stream, want, f));
    }
    let mut live_log = BTreeMap::new();
    for (stream, event_type) in [("pay-2", "payment.failed"), ("ship-9", "shipment.sent")] {
        let r = publish(&mut events, vec![new_event(stream, event_type)]).await;
        live_log.insert(r.positions[0].offset, (stream.into(), event_type.into()));
    }
    for (stream, want, f) in &mut streams {
        let want = expected(&live_log, *want);
        let got = read_events(stream, want.len()).await;
        assert_eq!(offsets(&got), want, "live with filter {f:?}");
    }

    // A filtered subscriber that matches nothing still advances via heartbeats.
    let mut sparse = subscribe(
        &mut events,
        SubscribeRequest {
            start: None,
            filter: filter(&["nothing.*"], &[]),
            heartbeat_interval_ms: 100,
        },
    )
    .await
    .expect("subscribe");
    let (history, caught_up) = read_until_caught_up(&mut sparse).await;
    assert!(history.is_empty());
    assert_eq!(caught_up, 10);
    fill(&mut events, "s", 4).await;
    let mut beats = 0;
    let mut last_scanned = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while last_scanned < 14 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "scanned_offset stuck at {last_scanned}"
        );
        match next_message(&mut sparse).await {
            Message::Heartbeat(beat) => {
                beats += 1;
                assert!(
                    beat.scanned_offset >= last_scanned,
                    "scanned_offset went back"
                );
                assert!(beat.scanned_offset <= beat.head_offset);
                assert!(beat.time.is_some());
                last_scanned = beat.scanned_offset;
            }
            other => panic!("a matching-nothing subscriber got {other:?}"),
        }
    }
    assert!(beats >= 1);

    // The interval is honoured (and raised to the 100 ms minimum).
    let mut fast = subscribe(
        &mut events,
        SubscribeRequest {
            start: end(),
            filter: None,
            heartbeat_interval_ms: 1,
        },
    )
    .await
    .expect("subscribe");
    read_until_caught_up(&mut fast).await;
    let mut started = None;
    let mut count = 0;
    while count < 3 {
        if let Message::Heartbeat(beat) = next_message(&mut fast).await {
            assert_eq!((beat.head_offset, beat.scanned_offset), (14, 14));
            count += 1;
            started.get_or_insert_with(tokio::time::Instant::now);
        }
    }
    let elapsed = started.expect("a heartbeat").elapsed();
    assert!(
        elapsed >= Duration::from_millis(180),
        "2 heartbeat intervals in {elapsed:?}: the 100 ms floor was not applied"
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "2 heartbeat intervals took {elapsed:?}"
    );
    server.stop().await;
}

/// Checks one subscriber's messages: events strictly consecutive from `first`, exactly one
/// caught_up, every event before it <= its head and every event after it > its head.
fn check_subscriber(name: &str, messages: &[Message], first: u64, last: u64) -> Vec<Event> {
    let mut next = first;
    let mut caught_up: Option<u64> = None;
    let mut events = Vec::new();
    for message in messages {
        match message {
            Message::Event(event) => {
                assert_eq!(event.offset, next, "{name}: gap or duplicate");
                if let Some(head) = caught_up {
                    assert!(event.offset > head, "{name}: history after caught_up");
                }
                next += 1;
                events.push(event.clone());
            }
            Message::CaughtUp(marker) => {
                assert!(caught_up.is_none(), "{name}: second caught_up");
                assert_eq!(marker.head_offset, next - 1, "{name}: caught_up head");
                caught_up = Some(marker.head_offset);
            }
            Message::Heartbeat(_) => {}
        }
    }
    assert!(caught_up.is_some(), "{name}: no caught_up");
    assert_eq!(next - 1, last, "{name}: did not reach the last offset");
    events
}

/// Reads one subscription until it has seen offset `last`.
async fn collect_until(
    mut stream: tonic::Streaming<ordo_api::v1::SubscribeResponse>,
    last: u64,
) -> Vec<Message> {
    let mut messages = Vec::new();
    let mut seen = 0;
    while seen < last {
        let message = next_message(&mut stream).await;
        if let Message::Event(event) = &message {
            seen = event.offset;
        }
        if let Message::CaughtUp(marker) = &message {
            seen = seen.max(marker.head_offset);
        }
        messages.push(message);
    }
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seam_subscribers_joining_during_concurrent_appends() {
    const PRODUCERS: usize = 4;
    const PER_PRODUCER: usize = 250;
    const TOTAL: u64 = (PRODUCERS * PER_PRODUCER) as u64 + 20;
    let server = TestServer::start().await;
    let mut events = server.events().await;
    fill(&mut events, "pre", 20).await;

    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let mut client = server.events().await;
        producers.push(tokio::spawn(async move {
            for i in 0..PER_PRODUCER {
                let id = format!("p{p}-{i}");
                client
                    .publish(publish_req(vec![new_event_with_id(
                        &format!("prod-{p}"),
                        "test.seam",
                        &id,
                    )]))
                    .await
                    .expect("publish");
            }
        }));
    }

    // Subscribers join at different moments, with different start positions.
    let mut subscribers = Vec::new();
    for (k, kind) in [
        "start",
        "after_head",
        "from_mid",
        "end",
        "start",
        "after_head",
    ]
    .into_iter()
    .enumerate()
    {
        let mut client = server.events().await;
        let now = head(&mut client).await;
        let (start, first) = match kind {
            "start" => (start(), 1),
            "after_head" => (after(now), now + 1),
            "from_mid" => (from(now / 2 + 1), now / 2 + 1),
            // Events appended between this head read and the server resolving `end` are
            // delivered too; the first one is known once it arrives.
            _ => (end(), 0),
        };
        let stream = subscribe(&mut client, sub(start)).await.expect("subscribe");
        let name = format!("subscriber {k} ({kind} at head {now})");
        subscribers.push(tokio::spawn(async move {
            (name, now, first, collect_until(stream, TOTAL).await)
        }));
        tokio::time::sleep(Duration::from_millis(40)).await;
    }

    // A filtered subscriber joining mid-way sees exactly producer 1's events, in its order.
    let mut client = server.events().await;
    let mut filtered = subscribe(
        &mut client,
        SubscribeRequest {
            start: start(),
            filter: filter(&["test.seam"], &["prod-1"]),
            heartbeat_interval_ms: 100,
        },
    )
    .await
    .expect("subscribe");
    let filtered = tokio::spawn(async move {
        let mut messages = Vec::new();
        loop {
            let message = next_message(&mut filtered).await;
            let done = matches!(&message, Message::Event(e) if e.id == "p1-249");
            messages.push(message);
            if done {
                return messages;
            }
        }
    });

    for producer in producers {
        producer.await.expect("producer");
    }
    let log = read_all(&mut events).await;
    let messages = filtered.await.expect("filtered subscriber");
    let mut caught_up = None;
    let mut ids = Vec::new();
    let mut last_offset = 0;
    for message in &messages {
        match message {
            Message::Event(event) => {
                assert!(
                    event.offset > last_offset,
                    "filtered: out of order or duplicate"
                );
                if let Some(head) = caught_up {
                    assert!(event.offset > head, "filtered: history after caught_up");
                }
                assert_eq!(log[(event.offset - 1) as usize], *event);
                last_offset = event.offset;
                ids.push(event.id.clone());
            }
            Message::CaughtUp(marker) => {
                assert!(caught_up.is_none(), "filtered: second caught_up");
                assert!(marker.head_offset >= last_offset);
                caught_up = Some(marker.head_offset);
            }
            Message::Heartbeat(beat) => assert!(beat.scanned_offset <= beat.head_offset),
        }
    }
    assert!(caught_up.is_some(), "filtered: no caught_up");
    assert_eq!(
        ids,
        (0..PER_PRODUCER)
            .map(|i| format!("p1-{i}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(log.len() as u64, TOTAL);
    assert_eq!(offsets(&log), (1..=TOTAL).collect::<Vec<_>>());
    for subscriber in subscribers {
        let (name, now, first, messages) = subscriber.await.expect("subscriber");
        let first = if first == 0 {
            // `end`: nothing from before the subscription, i.e. nothing at or below `now`.
            let first = messages
                .iter()
                .find_map(|m| match m {
                    Message::Event(e) => Some(e.offset),
                    _ => None,
                })
                .expect("an event");
            assert!(first > now, "{name}: `end` delivered history ({first})");
            first
        } else {
            first
        };
        let seen = check_subscriber(&name, &messages, first, TOTAL);
        assert_eq!(
            &seen[..],
            &log[(first - 1) as usize..],
            "{name}: same events as the log"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_random_disconnects_sees_everything_once() {
    const TOTAL: u64 = 600;
    let seed: u64 = rand::rng().random();
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let server = TestServer::start().await;
    let mut events = server.events().await;

    let mut producer_client = server.events().await;
    let producer = tokio::spawn(async move {
        let mut published = 0u64;
        let mut batch_no = 0u64;
        while published < TOTAL {
            let size = (batch_no % 4 + 1).min(TOTAL - published);
            let batch = (0..size)
                .map(|i| new_event(&format!("r-{}", (batch_no + i) % 3), "test.resume"))
                .collect();
            producer_client
                .publish(publish_req(batch))
                .await
                .expect("publish");
            published += size;
            batch_no += 1;
            if batch_no.is_multiple_of(16) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });

    let mut seen: Vec<Event> = Vec::new();
    let mut last = 0u64;
    let mut reconnects = 0;
    while last < TOTAL {
        let mut stream = subscribe(&mut events, sub(after(last)))
            .await
            .expect("resubscribe");
        reconnects += 1;
        assert!(reconnects < 10_000, "no progress");
        let take = rng.random_range(1..=40);
        let mut got = 0;
        let mut caught_up = 0;
        while got < take && last < TOTAL {
            match next_message(&mut stream).await {
                Message::Event(event) => {
                    assert_eq!(event.offset, last + 1, "seed {seed}: gap or duplicate");
                    last = event.offset;
                    seen.push(event);
                    got += 1;
                }
                Message::CaughtUp(_) => {
                    caught_up += 1;
                    assert_eq!(caught_up, 1, "seed {seed}: second caught_up");
                }
                Message::Heartbeat(_) => {}
            }
        }
        drop(stream);
        if rng.random_bool(0.3) {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..5))).await;
        }
    }
    producer.await.expect("producer");
    let log = read_all(&mut events).await;
    assert_eq!(log.len() as u64, TOTAL);
    assert_eq!(
        seen, log,
        "seed {seed}: the union of all sessions is the log"
    );
    assert!(
        reconnects > 10,
        "the test disconnected too rarely ({reconnects})"
    );
    server.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_ends_subscriptions_with_unavailable() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    fill(&mut events, "s", 3).await;
    let mut live = subscribe(&mut events, sub(None)).await.expect("subscribe");
    let (history, _) = read_until_caught_up(&mut live).await;
    assert_eq!(history.len(), 3);
    let mut filtered = subscribe(
        &mut events,
        SubscribeRequest {
            start: end(),
            filter: filter(&["none.*"], &[]),
            heartbeat_interval_ms: 0,
        },
    )
    .await
    .expect("subscribe");
    read_until_caught_up(&mut filtered).await;

    let started = std::time::Instant::now();
    let stop = tokio::spawn(server.stop());
    for stream in [&mut live, &mut filtered] {
        let status = loop {
            let item = tokio::time::timeout(STREAM_TIMEOUT, stream.message())
                .await
                .expect("the stream ends promptly on shutdown");
            match item {
                Ok(Some(message)) => match message.message {
                    Some(Message::Heartbeat(_)) => continue,
                    other => panic!("unexpected message during shutdown: {other:?}"),
                },
                Ok(None) => {
                    panic!("stream ended without a status; clients cannot tell it from a clean end")
                }
                Err(status) => break status,
            }
        };
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("after_offset = 3"),
            "the status says where to resume: {status:?}"
        );
    }
    let dir = tokio::time::timeout(Duration::from_secs(5), stop)
        .await
        .expect("stop() completes with open subscriptions")
        .expect("stop task");
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(dir);
}

#[tokio::test]
async fn restart_keeps_the_log_and_continues_offsets() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let mut orders = server.orders().await;
    fill(&mut events, "s", 10).await;
    let keyed = ordo_api::v1::CreateOrderRequest {
        idempotency_key: "restart-key".into(),
        ..create_req("cust-restart")
    };
    let order = orders
        .create_order(keyed.clone())
        .await
        .expect("create")
        .into_inner()
        .order
        .expect("order");
    publish(&mut events, vec![new_event_with_id("s", "t.x", "keep-me")]).await;
    let before = read_all(&mut events).await;
    assert_eq!(before.len(), 12);
    drop((events, orders));

    let dir = server.stop().await;
    let server = TestServer::start_in(dir, |_| {}).await;
    let mut events = server.events().await;
    let mut orders = server.orders().await;
    assert_eq!(head(&mut events).await, 12, "head restored");
    assert_eq!(read_all(&mut events).await, before, "every event intact");
    let reloaded = orders
        .get_order(ordo_api::v1::GetOrderRequest {
            order_id: order.id.clone(),
            at_version: None,
        })
        .await
        .expect("get after restart")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(reloaded, order);
    // Idempotency keys survive the restart: a retry replays, a different body is refused.
    let replayed = orders
        .create_order(keyed.clone())
        .await
        .expect("retry after restart")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(replayed, order);
    let result = orders
        .create_order(ordo_api::v1::CreateOrderRequest {
            customer_id: "other".into(),
            ..keyed
        })
        .await;
    assert_status(result, Code::AlreadyExists, "restart-key");
    assert_eq!(head(&mut events).await, 12, "neither appended");

    // Offsets, stream versions, dedupe and order versions all continue.
    let next = publish(&mut events, vec![new_event("s", "t.y")]).await;
    assert_eq!(
        (next.positions[0].offset, next.positions[0].stream_version),
        (13, 12)
    );
    let retry = publish(&mut events, vec![new_event_with_id("s", "t.x", "keep-me")]).await;
    assert!(retry.deduplicated);
    assert_eq!(retry.positions[0].offset, 12);
    let paid = orders
        .update_order_status(ordo_api::v1::UpdateOrderStatusRequest {
            order_id: order.id.clone(),
            status: ordo_api::v1::OrderStatus::Paid as i32,
            expected_version: Some(1),
            idempotency_key: String::new(),
        })
        .await
        .expect("pay after restart")
        .into_inner()
        .order
        .expect("order");
    assert_eq!((paid.version, paid.last_offset), (2, 14));

    let mut stream = subscribe(&mut events, sub(after(12)))
        .await
        .expect("subscribe");
    let (history, caught_up) = read_until_caught_up(&mut stream).await;
    assert_eq!(offsets(&history), vec![13, 14]);
    assert_eq!(caught_up, 14);
    server.stop().await;
}

#[tokio::test]
async fn subscriber_cap_is_resource_exhausted() {
    let server = TestServer::start_with(|cfg| cfg.limits.max_subscribers = 2).await;
    let mut events = server.events().await;
    let mut a = subscribe(&mut events, sub(None)).await.expect("first");
    let b = subscribe(&mut events, sub(None)).await.expect("second");
    read_until_caught_up(&mut a).await;
    let result = subscribe(&mut events, sub(None)).await;
    assert_status(result, Code::ResourceExhausted, "max_subscribers");
    drop(b);
    // The slot frees once the server notices the client left.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match subscribe(&mut events, sub(None)).await {
            Ok(mut c) => {
                read_until_caught_up(&mut c).await;
                break;
            }
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(tokio::time::Instant::now() < deadline, "slot never freed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    }
    server.stop().await;
}

/// 3,000 events of 2 KiB (6 MB): more than the HTTP/2 windows plus the server's channel hold,
/// so a subscription from the start is still reading history when the server stops.
async fn publish_bulk_history(events: &mut Events) {
    for b in 0..3 {
        let batch = (0..1000)
            .map(|i| NewEvent {
                data: vec![0; 2048],
                ..new_event_with_id("bulk", "t.bulk", &format!("b{b}-{i}"))
            })
            .collect();
        publish(events, batch).await;
    }
}

#[tokio::test]
async fn shutdown_during_catch_up_ends_with_unavailable_not_a_clean_end() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    publish_bulk_history(&mut events).await;
    let mut stream = subscribe(&mut events, sub(None)).await.expect("subscribe");
    let first = read_events(&mut stream, 10).await;
    assert_eq!(offsets(&first), (1..=10).collect::<Vec<_>>());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stop = tokio::spawn(server.stop());
    tokio::time::sleep(Duration::from_millis(50)).await;

    let mut last = 10;
    let status = loop {
        let item = tokio::time::timeout(STREAM_TIMEOUT, stream.message())
            .await
            .expect("the stream ends promptly on shutdown");
        match item {
            Ok(Some(message)) => match message.message {
                Some(Message::Event(event)) => {
                    assert_eq!(event.offset, last + 1, "gap or duplicate while draining");
                    last = event.offset;
                }
                Some(Message::Heartbeat(_)) => {}
                other => panic!("unexpected message: {other:?}"),
            },
            Ok(None) => panic!(
                "the stream ended cleanly after offset {last}: a client would think it is done"
            ),
            Err(status) => break status,
        }
    };
    assert!(last < 3000, "the subscription was still catching up");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains(&format!("after_offset = {last}")),
        "resume point is the last delivered event: {status:?}"
    );
    tokio::time::timeout(Duration::from_secs(5), stop)
        .await
        .expect("stop() completes")
        .expect("stop task");
}

#[tokio::test]
async fn read_events_pages_of_large_events_fit_a_default_client() {
    // Six events at the default payload limit (1 MiB): more than a default client's 4 MiB
    // message limit together, so a page must stop early and paging must still reach the head.
    let server = TestServer::start().await;
    let mut events = server.events().await;
    for i in 0..6u8 {
        let big = NewEvent {
            data: vec![i; 1024 * 1024],
            ..new_event("big", "test.big")
        };
        publish(&mut events, vec![big]).await;
    }
    let page = read(&mut events, ReadEventsRequest::default()).await;
    assert!(!page.events.is_empty(), "a page holds at least one event");
    assert!(page.next_after_offset < 6, "the first page stops early");
    assert_eq!(
        page.next_after_offset,
        page.events.last().map_or(0, |e| e.offset)
    );
    let log = read_all(&mut events).await;
    assert_eq!(offsets(&log), vec![1, 2, 3, 4, 5, 6]);
    for (i, event) in log.iter().enumerate() {
        assert_eq!(
            event.payload,
            Some(Payload::Data(vec![i as u8; 1024 * 1024]))
        );
    }
    // Subscribe delivers them one message each.
    let mut stream = subscribe(&mut events, sub(None)).await.expect("subscribe");
    let (history, caught_up) = read_until_caught_up(&mut stream).await;
    assert_eq!(history, log);
    assert_eq!(caught_up, 6);
    server.stop().await;
}

#[tokio::test]
async fn reads_and_subscriptions_can_start_inside_a_batch() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    // Batches of 1..=7 events alternating two streams: 28 events, many batch boundaries.
    let mut expected_streams = Vec::new();
    for size in 1..=7 {
        let batch: Vec<NewEvent> = (0..size)
            .map(|i| new_event(if i % 2 == 0 { "even" } else { "odd" }, "test.batch"))
            .collect();
        expected_streams.extend(batch.iter().map(|e| e.stream_id.clone()));
        publish(&mut events, batch).await;
    }
    let total = expected_streams.len() as u64;
    assert_eq!(total, 28);
    for k in 0..=total {
        let page = read(
            &mut events,
            ReadEventsRequest {
                start: after(k),
                filter: None,
                limit: 3,
            },
        )
        .await;
        let want: Vec<u64> = (k + 1..=(k + 3).min(total)).collect();
        assert_eq!(offsets(&page.events), want, "after_offset {k}");
        if k >= 1 {
            let page = read(
                &mut events,
                ReadEventsRequest {
                    start: from(k),
                    filter: None,
                    limit: 2,
                },
            )
            .await;
            let want: Vec<u64> = (k..=(k + 1).min(total)).collect();
            assert_eq!(offsets(&page.events), want, "from_offset {k}");
        }
        let mut stream = subscribe(&mut events, sub(after(k)))
            .await
            .expect("subscribe");
        let (history, caught_up) = read_until_caught_up(&mut stream).await;
        assert_eq!(offsets(&history), (k + 1..=total).collect::<Vec<_>>());
        assert_eq!(caught_up, total);
    }
    let odd = read_filtered(&mut events, filter(&[], &["odd"])).await;
    let want: Vec<u64> = expected_streams
        .iter()
        .enumerate()
        .filter(|(_, s)| s.as_str() == "odd")
        .map(|(i, _)| i as u64 + 1)
        .collect();
    assert_eq!(offsets(&odd), want);
    let versions: Vec<u64> = odd.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, (1..=want.len() as u64).collect::<Vec<_>>());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_subscriber_does_not_hold_up_appends_or_other_subscribers() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    // 4 MB of history the stuck subscriber will never read.
    for b in 0..2 {
        let batch = (0..1000)
            .map(|i| NewEvent {
                data: vec![0; 2048],
                ..new_event_with_id("bulk", "t.bulk", &format!("b{b}-{i}"))
            })
            .collect();
        publish(&mut events, batch).await;
    }
    let mut stuck = subscribe(&mut events, sub(None)).await.expect("subscribe");
    assert_eq!(read_events(&mut stuck, 1).await[0].offset, 1);
    let mut live = subscribe(&mut events, sub(end())).await.expect("subscribe");
    let (_, caught_up) = read_until_caught_up(&mut live).await;
    assert_eq!(caught_up, 2000);

    // 200 more appends while `stuck` reads nothing: none waits on it.
    let started = std::time::Instant::now();
    for _ in 0..20 {
        let batch = (0..10).map(|_| new_event("more", "t.more")).collect();
        tokio::time::timeout(Duration::from_secs(5), events.publish(publish_req(batch)))
            .await
            .expect("publish is not blocked by a stuck subscriber")
            .expect("publish");
    }
    let got = read_events(&mut live, 200).await;
    assert_eq!(offsets(&got), (2001..=2200).collect::<Vec<_>>());
    assert!(started.elapsed() < Duration::from_secs(10));

    // The stuck one, once it reads again, resumes where it was with nothing lost.
    let (mut rest, caught_up) = read_until_caught_up(&mut stuck).await;
    assert!(caught_up >= 2000);
    rest.extend(read_events(&mut stuck, (2200 - caught_up) as usize).await);
    assert_eq!(offsets(&rest), (2..=2200).collect::<Vec<_>>());
    drop(stuck);
    server.stop().await;
}

#[tokio::test]
async fn sparse_filtered_reads_page_past_the_scan_cap() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    for b in 0..11 {
        let batch = (0..1000)
            .map(|_| new_event(&format!("noise-{b}"), "noise.tick"))
            .collect();
        publish(&mut events, batch).await;
    }
    let needle = publish(&mut events, vec![new_event("needle", "needle.found")]).await;
    assert_eq!(needle.positions[0].offset, 11_001);

    // One call examines a bounded range: an empty page that still moves the cursor.
    let req = |after_offset| ReadEventsRequest {
        start: after(after_offset),
        filter: filter(&["needle.*"], &[]),
        limit: 10,
    };
    let first = read(&mut events, req(0)).await;
    assert!(first.events.is_empty());
    assert!(first.next_after_offset > 0 && first.next_after_offset < 11_001);
    assert_eq!(first.head_offset, 11_001);
    let mut after_offset = first.next_after_offset;
    let mut found = Vec::new();
    for _ in 0..20 {
        let page = read(&mut events, req(after_offset)).await;
        assert!(
            page.next_after_offset > after_offset,
            "paging makes progress"
        );
        found.extend(page.events);
        after_offset = page.next_after_offset;
        if after_offset == page.head_offset {
            break;
        }
    }
    assert_eq!(offsets(&found), vec![11_001]);

    // The same through Subscribe: history is just the needle, then caught_up at the head.
    let mut stream = subscribe(
        &mut events,
        SubscribeRequest {
            start: None,
            filter: filter(&[], &["needle"]),
            heartbeat_interval_ms: 100,
        },
    )
    .await
    .expect("subscribe");
    let (history, caught_up) = read_until_caught_up(&mut stream).await;
    assert_eq!(offsets(&history), vec![11_001]);
    assert_eq!(caught_up, 11_001);
    server.stop().await;
}

/// A subscriber that stops reading must not hold shutdown forever: the server closes what is
/// still open after its drain deadline (5 s) and stops.
#[tokio::test]
async fn a_stalled_subscriber_cannot_block_shutdown() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    publish_bulk_history(&mut events).await;
    let mut stream = subscribe(&mut events, sub(None)).await.expect("subscribe");
    let first = read_events(&mut stream, 1).await;
    assert_eq!(first[0].offset, 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(9), server.stop())
        .await
        .expect("shutdown completes despite the stalled subscriber");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "drained early: {:?}",
        started.elapsed()
    );
    drop(stream);
}

/// Ids the server assigns are unique too: republishing one (e.g. forwarding an event read from
/// the log) is recognised as the stored event, not stored a second time.
#[tokio::test]
async fn server_assigned_ids_are_deduplicated_like_chosen_ones() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let first = publish(&mut events, vec![new_event("sensor-1", "sensor.reading")]).await;
    let assigned = first.positions[0].clone();
    assert_eq!(
        assigned.id.len(),
        26,
        "server ids are ULIDs: {}",
        assigned.id
    );
    let head_before = head(&mut events).await;

    let again = publish(
        &mut events,
        vec![new_event_with_id("sensor-2", "sensor.other", &assigned.id)],
    )
    .await;
    assert!(
        again.deduplicated,
        "a republished server id must deduplicate"
    );
    assert_eq!(again.positions, vec![assigned.clone()]);
    assert_eq!(head(&mut events).await, head_before, "nothing appended");

    let err = events
        .publish(publish_req(vec![
            new_event_with_id("sensor-2", "sensor.other", &assigned.id),
            new_event_with_id("sensor-2", "sensor.other", "fresh-id"),
        ]))
        .await
        .expect_err("a partial duplicate is refused");
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    assert!(err.message().contains(&assigned.id), "{}", err.message());
    assert_eq!(head(&mut events).await, head_before, "nothing appended");

    // An id in ULID form that names no stored event is just a new id.
    let lookalike = ulid::Ulid::new().to_string();
    let fresh = publish(
        &mut events,
        vec![new_event_with_id("sensor-3", "t.x", &lookalike)],
    )
    .await;
    assert!(!fresh.deduplicated);
    assert_eq!(fresh.positions[0].offset, head_before + 1);
}
