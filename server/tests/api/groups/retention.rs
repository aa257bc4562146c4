//! Groups behind the log's first offset and groups over deleted streams: events retention
//! removed before the group settled them are skipped visibly (counted in `trimmed`), and
//! events of deleted streams are never delivered, yet the group's progress reaches the head.

use std::time::{Duration, Instant};

use ordo_api::v1::{CompactRequest, DeleteStreamRequest};
use ordo_test_harness::{
    TestServer,
    consumer::{Member, group_req, offset_of},
};

use super::*;

#[tokio::test]
async fn events_retention_removed_are_skipped_and_counted() {
    if ordo_test_harness::unsupported_on_nats("retention") {
        return;
    }
    let server = TestServer::start_with(|cfg| {
        cfg.retention.max_age = Some(Duration::from_millis(800));
        cfg.retention.interval = Duration::from_secs(3600);
        cfg.sled_flush_interval = Duration::from_millis(20);
    })
    .await;
    let mut events = server.events().await;
    let mut consumers = server.consumers().await;
    let mut admin = server.admin().await;
    publish(&mut events, 200, 4).await;
    create(&mut consumers, group_req("slow")).await;
    let mut member = Member::join(&mut consumers, "slow", 10).await;
    let got = member.deliveries(10, WAIT).await;
    member
        .ack_durably(got[..5].iter().map(|d| d.delivery_id.clone()).collect())
        .await;
    drop(member);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let fresh = publish(&mut events, 100, 4).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let done = admin
            .compact(CompactRequest {})
            .await
            .expect("compact")
            .into_inner();
        if done.first_offset_after > 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "compaction did not trim: {done:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut member = Member::join(&mut consumers, "slow", 100).await;
    let next = member.deliveries(100, WAIT).await;
    assert_eq!(
        next.iter().map(offset_of).collect::<Vec<_>>(),
        (201..=fresh).collect::<Vec<_>>(),
        "delivery goes on at the first retained offset"
    );
    let group = status(&mut consumers, "slow").await;
    assert_eq!(
        group.trimmed, 195,
        "every removed event it had not acked is counted"
    );
    assert!(group.settled_through_offset >= 200, "{group:?}");
}

#[tokio::test]
async fn events_of_a_deleted_stream_are_never_delivered() {
    if ordo_test_harness::unsupported_on_nats("DeleteStream") {
        return;
    }
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let mut consumers = server.consumers().await;
    let mut admin = server.admin().await;
    create(&mut consumers, group_req("g")).await;
    let head = publish(&mut events, 30, 3).await;
    admin
        .delete_stream(DeleteStreamRequest {
            stream_id: "s-1".into(),
        })
        .await
        .expect("delete stream");
    let mut member = Member::join(&mut consumers, "g", 100).await;
    let got = member.deliveries(20, WAIT).await;
    assert!(
        got.iter()
            .all(|d| ordo_test_harness::consumer::stream_of(d) != "s-1")
    );
    member.assert_no_delivery(Duration::from_millis(300)).await;
    member
        .ack_durably(got.iter().map(|d| d.delivery_id.clone()).collect())
        .await;
    let group = status(&mut consumers, "g").await;
    assert_eq!(
        group.settled_through_offset, head,
        "deleted events count as settled"
    );
    assert_eq!(group.trimmed, 0);
}
