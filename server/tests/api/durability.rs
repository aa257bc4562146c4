//! Durability and concurrency, black-box: acknowledged appends survive `kill -9` of the real
//! binary, offsets stay gapless across the crash, and concurrent writers cannot break optimistic
//! concurrency or event-id deduplication.

use std::{
    collections::{BTreeMap, HashSet},
    time::{Duration, Instant},
};

use ordo_api::v1::{
    EventPosition, NewEvent, OrderStatus, event_service_client::EventServiceClient,
    order_service_client::OrderServiceClient,
};
use ordo_test_harness::api::*;
use ordo_test_harness::{ChildServer, TestServer};
use tonic::{Code, transport::Channel};

async fn connect(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .expect("url")
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect")
}

/// What one appender saw acknowledged.
#[derive(Default)]
struct Acked {
    events: Vec<EventPosition>,
    /// (order id, last_offset, idempotency key)
    orders: Vec<(String, u64, String)>,
    /// The create that was in flight when the server died (acknowledged or not).
    in_flight: Option<ordo_api::v1::CreateOrderRequest>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_kill9() {
    crash_and_verify(&[]).await;
}

/// The opt-in unsafe mode skips fsync but still promises to survive a process crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_kill9_without_fsync() {
    crash_and_verify(&["--sync", "no-fsync-unsafe"]).await;
}

