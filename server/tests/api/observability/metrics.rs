//! `--metrics-listen`: what a scrape says after real calls, and that nothing listens without it.

use super::*;

const PUBLISH: [(&str, &str); 3] = [
    ("grpc_service", "ordo.v1.EventService"),
    ("grpc_method", "Publish"),
    ("grpc_type", "unary"),
];
const SUBSCRIBE: [(&str, &str); 3] = [
    ("grpc_service", "ordo.v1.EventService"),
    ("grpc_method", "Subscribe"),
    ("grpc_type", "server_stream"),
];
const GET_ORDER: [(&str, &str); 3] = [
    ("grpc_service", "ordo.v1.OrderService"),
    ("grpc_method", "GetOrder"),
    ("grpc_type", "unary"),
];

fn with_code<'a>(labels: &[(&'a str, &'a str)], code: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut labels = labels.to_vec();
    labels.push(("grpc_code", code));
    labels
}

#[tokio::test]
async fn a_scrape_counts_the_calls_made_with_their_codes_and_the_log_activity() {
    let data = tempfile::tempdir().expect("dir");
    let tokens = data.path().join("tokens.toml");
    write_tokens(&tokens, &[Tok::new("admin", ADMIN, &Scope::ALL)]);
    let addr = metrics_addr();
    let server = ChildServer::start(
        &data.path().join("data"),
        None,
        &[
            "--auth-tokens",
            tokens.to_str().expect("utf-8 path"),
            "--metrics-listen",
            &addr.to_string(),
        ],
    )
    .await;
    let channel = connect(server.url()).await;
    let mut events = EventServiceClient::new(channel.clone());
    let mut orders = OrderServiceClient::new(channel);

    // Two appends (3 events), a refused append, a NOT_FOUND, and a live subscription.
    for batch in [
        vec![
            new_event("m-1", "metric.test"),
            new_event("m-1", "metric.test"),
        ],
        vec![new_event("m-2", "metric.test")],
    ] {
        events
            .publish(with_token(publish_req(batch), Some(ADMIN)))
            .await
            .expect("publish");
    }
    let refused = events
        .publish(with_token(
            publish_req(vec![new_event("m-3", "metric.test")]),
            Some("not-a-known-token"),
        ))
        .await;
    assert_status(refused, Code::Unauthenticated, "invalid bearer token");
    let missing = orders
        .get_order(with_token(
            GetOrderRequest {
                order_id: "01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
                at_version: None,
            },
            Some(ADMIN),
        ))
        .await;
    assert_eq!(missing.expect_err("missing order").code(), Code::NotFound);
    let mut stream = events
        .subscribe(with_token(
            SubscribeRequest {
                start: start(),
                // No heartbeat during the test: the messages sent are exactly known.
                heartbeat_interval_ms: 600_000,
                ..Default::default()
            },
            Some(ADMIN),
        ))
        .await
        .expect("subscribe")
        .into_inner();
    let (history, head) = read_until_caught_up(&mut stream).await;
    assert_eq!((history.len(), head), (3, 3));

    let m = Metrics::scrape(addr).await;
    // gRPC, go-grpc-prometheus names: the refused call is started and handled too.
    assert_eq!(m.value("grpc_server_started_total", &PUBLISH), 3.0);
    assert_eq!(
        m.value("grpc_server_handled_total", &with_code(&PUBLISH, "OK")),
        2.0
    );
    assert_eq!(
        m.value(
            "grpc_server_handled_total",
            &with_code(&PUBLISH, "Unauthenticated")
        ),
        1.0
    );
    assert_eq!(m.value("grpc_server_handled_total", &PUBLISH), 3.0);
    // The refused call's request was never read, and got no message back.
    assert_eq!(m.value("grpc_server_msg_received_total", &PUBLISH), 2.0);
    assert_eq!(m.value("grpc_server_msg_sent_total", &PUBLISH), 2.0);
    assert_eq!(m.value("grpc_server_handling_seconds_count", &PUBLISH), 3.0);
    assert_eq!(
        m.value(
            "grpc_server_handled_total",
            &with_code(&GET_ORDER, "NotFound")
        ),
        1.0
    );
    // The open subscription: started, 3 events + caught_up sent, not handled yet, not timed.
    assert_eq!(m.value("grpc_server_started_total", &SUBSCRIBE), 1.0);
    assert_eq!(m.value("grpc_server_msg_received_total", &SUBSCRIBE), 1.0);
    assert_eq!(m.value("grpc_server_msg_sent_total", &SUBSCRIBE), 4.0);
    assert_eq!(m.get("grpc_server_handled_total", &SUBSCRIBE), None);
    assert!(
        m.get("grpc_server_handling_seconds_count", &SUBSCRIBE)
            .unwrap_or(0.0)
            == 0.0
    );

    // The log.
    assert_eq!(m.value("ordo_head_offset", &[]), 3.0);
    assert_eq!(m.value("ordo_appended_events_total", &[]), 3.0);
    assert!(m.value("ordo_appended_bytes_total", &[]) > 3.0 * 20.0);
    assert_eq!(m.value("ordo_group_commit_events_sum", &[]), 3.0);
    assert!(m.value("ordo_group_commit_events_count", &[]) >= 2.0);
    assert!(m.value("ordo_journal_fsync_seconds_count", &[]) >= 2.0);
    assert!(m.value("ordo_disk_bytes", &[]) > 0.0);
    // Subscribers, rejections, webhooks.
    assert_eq!(m.value("ordo_subscribers", &[]), 1.0);
    assert!(m.value("ordo_subscriber_lag_events_count", &[]) >= 1.0);
    assert_eq!(
        m.value("ordo_rejections_total", &[("reason", "unauthenticated")]),
        1.0
    );
    assert_eq!(
        m.value("ordo_rejections_total", &[("reason", "rate_limited")]),
        0.0
    );
    assert_eq!(m.value("ordo_webhook_pending_events", &[]), 0.0);
    assert!(
        m.0.docs.contains_key("grpc_server_started_total"),
        "HELP lines"
    );

    // The client cancels: the call is handled as Canceled and the subscriber gauge drops.
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = Metrics::scrape(addr).await;
        let canceled = m.get(
            "grpc_server_handled_total",
            &with_code(&SUBSCRIBE, "Canceled"),
        );
        if canceled == Some(1.0) && m.get("ordo_subscribers", &[]) == Some(0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "subscription not handled as Canceled: {canceled:?}, subscribers {:?}",
            m.get("ordo_subscribers", &[])
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (status, body) = http_get(addr, "/").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("/metrics"), "{body}");
}

