//! The measured scenarios. Each returns result rows; none touches the server except over gRPC,
//! so the numbers are the product's.

use std::{
    collections::VecDeque,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::Context;
use ordo_api::v1::{
    AppendStreamRequest, CreateOrderRequest, EventFilter, LineItem, Money, NewEvent,
    PublishRequest, StartPosition, SubscribeRequest,
    append_stream_response::Message as AnswerMessage, event_service_client::EventServiceClient,
    order_service_client::OrderServiceClient, start_position::Position,
    subscribe_response::Message,
};
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::{
    report::Row,
    stats::{Latencies, micros},
};

/// Payload size of every benchmark event: the size the peers were measured with.
pub const PAYLOAD: usize = 256;
/// The payload of the event after which `e2e` and `fanout` receivers stop (shorter than the
/// 8-byte timestamp every measured event starts with).
const STOP_MARKER: &[u8] = b"stop";

pub async fn connect(addr: &str) -> anyhow::Result<Channel> {
    Channel::from_shared(addr.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {addr}"))
}

/// What one `append` worker sends per call.
#[derive(Debug, Clone, Copy)]
pub enum AppendKind {
    /// Publish with this many events per call.
    Publish {
        batch: usize,
    },
    CreateOrder,
}

/// `clients` closed-loop workers, each sending single-event commands for `duration`; every
/// call is a durable append. One channel per server (`--addr a,b`): worker `i` uses channel
/// `i % n`; with one server they all share its channel.
pub async fn append(
    channels: &[Channel],
    kind: AppendKind,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Row> {
    let (lat, elapsed) = closed_loop(channels, kind, clients, duration).await?;
    let name = match kind {
        AppendKind::Publish { .. } => "append",
        AppendKind::CreateOrder => "append-order",
    };
    let rate = lat.count() as f64 / elapsed;
    let params = format!("clients={clients}{}", nodes(channels.len()));
    Ok(Row::new(name, params, rate, "ops").latencies(&lat))
}

/// ` nodes=N` for rows spread over several servers; nothing for one, so single-server rows
/// read as before.
pub fn nodes(servers: usize) -> String {
    if servers > 1 {
        format!(" nodes={servers}")
    } else {
        String::new()
    }
}

/// `clients` closed-loop workers each publishing `batch` events per call, spread over the
/// servers' channels like `append`.
pub async fn append_batch(
    channels: &[Channel],
    clients: usize,
    batch: usize,
    duration: Duration,
) -> anyhow::Result<Row> {
    let kind = AppendKind::Publish { batch };
    let (lat, elapsed) = closed_loop(channels, kind, clients, duration).await?;
    let rate = (lat.count() * batch) as f64 / elapsed;
    Ok(Row::new(
        "append-batch",
        format!("clients={clients} batch={batch}{}", nodes(channels.len())),
        rate,
        "events",
    )
    .latencies(&lat)
    .extra(
        "calls_per_s",
        format!("{:.0}", lat.count() as f64 / elapsed),
    ))
}

/// Runs `clients` workers that each send the next call as soon as the last one is answered,
/// for `duration`, worker `i` on `channels[i % n]`; returns every call's latency and the seconds
/// it all took.
async fn closed_loop(
    channels: &[Channel],
    kind: AppendKind,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<(Latencies, f64)> {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for worker in 0..clients {
        let channel = channels[worker % channels.len()].clone();
        workers.spawn(async move {
            let mut events = EventServiceClient::new(channel.clone());
            let mut orders = OrderServiceClient::new(channel);
            let mut samples = Vec::new();
            let payload = vec![b'x'; PAYLOAD];
            let stream = format!("bench-{worker}");
            while Instant::now() < deadline {
                let t0 = Instant::now();
                match kind {
                    AppendKind::Publish { batch } => {
                        let request = publish_request(&stream, payload.clone(), batch);
                        events.publish(request).await?;
                    }
                    AppendKind::CreateOrder => {
                        orders.create_order(order_request(worker)).await?;
                    }
                }
                samples.push(micros(t0.elapsed()));
            }
            anyhow::Ok(samples)
        });
    }
    let samples = collect(workers).await?;
    Ok((Latencies::merge(samples), started.elapsed().as_secs_f64()))
}

/// Appends `count` events quickly (batches of 1000, 4 in flight): the fixture for catch-up.
pub async fn prefill(channel: &Channel, count: u64, progress: impl Fn(u64)) -> anyhow::Result<()> {
    let per_call = 1000u64;
    let calls = count.div_ceil(per_call);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for worker in 0..4 {
        let mut events = EventServiceClient::new(channel.clone());
        let next = next.clone();
        let done = done.clone();
        workers.spawn(async move {
            let payload = vec![b'x'; PAYLOAD];
            loop {
                let call = next.fetch_add(1, Ordering::Relaxed);
                if call >= calls {
                    return anyhow::Ok(());
                }
                let n = per_call.min(count - call * per_call) as usize;
                events
                    .publish(publish_request(
                        &format!("fill-{worker}"),
                        payload.clone(),
                        n,
                    ))
                    .await?;
                done.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
    }
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                Some(result) => { result??; }
                None => break,
            },
            _ = tick.tick() => progress(done.load(Ordering::Relaxed)),
        }
    }
    progress(count);
    Ok(())
}

/// `subscribers` concurrent readers from offset 1 until `caught_up`, reader `i` on
/// `channels[i % n]`.
pub async fn catchup(channels: &[Channel], subscribers: usize) -> anyhow::Result<Row> {
    let started = Instant::now();
    let mut readers = JoinSet::new();
    for i in 0..subscribers {
        let mut events = EventServiceClient::new(channels[i % channels.len()].clone());
        readers.spawn(async move {
            let t0 = Instant::now();
            let mut stream = events
                .subscribe(SubscribeRequest {
                    start: Some(StartPosition {
                        position: Some(Position::Start(true)),
                    }),
                    ..Default::default()
                })
                .await?
                .into_inner();
            let (mut count, mut bytes) = (0u64, 0u64);
            while let Some(msg) = stream.message().await? {
                match msg.message {
                    Some(Message::Event(event)) => {
                        count += 1;
                        bytes += ordo_api::prost::Message::encoded_len(&event) as u64;
                    }
                    Some(Message::CaughtUp(_)) => break,
                    _ => {}
                }
            }
            anyhow::Ok((count, bytes, t0.elapsed()))
        });
    }
    let mut per_reader = Vec::new();
    while let Some(joined) = readers.join_next().await {
        per_reader.push(joined??);
    }
    let wall = started.elapsed().as_secs_f64();
    let events: u64 = per_reader.iter().map(|r| r.0).sum();
    let bytes: u64 = per_reader.iter().map(|r| r.1).sum();
    let slowest = per_reader
        .iter()
        .map(|r| r.2.as_secs_f64())
        .fold(0.0, f64::max);
    let each = per_reader.first().map(|r| r.0).unwrap_or(0) as f64 / slowest.max(1e-9);
    Ok(Row::new(
        "catchup",
        format!("subscribers={subscribers}{}", nodes(channels.len())),
        each,
        "ev/sub",
    )
    .extra("total_ev_per_s", format!("{:.0}", events as f64 / wall))
    .extra(
        "mb_per_s_each",
        format!(
            "{:.1}",
            bytes as f64 / subscribers.max(1) as f64 / slowest.max(1e-9) / 1e6
        ),
    )
    .extra("events_each", per_reader.first().map(|r| r.0).unwrap_or(0)))
}

/// A producer at `rate` events/s on `producer` and `subscribers` live subscribers, subscriber `i`
/// on `channels[i % n]`: latency from the producer's send to each subscriber's receipt,
/// measured on one clock (the send time rides in the payload).
pub async fn e2e(
    producer: &Channel,
    channels: &[Channel],
    rate: u64,
    subscribers: usize,
    duration: Duration,
    name: &str,
) -> anyhow::Result<Row> {
    let epoch = Instant::now();
    let stream_id = format!("e2e-{}", std::process::id());
    let mut readers = JoinSet::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(subscribers.max(1));
    for i in 0..subscribers {
        let channel = channels[i % channels.len()].clone();
        let ready = ready_tx.clone();
        let stream_id = stream_id.clone();
        readers.spawn(async move {
            let request = SubscribeRequest {
                start: Some(StartPosition {
                    position: Some(Position::End(true)),
                }),
                filter: Some(EventFilter {
                    types: vec![],
                    stream_ids: vec![stream_id],
                }),
                heartbeat_interval_ms: 1000,
                ..Default::default()
            };
            let mut stream = light::subscribe(channel, request).await?;
            let mut samples = Vec::new();
            // No timer per message: a receiver costs what a client's receive loop costs, and
            // ends at the producer's stop marker, which comes after every measured event.
            while let Some(msg) = stream.message().await? {
                match msg.message {
                    Some(light::Message::CaughtUp(_)) => {
                        let _ = ready.send(()).await;
                    }
                    Some(light::Message::Event(event)) => {
                        let data = &event.data;
                        if data.as_slice() == STOP_MARKER {
                            break;
                        }
                        if data.len() >= 8 {
                            let mut sent = [0u8; 8];
                            sent.copy_from_slice(&data[..8]);
                            let sent = Duration::from_nanos(u64::from_le_bytes(sent));
                            samples.push(micros(epoch.elapsed().saturating_sub(sent)));
                        }
                    }
                    _ => {}
                }
            }
            anyhow::Ok(samples)
        });
    }
    drop(ready_tx);
    for _ in 0..subscribers {
        ready_rx
            .recv()
            .await
            .context("a subscriber failed before catching up")?;
    }

    let mut events = EventServiceClient::new(producer.clone());
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let mut sent = 0u64;
    // Fire-and-forget sends on a schedule (open loop), so a slow ack never lowers the rate.
    let mut in_flight = JoinSet::new();
    while start.elapsed() < duration {
        let due = start + interval.mul_f64(sent as f64);
        tokio::time::sleep_until(due.into()).await;
        let mut payload = vec![b'x'; PAYLOAD];
        payload[..8].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_le_bytes());
        let request = publish_request(&stream_id, payload, 1);
        let mut client = events.clone();
        in_flight.spawn(async move { client.publish(request).await.map(|_| ()) });
        sent += 1;
        while let Some(done) = in_flight.try_join_next() {
            done??;
        }
    }
    // The rate the producer kept: over the sending window only, not the wait for the last
    // acknowledgements and deliveries below.
    let sending = start.elapsed();
    while let Some(done) = in_flight.join_next().await {
        done??;
    }
    events
        .publish(publish_request(&stream_id, STOP_MARKER.to_vec(), 1))
        .await?;
    let lat = tokio::time::timeout(Duration::from_secs(120), collect(readers))
        .await
        .context("subscribers did not reach the stop marker within 120 s")??;
    let lat = Latencies::merge(lat);
    let expected = sent as usize * subscribers;
    Ok(Row::new(
        name,
        format!("rate={rate} subscribers={subscribers}"),
        sent as f64 / sending.as_secs_f64(),
        "ev",
    )
    .latencies(&lat)
    .extra("delivered", format!("{}/{}", lat.count(), expected)))
}

async fn collect(mut workers: JoinSet<anyhow::Result<Vec<u32>>>) -> anyhow::Result<Vec<Vec<u32>>> {
    let mut all = Vec::new();
    while let Some(joined) = workers.join_next().await {
        all.push(joined??);
    }
    Ok(all)
}

pub fn publish_request(stream_id: &str, payload: Vec<u8>, count: usize) -> PublishRequest {
    PublishRequest {
        events: (0..count)
            .map(|_| NewEvent {
                stream_id: stream_id.to_string(),
                r#type: "bench.event".into(),
                datacontenttype: "application/octet-stream".into(),
                data: payload.clone(),
                ..Default::default()
            })
            .collect(),
    }
}

fn order_request(worker: usize) -> CreateOrderRequest {
    CreateOrderRequest {
        customer_id: format!("bench-customer-{worker}"),
        items: vec![LineItem {
            sku: "bench-sku".into(),
            quantity: 1,
            unit_price: Some(Money {
                amount_minor: 1000,
                currency: "EUR".into(),
            }),
        }],
        idempotency_key: String::new(),
    }
}

/// Subscribe as the latency scenarios see it: each message decoded down to the offset and the
/// payload. A thousand subscribers in one process would otherwise spend the load generator's
/// CPU (shared with the server on this machine) decoding strings nobody reads.
mod light {
    use ordo_api::v1::SubscribeRequest;
    use tonic::{Status, codegen::http::uri::PathAndQuery, transport::Channel};

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Response {
        #[prost(oneof = "Message", tags = "1, 2, 3")]
        pub message: Option<Message>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Message {
        #[prost(message, tag = "1")]
        Event(Event),
        #[prost(message, tag = "2")]
        CaughtUp(Empty),
        #[prost(message, tag = "3")]
        Heartbeat(Empty),
    }

    /// `ordo.v1.Event`'s offset and `data` fields (same field numbers).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Event {
        #[prost(uint64, tag = "1")]
        pub offset: u64,
        #[prost(bytes = "vec", tag = "11")]
        pub data: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Empty {}

    pub async fn subscribe(
        channel: Channel,
        request: SubscribeRequest,
    ) -> Result<tonic::Streaming<Response>, Status> {
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let path = PathAndQuery::from_static("/ordo.v1.EventService/Subscribe");
        let codec = tonic_prost::ProstCodec::<SubscribeRequest, Response>::default();
        Ok(grpc
            .server_streaming(tonic::Request::new(request), path, codec)
            .await?
            .into_inner())
    }
}

/// `streams` AppendStreams, each on its own connection (stream `i` to `addrs[i % n]`), each
/// keeping up to `window` events in flight (less if the server advertises less) for
/// `duration`: events per second, and each event's ack latency from the moment it was handed
/// to the stream to its durable ack. Events carry no id (like the other append scenarios), so
/// the server skips its id index.
pub async fn append_stream(
    addrs: &[String],
    streams: usize,
    window: usize,
    duration: Duration,
) -> anyhow::Result<Row> {
    let mut channels = Vec::with_capacity(streams);
    for i in 0..streams {
        channels.push(connect(&addrs[i % addrs.len()]).await?);
    }
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = JoinSet::new();
    for (worker, channel) in channels.into_iter().enumerate() {
        workers.spawn(one_append_stream(channel, worker, window, deadline));
    }
    let samples = collect(workers).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let lat = Latencies::merge(samples);
    let rate = lat.count() as f64 / elapsed;
    Ok(Row::new(
        "append-stream",
        format!("streams={streams} window={window}{}", nodes(addrs.len())),
        rate,
        "events",
    )
    .latencies(&lat))
}

async fn one_append_stream(
    channel: Channel,
    worker: usize,
    window: usize,
    deadline: Instant,
) -> anyhow::Result<Vec<u32>> {
    let mut events = EventServiceClient::new(channel);
    let (requests, rx) = tokio::sync::mpsc::channel(window.clamp(1, 1024));
    let mut answers = events
        .append_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let window = match answers.message().await?.and_then(|r| r.message) {
        Some(AnswerMessage::Window(w)) => window.min(w.max_in_flight as usize).max(1),
        other => anyhow::bail!("expected the window first, got {other:?}"),
    };
    let room = Arc::new(tokio::sync::Semaphore::new(window));
    let sent_at = Arc::new(std::sync::Mutex::new(VecDeque::with_capacity(window)));
    let sender = {
        let room = room.clone();
        let sent_at = sent_at.clone();
        tokio::spawn(async move {
            let payload = vec![b'x'; PAYLOAD];
            let stream_id = format!("bench-stream-{worker}");
            let mut seq = 0u64;
            while Instant::now() < deadline {
                room.acquire().await?.forget();
                seq += 1;
                let request = AppendStreamRequest {
                    event: Some(NewEvent {
                        stream_id: stream_id.clone(),
                        r#type: "bench.event".into(),
                        datacontenttype: "application/octet-stream".into(),
                        data: payload.clone(),
                        ..Default::default()
                    }),
                    client_seq: seq,
                };
                sent_at
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .push_back(Instant::now());
                if requests.send(request).await.is_err() {
                    anyhow::bail!("the append stream closed early");
                }
            }
            // Dropping `requests` half-closes the stream: the server answers the rest and ends.
            anyhow::Ok(())
        })
    };
    let mut samples = Vec::new();
    while let Some(answer) = answers.message().await? {
        match answer.message {
            Some(AnswerMessage::Ack(_)) => {}
            Some(AnswerMessage::Rejected(r)) => {
                anyhow::bail!("event {} refused: {}", r.client_seq, r.message)
            }
            _ => continue,
        }
        let sent = sent_at
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .pop_front();
        if let Some(sent) = sent {
            samples.push(micros(sent.elapsed()));
        }
        room.add_permits(1);
    }
    sender.await??;
    Ok(samples)
}
