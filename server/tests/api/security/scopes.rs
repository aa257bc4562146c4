//! Scopes and restrictions: every RPC needs a valid token with its scope, health and
//! reflection are open unless configured, and a restricted token sees and writes only its
//! event-type and stream prefixes.

use super::*;

#[tokio::test]
async fn every_rpc_needs_a_valid_token_with_its_scope() {
    let lacking: Vec<(Scope, String)> = Scope::ALL
        .iter()
        .map(|s| (*s, format!("lacks-{}", s.as_str().replace(':', "-"))))
        .collect();
    let mut tokens = vec![Tok::new("admin", ADMIN, &Scope::ALL)];
    for (scope, secret) in &lacking {
        tokens.push(Tok {
            scopes: all_but(*scope),
            ..Tok::new(secret, secret, &[])
        });
    }
    let (server, _auth, _dir, _path) = start_with_tokens(&tokens, |_| {}).await;
    let channel = server.channel().await;

    for rpc in ALL_RPCS {
        let before = head(&channel, Some(ADMIN)).await;
        let err = rpc.call(&channel, None).await.expect_err("no token");
        assert_eq!(
            err.code(),
            Code::Unauthenticated,
            "{rpc:?} without token: {err:?}"
        );
        assert!(err.message().contains("missing bearer token"), "{err:?}");

        let err = rpc
            .call(&channel, Some("not-a-token"))
            .await
            .expect_err("bad token");
        assert_eq!(
            err.code(),
            Code::Unauthenticated,
            "{rpc:?} bad token: {err:?}"
        );
        assert!(err.message().contains("invalid bearer token"), "{err:?}");

        let secret = &lacking
            .iter()
            .find(|(s, _)| *s == rpc.scope())
            .expect("token")
            .1;
        let err = rpc
            .call(&channel, Some(secret))
            .await
            .expect_err("no scope");
        assert_eq!(
            err.code(),
            Code::PermissionDenied,
            "{rpc:?} lacking scope: {err:?}"
        );
        assert!(err.message().contains(rpc.scope().as_str()), "{err:?}");

        // No side effect from any refusal.
        assert_eq!(
            head(&channel, Some(ADMIN)).await,
            before,
            "{rpc:?} appended"
        );

        match rpc.call(&channel, Some(ADMIN)).await {
            Ok(()) => {}
            Err(err) => assert!(
                !matches!(
                    err.code(),
                    Code::Unauthenticated | Code::PermissionDenied | Code::Internal
                ),
                "{rpc:?} with the right token: {err:?}"
            ),
        }
    }
}

#[tokio::test]
async fn health_and_reflection_are_open_unless_configured() {
    let tokens = [Tok::new("admin", ADMIN, &Scope::ALL)];
    let (server, _auth, _dir, _path) = start_with_tokens(&tokens, |_| {}).await;
    let mut health = HealthClient::new(server.channel().await);
    health
        .check(HealthCheckRequest::default())
        .await
        .expect("health is open");

    let (closed, _auth, _dir, _path) = start_with_tokens(&tokens, |cfg| {
        cfg.auth.open_health = false;
    })
    .await;
    let mut health = HealthClient::new(closed.channel().await);
    let err = health
        .check(HealthCheckRequest::default())
        .await
        .expect_err("health needs a token");
    assert_eq!(err.code(), Code::Unauthenticated);
    health
        .check(with_token(HealthCheckRequest::default(), Some(ADMIN)))
        .await
        .expect("health with a token");
}

