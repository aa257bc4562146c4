//! The Rust client library against a real server: typed errors, cursor files, and the
//! self-resuming subscription across `kill -9` restarts of the real `ordo-server` binary.

use std::{collections::HashSet, time::Duration};

use ordo_client::{
    BackoffPolicy, ClientError, Health, OrdoClient, Start, SubscribeOptions, SubscriptionItem,
    TlsOptions,
    v1::{
        CancelOrderRequest, CreateOrderRequest, LineItem, Money, NewEvent, OrderStatus,
        UpdateOrderStatusRequest,
    },
};
use ordo_test_harness::{ChildServer, TestServer};
use tokio_stream::StreamExt;

fn new_event(stream: &str, kind: &str, id: String) -> NewEvent {
    NewEvent {
        stream_id: stream.into(),
        r#type: kind.into(),
        id,
        data: b"{}".to_vec(),
        datacontenttype: "application/json".into(),
        ..Default::default()
    }
}

fn order_request(quantity: u32) -> CreateOrderRequest {
    CreateOrderRequest {
        customer_id: "cust-1".into(),
        items: vec![LineItem {
            sku: "sku-1".into(),
            quantity,
            unit_price: Some(Money {
                amount_minor: 250,
                currency: "EUR".into(),
            }),
        }],
        idempotency_key: String::new(),
    }
}

fn fast_backoff() -> BackoffPolicy {
    BackoffPolicy {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(300),
    }
}

