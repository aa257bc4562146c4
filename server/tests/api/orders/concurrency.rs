//! Optimistic concurrency and idempotency: version mismatches, idempotency keys (replay,
//! refusal, expiry) and concurrent commands on one order.

use super::*;

#[tokio::test]
async fn expected_version_mismatch_is_aborted_with_current_version() {
    let server = TestServer::start().await;
    let mut orders = server.orders().await;
    let mut events = server.events().await;
    let order = create(&mut orders, "cust-occ").await;

    let paid = orders
        .update_order_status(UpdateOrderStatusRequest {
            expected_version: Some(1),
            ..update(&order.id, OrderStatus::Paid)
        })
        .await
        .expect("expected version 1 matches")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(paid.version, 2);

    let head_before = head(&mut events).await;
    let result = orders
        .update_order_status(UpdateOrderStatusRequest {
            expected_version: Some(1),
            ..update(&order.id, OrderStatus::Fulfilled)
        })
        .await;
    let message = assert_status(result, Code::Aborted, "at version 2");
    assert!(message.contains("expected 1"), "{message}");
    let result = orders
        .cancel_order(CancelOrderRequest {
            expected_version: Some(7),
            ..cancel(&order.id, "x")
        })
        .await;
    assert_status(result, Code::Aborted, "at version 2");
    assert_eq!(head(&mut events).await, head_before);
    assert_eq!(get(&mut orders, &order.id).await, paid);

    // A version check is made before the state machine's: the caller learns it is stale.
    let result = orders
        .update_order_status(UpdateOrderStatusRequest {
            expected_version: Some(1),
            ..update(&order.id, OrderStatus::Created)
        })
        .await;
    assert_status(result, Code::Aborted, "at version 2");

    let cancelled = orders
        .cancel_order(CancelOrderRequest {
            expected_version: Some(2),
            ..cancel(&order.id, "x")
        })
        .await
        .expect("expected version 2 matches")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(cancelled.version, 3);
    server.stop().await;
}

#[tokio::test]
async fn idempotency_keys_replay_or_refuse() {
    let server = TestServer::start().await;
    let mut orders = server.orders().await;
    let mut events = server.events().await;

    let req = CreateOrderRequest {
        idempotency_key: "create-1".into(),
        ..create_req("cust-idem")
    };
    let first = orders
        .create_order(req.clone())
        .await
        .expect("create")
        .into_inner()
        .order
        .expect("order");
    let head_after_create = head(&mut events).await;
    let again = orders
        .create_order(req.clone())
        .await
        .expect("retry")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(again, first, "a retry returns the original order");
    assert_eq!(
        head(&mut events).await,
        head_after_create,
        "and appends nothing"
    );

    let different = CreateOrderRequest {
        customer_id: "someone-else".into(),
        ..req.clone()
    };
    let result = orders.create_order(different).await;
    assert_status(result, Code::AlreadyExists, "create-1");
    assert_eq!(head(&mut events).await, head_after_create);
    let listed = orders
        .list_orders(ListOrdersRequest::default())
        .await
        .expect("list")
        .into_inner()
        .orders;
    assert_eq!(listed.len(), 1);

    // Keys are scoped per method: the same key on UpdateOrderStatus is a fresh claim.
    let pay = UpdateOrderStatusRequest {
        idempotency_key: "create-1".into(),
        ..update(&first.id, OrderStatus::Paid)
    };
    let paid = orders
        .update_order_status(pay.clone())
        .await
        .expect("pay")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(paid.version, 2);
    let head_after_pay = head(&mut events).await;
    // A retry returns the stored response instead of FAILED_PRECONDITION (PAID -> PAID).
    let paid_again = orders
        .update_order_status(pay.clone())
        .await
        .expect("retried pay")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(paid_again, paid);
    assert_eq!(head(&mut events).await, head_after_pay);
    let result = orders
        .update_order_status(UpdateOrderStatusRequest {
            status: OrderStatus::Fulfilled as i32,
            ..pay.clone()
        })
        .await;
    assert_status(result, Code::AlreadyExists, "already used");

    let cancel_req = CancelOrderRequest {
        idempotency_key: "cancel-1".into(),
        ..cancel(&first.id, "dup")
    };
    let cancelled = orders
        .cancel_order(cancel_req.clone())
        .await
        .expect("cancel")
        .into_inner()
        .order
        .expect("order");
    let head_after_cancel = head(&mut events).await;
    let cancelled_again = orders
        .cancel_order(cancel_req.clone())
        .await
        .expect("retried cancel is not FAILED_PRECONDITION")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(cancelled_again, cancelled);
    let result = orders
        .cancel_order(CancelOrderRequest {
            reason: "other".into(),
            ..cancel_req
        })
        .await;
    assert_status(result, Code::AlreadyExists, "cancel-1");
    assert_eq!(head(&mut events).await, head_after_cancel);
    assert_eq!(
        head_after_cancel, 3,
        "create, pay, cancel: three events in all"
    );
    server.stop().await;
}

