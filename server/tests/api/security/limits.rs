//! Per-token abuse limits: append rate with retry info, subscription caps, message size,
//! streams per connection and the request timeout; and what auth and TLS cost in throughput.

use super::*;

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
        .create_order(with_token(create_req("c"), Some(A)))
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
    let before = ordo_server::rejections::Rejection::Oversized.count();
    let mut request = publish_request("big-1", "big.x");
    request.events[0].data = vec![0u8; 4096];
    let err = server
        .events()
        .await
        .publish(request)
        .await
        .expect_err("over the limit");
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(ordo_server::rejections::Rejection::Oversized.count() > before);
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

/// Run with `cargo test --release -p ordo-server --test api -- --ignored --nocapture
/// security::limits::throughput`: plaintext without auth against auth only, TLS only and TLS + bearer token,
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
