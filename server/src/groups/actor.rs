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

    /// Reads the log past `scanned` into the window; true if more is there to read.
    fn fill(&mut self) -> Result<bool, StoreError> {
        self.skip_trimmed();
        let head = self.log.head();
        for _ in 0..READS_PER_ROUND {
            if self.scanned >= head || !self.window_has_room() {
                return Ok(false);
            }
            let from = self.scanned + 1;
            let page = match self.log.read_page(from, READ_EVENTS, READ_CHUNK_BYTES) {
                Ok(page) => page,
                // Retention moved the first offset meanwhile: skip to it, visibly.
                Err(StoreError::Trimmed { .. }) => {
                    self.skip_trimmed();
                    continue;
                }
                Err(err) => return Err(err),
            };
            if page.next <= from {
                return Ok(false);
            }
            for event in page.events {
                // Offsets the page skipped (events of deleted streams) are settled like
                // events the filter does not want.
                if event.offset > self.scanned + 1 {
                    self.progress
                        .settle_range(self.scanned + 1, event.offset - 1);
                    self.checkpoint_dirty = true;
                }
                self.take(event)?;
                if !self.window_has_room() {
                    return Ok(false);
                }
            }
            if page.next - 1 > self.scanned {
                self.progress.settle_range(self.scanned + 1, page.next - 1);
                self.checkpoint_dirty = true;
                self.scanned = page.next - 1;
            }
        }
        Ok(self.scanned < head)
    }

    /// Retention removed events below the log's first offset: the ones this group had not
    /// settled are skipped, counted in `trimmed` (shown by GetGroup) and logged at WARN, never
    /// silently.
    fn skip_trimmed(&mut self) {
        let first = self.log.first_offset();
        if first <= self.progress.settled_through() + 1
            && self.window.range(..first).next().is_none()
        {
            return;
        }
        let mut skipped = 0u64;
        let below: Vec<u64> = self.window.range(..first).map(|(o, _)| *o).collect();
        for offset in below {
            if let Some(entry) = self.remove(offset) {
                if entry.replay {
                    self.replaying -= 1;
                } else {
                    skipped += 1;
                }
                self.writes.push(records::delete(records::failure_key(
                    &self.group.name,
                    offset,
                )));
            }
        }
        // Never examined: counted whether or not they matched the filter (they cannot be read
        // any more to tell).
        skipped += (first - 1).saturating_sub(self.scanned.max(self.progress.settled_through()));
        self.progress.settle_range(1, first - 1);
        self.scanned = self.scanned.max(first - 1);
        self.checkpoint_dirty = true;
        if skipped > 0 {
            self.trimmed += skipped;
            warn!(group = %self.group.name, first_offset = first, skipped, "retention removed events this consumer group had not settled; skipped");
        }
    }

    /// One event of the scan: settled already, not wanted (settled now), or into the window.
    fn take(&mut self, event: RawEvent) -> Result<(), StoreError> {
        let offset = event.offset;
        self.scanned = offset;
        if self.progress.is_settled(offset) || self.window.contains_key(&offset) {
            return Ok(());
        }
        let key = event.key()?;
        if !self.matcher.matches_parts(&key.r#type, &key.stream_id) {
            self.progress.settle(offset);
            self.checkpoint_dirty = true;
            return Ok(());
        }
        let failure = self.known_failures.remove(&offset).unwrap_or_default();
        let state = match not_before(failure.not_before_ms) {
            Some(until) => {
                self.timers.insert((until, offset));
                State::Waiting { until }
            }
            None => State::Ready,
        };
        let cached = (self.cached_bytes + event.bytes.len() <= CACHE_BYTES).then(|| {
            self.cached_bytes += event.bytes.len();
            event.bytes.clone()
        });
        self.window.insert(
            offset,
            Entry {
                stream_id: key.stream_id.clone(),
                stream_version: key.stream_version,
                failures: failure.failures,
                replay: false,
                state,
                cached,
            },
        );
        Ok(())
    }

    fn join(&mut self, member_name: String, asked: u32) -> Joined {
        let id = self.next_member;
        self.next_member += 1;
        let max_in_flight = match asked {
            0 => self.group.max_in_flight,
            n => n.min(self.group.max_in_flight),
        };
        let (tx, deliveries) = mpsc::channel(max_in_flight as usize + MEMBER_SLACK);
        let (end, ended) = oneshot::channel();
        debug!(group = %self.group.name, member = id, name = %member_name, max_in_flight, "member joined");
        self.members.insert(
            id,
            MemberOut {
                name: member_name,
                max_in_flight,
                in_flight: 0,
                tx,
                end: Some(end),
            },
        );
        Joined {
            member_id: id,
            max_in_flight,
            group: self.status(),
            deliveries,
            ended,
        }
    }

    /// Drops a member; its deliveries fail (counted) and go to the others at once.
    fn leave(&mut self, member: u64, reason: &str) {
        let Some(out) = self.members.remove(&member) else {
            return;
        };
        debug!(group = %self.group.name, member, name = %out.name, in_flight = out.in_flight, reason, "member left");
        let held: Vec<u64> = self
            .window
            .iter()
            .filter(|(_, e)| matches!(e.state, State::InFlight { member: m, .. } if m == member))
            .map(|(offset, _)| *offset)
            .collect();
        for offset in held {
            self.fail_delivery(offset, reason, Some(Duration::ZERO));
        }
    }

    /// Ends a member's stream with `err` and drops it.
    fn kick(&mut self, member: u64, err: OrdoError) {
        if let Some(out) = self.members.get_mut(&member)
            && let Some(end) = out.end.take()
        {
            let _ = end.send(err);
        }
        self.leave(member, "member dropped");
    }

    fn end_all(&mut self, err: impl Fn() -> OrdoError) {
        let ids: Vec<u64> = self.members.keys().copied().collect();
        for id in ids {
            self.kick(id, err());
        }
    }

    /// A storage failure: every member's stream ends with it; the group task stops.
    fn fail(&mut self, err: OrdoError) {
        warn!(group = %self.group.name, error = %err, "consumer group stopped");
        let message = err.to_string();
        self.end_all(|| OrdoError::Unavailable(format!("consumer group failed: {message}")));
    }

    fn settle(&mut self, origin: Origin, raw: Vec<String>, how: How) {
        let member = match &origin {
            Origin::Member(id, _) => Some(*id),
            Origin::Unary(_) => None,
        };
        let ids = match delivery_id::parse_all(&raw, &self.group.name)
            .and_then(|ids| self.check(&ids, member).map(|()| ids))
        {
            Ok(ids) => ids,
            Err(err) => {
                self.answer(origin, raw, Err(err));
                return;
            }
        };
        for id in ids {
            match &how {
                How::Ack => self.ack(id.offset),
                How::Retry { delay, reason } => self.fail_delivery(id.offset, reason, *delay),
                How::Park { reason } => self.park(id.offset, reason),
            }
        }
        self.confirms.push(Confirm::Settle(origin, raw));
    }

    fn extend(
        &mut self,
        member: u64,
        answer: mpsc::OwnedPermit<Out>,
        raw: Vec<String>,
        extend: Option<Duration>,
    ) {
        let ids = match delivery_id::parse_all(&raw, &self.group.name)
            .and_then(|ids| self.check(&ids, Some(member)).map(|()| ids))
        {
            Ok(ids) => ids,
            Err(err) => {
                self.answer(Origin::Member(member, answer), raw, Err(err));
                return;
            }
        };
        let deadline = Instant::now() + extend.unwrap_or(self.group.ack_timeout());
        for id in ids {
            if let Some(entry) = self.window.get_mut(&id.offset)
                && let State::InFlight { deadline: old, .. } = &mut entry.state
            {
                self.timers.remove(&(*old, id.offset));
                *old = deadline;
                self.timers.insert((deadline, id.offset));
            }
        }
    }

    /// Every id must name the current delivery of an event in flight (held by `member`, when
    /// given); the first that does not decides the error, and nothing is settled.
    fn check(&self, ids: &[DeliveryId], member: Option<u64>) -> Result<(), OrdoError> {
        for id in ids {
            let Some(entry) = self.window.get(&id.offset) else {
                if self.progress.is_settled(id.offset) {
                    return Err(OrdoError::FailedPrecondition(format!(
                        "delivery {id} is already settled (acked or parked); nothing to do"
                    )));
                }
                return Err(not_made(id));
            };
            let current = match &entry.state {
                State::InFlight {
                    member: holder,
                    attempt,
                    ..
                } if *attempt == id.attempt => {
                    if let Some(me) = member
                        && me != *holder
                    {
                        return Err(OrdoError::FailedPrecondition(format!(
                            "delivery {id} was sent to another member of the group; only that member, or the unary Ack/Nack, can settle it"
                        )));
                    }
                    continue;
                }
                State::InFlight { attempt, .. } => *attempt,
                State::Ready | State::Waiting { .. } => entry.failures,
            };
            if id.attempt <= current {
                return Err(OrdoError::FailedPrecondition(format!(
                    "delivery {id} is no longer current: it timed out, was nacked or its member left, and the event is delivered again; settle its newest delivery"
                )));
            }
            return Err(not_made(id));
        }
        Ok(())
    }

    fn ack(&mut self, offset: u64) {
        let Some(entry) = self.remove(offset) else {
            return;
        };
        if entry.failures > 0 || entry.replay {
            self.writes.push(records::delete(records::failure_key(
                &self.group.name,
                offset,
            )));
        }
        if entry.replay {
            self.replaying -= 1;
        } else {
            self.progress.settle(offset);
            self.checkpoint_dirty = true;
        }
    }

    /// A delivery failed (nack, ack timeout, member gone): retry after `delay` (the backoff when
    /// None), or park when it was the last allowed.
    fn fail_delivery(&mut self, offset: u64, reason: &str, delay: Option<Duration>) {
        let Some(entry) = self.window.get_mut(&offset) else {
            return;
        };
        if let State::InFlight {
            member, deadline, ..
        } = entry.state
        {
            self.timers.remove(&(deadline, offset));
            if let Some(out) = self.members.get_mut(&member) {
                out.in_flight = out.in_flight.saturating_sub(1);
            }
        }
        entry.state = State::Ready;
        entry.failures += 1;
        if entry.failures >= self.group.max_deliveries {
            let reason = format!(
                "{reason} (delivery {} of {})",
                entry.failures, self.group.max_deliveries
            );
            self.park(offset, &reason);
            return;
        }
        let wait = delay.unwrap_or_else(|| self.group.backoff(entry.failures));
        let until = Instant::now() + wait;
        entry.state = if wait.is_zero() {
            State::Ready
        } else {
            self.timers.insert((until, offset));
            State::Waiting { until }
        };
        let record = Failure {
            failures: entry.failures,
            not_before_ms: clock::now_ms() + wait.as_millis() as u64,
            replay: entry.replay,
        };
        self.writes.push(records::put(
            records::failure_key(&self.group.name, offset),
            &record,
        ));
    }

    fn park(&mut self, offset: u64, reason: &str) {
        let Some(entry) = self.remove(offset) else {
            return;
        };
        let attempts = match entry.state {
            State::InFlight { attempt, .. } => attempt,
            _ => entry.failures,
        };
        info!(group = %self.group.name, offset, attempts, reason, "event parked");
        let name = self.group.name.clone();
        self.writes.push(records::put(
            records::parked_key(&name, offset),
            &Parked {
                attempts,
                reason: reason.to_string(),
                parked_at_ms: clock::now_ms(),
            },
        ));
        self.writes
            .push(records::delete(records::failure_key(&name, offset)));
        self.parked += 1;
        if entry.replay {
            self.replaying -= 1;
        } else {
            self.progress.settle(offset);
            self.checkpoint_dirty = true;
        }
    }

    /// Takes an entry out of the window, releasing its member slot, timer and cache.
    fn remove(&mut self, offset: u64) -> Option<Entry> {
        let entry = self.window.remove(&offset)?;
        match entry.state {
            State::InFlight {
                member, deadline, ..
            } => {
                self.timers.remove(&(deadline, offset));
                if let Some(out) = self.members.get_mut(&member) {
                    out.in_flight = out.in_flight.saturating_sub(1);
                }
            }
            State::Waiting { until } => {
                self.timers.remove(&(until, offset));
            }
            State::Ready => {}
        }
        if let Some(bytes) = &entry.cached {
            self.cached_bytes -= bytes.len();
        }
        Some(entry)
    }

    /// An unsettled event that disappeared from the log (its stream deleted, or trimmed):
    /// settled without delivery.
    fn forget_gone(&mut self, offset: u64) {
        let Some(entry) = self.remove(offset) else {
            return;
        };
        info!(group = %self.group.name, offset, "event is gone from the log (deleted stream or retention); settled without delivery");
        self.writes.push(records::delete(records::failure_key(
            &self.group.name,
            offset,
        )));
        if entry.replay {
            self.replaying -= 1;
        } else {
            self.progress.settle(offset);
            self.checkpoint_dirty = true;
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(&(at, offset)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(entry) = self.window.get_mut(&offset) else {
                continue;
            };
            match entry.state {
                State::InFlight { deadline, .. } if deadline == at => {
                    self.fail_delivery(offset, "ack timeout", None);
                }
                State::Waiting { until } if until == at => entry.state = State::Ready,
                _ => {}
            }
        }
    }

    /// Hands Ready events to members with room, by the group's strategy.
    fn dispatch(&mut self) {
        let mut room: BTreeMap<u64, u32> = self
            .members
            .iter()
            .filter(|(_, m)| m.has_room())
            .map(|(id, m)| (*id, m.max_in_flight - m.in_flight))
            .collect();
        if room.is_empty() {
            return;
        }
        let pinned = self.group.pinned();
        let all_members: Vec<u64> = self.members.keys().copied().collect();
        let mut busy_streams: HashSet<&str> = HashSet::new();
        let mut plan: Vec<(u64, u64)> = Vec::new();
        for (offset, entry) in &self.window {
            if pinned {
                // Only the first unsettled event of a stream may be out, and only to its owner.
                if !busy_streams.insert(entry.stream_id.as_str()) || entry.state != State::Ready {
                    continue;
                }
                let Some(owner) = owner(&entry.stream_id, &all_members) else {
                    break;
                };
                if let Some(left) = room.get_mut(&owner)
                    && *left > 0
                {
                    *left -= 1;
                    plan.push((*offset, owner));
                }
            } else {
                if entry.state != State::Ready {
                    continue;
                }
                let Some(member) = next_with_room(&room, self.rr_last) else {
                    break;
                };
                self.rr_last = member;
                if let Some(left) = room.get_mut(&member) {
                    *left -= 1;
                    if *left == 0 {
                        room.remove(&member);
                    }
                }
                plan.push((*offset, member));
            }
            if room.values().all(|left| *left == 0) {
                break;
            }
        }
        for (offset, member) in plan {
            if let Err(err) = self.deliver(offset, member) {
                self.fail(err.into());
                return;
            }
        }
    }

    fn deliver(&mut self, offset: u64, member: u64) -> Result<(), StoreError> {
        let Some(entry) = self.window.get(&offset) else {
            return Ok(());
        };
        if self.log.is_deleted(&entry.stream_id, entry.stream_version) {
            self.forget_gone(offset);
            return Ok(());
        }
        let Some(entry) = self.window.get_mut(&offset) else {
            return Ok(());
        };
        let bytes = match entry.cached.take() {
            Some(bytes) => {
                self.cached_bytes -= bytes.len();
                bytes
            }
            None => match read_present(&self.log, offset)? {
                Some(event) => event.bytes,
                None => {
                    // Its stream was deleted (or retention removed it) after the scan.
                    self.forget_gone(offset);
                    return Ok(());
                }
            },
        };
        let attempt = entry.failures + 1;
        let deadline = Instant::now() + self.group.ack_timeout();
        let id = DeliveryId {
            group: self.group.name.clone(),
            offset,
            attempt,
        };
        let message = Out::Delivery {
            delivery_id: id.to_string(),
            attempt,
            event: bytes,
            ack_deadline_ms: clock::now_ms() + u64::from(self.group.ack_timeout_ms),
        };
        let Some(out) = self.members.get_mut(&member) else {
            return Ok(());
        };
        match out.tx.try_send(message) {
            Ok(()) => {
                out.in_flight += 1;
                entry.state = State::InFlight {
                    member,
                    attempt,
                    deadline,
                };
                self.timers.insert((deadline, offset));
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                let name = out.name.clone();
                warn!(group = %self.group.name, member, name = %name, "member is not reading its deliveries; dropping it");
                self.kick(
                    member,
                    OrdoError::ResourceExhausted(format!(
                        "member {name:?} did not read its deliveries; its stream is closed and its deliveries go to other members"
                    )),
                );
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.leave(member, "member went away"),
        }
        Ok(())
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

    fn replay(&mut self, from: u64, to: u64, limit: usize) -> Result<Replayed, OrdoError> {
        if self.replaying + limit > MAX_REPLAYING {
            return Err(OrdoError::ResourceExhausted(format!(
                "{} replayed events of group {:?} are not settled yet; wait for them, or replay fewer than {} at once",
                self.replaying,
                self.group.name,
                MAX_REPLAYING - self.replaying
            )));
        }
        let name = self.group.name.clone();
        let prefix = records::parked_prefix(&name);
        let after = (from > 1).then(|| records::parked_key(&name, from - 1));
        let rows = self
            .log
            .scan_records(&prefix, after.as_deref(), limit + 1)?;
        let to = if to == 0 { u64::MAX } else { to };
        let mut replayed = 0u32;
        let mut next_from_offset = 0;
        for (key, _) in rows {
            let Some(offset) = records::trailing_offset(&key) else {
                continue;
            };
            if offset > to {
                break;
            }
            if replayed as usize == limit {
                next_from_offset = offset;
                break;
            }
            let Some(event) = read_present(&self.log, offset)? else {
                // Removed since it was parked: it leaves the queue, counted as trimmed.
                self.writes.push(records::delete(key));
                self.parked = self.parked.saturating_sub(1);
                self.trimmed += 1;
                self.checkpoint_dirty = true;
                continue;
            };
            self.writes.push(records::delete(key));
            self.writes.push(records::put(
                records::failure_key(&name, offset),
                &Failure {
                    failures: 0,
                    not_before_ms: 0,
                    replay: true,
                },
            ));
            self.window.insert(
                offset,
                Entry {
                    stream_id: event.key()?.stream_id.clone(),
                    stream_version: event.key()?.stream_version,
                    failures: 0,
                    replay: true,
                    state: State::Ready,
                    cached: None,
                },
            );
            self.replaying += 1;
            self.parked = self.parked.saturating_sub(1);
            replayed += 1;
        }
        info!(group = %name, replayed, from, "parked events replayed");
        Ok(Replayed {
            replayed,
            more: next_from_offset != 0,
            next_from_offset,
        })
    }
}

fn not_made(id: &DeliveryId) -> OrdoError {
    OrdoError::NotFound(format!(
        "delivery {id} was never made; send the delivery_id of a Delivery as received"
    ))
}

/// The member a pinned stream belongs to: rendezvous hashing, so a join or leave moves only the
/// streams that must move.
fn owner(stream_id: &str, members: &[u64]) -> Option<u64> {
    members.iter().copied().max_by_key(|member| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        stream_id.hash(&mut hasher);
        member.hash(&mut hasher);
        hasher.finish()
    })
}

/// The member after `last` (wrapping) that has room.
fn next_with_room(room: &BTreeMap<u64, u32>, last: u64) -> Option<u64> {
    room.range(last + 1..)
        .chain(room.range(..=last))
        .find(|(_, left)| **left > 0)
        .map(|(id, _)| *id)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_only_what_must_move() {
        let streams: Vec<String> = (0..1000).map(|i| format!("order-{i}")).collect();
        let before: Vec<_> = streams.iter().map(|s| owner(s, &[1, 2, 3])).collect();
        let after: Vec<_> = streams.iter().map(|s| owner(s, &[1, 2, 3, 4])).collect();
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert!(
            after
                .iter()
                .zip(&before)
                .all(|(a, b)| a == b || *a == Some(4))
        );
        assert!((150..350).contains(&moved), "{moved} of 1000 moved");
        assert_eq!(owner("x", &[]), None);
    }

    #[test]
    fn round_robin_wraps() {
        let room: BTreeMap<u64, u32> = [(1, 1), (3, 1), (5, 0)].into_iter().collect();
        assert_eq!(next_with_room(&room, 1), Some(3));
        assert_eq!(next_with_room(&room, 3), Some(1));
        assert_eq!(next_with_room(&room, 9), Some(1));
    }
}
