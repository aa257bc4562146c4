//! OrderService, black-box over real gRPC: every RPC's happy path, every bad input (code,
//! message and "nothing appended"), the state machine, optimistic concurrency and idempotency.

use std::{collections::HashSet, time::Duration};

use ordo_api::v1::{
    CancelOrderRequest, CreateOrderRequest, Event, GetOrderRequest, ListOrdersRequest, Order,
    OrderCancelled, OrderCreated, OrderStatus, OrderStatusChanged, ReadEventsRequest,
    UpdateOrderStatusRequest, event::Payload, order_event::Kind,
    order_service_client::OrderServiceClient,
};
use ordo_test_harness::TestServer;
use ordo_test_harness::api::*;
use tonic::{Code, transport::Channel};

type Orders = OrderServiceClient<Channel>;

async fn create(orders: &mut Orders, customer: &str) -> Order {
    orders
        .create_order(create_req(customer))
        .await
        .expect("create order")
        .into_inner()
        .order
        .expect("order in response")
}

async fn get(orders: &mut Orders, id: &str) -> Order {
    orders
        .get_order(GetOrderRequest {
            order_id: id.into(),
            at_version: None,
        })
        .await
        .expect("get order")
        .into_inner()
        .order
        .expect("order in response")
}

fn update(id: &str, status: OrderStatus) -> UpdateOrderStatusRequest {
    UpdateOrderStatusRequest {
        order_id: id.into(),
        status: status as i32,
        expected_version: None,
        idempotency_key: String::new(),
    }
}

fn cancel(id: &str, reason: &str) -> CancelOrderRequest {
    CancelOrderRequest {
        order_id: id.into(),
        reason: reason.into(),
        expected_version: None,
        idempotency_key: String::new(),
    }
}

async fn advance(orders: &mut Orders, id: &str, status: OrderStatus) -> Order {
    orders
        .update_order_status(update(id, status))
        .await
        .expect("update status")
        .into_inner()
        .order
        .expect("order in response")
}

/// The events of one order's stream, via ReadEvents with a stream filter.
async fn stream_events(events: &mut Events, order_id: &str) -> Vec<Event> {
    let stream = format!("order-{order_id}");
    read_filtered(events, filter(&[], &[&stream])).await
}

fn order_kind(event: &Event) -> &Kind {
    match &event.payload {
        Some(Payload::Order(payload)) => payload.kind.as_ref().expect("order event kind"),
        other => panic!("order event without an order payload: {other:?}"),
    }
}

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
async fn create_rejects_bad_input_and_appends_nothing() {
    let server = TestServer::start_with(|cfg| cfg.limits.max_items_per_order = 3).await;
    let mut orders = server.orders().await;
    let mut events = server.events().await;

    let ok = create_req("cust");
    let with_items = |items| CreateOrderRequest {
        items,
        ..ok.clone()
    };
    let with_customer = |customer: &str| CreateOrderRequest {
        customer_id: customer.into(),
        ..ok.clone()
    };
    let cases: Vec<(&str, CreateOrderRequest, &str)> = vec![
        (
            "empty customer",
            with_customer(""),
            "customer_id is required",
        ),
        (
            "blank customer",
            with_customer("   "),
            "customer_id is required",
        ),
        (
            "long customer",
            with_customer(&"c".repeat(129)),
            "customer_id is 129 characters; the limit is 128",
        ),
        (
            "control char in customer",
            with_customer("a\nb"),
            "customer_id contains control characters",
        ),
        (
            "no items",
            with_items(vec![]),
            "items must contain at least one",
        ),
        (
            "too many items",
            with_items(vec![item("a", 1, 1, "EUR"); 4]),
            "max_items_per_order) is 3",
        ),
        (
            "quantity 0",
            with_items(vec![item("a", 1, 1, "EUR"), item("b", 0, 1, "EUR")]),
            "items[1].quantity must be at least 1",
        ),
        (
            "empty sku",
            with_items(vec![item("", 1, 1, "EUR")]),
            "items[0].sku is required",
        ),
        (
            "long sku",
            with_items(vec![item(&"s".repeat(129), 1, 1, "EUR")]),
            "items[0].sku is 129 characters",
        ),
        (
            "missing price",
            with_items(vec![ordo_api::v1::LineItem {
                sku: "a".into(),
                quantity: 1,
                unit_price: None,
            }]),
            "items[0].unit_price is required",
        ),
        (
            "negative price",
            with_items(vec![item("a", 1, -1, "EUR")]),
            "items[0].unit_price.amount_minor must not be negative",
        ),
        (
            "lower-case currency",
            with_items(vec![item("a", 1, 1, "eur")]),
            "items[0].unit_price.currency \"eur\"",
        ),
        (
            "four-letter currency",
            with_items(vec![item("a", 1, 1, "EURO")]),
            "items[0].unit_price.currency \"EURO\"",
        ),
        (
            "empty currency",
            with_items(vec![item("a", 1, 1, "")]),
            "items[0].unit_price.currency \"\"",
        ),
        (
            "mixed currencies",
            with_items(vec![
                item("a", 1, 1, "EUR"),
                item("b", 1, 1, "EUR"),
                item("c", 1, 1, "USD"),
            ]),
            "items[2].unit_price.currency is USD but items[0] is EUR",
        ),
        (
            "long idempotency key",
            CreateOrderRequest {
                idempotency_key: "k".repeat(129),
                ..ok.clone()
            },
            "idempotency_key is 129 characters",
        ),
    ];
    for (name, req, needle) in cases {
        let result = orders.create_order(req).await;
        match result {
            Err(status) if status.code() == Code::InvalidArgument => assert!(
                status.message().contains(needle),
                "{name}: message {:?} does not mention {needle:?}",
                status.message()
            ),
            other => panic!("{name}: expected INVALID_ARGUMENT, got {other:?}"),
        }
    }
    assert_eq!(head(&mut events).await, 0, "no rejected create appended");
    let listed = orders
        .list_orders(ListOrdersRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.orders.is_empty(), "no rejected create was projected");

    // The limit itself is allowed.
    let order = orders
        .create_order(with_items(vec![item("a", 1, 1, "EUR"); 3]))
        .await
        .expect("3 items is within the limit")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(order.items.len(), 3);
    server.stop().await;
}

