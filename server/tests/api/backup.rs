//! Online backup and restore, black-box: a backup taken over `AdminService/Backup` while
//! writers keep appending restores (with the same library function `ordo-server restore` runs)
//! into a new data dir that a server starts on, holding a gapless prefix of the source log with
//! every event acknowledged before the backup began, and the same orders and webhooks. Damaged,
//! cut-short and misdirected restores write nothing.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use ordo_api::v1::{
    BackupRequest, BackupSummary, CompactRequest, CreateWebhookRequest, DeleteStreamRequest,
    EventPosition, GetOrderRequest, ListOrdersRequest, ListWebhooksRequest, Order, OrderStatus,
    UpdateOrderStatusRequest, Webhook, admin_service_client::AdminServiceClient,
    backup_response::Message, webhook_service_client::WebhookServiceClient,
};
use ordo_server::admin::backup::{BACKUP_FILE, restore};
use ordo_test_harness::{TestServer, api::*};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

type Admin = AdminServiceClient<Channel>;

/// Streams a backup into `dir/ordo.backup`; returns its summary.
async fn backup_to(admin: &mut Admin, dir: &Path) -> BackupSummary {
    let mut stream = admin
        .backup(BackupRequest {})
        .await
        .expect("backup")
        .into_inner();
    let mut bytes = Vec::new();
    let mut summary = None;
    while let Some(message) = stream.message().await.expect("backup stream") {
        match message.message {
            Some(Message::Data(data)) => bytes.extend_from_slice(&data),
            Some(Message::Summary(s)) => summary = Some(s),
            None => panic!("empty backup message"),
        }
    }
    let summary = summary.expect("a backup ends with its summary");
    assert_eq!(summary.bytes, bytes.len() as u64);
    assert_eq!(summary.sha256, hex(&Sha256::digest(&bytes)));
    std::fs::write(dir.join(BACKUP_FILE), bytes).expect("write backup");
    summary
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn all_orders(orders: &mut Orders) -> Vec<Order> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = orders
            .list_orders(ListOrdersRequest {
                page_size: 500,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .expect("list orders")
            .into_inner();
        all.extend(page.orders);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}

/// Webhook definitions (what a backup must keep; delivery progress moves on its own).
async fn webhook_definitions(channel: Channel) -> Vec<Webhook> {
    let mut hooks = WebhookServiceClient::new(channel);
    let mut all = hooks
        .list_webhooks(ListWebhooksRequest::default())
        .await
        .expect("list webhooks")
        .into_inner()
        .webhooks;
    for hook in &mut all {
        hook.delivered_through_offset = 0;
        hook.updated_at = None;
    }
    all
}

/// What the writers saw acknowledged, each with when the acknowledgement arrived.
#[derive(Default)]
struct Acked {
    events: Vec<(Instant, EventPosition)>,
    orders: Vec<(Instant, Order)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_write_load_restores_to_a_gapless_prefix() {
    let server = TestServer::start_with(|cfg| {
        cfg.sled_flush_interval = Duration::from_millis(50);
        cfg.webhooks.allow_nets = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let mut orders = server.orders().await;
    // State from before the load: orders moved along, webhooks (matching nothing, so their
    // delivery sends no request).
    for n in 0..5 {
        let order = orders
            .create_order(create_req(&format!("early-{n}")))
            .await
            .expect("create")
            .into_inner()
            .order
            .expect("order");
        if n % 2 == 0 {
            orders
                .update_order_status(UpdateOrderStatusRequest {
                    order_id: order.id,
                    status: OrderStatus::Paid as i32,
                    ..Default::default()
                })
                .await
                .expect("pay");
        }
    }
    let mut hooks = WebhookServiceClient::new(server.channel().await);
    for n in 0..3 {
        hooks
            .create_webhook(CreateWebhookRequest {
                url: format!("http://127.0.0.1:9/hook-{n}"),
                event_types: vec!["nothing.matches".into()],
                description: format!("hook {n}"),
                ..Default::default()
            })
            .await
            .expect("create webhook");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let channel = server.channel().await;
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut events =
                ordo_api::v1::event_service_client::EventServiceClient::new(channel.clone());
            let mut orders = ordo_api::v1::order_service_client::OrderServiceClient::new(channel);
            let mut acked = Acked::default();
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                n += 1;
                if w == 0 {
                    let order = orders
                        .create_order(create_req(&format!("load-{n}")))
                        .await
                        .expect("create")
                        .into_inner()
                        .order
                        .expect("order");
                    acked.orders.push((Instant::now(), order));
                    continue;
                }
                let batch = (0..(n % 3 + 1))
                    .map(|i| {
                        new_event_with_id(
                            &format!("load-{w}"),
                            "test.load",
                            &format!("{w}-{n}-{i}"),
                        )
                    })
                    .collect();
                let positions = events
                    .publish(publish_req(batch))
                    .await
                    .expect("publish")
                    .into_inner()
                    .positions;
                let at = Instant::now();
                acked.events.extend(positions.into_iter().map(|p| (at, p)));
            }
            acked
        }));
    }

    tokio::time::sleep(Duration::from_millis(500)).await;
    let backup_dir = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let summary = backup_to(&mut server.admin().await, backup_dir.path()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Release);
    let mut acked = Acked::default();
    for writer in writers {
        let done = writer.await.expect("writer");
        acked.events.extend(done.events);
        acked.orders.extend(done.orders);
    }
    let source_log = read_all(&mut server.events().await).await;
    assert!(
        source_log.len() as u64 > summary.head_offset,
        "the writers went on during and after the backup"
    );
    let before: Vec<EventPosition> = acked
        .events
        .iter()
        .filter(|(at, _)| *at < started)
        .map(|(_, p)| p.clone())
        .collect();
    assert!(before.len() > 50, "too little load before the backup");

    let restored_dir = tempfile::tempdir().expect("temp dir");
    let done = restore(backup_dir.path(), restored_dir.path()).expect("restore");
    assert_eq!(done.head, summary.head_offset);
    let restored = TestServer::start_in(restored_dir, |_| {}).await;
    let restored_log = read_all(&mut restored.events().await).await;

    // A gapless prefix of the source, event for event, holding everything acked before.
    assert_eq!(restored_log.len() as u64, summary.head_offset);
    assert_eq!(summary.first_offset, 1);
    assert_log_holds(&restored_log, &before);
    assert_eq!(restored_log[..], source_log[..restored_log.len()]);

    // Orders: the same as the source's, for every order in the prefix, and only those.
    let head = summary.head_offset;
    let restored_orders = all_orders(&mut restored.orders().await).await;
    let source_orders = all_orders(&mut orders).await;
    let in_prefix: Vec<&Order> = source_orders
        .iter()
        .filter(|o| o.last_offset <= head)
        .collect();
    assert_eq!(restored_orders.iter().collect::<Vec<_>>(), in_prefix);
    for (at, order) in &acked.orders {
        if *at < started {
            assert!(
                restored_orders.iter().any(|o| o.id == order.id),
                "order {} acknowledged before the backup is missing",
                order.id
            );
        }
    }
    let mut restored_orders_client = restored.orders().await;
    let sample = &restored_orders[0];
    let as_source = orders
        .get_order(GetOrderRequest {
            order_id: sample.id.clone(),
            at_version: Some(1),
        })
        .await
        .expect("source fold");
    let as_restored = restored_orders_client
        .get_order(GetOrderRequest {
            order_id: sample.id.clone(),
            at_version: Some(1),
        })
        .await
        .expect("restored fold");
    assert_eq!(as_source.into_inner(), as_restored.into_inner());

    // Webhooks: the same definitions.
    assert_eq!(
        webhook_definitions(restored.channel().await).await,
        webhook_definitions(server.channel().await).await
    );

    // The restored server takes appends after its head.
    let appended = restored
        .events()
        .await
        .publish(publish_req(vec![new_event("after", "test.restored")]))
        .await
        .expect("publish")
        .into_inner();
    assert_eq!(appended.positions[0].offset, head + 1);
}

/// What a backup keeps besides events: the first retained offset, and deleted streams stay
/// deleted (a tombstone not yet compacted is restored with them).
#[tokio::test]
async fn a_backup_keeps_retention_and_deletions() {
    let server = TestServer::start_with(|cfg| {
        cfg.retention.max_bytes = Some(32 * 1024);
        cfg.retention.interval = Duration::from_secs(3600);
        cfg.sled_flush_interval = Duration::from_millis(20);
    })
    .await;
    let mut events = server.events().await;
    for _ in 0..10 {
        let batch = (0..10)
            .map(|_| ordo_api::v1::NewEvent {
                data: vec![b'x'; 1024],
                ..new_event("filler", "test.filler")
            })
            .collect();
        events.publish(publish_req(batch)).await.expect("publish");
    }
    events
        .publish(publish_req(vec![new_event(
            "customer-7",
            "customer.updated",
        )]))
        .await
        .expect("publish");
    let mut admin = server.admin().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let first = admin
        .compact(CompactRequest {})
        .await
        .expect("compact")
        .into_inner()
        .first_offset_after;
    assert!(first > 1);
    admin
        .delete_stream(DeleteStreamRequest {
            stream_id: "customer-7".into(),
        })
        .await
        .expect("delete");
    let source = read_all(&mut events).await;

    let backup_dir = tempfile::tempdir().expect("temp dir");
    let summary = backup_to(&mut admin, backup_dir.path()).await;
    assert_eq!((summary.first_offset, summary.head_offset), (first, 101));
    let restored_dir = tempfile::tempdir().expect("temp dir");
    restore(backup_dir.path(), restored_dir.path()).expect("restore");
    let restored = TestServer::start_in(restored_dir, |_| {}).await;
    let restored_log = read_all(&mut restored.events().await).await;
    assert_eq!(restored_log, source);
    assert_eq!(offsets(&restored_log), (first..=100).collect::<Vec<_>>());
    let page = restored
        .events()
        .await
        .read_events(ordo_api::v1::ReadEventsRequest::default())
        .await
        .expect("read")
        .into_inner();
    assert_eq!(page.first_offset, first);
}

/// A damaged, cut-short or misdirected restore fails with a message that says what is wrong,
/// and writes nothing into the target directory.
#[tokio::test]
async fn broken_restores_write_nothing() {
    let server = TestServer::start().await;
    server
        .events()
        .await
        .publish(publish_req(vec![new_event("s", "t")]))
        .await
        .expect("publish");
    let backup_dir = tempfile::tempdir().expect("temp dir");
    backup_to(&mut server.admin().await, backup_dir.path()).await;
    let good = std::fs::read(backup_dir.path().join(BACKUP_FILE)).expect("read");

    let attempt = |bytes: &[u8]| {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join(BACKUP_FILE), bytes).expect("write");
        let target = tempfile::tempdir().expect("temp dir");
        let err = restore(dir.path(), target.path()).expect_err("refused");
        let left = std::fs::read_dir(target.path()).expect("list").count();
        assert_eq!(left, 0, "a refused restore wrote into the target");
        err.to_string()
    };
    let mut flipped = good.clone();
    flipped[40] ^= 0x10;
    let message = attempt(&flipped);
    assert!(message.contains("is damaged at byte 0"), "{message}");
    let message = attempt(&good[..good.len() - 30]);
    assert!(
        message.contains("the file ends inside a frame"),
        "{message}"
    );
    let message = attempt(&good[..trailer_start(&good)]);
    assert!(message.contains("has no trailer"), "{message}");

    let busy = tempfile::tempdir().expect("temp dir");
    std::fs::write(busy.path().join("keep"), b"x").expect("write");
    let err = restore(backup_dir.path(), busy.path()).expect_err("not empty");
    assert!(err.to_string().contains("is not empty"), "{err}");
}

/// Where the last frame (the trailer) starts, walking the frames' headers from the start.
fn trailer_start(bytes: &[u8]) -> usize {
    let mut pos = 0;
    let mut last = 0;
    while pos + 24 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().expect("4 bytes"));
        last = pos;
        pos += 24 + len as usize;
    }
    last
}