/// 8 writers append (and one also creates orders with idempotency keys) for 2 s; the server
/// is killed with SIGKILL mid-stream; after a restart every acknowledged write is there.
async fn crash_and_verify(args: &[&str]) {
    const WRITERS: usize = 8;
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ChildServer::start(dir.path(), None, args).await;
    let url = server.url();

    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let channel = connect(&url).await;
        tasks.push(tokio::spawn(async move {
            let mut events = EventServiceClient::new(channel.clone());
            let mut orders = OrderServiceClient::new(channel);
            let mut acked = Acked::default();
            // Bounded: the server is killed long before this many appends.
            for n in 0..1_000_000u64 {
                if w == 0 && n.is_multiple_of(2) {
                    // One writer also creates orders, whose projection must survive too.
                    let req = ordo_api::v1::CreateOrderRequest {
                        idempotency_key: format!("crash-key-{n}"),
                        ..create_req(&format!("crash-{n}"))
                    };
                    match orders.create_order(req.clone()).await {
                        Ok(r) => {
                            let order = r.into_inner().order.expect("order");
                            acked
                                .orders
                                .push((order.id, order.last_offset, req.idempotency_key));
                        }
                        Err(_) => {
                            acked.in_flight = Some(req);
                            return acked;
                        }
                    }
                    continue;
                }
                let size = n % 3 + 1;
                let batch = (0..size)
                    .map(|i| {
                        new_event_with_id(
                            &format!("crash-{w}"),
                            "test.crash",
                            &format!("w{w}-{n}-{i}"),
                        )
                    })
                    .collect();
                match events.publish(publish_req(batch)).await {
                    Ok(r) => acked.events.extend(r.into_inner().positions),
                    Err(_) => return acked,
                }
            }
            acked
        }));
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    server.kill9();
    let mut acked = Acked::default();
    for task in tasks {
        let done = tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .expect("writers notice the crash")
            .expect("writer task");
        acked.events.extend(done.events);
        acked.orders.extend(done.orders);
        acked.in_flight = acked.in_flight.or(done.in_flight);
    }
    assert!(
        acked.events.len() > 100,
        "too few appends before the crash ({}) to mean anything",
        acked.events.len()
    );
    assert!(!acked.orders.is_empty());
    println!(
        "acknowledged before kill -9: {} events, {} orders; a create in flight: {}",
        acked.events.len(),
        acked.orders.len(),
        acked.in_flight.is_some()
    );

    let server = ChildServer::start(dir.path(), None, args).await;
    let channel = connect(&server.url()).await;
    let mut events = EventServiceClient::new(channel.clone());
    let mut orders = OrderServiceClient::new(channel);
    let log = read_all(&mut events).await;
    let head_now = head(&mut events).await;
    assert_eq!(log.len() as u64, head_now, "the whole log is read back");
    assert_log_holds(&log, &acked.events);
    let max_acked = acked
        .events
        .iter()
        .map(|p| p.offset)
        .chain(acked.orders.iter().map(|(_, o, _)| *o))
        .max()
        .expect("acked");
    assert!(
        head_now >= max_acked,
        "head {head_now} lost acknowledged offset {max_acked}"
    );

    for (id, last_offset, key) in &acked.orders {
        assert_order_created(&mut orders, id, *last_offset).await;
        assert_eq!(log[(last_offset - 1) as usize].r#type, "order.created");
        // Its idempotency key survived too: a retry replays it and appends nothing.
        let n = key.trim_start_matches("crash-key-");
        let retry = orders
            .create_order(ordo_api::v1::CreateOrderRequest {
                idempotency_key: key.clone(),
                ..create_req(&format!("crash-{n}"))
            })
            .await
            .expect("retry after the crash")
            .into_inner()
            .order
            .expect("order");
        assert_eq!(&retry.id, id);
    }
    assert_eq!(
        head(&mut events).await,
        head_now,
        "replays appended nothing"
    );
    // The create cut off by the crash, retried with its key, exists exactly once afterwards.
    let mut head_now = head_now;
    if let Some(req) = acked.in_flight.take() {
        let order = orders
            .create_order(req.clone())
            .await
            .expect("retry the interrupted create")
            .into_inner()
            .order
            .expect("order");
        head_now = head(&mut events).await;
        let again = orders
            .create_order(req.clone())
            .await
            .expect("and again")
            .into_inner()
            .order
            .expect("order");
        assert_eq!(again.id, order.id);
        let with_customer = read_filtered(&mut events, filter(&["order.created"], &[]))
            .await
            .into_iter()
            .filter(|e| match &e.payload {
                Some(ordo_api::v1::event::Payload::Order(o)) => matches!(
                    &o.kind,
                    Some(ordo_api::v1::order_event::Kind::Created(c))
                        if c.customer_id == req.customer_id
                ),
                _ => false,
            })
            .count();
        assert_eq!(
            with_customer, 1,
            "the interrupted create happened exactly once"
        );
    }

    // The log continues at head + 1; stream versions and dedupe continue too.
    let next = events
        .publish(publish_req(vec![new_event("crash-0", "test.after")]))
        .await
        .expect("publish after restart")
        .into_inner();
    assert_eq!(next.positions[0].offset, head_now + 1);
    assert_eq!(
        next.positions[0].stream_version,
        log.iter().filter(|e| e.stream_id == "crash-0").count() as u64 + 1
    );
    let original = &acked.events[0];
    let retry = events
        .publish(publish_req(vec![new_event_with_id(
            &original.stream_id,
            "test.crash",
            &original.id,
        )]))
        .await
        .expect("republish")
        .into_inner();
    assert!(retry.deduplicated);
    assert_eq!(&retry.positions[0], original);
    let (id, _, _) = &acked.orders[0];
    let paid = orders
        .update_order_status(ordo_api::v1::UpdateOrderStatusRequest {
            order_id: id.clone(),
            status: OrderStatus::Paid as i32,
            expected_version: Some(1),
            idempotency_key: String::new(),
        })
        .await
        .expect("order commands work after the crash")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(paid.last_offset, head_now + 2);

    // A clean stop after recovery exits 0 and keeps everything.
    assert_eq!(server.terminate(), Some(0), "SIGTERM is a clean exit");
    let server = ChildServer::start(dir.path(), None, args).await;
    let mut events = EventServiceClient::new(connect(&server.url()).await);
    assert_eq!(head(&mut events).await, head_now + 2);
    server.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_optimistic_writers_never_share_a_version() {
    const WRITERS: usize = 8;
    const EACH: usize = 15;
    let server = TestServer::start().await;

    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut events = server.events().await;
        tasks.push(tokio::spawn(async move {
            let mut known = 0u64;
            let mut conflicts = 0;
            let mut mine = Vec::new();
            for n in 0..EACH {
                let id = format!("w{w}-{n}");
                for attempt in 0.. {
                    assert!(attempt < 1000, "writer {w} starved");
                    let event = NewEvent {
                        expected_stream_version: Some(known),
                        ..new_event_with_id("counter", "counter.incremented", &id)
                    };
                    match events.publish(publish_req(vec![event])).await {
                        Ok(r) => {
                            let position = r.into_inner().positions.remove(0);
                            assert_eq!(position.stream_version, known + 1);
                            known = position.stream_version;
                            mine.push(position);
                            break;
                        }
                        Err(status) => {
                            assert_eq!(status.code(), Code::Aborted, "{status:?}");
                            conflicts += 1;
                            // "stream counter is at version N, expected M"
                            known = status
                                .message()
                                .split("at version ")
                                .nth(1)
                                .and_then(|rest| rest.split(',').next())
                                .and_then(|v| v.parse().ok())
                                .expect("the message names the current version");
                        }
                    }
                }
            }
            (mine, conflicts)
        }));
    }
    let mut claimed: BTreeMap<u64, String> = BTreeMap::new();
    let mut conflicts = 0;
    for task in tasks {
        let (mine, c) = task.await.expect("writer");
        conflicts += c;
        for position in mine {
            let previous = claimed.insert(position.stream_version, position.id.clone());
            assert!(
                previous.is_none(),
                "version {} acknowledged twice",
                position.stream_version
            );
        }
    }
    let total = (WRITERS * EACH) as u64;
    assert_eq!(
        claimed.keys().copied().collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );
    assert!(conflicts > 0, "the writers never actually raced");

    let mut events = server.events().await;
    let stream = read_filtered(&mut events, filter(&[], &["counter"])).await;
    assert_eq!(stream.len() as u64, total, "no rejected attempt was stored");
    for event in &stream {
        assert_eq!(claimed[&event.stream_version], event.id);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_publishes_store_once() {
    const RACERS: usize = 8;
    let server = TestServer::start().await;
    let mut events = server.events().await;
    for round in 0..5 {
        let head_before = head(&mut events).await;
        let batch: Vec<NewEvent> = (0..3)
            .map(|i| new_event_with_id("dedupe", "test.dedupe", &format!("r{round}-{i}")))
            .collect();
        let mut tasks = Vec::new();
        for _ in 0..RACERS {
            let mut client = server.events().await;
            let batch = batch.clone();
            tasks.push(tokio::spawn(async move {
                client
                    .publish(publish_req(batch))
                    .await
                    .expect("publish or dedupe")
                    .into_inner()
            }));
        }
        let mut fresh = 0;
        let mut positions = HashSet::new();
        for task in tasks {
            let response = task.await.expect("racer");
            if !response.deduplicated {
                fresh += 1;
            }
            positions.insert(format!("{:?}", response.positions));
        }
        assert_eq!(fresh, 1, "round {round}: exactly one racer appended");
        assert_eq!(
            positions.len(),
            1,
            "round {round}: everyone got the same positions"
        );
        assert_eq!(head(&mut events).await, head_before + 3);
    }
    server.stop().await;
}

#[tokio::test]
async fn restart_loop_keeps_offsets_gapless() {
    // Three graceful stop/start cycles of the in-process server, appending in between.
    let mut server = TestServer::start().await;
    let mut expected = 0;
    for cycle in 0..3 {
        let mut events = server.events().await;
        assert_eq!(
            head(&mut events).await,
            expected,
            "cycle {cycle}: head restored"
        );
        let response = events
            .publish(publish_req(
                (0..5).map(|_| new_event("cycle", "test.cycle")).collect(),
            ))
            .await
            .expect("publish")
            .into_inner();
        assert_eq!(
            position_offsets(&response.positions),
            (expected + 1..=expected + 5).collect::<Vec<_>>()
        );
        expected += 5;
        drop(events);
        let dir = server.stop().await;
        let started = Instant::now();
        server = TestServer::start_in(dir, |_| {}).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "restart is quick"
        );
    }
    let mut events = server.events().await;
    let log = read_all(&mut events).await;
    assert_eq!(offsets(&log), (1..=expected).collect::<Vec<_>>());
    let versions: Vec<u64> = log.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, (1..=expected).collect::<Vec<_>>());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_under_load_keeps_every_acknowledged_append() {
    const WRITERS: usize = 4;
    let server = TestServer::start().await;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut events = server.events().await;
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..100_000u64 {
                let batch = (0..(n % 4 + 1))
                    .map(|i| {
                        new_event_with_id(
                            &format!("load-{w}"),
                            "test.load",
                            &format!("l{w}-{n}-{i}"),
                        )
                    })
                    .collect();
                match events.publish(publish_req(batch)).await {
                    Ok(r) => acked.extend(r.into_inner().positions),
                    Err(_) => return acked,
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dir = tokio::time::timeout(Duration::from_secs(10), server.stop())
        .await
        .expect("stop under load completes");
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("writers notice the stop")
                .expect("writer"),
        );
    }
    assert!(
        acked.len() > 50,
        "only {} appends before the stop",
        acked.len()
    );

    let server = TestServer::start_in(dir, |_| {}).await;
    let mut events = server.events().await;
    let log = read_all(&mut events).await;
    let head_now = head(&mut events).await;
    assert_eq!(offsets(&log), (1..=head_now).collect::<Vec<_>>());
    for position in &acked {
        let event = &log[(position.offset - 1) as usize];
        assert_eq!(
            (&event.id, event.stream_version),
            (&position.id, position.stream_version)
        );
    }
    server.stop().await;
}
