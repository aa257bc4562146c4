//! The write-ahead journal: where an append becomes durable.
//!
//! Each group commit is one frame (`frame.rs`) written with one `pwrite` and made durable with
//! one `fdatasync` into a pre-zeroed segment file (`segment.rs`), and only then acknowledged.
//! sled is updated from the same writes afterwards, off the critical path (`applier.rs`), with
//! locators for the chunks (event bodies), which stay in the segments (`bodies.rs`). A segment is
//! deleted only once sled's copy of every frame in it is durable and retention has removed every
//! chunk it holds. After a crash, `recovery.rs` replays into sled whatever frames sled had not
//! made durable yet.
//!
//! Frames carry a log sequence number (lsn) that increases by one per frame; sled stores the
//! last lsn it applied (`keys::JOURNAL_APPLIED`) in the same atomic batch as the writes, which
//! is how recovery knows where to start.

mod frame;
mod recovery;
mod segment;

use std::{
    collections::VecDeque,
    fs::File,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
};

use thiserror::Error;
use tracing::warn;

pub use frame::{
    Decoded, HEADER_LEN, Op, decode, decode_ops, encode, encode_payload, payload_len, value_offsets,
};
pub use recovery::recover;

/// Where a frame starts: its segment and byte position there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramePos {
    pub segment: u64,
    pub pos: u64,
}

/// The file of segment `index` in the journal directory `dir`.
pub fn segment_path(dir: &Path, index: u64) -> PathBuf {
    segment::path(dir, index)
}

/// The first segment's size; each new segment doubles it up to the configured maximum, so an
/// idle or short-lived server (every test) zero-fills a few MiB, a busy one few, large files.
pub const MIN_SEGMENT_BYTES: u64 = 4 * 1024 * 1024;
/// The default largest segment.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Why the journal failed. An I/O failure while appending leaves the file in an unknown state,
/// so the writer stops taking appends (`StoreError::Poisoned`) until a restart recovers from
/// what is really on disk; the io error is kept with the stage it happened in.
#[derive(Debug, Error)]
pub enum JournalError {
    #[error("journal {stage} failed: {source}")]
    Io {
        stage: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "journal segment {} is corrupt at byte {position}: {reason}; acknowledged frames follow \
         it, so the server will not start on it: restore the data dir from a backup, or move the \
         segment aside to accept losing the events it holds",
        file.display()
    )]
    Corrupt {
        file: PathBuf,
        position: u64,
        reason: String,
    },
    #[error(
        "journal frames {from}..={to} are missing (sled has applied up to {applied}); the data \
         dir is incomplete: restore it from a backup"
    )]
    Missing { from: u64, to: u64, applied: u64 },
}

fn io(stage: &'static str) -> impl FnOnce(std::io::Error) -> JournalError {
    move |source| JournalError::Io { stage, source }
}

/// How the journal makes a frame durable.
#[derive(Debug, Clone, Copy)]
pub struct JournalOptions {
    /// `fdatasync` after every frame (the durable default); without it a frame survives a
    /// process crash (it is in the page cache) but not a power loss.
    pub sync: bool,
    /// The largest segment file.
    pub max_segment_bytes: u64,
}

/// The writer's end of the journal: appends frames to the current segment and rolls over to a
/// segment prepared in the background.
pub struct Journal {
    dir: PathBuf,
    options: JournalOptions,
    current: Current,
    /// Zero-fills the next segment while the current one fills up.
    preparing: Option<JoinHandle<std::io::Result<u64>>>,
    sealed: Sealed,
    buf: Vec<u8>,
}

struct Current {
    index: u64,
    file: File,
    capacity: u64,
    pos: u64,
    last_lsn: u64,
}

impl Journal {
    /// Writes one frame and, in the durable mode, syncs it. When this returns `Ok` the frame
    /// survives a crash; the position says where it lies.
    pub fn append(&mut self, lsn: u64, ops: &[Op]) -> Result<FramePos, JournalError> {
        frame::encode(lsn, ops, &mut self.buf);
        let len = self.buf.len() as u64;
        if self.current.pos + len > self.current.capacity {
            self.roll(len)?;
        }
        let at = FramePos {
            segment: self.current.index,
            pos: self.current.pos,
        };
        self.current
            .file
            .write_all_at(&self.buf, self.current.pos)
            .map_err(io("write"))?;
        if self.options.sync {
            let started = std::time::Instant::now();
            self.current.file.sync_data().map_err(io("fdatasync"))?;
            crate::metrics::fsynced(started.elapsed());
        }
        self.current.pos += len;
        self.current.last_lsn = lsn;
        // A frame larger than the reused buffer's usual size would otherwise stay allocated.
        if self.buf.capacity() > 4 * 1024 * 1024 {
            self.buf = Vec::new();
        }
        Ok(at)
    }

