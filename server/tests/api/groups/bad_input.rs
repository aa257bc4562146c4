//! Refusals: which code, which message, and that nothing was settled or stored.

use ordo_api::v1::{
    AckRequest, ConsumeRequest, CreateGroupRequest, GetGroupRequest, NackAction, NackRequest,
    ReplayParkedRequest, consume_request,
};
use ordo_test_harness::{
    TestServer,
    api::assert_status,
    consumer::{Answer, Member, group_req, offset_of},
};
use tonic::Code;

use super::*;

#[tokio::test]
async fn bad_group_definitions_are_refused_and_not_stored() {
    let server = TestServer::start().await;
    let mut consumers = server.consumers().await;
    let cases = [
        (group_req(""), Code::InvalidArgument, "name is required"),
        (group_req("a/b"), Code::InvalidArgument, "name contains '/'"),
        (
            CreateGroupRequest {
                max_in_flight: 1_001,
                ..group_req("g")
            },
            Code::InvalidArgument,
            "max_in_flight 1001 is over the maximum of 1000",
        ),
        (
            CreateGroupRequest {
                strategy: 9,
                ..group_req("g")
            },
            Code::InvalidArgument,
            "strategy 9 is unknown",
        ),
        (
            CreateGroupRequest {
                start: ordo_test_harness::api::from(99),
                ..group_req("g")
            },
            Code::OutOfRange,
            "beyond the head",
        ),
        (
            CreateGroupRequest {
                filter: ordo_test_harness::api::filter(&["bad type!"], &[]),
                ..group_req("g")
            },
            Code::InvalidArgument,
            "filter.types",
        ),
    ];
    for (req, code, needle) in cases {
        assert_status(consumers.create_group(req).await, code, needle);
    }
    let listed = consumers
        .list_groups(ordo_api::v1::ListGroupsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.groups.is_empty(), "nothing was stored: {listed:?}");

    create(&mut consumers, group_req("g")).await;
    assert_status(
        consumers.create_group(group_req("g")).await,
        Code::AlreadyExists,
        "already exists",
    );
}

