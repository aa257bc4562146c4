//! Publish: single events, atomic batches, optimistic concurrency, deduplication by event id
//! and every bad input.

use super::*;

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
    assert_eq!(position_offsets(&response.positions), vec![2, 3, 4, 5, 6]);
    server.stop().await;
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
