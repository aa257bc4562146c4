//! AppendStream, black-box: acks in send order with their positions, the log in send order,
//! per-event rejections that leave the stream open and store nothing, idempotent resend by id,
//! per-event token prefixes, graceful shutdown, a producer that stops reading acks held by the
//! window (server memory measured on the real binary), and kill -9 mid-stream followed by a
//! resend.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use ordo_api::v1::{
    AppendAck, AppendRejected, AppendStreamRequest, AppendStreamResponse, NewEvent,
    append_stream_response::Message, event_service_client::EventServiceClient,
};
use ordo_server::auth::{Auth, Scope};
use ordo_test_harness::{
    ChildServer, TestServer,
    api::*,
    tokens::{Tok, with_token, write_tokens},
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming, transport::Channel};

/// An open AppendStream: where to send requests, where answers arrive, and the window.
struct Producer {
    requests: mpsc::Sender<AppendStreamRequest>,
    answers: Streaming<AppendStreamResponse>,
    window: u32,
}

async fn open(events: &mut Events, token: Option<&str>, buffer: usize) -> Producer {
    let (requests, rx) = mpsc::channel(buffer);
    let answers = events
        .append_stream(with_token(ReceiverStream::new(rx), token))
        .await
        .expect("open append stream")
        .into_inner();
    let mut producer = Producer {
        requests,
        answers,
        window: 0,
    };
    match producer.next().await {
        Message::Window(window) => producer.window = window.max_in_flight,
        other => panic!("the first answer must be the window, got {other:?}"),
    }
    producer
}

impl Producer {
    async fn send(&self, event: NewEvent, seq: u64) {
        self.requests
            .send(append_req(event, seq))
            .await
            .expect("stream open");
    }

    async fn next(&mut self) -> Message {
        let answer = tokio::time::timeout(Duration::from_secs(20), self.answers.message())
            .await
            .expect("an answer within 20 s")
            .expect("stream healthy")
            .expect("stream not ended");
        answer.message.expect("message set")
    }

    async fn ack(&mut self) -> AppendAck {
        match self.next().await {
            Message::Ack(ack) => ack,
            other => panic!("expected an ack, got {other:?}"),
        }
    }