    /// What the applier needs to delete segments once sled has them.
    pub fn sealed(&self) -> Sealed {
        self.sealed.clone()
    }

    /// Moves to the next segment, which must hold at least `need` bytes.
    fn roll(&mut self, need: u64) -> Result<(), JournalError> {
        let index = self.current.index + 1;
        let capacity = match self.preparing.take() {
            Some(handle) => handle
                .join()
                .map_err(|_| JournalError::Io {
                    stage: "segment preparation",
                    source: std::io::Error::other("the preparing thread panicked"),
                })?
                .map_err(io("segment preparation"))?,
            None => {
                segment::create(&self.dir, index, MIN_SEGMENT_BYTES)
                    .map_err(io("segment creation"))?;
                MIN_SEGMENT_BYTES
            }
        };
        let file = segment::open(&self.dir, index).map_err(io("segment open"))?;
        let capacity = if need > capacity {
            // A frame bigger than any segment so far (a group of huge events): grow this one.
            segment::zero_range(&file, capacity, need).map_err(io("segment growth"))?;
            need
        } else {
            capacity
        };
        let old = std::mem::replace(
            &mut self.current,
            Current {
                index,
                file,
                capacity,
                pos: 0,
                last_lsn: 0,
            },
        );
        self.sealed.push(old.index, old.last_lsn);
        self.prepare_next();
        Ok(())
    }

    fn prepare_next(&mut self) {
        let dir = self.dir.clone();
        let index = self.current.index + 1;
        let bytes = (self.current.capacity * 2).clamp(
            MIN_SEGMENT_BYTES,
            self.options.max_segment_bytes.max(MIN_SEGMENT_BYTES),
        );
        let spawned = std::thread::Builder::new()
            .name("ordo-journal-prep".into())
            .spawn(move || segment::create(&dir, index, bytes).map(|()| bytes));
        match spawned {
            Ok(handle) => self.preparing = Some(handle),
            // Not fatal: the roll-over creates the segment itself.
            Err(err) => warn!(error = %err, "could not start the journal segment preparer"),
        }
    }
}

/// Segments the writer has moved past, oldest first, with the last lsn each holds. Shared with
/// the applier, which deletes them once sled's copy is durable and no chunk in them is still
/// retained, with compaction, which says which segments retention has emptied
/// ([`Sealed::retain_from`]), and with backups, which hold them back while they copy frames out
/// (see [`Sealed::hold_from`]).
#[derive(Clone)]
pub struct Sealed {
    dir: PathBuf,
    segments: Arc<Mutex<VecDeque<(u64, u64)>>>,
    /// While set, frames above this lsn are kept whatever sled has made durable.
    hold: Arc<Mutex<Option<u64>>>,
    /// The oldest segment that may hold a retained chunk: segments below it hold none.
    retained_from: Arc<AtomicU64>,
    /// Whether bytes of applied frames may wait to be zeroed (see [`Sealed::scrub_later`]).
    scrubs_waiting: Arc<AtomicBool>,
}

/// A byte range of a segment to overwrite with zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scrub {
    pub segment: u64,
    pub pos: u64,
    pub len: u64,
}

