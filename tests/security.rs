//! Security: bearer tokens and scopes on every RPC, event-type/stream restrictions, token
//! revocation on reload (in-process and by SIGHUP), TLS and mTLS, the loopback rule for dev
//! mode, and the per-token abuse limits.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use ordo_api::v1::{
    CancelOrderRequest, CreateOrderRequest, CreateWebhookRequest, DeleteWebhookRequest,
    EventFilter, GetOrderRequest, GetWebhookRequest, LineItem, ListDeadLettersRequest,
    ListDeliveriesRequest, ListOrdersRequest, ListWebhooksRequest, Money, NewEvent, PublishRequest,
    ReadEventsRequest, RedriveDeadLettersRequest, RotateSecretRequest, StartPosition,
    SubscribeRequest, SubscribeResponse, UpdateOrderStatusRequest, UpdateWebhookRequest,
    event_service_client::EventServiceClient, order_service_client::OrderServiceClient,
    start_position::Position, subscribe_response::Message,
    webhook_service_client::WebhookServiceClient,
};
use ordo_server::{
    ServerConfig,
    auth::{Auth, Scope, hash_token},
    config::TlsConfig,
};
use ordo_test_harness::{
    ChildServer, TestServer, free_port,
    pki::{Pki, pki, write_pem},
    tokens::{Tok, with_token, write_tokens},
};
use tempfile::TempDir;
use tokio_stream::StreamExt;
use tonic::{
    Code, Request, Status, Streaming,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

// ---------------------------------------------------------------------------------------------
// Tokens

/// A server with auth on; returns it, the reload handle and the tokens file path.
async fn start_with_tokens(
    tokens: &[Tok<'_>],
    configure: impl FnOnce(&mut ServerConfig),
) -> (TestServer, Auth, TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tokens.toml");
    write_tokens(&path, tokens);
    let auth = Auth::load(&path).expect("load tokens");
    let server = TestServer::start_with_auth(auth.clone(), configure).await;
    (server, auth, dir, path)
}

// ---------------------------------------------------------------------------------------------
// Every RPC

#[derive(Debug, Clone, Copy)]
enum Rpc {
    CreateOrder,
    GetOrder,
    ListOrders,
    UpdateOrderStatus,
    CancelOrder,
    Subscribe,
    ReadEvents,
    Publish,
    CreateWebhook,
    GetWebhook,
    ListWebhooks,
    UpdateWebhook,
    DeleteWebhook,
    RotateSecret,
    ListDeliveries,
    ListDeadLetters,
    RedriveDeadLetters,
}

const ALL_RPCS: [Rpc; 17] = [
    Rpc::CreateOrder,
    Rpc::GetOrder,
    Rpc::ListOrders,
    Rpc::UpdateOrderStatus,
    Rpc::CancelOrder,
    Rpc::Subscribe,
    Rpc::ReadEvents,
    Rpc::Publish,
    Rpc::CreateWebhook,
    Rpc::GetWebhook,
    Rpc::ListWebhooks,
    Rpc::UpdateWebhook,
    Rpc::DeleteWebhook,
    Rpc::RotateSecret,
    Rpc::ListDeliveries,
    Rpc::ListDeadLetters,
    Rpc::RedriveDeadLetters,
];

impl Rpc {
    fn scope(self) -> Scope {
        match self {
            Rpc::CreateOrder | Rpc::UpdateOrderStatus | Rpc::CancelOrder => Scope::OrdersWrite,
            Rpc::GetOrder | Rpc::ListOrders => Scope::OrdersRead,
            Rpc::Subscribe | Rpc::ReadEvents => Scope::EventsSubscribe,
            Rpc::Publish => Scope::EventsPublish,
            _ => Scope::WebhooksAdmin,
        }
    }

    /// Calls the RPC with a plausible request; `Ok` when the server accepted the call.
    async fn call(self, channel: &Channel, token: Option<&str>) -> Result<(), Status> {
        let mut orders = OrderServiceClient::new(channel.clone());
        let mut events = EventServiceClient::new(channel.clone());
        let mut hooks = WebhookServiceClient::new(channel.clone());
        let t = token;
        let missing = "01ARZ3NDEKTSV4RRFFQ69G5FAV".to_string();
        match self {
            Rpc::CreateOrder => orders
                .create_order(with_token(order_request("c-1"), t))
                .await
                .map(drop),
            Rpc::GetOrder => orders
                .get_order(with_token(
                    GetOrderRequest {
                        order_id: missing,
                        at_version: None,
                    },
                    t,
                ))
                .await
                .map(drop),
            Rpc::ListOrders => orders
                .list_orders(with_token(ListOrdersRequest::default(), t))
                .await
                .map(drop),
            Rpc::UpdateOrderStatus => orders
                .update_order_status(with_token(
                    UpdateOrderStatusRequest {
                        order_id: missing,
                        status: 2,
                        ..Default::default()
                    },
                    t,
                ))
                .await
                .map(drop),
            Rpc::CancelOrder => orders
                .cancel_order(with_token(
                    CancelOrderRequest {
                        order_id: missing,
                        ..Default::default()
                    },
                    t,
                ))
                .await
                .map(drop),
            Rpc::Subscribe => events
                .subscribe(with_token(SubscribeRequest::default(), t))
                .await
                .map(drop),
            Rpc::ReadEvents => events
                .read_events(with_token(ReadEventsRequest::default(), t))
                .await
                .map(drop),
            Rpc::Publish => events
                .publish(with_token(publish_request("misc-1", "misc.happened"), t))
                .await
                .map(drop),
            Rpc::CreateWebhook => hooks
                .create_webhook(with_token(
                    CreateWebhookRequest {
                        url: "http://127.0.0.1:9/hook".into(),
                        ..Default::default()
                    },
                    t,
                ))
                .await
                .map(drop),
            Rpc::GetWebhook => hooks
                .get_webhook(with_token(GetWebhookRequest { id: missing }, t))
                .await
                .map(drop),
            Rpc::ListWebhooks => hooks
                .list_webhooks(with_token(ListWebhooksRequest::default(), t))
                .await
                .map(drop),
            Rpc::UpdateWebhook => hooks
                .update_webhook(with_token(
                    UpdateWebhookRequest {
                        id: missing,
                        ..Default::default()
                    },
                    t,
                ))
                .await
                .map(drop),
            Rpc::DeleteWebhook => hooks
                .delete_webhook(with_token(DeleteWebhookRequest { id: missing }, t))
                .await
                .map(drop),
            Rpc::RotateSecret => hooks
                .rotate_secret(with_token(
                    RotateSecretRequest {
                        id: missing,
                        ..Default::default()
                    },
                    t,
                ))
                .await
                .map(drop),
            Rpc::ListDeliveries => hooks
                .list_deliveries(with_token(
                    ListDeliveriesRequest {
                        webhook_id: missing,
                        ..Default::default()
                    },
                    t,
                ))
                .await
                .map(drop),
            Rpc::ListDeadLetters => hooks
                .list_dead_letters(with_token(
                    ListDeadLettersRequest {
                        webhook_id: missing,
                        ..Default::default()
                    },
                    t,
                ))
                .await
                .map(drop),
            Rpc::RedriveDeadLetters => hooks
                .redrive_dead_letters(with_token(
                    RedriveDeadLettersRequest {
                        webhook_id: missing,
                        ..Default::default()
                    },
                    t,
                ))
                .await
                .map(drop),
        }
    }
}

fn order_request(customer: &str) -> CreateOrderRequest {
    CreateOrderRequest {
        customer_id: customer.into(),
        items: vec![LineItem {
            sku: "sku-1".into(),
            quantity: 1,
            unit_price: Some(Money {
                amount_minor: 100,
                currency: "EUR".into(),
            }),
        }],
        idempotency_key: String::new(),
    }
}

fn publish_request(stream: &str, ty: &str) -> PublishRequest {
    PublishRequest {
        events: vec![new_event(stream, ty)],
    }
}

fn new_event(stream: &str, ty: &str) -> NewEvent {
    NewEvent {
        stream_id: stream.into(),
        r#type: ty.into(),
        data: b"{}".to_vec(),
        ..Default::default()
    }
}

async fn head(channel: &Channel, token: Option<&str>) -> u64 {
    EventServiceClient::new(channel.clone())
        .read_events(with_token(
            ReadEventsRequest {
                start: Some(StartPosition {
                    position: Some(Position::End(true)),
                }),
                ..Default::default()
            },
            token,
        ))
        .await
        .expect("read head")
        .into_inner()
        .head_offset
}

const ADMIN: &str = "admin-token-0123456789abcdef";

fn all_but(scope: Scope) -> Vec<Scope> {
    Scope::ALL.into_iter().filter(|s| *s != scope).collect()
}

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

// ---------------------------------------------------------------------------------------------
// Prefix restrictions

async fn collect_until_caught_up(
    stream: &mut Streaming<SubscribeResponse>,
) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("stream item in time")
            .expect("stream open")
            .expect("no error");
        match item.message {
            Some(Message::Event(e)) => seen.push((e.r#type, e.stream_id)),
            Some(Message::CaughtUp(_)) => return seen,
            _ => {}
        }
    }
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
        .create_order(with_token(order_request("c-1"), Some(ADMIN)))
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

// ---------------------------------------------------------------------------------------------
// Revocation

async fn expect_unauthenticated_end(stream: &mut Streaming<SubscribeResponse>, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let item = tokio::time::timeout(left, stream.next())
            .await
            .expect("stream ended in time");
        match item {
            Some(Ok(_)) => continue,
            Some(Err(status)) => {
                assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
                assert!(status.message().contains("revoked"), "{status:?}");
                return;
            }
            None => panic!("stream ended without a status"),
        }
    }
}

#[tokio::test]
async fn reload_revokes_open_streams_and_new_calls() {
    const GONE: &str = "to-be-revoked-token-01234";
    const STAYS: &str = "stays-token-0123456789abc";
    let v1 = [
        Tok::new("gone", GONE, &[Scope::EventsSubscribe]),
        Tok::new("stays", STAYS, &[Scope::EventsSubscribe]),
    ];
    let (server, auth, _dir, path) = start_with_tokens(&v1, |_| {}).await;
    let channel = server.channel().await;
    let mut events = EventServiceClient::new(channel.clone());
    let subscribe = |token: &'static str| {
        let mut events = events.clone();
        async move {
            let mut stream = events
                .subscribe(with_token(
                    SubscribeRequest {
                        heartbeat_interval_ms: 100,
                        ..Default::default()
                    },
                    Some(token),
                ))
                .await
                .expect("subscribe")
                .into_inner();
            collect_until_caught_up(&mut stream).await;
            stream
        }
    };
    let mut doomed = subscribe(GONE).await;
    let mut kept = subscribe(STAYS).await;

    // A bad file keeps the old tokens.
    std::fs::write(&path, "this is not toml [[").expect("write");
    assert!(auth.reload().is_err());
    events
        .read_events(with_token(ReadEventsRequest::default(), Some(GONE)))
        .await
        .expect("old tokens still valid");

    write_tokens(
        &path,
        &[Tok::new("stays", STAYS, &[Scope::EventsSubscribe])],
    );
    let started = Instant::now();
    assert_eq!(auth.reload().expect("reload"), 1);
    expect_unauthenticated_end(&mut doomed, Duration::from_secs(2)).await;
    eprintln!("revoked stream ended after {:?}", started.elapsed());

    // The other stream goes on (heartbeats keep coming).
    let item = tokio::time::timeout(Duration::from_secs(2), kept.next())
        .await
        .expect("kept stream alive")
        .expect("open");
    assert!(item.is_ok(), "{item:?}");
    let err = events
        .read_events(with_token(ReadEventsRequest::default(), Some(GONE)))
        .await
        .expect_err("revoked");
    assert_eq!(err.code(), Code::Unauthenticated);

    // Narrowing a token's grant also ends its streams (it no longer grants what it did).
    write_tokens(&path, &[Tok::new("stays", STAYS, &[Scope::EventsPublish])]);
    auth.reload().expect("reload");
    expect_unauthenticated_end(&mut kept, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn sighup_reloads_the_tokens_file_of_the_binary() {
    const GONE: &str = "sighup-revoked-token-0123";
    let data = tempfile::tempdir().expect("dir");
    let tokens_dir = tempfile::tempdir().expect("dir");
    let path = tokens_dir.path().join("tokens.toml");
    write_tokens(&path, &[Tok::new("gone", GONE, &[Scope::EventsSubscribe])]);
    let server = ChildServer::start(
        data.path(),
        None,
        &["--auth-tokens", path.to_str().expect("utf-8 path")],
    )
    .await;
    let channel = Channel::from_shared(server.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut stream = EventServiceClient::new(channel)
        .subscribe(with_token(
            SubscribeRequest {
                heartbeat_interval_ms: 100,
                ..Default::default()
            },
            Some(GONE),
        ))
        .await
        .expect("subscribe")
        .into_inner();
    collect_until_caught_up(&mut stream).await;
    write_tokens(&path, &[]);
    let status = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
    expect_unauthenticated_end(&mut stream, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn tokens_never_appear_in_the_log() {
    const SECRET: &str = "never-log-me-0123456789abcdef";
    const WRONG: &str = "wrong-never-log-me-987654321";
    let data = tempfile::tempdir().expect("dir");
    let tokens_dir = tempfile::tempdir().expect("dir");
    let path = tokens_dir.path().join("tokens.toml");
    write_tokens(
        &path,
        &[Tok::new("reader", SECRET, &[Scope::EventsSubscribe])],
    );
    let port = free_port();
    let mut child = Command::new(ordo_test_harness::server_binary())
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data.path())
        .arg("--auth-tokens")
        .arg(&path)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut events = EventServiceClient::new(channel);
    events
        .read_events(with_token(ReadEventsRequest::default(), Some(SECRET)))
        .await
        .expect("valid token");
    for _ in 0..3 {
        let err = events
            .read_events(with_token(ReadEventsRequest::default(), Some(WRONG)))
            .await
            .expect_err("wrong token");
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    let err = events
        .publish(with_token(publish_request("s-1", "t.x"), Some(SECRET)))
        .await
        .expect_err("no scope");
    assert_eq!(err.code(), Code::PermissionDenied);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let output = tokio::task::spawn_blocking(move || {
        let _ = child.try_wait();
        child.wait_with_output()
    })
    .await
    .expect("join")
    .expect("output");
    let log = String::from_utf8_lossy(&output.stderr).to_string()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(
        log.contains("request rejected"),
        "rejections are logged: {log}"
    );
    assert!(log.contains("reader"), "the token's name is logged");
    for secret in [SECRET, WRONG] {
        assert!(!log.contains(secret), "a token leaked into the log");
        assert!(
            !log.contains(&hash_token(secret)),
            "a token hash leaked into the log"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Dev mode and the loopback rule

#[test]
fn non_loopback_without_auth_refuses_to_start() {
    let data = tempfile::tempdir().expect("dir");
    let port = free_port();
    let output = Command::new(ordo_test_harness::server_binary())
        .args(["--listen", &format!("0.0.0.0:{port}"), "--data-dir"])
        .arg(data.path())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run ordo-server");
    assert!(!output.status.success(), "it started");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to serve without authentication"),
        "stderr: {stderr}"
    );
}

#[tokio::test]
async fn non_loopback_starts_with_insecure_or_with_tokens() {
    let data = tempfile::tempdir().expect("dir");
    let tokens_dir = tempfile::tempdir().expect("dir");
    let path = tokens_dir.path().join("tokens.toml");
    write_tokens(&path, &[Tok::new("admin", ADMIN, &Scope::ALL)]);
    for args in [
        vec!["--insecure".to_string()],
        vec!["--auth-tokens".to_string(), path.display().to_string()],
    ] {
        let port = free_port();
        let mut child = Command::new(ordo_test_harness::server_binary())
            .args(["--listen", &format!("0.0.0.0:{port}"), "--data-dir"])
            .arg(data.path())
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                child.try_wait().expect("wait").is_none(),
                "exited with {args:?}"
            );
            assert!(Instant::now() < deadline, "did not start with {args:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// TLS and mTLS

async fn start_tls(pki: &Pki, dir: &Path, mutual: bool) -> TestServer {
    let tls = TlsConfig {
        cert: write_pem(dir, "server.pem", &pki.server_cert),
        key: write_pem(dir, "server.key", &pki.server_key),
        client_ca: mutual.then(|| write_pem(dir, "ca.pem", &pki.ca_pem)),
    };
    TestServer::start_with(move |cfg| cfg.tls = Some(tls)).await
}

/// One ReadEvents over TLS with the given trust root and client identity.
async fn tls_call(
    server: &TestServer,
    ca: &str,
    identity: Option<(&str, &str)>,
) -> Result<(), String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let endpoint = Channel::from_shared(format!("https://localhost:{}", server.addr.port()))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    EventServiceClient::new(channel)
        .read_events(ReadEventsRequest::default())
        .await
        .map(drop)
        .map_err(|e| format!("call: {e}"))
}

#[tokio::test]
async fn tls_accepts_the_right_ca_and_refuses_others() {
    let pki = pki();
    let other = self::pki();
    let dir = tempfile::tempdir().expect("dir");
    let server = start_tls(&pki, dir.path(), false).await;
    tls_call(&server, &pki.ca_pem, None)
        .await
        .expect("trusted ca");
    let err = tls_call(&server, &other.ca_pem, None)
        .await
        .expect_err("untrusted server cert");
    eprintln!("wrong ca: {err}");
    // Plaintext against the TLS port fails too.
    let plain = Channel::from_shared(server.url())
        .expect("url")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(channel) = plain {
        let res = tokio::time::timeout(
            Duration::from_secs(10),
            EventServiceClient::new(channel).read_events(ReadEventsRequest::default()),
        )
        .await;
        assert!(!matches!(res, Ok(Ok(_))), "plaintext call succeeded");
    }
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_from_the_ca() {
    let pki = pki();
    let other = self::pki();
    let dir = tempfile::tempdir().expect("dir");
    let server = start_tls(&pki, dir.path(), true).await;
    tls_call(
        &server,
        &pki.ca_pem,
        Some((&pki.client_cert, &pki.client_key)),
    )
    .await
    .expect("client cert from the ca");
    let err = tls_call(&server, &pki.ca_pem, None)
        .await
        .expect_err("no client cert");
    eprintln!("no client cert: {err}");
    let err = tls_call(
        &server,
        &pki.ca_pem,
        Some((&other.client_cert, &other.client_key)),
    )
    .await
    .expect_err("client cert from another ca");
    eprintln!("foreign client cert: {err}");
}

#[tokio::test]
async fn tls_and_tokens_together() {
    let pki = pki();
    let dir = tempfile::tempdir().expect("dir");
    let tokens = dir.path().join("tokens.toml");
    write_tokens(&tokens, &[Tok::new("admin", ADMIN, &Scope::ALL)]);
    let tls = TlsConfig {
        cert: write_pem(dir.path(), "server.pem", &pki.server_cert),
        key: write_pem(dir.path(), "server.key", &pki.server_key),
        client_ca: None,
    };
    let server = TestServer::start_with(move |cfg| {
        cfg.tls = Some(tls);
        cfg.auth.tokens_file = Some(tokens);
    })
    .await;
    let channel = Channel::from_shared(format!("https://localhost:{}", server.addr.port()))
        .expect("url")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&pki.ca_pem))
                .domain_name("localhost"),
        )
        .expect("tls")
        .connect()
        .await
        .expect("connect");
    let mut events = EventServiceClient::new(channel);
    let err = events
        .read_events(ReadEventsRequest::default())
        .await
        .expect_err("token needed over tls too");
    assert_eq!(err.code(), Code::Unauthenticated);
    events
        .publish(with_token(publish_request("tls-1", "tls.ok"), Some(ADMIN)))
        .await
        .expect("publish over tls with token");
}

// ---------------------------------------------------------------------------------------------
// Abuse limits

#[tokio::test]
async fn appends_are_rate_limited_per_token_with_retry_info() {
    const A: &str = "rate-a-token-0123456789";
    const B: &str = "rate-b-token-0123456789";
    let tokens = [Tok::new("a", A, &Scope::ALL), Tok::new("b", B, &Scope::ALL)];
    let (server, _auth, _dir, _path) = start_with_tokens(&tokens, |cfg| {
        cfg.limits.append_rate_per_token = 1;
        cfg.limits.append_burst_per_token = 2;
    })
    .await;
    let channel = server.channel().await;
    let mut events = EventServiceClient::new(channel.clone());
    let mut orders = OrderServiceClient::new(channel.clone());
    events
        .publish(with_token(publish_request("r-1", "r.x"), Some(A)))
        .await
        .expect("1st");
    orders
        .create_order(with_token(order_request("c"), Some(A)))
        .await
        .expect("2nd (order commands share the bucket)");
    let before = head(&channel, Some(A)).await;
    let err = events
        .publish(with_token(publish_request("r-1", "r.x"), Some(A)))
        .await
        .expect_err("3rd");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let retry: u64 = err
        .metadata()
        .get("retry-after-ms")
        .expect("retry-after-ms")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("number");
    assert!((1..=1000).contains(&retry), "retry-after-ms {retry}");
    assert_eq!(head(&channel, Some(A)).await, before, "nothing appended");
    // Reads are not appends; another token has its own bucket.
    head(&channel, Some(A)).await;
    events
        .publish(with_token(publish_request("r-2", "r.x"), Some(B)))
        .await
        .expect("token b unaffected");
    tokio::time::sleep(Duration::from_millis(retry + 50)).await;
    events
        .publish(with_token(publish_request("r-1", "r.x"), Some(A)))
        .await
        .expect("after the wait");
}

#[tokio::test]
async fn open_subscriptions_are_capped_per_token() {
    const A: &str = "streams-a-token-0123456";
    const B: &str = "streams-b-token-0123456";
    let tokens = [
        Tok::new("a", A, &[Scope::EventsSubscribe]),
        Tok::new("b", B, &[Scope::EventsSubscribe]),
    ];
    let (server, _auth, _dir, _path) = start_with_tokens(&tokens, |cfg| {
        cfg.limits.max_subscriptions_per_token = 2;
    })
    .await;
    let mut events = EventServiceClient::new(server.channel().await);
    let open = |token: &'static str| {
        let mut events = events.clone();
        async move {
            events
                .subscribe(with_token(SubscribeRequest::default(), Some(token)))
                .await
                .map(|r| r.into_inner())
        }
    };
    let first = open(A).await.expect("1");
    let _second = open(A).await.expect("2");
    let err = open(A).await.expect_err("3 is over the cap");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("max_subscriptions_per_token"),
        "{err:?}"
    );
    open(B).await.expect("other token has its own slots");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match open(A).await {
            Ok(_) => break,
            Err(err) if Instant::now() < deadline => {
                assert_eq!(err.code(), Code::ResourceExhausted);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("slot not freed: {err:?}"),
        }
    }
    events
        .read_events(with_token(ReadEventsRequest::default(), Some(A)))
        .await
        .expect("reads are not streams");
}

#[tokio::test]
async fn oversized_requests_are_refused_and_counted() {
    let server = TestServer::start_with(|cfg| cfg.limits.max_message_bytes = 1024).await;
    let before = ordo_server::auth::Rejection::Oversized.count();
    let mut request = publish_request("big-1", "big.x");
    request.events[0].data = vec![0u8; 4096];
    let err = server
        .events()
        .await
        .publish(request)
        .await
        .expect_err("over the limit");
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(ordo_server::auth::Rejection::Oversized.count() > before);
}

#[tokio::test]
async fn concurrent_streams_per_connection_are_capped() {
    let server = TestServer::start_with(|cfg| {
        cfg.limits.max_concurrent_streams_per_connection = 2;
    })
    .await;
    let channel = server.channel().await;
    let mut events = EventServiceClient::new(channel.clone());
    let mut streams = Vec::new();
    for _ in 0..2 {
        streams.push(
            events
                .subscribe(SubscribeRequest::default())
                .await
                .expect("subscribe")
                .into_inner(),
        );
    }
    // A third call on the same connection waits for a free HTTP/2 stream.
    let mut request = Request::new(ReadEventsRequest::default());
    request.set_timeout(Duration::from_millis(500));
    let waited = tokio::time::timeout(Duration::from_secs(1), events.read_events(request)).await;
    assert!(
        !matches!(waited, Ok(Ok(_))),
        "third stream was served: {waited:?}"
    );
    // Another connection is not affected, and closing a stream frees its slot.
    server
        .events()
        .await
        .read_events(ReadEventsRequest::default())
        .await
        .expect("other connection");
    streams.pop();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut request = Request::new(ReadEventsRequest::default());
        request.set_timeout(Duration::from_millis(500));
        match events.read_events(request).await {
            Ok(_) => break,
            Err(err) => assert!(Instant::now() < deadline, "slot not freed: {err:?}"),
        }
    }
}

#[tokio::test]
async fn request_timeout_does_not_end_long_lived_subscriptions() {
    let server = TestServer::start_with(|cfg| {
        cfg.limits.request_timeout = Some(Duration::from_millis(200));
    })
    .await;
    let mut stream = server
        .events()
        .await
        .subscribe(SubscribeRequest {
            heartbeat_interval_ms: 100,
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    let until = Instant::now() + Duration::from_millis(1200);
    let mut beats = 0;
    while Instant::now() < until {
        let item = tokio::time::timeout(Duration::from_secs(2), stream.next())
            .await
            .expect("item")
            .expect("open")
            .expect("no timeout status");
        if matches!(item.message, Some(Message::Heartbeat(_))) {
            beats += 1;
        }
    }
    assert!(beats >= 5, "{beats} heartbeats");
}

// ---------------------------------------------------------------------------------------------
// Cost of auth + TLS

/// CPU time used by this process so far (user + system), from /proc: less sensitive than
/// throughput to other load on a shared machine.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the `(comm)`: state is field 3; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Clock ticks are 1/100 s on Linux.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Appends per second with `clients` concurrent connections for `run`, and p50/p99 latency.
async fn append_rate(
    channels: Vec<Channel>,
    token: Option<&'static str>,
    run: Duration,
) -> (f64, Duration, Duration) {
    let deadline = Instant::now() + run;
    let mut tasks = Vec::new();
    for (c, channel) in channels.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut events = EventServiceClient::new(channel);
            let mut latencies = Vec::new();
            let stream = format!("bench-{c}");
            while Instant::now() < deadline {
                let started = Instant::now();
                let mut request = PublishRequest {
                    events: vec![new_event(&stream, "bench.appended")],
                };
                request.events[0].data = vec![7u8; 256];
                events
                    .publish(with_token(request, token))
                    .await
                    .expect("publish");
                latencies.push(started.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("client task"));
    }
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    (all.len() as f64 / run.as_secs_f64(), pct(0.50), pct(0.99))
}

/// Run with `cargo test --release -p ordo-server --test security -- --ignored --nocapture
/// throughput`: plaintext without auth against auth only, TLS only and TLS + bearer token,
/// 16 clients on 16 connections, in one run, alternating rounds to even out machine noise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check: run by hand in release"]
async fn throughput_cost_of_auth_and_tls() {
    const CLIENTS: usize = 16;
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let run = Duration::from_secs(env("ORDO_BENCH_SECS", 5));
    let rounds = env("ORDO_BENCH_ROUNDS", 2);
    let pki = pki();
    let dir = tempfile::tempdir().expect("dir");
    let tokens = dir.path().join("tokens.toml");
    write_tokens(&tokens, &[Tok::new("bench", ADMIN, &Scope::ALL)]);
    let cert = write_pem(dir.path(), "server.pem", &pki.server_cert);
    let key = write_pem(dir.path(), "server.key", &pki.server_key);
    let modes = [(false, false), (true, false), (false, true), (true, true)];
    for sync in [
        ordo_server::store::SyncMode::Fdatasync,
        ordo_server::store::SyncMode::NoFsyncUnsafe,
    ] {
        let mut totals = [0.0f64; 4];
        let mut cpu = [(Duration::ZERO, 0.0f64); 4];
        for round in 0..rounds {
            for (m, (auth, tls)) in modes.into_iter().enumerate() {
                let tokens = tokens.clone();
                let tls_files = TlsConfig {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: None,
                };
                let server = TestServer::start_with(move |cfg| {
                    cfg.sync = sync;
                    cfg.limits.append_rate_per_token = 0;
                    if auth {
                        cfg.auth.tokens_file = Some(tokens);
                    }
                    if tls {
                        cfg.tls = Some(tls_files);
                    }
                })
                .await;
                let mut channels = Vec::new();
                for _ in 0..CLIENTS {
                    let channel = if tls {
                        Channel::from_shared(format!("https://localhost:{}", server.addr.port()))
                            .expect("url")
                            .tls_config(
                                ClientTlsConfig::new()
                                    .ca_certificate(Certificate::from_pem(&pki.ca_pem))
                                    .domain_name("localhost"),
                            )
                            .expect("tls")
                            .connect()
                            .await
                            .expect("connect")
                    } else {
                        server.channel().await
                    };
                    channels.push(channel);
                }
                let token = auth.then_some(ADMIN);
                let cpu_before = process_cpu();
                let (rate, p50, p99) = append_rate(channels, token, run).await;
                cpu[m].0 += process_cpu().saturating_sub(cpu_before);
                cpu[m].1 += rate * run.as_secs_f64();
                totals[m] += rate;
                println!(
                    "round {round} {sync:?} auth={auth} tls={tls}: {rate:.0} appends/s, p50 {p50:?}, p99 {p99:?}"
                );
            }
        }
        let base = totals[0];
        for (m, (auth, tls)) in modes.into_iter().enumerate() {
            let per_append = cpu[m].0.as_secs_f64() * 1e6 / cpu[m].1.max(1.0);
            println!(
                "SUMMARY {sync:?} auth={auth} tls={tls}: {:.0} appends/s mean, {:+.1}% vs plaintext no-auth; {per_append:.0} us CPU per append (client + server) ({CLIENTS} clients, {rounds} x {run:?})",
                totals[m] / rounds as f64,
                (totals[m] / base - 1.0) * 100.0
            );
        }
    }
}
