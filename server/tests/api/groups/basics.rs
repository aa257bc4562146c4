//! Create, join, receive history and live events, ack, and the group's progress.

use ordo_api::v1::{ConsumerStrategy, DeleteGroupRequest, ListGroupsRequest, UpdateGroupRequest};
use ordo_test_harness::{
    TestServer,
    api::{end, filter},
    consumer::{Member, group_req, offset_of},
};
use tonic::Code;

use super::*;

#[tokio::test]
async fn a_member_gets_history_then_live_events_and_acks_them() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let mut consumers = server.consumers().await;
    let head = publish(&mut events, 10, 3).await;

    let created = consumers
        .create_group(group_req("billing"))
        .await
        .expect("create")
        .into_inner()
        .group
        .expect("group");
    assert_eq!(created.name, "billing");
    assert_eq!(created.ack_timeout_ms, 30_000, "defaults are filled in");
    assert_eq!(created.max_deliveries, 5);
    assert_eq!(created.max_in_flight, 100);
    assert_eq!(created.strategy, ConsumerStrategy::RoundRobin as i32);
    assert_eq!(created.settled_through_offset, 0);

    let mut member = Member::join(&mut consumers, "billing", 0).await;
    assert_eq!(member.group.name, "billing");
    let got = member.deliveries(10, WAIT).await;
    let offsets: Vec<u64> = got.iter().map(offset_of).collect();
    assert_eq!(
        offsets,
        (1..=head).collect::<Vec<_>>(),
        "history in log order"
    );
    assert!(got.iter().all(|d| d.attempt == 1));
    assert_eq!(got[0].delivery_id, "billing/1/1");
    assert!(got[0].ack_deadline.is_some());

    let during = status(&mut consumers, "billing").await;
    assert_eq!((during.members, during.in_flight), (1, 10));

    member
        .ack_durably(got.iter().map(|d| d.delivery_id.clone()).collect())
        .await;
    let after = status(&mut consumers, "billing").await;
    assert_eq!(after.settled_through_offset, head);
    assert_eq!(after.in_flight, 0);
    assert_eq!(after.head_offset, head);

    // Live: appended after the member caught up.
    let live = publish(&mut events, 1, 1).await;
    let delivery = member.delivery(WAIT).await;
    assert_eq!(offset_of(&delivery), live);
}

#[tokio::test]
async fn a_group_sees_only_its_filter_and_starts_at_end_by_default() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let mut consumers = server.consumers().await;
    publish(&mut events, 5, 1).await;
    create(
        &mut consumers,
        CreateGroupRequest {
            name: "pay".into(),
            filter: filter(&["payment.*"], &[]),
            start: end(),
            ..Default::default()
        },
    )
    .await;
    let mut member = Member::join(&mut consumers, "pay", 0).await;
    let wanted = events
        .publish(ordo_api::v1::PublishRequest {
            events: vec![
                new_event("p-1", "cart.created"),
                new_event("p-1", "payment.captured"),
                new_event("p-2", "cart.created"),
            ],
        })
        .await
        .expect("publish")
        .into_inner()
        .positions[1]
        .offset;
    let delivery = member.delivery(WAIT).await;
    assert_eq!(offset_of(&delivery), wanted);
    assert_eq!(
        delivery.event.as_ref().map(|e| e.r#type.as_str()),
        Some("payment.captured")
    );
    member.ack_durably(vec![delivery.delivery_id]).await;
    member
        .assert_no_delivery(std::time::Duration::from_millis(300))
        .await;
    // Non-matching events count as settled: progress reaches the head.
    let group = status(&mut consumers, "pay").await;
    assert_eq!(group.settled_through_offset, group.head_offset);
}