impl Sealed {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            segments: Arc::default(),
            hold: Arc::default(),
            retained_from: Arc::default(),
            scrubs_waiting: Arc::default(),
        }
    }

    /// Says that byte ranges of deleted events wait to be zeroed. Compaction records them in
    /// sled (`scrubs.rs`) next to the rewrite of their chunks, which is not durable yet; the
    /// applier takes the records before its next sled flush and zeroes the ranges after it
    /// ([`Sealed::scrub`]), so no durable locator ever points at zeroed bytes. Recovery and
    /// backups pass over the applied frames this leaves with a payload checksum that no longer
    /// holds.
    pub fn scrub_later(&self) {
        self.scrubs_waiting.store(true, Ordering::Release);
    }

    /// Whether deleted events may wait to be zeroed.
    pub fn has_scrubs(&self) -> bool {
        self.scrubs_waiting.load(Ordering::Acquire)
    }

    /// Clears the flag, returning it (the applier, before it reads the records: a range
    /// recorded after that read raises the flag again).
    pub fn take_scrubs(&self) -> bool {
        self.scrubs_waiting.swap(false, Ordering::AcqRel)
    }

    /// Zeroes `ranges` and syncs each segment touched; segments deleted meanwhile are skipped.
    pub fn scrub(&self, ranges: &[Scrub]) -> std::io::Result<()> {
        let mut by_segment: std::collections::BTreeMap<u64, Vec<Scrub>> = Default::default();
        for range in ranges {
            by_segment.entry(range.segment).or_default().push(*range);
        }
        for (index, ranges) in by_segment {
            let file = match segment::open(&self.dir, index) {
                Ok(file) => file,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err),
            };
            for range in ranges {
                segment::zero_bytes(&file, range.pos, range.pos + range.len)?;
            }
            file.sync_data()?;
        }
        Ok(())
    }

    /// Retention has removed every chunk in the segments below `segment` (and sled's copy of
    /// that removal is on its way to disk: see [`Sealed::retained_from`]).
    pub fn retain_from(&self, segment: u64) {
        self.retained_from.fetch_max(segment, Ordering::AcqRel);
    }

    /// The oldest segment that may hold a retained chunk. The applier reads it before a sled
    /// flush and passes it to [`Sealed::release`] after, so a segment goes only once the
    /// removal of its chunks' locators is durable.
    pub fn retained_from(&self) -> u64 {
        self.retained_from.load(Ordering::Acquire)
    }

    fn push(&self, index: u64, last_lsn: u64) {
        if let Ok(mut segments) = self.segments.lock() {
            segments.push_back((index, last_lsn));
        }
    }

    /// Deletes every sealed segment below `retained_from` whose frames are all at or below
    /// `durable_lsn` (sled has made them durable) and not held; returns their indexes. Oldest
    /// first, so a crash midway leaves a contiguous suffix.
    pub fn release(&self, durable_lsn: u64, retained_from: u64) -> std::io::Result<Vec<u64>> {
        // Held for the whole release, so a hold taken meanwhile sees no segment go after it.
        let hold = self.hold.lock().map_err(|_| poisoned())?;
        let limit = hold.map_or(durable_lsn, |held| held.min(durable_lsn));
        let mut removed = Vec::new();
        loop {
            let next = match self.segments.lock() {
                Ok(segments) => segments.front().copied(),
                Err(_) => None,
            };
            let Some((index, last_lsn)) = next else { break };
            if last_lsn > limit || index >= retained_from {
                break;
            }
            segment::remove(&self.dir, index)?;
            if let Ok(mut segments) = self.segments.lock() {
                segments.pop_front();
            }
            removed.push(index);
        }
        Ok(removed)
    }

    /// Keeps every frame above the lsn `at` returns (called under the hold, so no release runs
    /// between reading it and holding it) until [`Sealed::unhold`]; returns that lsn.
    pub fn hold_from(&self, at: impl FnOnce() -> u64) -> std::io::Result<u64> {
        let mut hold = self.hold.lock().map_err(|_| poisoned())?;
        let lsn = at();
        *hold = Some(lsn);
        Ok(lsn)
    }

    /// Lets the applier delete segments again.
    pub fn unhold(&self) {
        if let Ok(mut hold) = self.hold.lock() {
            *hold = None;
        }
    }

    /// Calls `visit` with every frame `after < lsn <= through`, in order, read from the segment
    /// files while the journal is live. Those frames must be synced (committed) and held; the
    /// segment being written may end in a frame being written, which lies above `through`.
    pub fn read_frames(
        &self,
        after: u64,
        through: u64,
        mut visit: impl FnMut(u64, &[u8]) -> std::io::Result<()>,
    ) -> Result<(), JournalError> {
        let mut next = after + 1;
        if next > through {
            return Ok(());
        }
        let indexes = segment::indexes(&self.dir).map_err(io("journal listing"))?;
        for (i, &index) in indexes.iter().enumerate() {
            // Segments that end below `next` (the following one starts at or below it) hold
            // only event bodies and applied frames: skip them unread.
            if let Some(&following) = indexes.get(i + 1)
                && segment::first_lsn(&self.dir, following)
                    .map_err(io("segment read"))?
                    .is_some_and(|first| first <= next)
            {
                continue;
            }
            let path = segment::path(&self.dir, index);
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                // Released since the listing: it held only frames at or below the hold.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(io("segment read")(err)),
            };
            let mut pos = 0;
            loop {
                match frame::decode(&bytes[pos..]) {
                    Decoded::Frame { lsn, len, payload } => {
                        if lsn == next {
                            visit(lsn, payload).map_err(io("frame copy"))?;
                            next += 1;
                            if next > through {
                                return Ok(());
                            }
                        }
                        pos += len;
                    }
                    // Applied before the hold (a deleted stream's events zeroed in place):
                    // not one of the frames wanted.
                    Decoded::Altered { lsn, len } if lsn < next => pos += len,
                    _ => break,
                }
            }
        }
        Err(JournalError::Missing {
            from: next,
            to: through,
            applied: after,
        })
    }
}

fn poisoned() -> std::io::Error {
    std::io::Error::other("journal segment list lock poisoned")
}
