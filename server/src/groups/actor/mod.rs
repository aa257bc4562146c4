//! One task per consumer group: it owns the group's live state (its window of unsettled events,
//! its members and their deliveries, its timers) and is the only writer of the group's records.
//!
//! Commands (joins, acks, nacks, status) arrive on a bounded channel. Each round the task
//! applies every command waiting, writes what they changed in ONE durable batch, and only then
//! confirms them; so acks from all members share a commit, and a confirmed ack is on disk. Then
//! it reads more of the log into the window and hands out deliveries.
//!
//! Memory is bounded: the window holds at most [`WINDOW`] unsettled events (the group stops
//! reading the log while it is full), each member's channel at most its `max_in_flight` plus a
//! margin (a member that lets it fill is dropped: see [`MemberOut`]), and replays at most
//! [`MAX_REPLAYING`].
//!
//! The task's work, by job: `scan` reads the log into the window, `dispatch` hands events to
//! members, `settle` applies acks, nacks, timeouts, parking and replays, `members` handles
//! joins and leaves; this file holds the state, the loop and the durable write.

mod dispatch;
mod members;
mod scan;
mod settle;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    hash::{Hash, Hasher},
    time::{Duration, Instant},
};

use bytes::Bytes;
use ordo_api::v1::ConsumerGroup;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    delivery_id::{self, DeliveryId},
    progress::Progress,
    records::{self, Failure, Parked, StoredGroup},
};
use crate::{
    clock,
    error::OrdoError,
    events::read::READ_CHUNK_BYTES,
    filter::Matcher,
    store::{AppendBatch, RawEvent, Record, RecordWrite, SharedLog, StoreError},
};

/// Unsettled events the group tracks at once; past it, the group stops reading the log until
/// some settle (like JetStream's MaxAckPending, but parked events do not count).
pub const WINDOW: usize = 10_000;
/// Replayed parked events not yet settled, at most.
pub const MAX_REPLAYING: usize = 10_000;
/// Deliveries a member's channel holds beyond its `max_in_flight`: room for the deliveries
/// that timed out unread while their redeliveries are sent. A member whose channel still
/// fills has not read for several ack timeouts and is dropped.
const MEMBER_SLACK: usize = 64;
/// Events read from the log per step.
const READ_EVENTS: usize = 512;
/// Read steps per round, so a long scan of non-matching history does not starve commands.
const READS_PER_ROUND: usize = 16;
/// Commands applied per round (and so per durable write).
const COMMANDS_PER_ROUND: usize = 512;
/// How long progress made only by skipping non-matching events may wait to be written.
const LAZY_CHECKPOINT: Duration = Duration::from_secs(1);
/// Bytes of events kept in memory for Ready entries; beyond it they are read again at delivery.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// What the rest of the server asks of a group.
pub enum Command {
    Join {
        member_name: String,
        max_in_flight: u32,
        reply: oneshot::Sender<Result<Joined, OrdoError>>,
    },
    Leave {
        member: u64,
    },
    Settle {
        origin: Origin,
        ids: Vec<String>,
        how: How,
    },
    Extend {
        member: u64,
        answer: mpsc::OwnedPermit<Out>,
        ids: Vec<String>,
        extend: Option<Duration>,
    },
    Status {
        reply: oneshot::Sender<ConsumerGroup>,
    },
    Update {
        group: StoredGroup,
    },
    Replay {
        from: u64,
        to: u64,
        limit: usize,
        reply: oneshot::Sender<Result<Replayed, OrdoError>>,
    },
    /// The group was deleted: end every member's stream and stop.
    Stop {
        reply: oneshot::Sender<()>,
    },
}

/// What an ack or nack does.
#[derive(Debug, Clone)]
pub enum How {
    Ack,
    Retry {
        delay: Option<Duration>,
        reason: String,
    },
    Park {
        reason: String,
    },
}

/// Who is owed the answer to a settle.
pub enum Origin {
    /// A member on its Consume stream: answered with Settled or Rejected there, in a slot its
    /// stream reserved before it read the request (so a member that does not read its answers
    /// stops being read, instead of growing a queue).
    Member(u64, mpsc::OwnedPermit<Out>),
    /// A unary Ack/Nack.
    Unary(oneshot::Sender<Result<(), OrdoError>>),
}

