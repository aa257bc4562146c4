//! ReadEvents: paging, start positions, filters and page-size bounds.

use super::*;

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
        ..Default::default()
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
                    ..Default::default()
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
            ..Default::default()
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
                ..Default::default()
            })
            .await;
        assert_status(result, Code::InvalidArgument, needle);
        let result = subscribe(
            &mut events,
            SubscribeRequest {
                start: None,
                filter: f,
                heartbeat_interval_ms: 0,
                ..Default::default()
            },
        )
        .await;
        assert_status(result, Code::InvalidArgument, needle);
    }
    server.stop().await;
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
                ..Default::default()
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
                    ..Default::default()
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
        ..Default::default()
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
            ..Default::default()
        },
    )
    .await
    .expect("subscribe");
    let (history, caught_up) = read_until_caught_up(&mut stream).await;
    assert_eq!(offsets(&history), vec![11_001]);
    assert_eq!(caught_up, 11_001);
    server.stop().await;
}