#[tokio::test]
async fn unknown_groups_are_not_found_everywhere() {
    let server = TestServer::start().await;
    let mut consumers = server.consumers().await;
    assert_status(
        consumers
            .get_group(GetGroupRequest {
                name: "nope".into(),
            })
            .await,
        Code::NotFound,
        "consumer group \"nope\" does not exist",
    );
    assert_status(
        consumers
            .ack(AckRequest {
                group: "nope".into(),
                delivery_ids: vec!["nope/1/1".into()],
            })
            .await,
        Code::NotFound,
        "does not exist",
    );
    assert_status(
        consumers
            .replay_parked(ReplayParkedRequest {
                group: "nope".into(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "does not exist",
    );
    assert_status(
        Member::try_join(&mut consumers, "nope", 0)
            .await
            .map(|_| ()),
        Code::NotFound,
        "does not exist",
    );
}

#[tokio::test]
async fn consume_must_start_with_join() {
    let server = TestServer::start().await;
    let mut consumers = server.consumers().await;
    let first = ConsumeRequest {
        message: Some(consume_request::Message::Ack(ordo_api::v1::AckDeliveries {
            delivery_ids: vec!["g/1/1".into()],
        })),
    };
    let result = consumers
        .consume(tokio_stream::iter(vec![first]))
        .await
        .map(|_| ());
    assert_status(
        result,
        Code::InvalidArgument,
        "first message on Consume must be join",
    );
}

#[tokio::test]
async fn bad_delivery_ids_are_refused_and_settle_nothing() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let mut consumers = server.consumers().await;
    publish(&mut events, 3, 1).await;
    create(&mut consumers, group_req("g")).await;
    create(&mut consumers, group_req("other")).await;
    let mut member = Member::join(&mut consumers, "g", 0).await;
    let got = member.deliveries(3, WAIT).await;
    let good = got[0].delivery_id.clone();

    let unary = |ids: Vec<&str>| AckRequest {
        group: "g".into(),
        delivery_ids: ids.into_iter().map(String::from).collect(),
    };
    let cases = [
        (
            unary(vec![]),
            Code::InvalidArgument,
            "delivery_ids is empty",
        ),
        (
            unary(vec!["garbage"]),
            Code::InvalidArgument,
            "is malformed",
        ),
        (
            unary(vec!["other/1/1"]),
            Code::InvalidArgument,
            "belongs to group \"other\"",
        ),
        (
            unary(vec![good.as_str(), good.as_str()]),
            Code::InvalidArgument,
            "twice",
        ),
        (unary(vec!["g/99/1"]), Code::NotFound, "was never made"),
        (unary(vec!["g/1/2"]), Code::NotFound, "was never made"),
        // All or nothing: a good id next to a bad one is not acked either.
        (
            unary(vec![good.as_str(), "g/99/1"]),
            Code::NotFound,
            "g/99/1",
        ),
    ];
    for (req, code, needle) in cases {
        assert_status(consumers.ack(req).await, code, needle);
    }
    assert_status(
        consumers
            .nack(NackRequest {
                group: "g".into(),
                delivery_ids: vec![good.clone()],
                action: 7,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "action 7 is unknown",
    );
    let group = status(&mut consumers, "g").await;
    assert_eq!(
        (group.settled_through_offset, group.in_flight),
        (0, 3),
        "nothing was settled"
    );

    // On the stream, a refusal is a Rejected message and the stream goes on.
    member.ack(vec!["g/99/1".into()]).await;
    match member.answer(WAIT).await.0 {
        Answer::Rejected(rejected) => {
            assert_eq!(rejected.code, Code::NotFound as i32);
            assert_eq!(rejected.delivery_ids, ["g/99/1"]);
        }
        other => panic!("expected rejected, got {other:?}"),
    }
    // A duplicate ack: the first settles, the second is refused.
    member.ack_durably(vec![good.clone()]).await;
    assert_status(
        consumers.ack(unary(vec![good.as_str()])).await,
        Code::FailedPrecondition,
        "already settled",
    );
    // Another member cannot settle this member's delivery on its stream.
    let mut thief = Member::join(&mut consumers, "g", 0).await;
    thief.ack(vec![got[1].delivery_id.clone()]).await;
    match thief.answer(WAIT).await.0 {
        Answer::Rejected(rejected) => {
            assert_eq!(rejected.code, Code::FailedPrecondition as i32);
            assert!(
                rejected.message.contains("another member"),
                "{}",
                rejected.message
            );
        }
        other => panic!("expected rejected, got {other:?}"),
    }
    // The unary Ack may (it is for clients that cannot send on their stream).
    consumers
        .ack(unary(vec![got[1].delivery_id.as_str()]))
        .await
        .expect("unary ack");
    let group = status(&mut consumers, "g").await;
    assert_eq!(group.settled_through_offset, 2);
    assert_eq!(offset_of(&got[2]), 3);
}

#[tokio::test]
async fn a_member_that_never_reads_holds_only_its_window() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let mut consumers = server.consumers().await;
    create(&mut consumers, fast_group("g", 500, 100)).await;
    // Joins, asks for 5 at a time, and never reads a message.
    let stalled = Member::join(&mut consumers, "g", 5).await;
    let total = 2_000;
    publish(&mut events, total, 7).await;
    let mut reader = Member::join(&mut consumers, "g", 100).await;
    let mut acked = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while acked.len() < total {
        assert!(
            std::time::Instant::now() < deadline,
            "acked {} of {total}",
            acked.len()
        );
        let batch: Vec<_> = {
            let mut batch = vec![member_delivery(&mut reader).await];
            while let Some(Ok(Some(ordo_api::v1::consume_response::Message::Delivery(d)))) =
                reader.poll(std::time::Duration::from_millis(1)).await
            {
                batch.push(d);
            }
            batch
        };
        for d in &batch {
            acked.insert(offset_of(d));
        }
        reader
            .ack(batch.iter().map(|d| d.delivery_id.clone()).collect())
            .await;
        let group = status(&mut consumers, "g").await;
        assert!(
            group.in_flight <= 105,
            "the server holds at most both windows: {}",
            group.in_flight
        );
    }
    assert_eq!(
        acked.len(),
        total,
        "the stalled member's events went to the reader"
    );
    drop(stalled);
}

async fn member_delivery(member: &mut Member) -> ordo_api::v1::Delivery {
    member.delivery(WAIT).await
}

#[tokio::test]
async fn nack_park_and_extend_check_their_arguments() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let mut consumers = server.consumers().await;
    publish(&mut events, 1, 1).await;
    create(&mut consumers, group_req("g")).await;
    let mut member = Member::join(&mut consumers, "g", 0).await;
    let d = member.delivery(WAIT).await;
    assert_status(
        consumers
            .nack(NackRequest {
                group: "g".into(),
                delivery_ids: vec![d.delivery_id.clone()],
                action: NackAction::Retry as i32,
                delay_ms: 90_000_000,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "delay_ms 90000000 is over the maximum",
    );
    // Park now: it leaves the flow and shows up in the dead-letter queue.
    member
        .nack(vec![d.delivery_id.clone()], NackAction::Park, 0)
        .await;
    assert!(matches!(member.answer(WAIT).await.0, Answer::Settled(_)));
    let group = status(&mut consumers, "g").await;
    assert_eq!((group.parked, group.settled_through_offset), (1, 1));
}
