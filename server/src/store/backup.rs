//! Online backups, and restoring them into a new data dir.
//!
//! # How a backup is consistent while appends go on
//!
//! A backup is a *fuzzy dump* of sled plus the journal frames that cover the dump's duration,
//! the same idea as a database's fuzzy checkpoint and redo log:
//!
//! 1. `target` = the last frame the journal has synced: every write acknowledged before the
//!    backup began is at or below it.
//! 2. The journal is told to keep every frame above `after` = the last frame sled has applied
//!    (so no segment the backup needs is deleted while it runs).
//! 3. Every key of sled is copied while the applier goes on writing. A key the applier does not
//!    touch meanwhile is copied with the value it had all along; a key it touches may be copied
//!    old or new, which is repaired by step 4.
//! 4. Once sled has applied at least `target`, `end` = the last frame applied, and the frames
//!    `after+1..=end` are copied from the journal. Replaying them over the dump (whole-value
//!    puts and deletes: replaying one twice is harmless) gives exactly sled's state after frame
//!    `end`: a frame boundary, so a prefix of the log, holding everything up to `target`.
//!
//! Nothing else writes to sled meanwhile: compaction and idempotency expiry write outside the
//! journal, so the caller holds them off (`SledLog`'s maintenance lock). Appends never wait for
//! a backup; what it costs them is disk (the journal segments it holds) and read bandwidth.
//!
//! # The file
//!
//! A sequence of journal frames (the same checksummed format, `journal/frame.rs`), numbered
//! 1, 2, 3...: the dump, then the copied frames, then a trailer frame whose only write is the
//! key [`TRAILER_KEY`] with a [`Trailer`]: the format, the count and SHA-256 of the bytes before
//! it, and the log's first offset, head and lsn. A file without a valid trailer is incomplete
//! and is refused by [`restore`].

use std::{
    fs::File,
    io::{BufReader, Read, Write},
    path::Path,
    time::{Duration, Instant},
};

use bytes::Bytes;
use prost::Message;
use sha2::{Digest, Sha256};
use tracing::info;

use super::{
    StoreError,
    bodies::Bodies,
    first::FirstOffset,
    journal::{self, Op, Sealed},
    keys,
    progress::Progress,
    sled_files::DurableFiles,
};

/// The trailer's key: sorts after every key Ordo writes and is never one of them.
const TRAILER_KEY: &[u8] = b"\xffordo-backup-trailer";
const FORMAT: u32 = 1;
/// Bytes of dumped keys and values per frame.
const DUMP_FRAME_BYTES: usize = 1024 * 1024;
/// Largest frame a restore accepts (the journal's frames are at most about 8 MiB).
const MAX_FRAME_BYTES: usize = 256 * 1024 * 1024;
/// How long a backup waits for sled to apply what was acknowledged before it began.
const APPLY_WAIT: Duration = Duration::from_secs(60);

/// The last frame of a backup file: what a restore checks before it writes anything.
#[derive(Clone, PartialEq, Message)]
pub struct Trailer {
    #[prost(uint32, tag = "1")]
    pub format: u32,
    /// Frames before the trailer.
    #[prost(uint64, tag = "2")]
    pub frames: u64,
    /// Bytes before the trailer, and their SHA-256.
    #[prost(uint64, tag = "3")]
    pub bytes: u64,
    #[prost(bytes = "vec", tag = "4")]
    pub sha256: Vec<u8>,
    #[prost(uint64, tag = "5")]
    pub head: u64,
    #[prost(uint64, tag = "6")]
    pub first_offset: u64,
    /// The journal frame the backup's state ends at.
    #[prost(uint64, tag = "7")]
    pub lsn: u64,
    #[prost(uint64, tag = "8")]
    pub created_ms: u64,
}

/// What a finished backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    /// The restored log will hold offsets `first_offset..=head`.
    pub first_offset: u64,
    pub head: u64,
    /// Size of the whole file and its SHA-256 (what `sha256sum` prints).
    pub bytes: u64,
    pub sha256: [u8; 32],
    pub created_ms: u64,
}

/// What a backup reads: sled, the journal and how far each has got.
pub struct Source<'a> {
    pub tree: &'a sled::Tree,
    pub sealed: &'a Sealed,
    pub progress: &'a Progress,
    pub first: &'a FirstOffset,
    /// Chunks are copied as themselves, not as locators into this data dir's journal.
    pub bodies: &'a Bodies,
}

/// Writes a consistent backup of the live log to `out` (see the module docs). Blocking: run it
/// on a blocking thread, with compaction and idempotency expiry held off.
pub fn write(source: Source<'_>, out: &mut dyn Write) -> Result<BackupSummary, StoreError> {
    let started = Instant::now();
    let target = source.progress.committed_lsn();
    let after = source.sealed.hold_from(|| source.progress.applied().lsn)?;
    let result = write_held(&source, out, target, after);
    source.sealed.unhold();
    let summary = result?;
    info!(
        head = summary.head,
        first_offset = summary.first_offset,
        bytes = summary.bytes,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "backup written"
    );
    Ok(summary)
}

