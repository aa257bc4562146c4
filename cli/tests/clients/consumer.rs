//! The library's consumer-group member (`OrdoClient::consume`) against a real server: acks that
//! move the group's progress, rejoining across `kill -9` restarts of the real binary with
//! every event eventually acked, and errors that end the stream instead of retrying forever.

use std::{
    collections::{BTreeSet, HashMap},
    time::Duration,
};

use ordo_client::{
    BackoffPolicy, ClientError, ConsumeOptions, Consumer, ConsumerItem, Nack, OrdoClient,
    v1::{CreateGroupRequest, NewEvent},
};
use ordo_test_harness::{ChildServer, TestServer, api::start};
use tokio::task::JoinSet;
use tokio_stream::StreamExt;

const WAIT: Duration = Duration::from_secs(30);

fn events(from: usize, n: usize) -> Vec<NewEvent> {
    (from..from + n)
        .map(|i| NewEvent {
            stream_id: format!("work-{}", i % 7),
            r#type: "work.item".into(),
            id: format!("work-{i}"),
            data: b"{}".to_vec(),
            datacontenttype: "application/json".into(),
            ..Default::default()
        })
        .collect()
}

fn group(name: &str) -> CreateGroupRequest {
    CreateGroupRequest {
        name: name.into(),
        start: start(),
        ..Default::default()
    }
}

fn fast_backoff() -> BackoffPolicy {
    BackoffPolicy {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(300),
    }
}

/// The next item within `WAIT`; panics on the stream's end.
async fn next(consumer: &mut Consumer) -> Result<ConsumerItem, ClientError> {
    tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("an item within 30 s")
        .expect("the consumer does not end")
}

#[tokio::test]
async fn acks_move_the_group_to_the_head_and_a_nack_brings_the_event_back() {
    let server = TestServer::start().await;
    let client = OrdoClient::connect(server.url()).await.expect("connect");
    client.publish(events(0, 5)).await.expect("publish");
    let mut request = group("g");
    request.retry_backoff = Some(ordo_client::v1::RetryBackoff {
        initial_ms: 50,
        max_ms: 50,
    });
    client.create_group(request).await.expect("create");

    let mut consumer = client
        .consume(ConsumeOptions::new("g").max_in_flight(5))
        .expect("consume");
    match next(&mut consumer).await.expect("joined") {
        ConsumerItem::Joined { max_in_flight, .. } => assert_eq!(max_in_flight, 5),
        other => panic!("expected joined, got {other:?}"),
    }
    let mut seen = Vec::new();
    let mut nacked = false;
    while seen.len() < 6 {
        let ConsumerItem::Delivery(delivery) = next(&mut consumer).await.expect("delivery") else {
            continue;
        };
        seen.push((delivery.offset(), delivery.attempt));
        if delivery.offset() == 3 && !nacked {
            nacked = true;
            let settled = delivery
                .nack(Nack::retry().reason("try again"))
                .await
                .expect("queued");
            settled.await.expect("the nack is durable");
        } else {
            delivery
                .ack()
                .await
                .expect("queued")
                .await
                .expect("durable");
        }
    }
    assert_eq!(
        seen,
        [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (3, 2)],
        "every event once, the nacked one again with attempt 2"
    );
    let status = client.get_group("g").await.expect("get");
    assert_eq!(status.settled_through_offset, 5);
    assert_eq!(status.head_offset, 5);
    consumer.close().await.expect("close");
    let status = client.get_group("g").await.expect("get");
    assert_eq!(status.members, 0, "close leaves the group");
}

/// An extended delivery outlives the group's ack timeout; one that is not extended is given
/// out again, and its late ack is refused with the server's reason.
#[tokio::test]
async fn extend_keeps_a_delivery_past_the_ack_timeout() {
    let server = TestServer::start().await;
    let client = OrdoClient::connect(server.url()).await.expect("connect");
    client.publish(events(0, 2)).await.expect("publish");
    let mut request = group("slow");
    request.ack_timeout_ms = 300;
    client.create_group(request).await.expect("create");
    let mut consumer = client
        .consume(ConsumeOptions::new("slow"))
        .expect("consume");
    let mut held = Vec::new();
    while held.len() < 2 {
        if let ConsumerItem::Delivery(delivery) = next(&mut consumer).await.expect("item") {
            held.push(delivery);
        }
    }
    let forgotten = held.pop().expect("second");
    let kept = held.pop().expect("first");
    kept.extend(Some(Duration::from_secs(10)))
        .await
        .expect("extend queued");
    tokio::time::sleep(Duration::from_millis(900)).await;
    kept.ack()
        .await
        .expect("queued")
        .await
        .expect("the extended delivery is still ours");
    match forgotten.ack().await.expect("queued").await {
        Err(ClientError::FailedPrecondition(message)) => {
            assert!(message.contains("no longer current"), "{message}")
        }
        other => panic!("expected the late ack to be refused, got {other:?}"),
    }
    // The timed-out event comes again, as attempt 2.
    loop {
        if let ConsumerItem::Delivery(again) = next(&mut consumer).await.expect("item") {
            assert_eq!((again.offset(), again.attempt), (2, 2));
            break;
        }
    }
}

