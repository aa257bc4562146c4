//! Appends on JetStream: the checks an append needs are made against this node's copy, then
//! enforced by JetStream itself (expected last subject sequence, `Nats-Msg-Id` dedupe, atomic
//! batches), so two nodes racing on one stream cannot both win.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use async_nats::{Client, HeaderMap, jetstream};
use bytes::Bytes;
use prost::Message;
use tokio::sync::{Mutex, watch};
use tracing::warn;

use super::{
    super::{AppendBatch, AppendOutcome, EventLog, Position, RawEvent, SledLog, StoreError},
    follower::Kick,
    headers,
    names::Names,
    nats_error,
    publish::{self, Outgoing, Published, Refused},
};

/// Rounds of read-check-publish before an append that keeps losing races gives up.
const MAX_ATTEMPTS: usize = 8;
/// How long an append waits for this node's copy to move towards what JetStream acknowledged.
const VISIBLE_WITHIN: Duration = Duration::from_secs(10);
/// Room kept for a message's headers when checking its size against `max_payload`.
const HEADER_ROOM: usize = 1024;
/// Pause before asking again when a twin append is being stored.
const TWIN_PAUSE: Duration = Duration::from_millis(10);
/// Appends slower than this are logged, with the step that took the time.
const SLOW: Duration = Duration::from_secs(1);
/// How long the copy may stand still while an append waits before its consumer is kicked.
const STALLED_AFTER: Duration = Duration::from_millis(500);

/// What every append needs: the connection, the names and this node's copy.
pub struct Shared {
    client: Client,
    js: jetstream::Context,
    names: Names,
    pub replica: Arc<SledLog>,
    records_applied: watch::Receiver<u64>,
    kicks: Kicks,
    /// Serialises `enqueue_many` callers, so their batches publish in call order.
    pub order: Arc<Mutex<()>>,
}

impl Shared {
    pub fn new(
        client: Client,
        js: jetstream::Context,
        names: Names,
        replica: Arc<SledLog>,
        records_applied: watch::Receiver<u64>,
        kicks: Kicks,
    ) -> Self {
        Self {
            client,
            js,
            names,
            replica,
            records_applied,
            kicks,
            order: Arc::new(Mutex::new(())),
        }
    }

    pub async fn append(&self, mut batch: AppendBatch) -> Result<AppendOutcome, StoreError> {
        if batch.events.is_empty() {
            return self.append_records(batch).await;
        }
        self.assign_ids(&mut batch);
        // Whether the publish carries `Nats-Msg-Id`: dropped once JetStream calls it a
        // duplicate of something this node's copy no longer knows (an idempotency key that
        // expired here inside JetStream's two-minute window), since the request is then new.
        let mut dedupe = true;
        for _ in 0..MAX_ATTEMPTS {
            if let Some(outcome) = self.already_stored(&batch)? {
                return Ok(outcome);
            }
            let mut last_subject_seq = BTreeMap::new();
            for (stream_id, expected) in &batch.expected_versions {
                let mut actual = self.replica.stream_version(stream_id)?;
                if actual != *expected {
                    // This node may be behind: judge on the log's head, not on a stale copy.
                    self.catch_up().await?;
                    actual = self.replica.stream_version(stream_id)?;
                }
                if actual != *expected {
                    return Err(StoreError::VersionConflict {
                        stream_id: stream_id.clone(),
                        expected: *expected,
                        actual,
                    });
                }
                last_subject_seq.insert(stream_id.clone(), self.last_offset(stream_id, actual)?);
            }
            let messages = self.messages(&batch, &mut last_subject_seq, dedupe)?;
            self.check_sizes(&messages)?;
            let count = messages.len() as u64;
            let sent = std::time::Instant::now();
            let published = publish::publish(&self.client, messages).await;
            if sent.elapsed() > SLOW {
                warn!(elapsed = ?sent.elapsed(), outcome = ?published, "slow JetStream publish");
            }
            match published {
                Ok(Published::Stored { last }) => {
                    return self.stored(batch, last + 1 - count, last).await;
                }
                // Stored before (a retry, or a racing twin on another node): wait until this
                // node shows it, then answer as the copy says (`already_stored`).
                Ok(Published::Duplicate { seq }) => {
                    self.visible(seq).await?;
                    if self.already_stored(&batch)?.is_none() {
                        dedupe = false;
                    }
                }
                // The stream moved since it was read: read again; the version check then
                // tells a real conflict from a stale read.
                Err(Refused::WrongLastSequence) => self.catch_up().await?,
                Err(Refused::TwinInProcess) => tokio::time::sleep(TWIN_PAUSE).await,
                Err(Refused::Other(err)) => return Err(err),
            }
        }
        Err(StoreError::Nats(format!(
            "the append lost {MAX_ATTEMPTS} races in a row; retry"
        )))
    }