pub(super) fn write_held(
    source: &Source<'_>,
    out: &mut dyn Write,
    target: u64,
    after: u64,
) -> Result<BackupSummary, StoreError> {
    let mut file = FrameWriter::new(out);
    let mut ops = Vec::new();
    let mut size = 0;
    for entry in source.tree.iter() {
        let (key, value) = entry?;
        // Both describe this data dir's journal, not the restored one's.
        if key.as_ref() == keys::JOURNAL_APPLIED || key.first() == Some(&keys::SCRUB) {
            continue;
        }
        let value = if key.first() == Some(&keys::EVENT) {
            source.bodies.chunk(&value)?
        } else {
            Bytes::copy_from_slice(&value)
        };
        size += key.len() + value.len();
        ops.push(Op {
            key: key.to_vec(),
            value: Some(value),
        });
        if size >= DUMP_FRAME_BYTES {
            file.frame(&ops)?;
            ops.clear();
            size = 0;
        }
    }
    if !ops.is_empty() {
        file.frame(&ops)?;
    }
    let end = wait_applied(source.progress, target)?;
    source
        .sealed
        .read_frames(after, end.lsn, |_, payload| file.raw_frame(payload))?;
    let created_ms = crate::clock::now_ms();
    let trailer = Trailer {
        format: FORMAT,
        frames: file.frames,
        bytes: file.bytes,
        sha256: file.hash.clone().finalize().to_vec(),
        head: end.head,
        first_offset: source.first.get(),
        lsn: end.lsn,
        created_ms,
    };
    file.frame(&[Op {
        key: TRAILER_KEY.to_vec(),
        value: Some(Bytes::from(trailer.encode_to_vec())),
    }])?;
    file.out.flush()?;
    Ok(BackupSummary {
        first_offset: trailer.first_offset,
        head: trailer.head,
        bytes: file.bytes,
        sha256: file.hash.finalize().into(),
        created_ms,
    })
}

