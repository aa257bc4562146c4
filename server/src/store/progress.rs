//! How far each stage of the write path has got: the journal (committed), sled (applied) and
//! sled's flush (durable). Compaction and backups decide what they may touch from these.

use std::sync::{
    Mutex,
    atomic::{AtomicU64, Ordering},
};

/// A frame boundary: the last frame of a stage and the log's head after it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mark {
    pub lsn: u64,
    pub head: u64,
}

#[derive(Default)]
pub struct Progress {
    /// The last frame synced to the journal (set by the writer before it acknowledges).
    committed_lsn: AtomicU64,
    /// The last frame applied to sled, with the head it left (set by the applier).
    applied: Mutex<Mark>,
    /// The head up to which sled's copy is durable (set by the applier after each flush): the
    /// journal may have dropped those frames, so only compaction may rewrite what is below it.
    flushed_head: AtomicU64,
}

impl Progress {
    /// Starts at what recovery left: everything up to `mark` is applied and durable in sled.
    pub fn new(mark: Mark) -> Self {
        Self {
            committed_lsn: AtomicU64::new(mark.lsn),
            applied: Mutex::new(mark),
            flushed_head: AtomicU64::new(mark.head),
        }
    }

    pub fn committed_lsn(&self) -> u64 {
        self.committed_lsn.load(Ordering::Acquire)
    }

    pub fn set_committed(&self, lsn: u64) {
        self.committed_lsn.fetch_max(lsn, Ordering::AcqRel);
    }

    pub fn applied(&self) -> Mark {
        self.applied.lock().map(|mark| *mark).unwrap_or_default()
    }

    pub fn set_applied(&self, mark: Mark) {
        if let Ok(mut applied) = self.applied.lock()
            && mark.lsn >= applied.lsn
        {
            *applied = Mark {
                lsn: mark.lsn,
                head: mark.head.max(applied.head),
            };
        }
    }

    pub fn flushed_head(&self) -> u64 {
        self.flushed_head.load(Ordering::Acquire)
    }

    pub fn set_flushed(&self, head: u64) {
        self.flushed_head.fetch_max(head, Ordering::AcqRel);
    }
}
