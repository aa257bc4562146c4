//! An order's life: create, get, every status change, cancellation, illegal transitions, and
//! the events each step appends.

use super::*;

#[tokio::test]
async fn create_and_get_order_appends_one_created_event() {
    let server = TestServer::start().await;
    let mut orders = server.orders().await;
    let mut events = server.events().await;
    assert_eq!(head(&mut events).await, 0, "a fresh log is empty");

    let req = CreateOrderRequest {
        customer_id: "cust-1".into(),
        items: vec![item("apple", 3, 120, "EUR"), item("pear", 1, 0, "EUR")],
        idempotency_key: String::new(),
    };
    let order = orders
        .create_order(req.clone())
        .await
        .expect("create")
        .into_inner()
        .order
        .expect("order");
    assert!(
        ulid::Ulid::from_string(&order.id).is_ok(),
        "order id {:?} is a ULID",
        order.id
    );
    assert_eq!(order.customer_id, "cust-1");
    assert_eq!(order.items, req.items);
    assert_eq!(order.status(), OrderStatus::Created);
    assert_eq!(order.version, 1);
    assert_eq!(order.last_offset, 1, "first event ever gets offset 1");
    assert!(order.created_at.is_some() && order.updated_at.is_some());
    assert!(order.cancel_reason.is_empty());

    assert_eq!(get(&mut orders, &order.id).await, order);
    assert_eq!(head(&mut events).await, 1);

    let log = read_all(&mut events).await;
    assert_eq!(log.len(), 1);
    let event = &log[0];
    assert_eq!(event.offset, 1);
    assert_eq!(event.r#type, "order.created");
    assert_eq!(event.stream_id, format!("order-{}", order.id));
    assert_eq!(event.subject, event.stream_id);
    assert_eq!(event.stream_version, 1);
    assert_eq!(event.datacontenttype, "application/protobuf");
    assert!(!event.id.is_empty() && event.time.is_some());
    assert_eq!(
        order_kind(event),
        &Kind::Created(OrderCreated {
            order_id: order.id.clone(),
            customer_id: "cust-1".into(),
            items: req.items,
        })
    );
    server.stop().await;
}

#[tokio::test]
async fn full_lifecycle_and_time_travel() {
    let server = TestServer::start().await;
    let mut orders = server.orders().await;
    let mut events = server.events().await;
    let created = create(&mut orders, "cust-life").await;
    let id = created.id.clone();

    let mut expected_version = 1;
    for status in [
        OrderStatus::Paid,
        OrderStatus::Fulfilled,
        OrderStatus::Delivered,
    ] {
        let order = advance(&mut orders, &id, status).await;
        expected_version += 1;
        assert_eq!(order.status(), status);
        assert_eq!(order.version, expected_version);
        assert_eq!(order.last_offset, expected_version, "one event per change");
        assert_eq!(order.created_at, created.created_at);
        assert_eq!(get(&mut orders, &id).await, order);
    }

    let stream = stream_events(&mut events, &id).await;
    let kinds: Vec<(String, u64)> = stream
        .iter()
        .map(|e| (e.r#type.clone(), e.stream_version))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("order.created".to_string(), 1),
            ("order.status_changed".to_string(), 2),
            ("order.status_changed".to_string(), 3),
            ("order.status_changed".to_string(), 4),
        ]
    );
    let steps = [
        OrderStatus::Created,
        OrderStatus::Paid,
        OrderStatus::Fulfilled,
        OrderStatus::Delivered,
    ];
    for (event, pair) in stream[1..].iter().zip(steps.windows(2)) {
        assert_eq!(
            order_kind(event),
            &Kind::StatusChanged(OrderStatusChanged {
                order_id: id.clone(),
                from: pair[0] as i32,
                to: pair[1] as i32,
            })
        );
    }

    // Time travel: each version folds to the status it had then.
    for (version, status) in [
        (1, OrderStatus::Created),
        (2, OrderStatus::Paid),
        (3, OrderStatus::Fulfilled),
        (4, OrderStatus::Delivered),
    ] {
        let old = orders
            .get_order(GetOrderRequest {
                order_id: id.clone(),
                at_version: Some(version),
            })
            .await
            .expect("get at version")
            .into_inner()
            .order
            .expect("order");
        assert_eq!(old.status(), status, "status at version {version}");
        assert_eq!(old.version, version);
        assert_eq!(old.last_offset, version);
        assert_eq!(old.id, id);
        assert_eq!(old.items, created.items);
    }
    assert_eq!(
        orders
            .get_order(GetOrderRequest {
                order_id: id.clone(),
                at_version: Some(1),
            })
            .await
            .expect("v1")
            .into_inner()
            .order
            .expect("order"),
        created,
        "version 1 is exactly the order as created"
    );
    for bad in [0, 5] {
        let result = orders
            .get_order(GetOrderRequest {
                order_id: id.clone(),
                at_version: Some(bad),
            })
            .await;
        assert_status(result, Code::InvalidArgument, "at_version");
    }

    // Delivered is final: no cancel, no further move; nothing appended.
    let head_before = head(&mut events).await;
    let result = orders.cancel_order(cancel(&id, "too late")).await;
    assert_status(
        result,
        Code::FailedPrecondition,
        "can no longer be cancelled",
    );
    let result = orders
        .update_order_status(update(&id, OrderStatus::Paid))
        .await;
    assert_status(result, Code::FailedPrecondition, "final");
    assert_eq!(head(&mut events).await, head_before);
    assert_eq!(get(&mut orders, &id).await.version, 4);
    server.stop().await;
}

#[tokio::test]
async fn cancel_order_records_reason_and_is_final() {
    let server = TestServer::start().await;
    let mut orders = server.orders().await;
    let mut events = server.events().await;

    // Cancellable from CREATED, PAID and FULFILLED.
    for steps in [
        &[][..],
        &[OrderStatus::Paid][..],
        &[OrderStatus::Paid, OrderStatus::Fulfilled][..],
    ] {
        let order = create(&mut orders, "cust-cancel").await;
        let mut from = OrderStatus::Created;
        for step in steps {
            advance(&mut orders, &order.id, *step).await;
            from = *step;
        }
        let cancelled = orders
            .cancel_order(cancel(&order.id, "changed my mind"))
            .await
            .expect("cancel")
            .into_inner()
            .order
            .expect("order");
        assert_eq!(cancelled.status(), OrderStatus::Cancelled);
        assert_eq!(cancelled.cancel_reason, "changed my mind");
        assert_eq!(cancelled.version, steps.len() as u64 + 2);
        assert_eq!(get(&mut orders, &order.id).await, cancelled);
        let stream = stream_events(&mut events, &order.id).await;
        let last = stream.last().expect("events");
        assert_eq!(last.r#type, "order.cancelled");
        assert_eq!(last.offset, cancelled.last_offset);
        assert_eq!(
            order_kind(last),
            &Kind::Cancelled(OrderCancelled {
                order_id: order.id.clone(),
                from: from as i32,
                reason: "changed my mind".into(),
            })
        );

        // Time travel to just before the cancellation: no reason yet, the old status.
        let before = orders
            .get_order(GetOrderRequest {
                order_id: order.id.clone(),
                at_version: Some(cancelled.version - 1),
            })
            .await
            .expect("get before cancel")
            .into_inner()
            .order
            .expect("order");
        assert_eq!(before.status(), from);
        assert!(before.cancel_reason.is_empty());

        // Cancelled is final.
        let head_before = head(&mut events).await;
        let result = orders.cancel_order(cancel(&order.id, "again")).await;
        assert_status(result, Code::FailedPrecondition, "ORDER_STATUS_CANCELLED");
        let result = orders
            .update_order_status(update(&order.id, OrderStatus::Paid))
            .await;
        assert_status(result, Code::FailedPrecondition, "final");
        assert_eq!(head(&mut events).await, head_before);
    }

    // An empty reason is fine; an over-long one is not.
    let order = create(&mut orders, "cust-cancel").await;
    let head_before = head(&mut events).await;
    let result = orders
        .cancel_order(cancel(&order.id, &"r".repeat(513)))
        .await;
    assert_status(result, Code::InvalidArgument, "reason");
    let result = orders.cancel_order(cancel(&order.id, "bad\u{7}bell")).await;
    assert_status(result, Code::InvalidArgument, "reason");
    assert_eq!(head(&mut events).await, head_before);
    assert_eq!(get(&mut orders, &order.id).await.version, 1);
    let cancelled = orders
        .cancel_order(cancel(&order.id, ""))
        .await
        .expect("cancel without reason")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(cancelled.status(), OrderStatus::Cancelled);
    server.stop().await;
}

#[tokio::test]
async fn illegal_transitions_are_failed_precondition_and_append_nothing() {
    let server = TestServer::start().await;
    let mut orders = server.orders().await;
    let mut events = server.events().await;
    let order = create(&mut orders, "cust-sm").await;
    let head_before = head(&mut events).await;

    let cases = [
        (
            OrderStatus::Created,
            "from ORDER_STATUS_CREATED to ORDER_STATUS_CREATED",
        ),
        (OrderStatus::Fulfilled, "to ORDER_STATUS_FULFILLED"),
        (OrderStatus::Delivered, "to ORDER_STATUS_DELIVERED"),
        (OrderStatus::Cancelled, "use CancelOrder"),
    ];
    for (to, needle) in cases {
        let result = orders.update_order_status(update(&order.id, to)).await;
        assert_status(result, Code::FailedPrecondition, needle);
    }
    // Not a status at all: the request is malformed.
    for status in [OrderStatus::Unspecified as i32, 99] {
        let mut req = update(&order.id, OrderStatus::Paid);
        req.status = status;
        let result = orders.update_order_status(req).await;
        assert_status(result, Code::InvalidArgument, "status");
    }
    // Skipping a step from PAID is refused too.
    advance(&mut orders, &order.id, OrderStatus::Paid).await;
    let result = orders
        .update_order_status(update(&order.id, OrderStatus::Delivered))
        .await;
    assert_status(
        result,
        Code::FailedPrecondition,
        "from ORDER_STATUS_PAID to ORDER_STATUS_DELIVERED",
    );
    let result = orders
        .update_order_status(update(&order.id, OrderStatus::Created))
        .await;
    assert_status(result, Code::FailedPrecondition, "to ORDER_STATUS_CREATED");

    assert_eq!(
        head(&mut events).await,
        head_before + 1,
        "only the PAID event"
    );
    let current = get(&mut orders, &order.id).await;
    assert_eq!(current.version, 2);
    assert_eq!(current.status(), OrderStatus::Paid);
    server.stop().await;
}

#[tokio::test]
async fn order_events_reach_filtered_readers() {
    let server = TestServer::start().await;
    let mut orders = server.orders().await;
    let mut events = server.events().await;
    let a = create(&mut orders, "a").await;
    let b = create(&mut orders, "b").await;
    events
        .publish(publish_req(vec![new_event("pay-1", "payment.confirmed")]))
        .await
        .expect("publish");
    advance(&mut orders, &a.id, OrderStatus::Paid).await;

    let order_events = read_filtered(&mut events, filter(&["order.*"], &[])).await;
    assert_eq!(offsets(&order_events), vec![1, 2, 4]);
    let order_streams = read_filtered(&mut events, filter(&[], &["order-*"])).await;
    assert_eq!(offsets(&order_streams), vec![1, 2, 4]);
    let b_only = read_filtered(
        &mut events,
        filter(&["order.created"], &[&format!("order-{}", b.id)]),
    )
    .await;
    assert_eq!(offsets(&b_only), vec![2]);

    // Subscribing after an order's last_offset shows only what happens to it next.
    let mut stream = subscribe(
        &mut events,
        ordo_api::v1::SubscribeRequest {
            start: after(a.last_offset),
            filter: filter(&[], &[&format!("order-{}", a.id)]),
            heartbeat_interval_ms: 0,
            ..Default::default()
        },
    )
    .await
    .expect("subscribe");
    let (history, caught_up) = read_until_caught_up(&mut stream).await;
    assert_eq!(offsets(&history), vec![4]);
    assert_eq!(caught_up, 4);
    let cancelled = orders
        .cancel_order(cancel(&a.id, "bye"))
        .await
        .expect("cancel")
        .into_inner()
        .order
        .expect("order");
    advance(&mut orders, &b.id, OrderStatus::Paid).await;
    let live = read_events(&mut stream, 1).await;
    assert_eq!(live[0].offset, cancelled.last_offset);
    assert_eq!(live[0].r#type, "order.cancelled");

    let page = events
        .read_events(ReadEventsRequest {
            start: from(cancelled.last_offset),
            filter: None,
            limit: 1,
            ..Default::default()
        })
        .await
        .expect("read")
        .into_inner();
    assert_eq!(page.events, live, "subscribe and read agree on the event");
    server.stop().await;
}