/// Waits until sled has applied frame `target`; returns where the applier is then.
fn wait_applied(progress: &Progress, target: u64) -> Result<super::progress::Mark, StoreError> {
    let deadline = Instant::now() + APPLY_WAIT;
    loop {
        let applied = progress.applied();
        if applied.lsn >= target {
            return Ok(applied);
        }
        if Instant::now() > deadline {
            return Err(StoreError::Backup(format!(
                "sled did not apply journal frame {target} within {APPLY_WAIT:?} (it is at {}); check the server's log for a storage error",
                applied.lsn
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Numbers, hashes and writes frames.
struct FrameWriter<'a> {
    out: &'a mut dyn Write,
    buf: Vec<u8>,
    frames: u64,
    bytes: u64,
    hash: Sha256,
}

impl<'a> FrameWriter<'a> {
    fn new(out: &'a mut dyn Write) -> Self {
        Self {
            out,
            buf: Vec::new(),
            frames: 0,
            bytes: 0,
            hash: Sha256::new(),
        }
    }

    fn frame(&mut self, ops: &[Op]) -> std::io::Result<()> {
        journal::encode(self.frames + 1, ops, &mut self.buf);
        self.emit()
    }

    fn raw_frame(&mut self, payload: &[u8]) -> std::io::Result<()> {
        journal::encode_payload(self.frames + 1, payload, &mut self.buf);
        self.emit()
    }

    fn emit(&mut self) -> std::io::Result<()> {
        self.out.write_all(&self.buf)?;
        self.hash.update(&self.buf);
        self.frames += 1;
        self.bytes += self.buf.len() as u64;
        Ok(())
    }
}

/// What a restore wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSummary {
    pub first_offset: u64,
    pub head: u64,
    pub frames: u64,
    pub bytes: u64,
}

/// Restores the backup file `from` into `data_dir`, which must not exist or be empty. The whole
/// file is checked first (every frame's checksum, the trailer, its count and SHA-256), so a
/// damaged or incomplete backup writes nothing. The server then starts on `data_dir` as usual.
pub fn restore(from: &Path, data_dir: &Path) -> Result<RestoreSummary, StoreError> {
    if data_dir.exists()
        && std::fs::read_dir(data_dir)
            .map_err(|err| {
                StoreError::Backup(format!("cannot read {}: {err}", data_dir.display()))
            })?
            .next()
            .is_some()
    {
        return Err(StoreError::Backup(format!(
            "{} is not empty; restore into a new or empty directory",
            data_dir.display()
        )));
    }
    let trailer = verify(from)?;
    std::fs::create_dir_all(data_dir)?;
    let db = super::sled_log::sled_config(data_dir).open()?;
    let tree = db.open_tree(super::sled_log::TREE)?;
    let mut frames = Frames::open(from)?;
    while let Some(frame) = frames.next()? {
        let ops = journal::decode_ops(&frame.payload).map_err(|reason| frames.damaged(&reason))?;
        for op in ops {
            if op.key == TRAILER_KEY {
                continue;
            }
            match op.value {
                Some(value) => tree.insert(op.key, value.as_ref())?,
                None => tree.remove(op.key)?,
            };
        }
    }
    tree.insert(keys::JOURNAL_APPLIED, &trailer.lsn.to_be_bytes())?;
    db.flush()?;
    DurableFiles::open(data_dir)?.sync()?;
    sync_dir(data_dir)?;
    Ok(RestoreSummary {
        first_offset: trailer.first_offset,
        head: trailer.head,
        frames: trailer.frames,
        bytes: trailer.bytes,
    })
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads the whole file once: frames numbered 1, 2, 3... with valid checksums, ending in a
/// trailer whose count and SHA-256 match what precedes it.
pub fn verify(from: &Path) -> Result<Trailer, StoreError> {
    let mut frames = Frames::open(from)?;
    let mut hash = Sha256::new();
    let mut count = 0u64;
    let mut bytes = 0u64;
    let mut trailer = None;
    while let Some(frame) = frames.next()? {
        if trailer.is_some() {
            return Err(frames.damaged("data follows the trailer"));
        }
        let ops = journal::decode_ops(&frame.payload).map_err(|reason| frames.damaged(&reason))?;
        match ops.as_slice() {
            [op] if op.key == TRAILER_KEY => {
                let value = op.value.clone().unwrap_or_default();
                trailer = Some(
                    Trailer::decode(value.as_ref())
                        .map_err(|err| frames.damaged(&format!("bad trailer: {err}")))?,
                );
            }
            _ => {
                hash.update(&frame.bytes);
                count += 1;
                bytes += frame.bytes.len() as u64;
            }
        }
    }
    let Some(trailer) = trailer else {
        return Err(StoreError::Backup(format!(
            "{} has no trailer: the backup is incomplete (was it cut short?)",
            from.display()
        )));
    };
    if trailer.format != FORMAT {
        return Err(StoreError::Backup(format!(
            "{} is backup format {}; this server reads format {FORMAT}",
            from.display(),
            trailer.format
        )));
    }
    if trailer.frames != count
        || trailer.bytes != bytes
        || trailer.sha256 != hash.finalize().as_slice()
    {
        return Err(StoreError::Backup(format!(
            "{} does not match its trailer (frames {count} of {}, bytes {bytes} of {}, or the checksum): the file is damaged",
            from.display(),
            trailer.frames,
            trailer.bytes
        )));
    }
    Ok(trailer)
}

/// One frame of a backup file: its bytes (header included) and its payload.
struct RawFrame {
    bytes: Vec<u8>,
    payload: Vec<u8>,
}

/// A backup file read frame by frame.
struct Frames {
    file: BufReader<File>,
    path: std::path::PathBuf,
    position: u64,
    next_seq: u64,
}

impl Frames {
    fn open(path: &Path) -> Result<Self, StoreError> {
        let file = File::open(path)
            .map_err(|err| StoreError::Backup(format!("cannot open {}: {err}", path.display())))?;
        Ok(Self {
            file: BufReader::with_capacity(1024 * 1024, file),
            path: path.to_path_buf(),
            position: 0,
            next_seq: 1,
        })
    }

    fn damaged(&self, reason: &str) -> StoreError {
        StoreError::Backup(format!(
            "{} is damaged at byte {}: {reason}",
            self.path.display(),
            self.position
        ))
    }

    /// The next frame (its bytes and its payload), or None at the end of the file.
    fn next(&mut self) -> Result<Option<RawFrame>, StoreError> {
        let mut header = [0u8; journal::HEADER_LEN];
        let mut got = 0;
        while got < header.len() {
            match self.file.read(&mut header[got..])? {
                0 if got == 0 => return Ok(None),
                0 => return Err(self.damaged("the file ends inside a frame header")),
                n => got += n,
            }
        }
        let len = journal::payload_len(&header)
            .filter(|len| *len <= MAX_FRAME_BYTES)
            .ok_or_else(|| self.damaged("not a frame header"))?;
        let mut raw = Vec::with_capacity(journal::HEADER_LEN + len);
        raw.extend_from_slice(&header);
        raw.resize(journal::HEADER_LEN + len, 0);
        self.file
            .read_exact(&mut raw[journal::HEADER_LEN..])
            .map_err(|_| self.damaged("the file ends inside a frame"))?;
        let payload = match journal::decode(&raw) {
            journal::Decoded::Frame { lsn, payload, .. } if lsn == self.next_seq => {
                payload.to_vec()
            }
            journal::Decoded::Frame { lsn, .. } => {
                return Err(
                    self.damaged(&format!("frame {lsn} where {} was expected", self.next_seq))
                );
            }
            journal::Decoded::Invalid { reason, .. } => return Err(self.damaged(&reason)),
            journal::Decoded::Altered { .. } => {
                return Err(self.damaged("frame payload checksum mismatch"));
            }
            journal::Decoded::End => return Err(self.damaged("zeros where a frame should be")),
        };
        self.position += raw.len() as u64;
        self.next_seq += 1;
        Ok(Some(RawFrame {
            bytes: raw,
            payload,
        }))
    }
}
