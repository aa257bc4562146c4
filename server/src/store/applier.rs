//! The applier thread: copies committed journal frames into sled (each chunk as a locator of
//! its bytes in the frame's segment, see `bodies.rs`), makes sled durable now and then, and lets
//! the journal drop the segments nothing needs any more.
//!
//! sled's flush (pwrite + `sync_file_range` through its own I/O threads, plus our fdatasync of
//! its files) costs a millisecond or more; here it runs every `flush_every` (200 ms by default)
//! or [`FLUSH_BYTES`], for every frame applied since, instead of once per group commit.

use std::{
    sync::{
        Arc, Condvar, Mutex,
        mpsc::{Receiver, RecvTimeoutError},
    },
    time::{Duration, Instant},
};

use tracing::{debug, error};

use super::{
    StoreError,
    bodies::Bodies,
    codec::{self, Locator},
    journal::{self, FramePos, Op, Sealed},
    keys,
    pending::Pending,
    progress::{Mark, Progress},
    scrubs::{self, SCRUBS_PER_FLUSH},
    sled_files::DurableFiles,
    tail::Tail,
};

/// Longest time an applied frame waits, by default, for sled to make it durable.
pub const DEFAULT_FLUSH_EVERY: Duration = Duration::from_millis(200);
/// Bytes applied after which sled is flushed sooner.
const FLUSH_BYTES: usize = 32 * 1024 * 1024;
/// Frames applied to sled in one batch at most.
const MAX_APPLY: usize = 1024;
/// How long frames gather before they are applied (the applier sleeps, then drains). Every sled
/// batch seals an I/O buffer and costs a `pwrite` + `sync_file_range` on sled's I/O threads:
/// applied per group commit, that is hundreds of syncs a second competing with the journal's
/// fdatasync on the same disk. Batching 20 ms of frames makes it tens.
const APPLY_EVERY: Duration = Duration::from_millis(20);
/// Frames the writer may be ahead of sled before its appends wait (backpressure)...
pub const QUEUE_FRAMES: usize = 4096;
/// ...and bytes: what the pending writes and the tail hold for sled at most.
const BACKLOG_BYTES: usize = 64 * 1024 * 1024;

/// Bytes handed to the applier and not yet applied. The writer waits while it is over
/// [`BACKLOG_BYTES`], so a slow sled slows appends down instead of growing memory.
#[derive(Default)]
pub struct Backlog {
    /// Bytes outstanding, and whether the applier has stopped (then nobody waits).
    state: Mutex<(usize, bool)>,
    drained: Condvar,
}

impl Backlog {
    /// Waits for room for `bytes` (a frame larger than the whole budget waits for an empty
    /// backlog), then counts them.
    pub fn acquire(&self, bytes: usize) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        while !state.1 && state.0 > 0 && state.0 + bytes > BACKLOG_BYTES {
            state = match self.drained.wait(state) {
                Ok(state) => state,
                Err(_) => return,
            };
        }
        state.0 += bytes;
    }

    fn release(&self, bytes: usize) {
        if let Ok(mut state) = self.state.lock() {
            state.0 = state.0.saturating_sub(bytes);
        }
        self.drained.notify_all();
    }

    /// The applier is gone: wake the writer so that its next hand-off fails.
    fn close(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.1 = true;
        }
        self.drained.notify_all();
    }
}

/// One committed frame for sled.
pub struct ApplyJob {
    pub lsn: u64,
    pub ops: Vec<Op>,
    /// Where the frame lies in the journal.
    pub at: FramePos,
    /// What this frame counts against the [`Backlog`].
    pub bytes: usize,
    /// The log's head after this frame: sled has every event up to it once applied.
    pub head: u64,
}

pub struct Applier {
    pub db: sled::Db,
    pub tree: sled::Tree,
    pub durability: Option<DurableFiles>,
    pub pending: Arc<Pending>,
    pub tail: Arc<Tail>,
    pub sealed: Sealed,
    pub bodies: Arc<Bodies>,
    /// How often sled is made durable: about the most of the journal a restart replays.
    pub flush_every: Duration,
    pub backlog: Arc<Backlog>,
    /// Where the applied and durable positions are published, for compaction and backups.
    pub progress: Arc<Progress>,
}

