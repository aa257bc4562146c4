//! The token lifecycle: a reload revokes open streams and new calls (in-process and by SIGHUP to
//! the real binary), and tokens never appear in the log.

use super::*;

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