#[tokio::test]
async fn webhook_outcomes_and_dead_letters_are_counted_and_survive_a_restart() {
    let data = tempfile::tempdir().expect("dir");
    let receiver = Receiver::start().await;
    // Event 1 is refused for good (dead-lettered at once), event 2 is retried in an hour.
    receiver.script([reply(400), reply(500)]);
    let args = |addr: SocketAddr| {
        vec![
            "--metrics-listen".to_string(),
            addr.to_string(),
            "--webhook-allow-net".into(),
            "127.0.0.0/8".into(),
            "--webhook-retry-schedule-s".into(),
            "3600".into(),
        ]
    };
    let start_server = |addr: SocketAddr| {
        let args = args(addr);
        let dir = data.path().to_path_buf();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ChildServer::start(&dir, None, &args).await
        }
    };
    let addr = metrics_addr();
    let server = start_server(addr).await;
    let channel = connect(server.url()).await;
    let hook = WebhookServiceClient::new(channel.clone())
        .create_webhook(CreateWebhookRequest {
            url: receiver.url(),
            event_types: vec!["*".into()],
            description: "metrics".into(),
            ..Default::default()
        })
        .await
        .expect("create webhook")
        .into_inner()
        .webhook
        .expect("webhook");
    let mut events = EventServiceClient::new(channel);
    for stream in ["w-1", "w-2"] {
        events
            .publish(publish_req(vec![new_event(stream, "metric.hook")]))
            .await
            .expect("publish");
    }
    receiver.wait_seen(2).await;
    let m = wait_for(addr, |m| {
        m.get(
            "ordo_webhook_deliveries_total",
            &[("outcome", "retry_scheduled")],
        ) == Some(1.0)
    })
    .await;
    assert_eq!(
        m.value(
            "ordo_webhook_deliveries_total",
            &[("outcome", "dead_lettered")]
        ),
        1.0
    );
    assert_eq!(
        m.get("ordo_webhook_deliveries_total", &[("outcome", "succeeded")]),
        None
    );
    assert_eq!(m.value("ordo_webhook_dead_letters", &[]), 1.0);
    // Event 2 waits for its retry: one event after the webhook's cursor.
    assert_eq!(m.value("ordo_webhook_pending_events", &[]), 1.0);
    server.terminate();

    // A new process finds the dead letter and the backlog on disk.
    let addr = metrics_addr();
    let server = start_server(addr).await;
    let m = Metrics::scrape(addr).await;
    assert_eq!(m.value("ordo_webhook_dead_letters", &[]), 1.0);
    assert_eq!(m.value("ordo_webhook_pending_events", &[]), 1.0);
    assert_eq!(m.get("ordo_webhook_deliveries_total", &[]), None);

    // Redriving moves it out of the dead-letter queue.
    let redriven = WebhookServiceClient::new(connect(server.url()).await)
        .redrive_dead_letters(RedriveDeadLettersRequest {
            webhook_id: hook.id.clone(),
            selection: Some(Selection::All(true)),
        })
        .await
        .expect("redrive")
        .into_inner()
        .redriven;
    assert_eq!(redriven, 1);
    let m = Metrics::scrape(addr).await;
    assert_eq!(m.value("ordo_webhook_dead_letters", &[]), 0.0);
}

