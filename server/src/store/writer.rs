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
    staging::{Group, Stores},
    tail::Tail,
};

/// Most appends folded into one commit; bounds the work done before anyone is answered.
const MAX_GROUP: usize = 1024;
/// Event bytes after which a group stops taking more appends: bounds a frame's size and the
/// memory an unapplied group holds.
const MAX_GROUP_BYTES: usize = 8 * 1024 * 1024;

pub(super) struct Job {
    pub batch: super::AppendBatch,
    pub reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

pub(super) struct Writer {
    pub stores: Stores,
    pub journal: Journal,
    pub next_lsn: u64,
    pub pending: Arc<Pending>,
    pub head: u64,
    pub head_tx: watch::Sender<u64>,
    /// Recent chunks for readers, updated before the head moves.
    pub tail: Arc<Tail>,
    /// Hands committed frames to the applier; bounded (in frames, and in bytes by the
    /// backlog), so a lagging sled slows appends down instead of growing memory.
    pub applier: SyncSender<ApplyJob>,
    pub backlog: Arc<Backlog>,
}

impl Writer {
    /// Runs until every sender is gone; dropping the applier's channel then lets it finish.
    pub fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut poisoned: Option<String> = None;
        while let Some(first) = rx.blocking_recv() {
            if let Some(reason) = &poisoned {
                let _ = first.reply.send(Err(StoreError::Poisoned(reason.clone())));
                while let Ok(job) = rx.try_recv() {
                    let _ = job.reply.send(Err(StoreError::Poisoned(reason.clone())));
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
        let mut group = Group::new(self.head);
        let mut replies = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            let result = group.stage(&self.stores, job.batch);
            replies.push((job.reply, result));
            if replies.len() < MAX_GROUP && group.bytes < MAX_GROUP_BYTES {
                next = rx.try_recv().ok();
            }
        }
        let sealed = group.seal();
        if !group.ops.is_empty() {
            let lsn = self.next_lsn;
            let written = sealed.and_then(|()| Ok(self.journal.append(lsn, &group.ops)?));
            if let Err(err) = written {
                for (reply, _) in replies {
                    let _ = reply.send(Err(StoreError::Poisoned(err.to_string())));
                }
                return Err(err);
            }
            self.next_lsn += 1;
            // Durable: make it visible, in this order, then answer.
            self.pending.insert(lsn, &group.ops);
            for chunk in group.chunks {
                self.tail.push(chunk);
            }
            self.head = group.head;
            self.head_tx.send_replace(self.head);
            for (reply, result) in replies {
                let _ = reply.send(result);
            }
            let bytes = group.ops.iter().map(Op::size).sum();
            self.backlog.acquire(bytes);
            let job = ApplyJob {
                lsn,
                ops: group.ops,
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
        for (reply, result) in replies {
            let _ = reply.send(result);
        }
        Ok(())
    }
}