#[tokio::test]
async fn an_unknown_or_deleted_group_ends_the_stream_with_not_found() {
    let server = TestServer::start().await;
    let client = OrdoClient::connect(server.url()).await.expect("connect");
    let mut missing = client
        .consume(ConsumeOptions::new("nope").backoff(fast_backoff()))
        .expect("consume");
    match next(&mut missing).await {
        Err(ClientError::NotFound(message)) => {
            assert!(message.contains("does not exist"), "{message}")
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(
        missing.next().await.is_none(),
        "a fatal error ends the stream"
    );

    client.create_group(group("doomed")).await.expect("create");
    let mut member = client
        .consume(ConsumeOptions::new("doomed"))
        .expect("consume");
    assert!(matches!(
        next(&mut member).await,
        Ok(ConsumerItem::Joined { .. })
    ));
    client.delete_group("doomed").await.expect("delete");
    match next(&mut member).await {
        Err(ClientError::NotFound(message)) => {
            assert!(message.contains("was deleted"), "{message}")
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
}

/// Kill -9 the server while a member is acking, restart it on the same port, publish more:
/// the member rejoins by itself, deliveries continue, and every event ends up acked (the
/// group settled through the head). An ack the server confirmed is never followed by another
/// delivery of its event (confirmed means durable); an unconfirmed one may have been made
/// durable before the crash, or its event is delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_rejoins_after_kill9_and_every_event_is_eventually_acked() {
    const BEFORE: usize = 200;
    const AFTER: usize = 100;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = ChildServer::start(dir.path(), None, &[]).await;
    let port = server.addr.port();
    let client = OrdoClient::builder(server.url())
        .lazy(true)
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .expect("client");
    client.publish(events(0, BEFORE)).await.expect("publish");
    client.create_group(group("resume")).await.expect("create");

    let mut consumer = client
        .consume(
            ConsumeOptions::new("resume")
                .max_in_flight(20)
                .backoff(fast_backoff()),
        )
        .expect("consume");
    let mut confirmations: JoinSet<(u64, Result<(), ClientError>)> = JoinSet::new();
    let mut confirmed: BTreeSet<u64> = BTreeSet::new();
    let mut deliveries: HashMap<u64, u32> = HashMap::new();
    let (mut joins, mut reconnects, mut unconfirmed) = (0, 0, 0);
    let mut restarted = false;
    let total = (BEFORE + AFTER) as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        if tokio::time::Instant::now() > deadline {
            let missing: Vec<u64> = (1..=total)
                .filter(|o| !deliveries.contains_key(o))
                .collect();
            let status = client.get_group("resume").await;
            panic!(
                "not every event was acked in 90 s: {} of {total} delivered, {} acks confirmed, {reconnects} reconnects, {joins} joins, {unconfirmed} unconfirmed; never delivered {missing:?}; group {status:?}",
                deliveries.len(),
                confirmed.len(),
            );
        }
        if !restarted && confirmed.len() >= BEFORE / 2 {
            restarted = true;
            server.kill9();
            tokio::time::sleep(Duration::from_millis(200)).await;
            server = ChildServer::start(dir.path(), Some(port), &[]).await;
            let mut published = false;
            while !published {
                published = client.publish(events(BEFORE, AFTER)).await.is_ok();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // Done when everything was delivered and the server has settled all of it: an ack
        // whose answer was lost in the crash may still have been made durable.
        if restarted && deliveries.len() == total as usize && confirmations.is_empty() {
            let status = client.get_group("resume").await.expect("get");
            if status.settled_through_offset == total && status.in_flight == 0 {
                assert_eq!(status.head_offset, total);
                break;
            }
        }
        tokio::select! {
            Some(done) = confirmations.join_next(), if !confirmations.is_empty() => {
                match done.expect("confirmation task") {
                    (offset, Ok(())) => {
                        confirmed.insert(offset);
                    }
                    (_, Err(ClientError::Unavailable(_) | ClientError::FailedPrecondition(_))) => {
                        unconfirmed += 1;
                    }
                    (offset, Err(other)) => panic!("ack of {offset} failed: {other:?}"),
                }
            }
            item = consumer.next() => match item.expect("the consumer never ends") {
                Ok(ConsumerItem::Joined { .. }) => joins += 1,
                Ok(ConsumerItem::Reconnecting { .. }) => reconnects += 1,
                Ok(ConsumerItem::Delivery(delivery)) => {
                    let offset = delivery.offset();
                    assert!(
                        !confirmed.contains(&offset),
                        "event {offset} delivered again after its ack was confirmed"
                    );
                    *deliveries.entry(offset).or_default() += 1;
                    let settlement = delivery.ack().await.expect("ack queued");
                    confirmations.spawn(async move { (offset, settlement.await) });
                }
                Ok(other) => panic!("unexpected item {other:?}"),
                Err(err) => panic!("the consumer failed: {err}"),
            },
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    assert!(
        reconnects >= 1 && joins >= 2,
        "rejoined: {reconnects} reconnects, {joins} joins"
    );
    assert!(
        confirmed.len() > BEFORE / 2,
        "acks after the restart were confirmed"
    );
    let again = deliveries.values().filter(|n| **n > 1).count();
    eprintln!(
        "consume kill9: {total} events, {reconnects} reconnects, {unconfirmed} acks unconfirmed, {again} events delivered more than once"
    );
    consumer.close().await.expect("close");
}
