//! Ack timeouts, nacks with delays, parking after max_deliveries, the dead-letter queue and its
//! replay, and members that leave.

use std::time::{Duration, Instant};

use ordo_api::v1::{ListParkedRequest, NackAction, ReplayParkedRequest};
use ordo_test_harness::{
    TestServer,
    consumer::{Answer, Member, offset_of},
};

use super::*;

#[tokio::test]
async fn an_unacked_delivery_comes_again_after_the_ack_timeout() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let mut consumers = server.consumers().await;
    publish(&mut events, 1, 1).await;
    create(&mut consumers, fast_group("g", 300, 5)).await;
    let mut member = Member::join(&mut consumers, "g", 0).await;
    let first = member.delivery(WAIT).await;
    let at = Instant::now();
    let second = member.delivery(WAIT).await;
    let waited = at.elapsed();
    assert_eq!(offset_of(&second), offset_of(&first));
    assert_eq!((first.attempt, second.attempt), (1, 2));
    assert_eq!(second.delivery_id, "g/1/2");
    assert!(
        waited >= Duration::from_millis(250),
        "redelivered only after the timeout and backoff: {waited:?}"
    );
    // The first delivery's id is stale now.
    member.ack(vec![first.delivery_id]).await;
    match member.answer(WAIT).await.0 {
        Answer::Rejected(r) => assert!(r.message.contains("no longer current"), "{}", r.message),
        other => panic!("expected rejected, got {other:?}"),
    }
    member.ack_durably(vec![second.delivery_id]).await;
    member.assert_no_delivery(Duration::from_millis(600)).await;
}

#[tokio::test]
async fn extend_keeps_a_delivery_past_its_timeout() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let mut consumers = server.consumers().await;
    publish(&mut events, 1, 1).await;
    create(&mut consumers, fast_group("g", 400, 5)).await;
    let mut member = Member::join(&mut consumers, "g", 0).await;
    let d = member.delivery(WAIT).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        member.extend(vec![d.delivery_id.clone()], 0).await;
    }
    member.assert_no_delivery(Duration::from_millis(150)).await;
    member.ack_durably(vec![d.delivery_id]).await;
    assert_eq!(status(&mut consumers, "g").await.settled_through_offset, 1);
}

#[tokio::test]
async fn a_nack_with_delay_waits_then_retries() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let mut consumers = server.consumers().await;
    publish(&mut events, 2, 2).await;
    create(&mut consumers, fast_group("g", 30_000, 5)).await;
    let mut member = Member::join(&mut consumers, "g", 0).await;
    let got = member.deliveries(2, WAIT).await;
    let at = Instant::now();
    member
        .nack(vec![got[0].delivery_id.clone()], NackAction::Retry, 700)
        .await;
    assert!(matches!(member.answer(WAIT).await.0, Answer::Settled(_)));
    let group = status(&mut consumers, "g").await;
    assert_eq!((group.in_flight, group.retrying), (1, 1));
    let again = member.delivery(WAIT).await;
    assert!(
        at.elapsed() >= Duration::from_millis(650),
        "{:?}",
        at.elapsed()
    );
    assert_eq!((offset_of(&again), again.attempt), (1, 2));
    member
        .ack_durably(vec![again.delivery_id, got[1].delivery_id.clone()])
        .await;
    assert_eq!(status(&mut consumers, "g").await.settled_through_offset, 2);
}

#[tokio::test]
async fn failing_events_are_parked_listed_and_replayed() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let mut consumers = server.consumers().await;
    let head = publish(&mut events, 5, 5).await;
    create(&mut consumers, fast_group("g", 30_000, 3)).await;
    let mut member = Member::join(&mut consumers, "g", 0).await;
    let got = member.deliveries(5, WAIT).await;
    // Events 2 and 4 fail every time; the others are fine.
    let mut parked_seen = 0;
    member
        .ack_durably(
            got.iter()
                .filter(|d| offset_of(d) % 2 == 1)
                .map(|d| d.delivery_id.clone())
                .collect(),
        )
        .await;
    let mut failing: Vec<_> = got
        .into_iter()
        .filter(|d| offset_of(d).is_multiple_of(2))
        .collect();
    while !failing.is_empty() {
        let ids = failing.iter().map(|d| d.delivery_id.clone()).collect();
        member.nack(ids, NackAction::Retry, 0).await;
        let (answer, mut early) = member.answer(WAIT).await;
        assert!(matches!(answer, Answer::Settled(_)), "{answer:?}");
        let attempts = failing[0].attempt;
        failing.clear();
        if attempts < 3 {
            failing.append(&mut early);
            while failing.len() < 2 {
                failing.push(member.delivery(WAIT).await);
            }
            assert!(failing.iter().all(|d| d.attempt == attempts + 1));
        } else {
            parked_seen = 2;
        }
    }
    assert_eq!(parked_seen, 2);
    member.assert_no_delivery(Duration::from_millis(400)).await;
    let group = status(&mut consumers, "g").await;
    assert_eq!((group.parked, group.settled_through_offset), (2, head));

    let listed = consumers
        .list_parked(ListParkedRequest {
            group: "g".into(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("list parked")
        .into_inner();
    assert_eq!(listed.parked.len(), 1);
    let first = &listed.parked[0];
    assert_eq!(first.event.as_ref().map(|e| e.offset), Some(2));
    assert_eq!(first.attempts, 3);
    assert!(first.reason.contains("test nack"), "{}", first.reason);
    assert_eq!(listed.next_from_offset, 4);

    // Replay one (offset 4), then the rest.
    let replayed = consumers
        .replay_parked(ReplayParkedRequest {
            group: "g".into(),
            from_offset: 4,
            to_offset: 4,
            limit: 0,
        })
        .await
        .expect("replay")
        .into_inner();
    assert_eq!((replayed.replayed, replayed.more), (1, false));
    let again = member.delivery(WAIT).await;
    assert_eq!(
        (offset_of(&again), again.attempt),
        (4, 1),
        "a fresh delivery count"
    );
    member.ack_durably(vec![again.delivery_id]).await;
    let page = consumers
        .replay_parked(ReplayParkedRequest {
            group: "g".into(),
            limit: 1,
            ..Default::default()
        })
        .await
        .expect("replay")
        .into_inner();
    assert_eq!(page.replayed, 1);
    let last = member.delivery(WAIT).await;
    assert_eq!(offset_of(&last), 2);
    member.ack_durably(vec![last.delivery_id]).await;
    let group = status(&mut consumers, "g").await;
    assert_eq!((group.parked, group.in_flight, group.retrying), (0, 0, 0));
}

#[tokio::test]
async fn a_leaving_members_deliveries_go_to_the_others() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let mut consumers = server.consumers().await;
    publish(&mut events, 10, 10).await;
    create(&mut consumers, fast_group("g", 30_000, 5)).await;
    let mut a = Member::join(&mut consumers, "g", 10).await;
    let held = a.deliveries(10, WAIT).await;
    let mut b = Member::join(&mut consumers, "g", 10).await;
    b.assert_no_delivery(Duration::from_millis(200)).await;
    drop(a);
    let moved = b.deliveries(10, WAIT).await;
    let mut offsets: Vec<u64> = moved.iter().map(offset_of).collect();
    offsets.sort();
    assert_eq!(offsets, held.iter().map(offset_of).collect::<Vec<_>>());
    assert!(
        moved.iter().all(|d| d.attempt == 2),
        "a leave counts as a failed delivery"
    );
    b.ack_durably(moved.iter().map(|d| d.delivery_id.clone()).collect())
        .await;
    assert_eq!(status(&mut consumers, "g").await.settled_through_offset, 10);
}
