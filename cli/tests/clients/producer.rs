//! The library's streaming [`Producer`](ordo_client::Producer) against the real binary: acks in
//! send order, a refusal that leaves the stream going, and the documented recovery after
//! `kill -9` (reconnect, resend what was not acked with the same ids) ending with each event
//! exactly once.

use std::{collections::HashMap, time::Duration};

use ordo_client::{AckFuture, ClientError, OrdoClient, v1::NewEvent};
use ordo_test_harness::{ChildServer, TestServer};

fn reading(n: u64) -> NewEvent {
    NewEvent {
        stream_id: format!("meter-{}", n % 3),
        r#type: "meter.reading".into(),
        id: format!("reading-{n}"),
        data: format!("{{\"n\":{n}}}").into_bytes(),
        datacontenttype: "application/json".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_acks_in_order_and_survives_a_refusal() {
    let server = TestServer::start().await;
    let client = OrdoClient::connect(server.url()).await.expect("connect");
    let mut producer = client.producer().await.expect("producer");
    assert_eq!(producer.max_in_flight(), 1000);
    let mut acks = Vec::new();
    for n in 1..=2500 {
        let event = if n == 1200 {
            NewEvent {
                r#type: "bad type".into(),
                ..reading(n)
            }
        } else {
            reading(n)
        };
        acks.push(producer.send(event).await.expect("send"));
        assert!(producer.in_flight() <= 1000);
    }
    producer.flush().await;
    assert_eq!(producer.in_flight(), 0);
    let mut offsets = Vec::new();
    for (i, ack) in acks.into_iter().enumerate() {
        match ack.await {
            Ok(ack) => {
                assert_eq!(ack.client_seq, i as u64 + 1);
                offsets.push(ack.position.offset);
            }
            Err(ClientError::InvalidArgument(message)) => {
                assert_eq!(i + 1, 1200, "{message}");
                assert!(message.contains("event.type"), "{message}");
            }
            Err(other) => panic!("event {}: {other:?}", i + 1),
        }
    }
    assert_eq!(offsets, (1..=2499).collect::<Vec<u64>>());
    producer.close().await.expect("clean close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_resends_by_id_after_kill9_and_each_event_is_stored_once() {
    const TOTAL: u64 = 20_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ChildServer::start(dir.path(), None, &[]).await;
    let port = server.addr.port();
    let client = OrdoClient::builder(server.url())
        .lazy(true)
        .connect()
        .await
        .expect("client");

    let mut acked: HashMap<u64, u64> = HashMap::new();
    let mut killer = Some(server);
    let mut restarted = None;
    let mut next = 1;
    let mut reconnects = 0;
    while next <= TOTAL {
        let mut producer = match client.producer().await {
            Ok(producer) => producer,
            Err(err) if err.is_retryable() => {
                reconnects += 1;
                assert!(reconnects < 200, "never reconnected: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(err) => panic!("{err}"),
        };
        let mut in_flight: std::collections::VecDeque<(u64, AckFuture)> = Default::default();
        let mut to_send = next;
        loop {
            if to_send <= TOTAL && in_flight.len() < 1000 {
                match producer.send(reading(to_send)).await {
                    Ok(ack) => {
                        in_flight.push_back((to_send, ack));
                        to_send += 1;
                        continue;
                    }
                    Err(err) => {
                        assert!(err.is_retryable(), "{err}");
                        break;
                    }
                }
            }
            let Some((n, ack)) = in_flight.pop_front() else {
                break;
            };
            match ack.await {
                Ok(ack) => {
                    acked.insert(n, ack.position.offset);
                    next = n + 1;
                }
                Err(err) => {
                    assert!(err.is_retryable(), "{err}");
                    break;
                }
            }
            // Kill the server once, mid-stream, with many events in flight.
            if n == TOTAL / 3
                && let Some(server) = killer.take()
            {
                server.kill9();
                restarted = Some(ChildServer::start(dir.path(), Some(port), &[]).await);
            }
        }
    }
    assert!(restarted.is_some(), "the server was never killed");
    let ids: Vec<String> = crate::read_all(&client)
        .await
        .into_iter()
        .map(|e| e.id)
        .collect();
    let expected: Vec<String> = (1..=TOTAL).map(|n| format!("reading-{n}")).collect();
    assert_eq!(ids.len() as u64, TOTAL, "each event exactly once");
    assert_eq!(ids, expected, "and in send order");
}
