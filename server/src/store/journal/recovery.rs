//! Start-up: read the segments, hand back the frames sled has not applied, and reopen the
//! journal where the last whole frame ends.
//!
//! Outcomes, by what is found after the last whole frame:
//! - zeros (or the end of the file): a clean end; writing resumes there.
//! - a damaged frame with **no** whole frame after it anywhere: a torn last write. A frame is
//!   acknowledged only after its fdatasync returned, and the writer writes one frame at a time,
//!   so only the very last frame can be torn and it was never acknowledged. It is cut off
//!   (zeroed), logged with its position, and writing resumes there. (A bit flip inside the last
//!   frame that sled had not applied cannot be told apart from a torn write.)
//! - a damaged frame **followed** by a whole frame: acknowledged data sits behind damage, so the
//!   server refuses to start, naming the file and byte ([`JournalError::Corrupt`]).
//! - a whole frame (intact header, every byte there) whose payload fails its checksum, with an
//!   lsn sled has already applied: passed over. Nothing is replayed from it, and it is what a
//!   stream deletion leaves (its events zeroed in place, see `Sealed::scrub_later`); damage to
//!   the events in it is found by their own checksums when they are read.
//!
//! Segments whose frames sled has all applied are not read (only their first frame's header,
//! to know where each starts): they are kept for the event bodies sled points at, which are
//! checked against their own checksums when read. So start-up reads about one segment, however
//! long the log.

use std::{
    fs,
    path::{Path, PathBuf},
};

use tracing::{info, warn};

use super::{
    Current, FramePos, Journal, JournalError, JournalOptions, MIN_SEGMENT_BYTES, Op, Sealed, frame,
    frame::Decoded, io, segment,
};

/// A frame sled has not applied yet.
pub struct ReplayFrame {
    pub lsn: u64,
    pub ops: Vec<Op>,
    pub at: FramePos,
}

/// What recovery found.
pub struct Recovered {
    pub journal: Journal,
    /// Frames above sled's applied lsn, in order: replay them into sled before serving.
    pub frames: Vec<ReplayFrame>,
    /// The lsn the next frame gets.
    pub next_lsn: u64,
}

/// Opens the journal in `dir`; `applied` is the last lsn sled has applied.
pub fn recover(
    dir: &Path,
    applied: u64,
    options: JournalOptions,
) -> Result<Recovered, JournalError> {
    fs::create_dir_all(dir).map_err(io("journal dir creation"))?;
    let indexes = segment::list(dir).map_err(io("journal listing"))?;
    let sealed = Sealed::new(dir);
    let Some(&last_index) = indexes.last() else {
        segment::create(dir, 1, MIN_SEGMENT_BYTES).map_err(io("segment creation"))?;
        let journal = reopen(dir, options, sealed, 1, 0, 0)?;
        return Ok(Recovered {
            journal,
            frames: Vec::new(),
            next_lsn: applied + 1,
        });
    };

    let mut scan = Scan {
        applied,
        last_lsn: None,
        frames: Vec::new(),
    };
    let skip = applied_prefix(dir, &indexes, applied)?;
    for (k, &(index, last_lsn)) in skip.iter().enumerate() {
        sealed.push(index, last_lsn);
        if k + 1 == skip.len() {
            scan.last_lsn = Some(last_lsn);
        }
    }
    // Where writing resumes: after the last segment's frames, or where a torn frame starts.
    let mut resume = (last_index, 0);
    // Segments read that end cleanly before the last one: (index, end, last lsn), sealed below.
    let mut clean = Vec::new();
    for (i, &index) in indexes.iter().enumerate().skip(skip.len()) {
        let path = segment::path(dir, index);
        let bytes = fs::read(&path).map_err(io("segment read"))?;
        match scan.segment(index, &path, &bytes, &indexes[i + 1..], dir)? {
            SegmentEnd::Clean(pos) if index == last_index => resume = (index, pos),
            SegmentEnd::Clean(pos) => clean.push((index, pos, scan.last_lsn.unwrap_or(0))),
            SegmentEnd::Torn(pos) => {
                // Nothing valid follows: later segments hold no frames. Drop them and cut here.
                for &later in &indexes[i + 1..] {
                    segment::remove(dir, later).map_err(io("segment removal"))?;
                }
                let file = segment::open(dir, index).map_err(io("segment open"))?;
                let len = bytes.len() as u64;
                segment::zero_range(&file, pos, len.max(pos)).map_err(io("torn tail cut"))?;
                resume = (index, pos);
                break;
            }
        }
    }
    // An empty last segment was made ahead by the run before: resume in the one before it
    // instead, or every restart would leave a barely used segment (preallocated, up to the
    // segment size) behind.
    if resume == (last_index, 0)
        && let Some(&(previous, pos, _)) = clean.last()
        && indexes.len() >= 2
        && indexes[indexes.len() - 2] == previous
    {
        segment::remove(dir, last_index).map_err(io("segment removal"))?;
        clean.pop();
        resume = (previous, pos);
    }
    for (index, _, last_lsn) in clean {
        sealed.push(index, last_lsn);
    }
    let (index, pos) = resume;
    let journal = reopen(dir, options, sealed, index, pos, scan.last_lsn.unwrap_or(0))?;
    Ok(scan.finish(journal))
}

