//! Event bodies are read from the journal's segment files; sled holds where each chunk lies.
//!
//! Every group commit already writes its chunks into a journal frame, durably, before the
//! append is acknowledged. Copying those chunks into sled as well wrote each event to disk a
//! second time, plus sled's own rewrites of the nodes holding them: with the copy,
//! `ordo-bench append-batch` reached 67-80k ev/s on this project's 2-core machine, without it
//! 104-118k in the same alternating runs. So the applier stores a [`Locator`] (segment, byte
//! position, length, checksum, event count) under the chunk's `e` key, and segments that hold
//! located chunks stay on disk until retention has removed every chunk in them.
//!
//! A value under an `e` key may also be the chunk itself: data dirs written before locators,
//! restored backups, and chunks compaction rewrote after a stream deletion. [`Bodies::chunk`]
//! reads either.

use std::{
    fs::File,
    os::unix::fs::FileExt,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use bytes::Bytes;

use super::{
    StoreError,
    codec::{Locator, corrupt},
    journal,
};

/// Segment files kept open for reads: catch-up reads walk one or two segments at a time.
const OPEN_FILES: usize = 16;

/// Reads chunks out of journal segments.
pub struct Bodies {
    dir: PathBuf,
    /// Recently read segments, most recent last.
    open: Mutex<Vec<(u64, Arc<File>)>>,
}

impl Bodies {
    /// Reads segments in `journal_dir`.
    pub fn new(journal_dir: PathBuf) -> Self {
        Self {
            dir: journal_dir,
            open: Mutex::default(),
        }
    }

    /// The chunk an `e` value stands for: the value itself, or the bytes its locator names,
    /// checked against the locator's checksum.
    pub fn chunk(&self, value: &[u8]) -> Result<Bytes, StoreError> {
        let Some(locator) = Locator::decode(value) else {
            return Ok(Bytes::copy_from_slice(value));
        };
        let file = self.file(locator.segment)?;
        let mut buf = vec![0u8; locator.len as usize];
        file.read_exact_at(&mut buf, locator.pos).map_err(|err| {
            corrupt(
                "event chunk",
                format!(
                    "reading {} bytes at {} of journal segment {}: {err}",
                    locator.len, locator.pos, locator.segment
                ),
            )
        })?;
        if crc32fast::hash(&buf) != locator.crc {
            return Err(corrupt(
                "event chunk",
                format!(
                    "checksum mismatch for {} bytes at {} of journal segment {}",
                    locator.len, locator.pos, locator.segment
                ),
            ));
        }
        Ok(Bytes::from(buf))
    }

    /// Closes a segment that was deleted, so its space is given back at once.
    pub fn forget(&self, segment: u64) {
        if let Ok(mut open) = self.open.lock() {
            open.retain(|(index, _)| *index != segment);
        }
    }

    fn file(&self, segment: u64) -> Result<Arc<File>, StoreError> {
        let mut open = self
            .open
            .lock()
            .map_err(|_| corrupt("event chunk", "segment file cache lock poisoned".into()))?;
        if let Some(at) = open.iter().position(|(index, _)| *index == segment) {
            let entry = open.remove(at);
            let file = entry.1.clone();
            open.push(entry);
            return Ok(file);
        }
        let path = journal::segment_path(&self.dir, segment);
        let file = Arc::new(File::open(&path).map_err(|err| {
            corrupt(
                "event chunk",
                format!("opening journal segment {}: {err}", path.display()),
            )
        })?);
        if open.len() >= OPEN_FILES {
            open.remove(0);
        }
        open.push((segment, file.clone()));
        Ok(file)
    }
}