/// What a group sends a member; the gRPC layer frames it (deliveries go out in their stored
/// encoding, never decoded here).
#[derive(Debug)]
pub enum Out {
    Delivery {
        delivery_id: String,
        attempt: u32,
        /// The event's stored encoding (an `ordo.v1.Event`).
        event: Bytes,
        ack_deadline_ms: u64,
    },
    Settled(Vec<String>),
    Rejected {
        delivery_ids: Vec<String>,
        code: i32,
        message: String,
    },
}

/// A member's end of the group, handed to its Consume stream.
pub struct Joined {
    pub member_id: u64,
    pub max_in_flight: u32,
    pub group: ConsumerGroup,
    pub deliveries: mpsc::Receiver<Out>,
    /// Resolves with the error that ends the member's stream (group deleted, shutdown, not
    /// reading); dropped without a value when the member simply leaves.
    pub ended: oneshot::Receiver<OrdoError>,
}

/// An answer owed once this round's writes are durable.
enum Confirm {
    Settle(Origin, Vec<String>),
    Replay(oneshot::Sender<Result<Replayed, OrdoError>>, Replayed),
}

pub struct Replayed {
    pub replayed: u32,
    pub more: bool,
    pub next_from_offset: u64,
}

/// The sending side of one member's stream.
struct MemberOut {
    name: String,
    max_in_flight: u32,
    in_flight: u32,
    tx: mpsc::Sender<Out>,
    end: Option<oneshot::Sender<OrdoError>>,
}

impl MemberOut {
    fn has_room(&self) -> bool {
        self.in_flight < self.max_in_flight
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Ready,
    InFlight {
        member: u64,
        attempt: u32,
        deadline: Instant,
    },
    Waiting {
        until: Instant,
    },
}

/// An unsettled event of the window.
struct Entry {
    stream_id: String,
    stream_version: u64,
    /// Deliveries of it that failed so far (durable in its failure record).
    failures: u32,
    /// A replayed parked event: its offset is already settled in the progress.
    replay: bool,
    state: State,
    /// The stored event, while the cache has room.
    cached: Option<Bytes>,
}

pub struct Actor {
    group: StoredGroup,
    matcher: Matcher,
    log: SharedLog,
    progress: Progress,
    /// Highest log offset examined by the scan.
    scanned: u64,
    window: BTreeMap<u64, Entry>,
    /// Failure records of events the scan has not reached yet (loaded at start).
    known_failures: HashMap<u64, Failure>,
    replaying: usize,
    members: BTreeMap<u64, MemberOut>,
    next_member: u64,
    /// The member the last round-robin delivery went to.
    rr_last: u64,
    timers: BTreeSet<(Instant, u64)>,
    parked: u64,
    /// Events retention removed before the group settled them.
    trimmed: u64,
    cached_bytes: usize,
    writes: Vec<RecordWrite>,
    checkpoint_dirty: bool,
    last_checkpoint: Instant,
    confirms: Vec<Confirm>,
    shutdown: CancellationToken,
}

impl Actor {
    /// Loads the group's progress, failures and parked count. Reads records of unbounded count
    /// (parked events), so it runs on a blocking thread.
    pub fn load(
        log: SharedLog,
        group: StoredGroup,
        shutdown: CancellationToken,
    ) -> Result<Self, StoreError> {
        let name = group.name.clone();
        let checkpoint = log
            .get_record(&records::checkpoint_key(&name))?
            .map(|bytes| records::decode(&bytes, "group checkpoint"))
            .transpose()?
            .unwrap_or_default();
        let progress = Progress::from_checkpoint(&checkpoint);
        let mut known_failures = HashMap::new();
        let mut window = BTreeMap::new();
        let mut replaying = 0;
        for (key, value) in scan_all(&log, &records::failure_prefix(&name))? {
            let Some(offset) = records::trailing_offset(&key) else {
                continue;
            };
            let failure: Failure = records::decode(&value, "group failure")?;
            if failure.replay {
                // Gone (retention, or its stream deleted): nothing to replay.
                let Some(event) = read_present(&log, offset)? else {
                    continue;
                };
                replaying += 1;
                window.insert(
                    offset,
                    Entry {
                        stream_id: event.key()?.stream_id.clone(),
                        stream_version: event.key()?.stream_version,
                        failures: failure.failures,
                        replay: true,
                        state: State::Ready,
                        cached: None,
                    },
                );
            } else {
                known_failures.insert(offset, failure);
            }
        }
        let parked = count_all(&log, &records::parked_prefix(&name))?;
        let matcher = group.matcher().map_err(|err| StoreError::Corrupt {
            what: format!("group {name} filter"),
            detail: err.to_string(),
        })?;
        Ok(Self {
            scanned: progress.settled_through(),
            group,
            matcher,
            log,
            progress,
            window,
            known_failures,
            replaying,
            members: BTreeMap::new(),
            next_member: 1,
            rr_last: 0,
            timers: BTreeSet::new(),
            parked,
            trimmed: checkpoint.trimmed,
            cached_bytes: 0,
            writes: Vec::new(),
            checkpoint_dirty: false,
            last_checkpoint: Instant::now(),
            confirms: Vec::new(),
            shutdown,
        })
    }

