//! Webhooks and removed events: events retention removed before a webhook delivered them are
//! skipped visibly (a `DELIVERY_OUTCOME_TRIMMED` record naming the range, and a WARN line),
//! never silently, and delivery goes on at the first retained offset; events of a deleted
//! stream are no longer delivered, even the one being retried.

use ordo_api::v1::{CompactRequest, DeleteStreamRequest, GetLogInfoRequest};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_removed_before_delivery_are_recorded_then_skipped() {
    if ordo_test_harness::unsupported_on_nats("retention") {
        return;
    }
    let server = TestServer::start_with(|cfg| {
        // The second attempt would come an hour later: retention gets there first.
        fast(cfg, &[3_600_000]);
        cfg.retention.max_bytes = Some(64 * 1024);
        cfg.retention.interval = Duration::from_secs(3600);
        cfg.sled_flush_interval = Duration::from_millis(20);
    })
    .await;
    let receiver = Receiver::start().await;
    receiver.set_default(reply(503));
    let mut hooks = hooks(&server).await;
    let (hook, _) = create(&mut hooks, create_req(&receiver.url(), &["*"])).await;
    publish_n(&server, 1).await;
    receiver.wait_seen(1).await;
    wait_for("the first event pending a retry", async || {
        (get(&mut hooks, &hook.id).await.pending_offset == 1).then_some(())
    })
    .await;

    let mut events = server.events().await;
    for _ in 0..4 {
        let batch = (0..50)
            .map(|_| NewEvent {
                data: vec![b'x'; 1024],
                ..NewEvent {
                    stream_id: "filler".into(),
                    r#type: "test.filler".into(),
                    ..NewEvent::default()
                }
            })
            .collect();
        events
            .publish(PublishRequest { events: batch })
            .await
            .expect("publish");
    }
    receiver.set_default(reply(200));
    let mut admin = server.admin().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let first = wait_for("retention to remove the pending event", async || {
        let done = admin
            .compact(CompactRequest {})
            .await
            .expect("compact")
            .into_inner();
        (done.first_offset_after > 1).then_some(done.first_offset_after)
    })
    .await;
    let head = admin
        .get_log_info(GetLogInfoRequest {})
        .await
        .expect("info")
        .into_inner()
        .head_offset;
    assert_eq!(head, 201);

    let attempts = wait_for("the skipped range in the delivery history", async || {
        let attempts = deliveries(&mut hooks, &hook.id).await;
        attempts
            .iter()
            .any(|a| a.outcome == DeliveryOutcome::Trimmed as i32)
            .then_some(attempts)
    })
    .await;
    let trimmed = attempts
        .iter()
        .find(|a| a.outcome == DeliveryOutcome::Trimmed as i32)
        .expect("trimmed record");
    assert_eq!(trimmed.event_offset, 1);
    assert!(
        trimmed.error.contains(&format!(
            "events 1..={} were removed by retention before they were delivered; delivery continues at offset {first}",
            first - 1
        )),
        "{}",
        trimmed.error
    );

    // Delivery went on at the first retained offset, in order, up to the head.
    let expected = (head - first + 1) as usize;
    let delivered = receiver.wait_delivered(expected).await;
    let offsets: Vec<u64> = delivered
        .iter()
        .map(|r| r.json()["ordooffset"].as_u64().expect("offset attribute"))
        .collect();
    assert_eq!(offsets, (first..=head).collect::<Vec<_>>());
    let hook = wait_for("the cursor at the head", async || {
        let hook = get(&mut hooks, &hook.id).await;
        (hook.delivered_through_offset == head).then_some(hook)
    })
    .await;
    assert!(hook.enabled);
    assert_eq!(hook.pending_offset, 0);
    server.stop().await;
}

#[tokio::test]
async fn a_deleted_stream_is_not_delivered_even_mid_retry() {
    if ordo_test_harness::unsupported_on_nats("DeleteStream") {
        return;
    }
    let server = TestServer::start_with(|cfg| fast(cfg, &[50, 50, 50, 50, 50, 50, 50, 50])).await;
    let receiver = Receiver::start().await;
    receiver.set_default(reply(503));
    let mut hooks = hooks(&server).await;
    let (hook, _) = create(&mut hooks, create_req(&receiver.url(), &["*"])).await;
    let deleted = publish(&server, &[("customer-5", "customer.updated")]).await;
    receiver.wait_seen(1).await;
    server
        .admin()
        .await
        .delete_stream(DeleteStreamRequest {
            stream_id: "customer-5".into(),
        })
        .await
        .expect("delete");
    receiver.set_default(reply(200));
    let kept = publish(&server, &[("other-1", "other.happened")]).await;
    let delivered = receiver.wait_delivered(1).await;
    assert_eq!(ids(&delivered), kept, "only the event that was not deleted");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        receiver.delivered().iter().all(|r| r.id != deleted[0]),
        "the deleted event was delivered after its deletion"
    );
    let hook = wait_for("the cursor past both", async || {
        let hook = get(&mut hooks, &hook.id).await;
        (hook.delivered_through_offset == 2).then_some(hook)
    })
    .await;
    assert_eq!(hook.pending_offset, 0);
    server.stop().await;
}
