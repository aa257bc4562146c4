//! The `consume` scenario: consumer-group members working through a pre-filled log, acking
//! as a real consumer does: every delivery that has arrived is acked, one request per batch
//! of deliveries read together. The figure is events acked (durably) per second, from the
//! members' joins to the last `settled` answer.

use std::{
    collections::HashMap,
    future::ready,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use ordo_api::v1::{
    AckDeliveries, ConsumeRequest, ConsumeResponse, CreateGroupRequest, DeleteGroupRequest,
    JoinGroup, StartPosition, consume_request::Message as Request,
    consume_response::Message as Response, consumer_service_client::ConsumerServiceClient,
    start_position::Position,
};
use tokio::{sync::watch, task::JoinSet};
use tonic::{Streaming, transport::Channel};

use crate::{
    report::Row,
    scenarios::connect,
    stats::{Latencies, micros},
};

/// Ids in one ack request at most (the server's limit).
const MAX_IDS: usize = 1_000;

/// What one member did.
#[derive(Default)]
struct MemberStats {
    delivered: u64,
    ack_requests: u64,
    /// Per ack request: from sending it to its `settled` answer, in microseconds.
    ack_latency: Vec<u32>,
}

/// A new group over the whole log, `members` members (one connection each) acking everything
/// until the group has settled through the head it saw when created.
pub async fn run(
    addr: &str,
    members: usize,
    max_in_flight: u32,
    timeout: Duration,
) -> anyhow::Result<Row> {
    let mut admin = ConsumerServiceClient::new(connect(addr).await?);
    let name = format!("bench-consume-{}-{members}", std::process::id());
    let group = admin
        .create_group(CreateGroupRequest {
            name: name.clone(),
            start: Some(StartPosition {
                position: Some(Position::Start(true)),
            }),
            max_in_flight,
            ..Default::default()
        })
        .await
        .context("cannot create the bench's consumer group")?
        .into_inner()
        .group
        .context("CreateGroup answered without the group")?;
    let target = group.head_offset;
    let mut channels = Vec::with_capacity(members);
    for _ in 0..members {
        channels.push(connect(addr).await?);
    }

    let settled = Arc::new(AtomicU64::new(0));
    let (done_tx, mut done_rx) = watch::channel(false);
    let done_tx = Arc::new(done_tx);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for channel in channels {
        tasks.spawn(member(
            channel,
            name.clone(),
            max_in_flight,
            target,
            settled.clone(),
            done_tx.clone(),
            done_tx.subscribe(),
        ));
    }
    // `is_ok` drops the watch's read guard at once: holding it would block the send below.
    let finished = tokio::time::timeout(timeout, done_rx.wait_for(|done| *done))
        .await
        .is_ok();
    let elapsed = started.elapsed().as_secs_f64();
    let _ = done_tx.send(true);
    let mut stats = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        stats.push(joined??);
    }
    if !finished {
        bail!(
            "the members acked {} of {target} events in {} s",
            settled.load(Ordering::Relaxed),
            timeout.as_secs()
        );
    }
    let _ = admin.delete_group(DeleteGroupRequest { name }).await;

    let delivered: u64 = stats.iter().map(|s| s.delivered).sum();
    let requests: u64 = stats.iter().map(|s| s.ack_requests).sum();
    let lat = Latencies::merge(stats.into_iter().map(|s| s.ack_latency));
    Ok(Row::new(
        "consume",
        format!("members={members} max_in_flight={max_in_flight}"),
        target as f64 / elapsed,
        "acked",
    )
    .latencies(&lat)
    .extra("events", target)
    .extra("delivered", format!("{delivered}/{target}"))
    .extra("ack_requests", requests)
    .extra(
        "ids_per_ack",
        format!("{:.1}", delivered as f64 / requests.max(1) as f64),
    ))
}

/// One member: join, then read whatever has arrived, ack it in one request, repeat, until
/// every member together has had `target` acks settled.
async fn member(
    channel: Channel,
    group: String,
    max_in_flight: u32,
    target: u64,
    settled: Arc<AtomicU64>,
    done_tx: Arc<watch::Sender<bool>>,
    mut done: watch::Receiver<bool>,
) -> anyhow::Result<MemberStats> {
    let mut client = ConsumerServiceClient::new(channel);
    // Room for an ack request per unsettled delivery, the most there can be, so sending never
    // waits: a send that waited would stop this task reading the answers the server needs
    // room for before it reads more requests.
    let (requests, rx) = tokio::sync::mpsc::channel(max_in_flight.max(1) as usize + 1);
    requests
        .send(ConsumeRequest {
            message: Some(Request::Join(JoinGroup {
                group,
                member_name: "ordo-bench".into(),
                max_in_flight: 0,
            })),
        })
        .await?;
    let mut stream = client
        .consume(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    match stream.message().await?.and_then(|m| m.message) {
        Some(Response::Joined(_)) => {}
        other => bail!("expected joined, got {other:?}"),
    }
    let mut stats = MemberStats::default();
    let mut batch: Vec<String> = Vec::new();
    let mut sent_at: HashMap<String, Instant> = HashMap::new();
    while !*done.borrow() {
        let first = tokio::select! {
            message = stream.message() => message?,
            _ = done.changed() => break,
        };
        let mut next = first;
        // Everything that has arrived already, without waiting for more.
        loop {
            let Some(message) = next else {
                bail!("the server ended the Consume stream");
            };
            read(message, &mut batch, &mut sent_at, &mut stats, &settled)?;
            if batch.len() >= MAX_IDS {
                break;
            }
            next = match now(&mut stream).await {
                Some(message) => message?,
                None => break,
            };
        }
        if settled.load(Ordering::Relaxed) >= target {
            let _ = done_tx.send(true);
        }
        if batch.is_empty() {
            continue;
        }
        sent_at.insert(batch[0].clone(), Instant::now());
        stats.ack_requests += 1;
        let ack = ConsumeRequest {
            message: Some(Request::Ack(AckDeliveries {
                delivery_ids: std::mem::take(&mut batch),
            })),
        };
        if requests.send(ack).await.is_err() {
            bail!("the Consume request stream closed");
        }
    }
    Ok(stats)
}

/// The next message if it is already here.
async fn now(
    stream: &mut Streaming<ConsumeResponse>,
) -> Option<Result<Option<ConsumeResponse>, tonic::Status>> {
    tokio::select! {
        biased;
        message = stream.message() => Some(message),
        _ = ready(()) => None,
    }
}

fn read(
    message: ConsumeResponse,
    batch: &mut Vec<String>,
    sent_at: &mut HashMap<String, Instant>,
    stats: &mut MemberStats,
    settled: &AtomicU64,
) -> anyhow::Result<()> {
    match message.message {
        Some(Response::Delivery(delivery)) => {
            stats.delivered += 1;
            batch.push(delivery.delivery_id);
        }
        Some(Response::Settled(answer)) => {
            if let Some(sent) = answer
                .delivery_ids
                .first()
                .and_then(|id| sent_at.remove(id))
            {
                stats.ack_latency.push(micros(sent.elapsed()));
            }
            settled.fetch_add(answer.delivery_ids.len() as u64, Ordering::Relaxed);
        }
        Some(Response::Rejected(rejected)) => {
            bail!("acks refused ({}): {}", rejected.code, rejected.message)
        }
        _ => {}
    }
    Ok(())
}
