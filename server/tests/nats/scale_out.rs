//! Scale-out: several stateless Ordo nodes serving one JetStream stream. A write on any node is
//! one log for all: the same offsets everywhere, optimistic concurrency that holds across nodes,
//! and subscribers that move between nodes without a gap or a duplicate.
//!
//! Nodes converge asynchronously: each keeps its own copy of the log, fed from JetStream, so a
//! write acknowledged by one node is visible on another a moment later. Reads on "the other"
//! node therefore poll for up to [`CONVERGE`]; nothing else is relaxed.

use std::{
    future::Future,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use ordo_api::v1::{
    Event, GetOrderRequest, NewEvent, StartPosition, SubscribeRequest, SubscribeResponse,
    event::Payload, subscribe_response::Message,
};
use ordo_test_harness::{NatsCluster, TestServer, api::*};
use tonic::{Code, Streaming};

mod failover;

/// How long one node may lag behind another before the test fails.
const CONVERGE: Duration = Duration::from_secs(5);

/// A JetStream stream name no other test of this process uses.
pub(crate) fn fresh_stream(tag: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("SCALE_{tag}_{}_{n}", std::process::id())
}

/// Two in-process Ordo nodes, each on its own data dir, sharing one new stream of the shared
/// cluster.
async fn two_nodes(tag: &str) -> (TestServer, TestServer) {
    let cluster = NatsCluster::shared();
    let stream = fresh_stream(tag);
    let a = TestServer::start_nats_node(&stream, cluster, |_| {}).await;
    let b = TestServer::start_nats_node(&stream, cluster, |_| {}).await;
    (a, b)
}

/// Polls `attempt` until it yields a value; fails the test after [`CONVERGE`].
async fn eventually<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + CONVERGE;
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what} within {CONVERGE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The whole log as `events`' node serves it, once it holds at least `len` events.
async fn log_with(events: &Events, len: usize) -> Vec<Event> {
    eventually(&format!("a node serves {len} events"), || {
        let mut events = events.clone();
        async move {
            let log = read_all(&mut events).await;
            (log.len() >= len).then_some(log)
        }
    })
    .await
}

fn sub(start: Option<StartPosition>) -> SubscribeRequest {
    SubscribeRequest {
        start,
        filter: None,
        heartbeat_interval_ms: 200,
        ..Default::default()
    }
}

/// Subscribes after `last` on `events`' node. A node whose copy has not reached `last` yet
/// answers OUT_OF_RANGE ("beyond the head"), which lasts only until it converges.
async fn subscribe_after(events: &Events, last: u64) -> Streaming<SubscribeResponse> {
    eventually(&format!("a node accepts after_offset {last}"), || {
        let mut events = events.clone();
        async move {
            match subscribe(&mut events, sub(after(last))).await {
                Ok(stream) => Some(stream),
                Err(status) if status.code() == Code::OutOfRange => None,
                Err(status) => panic!("subscribe after {last}: {status:?}"),
            }
        }
    })
    .await
}

/// Reads events until offset `last`, failing on a gap or a duplicate (offsets must run on from
/// the first one delivered, `first`); caught_up markers and heartbeats are skipped.
async fn events_until(
    stream: &mut Streaming<SubscribeResponse>,
    first: u64,
    last: u64,
) -> Vec<Event> {
    let mut events = Vec::new();
    let mut next = first;
    while next <= last {
        if let Message::Event(event) = next_message(stream).await {
            assert_eq!(event.offset, next, "gap or duplicate");
            next += 1;
            events.push(event);
        }
    }
    events
}

#[tokio::test]
async fn two_nodes_share_one_log() {
    let (a, b) = two_nodes("share").await;
    let (mut events_a, mut events_b) = (a.events().await, b.events().await);
    let mut live_b = subscribe(&mut events_b, sub(start()))
        .await
        .expect("subscribe on B");
    let (history, head) = read_until_caught_up(&mut live_b).await;
    assert!(
        history.is_empty() && head == 0,
        "a new stream is an empty log"
    );

    // Publish on A; B serves it at the same offset, to readers and to its live subscriber.
    let written = publish_req(vec![NewEvent {
        data: b"hello".to_vec(),
        ..new_event_with_id("acct-1", "acct.opened", "share-1")
    }]);
    let position = events_a.publish(written).await.expect("publish on A");
    let position = position.into_inner().positions.remove(0);
    assert_eq!((position.offset, position.stream_version), (1, 1));
    let on_b = log_with(&events_b, 1).await;
    assert_eq!(on_b.len(), 1, "{on_b:?}");
    let event = &on_b[0];
    assert_eq!(
        (event.offset, event.id.as_str(), event.stream_id.as_str()),
        (1, "share-1", "acct-1")
    );
    assert_eq!(event.stream_version, 1);
    assert_eq!(event.payload, Some(Payload::Data(b"hello".to_vec())));
    assert_eq!(
        read_events(&mut live_b, 1).await,
        on_b,
        "B's subscriber gets A's event live, the same as B's log"
    );

    // CreateOrder on A; B serves the same order once it has converged.
    let mut orders_a = a.orders().await;
    let orders_b = b.orders().await;
    let order = orders_a
        .create_order(create_req("cust-share"))
        .await
        .expect("create on A")
        .into_inner()
        .order
        .expect("order");
    assert_eq!((order.version, order.last_offset), (1, 2));
    let on_b = eventually("B serves the order created on A", || {
        let mut orders = orders_b.clone();
        let order_id = order.id.clone();
        async move {
            let request = GetOrderRequest {
                order_id,
                at_version: None,
            };
            match orders.get_order(request).await {
                Ok(response) => Some(response.into_inner().order.expect("order")),
                Err(status) if status.code() == Code::NotFound => None,
                Err(status) => panic!("GetOrder on B: {status:?}"),
            }
        }
    })
    .await;
    assert_eq!(on_b, order);
    let live = read_events(&mut live_b, 1).await;
    assert_eq!(live[0].offset, 2);
    assert_eq!(live[0].stream_id, format!("order-{}", order.id));

    // And back: B's write continues the same offsets and stream versions, and A serves it.
    let back = events_b
        .publish(publish_req(vec![new_event_with_id(
            "acct-1",
            "acct.credited",
            "share-2",
        )]))
        .await
        .expect("publish on B")
        .into_inner()
        .positions
        .remove(0);
    assert_eq!((back.offset, back.stream_version), (3, 2));
    let log_a = log_with(&events_a, 3).await;
    assert_eq!(offsets(&log_a), vec![1, 2, 3]);
    assert_eq!(
        log_a,
        log_with(&events_b, 3).await,
        "both nodes serve one log"
    );
    assert_eq!(read_events(&mut live_b, 1).await[..], log_a[2..]);
    drop((events_a, events_b, orders_a, orders_b, live_b));
    a.stop().await;
    b.stop().await;
}

/// Both nodes publish to one stream at the same expected version, 20 times: each time exactly
/// one wins and the other gets ABORTED naming the version that won, as on one sled node
/// (events::publish). A node must check expectations against the log, not its own copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expected_version_race_across_nodes() {
    const ROUNDS: u64 = 20;
    let (a, b) = two_nodes("race").await;
    let (events_a, events_b) = (a.events().await, b.events().await);
    let mut winners = Vec::new();
    let mut won_by_a = 0;
    for v in 0..ROUNDS {
        let attempt = |events: &Events, node: &str| {
            let mut events = events.clone();
            let event = NewEvent {
                expected_stream_version: Some(v),
                ..new_event_with_id("race-1", "race.won", &format!("{node}-{v}"))
            };
            async move { events.publish(publish_req(vec![event])).await }
        };
        let (on_a, on_b) = tokio::join!(attempt(&events_a, "a"), attempt(&events_b, "b"));
        won_by_a += u32::from(on_a.is_ok());
        let (won, lost) = match (on_a, on_b) {
            (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => (won.into_inner(), lost),
            (Ok(x), Ok(y)) => panic!("round {v}: both appended at version {v}: {x:?} {y:?}"),
            (Err(x), Err(y)) => panic!("round {v}: neither appended: {x:?} / {y:?}"),
        };
        assert_eq!(lost.code(), Code::Aborted, "round {v}: {lost:?}");
        let conflict = format!("stream race-1 is at version {}, expected {v}", v + 1);
        assert!(
            lost.message().contains(&conflict),
            "round {v}: {:?} does not say {conflict:?}",
            lost.message()
        );
        let position = won.positions[0].clone();
        assert_eq!(position.stream_version, v + 1, "round {v}");
        winners.push(position);
    }
    println!("node A won {won_by_a} of {ROUNDS} rounds");

    for events in [&events_a, &events_b] {
        let log = log_with(events, ROUNDS as usize).await;
        assert_eq!(log.len() as u64, ROUNDS, "only the winners were appended");
        assert!(log.iter().all(|e| e.stream_id == "race-1"));
        let versions: Vec<u64> = log.iter().map(|e| e.stream_version).collect();
        assert_eq!(versions, (1..=ROUNDS).collect::<Vec<_>>());
        assert!(
            log.windows(2).all(|w| w[0].offset < w[1].offset),
            "offsets strictly increase"
        );
        assert_eq!(offsets(&log), (1..=ROUNDS).collect::<Vec<_>>());
        for (event, winner) in log.iter().zip(&winners) {
            assert_eq!((&event.id, event.offset), (&winner.id, winner.offset));
        }
    }
    drop((events_a, events_b));
    a.stop().await;
    b.stop().await;
}

/// A subscriber reads part of the log on A, drops, and resumes on B from its last offset: B
/// delivers exactly the rest, history and then live writes made on either node.
#[tokio::test]
async fn subscriber_moves_between_nodes() {
    let (a, b) = two_nodes("move").await;
    let (mut events_a, mut events_b) = (a.events().await, b.events().await);
    for batch in 0..3 {
        let events = (0..10)
            .map(|i| new_event_with_id("move-1", "move.tick", &format!("m-{batch}-{i}")))
            .collect();
        events_a
            .publish(publish_req(events))
            .await
            .expect("publish");
    }
    let mut on_a = subscribe(&mut events_a, sub(start()))
        .await
        .expect("subscribe on A");
    let mut seen = read_events(&mut on_a, 12).await;
    assert_eq!(offsets(&seen), (1..=12).collect::<Vec<_>>());
    drop(on_a);

    let mut on_b = subscribe_after(&events_b, 12).await;
    seen.extend(events_until(&mut on_b, 13, 30).await);
    // Live, while the subscriber is on B: writes on both nodes.
    for (events, node) in [(&mut events_a, "a"), (&mut events_b, "b")] {
        for i in 0..5 {
            let event = new_event_with_id("move-1", "move.live", &format!("{node}-{i}"));
            events
                .publish(publish_req(vec![event]))
                .await
                .expect("publish");
        }
    }
    seen.extend(events_until(&mut on_b, 31, 40).await);
    assert_quiet(&mut on_b, Duration::from_millis(300)).await;
    let log = log_with(&events_a, 40).await;
    assert_eq!(seen, log, "one pass over the log, across two nodes");
    drop((events_a, events_b, on_b));
    a.stop().await;
    b.stop().await;
}