impl Applier {
    /// Runs until the writer is gone, then makes everything durable in sled.
    pub fn run(mut self, rx: Receiver<ApplyJob>) {
        let mut applied_lsn = self.progress.applied().lsn;
        // What retention had emptied at the last flush: when it moves, segments may go even
        // with nothing new to apply.
        let mut retained_from = self.sealed.retained_from();
        let mut unflushed = 0usize;
        let mut last_flush = Instant::now();
        loop {
            let first = match rx.recv_timeout(self.flush_every) {
                Ok(job) => Some(job),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if let Some(first) = first {
                // Sleep rather than wait on the channel: a wait would wake this thread for
                // every frame the writer hands over, on the cores the writer needs.
                std::thread::sleep(APPLY_EVERY);
                let mut jobs = vec![first];
                while jobs.len() < MAX_APPLY {
                    match rx.try_recv() {
                        Ok(job) => jobs.push(job),
                        Err(_) => break,
                    }
                }
                match self.apply(&jobs) {
                    Ok(bytes) => {
                        unflushed += bytes;
                        applied_lsn = jobs.last().map_or(applied_lsn, |j| j.lsn);
                    }
                    Err(err) => return self.fail("apply", err),
                }
            }
            let due = unflushed >= FLUSH_BYTES || last_flush.elapsed() >= self.flush_every;
            let retention_moved = self.sealed.retained_from() > retained_from;
            if (unflushed > 0 && due) || retention_moved || self.sealed.has_scrubs() {
                retained_from = self.sealed.retained_from();
                if let Err(err) = self.flush(applied_lsn) {
                    return self.fail("flush", err);
                }
                unflushed = 0;
                last_flush = Instant::now();
            }
        }
        if let Err(err) = self.flush(applied_lsn) {
            self.fail("final flush", err);
        }
    }

    /// Writes frames into sled, then the last lsn, and forgets them from the pending writes.
    ///
    /// Plain inserts, not `apply_batch`: every sled batch seals sled's I/O buffer and costs a
    /// `pwrite` + `sync_file_range` on its I/O threads, and those syncs held the journal's
    /// fdatasync up by 100 ms and more (strace). Atomicity is not lost: sled recovers a prefix of
    /// its log, the lsn is written after the frame's writes, and recovery replays every frame
    /// above the recovered lsn (puts and deletes of whole values: applying one twice is harmless).
    pub fn apply(&self, jobs: &[ApplyJob]) -> Result<usize, StoreError> {
        let Some(last) = jobs.last() else {
            return Ok(0);
        };
        let mut bytes = 0;
        for job in jobs {
            for (op, at) in job.ops.iter().zip(journal::value_offsets(&job.ops)) {
                match (&op.value, at) {
                    (Some(value), Some(at)) if op.key.first() == Some(&keys::EVENT) => {
                        let locator = Locator {
                            segment: job.at.segment,
                            pos: job.at.pos + at,
                            len: u32::try_from(value.len()).map_err(|_| {
                                codec::corrupt("chunk", format!("{} bytes", value.len()))
                            })?,
                            crc: crc32fast::hash(value),
                            events: codec::count_events(value)? as u32,
                        };
                        bytes += op.key.len() + codec::LOCATOR_LEN;
                        self.tree.insert(op.key.as_slice(), &locator.encode())?;
                    }
                    (Some(value), _) => {
                        bytes += op.key.len() + value.len();
                        self.tree.insert(op.key.as_slice(), value.as_ref())?;
                    }
                    (None, _) => {
                        self.tree.remove(op.key.as_slice())?;
                    }
                }
            }
        }
        self.tree
            .insert(keys::JOURNAL_APPLIED, &last.lsn.to_be_bytes())?;
        for job in jobs {
            self.pending.applied(job.lsn, &job.ops);
        }
        self.tail.set_applied(last.head);
        self.progress.set_applied(Mark {
            lsn: last.lsn,
            head: last.head,
        });
        self.backlog
            .release(jobs.iter().map(|job| job.bytes).sum::<usize>());
        Ok(bytes)
    }

    /// Makes sled durable up to `lsn`, then deletes the journal segments it covers whose
    /// chunks retention has removed.
    pub fn flush(&mut self, lsn: u64) -> Result<(), StoreError> {
        // Everything applied so far is in this flush; `lsn` is the newest of it. So is every
        // locator removal retention made before this read.
        let applied = self.progress.applied();
        let retained_from = self.sealed.retained_from();
        // Recorded before this read, so in this flush, with the rewrites they belong to.
        let recorded = if self.sealed.take_scrubs() {
            let recorded = scrubs::waiting(&self.tree, SCRUBS_PER_FLUSH)?;
            if recorded.len() == SCRUBS_PER_FLUSH {
                // More wait: the next round takes them.
                self.sealed.scrub_later();
            }
            recorded
        } else {
            Vec::new()
        };
        self.db.flush()?;
        if let Some(files) = &mut self.durability {
            files.sync()?;
        }
        self.progress.set_flushed(applied.head);
        if !recorded.is_empty() {
            // sled's rewrite of the chunks these bytes were in is durable now.
            self.sealed
                .scrub(&scrubs::unreferenced(&self.tree, &recorded)?)?;
            // Their removal becomes durable with a later flush; until then a restart zeroes
            // them again, which changes nothing.
            scrubs::forget(&self.tree, &recorded)?;
        }
        let removed = self.sealed.release(lsn, retained_from)?;
        for &segment in &removed {
            self.bodies.forget(segment);
        }
        if !removed.is_empty() {
            debug!(lsn, removed = removed.len(), "journal segments released");
        }
        Ok(())
    }

    /// Stopping drops the channel, so the writer's next hand-off fails and it refuses appends
    /// from then on; the journal still holds every acknowledged frame for the restart.
    fn fail(&self, stage: &str, err: StoreError) {
        self.backlog.close();
        error!(stage, error = %err, "applying the journal to sled failed; refusing writes until restart");
    }
}
