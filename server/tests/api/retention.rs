//! Retention, black-box: the log keeps its newest events within `--retention-max-bytes` /
//! `--retention-max-age`, begins at a first retained offset that every read reports, keeps the
//! retained range gapless for readers and live subscribers while appends go on, and gives the
//! disk space back to new writes. Orders keep their current state (the projection is their
//! snapshot); webhooks record what they could not deliver.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use ordo_api::v1::{
    CompactRequest, CompactResponse, GetLogInfoRequest, GetLogInfoResponse, GetOrderRequest,
    NewEvent, OrderStatus, ReadEventsRequest, SubscribeRequest, UpdateOrderStatusRequest,
    admin_service_client::AdminServiceClient, subscribe_response::Message,
};
use ordo_server::ServerConfig;
use ordo_test_harness::{TestServer, api::*};
use tonic::{Code, transport::Channel};

type Admin = AdminServiceClient<Channel>;

const KIB: usize = 1024;

/// A 1 KiB event.
fn kib_event(stream: &str) -> NewEvent {
    NewEvent {
        data: vec![b'x'; KIB],
        ..new_event(stream, "test.filler")
    }
}

/// Appends `batches` batches of `per_batch` 1 KiB events.
async fn fill(events: &mut Events, stream: &str, batches: usize, per_batch: usize) {
    for _ in 0..batches {
        let batch = (0..per_batch).map(|_| kib_event(stream)).collect();
        events.publish(publish_req(batch)).await.expect("publish");
    }
}

/// Retention by bytes, compaction on demand (or every `interval`), sled flushed often so that
/// compaction may trim right after a write.
fn retain_bytes(cfg: &mut ServerConfig, max_bytes: u64, interval: Duration) {
    cfg.retention.max_bytes = Some(max_bytes);
    cfg.retention.interval = interval;
    cfg.sled_flush_interval = Duration::from_millis(20);
}

async fn compact(admin: &mut Admin) -> CompactResponse {
    admin
        .compact(CompactRequest {})
        .await
        .expect("compact")
        .into_inner()
}

async fn info(admin: &mut Admin) -> GetLogInfoResponse {
    admin
        .get_log_info(GetLogInfoRequest {})
        .await
        .expect("log info")
        .into_inner()
}

/// Compacts until the first retained offset is past `offset` (sled must have flushed the
/// events first, which takes a flush interval).
async fn compact_past(admin: &mut Admin, offset: u64) -> CompactResponse {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let done = compact(admin).await;
        if done.first_offset_after > offset {
            return done;
        }
        assert!(
            Instant::now() < deadline,
            "compaction never moved the first offset past {offset}: {done:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_consecutive(offsets: &[u64], who: &str) {
    for pair in offsets.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "{who} saw a gap between {} and {}",
            pair[0],
            pair[1]
        );
    }
}

