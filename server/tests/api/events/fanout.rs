//! Fan-out on a crowded server: past 64 open streams, live subscribers wait on a paced copy of
//! the head (several commits per wake-up). Every subscriber must still see every event once, in
//! order, promptly, and one that joins mid-way sees the seam as usual.

use std::time::{Duration, Instant};

use ordo_api::v1::event_service_client::EventServiceClient;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crowded_live_subscribers_see_every_event_once_in_order() {
    const SUBSCRIBERS: usize = 80;
    const EVENTS: usize = 120;
    let server = TestServer::start().await;
    let channel = server.channel().await;
    let mut streams = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let mut events = EventServiceClient::new(channel.clone());
        let mut stream = subscribe(&mut events, sub(start()))
            .await
            .expect("subscribe");
        let (history, head) = read_until_caught_up(&mut stream).await;
        assert!(history.is_empty() && head == 0);
        streams.push(stream);
    }
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                let mut seen = Vec::with_capacity(EVENTS);
                let mut slowest = Duration::ZERO;
                while seen.len() < EVENTS {
                    let event = read_events(&mut stream, 1).await.remove(0);
                    let Some(Payload::Data(data)) = &event.payload else {
                        panic!("published events carry data");
                    };
                    let sent: u64 = String::from_utf8_lossy(data).parse().expect("ms");
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .expect("clock")
                        .as_millis() as u64;
                    slowest = slowest.max(Duration::from_millis(now.saturating_sub(sent)));
                    seen.push(event.offset);
                }
                (seen, slowest)
            })
        })
        .collect();

    let mut events = EventServiceClient::new(channel.clone());
    let mut late_joiner: Option<tokio::task::JoinHandle<Vec<u64>>> = None;
    let started = Instant::now();
    for n in 0..EVENTS {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis();
        let event = NewEvent {
            data: now.to_string().into_bytes(),
            ..new_event("crowd", "test.crowd")
        };
        publish(&mut events, vec![event]).await;
        if n == EVENTS / 2 {
            // A late joiner crosses the seam while the server is crowded.
            let mut late = subscribe(&mut events, sub(start()))
                .await
                .expect("subscribe");
            let (history, head) = read_until_caught_up(&mut late).await;
            late_joiner = Some(tokio::spawn(async move {
                let rest = read_events(&mut late, EVENTS - head as usize).await;
                offsets(&history)
                    .into_iter()
                    .chain(offsets(&rest))
                    .collect::<Vec<_>>()
            }));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let late = tokio::time::timeout(Duration::from_secs(30), late_joiner.expect("joined"))
        .await
        .expect("late joiner finishes")
        .expect("late joiner");
    assert_eq!(
        late,
        (1..=EVENTS as u64).collect::<Vec<_>>(),
        "late joiner: every event once, in order"
    );
    let mut worst = Duration::ZERO;
    for reader in readers {
        let (seen, slowest) = tokio::time::timeout(Duration::from_secs(30), reader)
            .await
            .expect("subscribers finish")
            .expect("reader");
        assert_eq!(seen, (1..=EVENTS as u64).collect::<Vec<_>>());
        worst = worst.max(slowest);
    }
    println!(
        "{SUBSCRIBERS} subscribers, {EVENTS} events in {:?}; slowest delivery {worst:?}",
        started.elapsed()
    );
    // Pacing holds changes back by milliseconds, not seconds (generous for a debug build on a
    // busy two-core machine).
    assert!(worst < Duration::from_secs(2), "slowest delivery {worst:?}");
}