    async fn rejected(&mut self) -> AppendRejected {
        match self.next().await {
            Message::Rejected(rejected) => rejected,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
}

fn sized(stream: &str, bytes: usize) -> NewEvent {
    NewEvent {
        data: vec![7u8; bytes],
        ..new_event(stream, "test.ingest")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_come_in_send_order_and_the_log_keeps_it() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let mut producer = open(&mut events, None, 64).await;
    assert_eq!(
        producer.window, 1000,
        "the default window is advertised first"
    );

    // More events than the window, over three streams, without waiting for acks.
    const N: u64 = 3000;
    let sender = producer.requests.clone();
    let feed = tokio::spawn(async move {
        for seq in 1..=N {
            let stream = format!("ingest-{}", seq % 3);
            let event = new_event_with_id(&stream, "test.ingest", &format!("e-{seq}"));
            sender.send(append_req(event, seq)).await.expect("send");
        }
    });
    let mut versions: HashMap<String, u64> = HashMap::new();
    for seq in 1..=N {
        let ack = producer.ack().await;
        assert_eq!(ack.client_seq, seq, "acks in send order");
        assert!(!ack.deduplicated);
        let position = ack.position.expect("position");
        assert_eq!(position.id, format!("e-{seq}"));
        let version = versions.entry(position.stream_id.clone()).or_default();
        *version += 1;
        assert_eq!(position.stream_version, *version);
    }
    feed.await.expect("feed");
    drop(producer.requests);
    assert!(
        producer
            .answers
            .message()
            .await
            .expect("clean end")
            .is_none(),
        "the stream ends cleanly after the client half-closes"
    );

    let log = read_all(&mut events).await;
    let ids: Vec<String> = log.iter().map(|e| e.id.clone()).collect();
    let expected: Vec<String> = (1..=N).map(|seq| format!("e-{seq}")).collect();
    assert_eq!(ids, expected, "the log holds the events in send order");
    assert_eq!(offsets(&log), (1..=N).collect::<Vec<_>>());
}

#[tokio::test]
async fn per_event_errors_are_answered_and_the_stream_goes_on() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let mut producer = open(&mut events, None, 16).await;

    producer.send(new_event("s-1", "test.ok"), 1).await;
    producer.send(new_event("s-1", "bad type!"), 2).await;
    producer
        .send(
            NewEvent {
                expected_stream_version: Some(5),
                ..new_event("s-1", "test.conflict")
            },
            3,
        )
        .await;
    producer
        .send(new_event("order-1", "test.reserved"), 4)
        .await;
    producer
        .requests
        .send(AppendStreamRequest {
            event: None,
            client_seq: 5,
        })
        .await
        .expect("send");
    producer
        .send(
            NewEvent {
                expected_stream_version: Some(1),
                ..new_event("s-1", "test.ok")
            },
            6,
        )
        .await;

    let first = producer.ack().await;
    assert_eq!(first.client_seq, 1);
    let bad_type = producer.rejected().await;
    assert_eq!(
        (bad_type.client_seq, bad_type.code),
        (2, Code::InvalidArgument as i32)
    );
    assert!(bad_type.message.contains("event.type"), "{bad_type:?}");
    let conflict = producer.rejected().await;
    assert_eq!(
        (conflict.client_seq, conflict.code),
        (3, Code::Aborted as i32)
    );
    assert!(conflict.message.contains("expected 5"), "{conflict:?}");
    let reserved = producer.rejected().await;
    assert_eq!(
        (reserved.client_seq, reserved.code),
        (4, Code::InvalidArgument as i32)
    );
    let missing = producer.rejected().await;
    assert_eq!(
        (missing.client_seq, missing.code),
        (5, Code::InvalidArgument as i32)
    );
    assert!(missing.message.contains("event is required"), "{missing:?}");
    let last = producer.ack().await;
    assert_eq!(last.client_seq, 6);
    assert_eq!(last.position.expect("position").stream_version, 2);

    let log = read_all(&mut events).await;
    let types: Vec<&str> = log.iter().map(|e| e.r#type.as_str()).collect();
    assert_eq!(
        types,
        ["test.ok", "test.ok"],
        "nothing of a refused event is stored"
    );
}

#[tokio::test]
async fn resending_ids_returns_the_original_positions() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let mut producer = open(&mut events, None, 16).await;
    let mut original = Vec::new();
    for seq in 1..=20u64 {
        producer
            .send(
                new_event_with_id("pay-9", "payment.seen", &format!("p-{seq}")),
                seq,
            )
            .await;
    }
    for _ in 1..=20 {
        original.push(producer.ack().await.position.expect("position"));
    }
    drop(producer);

    // A reconnecting producer resends everything, and a new event after it.
    let mut again = open(&mut events, None, 16).await;
    for seq in 1..=21u64 {
        again
            .send(
                new_event_with_id("pay-9", "payment.seen", &format!("p-{seq}")),
                seq,
            )
            .await;
    }
    for position in &original {
        let ack = again.ack().await;
        assert!(ack.deduplicated, "{ack:?}");
        assert_eq!(ack.position.as_ref(), Some(position));
    }
    let fresh = again.ack().await;
    assert!(!fresh.deduplicated);
    assert_eq!(fresh.position.expect("position").offset, 21);
    assert_eq!(head(&mut events).await, 21, "each id stored once");
}

#[tokio::test]
async fn token_prefixes_are_checked_per_event() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tokens.toml");
    write_tokens(
        &path,
        &[
            Tok {
                event_types: &["sensor.*"],
                ..Tok::new("sensors", "sensor-secret", &[Scope::EventsPublish])
            },
            Tok::new("reader", "reader-secret", &[Scope::EventsSubscribe]),
        ],
    );
    let auth = Auth::load(&path).expect("load tokens");
    let server = TestServer::start_with_auth(auth, |_| {}).await;
    let mut events = server.events().await;

    // Without the scope, the stream is refused as Publish would be.
    let (_tx, rx) = mpsc::channel::<AppendStreamRequest>(1);
    let refused = events
        .append_stream(with_token(ReceiverStream::new(rx), Some("reader-secret")))
        .await
        .expect_err("events:publish required");
    assert_eq!(refused.code(), Code::PermissionDenied);

    let mut producer = open(&mut events, Some("sensor-secret"), 16).await;
    producer.send(new_event("dev-1", "sensor.temp"), 1).await;
    producer.send(new_event("dev-1", "payment.sneaky"), 2).await;
    producer.send(new_event("dev-1", "sensor.temp"), 3).await;
    assert_eq!(producer.ack().await.client_seq, 1);
    let denied = producer.rejected().await;
    assert_eq!(
        (denied.client_seq, denied.code),
        (2, Code::PermissionDenied as i32)
    );
    assert!(denied.message.contains("payment.sneaky"), "{denied:?}");
    assert_eq!(producer.ack().await.client_seq, 3);
}

/// A message too large to decode breaks the request stream: the events before it are answered,
/// then the stream ends with tonic's OUT_OF_RANGE and a message saying to resend the rest, never
/// a clean end that would hide the unanswered events.
#[tokio::test]
async fn an_oversized_message_ends_the_stream_with_an_error_after_earlier_acks() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let mut producer = open(&mut events, None, 16).await;
    producer.send(new_event("s-big", "test.ok"), 1).await;
    producer.send(sized("s-big", 5 * 1024 * 1024), 2).await;
    producer.send(new_event("s-big", "test.ok"), 3).await;
    assert_eq!(producer.ack().await.client_seq, 1);
    let end = tokio::time::timeout(Duration::from_secs(10), producer.answers.message())
        .await
        .expect("the stream ends promptly");
    let status = end.expect_err("ends with a status, not cleanly");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("resend"), "{status:?}");
    assert_eq!(head(&mut events).await, 1);
}