    /// Ids are chosen here, not by each node's copy, so every node stores the same id.
    pub(super) fn assign_ids(&self, batch: &mut AppendBatch) {
        for event in &mut batch.events {
            if event.id.is_empty() {
                event.id = ulid::Ulid::new().to_string();
            }
        }
    }

    /// Refuses (FAILED_PRECONDITION) a message the NATS server would refuse, before any of an
    /// append is sent; NATS would only say so after the fact, as a failed request.
    pub(super) fn check_sizes(&self, messages: &[Outgoing]) -> Result<(), StoreError> {
        let max = self.max_payload();
        for message in messages {
            let size = message.payload.len() + HEADER_ROOM;
            if max > 0 && size > max {
                return Err(StoreError::Unsupported(format!(
                    "an event of this append is {} bytes encoded, over the {max} bytes the NATS server takes in one message (its max_payload); raise max_payload in the NATS config or send smaller events",
                    message.payload.len()
                )));
            }
        }
        Ok(())
    }

    /// The largest message the NATS server takes.
    pub(super) fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }

    pub(super) fn js(&self) -> &jetstream::Context {
        &self.js
    }

    /// Answers an append JetStream stored at `first..=last`, once this node's copy shows it.
    pub(super) async fn stored(
        &self,
        batch: AppendBatch,
        first: u64,
        last: u64,
    ) -> Result<AppendOutcome, StoreError> {
        let acked = std::time::Instant::now();
        self.visible(last).await?;
        if acked.elapsed() > SLOW {
            warn!(elapsed = ?acked.elapsed(), offset = last, "this node's copy was slow to show an acknowledged append");
        }
        let positions = self.positions(first, last)?;
        let response = batch
            .project
            .map(|project| project(&positions).response)
            .unwrap_or_default();
        Ok(AppendOutcome::Appended {
            positions,
            response,
        })
    }

    /// What the log already holds for this batch: an idempotency key's stored response, or
    /// the positions of client-chosen ids (all stored: deduplicated; some: refused).
    pub(super) fn already_stored(
        &self,
        batch: &AppendBatch,
    ) -> Result<Option<AppendOutcome>, StoreError> {
        if let Some(claim) = &batch.idempotency
            && let Some(stored) = self.replica.idempotent_response(&claim.key)?
        {
            if stored.fingerprint == claim.fingerprint {
                return Ok(Some(AppendOutcome::Replayed {
                    response: stored.response,
                }));
            }
            return Err(StoreError::IdempotencyMismatch {
                key: claim.key.clone(),
            });
        }
        if !batch.index_ids {
            return Ok(None);
        }
        let mut existing = Vec::new();
        for event in &batch.events {
            if let Some(position) = self.replica.position_of(&event.id)? {
                existing.push(position);
            }
        }
        if existing.is_empty() {
            return Ok(None);
        }
        if existing.len() == batch.events.len() {
            return Ok(Some(AppendOutcome::Deduplicated {
                positions: existing,
            }));
        }
        Err(StoreError::DuplicateEventId {
            id: existing[0].id.clone(),
            offset: existing[0].offset,
        })
    }

    /// The offset of a stream's event at `version` (0 for an empty stream): JetStream's last
    /// sequence on the stream's subject.
    fn last_offset(&self, stream_id: &str, version: u64) -> Result<u64, StoreError> {
        if version == 0 {
            return Ok(0);
        }
        match self
            .replica
            .read_stream(stream_id, version, version)?
            .first()
        {
            Some(event) => Ok(event.offset),
            None => Err(StoreError::Corrupt {
                what: "stream index".into(),
                detail: format!("stream {stream_id} has no event at version {version}"),
            }),
        }
    }

    /// One message per event. The first event of each stream with an expected version
    /// carries JetStream's expected-last-subject-sequence; the first of the append carries
    /// the idempotency claim; a lone event also carries `Nats-Msg-Id` (batches may not).
    pub(super) fn messages(
        &self,
        batch: &AppendBatch,
        last_subject_seq: &mut BTreeMap<String, u64>,
        dedupe: bool,
    ) -> Result<Vec<Outgoing>, StoreError> {
        let count = batch.events.len();
        let mut messages = Vec::with_capacity(count);
        for (i, event) in batch.events.iter().enumerate() {
            let mut headers = HeaderMap::new();
            headers.insert(headers::LEFT, (count - 1 - i).to_string().as_str());
            if let Some(seq) = last_subject_seq.remove(&event.stream_id) {
                headers.insert(
                    "Nats-Expected-Last-Subject-Sequence",
                    seq.to_string().as_str(),
                );
            }
            if i == 0
                && let Some(claim) = &batch.idempotency
            {
                headers.insert(headers::IDEMPOTENCY_KEY, claim.key.as_str());
                headers.insert(
                    headers::IDEMPOTENCY_FINGERPRINT,
                    hex::encode(claim.fingerprint).as_str(),
                );
            }
            if count == 1 && dedupe {
                let msg_id = match &batch.idempotency {
                    Some(claim) => format!("idempotency:{}", claim.key),
                    None => format!("event:{}", event.id),
                };
                headers.insert("Nats-Msg-Id", msg_id.as_str());
            }
            messages.push(Outgoing {
                subject: self.names.event_subject(&event.stream_id),
                headers,
                payload: Bytes::from(event.encode_to_vec()),
            });
        }
        Ok(messages)
    }

    /// The positions of `first..=last` as this node's copy stored them.
    fn positions(&self, first: u64, last: u64) -> Result<Vec<Position>, StoreError> {
        let count = (last + 1 - first) as usize;
        let events = self.replica.read_raw(first, count, usize::MAX)?;
        let positions: Vec<Position> = events
            .iter()
            .filter(|e| e.offset <= last)
            .map(RawEvent::decode)
            .map(|event| {
                event.map(|e| Position {
                    id: e.id,
                    offset: e.offset,
                    stream_id: e.stream_id,
                    stream_version: e.stream_version,
                })
            })
            .collect::<Result<_, _>>()?;
        if positions.len() != count {
            return Err(StoreError::Corrupt {
                what: "replica".into(),
                detail: format!("offsets {first}..={last} are not all there"),
            });
        }
        Ok(positions)
    }

    /// Waits until this node's copy holds offset `offset`.
    pub(super) async fn visible(&self, offset: u64) -> Result<(), StoreError> {
        let head = self.replica.watch_head();
        applied(head, offset, &self.kicks.events, "offset").await
    }

    /// Waits until this node's copy holds everything the log held when called.
    pub async fn catch_up(&self) -> Result<(), StoreError> {
        let events = self.last_sequence(&self.names.events_stream).await?;
        self.visible(events).await?;
        let records = self.last_sequence(&self.names.records_stream).await?;
        self.records_visible(records).await
    }

    /// The last sequence JetStream stored in `stream`.
    async fn last_sequence(&self, stream: &str) -> Result<u64, StoreError> {
        let mut stream = self
            .js
            .get_stream(stream)
            .await
            .map_err(|e| nats_error("opening a stream", e))?;
        let info = stream
            .info()
            .await
            .map_err(|e| nats_error("reading a stream's state", e))?;
        Ok(info.state.last_sequence)
    }

    /// A records-only batch: one message per key on the records stream (atomic when several),
    /// answered once this node's copy shows it.
    async fn append_records(&self, batch: AppendBatch) -> Result<AppendOutcome, StoreError> {
        let projection = batch.project.map(|p| p(&[])).unwrap_or_default();
        // The records stream keeps one message per key: the last write of a key is the one.
        let mut writes = BTreeMap::new();
        for record in projection.records {
            writes.insert(record.key, record.value);
        }
        if writes.is_empty() {
            return Ok(AppendOutcome::Appended {
                positions: Vec::new(),
                response: projection.response,
            });
        }
        let count = writes.len();
        let messages = writes
            .into_iter()
            .enumerate()
            .map(|(i, (key, value))| {
                let mut headers = HeaderMap::new();
                headers.insert(headers::LEFT, (count - 1 - i).to_string().as_str());
                if value.is_none() {
                    headers.insert(headers::DELETE, "1");
                }
                Outgoing {
                    subject: self.names.record_subject(&key),
                    headers,
                    payload: Bytes::from(value.unwrap_or_default()),
                }
            })
            .collect();
        match publish::publish(&self.client, messages).await {
            Ok(Published::Stored { last } | Published::Duplicate { seq: last }) => {
                self.records_visible(last).await?;
                Ok(AppendOutcome::Appended {
                    positions: Vec::new(),
                    response: projection.response,
                })
            }
            Err(Refused::TwinInProcess) => Err(StoreError::Nats(
                "JetStream refused a records write as a duplicate it did not carry".into(),
            )),
            Err(Refused::WrongLastSequence) => Err(StoreError::Nats(
                "JetStream refused a records write with a sequence check it did not carry".into(),
            )),
            Err(Refused::Other(err)) => Err(err),
        }
    }

    async fn records_visible(&self, seq: u64) -> Result<(), StoreError> {
        let applied_rx = self.records_applied.clone();
        applied(applied_rx, seq, &self.kicks.records, "records sequence").await
    }
}

