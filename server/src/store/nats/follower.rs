//! Keeps this node's copy of the log (a [`SledLog`] in the data dir) up to date with JetStream:
//! an ordered consumer per stream, applied in chunks through the replica's replicated path, so
//! every node has the same offsets, stream versions and records, and serves reads locally.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull::OrderedConfig},
};
use futures::StreamExt;
use ordo_api::v1::Event;
use prost::Message;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use super::{
    super::{
        AppendBatch, EventLog, IdempotencyClaim, Projection, RecordWrite, SledLog, StoreError,
    },
    headers,
    names::Names,
    nats_error,
};

/// Most messages applied in one replica commit.
const CHUNK: usize = 1024;
/// Pause before re-creating a consumer after the connection or the stream failed.
const RETRY: Duration = Duration::from_millis(250);

/// Asks a follower to re-create its consumer: appends that JetStream acknowledged wait for
/// this node's copy, and a consumer left behind by a stream leader change can sit silent for
/// seconds before the client library notices.
/// Kicks are `notify_waiters`: they reach a follower waiting for messages, never one busy
/// applying (that one is making progress).
pub type Kick = Arc<tokio::sync::Notify>;
/// See [`next_chunk`].
const KICK_GRACE: Duration = Duration::from_secs(1);

/// Derives the records an event implies (the order projection, ...) from the event and the
/// records as the events before it left them. Every node runs it on every event, in log
/// order, so the records come out the same everywhere without being shipped.
pub trait Derive: Send + Sync + 'static {
    fn derive(
        &self,
        event: &mut Event,
        records: &mut dyn Records,
    ) -> Result<Projection, StoreError>;
}

/// Records as of the event being derived: the replica plus what earlier events of the same
/// chunk derived.
pub trait Records {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
}

struct Overlay<'a> {
    replica: &'a SledLog,
    written: HashMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Records for Overlay<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.written.get(key) {
            Some(value) => Ok(value.clone()),
            None => self.replica.get_record(key),
        }
    }
}

/// Applies the events stream to the replica until `stop`.
pub async fn follow_events(
    js: jetstream::Context,
    names: Names,
    replica: Arc<SledLog>,
    derive: Arc<dyn Derive>,
    kick: Kick,
    stop: CancellationToken,
) {
    let from = || replica.head() + 1;
    follow("events", from, &stop, |start| {
        events_from(&js, &names, &replica, derive.as_ref(), &kick, start)
    })
    .await;
}

async fn events_from(
    js: &jetstream::Context,
    names: &Names,
    replica: &SledLog,
    derive: &dyn Derive,
    kick: &Kick,
    start: u64,
) -> Result<(), StoreError> {
    let mut messages = ordered(js, &names.events_stream, start)
        .await?
        .ready_chunks(CHUNK);
    // Events of a multi-event append wait here until its last one arrives, so the replica
    // stores the append whole.
    let mut open: Option<AppendBatch> = None;
    let created = Instant::now();
    let mut next = start;
    // Records derived but not yet in the copy. Kept while an append is open across chunks, so
    // its later events derive from its earlier ones.
    let mut overlay = Overlay {
        replica,
        written: HashMap::new(),
    };
    while let Some(chunk) = next_chunk(&mut messages, kick, created).await? {
        let mut batches = Vec::new();
        for message in chunk {
            let message = message.map_err(|e| nats_error("reading the events stream", e))?;
            let seq = message
                .info()
                .map_err(|e| nats_error("reading a message's sequence", e))?
                .stream_sequence;
            if seq != next {
                return Err(StoreError::Nats(format!(
                    "the events consumer skipped from {next} to {seq}"
                )));
            }
            next += 1;
            let mut event = Event::decode(message.payload.as_ref()).unwrap_or_else(|err| {
                // Only something other than Ordo publishing on Ordo's subjects gets here:
                // keep the offset (so every node agrees) but make the event say what it is.
                warn!(offset = seq, error = %err, "undecodable message in the events stream");
                Event {
                    id: format!("undecodable-{seq}"),
                    r#type: "ordo.undecodable".into(),
                    stream_id: "ordo.undecodable".into(),
                    ..Default::default()
                }
            });
            event.offset = seq;
            let projection = derive.derive(&mut event, &mut overlay)?;
            for record in &projection.records {
                overlay
                    .written
                    .insert(record.key.clone(), record.value.clone());
            }
            let header = headers::read(message.headers.as_ref());
            let batch = open.get_or_insert_with(|| AppendBatch {
                events: Vec::new(),
                expected_versions: Vec::new(),
                idempotency: header
                    .claim
                    .map(|(key, fingerprint)| IdempotencyClaim { key, fingerprint }),
                // Every id is indexed (not only client-chosen ones, as with sled): ids chosen
                // by a node are plain ULIDs that do not name their offset, and a client may
                // resend one it was given.
                index_ids: true,
                project: None,
            });
            batch.events.push(event);
            merge(batch, projection);
            if header.left == 0
                && let Some(batch) = open.take()
            {
                batches.push(batch);
            }
        }
        if batches.is_empty() {
            continue;
        }
        for outcome in replica.replicate(batches).await? {
            outcome?;
        }
        if open.is_none() {
            // Everything derived is in the copy now.
            overlay.written.clear();
        }
    }
    Err(StoreError::Nats("the events consumer ended".into()))
}

