//! Bad input: every invalid create request and malformed id gets its code and message, and
//! nothing is appended.

use super::*;

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
