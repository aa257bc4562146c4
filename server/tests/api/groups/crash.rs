//! kill -9 of the server: no confirmed ack is lost, only unacked events come again, and failure
//! counts, delays and parked events survive.

use std::time::Duration;

use ordo_api::v1::{
    ListParkedRequest, NackAction, ReplayParkedRequest,
    consumer_service_client::ConsumerServiceClient, event_service_client::EventServiceClient,
};
use ordo_test_harness::{
    ChildServer,
    consumer::{Answer, Member, offset_of},
};

use super::*;

async fn clients(
    server: &ChildServer,
) -> (Consumers, EventServiceClient<tonic::transport::Channel>) {
    let channel = tonic::transport::Channel::from_shared(server.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    (
        ConsumerServiceClient::new(channel.clone()),
        EventServiceClient::new(channel),
    )
}

#[tokio::test]
async fn acks_nacks_and_parks_survive_kill_9() {
    if ordo_test_harness::timing_differs_on_nats(
        "a node restarted after kill -9 waits up to 5 s for its dead predecessor's workers lease, longer than the 3 s nack delay this test times",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let server = ChildServer::start(dir.path(), None, &[]).await;
    let (mut consumers, mut events) = clients(&server).await;
    let head = publish(&mut events, 200, 20).await;
    create(
        &mut consumers,
        CreateGroupRequest {
            max_in_flight: 200,
            ..fast_group("g", 60_000, 2)
        },
    )
    .await;
    let mut member = Member::join(&mut consumers, "g", 200).await;
    let got = member.deliveries(200, WAIT).await;
    // Acked: every offset not divisible by 10. Confirmed before the kill.
    let acked: Vec<String> = got
        .iter()
        .filter(|d| !offset_of(d).is_multiple_of(10))
        .map(|d| d.delivery_id.clone())
        .collect();
    for chunk in acked.chunks(37) {
        member.ack_durably(chunk.to_vec()).await;
    }
    // Offset 10: parked now. Offset 20: nacked once with a long delay. The rest (30..200 by
    // 10): still in flight at the kill.
    let by_offset = |o: u64| got[o as usize - 1].delivery_id.clone();
    member.nack(vec![by_offset(10)], NackAction::Park, 0).await;
    assert!(matches!(member.answer(WAIT).await.0, Answer::Settled(_)));
    member
        .nack(vec![by_offset(20)], NackAction::Retry, 3_000)
        .await;
    assert!(matches!(member.answer(WAIT).await.0, Answer::Settled(_)));
    drop(member);
    let port = server.addr.port();
    server.kill9();

    let server = ChildServer::start(dir.path(), Some(port), &[]).await;
    let (mut consumers, _events) = clients(&server).await;
    let group = status(&mut consumers, "g").await;
    assert_eq!(
        group.settled_through_offset, 19,
        "no confirmed ack was lost"
    );
    assert_eq!(group.parked, 1);
    let mut member = Member::join(&mut consumers, "g", 200).await;
    let again = member.deliveries(18, WAIT).await;
    let mut offsets: Vec<u64> = again.iter().map(offset_of).collect();
    offsets.sort();
    assert_eq!(
        offsets,
        (3..=20).map(|i| i * 10).collect::<Vec<_>>(),
        "only the unacked, unparked, not-delayed events come again"
    );
    assert!(
        again.iter().all(|d| d.attempt == 1),
        "in-flight at the crash is not a failure"
    );
    // Offset 20 keeps its failure count and its delay across the crash.
    let delayed = member.delivery(Duration::from_secs(10)).await;
    assert_eq!((offset_of(&delayed), delayed.attempt), (20, 2));
    // Its second failure is its last allowed: parked, durably.
    member
        .nack(vec![delayed.delivery_id.clone()], NackAction::Retry, 0)
        .await;
    assert!(matches!(member.answer(WAIT).await.0, Answer::Settled(_)));
    member
        .ack_durably(again.iter().map(|d| d.delivery_id.clone()).collect())
        .await;
    let port = server.addr.port();
    drop(member);
    server.kill9();

    let server = ChildServer::start(dir.path(), Some(port), &[]).await;
    let (mut consumers, _events) = clients(&server).await;
    let group = status(&mut consumers, "g").await;
    assert_eq!(group.settled_through_offset, head);
    let parked = consumers
        .list_parked(ListParkedRequest {
            group: "g".into(),
            ..Default::default()
        })
        .await
        .expect("list parked")
        .into_inner()
        .parked;
    let parked: Vec<(u64, u32)> = parked
        .iter()
        .map(|p| (p.event.as_ref().map_or(0, |e| e.offset), p.attempts))
        .collect();
    assert_eq!(parked, [(10, 1), (20, 2)]);
    // Replay survives a crash too: replayed, then killed before the ack.
    consumers
        .replay_parked(ReplayParkedRequest {
            group: "g".into(),
            ..Default::default()
        })
        .await
        .expect("replay");
    let port = server.addr.port();
    server.kill9();
    let server = ChildServer::start(dir.path(), Some(port), &[]).await;
    let (mut consumers, _events) = clients(&server).await;
    let mut member = Member::join(&mut consumers, "g", 10).await;
    let replayed = member.deliveries(2, WAIT).await;
    let mut offsets: Vec<u64> = replayed.iter().map(offset_of).collect();
    offsets.sort();
    assert_eq!(offsets, [10, 20]);
    member
        .ack_durably(replayed.iter().map(|d| d.delivery_id.clone()).collect())
        .await;
    let group = status(&mut consumers, "g").await;
    assert_eq!((group.parked, group.in_flight), (0, 0));
}