/// Adds an event's derived records to its batch's projection (the last response wins: it is
/// what the append answered).
fn merge(batch: &mut AppendBatch, projection: Projection) {
    let mut merged = match batch.project.take() {
        Some(earlier) => earlier(&[]),
        None => Projection::default(),
    };
    merged.records.extend(projection.records);
    if !projection.response.is_empty() {
        merged.response = projection.response;
    }
    batch.project = Some(Box::new(move |_| merged));
}

/// Applies the records stream to the replica until `stop`; `applied` says up to which records
/// sequence, so a records write can wait until this node shows it.
pub async fn follow_records(
    js: jetstream::Context,
    names: Names,
    replica: Arc<SledLog>,
    applied: watch::Sender<u64>,
    kick: Kick,
    stop: CancellationToken,
) {
    let from = || *applied.borrow() + 1;
    follow("records", from, &stop, |start| {
        records_from(&js, &names, &replica, &applied, &kick, start)
    })
    .await;
}

/// Runs `apply` from where `from` says, again and again after a NATS failure (the connection,
/// the stream's leader, the consumer), until `stop`. Any other failure means this node's copy
/// refused what JetStream holds: the copy then stays at its last good position (reads keep
/// working, appends time out) and the error says to restart the node.
async fn follow<F, Fut>(what: &str, from: impl Fn() -> u64, stop: &CancellationToken, apply: F)
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    loop {
        let start = from();
        let result = tokio::select! {
            () = stop.cancelled() => return,
            result = apply(start) => result,
        };
        match result {
            Err(StoreError::Nats(reason)) => {
                warn!(stream = what, %reason, from = start, "consumer interrupted; resuming");
            }
            Err(err) => {
                error!(stream = what, error = %err, "cannot apply JetStream to this node's copy; restart the node");
                return;
            }
            Ok(()) => {}
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RETRY) => {}
        }
    }
}

async fn records_from(
    js: &jetstream::Context,
    names: &Names,
    replica: &SledLog,
    applied: &watch::Sender<u64>,
    kick: &Kick,
    start: u64,
) -> Result<(), StoreError> {
    let mut messages = ordered(js, &names.records_stream, start)
        .await?
        .ready_chunks(CHUNK);
    let created = Instant::now();
    let mut open: Vec<RecordWrite> = Vec::new();
    while let Some(chunk) = next_chunk(&mut messages, kick, created).await? {
        let mut writes = Vec::new();
        let mut last = None;
        for message in chunk {
            let message = message.map_err(|e| nats_error("reading the records stream", e))?;
            let seq = message
                .info()
                .map_err(|e| nats_error("reading a message's sequence", e))?
                .stream_sequence;
            let header = headers::read(message.headers.as_ref());
            if let Some(key) = names.record_key(message.subject.as_str()) {
                open.push(RecordWrite {
                    key,
                    value: (!header.delete).then(|| message.payload.to_vec()),
                });
            }
            if header.left == 0 {
                writes.append(&mut open);
                last = Some(seq);
            }
        }
        let Some(last) = last else { continue };
        if !writes.is_empty() {
            for outcome in replica
                .replicate(vec![AppendBatch::records_only(writes)])
                .await?
            {
                outcome?;
            }
        }
        applied.send_replace(last);
    }
    Err(StoreError::Nats("the records consumer ended".into()))
}

/// The next chunk of messages, or an error when kicked while waiting for one (never while a
/// chunk is being applied: the copy's head must be settled when the consumer is re-created).
/// A consumer younger than [`KICK_GRACE`] is left alone: it needs a moment to deliver, and
/// kicks that piled up while the old one hung must not re-create the new one at once.
async fn next_chunk<S: futures::Stream + Unpin>(
    messages: &mut S,
    kick: &Kick,
    created: Instant,
) -> Result<Option<S::Item>, StoreError> {
    loop {
        tokio::select! {
            chunk = messages.next() => return Ok(chunk),
            () = kick.notified() => {
                if created.elapsed() >= KICK_GRACE {
                    return Err(StoreError::Nats(
                        "appends are waiting for messages this consumer has not delivered; re-creating it".into(),
                    ));
                }
            }
        }
    }
}

/// An ordered consumer from `start`: JetStream re-creates it on a gap or a lost connection,
/// and it never needs acks, which is what a reader that tracks its own position wants.
async fn ordered(
    js: &jetstream::Context,
    stream: &str,
    start: u64,
) -> Result<jetstream::consumer::pull::Ordered, StoreError> {
    let stream = js
        .get_stream(stream)
        .await
        .map_err(|e| nats_error("opening a stream", e))?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| nats_error("creating a consumer", e))?;
    consumer
        .messages()
        .await
        .map_err(|e| nats_error("consuming", e))
}
