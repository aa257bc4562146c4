//! The single writer thread and its group commit.
//!
//! Every append goes through one thread, which makes offsets gapless and version checks
//! race-free without locks. It takes whatever appends queued up while the previous commit ran,
//! stages them (`staging.rs`), writes them as one journal frame with one fdatasync, and only
//! then makes them readable (pending writes, tail, head) and answers them all. sled is updated
//! by the applier thread afterwards, off this path. A lone append is committed at once (no
//! timer); under load, many appends share one sync.

use std::sync::{Arc, mpsc::SyncSender};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::error;

use super::{
    AppendOutcome, StoreError,
    applier::{ApplyJob, Backlog},
    journal::{Journal, Op},
    pending::Pending,
    progress::Progress,
    staging::{Group, Mode, Stores},
    tail::Tail,
};

/// Most appends (batches) folded into one commit; bounds the work done before anyone is answered.
const MAX_GROUP: usize = 1024;
/// Event bytes after which a group stops taking more appends: bounds a frame's size and the
/// memory an unapplied group holds.
const MAX_GROUP_BYTES: usize = 8 * 1024 * 1024;

pub(super) type Outcome = Result<AppendOutcome, StoreError>;

/// What the writer's queue carries.
pub(super) enum Job {
    /// One batch, one answer ([`EventLog::append`](super::EventLog::append)).
    One {
        batch: super::AppendBatch,
        reply: oneshot::Sender<Outcome>,
    },
    /// Independent batches queued together, each staged and answered on its own, in order
    /// ([`EventLog::enqueue_many`](super::EventLog::enqueue_many)): one queue slot, one reply
    /// and one wake-up for many small appends.
    Many {
        batches: Vec<super::AppendBatch>,
        reply: oneshot::Sender<Vec<Outcome>>,
    },
    /// Batches copied from a log kept elsewhere (JetStream), in that log's order: stored
    /// without the checks an append gets (the source log already decided them), and refused
    /// only if their offsets do not continue this log's (see `Group::stage`).
    Replicated {
        batches: Vec<super::AppendBatch>,
        reply: oneshot::Sender<Vec<Outcome>>,
    },
}

enum Reply {
    One(oneshot::Sender<Outcome>),
    Many(oneshot::Sender<Vec<Outcome>>),
}

impl Job {
    fn split(self) -> (Vec<super::AppendBatch>, Reply, Mode) {
        match self {
            Job::One { batch, reply } => (vec![batch], Reply::One(reply), Mode::Append),
            Job::Many { batches, reply } => (batches, Reply::Many(reply), Mode::Append),
            Job::Replicated { batches, reply } => (batches, Reply::Many(reply), Mode::Replicated),
        }
    }

    fn fail(self, reason: &str) {
        let (batches, reply, _) = self.split();
        reply.fail(batches.len(), reason);
    }
}

impl Reply {
    fn send(self, mut results: Vec<Outcome>) {
        match self {
            Reply::One(tx) => {
                if let Some(result) = results.pop() {
                    let _ = tx.send(result);
                }
            }
            Reply::Many(tx) => {
                let _ = tx.send(results);
            }
        }
    }

    fn fail(self, count: usize, reason: &str) {
        let results = (0..count)
            .map(|_| Err(StoreError::Poisoned(reason.to_string())))
            .collect();
        self.send(results);
    }
}

/// Stream versions the writer remembers between groups; past this many it starts over (the
/// map is a cache: sled has them all).
const MAX_KNOWN_STREAMS: usize = 100_000;

pub(super) struct Writer {
    pub stores: Stores,
    pub journal: Journal,
    pub next_lsn: u64,
    /// Current version of recently written streams (see `Group::take_versions`).
    pub versions: std::collections::HashMap<String, u64>,
    pub pending: Arc<Pending>,
    pub head: u64,
    pub head_tx: watch::Sender<u64>,
    /// Recent chunks for readers, updated before the head moves.
    pub tail: Arc<Tail>,
    /// Hands committed frames to the applier; bounded (in frames, and in bytes by the
    /// backlog), so a lagging sled slows appends down instead of growing memory.
    pub applier: SyncSender<ApplyJob>,
    pub backlog: Arc<Backlog>,
    /// Where the last synced frame is published, for backups.
    pub progress: Arc<Progress>,
}

impl Writer {
    /// Runs until every sender is gone; dropping the applier's channel then lets it finish.
    pub fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut poisoned: Option<String> = None;
        while let Some(first) = rx.blocking_recv() {
            if let Some(reason) = &poisoned {
                first.fail(reason);
                while let Ok(job) = rx.try_recv() {
                    job.fail(reason);
                }
                continue;
            }
            if let Err(err) = self.commit(first, &mut rx) {
                // After a failed write or sync we cannot know what reached the disk: refuse
                // everything until a restart recovers from what is really there.
                error!(error = %err, "event log commit failed; refusing writes until restart");
                poisoned = Some(err.to_string());
            }
        }
    }

    fn commit(&mut self, first: Job, rx: &mut mpsc::Receiver<Job>) -> Result<(), StoreError> {
        let mut group = Group::new(self.head, std::mem::take(&mut self.versions));
        let mut replies: Vec<(Reply, Vec<Outcome>)> = Vec::new();
        let mut staged = 0;
        let mut next = Some(first);
        while let Some(job) = next.take() {
            let (batches, reply, mode) = job.split();
            staged += batches.len();
            let results = batches
                .into_iter()
                .map(|batch| group.stage(&self.stores, batch, mode))
                .collect();
            replies.push((reply, results));
            if staged < MAX_GROUP && group.bytes < MAX_GROUP_BYTES {
                next = rx.try_recv().ok();
            }
        }
        let sealed = group.seal();
        // If this frame fails to reach the journal the writer is poisoned, so keeping the group's
        // versions now is safe.
        self.versions = group.take_versions();
        if self.versions.len() > MAX_KNOWN_STREAMS {
            self.versions.clear();
        }
        if !group.ops.is_empty() {
            let lsn = self.next_lsn;
            let written = sealed.and_then(|()| Ok(self.journal.append(lsn, &group.ops)?));
            let at = match written {
                Ok(at) => at,
                Err(err) => {
                    let reason = err.to_string();
                    for (reply, results) in replies {
                        reply.fail(results.len(), &reason);
                    }
                    return Err(err);
                }
            };
            self.next_lsn += 1;
            self.progress.set_committed(lsn);
            crate::metrics::group_committed(group.head - self.head, group.bytes);
            // Durable: make it visible, in this order, then answer.
            self.pending.insert(lsn, &group.ops);
            for chunk in group.chunks {
                self.tail.push(chunk);
            }
            self.head = group.head;
            self.head_tx.send_replace(self.head);
            for (reply, results) in replies {
                reply.send(results);
            }
            let bytes = group.ops.iter().map(Op::size).sum();
            self.backlog.acquire(bytes);
            let job = ApplyJob {
                lsn,
                ops: group.ops,
                at,
                bytes,
                head: self.head,
            };
            if self.applier.send(job).is_err() {
                return Err(StoreError::Poisoned(
                    "the sled applier stopped; see the earlier error".into(),
                ));
            }
            return Ok(());
        }
        for (reply, results) in replies {
            reply.send(results);
        }
        Ok(())
    }
}