    /// Runs until the group is deleted or the server shuts down.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut head = self.log.watch_head();
        info!(group = %self.group.name, settled_through = self.progress.settled_through(), parked = self.parked, "consumer group started");
        loop {
            let more_to_read = match self.fill() {
                Ok(more) => more,
                Err(err) => {
                    self.fail(err.into());
                    return;
                }
            };
            self.dispatch();
            self.persist().await;
            crate::metrics::consumer_group_lag(
                &self.group.name,
                self.log
                    .head()
                    .saturating_sub(self.progress.settled_through()),
            );
            let next_timer = self.timers.first().map(|(at, _)| *at);
            let lazy_checkpoint = self
                .checkpoint_dirty
                .then(|| self.last_checkpoint + LAZY_CHECKPOINT);
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {
                    self.end_all(|| OrdoError::Unavailable(
                        "the server is shutting down; reconnect: deliveries not acked will be delivered again".into(),
                    ));
                    self.persist().await;
                    return;
                }
                command = commands.recv() => {
                    let Some(command) = command else { return };
                    if self.handle(command) {
                        return;
                    }
                    for _ in 1..COMMANDS_PER_ROUND {
                        match commands.try_recv() {
                            Ok(command) => {
                                if self.handle(command) {
                                    return;
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
                _ = sleep_until(next_timer), if next_timer.is_some() => self.fire_timers(),
                _ = sleep_until(lazy_checkpoint), if lazy_checkpoint.is_some() => {
                    self.last_checkpoint = Instant::now() - LAZY_CHECKPOINT;
                }
                changed = head.changed(), if !more_to_read && self.window_has_room() => {
                    if changed.is_err() {
                        self.fail(OrdoError::Unavailable("the event log closed; reconnect".into()));
                        return;
                    }
                }
                _ = std::future::ready(()), if more_to_read && self.window_has_room() => {}
            }
        }
    }

    /// Applies one command; true when the actor must stop.
    fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Join {
                member_name,
                max_in_flight,
                reply,
            } => {
                let _ = reply.send(Ok(self.join(member_name, max_in_flight)));
            }
            Command::Leave { member } => self.leave(member, "member left"),
            Command::Settle { origin, ids, how } => self.settle(origin, ids, how),
            Command::Extend {
                member,
                answer,
                ids,
                extend,
            } => self.extend(member, answer, ids, extend),
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Update { group } => self.update(group),
            Command::Replay {
                from,
                to,
                limit,
                reply,
            } => match self.replay(from, to, limit) {
                Ok(replayed) => self.confirms.push(Confirm::Replay(reply, replayed)),
                Err(err) => {
                    let _ = reply.send(Err(err));
                }
            },
            Command::Stop { reply } => {
                let name = self.group.name.clone();
                self.end_all(|| {
                    OrdoError::NotFound(format!("consumer group {name:?} was deleted"))
                });
                let _ = reply.send(());
                return true;
            }
        }
        false
    }

    fn window_has_room(&self) -> bool {
        self.window.len() - self.replaying < WINDOW
    }

    /// Writes what this round changed in one durable batch, then answers the settles.
    async fn persist(&mut self) {
        let checkpoint_due = self.checkpoint_dirty
            && (!self.confirms.is_empty()
                || !self.writes.is_empty()
                || self.last_checkpoint.elapsed() >= LAZY_CHECKPOINT);
        if self.writes.is_empty() && !checkpoint_due && self.confirms.is_empty() {
            return;
        }
        let mut writes = std::mem::take(&mut self.writes);
        if checkpoint_due {
            writes.push(records::put(
                records::checkpoint_key(&self.group.name),
                &records::Checkpoint {
                    trimmed: self.trimmed,
                    ..self.progress.to_checkpoint()
                },
            ));
            self.checkpoint_dirty = false;
            self.last_checkpoint = Instant::now();
        }
        let result = if writes.is_empty() {
            Ok(())
        } else {
            self.log
                .append(AppendBatch::records_only(writes))
                .await
                .map(|_| ())
        };
        let confirms = std::mem::take(&mut self.confirms);
        let failed = result.err().map(|err| {
            let message = err.to_string();
            warn!(group = %self.group.name, error = %message, "cannot write group progress");
            message
        });
        for confirm in confirms {
            let outcome = match &failed {
                None => Ok(()),
                Some(message) => Err(OrdoError::Unavailable(format!(
                    "cannot record the change: {message}; unsettled deliveries will be delivered again"
                ))),
            };
            match confirm {
                Confirm::Settle(origin, ids) => self.answer(origin, ids, outcome),
                Confirm::Replay(reply, replayed) => {
                    let _ = reply.send(outcome.map(|()| replayed));
                }
            }
        }
    }

    fn answer(&mut self, origin: Origin, ids: Vec<String>, result: Result<(), OrdoError>) {
        match origin {
            Origin::Unary(reply) => {
                let _ = reply.send(result);
            }
            Origin::Member(_, permit) => {
                permit.send(match result {
                    Ok(()) => Out::Settled(ids),
                    Err(err) => {
                        let status = tonic::Status::from(err);
                        Out::Rejected {
                            delivery_ids: ids,
                            code: status.code() as i32,
                            message: status.message().to_string(),
                        }
                    }
                });
            }
        }
    }

    fn status(&self) -> ConsumerGroup {
        let mut api = self.group.to_api();
        let (mut in_flight, mut retrying) = (0u32, 0u32);
        for entry in self.window.values() {
            match entry.state {
                State::InFlight { .. } => in_flight += 1,
                State::Waiting { .. } => retrying += 1,
                State::Ready if entry.failures > 0 => retrying += 1,
                State::Ready => {}
            }
        }
        api.settled_through_offset = self.progress.settled_through();
        api.head_offset = self.log.head();
        api.members = self.members.len() as u32;
        api.in_flight = in_flight;
        api.retrying = retrying;
        api.parked = self.parked;
        api.trimmed = self.trimmed;
        api
    }

    fn update(&mut self, group: StoredGroup) {
        for out in self.members.values_mut() {
            out.max_in_flight = out.max_in_flight.min(group.max_in_flight);
        }
        self.group = group;
    }
}

fn not_before(ms: u64) -> Option<Instant> {
    let now = clock::now_ms();
    (ms > now).then(|| Instant::now() + Duration::from_millis(ms - now))
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn read_one(log: &SharedLog, offset: u64) -> Result<Option<RawEvent>, StoreError> {
    Ok(log
        .read_raw(offset, 1, READ_CHUNK_BYTES)?
        .into_iter()
        .next()
        .filter(|e| e.offset == offset))
}

/// The event at `offset`, or None when it is gone: removed by retention, or of a deleted
/// stream.
fn read_present(log: &SharedLog, offset: u64) -> Result<Option<RawEvent>, StoreError> {
    match read_one(log, offset) {
        Err(StoreError::Trimmed { .. }) => Ok(None),
        other => other,
    }
}

/// Every record under `prefix` (the caller bounds how many there can be).
fn scan_all(log: &SharedLog, prefix: &[u8]) -> Result<Vec<Record>, StoreError> {
    let mut rows = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = log.scan_records(prefix, after.as_deref(), 1024)?;
        let done = page.len() < 1024;
        after = page.last().map(|(k, _)| k.clone());
        rows.extend(page);
        if done {
            return Ok(rows);
        }
    }
}

fn count_all(log: &SharedLog, prefix: &[u8]) -> Result<u64, StoreError> {
    let mut count = 0u64;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = log.scan_records(prefix, after.as_deref(), 1024)?;
        count += page.len() as u64;
        if page.len() < 1024 {
            return Ok(count);
        }
        after = page.last().map(|(k, _)| k.clone());
    }
}