/// The leading segments whose frames are all at or below `applied` (the next segment's first
/// frame is at or below `applied + 1`), with the last lsn each holds; none of them is read.
/// Stops at the first segment without a readable first header, which is then read whole.
fn applied_prefix(
    dir: &Path,
    indexes: &[u64],
    applied: u64,
) -> Result<Vec<(u64, u64)>, JournalError> {
    let mut prefix = Vec::new();
    let Some(&oldest) = indexes.first() else {
        return Ok(prefix);
    };
    let mut first = segment::first_lsn(dir, oldest).map_err(io("segment read"))?;
    for pair in indexes.windows(2) {
        let next = segment::first_lsn(dir, pair[1]).map_err(io("segment read"))?;
        match (first, next) {
            (Some(first), Some(next)) if first < next && next <= applied + 1 => {
                prefix.push((pair[0], next - 1));
            }
            _ => break,
        }
        first = next;
    }
    Ok(prefix)
}

struct Scan {
    applied: u64,
    last_lsn: Option<u64>,
    frames: Vec<ReplayFrame>,
}

enum SegmentEnd {
    /// Frames end at this position, zeros follow.
    Clean(u64),
    /// A torn frame starts at this position and nothing valid follows.
    Torn(u64),
}

impl Scan {
    fn segment(
        &mut self,
        index: u64,
        path: &Path,
        bytes: &[u8],
        later: &[u64],
        dir: &Path,
    ) -> Result<SegmentEnd, JournalError> {
        let mut pos = 0usize;
        loop {
            let (lsn, reason) = match frame::decode(&bytes[pos..]) {
                Decoded::Frame { lsn, len, payload } => {
                    self.accept(index, path, pos, lsn, payload)?;
                    pos += len;
                    continue;
                }
                Decoded::End => return Ok(SegmentEnd::Clean(pos as u64)),
                Decoded::Altered { lsn, len } if lsn <= self.applied => {
                    // sled has applied it, so nothing is replayed from it; its payload changed
                    // since (a deleted stream's events zeroed in place, or damage, which reads
                    // of its events find through their own checksums).
                    self.accept(index, path, pos, lsn, &[])?;
                    pos += len;
                    continue;
                }
                Decoded::Altered { lsn, .. } => {
                    (Some(lsn), "frame payload checksum mismatch".to_string())
                }
                Decoded::Invalid { lsn, reason } => (lsn, reason),
            };
            if let Some((file, at)) = self.whole_frame_after(bytes, pos, path, later, dir)? {
                warn!(file = %file.display(), at, "whole journal frame found after damage");
                return Err(JournalError::Corrupt {
                    file: path.to_path_buf(),
                    position: pos as u64,
                    reason,
                });
            }
            warn!(
                file = %path.display(),
                position = pos,
                cut_bytes = bytes.len() - pos,
                frame_lsn = ?lsn,
                reason = %reason,
                "journal ends in a torn frame (a write that was never acknowledged); cutting it off"
            );
            return Ok(SegmentEnd::Torn(pos as u64));
        }
    }

