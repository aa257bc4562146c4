//! Retries and their end: attempt records, dead letters and redrive, restarts mid-retry,
//! parallel delivery, 410 Gone, disabling after failing too long, and Retry-After.

use super::*;

#[tokio::test]
async fn n_failures_then_success_records_exactly_n_plus_one_attempts() {
    const N: usize = 3;
    let server = TestServer::start_with(|cfg| fast(cfg, &[10, 10, 10, 10, 10])).await;
    let receiver = Receiver::start().await;
    receiver.script(std::iter::repeat_n(reply(500), N));
    let mut hooks = hooks(&server).await;
    let (hook, secret) = create(&mut hooks, create_req(&receiver.url(), &["*"])).await;
    let published = publish_n(&server, 1).await;

    let got = receiver.wait_delivered(1).await;
    assert_eq!(ids(&got), published);
    let seen = receiver.seen();
    assert_eq!(seen.len(), N + 1);
    assert!(
        seen.iter().all(|r| r.id == published[0]),
        "webhook-id is stable across retries"
    );
    for r in &seen {
        assert_signed(&secret, r);
    }
    let attempts = wait_for("N+1 recorded attempts", async || {
        let a = deliveries(&mut hooks, &hook.id).await;
        (a.len() == N + 1).then_some(a)
    })
    .await;
    // Newest first.
    let numbers: Vec<u32> = attempts.iter().map(|a| a.attempt).collect();
    assert_eq!(numbers, vec![4, 3, 2, 1]);
    assert_eq!(attempts[0].outcome, DeliveryOutcome::Succeeded as i32);
    for a in &attempts[1..] {
        assert_eq!(a.http_status, 500);
        assert_eq!(a.outcome, DeliveryOutcome::RetryScheduled as i32);
        assert!(a.next_retry_at.is_some());
        assert!(a.error.contains("answered 500"), "{:?}", a.error);
    }
    let hook = get(&mut hooks, &hook.id).await;
    assert!(hook.failing_since.is_none() && hook.pending_offset == 0);
    server.stop().await;
}