#[tokio::test]
async fn unknown_and_malformed_order_ids() {
    let server = TestServer::start().await;
    let mut orders = server.orders().await;
    let mut events = server.events().await;
    create(&mut orders, "cust").await;
    let head_before = head(&mut events).await;

    let unknown = ulid::Ulid::new().to_string();
    let result = orders
        .get_order(GetOrderRequest {
            order_id: unknown.clone(),
            at_version: None,
        })
        .await;
    assert_status(result, Code::NotFound, &unknown);
    let result = orders
        .update_order_status(update(&unknown, OrderStatus::Paid))
        .await;
    assert_status(result, Code::NotFound, "not found");
    let result = orders.cancel_order(cancel(&unknown, "")).await;
    assert_status(result, Code::NotFound, "not found");

    for bad in ["nope", "", "order-01ARZ3NDEKTSV4RRFFQ69G5FAV", "../../etc"] {
        let result = orders
            .get_order(GetOrderRequest {
                order_id: bad.into(),
                at_version: None,
            })
            .await;
        assert_status(result, Code::InvalidArgument, "order_id");
        let result = orders
            .update_order_status(update(bad, OrderStatus::Paid))
            .await;
        assert_status(result, Code::InvalidArgument, "order_id");
        let result = orders.cancel_order(cancel(bad, "")).await;
        assert_status(result, Code::InvalidArgument, "order_id");
    }
    assert_eq!(head(&mut events).await, head_before);
    server.stop().await;
}

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
async fn list_orders_pages_in_creation_order_and_filters_by_status() {
    let server = TestServer::start().await;
    let mut orders = server.orders().await;
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(create(&mut orders, &format!("cust-{i}")).await.id);
    }
    // 0,1,2 paid; 3 cancelled; 4 fulfilled; 5,6 stay created.
    for id in &created[0..3] {
        advance(&mut orders, id, OrderStatus::Paid).await;
    }
    orders
        .cancel_order(cancel(&created[3], "no"))
        .await
        .expect("cancel");
    advance(&mut orders, &created[4], OrderStatus::Paid).await;
    advance(&mut orders, &created[4], OrderStatus::Fulfilled).await;

    async fn list_all(orders: &mut Orders, status: OrderStatus, page_size: u32) -> Vec<Order> {
        let mut out = Vec::new();
        let mut token = String::new();
        for _ in 0..100 {
            let page = orders
                .list_orders(ListOrdersRequest {
                    page_size,
                    page_token: token.clone(),
                    status: status as i32,
                })
                .await
                .expect("list page")
                .into_inner();
            assert!(page_size == 0 || page.orders.len() <= page_size as usize);
            out.extend(page.orders);
            if page.next_page_token.is_empty() {
                return out;
            }
            token = page.next_page_token;
        }
        panic!("paging did not end");
    }

    let all = list_all(&mut orders, OrderStatus::Unspecified, 3).await;
    let ids: Vec<String> = all.iter().map(|o| o.id.clone()).collect();
    let mut sorted = created.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "every order once, in id order");
    assert_eq!(
        ids, created,
        "ids sort in creation order (ULIDs of sequential creates)"
    );
    // The listing shows current state.
    assert_eq!(all[3].status(), OrderStatus::Cancelled);
    assert_eq!(all[4].version, 3);

    let page = orders
        .list_orders(ListOrdersRequest {
            page_size: 3,
            ..Default::default()
        })
        .await
        .expect("first page")
        .into_inner();
    assert_eq!(page.orders.len(), 3);
    assert_eq!(page.next_page_token, created[2]);
    let exact = list_all(&mut orders, OrderStatus::Unspecified, 7).await;
    assert_eq!(exact.len(), 7, "a full last page ends paging");

    let by_status = |status: OrderStatus| {
        let all = all.clone();
        move || -> Vec<String> {
            all.iter()
                .filter(|o| o.status() == status)
                .map(|o| o.id.clone())
                .collect()
        }
    };
    for status in [
        OrderStatus::Created,
        OrderStatus::Paid,
        OrderStatus::Fulfilled,
        OrderStatus::Cancelled,
        OrderStatus::Delivered,
    ] {
        let listed = list_all(&mut orders, status, 2).await;
        assert!(listed.iter().all(|o| o.status() == status));
        let ids: Vec<String> = listed.into_iter().map(|o| o.id).collect();
        assert_eq!(ids, by_status(status)(), "{status:?}");
    }
    assert_eq!(
        list_all(&mut orders, OrderStatus::Paid, 0).await.len(),
        3,
        "page_size 0 means the default"
    );

    let result = orders
        .list_orders(ListOrdersRequest {
            page_size: 501,
            ..Default::default()
        })
        .await;
    assert_status(result, Code::InvalidArgument, "page_size 501");
    let result = orders
        .list_orders(ListOrdersRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await;
    assert_status(result, Code::InvalidArgument, "page_token");
    let result = orders
        .list_orders(ListOrdersRequest {
            status: 42,
            ..Default::default()
        })
        .await;
    assert_status(result, Code::InvalidArgument, "status 42");
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
        })
        .await
        .expect("read")
        .into_inner();
    assert_eq!(page.events, live, "subscribe and read agree on the event");
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
