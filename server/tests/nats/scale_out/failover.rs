//! Failover under load: a NATS node and an Ordo node die by SIGKILL at the same moment while 4
//! appenders write through both Ordo nodes and 2 subscribers follow the log. Afterwards the
//! surviving node's log holds every acknowledged event exactly once, at the position it was
//! acknowledged at, with gapless offsets; and each subscriber, having moved to the surviving
//! node, saw every event once, in order, with no gap where it reconnected.
//!
//! Real processes throughout (a dedicated 3-node cluster, the `ordo-server` binary), because
//! kill -9 is the point. An append whose answer is lost (its node died) is retried on the other
//! node with the same event id: dedupe makes that safe, and the log must not hold it twice.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, atomic::AtomicBool},
};

use ordo_api::v1::{EventPosition, event_service_client::EventServiceClient};
use ordo_test_harness::ChildServer;
use tokio::sync::watch;
use tonic::transport::Channel;

use super::*;

const APPENDERS: usize = 4;
/// How long an append or a subscriber may make no progress before the test fails.
const STALL: Duration = Duration::from_secs(60);

/// Acknowledged positions by event id, and when each was first sent.
type Acked = Arc<Mutex<HashMap<String, (EventPosition, Instant)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_kill_nats_node_and_ordo_node() {
    let cluster = NatsCluster::start(3);
    let dirs = [tempdir(), tempdir()];
    let node_a = ChildServer::start_nats(dirs[0].path(), None, &cluster, "FAILOVER", &[]).await;
    let node_b = ChildServer::start_nats(dirs[1].path(), None, &cluster, "FAILOVER", &[]).await;
    let nodes = [client(&node_a.url()).await, client(&node_b.url()).await];
    for node in &nodes {
        // Both serve before the load starts, so the load's 2 s are not spent starting.
        head(&mut node.clone()).await;
    }
    let a_dead = Arc::new(AtomicBool::new(false));

    let (target_tx, target) = watch::channel(None);
    let subscribers: Vec<_> = (0..2)
        .map(|home| {
            let follower = follow(home, nodes.clone(), a_dead.clone(), target.clone());
            tokio::spawn(follower)
        })
        .collect();
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let appenders: Vec<_> = (0..APPENDERS)
        .map(|worker| {
            let (nodes, acked) = (nodes.clone(), acked.clone());
            let (stop, a_dead) = (stop.clone(), a_dead.clone());
            tokio::spawn(append_until_stopped(worker, nodes, acked, stop, a_dead))
        })
        .collect();

    // A couple of seconds of load, and at least 20 events, before the kills.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let loaded = Instant::now() + Duration::from_secs(20);
    let before = loop {
        let before = acked.lock().expect("acked").len();
        if before >= 20 {
            break before;
        }
        assert!(
            Instant::now() < loaded,
            "only {before} appends in 22 s before the kills"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    a_dead.store(true, Ordering::SeqCst);
    let killed_at = Instant::now();
    // The stream's leader: the harder case, since JetStream must elect a new one.
    cluster.kill9(cluster.leader_of("FAILOVER").await);
    node_a.kill9();

    // Keep the load on B until 50 appends sent after the kills are acknowledged, then 1 s more.
    // A new stream leader takes seconds when the killed node led it; an append or two may get
    // through before the old leader is declared gone, so one early ack does not show recovery.
    const RECOVERED: usize = 50;
    let deadline = killed_at + Duration::from_secs(30);
    let acked_since = |since: Instant| {
        let acked = acked.lock().expect("acked");
        acked.values().filter(|(_, at)| *at > since).count()
    };
    while acked_since(killed_at) < RECOVERED {
        assert!(
            Instant::now() < deadline,
            "only {} appends sent after the kills were acknowledged within 30 s",
            acked_since(killed_at)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovered_after = killed_at.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    for appender in appenders {
        appender.await.expect("appender");
    }
    let acked: HashMap<String, (EventPosition, Instant)> =
        std::mem::take(&mut *acked.lock().expect("acked"));
    let after_kill = acked.values().filter(|(_, at)| *at > killed_at).count();
    assert!(
        after_kill >= RECOVERED,
        "{after_kill} appends after the kills"
    );

    // B's whole log, once it serves every acknowledged event (A's reach it asynchronously).
    let mut events_b = nodes[1].clone();
    let log = eventually("B serves every acknowledged event", || {
        let mut events = events_b.clone();
        let acked = &acked;
        async move {
            let log = read_all(&mut events).await;
            let ids: HashSet<&str> = log.iter().map(|e| e.id.as_str()).collect();
            acked
                .keys()
                .all(|id| ids.contains(id.as_str()))
                .then_some(log)
        }
    })
    .await;
    let positions: Vec<EventPosition> = acked.values().map(|(p, _)| p.clone()).collect();
    assert_log_holds(&log, &positions);
    assert_eq!(
        log.len(),
        acked.len(),
        "every append was retried until acknowledged, so the log holds exactly those"
    );
    assert_eq!(head(&mut events_b).await, log.len() as u64);

    target_tx
        .send(Some(log.len() as u64))
        .expect("subscribers listen");
    for (home, subscriber) in subscribers.into_iter().enumerate() {
        let (seen, reconnects) = tokio::time::timeout(STALL, subscriber)
            .await
            .expect("subscriber reaches the head")
            .expect("subscriber");
        assert_eq!(seen, log, "subscriber {home}: every event once, in order");
        println!("subscriber {home}: {reconnects} reconnects");
    }
    println!(
        "{before} appends before the kills, {after_kill} after ({RECOVERED} of them within \
         {recovered_after:?}); {} events in all",
        log.len()
    );
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

async fn client(url: &str) -> Events {
    let channel = Channel::from_shared(url.to_string())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    EventServiceClient::new(channel)
}

/// Appends events `w{worker}-0`, `w{worker}-1`... to stream `fo-{worker}` until `stop`, each
/// on the next node in turn, recording every acknowledged position.
async fn append_until_stopped(
    worker: usize,
    nodes: [Events; 2],
    acked: Acked,
    stop: Arc<AtomicBool>,
    a_dead: Arc<AtomicBool>,
) {
    let mut turn = worker;
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let id = format!("w{worker}-{n}");
        let event = new_event_with_id(&format!("fo-{worker}"), "failover.tick", &id);
        // Counted from when it was sent: an append sent before the kills and answered after
        // them does not show that the log recovered.
        let sent = Instant::now();
        let position = append_anywhere(&nodes, &mut turn, event, &a_dead).await;
        assert_eq!(position.id, id);
        let previous = acked
            .lock()
            .expect("acked")
            .insert(id.clone(), (position, sent));
        assert!(previous.is_none(), "{id} acknowledged twice");
        n += 1;
    }
}

/// Publishes `event` on the next node in turn; UNAVAILABLE (the node is gone, or the log is
/// failing over) moves on to the other node. Once A is dead, any failure from A does: its
/// connection breaks mid-call in whatever way. Anything else is a failure of the test.
async fn append_anywhere(
    nodes: &[Events; 2],
    turn: &mut usize,
    event: ordo_api::v1::NewEvent,
    a_dead: &AtomicBool,
) -> EventPosition {
    let deadline = Instant::now() + STALL;
    for attempt in 1.. {
        let node = *turn % 2;
        *turn += 1;
        if node == 0 && a_dead.load(Ordering::SeqCst) {
            // A client that saw its node die stops calling it (each call to the dead address
            // costs a reconnect attempt), as clients failing over do.
            continue;
        }
        let mut client = nodes[node].clone();
        let call = client.publish(publish_req(vec![event.clone()]));
        match tokio::time::timeout(Duration::from_secs(30), call).await {
            Ok(Ok(response)) => return response.into_inner().positions.remove(0),
            Ok(Err(status)) if status.code() == Code::Unavailable => {}
            Ok(Err(_)) if node == 0 && a_dead.load(Ordering::SeqCst) => {}
            Ok(Err(status)) => panic!("publish {} on node {node}: {status:?}", event.id),
            Err(_) => panic!("publish {} on node {node} hung for 30 s", event.id),
        }
        assert!(
            Instant::now() < deadline,
            "{} not appended for {STALL:?}",
            event.id
        );
        // Straight on to the other node; a pause once both have failed.
        if attempt % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    unreachable!("the attempts are endless")
}

/// A subscriber that starts on node `home` from the start of the log and, when its stream
/// breaks or falls silent (heartbeats come every 200 ms), resumes after its last offset on the
/// other node. Ends at the offset `target` names; returns what it saw and how often it
/// reconnected. Every event must be the one after the last, across reconnects.
async fn follow(
    home: usize,
    nodes: [Events; 2],
    a_dead: Arc<AtomicBool>,
    mut target: watch::Receiver<Option<u64>>,
) -> (Vec<Event>, usize) {
    let mut seen: Vec<Event> = Vec::new();
    let mut node = home;
    let mut reconnects = 0;
    let mut progress_at = Instant::now();
    loop {
        let last = seen.last().map_or(0, |e| e.offset);
        if target.borrow().is_some_and(|t| last >= t) {
            return (seen, reconnects);
        }
        assert!(
            progress_at.elapsed() < STALL,
            "subscriber {home} stuck at offset {last}"
        );
        let mut client = nodes[node].clone();
        let mut stream = match subscribe(&mut client, sub(after(last))).await {
            Ok(stream) => stream,
            // Node down, or behind this subscriber (OUT_OF_RANGE) until it converges.
            Err(status) => {
                let expected = matches!(status.code(), Code::Unavailable | Code::OutOfRange)
                    || (node == 0 && a_dead.load(Ordering::SeqCst));
                assert!(expected, "subscriber {home} on node {node}: {status:?}");
                node = 1 - node;
                reconnects += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        loop {
            let last = seen.last().map_or(0, |e| e.offset);
            if target.borrow().is_some_and(|t| last >= t) {
                return (seen, reconnects);
            }
            let next = tokio::select! {
                next = tokio::time::timeout(Duration::from_secs(2), stream.message()) => next,
                _ = target.changed() => continue,
            };
            match next {
                Ok(Ok(Some(response))) => {
                    if let Some(Message::Event(event)) = response.message {
                        assert_eq!(
                            event.offset,
                            last + 1,
                            "subscriber {home} on node {node}: gap or duplicate"
                        );
                        seen.push(event);
                        progress_at = Instant::now();
                    }
                }
                // Broken, ended or silent: resume on the other node.
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                    node = 1 - node;
                    reconnects += 1;
                    break;
                }
            }
        }
    }
}