#[tokio::test]
async fn failed_events_are_dead_lettered_then_redriven() {
    let server = TestServer::start_with(|cfg| fast(cfg, &[5, 5])).await;
    let receiver = Receiver::start().await;
    // Event 1: permanent failure. Event 2: fails all 3 attempts. Event 3: delivered.
    receiver.script([reply(400), reply(503), reply(503), reply(503)]);
    let mut hooks = hooks(&server).await;
    let (hook, secret) = create(&mut hooks, create_req(&receiver.url(), &["*"])).await;
    let published = publish_n(&server, 3).await;

    let got = receiver.wait_delivered(1).await;
    assert_eq!(ids(&got), vec![published[2].clone()], "delivery moved on");
    let dead = wait_for("2 dead letters", async || {
        let d = hooks
            .list_dead_letters(ListDeadLettersRequest {
                webhook_id: hook.id.clone(),
                after_offset: 0,
                limit: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .dead_letters;
        (d.len() == 2).then_some(d)
    })
    .await;
    assert_eq!(dead[0].event_id, published[0]);
    assert_eq!((dead[0].attempts, dead[0].last_http_status), (1, 400));
    assert_eq!(dead[1].event_id, published[1]);
    assert_eq!((dead[1].attempts, dead[1].last_http_status), (3, 503));
    assert_eq!(get(&mut hooks, &hook.id).await.dead_letter_count, 2);

    // Redrive one by offset, then the rest by range.
    let one = hooks
        .redrive_dead_letters(RedriveDeadLettersRequest {
            webhook_id: hook.id.clone(),
            selection: Some(redrive_dead_letters_request::Selection::Offset(
                dead[1].event_offset,
            )),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.redriven, 1);
    let got = receiver.wait_delivered(2).await;
    assert_eq!(got[1].id, published[1]);
    let rest = hooks
        .redrive_dead_letters(RedriveDeadLettersRequest {
            webhook_id: hook.id.clone(),
            selection: Some(redrive_dead_letters_request::Selection::Range(
                OffsetRange {
                    from_offset: 0,
                    to_offset: u64::MAX,
                },
            )),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.redriven, 1);
    let got = receiver.wait_delivered(3).await;
    assert_eq!(got[2].id, published[0]);
    for r in &got {
        assert_signed(&secret, r);
    }
    let hook = wait_for("empty dead-letter queue", async || {
        let h = get(&mut hooks, &hook.id).await;
        (h.dead_letter_count == 0 && h.redrive_pending_count == 0).then_some(h)
    })
    .await;
    let attempts = deliveries(&mut hooks, &hook.id).await;
    assert!(attempts[0].redrive && attempts[0].outcome == DeliveryOutcome::Succeeded as i32);
    // Unknown offset is NOT_FOUND; no selection is INVALID_ARGUMENT.
    let err = hooks
        .redrive_dead_letters(RedriveDeadLettersRequest {
            webhook_id: hook.id.clone(),
            selection: Some(redrive_dead_letters_request::Selection::Offset(999)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = hooks
        .redrive_dead_letters(RedriveDeadLettersRequest {
            webhook_id: hook.id.clone(),
            selection: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test]
async fn restart_mid_retry_resumes_without_loss_or_skips() {
    let configure = |cfg: &mut ServerConfig| fast(cfg, &[30; 400]);
    let server = TestServer::start_with(configure).await;
    let receiver = Receiver::start().await;
    receiver.set_default(reply(500));
    let mut hooks = hooks(&server).await;
    let (hook, secret) = create(&mut hooks, create_req(&receiver.url(), &["*"])).await;
    let published = publish_n(&server, 4).await;
    receiver.wait_seen(3).await;
    let before = get(&mut hooks, &hook.id).await;
    assert_eq!(before.pending_offset, 1);
    assert!(before.pending_attempts >= 1);
    let dir = server.stop().await;

    receiver.set_default(reply(200));
    let server = TestServer::start_in(dir, configure).await;
    let (firsts, repeats) = wait_distinct(&receiver, 4).await;
    assert_eq!(
        firsts, published,
        "nothing lost, nothing skipped, order kept"
    );
    assert!(
        repeats <= 1,
        "only the request in flight at shutdown may repeat"
    );
    let got = receiver.delivered();
    for r in &got {
        assert_signed(&secret, r);
    }
    let mut hooks = self::hooks(&server).await;
    let hook = wait_for("cursor at the last event", async || {
        let h = get(&mut hooks, &hook.id).await;
        (h.delivered_through_offset == 4).then_some(h)
    })
    .await;
    let attempts = deliveries(&mut hooks, &hook.id).await;
    let first_success = attempts
        .iter()
        .find(|a| a.event_offset == 1 && a.outcome == DeliveryOutcome::Succeeded as i32)
        .expect("first event delivered");
    assert!(
        first_success.attempt > before.pending_attempts,
        "attempt count continued across the restart"
    );
    server.stop().await;
}

#[tokio::test]
async fn parallel_delivery_is_not_held_up_by_a_failing_event() {
    let server = TestServer::start_with(|cfg| fast(cfg, &[3000])).await;
    let receiver = Receiver::start().await;
    // Whichever request comes first fails once; its retry is due 2.4-3.6 s later.
    receiver.script([reply(503)]);
    let mut hooks = hooks(&server).await;
    let mut req = create_req(&receiver.url(), &["*"]);
    req.max_in_flight = 4;
    let (hook, secret) = create(&mut hooks, req).await;
    assert_eq!(hook.max_in_flight, 4);
    let published = publish_n(&server, 8).await;

    // The other seven arrive while the failed one waits for its retry.
    let others = receiver.wait_delivered(7).await;
    let failed = receiver.seen()[0].clone();
    assert_eq!(failed.answered, 503);
    assert!(
        others.iter().all(|r| r.id != failed.id),
        "the others did not wait for the failing event"
    );
    let got = receiver.wait_delivered(8).await;
    assert_eq!(got[7].id, failed.id);
    let mut delivered = ids(&got);
    delivered.sort();
    let mut expected = published.clone();
    expected.sort();
    assert_eq!(delivered, expected, "each event delivered exactly once");
    for r in &got {
        assert_signed(&secret, r);
    }
    let hook = wait_for("cursor at the last event", async || {
        let h = get(&mut hooks, &hook.id).await;
        (h.delivered_through_offset == 8).then_some(h)
    })
    .await;
    assert_eq!(deliveries(&mut hooks, &hook.id).await.len(), 9);
    server.stop().await;
}

#[tokio::test]
async fn parallel_retry_state_survives_a_restart() {
    let configure = |cfg: &mut ServerConfig| fast(cfg, &[40; 400]);
    let server = TestServer::start_with(configure).await;
    let receiver = Receiver::start().await;
    receiver.set_default(reply(500));
    let mut hooks = hooks(&server).await;
    let mut req = create_req(&receiver.url(), &["*"]);
    req.max_in_flight = 3;
    let (hook, _) = create(&mut hooks, req).await;
    let published = publish_n(&server, 3).await;
    receiver.wait_seen(9).await;
    let dir = server.stop().await;

    receiver.set_default(reply(200));
    let server = TestServer::start_in(dir, configure).await;
    let (mut delivered, repeats) = wait_distinct(&receiver, 3).await;
    assert!(
        repeats <= 3,
        "only requests in flight at shutdown may repeat"
    );
    delivered.sort();
    let mut expected = published;
    expected.sort();
    assert_eq!(delivered, expected);
    let mut hooks = self::hooks(&server).await;
    wait_for("cursor at the last event", async || {
        let h = get(&mut hooks, &hook.id).await;
        (h.delivered_through_offset == 3).then_some(())
    })
    .await;
    // Attempt numbers continue across the restart: each success is numbered right after the
    // failures recorded for its event (an attempt cut off by the shutdown is not counted).
    let attempts = deliveries(&mut hooks, &hook.id).await;
    let failures = |offset: u64| {
        attempts
            .iter()
            .filter(|a| {
                a.event_offset == offset && a.outcome == DeliveryOutcome::RetryScheduled as i32
            })
            .count() as u32
    };
    let successes: Vec<_> = attempts
        .iter()
        .filter(|a| a.outcome == DeliveryOutcome::Succeeded as i32)
        .collect();
    assert_eq!(successes.len(), 3);
    for success in successes {
        assert_eq!(
            success.attempt,
            failures(success.event_offset) + 1,
            "attempt count continued across the restart: {success:?}"
        );
    }
    assert!(
        (1..=3).map(failures).sum::<u32>() >= 3,
        "failures before the restart"
    );
    server.stop().await;
}

#[tokio::test]
async fn gone_disables_and_enabling_resumes_with_the_same_event() {
    let server = TestServer::start_with(|cfg| fast(cfg, &[10])).await;
    let receiver = Receiver::start().await;
    receiver.script([reply(410)]);
    let mut hooks = hooks(&server).await;
    let (hook, _) = create(&mut hooks, create_req(&receiver.url(), &["*"])).await;
    let published = publish_n(&server, 2).await;
    let disabled = wait_for("webhook disabled", async || {
        let h = get(&mut hooks, &hook.id).await;
        (!h.enabled).then_some(h)
    })
    .await;
    assert!(
        disabled.disabled_reason.contains("410"),
        "{}",
        disabled.disabled_reason
    );
    assert!(disabled.disabled_at.is_some());
    assert_eq!(
        deliveries(&mut hooks, &hook.id).await[0].outcome,
        DeliveryOutcome::WebhookDisabled as i32
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(receiver.seen().len(), 1, "nothing is sent while disabled");

    hooks
        .update_webhook(UpdateWebhookRequest {
            id: hook.id.clone(),
            enabled: Some(true),
            ..UpdateWebhookRequest::default()
        })
        .await
        .unwrap();
    let got = receiver.wait_delivered(2).await;
    assert_eq!(ids(&got), published);
    assert!(get(&mut hooks, &hook.id).await.disabled_reason.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn webhook_failing_for_too_long_is_disabled() {
    let server = TestServer::start_with(|cfg| {
        fast(cfg, &[20; 100]);
        cfg.webhooks.disable_after = Duration::from_millis(300);
    })
    .await;
    let receiver = Receiver::start().await;
    receiver.set_default(reply(503));
    let mut hooks = hooks(&server).await;
    let (hook, _) = create(&mut hooks, create_req(&receiver.url(), &["*"])).await;
    publish_n(&server, 1).await;
    let disabled = wait_for("webhook disabled", async || {
        let h = get(&mut hooks, &hook.id).await;
        (!h.enabled).then_some(h)
    })
    .await;
    assert!(
        disabled.disabled_reason.contains("failed since"),
        "{}",
        disabled.disabled_reason
    );
    assert!(disabled.failing_since.is_some());
    assert_eq!(
        disabled.pending_offset, 1,
        "the event waits for re-enabling"
    );
    server.stop().await;
}

#[tokio::test]
async fn retry_after_is_honoured_and_clamped() {
    let server = TestServer::start_with(|cfg| {
        fast(cfg, &[5, 5]);
        cfg.webhooks.max_retry_after = Duration::from_millis(400);
    })
    .await;
    let receiver = Receiver::start().await;
    receiver.script([Reply {
        status: 429,
        retry_after: Some("3600"),
    }]);
    let mut hooks = hooks(&server).await;
    create(&mut hooks, create_req(&receiver.url(), &["*"])).await;
    publish_n(&server, 1).await;
    let seen = receiver.wait_delivered(1).await;
    let all = receiver.seen();
    assert_eq!(all.len(), 2);
    let gap = seen[0].at - all[0].at;
    assert!(
        gap >= Duration::from_millis(350) && gap < Duration::from_secs(5),
        "retry after {gap:?}: Retry-After must win over the 5 ms schedule, clamped to 400 ms"
    );
    server.stop().await;
}