/// Scrapes until `done` holds (10 s at most); the last scrape.
async fn wait_for(addr: SocketAddr, done: impl Fn(&Metrics) -> bool) -> Metrics {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = Metrics::scrape(addr).await;
        if done(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never reached the expected state"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn without_metrics_listen_the_server_listens_on_its_grpc_port_only() {
    assert_eq!(ordo_server::ServerConfig::new("x").metrics_listen, None);
    let data = tempfile::tempdir().expect("dir");
    let plain = ChildServer::start(&data.path().join("plain"), None, &[]).await;
    // Serving (not only bound by main), so a metrics port would be bound by now.
    let mut events = EventServiceClient::new(connect(plain.url()).await);
    events
        .publish(publish_req(vec![new_event("plain-1", "metric.off")]))
        .await
        .expect("publish");
    assert_eq!(listening_ports(plain.pid()), vec![plain.addr.port()]);

    let addr = metrics_addr();
    let with = ChildServer::start(
        &data.path().join("with"),
        None,
        &["--metrics-listen", &addr.to_string()],
    )
    .await;
    // The gRPC port is bound first (by main): wait for the metrics one to answer.
    Metrics::scrape(addr).await;
    let mut expected = vec![with.addr.port(), addr.port()];
    expected.sort_unstable();
    assert_eq!(listening_ports(with.pid()), expected);
}

#[tokio::test]
async fn without_metrics_listen_no_recorder_is_installed_and_calls_pass_through() {
    // In-process: this test binary never starts a server with metrics, so the facade must have
    // no recorder, and every recording call on the commit path is a no-op.
    let server = ordo_test_harness::TestServer::start().await;
    let mut events = server.events().await;
    events
        .publish(publish_req(vec![new_event("off-1", "metric.off")]))
        .await
        .expect("publish");
    assert!(!ordo_server::metrics::enabled());
    server.stop().await;
}