/// Graceful shutdown answers what was sent, then ends the stream with UNAVAILABLE (resend the
/// rest after reconnecting) instead of cutting it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_what_was_sent_then_ends_with_unavailable() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let mut producer = open(&mut events, None, 16).await;
    for seq in 1..=10 {
        producer
            .send(
                new_event_with_id("s-down", "test.x", &format!("d-{seq}")),
                seq,
            )
            .await;
    }
    for seq in 1..=10 {
        assert_eq!(producer.ack().await.client_seq, seq);
    }
    let stopping = tokio::spawn(server.stop());
    let end = tokio::time::timeout(Duration::from_secs(10), producer.answers.message())
        .await
        .expect("the stream ends promptly");
    let status = end.expect_err("ends with a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("resend"), "{status:?}");
    stopping.await.expect("server stopped");
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

async fn connect(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .expect("url")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect")
}

/// A producer that never reads its acks: the server stops reading its events once the window
/// is full, so the log stops growing and so does the server's memory, while the client would
/// happily send 2 GiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_acks_is_held_by_the_window() {
    const PAYLOAD: usize = 4 * 1024;
    const ATTEMPTED: u64 = 256 * 1024;
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ChildServer::start(dir.path(), None, &[]).await;
    // A small HTTP/2 receive window, so that few acks wait unread in the client's transport.
    let stalled = Channel::from_shared(server.url())
        .expect("url")
        .initial_stream_window_size(64 * 1024)
        .initial_connection_window_size(64 * 1024)
        .connect()
        .await
        .expect("connect");
    let mut events = EventServiceClient::new(stalled);
    let mut watcher = EventServiceClient::new(connect(&server.url()).await);
    let baseline = rss_kib(server.pid());

    let (tx, rx) = mpsc::channel(16);
    let _answers = events
        .append_stream(ReceiverStream::new(rx))
        .await
        .expect("open")
        .into_inner();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    let feed = tokio::spawn(async move {
        for seq in 1..=ATTEMPTED {
            if tx
                .send(append_req(sized("flood", PAYLOAD), seq))
                .await
                .is_err()
            {
                return;
            }
            counter.store(seq, std::sync::atomic::Ordering::Relaxed);
        }
    });

    // Wait until the server stops taking events.
    let mut last = (0, Instant::now());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = head(&mut watcher).await;
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(1) {
            break;
        }
        assert!(Instant::now() < deadline, "the log kept growing: {now}");
    }
    let stored = last.0;
    let taken = sent.load(std::sync::atomic::Ordering::Relaxed);
    let grown_kib = rss_kib(server.pid()).saturating_sub(baseline);
    // Held, it stays held: no growth while the client keeps not reading.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later_kib = rss_kib(server.pid()).saturating_sub(baseline);
    eprintln!(
        "stalled producer: {taken} events sent of {ATTEMPTED} ({} MiB), {stored} stored, server RSS +{} MiB, 1 s later +{} MiB",
        (ATTEMPTED * PAYLOAD as u64) >> 20,
        grown_kib / 1024,
        later_kib / 1024
    );
    assert!(
        taken < ATTEMPTED / 8,
        "the client was not held back: {taken}"
    );
    // The window (1000 events) plus unread acks in transport buffers, not the client's 1 GiB.
    assert!(
        stored < 12_000,
        "{stored} events stored for a client reading no acks"
    );
    assert!(
        taken - stored < 2_000,
        "{} events taken but not stored",
        taken - stored
    );
    assert!(
        later_kib < 160 * 1024,
        "server memory grew by {later_kib} KiB for a stalled client"
    );
    assert!(
        later_kib <= grown_kib + 8 * 1024,
        "server memory kept growing while the client was stalled: {grown_kib} -> {later_kib} KiB"
    );
    feed.abort();
}

