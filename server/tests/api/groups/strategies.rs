//! Many members at once, killed and rejoining at random: at-least-once for every event, and
//! for the pinned strategy one holder per stream and stream order.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ordo_api::v1::{
    ConsumerStrategy, CreateGroupRequest, ListParkedRequest, NackAction, consume_response::Message,
};
use ordo_test_harness::{
    TestServer,
    consumer::{Consumers, Member, offset_of, stream_of},
};
use rand::{Rng, SeedableRng};

use super::*;

/// What every member saw, shared between the member tasks.
#[derive(Default)]
struct Ledger {
    acked: BTreeSet<u64>,
    parked_on_purpose: BTreeSet<u64>,
    /// stream -> the member holding a delivery of it now.
    holding: HashMap<String, usize>,
    /// stream -> offsets in the order they were delivered (to anyone).
    delivered: HashMap<String, Vec<u64>>,
    violations: Vec<String>,
    kills: usize,
    /// Set once the server reports everything settled.
    done: bool,
}

/// Runs `members` member tasks against group `name` until `total` events are settled; each
/// task drops its stream at random (a crash) and joins again. Events whose offset is a multiple
/// of `park_every` are parked by nack instead of acked.
async fn chaos(
    server: &TestServer,
    name: &str,
    members: usize,
    total: usize,
    park_every: u64,
    pinned: bool,
) -> Arc<Mutex<Ledger>> {
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let expected_parks = (1..=total as u64).filter(|o| o % park_every == 0).count();
    let mut tasks = Vec::new();
    for index in 0..members {
        let mut consumers: Consumers = server.consumers().await;
        let ledger = ledger.clone();
        let name = name.to_string();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::from_os_rng();
            loop {
                let mut member = Member::join(&mut consumers, &name, 50).await;
                let mut lives = rng.random_range(300..2_500);
                loop {
                    if ledger.lock().expect("ledger").done {
                        return;
                    }
                    let message = match member.poll(Duration::from_millis(200)).await {
                        None => continue,
                        Some(Ok(Some(message))) => message,
                        Some(other) => panic!("member {index}: {other:?}"),
                    };
                    let Message::Delivery(d) = message else {
                        continue;
                    };
                    let offset = offset_of(&d);
                    let stream = stream_of(&d).to_string();
                    {
                        let mut l = ledger.lock().expect("ledger");
                        if pinned {
                            if let Some(other) = l.holding.get(&stream)
                                && *other != index
                            {
                                let v = format!(
                                    "member {index} got {stream} at {offset} while member {other} holds it"
                                );
                                l.violations.push(v);
                            }
                            l.holding.insert(stream.clone(), index);
                        }
                        l.delivered.entry(stream.clone()).or_default().push(offset);
                    }
                    lives -= 1;
                    if lives == 0 {
                        // Crash: drop the stream with this delivery unacked.
                        let mut l = ledger.lock().expect("ledger");
                        l.kills += 1;
                        l.holding.retain(|_, m| *m != index);
                        break;
                    }
                    {
                        let mut l = ledger.lock().expect("ledger");
                        l.holding.remove(&stream);
                    }
                    if offset.is_multiple_of(park_every) {
                        member
                            .nack(vec![d.delivery_id.clone()], NackAction::Park, 0)
                            .await;
                        ledger.lock().expect("ledger").parked_on_purpose.insert(offset);
                    } else {
                        member.ack(vec![d.delivery_id.clone()]).await;
                        ledger.lock().expect("ledger").acked.insert(offset);
                    }
                }
                drop(member);
                tokio::time::sleep(Duration::from_millis(rng.random_range(10..100))).await;
            }
        }));
    }
    // The server decides when it is over: acks sent just before a kill may be lost, and their
    // events come again.
    let mut consumers = server.consumers().await;
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let group = status(&mut consumers, name).await;
        if group.settled_through_offset >= total as u64 && group.in_flight == 0 {
            ledger.lock().expect("ledger").done = true;
            break;
        }
        assert!(Instant::now() < deadline, "group stuck at {group:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for task in tasks {
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(left, task)
            .await
            .expect("members finish within 240 s")
            .expect("member task");
    }
    let l = ledger.lock().expect("ledger");
    assert_eq!(l.parked_on_purpose.len(), expected_parks);
    drop(l);
    ledger
}

async fn assert_settled(server: &TestServer, name: &str, ledger: &Ledger, head: u64) {
    let mut consumers = server.consumers().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let group = status(&mut consumers, name).await;
        if group.settled_through_offset == head {
            assert_eq!(group.parked as usize, ledger.parked_on_purpose.len());
            break;
        }
        assert!(Instant::now() < deadline, "group stuck at {group:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all: BTreeSet<u64> = ledger
        .acked
        .union(&ledger.parked_on_purpose)
        .copied()
        .collect();
    assert_eq!(all, (1..=head).collect(), "every event acked or parked");
    let mut parked = BTreeSet::new();
    let mut from = 0;
    loop {
        let page = consumers
            .list_parked(ListParkedRequest {
                group: name.into(),
                from_offset: from,
                page_size: 500,
            })
            .await
            .expect("list parked")
            .into_inner();
        parked.extend(
            page.parked
                .iter()
                .filter_map(|p| p.event.as_ref().map(|e| e.offset)),
        );
        if page.next_from_offset == 0 {
            break;
        }
        from = page.next_from_offset;
    }
    assert_eq!(
        parked, ledger.parked_on_purpose,
        "exactly the nacked events are parked"
    );
    assert!(
        parked.is_disjoint(&ledger.acked),
        "nothing acked was parked"
    );
}

#[tokio::test]
async fn pinned_four_members_with_kills_keep_one_holder_and_stream_order() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let mut consumers = server.consumers().await;
    let total = 20_000;
    let head = publish(&mut events, total, 200).await;
    create(
        &mut consumers,
        CreateGroupRequest {
            strategy: ConsumerStrategy::PinnedByStream as i32,
            max_deliveries: 1_000,
            ..group_req("pinned")
        },
    )
    .await;
    let ledger = chaos(&server, "pinned", 4, total, 997, true).await;
    let l = std::mem::take(&mut *ledger.lock().expect("ledger"));
    assert!(
        l.violations.is_empty(),
        "{:?}",
        &l.violations[..l.violations.len().min(5)]
    );
    assert!(l.kills >= 4, "members were killed: {}", l.kills);
    for (stream, offsets) in &l.delivered {
        assert!(
            offsets.windows(2).all(|w| w[0] <= w[1]),
            "stream {stream} was delivered out of order: {offsets:?}"
        );
    }
    assert_settled(&server, "pinned", &l, head).await;
}

#[tokio::test]
async fn round_robin_four_members_with_kills_ack_everything() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    let mut consumers = server.consumers().await;
    let total = 20_000;
    let head = publish(&mut events, total, 50).await;
    create(
        &mut consumers,
        CreateGroupRequest {
            max_deliveries: 1_000,
            ..group_req("rr")
        },
    )
    .await;
    let ledger = chaos(&server, "rr", 4, total, 1_009, false).await;
    let l = std::mem::take(&mut *ledger.lock().expect("ledger"));
    assert!(l.kills >= 4, "members were killed: {}", l.kills);
    assert_settled(&server, "rr", &l, head).await;
}