/// The followers' kick handles (see [`Kick`]).
#[derive(Clone, Default)]
pub struct Kicks {
    pub events: Kick,
    pub records: Kick,
}

/// Waits until `progress` reaches `target`, kicking the follower whenever it stands still for
/// [`STALLED_AFTER`]; gives up once it has not moved for [`VISIBLE_WITHIN`] (a copy that is
/// catching up a long way, e.g. at start, is waited for as long as it moves).
async fn applied(
    mut progress: watch::Receiver<u64>,
    target: u64,
    kick: &Kick,
    what: &str,
) -> Result<(), StoreError> {
    let mut deadline = tokio::time::Instant::now() + VISIBLE_WITHIN;
    let mut last_seen = *progress.borrow();
    loop {
        let before = *progress.borrow();
        if before != last_seen {
            last_seen = before;
            deadline = tokio::time::Instant::now() + VISIBLE_WITHIN;
        }
        let waited = tokio::time::timeout(STALLED_AFTER, progress.wait_for(|at| *at >= target))
            .await
            .map(|reached| reached.is_ok());
        match waited {
            Ok(true) => return Ok(()),
            Ok(false) => return Err(StoreError::Closed),
            Err(_) if tokio::time::Instant::now() >= deadline => {
                return Err(StoreError::Nats(format!(
                    "{what} {target} is stored in JetStream but this node's copy has not moved for {} s (at {before})",
                    VISIBLE_WITHIN.as_secs()
                )));
            }
            Err(_) => {
                if *progress.borrow() == before {
                    kick.notify_waiters();
                }
            }
        }
    }
}