/// Four writers append 1 KiB events while compaction runs every 100 ms with a 512 KiB limit,
/// and live subscribers (three from the head, one from the start) read along. Every subscriber
/// sees consecutive offsets; one that retention overtakes ends with OUT_OF_RANGE naming the
/// first retained offset, never with a gap. Afterwards the log reads back gapless from its
/// first retained offset, which moved, and holds about the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_under_load_keeps_every_subscriber_gapless() {
    const WRITERS: usize = 4;
    const BATCHES: usize = 100;
    const PER_BATCH: usize = 10;
    const MAX_BYTES: u64 = 512 * 1024;
    let server = TestServer::start_with(|cfg| {
        retain_bytes(cfg, MAX_BYTES, Duration::from_millis(100));
    })
    .await;
    let mut admin = server.admin().await;

    // Set once the writers are done: subscribers stop when they reach it.
    let final_head = Arc::new(AtomicU64::new(u64::MAX));
    // The highest first retained offset a heartbeat reported during the load.
    let first_seen = Arc::new(AtomicU64::new(0));
    let mut subscribers = Vec::new();
    for (i, start_at) in [end(), end(), end(), start()].into_iter().enumerate() {
        let mut events = server.events().await;
        let mut stream = subscribe(
            &mut events,
            SubscribeRequest {
                start: start_at,
                heartbeat_interval_ms: 100,
                ..Default::default()
            },
        )
        .await
        .expect("subscribe");
        let seen = Arc::new(Mutex::new((Vec::<u64>::new(), None::<tonic::Status>)));
        let record = seen.clone();
        let final_head = final_head.clone();
        let first_seen = first_seen.clone();
        subscribers.push((
            i,
            seen,
            tokio::spawn(async move {
                loop {
                    let message = tokio::time::timeout(STREAM_TIMEOUT, stream.message())
                        .await
                        .expect("a heartbeat at least, every 100 ms");
                    match message {
                        Ok(Some(message)) => {
                            let mut seen = record.lock().unwrap();
                            match message.message {
                                Some(Message::Event(event)) => seen.0.push(event.offset),
                                Some(Message::Heartbeat(beat)) => {
                                    first_seen.fetch_max(beat.first_offset, Ordering::AcqRel);
                                }
                                _ => {}
                            }
                            // Checked on heartbeats too: the head may be known only after the
                            // last event arrived.
                            let last = seen.0.last().copied().unwrap_or(0);
                            if last >= final_head.load(Ordering::Acquire) {
                                return;
                            }
                        }
                        Ok(None) => return,
                        Err(status) => {
                            record.lock().unwrap().1 = Some(status);
                            return;
                        }
                    }
                }
            }),
        ));
    }

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut events = server.events().await;
        writers.push(tokio::spawn(async move {
            fill(&mut events, &format!("load-{w}"), BATCHES, PER_BATCH).await;
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    let head = head(&mut server.events().await).await;
    assert_eq!(head, (WRITERS * BATCHES * PER_BATCH) as u64);
    final_head.store(head, Ordering::Release);

    for (i, seen, task) in subscribers {
        if tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .is_err()
        {
            let seen = seen.lock().unwrap();
            panic!(
                "subscriber {i} neither reached the head {head} nor ended: {} events, last {:?}, {:?}",
                seen.0.len(),
                seen.0.last(),
                seen.1
            );
        }
        let (offsets, ended) = std::mem::take(&mut *seen.lock().unwrap());
        let who = format!("subscriber {i}");
        assert_consecutive(&offsets, &who);
        match ended {
            None => assert_eq!(
                offsets.last().copied(),
                Some(head),
                "{who} neither reached the head nor was told why"
            ),
            Some(status) => {
                assert_eq!(status.code(), Code::OutOfRange, "{who}: {status:?}");
                assert!(
                    status
                        .message()
                        .contains("is below the first retained offset"),
                    "{who}: {}",
                    status.message()
                );
            }
        }
        if i < 3 {
            assert!(!offsets.is_empty(), "{who} saw nothing");
        }
    }

    assert!(
        first_seen.load(Ordering::Acquire) > 1,
        "no heartbeat during the load reported a trimmed log: retention did not run alongside"
    );

    // One more pass once sled has flushed everything (every 20 ms here): the limit holds.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let done = compact(&mut admin).await;
    let info = info(&mut admin).await;
    assert!(info.first_offset > 1, "retention never trimmed: {info:?}");
    assert_eq!(info.first_offset, done.first_offset_after);
    assert_eq!(info.head_offset, head);
    let retained = read_all(&mut server.events().await).await;
    assert_eq!(
        offsets(&retained),
        (info.first_offset..=head).collect::<Vec<_>>(),
        "the retained range reads back gapless"
    );
    let retained_bytes: usize = retained.iter().map(prost::Message::encoded_len).sum();
    assert!(
        retained_bytes as u64 <= MAX_BYTES + 64 * 1024,
        "retained {retained_bytes} bytes, over the {MAX_BYTES} limit by more than a chunk"
    );
    assert!(
        retained_bytes as u64 >= MAX_BYTES / 2,
        "retention removed too much: {retained_bytes} bytes left"
    );
}

/// Bytes on disk, measured (allocated blocks of sled's files; the journal's preallocated
/// segments are reported apart and left out): 16 MiB appended, then retention down to 1 MiB and
/// another 16 MiB appended with compaction running. Without reclaiming, the second 16 MiB would
/// need as much new space again; with it, sled's files grow by far less, because sled reuses
/// the segments whose events were removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_events_give_their_disk_space_back() {
    const MIB_EVENTS: usize = 1024;
    let server = TestServer::start_with(|cfg| {
        cfg.sled_flush_interval = Duration::from_millis(20);
    })
    .await;
    let mut events = server.events().await;
    fill(&mut events, "disk", 16 * MIB_EVENTS / 64, 64).await;
    let dir = server.stop().await;
    let server = TestServer::start_in(dir, |cfg| {
        retain_bytes(cfg, 1024 * 1024, Duration::from_millis(200));
    })
    .await;
    let mut admin = server.admin().await;
    let sled_bytes = |info: &GetLogInfoResponse| info.disk_bytes - info.journal_bytes;
    let before = sled_bytes(&info(&mut admin).await);
    let done = compact_past(&mut admin, 1).await;
    assert!(done.events_trimmed > 14 * MIB_EVENTS as u64, "{done:?}");
    let trimmed = sled_bytes(&info(&mut admin).await);
    let mut events = server.events().await;
    let mut peak = before;
    for _ in 0..16 {
        fill(&mut events, "disk", MIB_EVENTS / 64, 64).await;
        peak = peak.max(sled_bytes(&info(&mut admin).await));
    }
    compact(&mut admin).await;
    let after = sled_bytes(&info(&mut admin).await);
    eprintln!(
        "sled bytes on disk: {before} after 16 MiB, {trimmed} right after trimming to 1 MiB, {after} after 16 MiB more (peak {peak})"
    );
    assert!(
        after < before + before / 2,
        "the second 16 MiB took new space: {before} -> {after} bytes"
    );
}

/// Event bodies stay in the journal's segments until retention removes them, so retention must
/// delete the segments it empties: 16 MiB appended into 4 MiB segments and trimmed to 1 MiB
/// gives at least two segments (8 MiB) back without any further write, and the retained events
/// read back whole, before and after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_the_journal_segments_it_empties() {
    const MIB_EVENTS: usize = 1024;
    let configure = |cfg: &mut ServerConfig| {
        cfg.journal_segment_bytes = 4 * 1024 * 1024;
        retain_bytes(cfg, 1024 * 1024, Duration::from_secs(3600));
    };
    let server = TestServer::start_with(configure).await;
    let mut events = server.events().await;
    fill(&mut events, "segments", 16 * MIB_EVENTS / 64, 64).await;
    let mut admin = server.admin().await;
    let before = info(&mut admin).await.journal_bytes;
    assert!(before >= 16 * 1024 * 1024, "journal holds {before} bytes");
    let done = compact_past(&mut admin, 1).await;
    assert!(done.events_trimmed > 14 * MIB_EVENTS as u64, "{done:?}");
    // The applier deletes them after its next sled flush.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = info(&mut admin).await.journal_bytes;
    while after > before - 8 * 1024 * 1024 {
        assert!(
            Instant::now() < deadline,
            "journal still holds {after} of {before} bytes after retention"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = info(&mut admin).await.journal_bytes;
    }
    let check = |log: &[ordo_api::v1::Event], first: u64| {
        assert_eq!(log.first().map(|e| e.offset), Some(first));
        assert_consecutive(&offsets(log), "a reader after retention");
        assert!(log.iter().all(|e| matches!(
            &e.payload,
            Some(ordo_api::v1::event::Payload::Data(data)) if data == &vec![b'x'; KIB]
        )));
        assert!(log.len() >= MIB_EVENTS / 2, "{} events left", log.len());
    };
    let first = done.first_offset_after;
    check(&read_all(&mut events).await, first);
    let dir = server.stop().await;
    let server = TestServer::start_in(dir, configure).await;
    check(&read_all(&mut server.events().await).await, first);
}

/// Trims a log of 3000 1 KiB events down to about 256 KiB; returns the first retained offset.
async fn trimmed_log(server: &TestServer) -> u64 {
    fill(&mut server.events().await, "old", 30, 100).await;
    let mut admin = server.admin().await;
    // Compaction trims only what sled has made durable: give it a few flushes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let done = compact_past(&mut admin, 1).await;
    assert_eq!(done.first_offset_before, 1);
    let first = done.first_offset_after;
    assert!(first > 2500, "{done:?}");
    assert_eq!(
        compact(&mut admin).await.first_offset_after,
        first,
        "settled"
    );
    first
}

/// Below the first retained offset: ReadEvents and Subscribe fail with OUT_OF_RANGE naming it
/// (and storing nothing), or start there with `start_at_first_retained`; `start` means the
/// first retained offset; every read reports it; offsets are not reused.
#[tokio::test]
async fn reads_below_the_first_offset_are_refused_or_start_there() {
    let server = TestServer::start_with(|cfg| {
        retain_bytes(cfg, 256 * 1024, Duration::from_secs(3600));
    })
    .await;
    let first = trimmed_log(&server).await;
    let mut events = server.events().await;
    let head = head(&mut events).await;
    assert_eq!(head, 3000);
    assert_eq!(info(&mut server.admin().await).await.first_offset, first);

    let read = |start, opt_in| ReadEventsRequest {
        start,
        limit: 5,
        start_at_first_retained: opt_in,
        ..Default::default()
    };
    let message = assert_status(
        events.read_events(read(after(1), false)).await,
        Code::OutOfRange,
        &format!("offset 2 is below the first retained offset {first}"),
    );
    assert!(message.contains("start_at_first_retained"), "{message}");
    assert_status(
        events.read_events(read(from(first - 1), false)).await,
        Code::OutOfRange,
        &format!("first retained offset {first}"),
    );
    for (start, opt_in) in [
        (after(1), true),
        (start(), false),
        (after(0), false),
        (from(first), false),
    ] {
        let page = events
            .read_events(read(start, opt_in))
            .await
            .expect("read")
            .into_inner();
        assert_eq!(offsets(&page.events)[0], first, "{start:?}");
        assert_eq!(page.first_offset, first);
    }

    let sub = |start, opt_in| SubscribeRequest {
        start,
        start_at_first_retained: opt_in,
        ..Default::default()
    };
    assert_status(
        subscribe(&mut events, sub(after(10), false)).await,
        Code::OutOfRange,
        &format!("offset 11 is below the first retained offset {first}"),
    );
    let mut stream = subscribe(&mut events, sub(after(10), true))
        .await
        .expect("opted in");
    let (got, caught_up) = read_until_caught_up(&mut stream).await;
    assert_eq!(offsets(&got), (first..=head).collect::<Vec<_>>());
    assert_eq!(caught_up, head);

    // Offsets are never reused, and the new event is readable after the retained ones.
    let appended = events
        .publish(publish_req(vec![new_event("new", "test.after")]))
        .await
        .expect("publish")
        .into_inner();
    assert_eq!(position_offsets(&appended.positions), [head + 1]);
    assert_eq!(read_events(&mut stream, 1).await[0].offset, head + 1);
    assert_eq!(self::head(&mut events).await, head + 1);
}

/// A subscriber that stops reading while retention removes what it has not read yet: it gets
/// what was already queued for it, consecutive, then OUT_OF_RANGE naming the first retained
/// offset; never a jump over the removed events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_retention_overtakes_is_told_so() {
    let server = TestServer::start_with(|cfg| {
        retain_bytes(cfg, 256 * 1024, Duration::from_secs(3600));
    })
    .await;
    let mut events = server.events().await;
    events
        .publish(publish_req(vec![kib_event("old")]))
        .await
        .expect("publish");
    let mut stream = subscribe(
        &mut events,
        SubscribeRequest {
            start: start(),
            ..Default::default()
        },
    )
    .await
    .expect("subscribe");
    // Not reading: the server's queue and the connection's windows fill up meanwhile.
    let first = trimmed_log(&server).await;
    let mut got = Vec::new();
    let status = loop {
        match tokio::time::timeout(STREAM_TIMEOUT, stream.message())
            .await
            .expect("a message within the timeout")
        {
            Ok(Some(message)) => {
                if let Some(Message::Event(event)) = message.message {
                    got.push(event.offset);
                }
            }
            Ok(None) => panic!("the stream ended without saying why after {got:?}"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status
            .message()
            .contains(&format!("below the first retained offset {first}")),
        "{}",
        status.message()
    );
    assert_eq!(got[0], 1);
    assert_consecutive(&got, "the slow subscriber");
    assert!(
        (*got.last().unwrap()) < first - 1,
        "it was overtaken, so it cannot have read up to the first offset"
    );
}

/// Orders: the projection is the order's snapshot, so retention removes order events like any
/// other while GetOrder, ListOrders and the next command keep working; a past version that can
/// no longer be rebuilt is OUT_OF_RANGE.
#[tokio::test]
async fn orders_keep_their_state_when_their_events_are_removed() {
    let server = TestServer::start_with(|cfg| {
        retain_bytes(cfg, 256 * 1024, Duration::from_secs(3600));
    })
    .await;
    let mut orders = server.orders().await;
    let created = orders
        .create_order(create_req("cust-ret"))
        .await
        .expect("create")
        .into_inner()
        .order
        .expect("order");
    let paid = orders
        .update_order_status(UpdateOrderStatusRequest {
            order_id: created.id.clone(),
            status: OrderStatus::Paid as i32,
            ..Default::default()
        })
        .await
        .expect("pay")
        .into_inner()
        .order
        .expect("order");
    let first = trimmed_log(&server).await;
    assert!(first > paid.last_offset, "the order's events were removed");

    let get = |at_version| GetOrderRequest {
        order_id: created.id.clone(),
        at_version,
    };
    let current = orders
        .get_order(get(None))
        .await
        .expect("get")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(current, paid);
    assert_status(
        orders.get_order(get(Some(1))).await,
        Code::OutOfRange,
        "versions 1 to 1 were removed by retention",
    );
    let fulfilled = orders
        .update_order_status(UpdateOrderStatusRequest {
            order_id: created.id.clone(),
            status: OrderStatus::Fulfilled as i32,
            expected_version: Some(2),
            ..Default::default()
        })
        .await
        .expect("the next command works on the snapshot")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(fulfilled.version, 3);
    assert_eq!(fulfilled.status(), OrderStatus::Fulfilled);
    let rebuilt = orders
        .get_order(get(Some(3)))
        .await
        .expect_err("version 3 needs versions 1 and 2");
    assert_eq!(rebuilt.code(), Code::OutOfRange);
    let stream = read_filtered(
        &mut server.events().await,
        filter(&[], &[&format!("order-{}", created.id)]),
    )
    .await;
    assert_eq!(
        stream.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        [3]
    );
}

/// Retention by age: events older than the limit go, newer ones stay.
#[tokio::test]
async fn retention_by_age_removes_only_old_events() {
    let server = TestServer::start_with(|cfg| {
        cfg.retention.max_age = Some(Duration::from_millis(800));
        cfg.retention.interval = Duration::from_secs(3600);
        cfg.sled_flush_interval = Duration::from_millis(20);
    })
    .await;
    let mut events = server.events().await;
    fill(&mut events, "aged", 2, 100).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    fill(&mut events, "fresh", 1, 100).await;
    let done = compact_past(&mut server.admin().await, 1).await;
    assert_eq!(done.first_offset_after, 201, "{done:?}");
    assert_eq!(done.events_trimmed, 200);
    let kept = read_all(&mut events).await;
    assert_eq!(offsets(&kept), (201..=300).collect::<Vec<_>>());
    assert!(kept.iter().all(|e| e.stream_id == "fresh"));
}