#[tokio::test]
async fn a_restricted_token_sees_and_writes_only_its_prefixes() {
    const PAY: &str = "payments-token-0123456789";
    let tokens = [
        Tok::new("admin", ADMIN, &Scope::ALL),
        Tok {
            event_types: &["payment.*"],
            ..Tok::new(
                "payments",
                PAY,
                &[Scope::EventsPublish, Scope::EventsSubscribe],
            )
        },
    ];
    let (server, _auth, _dir, _path) = start_with_tokens(&tokens, |_| {}).await;
    let channel = server.channel().await;
    let mut events = EventServiceClient::new(channel.clone());
    let mut orders = OrderServiceClient::new(channel.clone());
    orders
        .create_order(with_token(create_req("c-1"), Some(ADMIN)))
        .await
        .expect("order");
    for (stream, ty) in [
        ("payment-1", "payment.confirmed"),
        ("invoice-1", "invoice.sent"),
        ("payment-2", "payment.refunded"),
    ] {
        events
            .publish(with_token(publish_request(stream, ty), Some(ADMIN)))
            .await
            .expect("publish");
    }

    // ReadEvents: no filter, and a filter asking for more than allowed.
    let read = |filter: Option<EventFilter>| {
        let mut events = events.clone();
        async move {
            events
                .read_events(with_token(
                    ReadEventsRequest {
                        filter,
                        ..Default::default()
                    },
                    Some(PAY),
                ))
                .await
                .expect("read")
                .into_inner()
                .events
                .into_iter()
                .map(|e| e.r#type)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(read(None).await, ["payment.confirmed", "payment.refunded"]);
    let wider = EventFilter {
        types: vec![
            "order.*".into(),
            "invoice.*".into(),
            "payment.refunded".into(),
        ],
        stream_ids: vec![],
    };
    assert_eq!(read(Some(wider.clone())).await, ["payment.refunded"]);

    // Subscribe: same, through catch-up and live.
    for filter in [None, Some(wider)] {
        let narrowed = filter.is_some();
        let mut stream = events
            .subscribe(with_token(
                SubscribeRequest {
                    filter,
                    heartbeat_interval_ms: 100,
                    ..Default::default()
                },
                Some(PAY),
            ))
            .await
            .expect("subscribe")
            .into_inner();
        let history = collect_until_caught_up(&mut stream).await;
        let types: Vec<&str> = history.iter().map(|(t, _)| t.as_str()).collect();
        if narrowed {
            // payment-2, and payment-3 from the first round.
            assert_eq!(types, ["payment.refunded", "payment.refunded"]);
        } else {
            assert_eq!(types, ["payment.confirmed", "payment.refunded"]);
        }
        events
            .publish(with_token(
                publish_request("invoice-2", "invoice.sent"),
                Some(ADMIN),
            ))
            .await
            .expect("publish");
        events
            .publish(with_token(
                publish_request("payment-3", "payment.refunded"),
                Some(ADMIN),
            ))
            .await
            .expect("publish");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(
                Instant::now() < deadline,
                "live payment event not delivered"
            );
            let item = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("item")
                .expect("open")
                .expect("ok");
            if let Some(Message::Event(e)) = item.message {
                assert!(e.r#type.starts_with("payment."), "leaked {}", e.r#type);
                if e.stream_id == "payment-3" {
                    break;
                }
            }
        }
    }

    // Publish: inside the prefix works; outside is refused whole, nothing appended.
    events
        .publish(with_token(
            publish_request("payment-9", "payment.ok"),
            Some(PAY),
        ))
        .await
        .expect("own prefix");
    let before = head(&channel, Some(ADMIN)).await;
    let err = events
        .publish(with_token(
            publish_request("invoice-9", "invoice.sent"),
            Some(PAY),
        ))
        .await
        .expect_err("outside prefix");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let mixed = PublishRequest {
        events: vec![
            new_event("payment-9", "payment.ok"),
            new_event("x-1", "x.y"),
        ],
    };
    let err = events
        .publish(with_token(mixed, Some(PAY)))
        .await
        .expect_err("mixed batch");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("events[1]"), "{err:?}");
    assert_eq!(head(&channel, Some(ADMIN)).await, before);
}

#[tokio::test]
async fn a_restricted_token_uses_only_groups_inside_its_prefixes() {
    const SHOP: &str = "shop-token";
    let tokens = [
        Tok::new("admin", ADMIN, &Scope::ALL),
        Tok {
            event_types: &["cart.*"],
            ..Tok::new("shop", SHOP, &[Scope::EventsConsume])
        },
    ];
    let (server, _auth, _dir, _path) = start_with_tokens(&tokens, |_| {}).await;
    let mut groups = ConsumerServiceClient::new(server.channel().await);
    // A group with no filter would hand the token every event: refused, and not created.
    let err = groups
        .create_group(with_token(group_req("all"), Some(SHOP)))
        .await
        .expect_err("unfiltered group");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("reaches beyond"), "{err:?}");
    let inside = ordo_api::v1::CreateGroupRequest {
        filter: Some(EventFilter {
            types: vec!["cart.checked_out".into()],
            stream_ids: vec![],
        }),
        ..group_req("carts")
    };
    groups
        .create_group(with_token(inside, Some(SHOP)))
        .await
        .expect("a group inside the prefixes");
    // An admin's group outside the prefixes is invisible and unusable for the token.
    groups
        .create_group(with_token(group_req("everything"), Some(ADMIN)))
        .await
        .expect("admin group");
    let listed = groups
        .list_groups(with_token(ListGroupsRequest::default(), Some(SHOP)))
        .await
        .expect("list")
        .into_inner();
    let names: Vec<_> = listed.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["carts"]);
    let join = ConsumeRequest {
        message: Some(consume_request::Message::Join(JoinGroup {
            group: "everything".into(),
            ..Default::default()
        })),
    };
    let err = groups
        .consume(with_token(tokio_stream::iter(vec![join]), Some(SHOP)))
        .await
        .expect_err("join outside the prefixes");
    assert_eq!(err.code(), Code::PermissionDenied);
}
