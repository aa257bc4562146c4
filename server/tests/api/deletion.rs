//! Stream deletion, black-box: after `AdminService/DeleteStream` no read, subscription or
//! restart returns the stream's events, cursors and `next_after_offset` move past them, the
//! other events keep their offsets, the stream's versions are not reused, and the next
//! compaction removes the events from storage (checked in a backup of the live data). Bad
//! requests get their status and change nothing.

use std::time::Duration;

use ordo_api::v1::{
    BackupRequest, CompactRequest, DeleteStreamRequest, GetLogInfoRequest, NewEvent,
    ReadEventsRequest, SubscribeRequest, admin_service_client::AdminServiceClient,
    backup_response::Message as BackupMessage, subscribe_response::Message,
};
use ordo_test_harness::{TestServer, api::*};
use tonic::{Code, transport::Channel};

type Admin = AdminServiceClient<Channel>;

/// A payload no other event carries, to look for in storage.
const SECRET: &[u8] = b"customer-42-home-address-7f3a9c";

fn customer_event() -> NewEvent {
    NewEvent {
        data: SECRET.to_vec(),
        ..new_event("customer-42", "customer.updated")
    }
}

async fn delete(admin: &mut Admin, stream_id: &str) -> Result<(u64, u64), tonic::Status> {
    admin
        .delete_stream(DeleteStreamRequest {
            stream_id: stream_id.into(),
        })
        .await
        .map(|r| {
            let r = r.into_inner();
            (r.deleted_through_version, r.deleted_at_offset)
        })
}