    fn accept(
        &mut self,
        index: u64,
        path: &Path,
        pos: usize,
        lsn: u64,
        payload: &[u8],
    ) -> Result<(), JournalError> {
        let expected = match self.last_lsn {
            Some(last) => last + 1,
            // The oldest frame kept may be long applied, but none may be missing above sled.
            None if lsn > self.applied + 1 => {
                return Err(JournalError::Missing {
                    from: self.applied + 1,
                    to: lsn - 1,
                    applied: self.applied,
                });
            }
            None => lsn,
        };
        if lsn != expected {
            return Err(JournalError::Corrupt {
                file: path.to_path_buf(),
                position: pos as u64,
                reason: format!("frame lsn {lsn} where {expected} was expected"),
            });
        }
        self.last_lsn = Some(lsn);
        if lsn > self.applied {
            let ops = frame::decode_ops(payload).map_err(|reason| JournalError::Corrupt {
                file: path.to_path_buf(),
                position: pos as u64,
                reason,
            })?;
            self.frames.push(ReplayFrame {
                lsn,
                ops,
                at: FramePos {
                    segment: index,
                    pos: pos as u64,
                },
            });
        }
        Ok(())
    }

    /// A whole frame newer than the last good one, anywhere after `pos` in this segment or in a
    /// later one: proof that the damage at `pos` is not a torn last write.
    fn whole_frame_after(
        &self,
        bytes: &[u8],
        pos: usize,
        path: &Path,
        later: &[u64],
        dir: &Path,
    ) -> Result<Option<(PathBuf, usize)>, JournalError> {
        let newer = |lsn: u64| self.last_lsn.is_none_or(|last| lsn > last);
        if let Some(at) = find_frame(bytes, pos + 1, newer) {
            return Ok(Some((path.to_path_buf(), at)));
        }
        for &index in later {
            let later_path = segment::path(dir, index);
            let bytes = fs::read(&later_path).map_err(io("segment read"))?;
            if let Some(at) = find_frame(&bytes, 0, newer) {
                return Ok(Some((later_path, at)));
            }
        }
        Ok(None)
    }

    fn finish(self, journal: Journal) -> Recovered {
        let last = self.last_lsn.unwrap_or(0).max(self.applied);
        info!(
            replay = self.frames.len(),
            applied = self.applied,
            next_lsn = last + 1,
            "journal recovered"
        );
        Recovered {
            journal,
            frames: self.frames,
            next_lsn: last + 1,
        }
    }
}

fn find_frame(bytes: &[u8], from: usize, newer: impl Fn(u64) -> bool) -> Option<usize> {
    (from..bytes.len().saturating_sub(frame::HEADER_LEN)).find(|&at| {
        bytes[at..].starts_with(b"ORDJ")
            && match frame::decode(&bytes[at..]) {
                // An altered frame's header holds too: written whole, after the damage.
                Decoded::Frame { lsn, .. } | Decoded::Altered { lsn, .. } => newer(lsn),
                _ => false,
            }
    })
}

fn reopen(
    dir: &Path,
    options: JournalOptions,
    sealed: Sealed,
    index: u64,
    pos: u64,
    last_lsn: u64,
) -> Result<Journal, JournalError> {
    let file = segment::open(dir, index).map_err(io("segment open"))?;
    let capacity = file.metadata().map_err(io("segment stat"))?.len();
    let mut journal = Journal {
        dir: dir.to_path_buf(),
        options,
        current: Current {
            index,
            file,
            capacity,
            pos,
            last_lsn,
        },
        preparing: None,
        sealed,
        buf: Vec::new(),
    };
    journal.prepare_next();
    Ok(journal)
}