#[tokio::test]
async fn groups_list_update_and_delete() {
    let server = TestServer::start().await;
    let mut consumers = server.consumers().await;
    for name in ["a", "b", "c"] {
        create(&mut consumers, group_req(name)).await;
    }
    let page = consumers
        .list_groups(ListGroupsRequest {
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .expect("list")
        .into_inner();
    let names: Vec<_> = page.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    let rest = consumers
        .list_groups(ListGroupsRequest {
            page_size: 2,
            page_token: page.next_page_token,
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(rest.groups.len(), 1);
    assert_eq!(rest.next_page_token, "");

    let updated = consumers
        .update_group(UpdateGroupRequest {
            name: "b".into(),
            ack_timeout_ms: Some(1_500),
            strategy: Some(ConsumerStrategy::PinnedByStream as i32),
            ..Default::default()
        })
        .await
        .expect("update")
        .into_inner()
        .group
        .expect("group");
    assert_eq!(updated.ack_timeout_ms, 1_500);
    assert_eq!(updated.strategy, ConsumerStrategy::PinnedByStream as i32);
    assert_eq!(updated.max_deliveries, 5, "unset fields keep their value");

    // A member's stream ends with NOT_FOUND when its group is deleted.
    let mut member = Member::join(&mut consumers, "c", 0).await;
    consumers
        .delete_group(DeleteGroupRequest { name: "c".into() })
        .await
        .expect("delete");
    match member.next(WAIT).await {
        Err(status) => {
            assert_eq!(status.code(), Code::NotFound);
            assert!(
                status.message().contains("was deleted"),
                "{}",
                status.message()
            );
        }
        Ok(other) => panic!("expected NOT_FOUND, got {other:?}"),
    }
    let err = consumers
        .get_group(ordo_api::v1::GetGroupRequest { name: "c".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // The name is free again, with no leftover progress.
    create(&mut consumers, group_req("c")).await;
    assert_eq!(status(&mut consumers, "c").await.settled_through_offset, 0);
}

#[tokio::test]
async fn groups_and_progress_survive_a_clean_restart() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let mut consumers = server.consumers().await;
    publish(&mut events, 6, 2).await;
    create(&mut consumers, group_req("g")).await;
    let mut member = Member::join(&mut consumers, "g", 0).await;
    let got = member.deliveries(6, WAIT).await;
    member
        .ack_durably(got[..4].iter().map(|d| d.delivery_id.clone()).collect())
        .await;
    drop(member);
    let dir = server.stop().await;

    let server = TestServer::start_in(dir, |_| {}).await;
    let mut consumers = server.consumers().await;
    let group = status(&mut consumers, "g").await;
    assert_eq!(group.settled_through_offset, 4);
    let mut member = Member::join(&mut consumers, "g", 0).await;
    let again = member.deliveries(2, WAIT).await;
    assert_eq!(
        again.iter().map(offset_of).collect::<Vec<_>>(),
        [5, 6],
        "only the unacked events come again"
    );
    member
        .assert_no_delivery(std::time::Duration::from_millis(300))
        .await;
}

#[tokio::test]
async fn shutdown_ends_member_streams_with_unavailable() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let mut consumers = server.consumers().await;
    publish(&mut events, 3, 1).await;
    create(&mut consumers, group_req("g")).await;
    let mut member = Member::join(&mut consumers, "g", 0).await;
    member.deliveries(3, WAIT).await;
    let stopping = tokio::spawn(server.stop());
    match member.next(WAIT).await {
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::Unavailable);
            assert!(
                status.message().contains("shutting down"),
                "{}",
                status.message()
            );
        }
        Ok(other) => panic!("expected UNAVAILABLE, got {other:?}"),
    }
    // The server stops although a member was connected and held deliveries.
    let dir = stopping.await.expect("stopped");
    let server = TestServer::start_in(dir, |_| {}).await;
    let mut consumers = server.consumers().await;
    let mut member = Member::join(&mut consumers, "g", 0).await;
    assert_eq!(
        member.deliveries(3, WAIT).await.len(),
        3,
        "unacked come again"
    );
}