#[tokio::test]
async fn concurrent_commands_on_one_order() {
    let server = TestServer::start().await;
    let mut orders = server.orders().await;
    let mut events = server.events().await;
    let order = create(&mut orders, "cust-race").await;

    // Eight racers pinned to version 1: exactly one wins, the others are ABORTED.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut client = orders.clone();
        let id = order.id.clone();
        tasks.push(tokio::spawn(async move {
            client
                .update_order_status(UpdateOrderStatusRequest {
                    expected_version: Some(1),
                    ..update(&id, OrderStatus::Paid)
                })
                .await
        }));
    }
    let mut wins = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(_) => wins += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::Aborted, "{status:?}");
                assert!(status.message().contains("at version 2"), "{status:?}");
            }
        }
    }
    assert_eq!(wins, 1);

    // Eight unpinned racers for the next step: one wins, the others see the new state.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut client = orders.clone();
        let id = order.id.clone();
        tasks.push(tokio::spawn(async move {
            client
                .update_order_status(update(&id, OrderStatus::Fulfilled))
                .await
        }));
    }
    let mut wins = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(_) => wins += 1,
            Err(status) => assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}"),
        }
    }
    assert_eq!(wins, 1);

    // Eight concurrent creates with one key and one body: one order, one event.
    let head_before = head(&mut events).await;
    let req = CreateOrderRequest {
        idempotency_key: "race-key".into(),
        ..create_req("cust-race")
    };
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut client = orders.clone();
        let req = req.clone();
        tasks.push(tokio::spawn(async move { client.create_order(req).await }));
    }
    let mut ids = HashSet::new();
    for task in tasks {
        let order = task
            .await
            .expect("task")
            .expect("idempotent create")
            .into_inner()
            .order
            .expect("order");
        ids.insert(order.id);
    }
    assert_eq!(ids.len(), 1, "every racer got the same order");
    assert_eq!(head(&mut events).await, head_before + 1);

    // Eight concurrent creates with one key and eight bodies: one wins, seven ALREADY_EXISTS.
    let head_before = head(&mut events).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut client = orders.clone();
        let req = CreateOrderRequest {
            idempotency_key: "contested-key".into(),
            ..create_req(&format!("cust-{i}"))
        };
        tasks.push(tokio::spawn(async move { client.create_order(req).await }));
    }
    let mut wins = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(_) => wins += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
                assert!(status.message().contains("contested-key"), "{status:?}");
            }
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(head(&mut events).await, head_before + 1);

    let stream = stream_events(&mut events, &order.id).await;
    let versions: Vec<u64> = stream.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, vec![1, 2, 3]);
    let current = get(&mut orders, &order.id).await;
    assert_eq!(current.status(), OrderStatus::Fulfilled);
    assert_eq!(current.version, 3);
    server.stop().await;
}

#[tokio::test]
async fn idempotency_keys_expire_after_the_retention() {
    let server = TestServer::start().await;
    let mut orders = server.orders().await;
    let req = CreateOrderRequest {
        idempotency_key: "short-lived".into(),
        ..create_req("cust-expiry")
    };
    let first = orders
        .create_order(req.clone())
        .await
        .expect("create")
        .into_inner()
        .order
        .expect("order");
    drop(orders);
    let dir = server.stop().await;

    // Restart with a tiny retention: the sweeper runs at start-up and forgets the key, so the
    // same request is a new command.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let server = TestServer::start_in(dir, |cfg| {
        cfg.idempotency_retention = Duration::from_millis(10);
    })
    .await;
    let mut orders = server.orders().await;
    let mut events = server.events().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let second = loop {
        let order = orders
            .create_order(req.clone())
            .await
            .expect("create again")
            .into_inner()
            .order
            .expect("order");
        if order.id != first.id {
            break order;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the key was never forgotten"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(second.version, 1);
    assert_eq!(head(&mut events).await, 2, "exactly one new order");
    // The key is claimed afresh by the new order.
    let replay = orders
        .create_order(req)
        .await
        .expect("replay")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(replay.id, second.id, "the next sweep is a minute away");
    server.stop().await;
}