#[tokio::test]
async fn typed_errors_keep_the_server_message() {
    let server = TestServer::start().await;
    let client = OrdoClient::builder(server.url())
        .bearer_token("not-checked-yet")
        .connect()
        .await
        .expect("connect");
    assert_eq!(client.health("").await.expect("health"), Health::Serving);

    match client.get_order("01ARZ3NDEKTSV4RRFFQ69G5FAV", None).await {
        Err(ClientError::NotFound(message)) => assert!(!message.is_empty()),
        other => panic!("expected NotFound, got {other:?}"),
    }
    match client.create_order(order_request(0)).await {
        Err(ClientError::InvalidArgument(message)) => {
            assert!(message.contains("quantity"), "{message}")
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    let order = client.create_order(order_request(2)).await.expect("create");
    assert_eq!(order.version, 1);
    let stale = client
        .update_order_status(UpdateOrderStatusRequest {
            order_id: order.id.clone(),
            status: OrderStatus::Paid as i32,
            expected_version: Some(7),
            idempotency_key: String::new(),
        })
        .await;
    assert!(matches!(stale, Err(ClientError::Conflict(_))), "{stale:?}");
    let jump = client
        .update_order_status(UpdateOrderStatusRequest {
            order_id: order.id.clone(),
            status: OrderStatus::Delivered as i32,
            expected_version: None,
            idempotency_key: String::new(),
        })
        .await;
    assert!(
        matches!(jump, Err(ClientError::FailedPrecondition(_))),
        "{jump:?}"
    );
    let cancelled = client
        .cancel_order(CancelOrderRequest {
            order_id: order.id.clone(),
            reason: "test".into(),
            expected_version: None,
            idempotency_key: String::new(),
        })
        .await
        .expect("cancel");
    assert_eq!(cancelled.status, OrderStatus::Cancelled as i32);
}

#[tokio::test]
async fn connect_and_config_errors_are_clear() {
    let port = ordo_test_harness::free_port();
    let err = OrdoClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .expect_err("nothing listens there");
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains(&port.to_string()), "{err}");
    assert!(err.is_retryable());

    let tls = OrdoClient::builder("http://127.0.0.1:1")
        .tls(TlsOptions::default())
        .connect()
        .await
        .expect_err("tls is not supported yet");
    assert!(matches!(tls, ClientError::Config(_)), "{tls:?}");
    let bad_token = OrdoClient::builder("http://127.0.0.1:1")
        .bearer_token("line\nbreak")
        .lazy(true)
        .connect()
        .await
        .expect_err("bad token");
    assert!(matches!(bad_token, ClientError::Config(_)), "{bad_token:?}");
}

#[tokio::test]
async fn cursor_file_resumes_exactly_after_the_last_processed_event() {
    let server = TestServer::start().await;
    let client = OrdoClient::connect(server.url()).await.expect("connect");
    let events = (0..10)
        .map(|i| new_event("cursor-1", "test.tick", format!("tick-{i}")))
        .collect();
    client.publish(events).await.expect("publish");
    let dir = tempfile::tempdir().expect("temp dir");
    let cursor = dir.path().join("cursor");
    let options = || SubscribeOptions::new().cursor_file(&cursor);

    let mut first = client.subscribe(options()).expect("subscribe");
    let mut seen = Vec::new();
    while seen.len() < 4 {
        if let Some(Ok(SubscriptionItem::Event(event))) = first.next().await {
            seen.push(event.offset);
        }
    }
    first.commit().expect("commit");
    drop(first);
    assert_eq!(
        std::fs::read_to_string(&cursor).expect("cursor").trim(),
        "4"
    );

    let mut second = client.subscribe(options()).expect("resubscribe");
    loop {
        match second.next().await.expect("item").expect("ok") {
            SubscriptionItem::Event(event) => seen.push(event.offset),
            SubscriptionItem::CaughtUp { .. } => break,
            _ => {}
        }
    }
    assert_eq!(seen, (1..=10).collect::<Vec<u64>>());
    second.commit().expect("commit");
    assert_eq!(
        std::fs::read_to_string(&cursor).expect("cursor").trim(),
        "10"
    );
}

#[tokio::test]
async fn sparse_filter_advances_its_position_without_matches() {
    let server = TestServer::start().await;
    let client = OrdoClient::connect(server.url()).await.expect("connect");
    let events = (0..20)
        .map(|i| new_event("noise-1", "noise.tick", format!("n-{i}")))
        .collect();
    client.publish(events).await.expect("publish");
    let mut sub = client
        .subscribe(
            SubscribeOptions::new()
                .event_type("rare.*")
                .heartbeat(Duration::from_millis(100)),
        )
        .expect("subscribe");
    match sub.next().await.expect("item").expect("ok") {
        SubscriptionItem::CaughtUp { head_offset } => assert_eq!(head_offset, 20),
        other => panic!("expected caught_up, got {other:?}"),
    }
    assert_eq!(sub.position(), Some(20));
    match sub.next().await.expect("item").expect("ok") {
        SubscriptionItem::Heartbeat { scanned_offset, .. } => assert_eq!(scanned_offset, 20),
        other => panic!("expected heartbeat, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_filter_ends_the_subscription_with_a_typed_error() {
    let server = TestServer::start().await;
    let client = OrdoClient::connect(server.url()).await.expect("connect");
    let mut sub = client
        .subscribe(SubscribeOptions::new().event_type("bad type!"))
        .expect("subscribe");
    match sub.next().await {
        Some(Err(ClientError::InvalidArgument(_))) => {}
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

/// Publishes small batches with client-chosen ids until `stop` is set (and at least `min` events
/// are in), retrying each batch until it is acknowledged: a retry of a batch that was stored but
/// not acknowledged is deduplicated. Returns (events sent, failed calls).
async fn produce(
    client: OrdoClient,
    min: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (usize, usize) {
    let mut sent = 0;
    let mut failures = 0;
    while sent < min || !*stop.borrow() {
        let batch: Vec<NewEvent> = (sent..sent + 3)
            .map(|i| {
                let kind = if i % 3 == 0 {
                    "alpha.tick"
                } else {
                    "beta.tick"
                };
                new_event(&format!("stream-{}", i % 4), kind, format!("ev-{i}"))
            })
            .collect();
        let len = batch.len();
        match client.publish(batch).await {
            Ok(_) => sent += len,
            Err(_) => {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (sent, failures)
}

/// Collects events until it has seen `until` (the log's final head, sent once known).
async fn consume(
    client: OrdoClient,
    options: SubscribeOptions,
    mut until: tokio::sync::watch::Receiver<Option<u64>>,
) -> (Vec<(u64, String)>, usize) {
    let mut sub = client.subscribe(options).expect("subscribe");
    let mut events = Vec::new();
    let mut reconnects = 0;
    loop {
        let head = *until.borrow();
        if let Some(head) = head
            && sub.position().is_some_and(|p| p >= head)
        {
            return (events, reconnects);
        }
        tokio::select! {
            item = sub.next() => match item.expect("subscription never ends").expect("no fatal error") {
                SubscriptionItem::Event(event) => events.push((event.offset, event.id)),
                SubscriptionItem::Reconnecting { .. } => reconnects += 1,
                _ => {}
            },
            _ = until.changed() => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_survives_kill9_restarts_with_no_gap_and_no_duplicate() {
    const MIN_EVENTS: usize = 300;
    const RESTARTS: usize = 4;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = ChildServer::start(dir.path(), None, &[]).await;
    let port = server.addr.port();
    let url = server.url();
    let connect = || {
        OrdoClient::builder(url.clone())
            .lazy(true)
            .connect_timeout(Duration::from_secs(1))
            .request_timeout(Duration::from_secs(5))
            .connect()
    };
    let producer = connect().await.expect("producer client");
    let consumer = connect().await.expect("consumer client");
    let (done_tx, done_rx) = tokio::sync::watch::channel(None);
    let base = || {
        SubscribeOptions::new()
            .heartbeat(Duration::from_millis(200))
            .backoff(fast_backoff())
    };
    let everything = tokio::spawn(consume(consumer.clone(), base(), done_rx.clone()));
    let filtered = tokio::spawn(consume(
        consumer.clone(),
        base().start(Start::After(0)).event_type("alpha.*"),
        done_rx,
    ));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let producing = tokio::spawn(produce(producer.clone(), MIN_EVENTS, stop_rx));

    for _ in 0..RESTARTS {
        tokio::time::sleep(Duration::from_millis(400)).await;
        server.kill9();
        tokio::time::sleep(Duration::from_millis(150)).await;
        server = ChildServer::start(dir.path(), Some(port), &[]).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_tx.send(true).expect("producer listens");
    let (sent, failures) = tokio::time::timeout(Duration::from_secs(60), producing)
        .await
        .expect("producer finishes")
        .expect("producer task");
    let log = crate::read_all(&producer).await;
    let head = log.last().map(|e| e.offset).expect("log is not empty");
    done_tx.send(Some(head)).expect("consumers listen");

    let (all, all_reconnects) = tokio::time::timeout(Duration::from_secs(60), everything)
        .await
        .expect("consumer catches up")
        .expect("consumer task");
    let (alpha, alpha_reconnects) = tokio::time::timeout(Duration::from_secs(60), filtered)
        .await
        .expect("filtered consumer catches up")
        .expect("filtered consumer task");

    let expected: Vec<(u64, String)> = log.iter().map(|e| (e.offset, e.id.clone())).collect();
    let ids: HashSet<&str> = log.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), sent, "every produced event is stored once");
    assert_eq!(
        log.iter().map(|e| e.offset).collect::<Vec<_>>(),
        (1..=sent as u64).collect::<Vec<_>>()
    );
    assert_eq!(all, expected, "consumer sequence equals the log");
    let expected_alpha: Vec<(u64, String)> = log
        .iter()
        .filter(|e| e.r#type.starts_with("alpha."))
        .map(|e| (e.offset, e.id.clone()))
        .collect();
    assert_eq!(
        alpha, expected_alpha,
        "filtered sequence equals the filtered log"
    );
    assert!(
        all_reconnects >= RESTARTS && alpha_reconnects >= RESTARTS,
        "the consumers reconnected ({all_reconnects}, {alpha_reconnects}) for {RESTARTS} restarts"
    );
    eprintln!(
        "kill9 test: {sent} events, {RESTARTS} restarts, producer retries {failures}, reconnects {all_reconnects}/{alpha_reconnects}"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_is_detected_and_retried() {
    // Accepts TCP connections and never speaks HTTP/2.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let client = OrdoClient::builder(format!("http://{addr}"))
        .lazy(true)
        .connect()
        .await
        .expect("lazy client");
    let mut sub = client
        .subscribe(
            SubscribeOptions::new()
                .heartbeat(Duration::from_millis(100))
                .backoff(fast_backoff())
                .max_attempts(2),
        )
        .expect("subscribe");
    let first = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("the stall is noticed within 10 s");
    match first {
        Some(Ok(SubscriptionItem::Reconnecting { attempt, .. })) => assert_eq!(attempt, 1),
        other => panic!("expected a reconnect, got {other:?}"),
    }
    // After max_attempts the subscription gives up with a typed error instead of hanging.
    let mut last = None;
    while let Some(item) = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("progress within 10 s")
    {
        last = Some(item);
        if matches!(last, Some(Err(_))) {
            break;
        }
    }
    assert!(
        matches!(last, Some(Err(ClientError::Unavailable(_)))),
        "{last:?}"
    );
}

/// The token the secured-server test uses, and its SHA-256 (`printf %s TOKEN | sha256sum`).
const TOKEN: &str = "ordo-client-test-token";
const TOKEN_SHA256: &str = "10ca460a1ee2f4a3ca4b634a00893dbcd251b3937f320d74aebf044b360688b5";
/// A token with only `orders:read`.
const READER: &str = "ordo-client-reader-token";
const READER_SHA256: &str = "cba94081975241b3f94c41db2cd6fa86e8d9f2323e274b4c7a7271a371cac435";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_bearer_token_reach_a_secured_server_from_library_and_cli() {
    let pki = ordo_test_harness::pki::pki();
    let (ca, cert, key) = (pki.ca_pem, pki.server_cert, pki.server_key);
    let secrets = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, text: &str| {
        let path = secrets.path().join(name);
        std::fs::write(&path, text).expect("write");
        path.to_str().expect("utf-8 path").to_string()
    };
    let ca_path = write("ca.pem", &ca);
    let tokens = write(
        "tokens.toml",
        &format!(
            "[[token]]\nname = \"client\"\nsha256 = \"{TOKEN_SHA256}\"\nscopes = [\"orders:write\", \"orders:read\", \"events:publish\", \"events:subscribe\"]\n\n[[token]]\nname = \"reader\"\nsha256 = \"{READER_SHA256}\"\nscopes = [\"orders:read\"]\n"
        ),
    );
    let cert_path = write("server.pem", &cert);
    let key_path = write("server.key", &key);
    let data = tempfile::tempdir().expect("temp dir");
    let server = ChildServer::start(
        data.path(),
        None,
        &[
            "--auth-tokens",
            &tokens,
            "--tls-cert",
            &cert_path,
            "--tls-key",
            &key_path,
        ],
    )
    .await;
    let url = format!("https://127.0.0.1:{}", server.addr.port());
    let tls = || {
        TlsOptions::new()
            .ca_certificate_pem(ca.clone())
            .domain_name("localhost")
    };

    let anonymous = OrdoClient::builder(url.clone())
        .tls(tls())
        .connect()
        .await
        .expect("tls connect");
    let refused = anonymous.create_order(order_request(1)).await;
    assert!(
        matches!(refused, Err(ClientError::Unauthenticated(_))),
        "{refused:?}"
    );

    let reader = OrdoClient::builder(url.clone())
        .tls(tls())
        .bearer_token(READER)
        .connect()
        .await
        .expect("tls connect");
    let denied = reader.create_order(order_request(1)).await;
    assert!(
        matches!(denied, Err(ClientError::PermissionDenied(_))),
        "{denied:?}"
    );

    let client = OrdoClient::builder(url.clone())
        .tls(tls())
        .bearer_token(TOKEN)
        .connect()
        .await
        .expect("tls connect");
    let order = client.create_order(order_request(1)).await.expect("create");
    let mut sub = client
        .subscribe(SubscribeOptions::new())
        .expect("subscribe");
    match sub.next().await {
        Some(Ok(SubscriptionItem::Event(event))) => assert_eq!(event.offset, order.last_offset),
        other => panic!("expected the order's event, got {other:?}"),
    }

    let no_ca = OrdoClient::builder(url.clone()).connect().await;
    assert!(matches!(no_ca, Err(ClientError::Config(_))), "{no_ca:?}");

    // The CLI with the same settings, and without the token.
    let cli = async |with_token: bool| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ordo"));
        command
            .args([
                "--addr",
                &url,
                "--ca-cert",
                &ca_path,
                "--tls-domain",
                "localhost",
            ])
            .env_remove("ORDO_TOKEN");
        if with_token {
            command.args(["--token", TOKEN]);
        }
        command.args(["--json", "orders", "list"]);
        command.output().await.expect("run ordo")
    };
    let listed = cli(true).await;
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&order.id));
    let refused = cli(false).await;
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("unauthenticated") && stderr.contains("--token"),
        "{stderr}"
    );
}
