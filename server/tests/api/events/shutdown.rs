//! Shutdown and restart: subscriptions end with UNAVAILABLE and a resume point, a stalled
//! subscriber cannot hold shutdown, and a restart keeps the log and its offsets.

use super::*;

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
            ..Default::default()
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