/// The whole live state as a backup holds it.
async fn backup_bytes(admin: &mut Admin) -> Vec<u8> {
    let mut stream = admin
        .backup(BackupRequest {})
        .await
        .expect("backup")
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(message) = stream.message().await.expect("backup stream") {
        if let Some(BackupMessage::Data(data)) = message.message {
            bytes.extend_from_slice(&data);
        }
    }
    bytes
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether any journal segment in `data_dir` holds `needle`: the journal keeps the events'
/// bodies, so a deletion must zero them there too.
fn journal_holds(data_dir: &std::path::Path, needle: &[u8]) -> bool {
    std::fs::read_dir(data_dir.join("journal"))
        .expect("journal dir")
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".journal"))
        .any(|entry| {
            let bytes = std::fs::read(entry.path()).unwrap_or_default();
            memchr::memmem::find(&bytes, needle).is_some()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_stream_is_gone_from_reads_subscriptions_and_storage() {
    let server = TestServer::start_with(|cfg| {
        cfg.retention.interval = Duration::from_secs(3600);
        cfg.sled_flush_interval = Duration::from_millis(20);
    })
    .await;
    let mut events = server.events().await;
    let mut admin = server.admin().await;
    // Offsets 1..=6: customer-42 at 2, 4, 6, others in between.
    for n in 0..3 {
        events
            .publish(publish_req(vec![
                new_event(&format!("other-{n}"), "other.happened"),
                customer_event(),
            ]))
            .await
            .expect("publish");
    }
    let mut live = subscribe(
        &mut events,
        SubscribeRequest {
            start: after(6),
            filter: filter(&[], &["customer-*", "other-*"]),
            heartbeat_interval_ms: 100,
            ..Default::default()
        },
    )
    .await
    .expect("subscribe");
    read_until_caught_up(&mut live).await;

    assert_eq!(
        delete(&mut admin, "customer-42").await.expect("delete"),
        (3, 6)
    );
    // Again, with nothing new: the same tombstone.
    assert_eq!(
        delete(&mut admin, "customer-42").await.expect("again"),
        (3, 6)
    );

    let check_hidden = async |events: &mut Events| {
        let all = read_all(events).await;
        assert_eq!(offsets(&all), [1, 3, 5]);
        let page = events
            .read_events(ReadEventsRequest {
                start: start(),
                filter: filter(&[], &["customer-42"]),
                ..Default::default()
            })
            .await
            .expect("read")
            .into_inner();
        assert!(page.events.is_empty());
        assert_eq!(
            page.next_after_offset, page.head_offset,
            "scanned past them"
        );
        let mut stream = subscribe(
            events,
            SubscribeRequest {
                start: start(),
                ..Default::default()
            },
        )
        .await
        .expect("subscribe");
        let (replayed, _) = read_until_caught_up(&mut stream).await;
        assert_eq!(offsets(&replayed), [1, 3, 5]);
    };
    check_hidden(&mut events).await;

    // Versions go on after the deleted ones, and new events are visible, live too.
    let appended = events
        .publish(publish_req(vec![new_event(
            "customer-42",
            "customer.created",
        )]))
        .await
        .expect("publish")
        .into_inner();
    assert_eq!(appended.positions[0].stream_version, 4);
    assert_eq!(appended.positions[0].offset, 7);
    assert_eq!(offsets(&read_events(&mut live, 1).await), [7]);

    let before = admin
        .get_log_info(GetLogInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(before.pending_deleted_streams, 1);
    assert!(contains(&backup_bytes(&mut admin).await, SECRET));
    assert!(journal_holds(server.dir.path(), SECRET));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let done = admin
        .compact(CompactRequest {})
        .await
        .expect("compact")
        .into_inner();
    assert_eq!((done.streams_removed, done.deleted_events_removed), (1, 3));
    assert_eq!(done.first_offset_after, 1, "deletion is not retention");
    let after = admin
        .get_log_info(GetLogInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(after.pending_deleted_streams, 0);
    assert!(
        !contains(&backup_bytes(&mut admin).await, SECRET),
        "the deleted events are still in the live data"
    );
    // The journal's copies are zeroed after the next sled flush (20 ms here).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while journal_holds(server.dir.path(), SECRET) {
        assert!(
            std::time::Instant::now() < deadline,
            "the deleted events are still in the journal's segments"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all = read_all(&mut events).await;
    assert_eq!(offsets(&all), [1, 3, 5, 7]);

    // And after a restart, with the tombstone gone.
    drop((events, admin, live));
    let dir = server.stop().await;
    let server = TestServer::start_in(dir, |_| {}).await;
    let mut events = server.events().await;
    let all = read_all(&mut events).await;
    assert_eq!(offsets(&all), [1, 3, 5, 7]);
    assert_eq!(all[3].stream_version, 4);
}

/// A subscriber whose filter matches only a deleted stream gets none of it, while its
/// caught-up marker and heartbeats report the deleted events scanned (its resume point).
#[tokio::test]
async fn cursors_move_past_deleted_events() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    for _ in 0..5 {
        events
            .publish(publish_req(vec![customer_event()]))
            .await
            .expect("publish");
    }
    events
        .publish(publish_req(vec![new_event("other-1", "other.happened")]))
        .await
        .expect("publish");
    delete(&mut server.admin().await, "customer-42")
        .await
        .expect("delete");
    let mut stream = subscribe(
        &mut events,
        SubscribeRequest {
            start: start(),
            filter: filter(&[], &["customer-*"]),
            heartbeat_interval_ms: 100,
            ..Default::default()
        },
    )
    .await
    .expect("subscribe");
    let (got, caught_up) = read_until_caught_up(&mut stream).await;
    assert!(got.is_empty());
    assert_eq!(caught_up, 6);
    loop {
        if let Message::Heartbeat(beat) = next_message(&mut stream).await {
            assert_eq!(beat.scanned_offset, 6);
            break;
        }
    }
}

/// Bad requests: each gets its status and message, and nothing is deleted.
#[tokio::test]
async fn bad_delete_requests_change_nothing() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    events
        .publish(publish_req(vec![customer_event()]))
        .await
        .expect("publish");
    let mut orders = server.orders().await;
    let order = orders
        .create_order(create_req("cust-1"))
        .await
        .expect("create")
        .into_inner()
        .order
        .expect("order");
    let mut admin = server.admin().await;
    assert_status(
        delete(&mut admin, "").await,
        Code::InvalidArgument,
        "stream_id is required",
    );
    assert_status(
        delete(&mut admin, "bad stream").await,
        Code::InvalidArgument,
        "stream_id contains ' '",
    );
    assert_status(
        delete(&mut admin, "customer-404").await,
        Code::NotFound,
        "stream \"customer-404\" has no events to delete",
    );
    assert_status(
        delete(&mut admin, &format!("order-{}", order.id)).await,
        Code::FailedPrecondition,
        "orders cannot be deleted",
    );
    let info = admin
        .get_log_info(GetLogInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.pending_deleted_streams, 0);
    assert_eq!(offsets(&read_all(&mut events).await), [1, 2]);
}

/// `kill -9` anywhere after a deletion (before, during or after the compaction that removes
/// the stream, and around the sled flush after which the journal's copies are zeroed): after
/// restarts, no journal segment holds a deleted event's payload, and every other event is
/// still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_payloads_leave_the_journal_even_when_the_server_is_killed() {
    use ordo_api::v1::event_service_client::EventServiceClient;
    use ordo_test_harness::ChildServer;
    use rand::{Rng, SeedableRng};

    const FLAGS: &[&str] = &[
        "--sled-flush-ms",
        "50",
        "--compaction-interval",
        "100ms",
        "--journal-segment-mb",
        "4",
    ];
    const BATCHES: usize = 64;
    let seed = rand::random::<u64>();
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut secrets = Vec::new();
    let trials = 8;
    for trial in 0..trials {
        let server = ChildServer::start(dir.path(), None, FLAGS).await;
        let channel = Channel::from_shared(server.url())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let mut events = EventServiceClient::new(channel.clone());
        let mut admin = AdminServiceClient::new(channel);
        let secret = format!("deleted-payload-of-trial-{trial}-{seed:016x}");
        let stream = format!("customer-{trial}");
        // One chunk per batch, each holding a deleted event between kept ones.
        for n in 0..BATCHES {
            events
                .publish(publish_req(vec![
                    new_event(&format!("kept-{trial}-{n}"), "other.happened"),
                    NewEvent {
                        data: secret.clone().into_bytes(),
                        ..new_event(&stream, "customer.updated")
                    },
                    new_event(&format!("kept-{trial}-{n}"), "other.happened"),
                ]))
                .await
                .expect("publish");
        }
        delete(&mut admin, &stream).await.expect("delete");
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..250))).await;
        server.kill9();
        secrets.push(secret);
    }
    let server = ChildServer::start(dir.path(), None, FLAGS).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let left = |secrets: &[String]| -> Vec<String> {
        secrets
            .iter()
            .filter(|s| journal_holds(dir.path(), s.as_bytes()))
            .cloned()
            .collect()
    };
    loop {
        let still = left(&secrets);
        if still.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "deleted payloads are still in the journal's segments: {still:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let channel = Channel::from_shared(server.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let all = read_all(&mut EventServiceClient::new(channel)).await;
    assert_eq!(all.len(), trials * BATCHES * 2, "the kept events");
    assert!(all.iter().all(|e| e.stream_id.starts_with("kept-")));
}