fn id(seq: u64) -> String {
    format!("dev-{}-{seq}", seq % 4)
}

fn event(seq: u64) -> NewEvent {
    new_event_with_id(&format!("dev-{}", seq % 4), "sensor.reading", &id(seq))
}

/// Events acked before a kill -9 are there exactly once after the restart; unacked ones at
/// most once; resending every id after reconnecting leaves each event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_stream_then_resend_by_id_leaves_each_event_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ChildServer::start(dir.path(), None, &[]).await;
    let port = server.addr.port();
    let mut events = EventServiceClient::new(connect(&server.url()).await);
    let mut producer = open(&mut events, None, 256).await;

    let sender = producer.requests.clone();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    let feed = tokio::spawn(async move {
        for seq in 1..=10_000_000u64 {
            if sender.send(append_req(event(seq), seq)).await.is_err() {
                return;
            }
            counter.store(seq, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let mut acked: HashMap<String, u64> = HashMap::new();
    let started = Instant::now();
    let mut expected_seq = 1;
    while started.elapsed() < Duration::from_millis(1500) {
        let ack = producer.ack().await;
        assert_eq!(ack.client_seq, expected_seq);
        expected_seq += 1;
        let position = ack.position.expect("position");
        acked.insert(position.id, position.offset);
    }
    server.kill9();
    feed.abort();
    let _ = feed.await;
    // Whatever answers were on the wire still count as acks.
    while let Ok(Some(answer)) = producer.answers.message().await {
        if let Some(Message::Ack(ack)) = answer.message {
            let position = ack.position.expect("position");
            acked.insert(position.id, position.offset);
        }
    }
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        acked.len() > 100,
        "too few acks before the kill: {}",
        acked.len()
    );

    let server = ChildServer::start(dir.path(), Some(port), &[]).await;
    let mut events = EventServiceClient::new(connect(&server.url()).await);
    let log = read_all(&mut events).await;
    let mut seen = HashSet::new();
    for e in &log {
        assert!(seen.insert(e.id.clone()), "{} stored twice", e.id);
    }
    for (id, offset) in &acked {
        let stored = log.iter().find(|e| &e.id == id);
        assert_eq!(
            stored.map(|e| e.offset),
            Some(*offset),
            "acked {id} lost or moved"
        );
    }

    // Resend everything that was sent (acked or not), on a new stream.
    let mut producer = open(&mut events, None, 256).await;
    let sender = producer.requests.clone();
    let resend = tokio::spawn(async move {
        for seq in 1..=sent {
            sender
                .send(append_req(event(seq), seq))
                .await
                .expect("send");
        }
    });
    for seq in 1..=sent {
        let ack = producer.ack().await;
        assert_eq!(ack.client_seq, seq);
        let position = ack.position.expect("position");
        if let Some(offset) = acked.get(&position.id) {
            assert!(ack.deduplicated, "{} was acked before", position.id);
            assert_eq!(position.offset, *offset);
        }
    }
    resend.await.expect("resend");
    let log = read_all(&mut events).await;
    let ids: HashSet<String> = log.iter().map(|e| e.id.clone()).collect();
    assert_eq!(log.len() as u64, sent, "each sent event exactly once");
    assert_eq!(ids, (1..=sent).map(id).collect::<HashSet<_>>());
    eprintln!(
        "kill -9 after {} acks of {sent} sent; {} stored before the resend",
        acked.len(),
        seen.len()
    );
}
