//! Subscribe: history then the caught-up marker then live events, the seam under concurrent
//! appends, resume after disconnects, filters, heartbeats and the subscriber caps.

use super::*;

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
                ..Default::default()
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
            ..Default::default()
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
            ..Default::default()
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
            ..Default::default()
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
