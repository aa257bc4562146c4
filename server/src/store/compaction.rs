//! Compaction: retention (removing the oldest events) and the physical removal of deleted
//! streams, on sled directly, behind the journal.
//!
//! # Why it is safe next to the journal, the applier and live readers
//!
//! - It only touches what sled has made durable (`Progress::flushed_head`): the journal may
//!   already have dropped those frames, so no replay after a crash can write them back, and no
//!   pending write or unapplied tail chunk is ever touched. Keys the writer still writes
//!   (versions, records, new chunks) are never touched; old keys it might share (an event-id
//!   index entry, a tombstone) are removed with compare-and-swap against the value compaction
//!   read.
//! - Retention first raises the first retained offset (in sled, then in memory), then drops the
//!   in-memory tail below it, and only then deletes chunks. A reader checks the first offset
//!   before and after it reads (`SledLog::read_page`), so a reader whose range is being removed
//!   fails with [`StoreError::Trimmed`] instead of seeing a gap; a reader inside the retained
//!   range never meets a deleted chunk.
//! - A deleted stream's tombstone hides its events from readers until its chunks were rewritten
//!   (each removed event keeps its slot as a zero-length entry, so no other offset moves), its
//!   index entries removed and the tail dropped below it; only then is the tombstone dropped.
//! - sled recovers a prefix of its writes after a crash, and every step can be redone: chunks
//!   left below the first offset are removed by the next compaction, and a tombstone stays until
//!   its removal completed.
//!
//! Only whole chunks (one append group's events, up to 64 KiB) are removed by retention, so the
//! first retained offset is always the first offset of a chunk.
//!
//! Chunks are mostly locators of bytes in journal segments (`bodies.rs`): after removing chunks,
//! retention tells the journal which segments hold none of the rest ([`Sealed::retain_from`]),
//! and the applier deletes them once that removal is durable. A deleted stream's events are
//! rewritten out of their chunks (into sled) and their bytes in the segments are recorded
//! (`scrubs.rs`) and zeroed after the next sled flush ([`Sealed::scrub_later`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use prost::Message;
use tracing::{debug, info};

use super::{
    StoreError,
    bodies::Bodies,
    codec::{
        self, EventIdentity, EventTime, Locator, RawEvent, chunk_events, chunk_len, decode_offset,
    },
    first::FirstOffset,
    journal::{Scrub, Sealed},
    keys,
    progress::Progress,
    scrubs,
    tail::Tail,
    tombstones::{self, Tombstone, Tombstones},
};

/// What retention keeps: the newest events within both limits (`None` = no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionRules {
    /// Events older than this (by the time the server accepted them) are removed.
    pub max_age: Option<Duration>,
    /// The oldest events are removed while the retained events' encoded size is above this.
    pub max_bytes: Option<u64>,
}

impl RetentionRules {
    pub fn is_off(&self) -> bool {
        self.max_age.is_none() && self.max_bytes.is_none()
    }
}

/// What one compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionReport {
    pub first_before: u64,
    pub first_after: u64,
    /// Events (and their encoded bytes) removed below the first retained offset.
    pub events_trimmed: u64,
    pub bytes_trimmed: u64,
    /// Deleted streams whose events were removed from storage, and how many events.
    pub streams_removed: u64,
    pub deleted_events_removed: u64,
}

/// Chunks looked at, past the first retained one, for the first that is a locator (the others
/// were rewritten in place, or predate locators) when telling the journal which segments retention
/// emptied.
const LOCATOR_SCAN: usize = 1024;

/// The bytes of the retained chunks, counted once and then kept up to date, so the bytes rule
/// does not read the whole log on every pass: chunks starting in `[first, next_chunk)` are
/// counted in `bytes`.
#[derive(Default)]
struct Counted {
    bytes: u64,
    next_chunk: u64,
}

pub struct Compactor {
    pub tree: sled::Tree,
    pub tail: Arc<Tail>,
    pub first: Arc<FirstOffset>,
    pub tombstones: Arc<Tombstones>,
    pub progress: Arc<Progress>,
    bodies: Arc<Bodies>,
    sealed: Sealed,
    counted: Mutex<Counted>,
}

impl Compactor {
    pub fn new(
        tree: sled::Tree,
        tail: Arc<Tail>,
        first: Arc<FirstOffset>,
        tombstones: Arc<Tombstones>,
        progress: Arc<Progress>,
        bodies: Arc<Bodies>,
        sealed: Sealed,
    ) -> Self {
        Self {
            tree,
            tail,
            first,
            tombstones,
            progress,
            bodies,
            sealed,
            counted: Mutex::default(),
        }
    }

    /// One compaction: applies `rules` as of `now_ms`, then removes what is below the first
    /// retained offset and the events of deleted streams. The caller serialises compactions
    /// (and backups) and runs this on a blocking thread.
    pub fn run(&self, rules: &RetentionRules, now_ms: u64) -> Result<CompactionReport, StoreError> {
        let first_before = self.first.get();
        let flushed = self.progress.flushed_head();
        let new_first = self.choose_first(rules, now_ms, first_before, flushed)?;
        if new_first > first_before {
            // Durable order: the new first offset is written before any chunk goes, so after a
            // crash sled never holds a first offset below a missing chunk.
            self.tree
                .insert(keys::FIRST_RETAINED, &new_first.to_be_bytes())?;
            self.first.raise(new_first);
            self.tail.drop_through(new_first - 1);
            info!(
                first_before,
                first_after = new_first,
                "retention moved the first retained offset"
            );
        }
        let mut report = CompactionReport {
            first_before,
            first_after: self.first.get(),
            ..CompactionReport::default()
        };
        self.remove_below(report.first_after, &mut report)?;
        if let Some(hidden) = self.tombstones.snapshot() {
            for (stream_id, tombstone) in hidden.iter() {
                if tombstone.through_offset <= flushed {
                    self.remove_stream(stream_id, *tombstone, report.first_after, &mut report)?;
                }
            }
        }
        Ok(report)
    }

    /// The first offset the rules keep: the first chunk (in order) that neither rule removes,
    /// never beyond what sled has made durable.
    fn choose_first(
        &self,
        rules: &RetentionRules,
        now_ms: u64,
        first: u64,
        flushed: u64,
    ) -> Result<u64, StoreError> {
        if rules.is_off() {
            return Ok(first);
        }
        let mut counted = self
            .counted
            .lock()
            .map_err(|_| codec::corrupt("compaction", "counter lock poisoned".into()))?;
        if counted.next_chunk < first {
            *counted = Counted {
                bytes: 0,
                next_chunk: first,
            };
        }
        if rules.max_bytes.is_some() {
            // Count the chunks sled has made durable since the last pass.
            let from = keys::event(counted.next_chunk);
            for entry in self.tree.range(from..=keys::event(flushed)) {
                let (key, value) = entry?;
                let start = decode_offset(&key[1..], "event key")?;
                counted.bytes += chunk_len(&value);
                counted.next_chunk = start + chunk_events(&value)?;
            }
        }
        let cutoff = rules
            .max_age
            .map(|age| now_ms.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX)));
        let mut new_first = first;
        for entry in self.tree.range(keys::event(first)..=keys::event(u64::MAX)) {
            let (key, value) = entry?;
            let start = decode_offset(&key[1..], "event key")?;
            if start > flushed {
                break;
            }
            let over_bytes = rules.max_bytes.is_some_and(|max| counted.bytes > max);
            let too_old = match cutoff {
                Some(cutoff) => newest_ms(start, self.bodies.chunk(&value)?)? < cutoff,
                None => false,
            };
            if !over_bytes && !too_old {
                break;
            }
            counted.bytes = counted.bytes.saturating_sub(chunk_len(&value));
            new_first = start + chunk_events(&value)?;
        }
        Ok(new_first)
    }

    /// Deletes every chunk below `first` with the index entries of its events.
    fn remove_below(&self, first: u64, report: &mut CompactionReport) -> Result<(), StoreError> {
        for entry in self.tree.range(keys::event(0)..keys::event(first)) {
            let (key, value) = entry?;
            let start = decode_offset(&key[1..], "event key")?;
            let events = codec::parse(start, self.bodies.chunk(&value)?)?;
            for event in events.iter().filter(|e| !e.is_removed()) {
                let identity = identity(event)?;
                self.forget_id(&identity, event.offset)?;
                self.trim_stream_entry(&identity, first)?;
            }
            self.tree.remove(&key)?;
            report.events_trimmed += events.iter().filter(|e| !e.is_removed()).count() as u64;
            report.bytes_trimmed += chunk_len(&value);
        }
        self.release_segments_below(first)?;
        if report.events_trimmed > 0 {
            debug!(
                events = report.events_trimmed,
                bytes = report.bytes_trimmed,
                "retention removed chunks"
            );
        }
        Ok(())
    }

    /// Tells the journal that segments below the one holding the first retained located chunk
    /// hold nothing retained (chunks are applied in offset order, so later ones lie in the same
    /// segment or later ones).
    fn release_segments_below(&self, first: u64) -> Result<(), StoreError> {
        let from = keys::event(first);
        for entry in self.tree.range(from..).take(LOCATOR_SCAN) {
            let (key, value) = entry?;
            if key.first() != Some(&keys::EVENT) {
                break;
            }
            if let Some(locator) = Locator::decode(&value) {
                self.sealed.retain_from(locator.segment);
                break;
            }
        }
        Ok(())
    }

    /// The stream index entry that starts at this event (if one does) loses the offsets below
    /// `first`: removed when none is left, re-keyed to its first retained version otherwise.
    fn trim_stream_entry(&self, event: &EventIdentity, first: u64) -> Result<(), StoreError> {
        let key = keys::stream_entry(&event.stream_id, event.stream_version);
        let Some(value) = self.tree.get(&key)? else {
            return Ok(());
        };
        let offsets = codec::unpack_offsets(&value)?;
        let kept: Vec<u64> = offsets.iter().copied().filter(|o| *o >= first).collect();
        if !kept.is_empty() {
            let version = event.stream_version + (offsets.len() - kept.len()) as u64;
            self.tree.insert(
                keys::stream_entry(&event.stream_id, version),
                codec::pack_offsets(&kept),
            )?;
        }
        self.tree.remove(&key)?;
        Ok(())
    }

    /// Removes the event-id index entry of a caller-chosen id, if it still names this event.
    fn forget_id(&self, event: &EventIdentity, offset: u64) -> Result<(), StoreError> {
        if event.id.is_empty() || codec::offset_in_id(&event.id) == Some(offset) {
            // Server-assigned ids are not indexed.
            return Ok(());
        }
        let key = keys::event_id(&event.id);
        if let Some(value) = self.tree.get(&key)?
            && codec::decode_position(&event.id, &value)?.offset == offset
        {
            // Not ours any more if it changed meanwhile: then the swap fails and it stays.
            let _ = self
                .tree
                .compare_and_swap(&key, Some(value), None as Option<&[u8]>)?;
        }
        Ok(())
    }

    /// Removes the events of one deleted stream from storage, then its tombstone.
    fn remove_stream(
        &self,
        stream_id: &str,
        tombstone: Tombstone,
        first: u64,
        report: &mut CompactionReport,
    ) -> Result<(), StoreError> {
        let lowest = keys::stream_entry(stream_id, 0);
        let highest = keys::stream_entry(stream_id, tombstone.version);
        let mut entries = Vec::new();
        let mut by_chunk: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
        let mut chunk_of = ChunkFinder::default();
        for entry in self.tree.range(lowest..=highest) {
            let (key, value) = entry?;
            let first_version = decode_offset(&key[key.len() - 8..], "stream index key")?;
            let offsets = codec::unpack_offsets(&value)?;
            let last_version = first_version + offsets.len() as u64 - 1;
            for (i, offset) in offsets.into_iter().enumerate() {
                let version = first_version + i as u64;
                if version <= tombstone.version && offset >= first {
                    let chunk = chunk_of.find(&self.tree, offset)?;
                    by_chunk.entry(chunk).or_default().insert(offset);
                }
            }
            if last_version <= tombstone.version {
                entries.push(key);
            }
        }
        let mut removed_events = 0u64;
        let mut recorded = false;
        for (start, offsets) in by_chunk {
            let key = keys::event(start);
            let Some(value) = self.tree.get(key)? else {
                continue;
            };
            let old_len = chunk_len(&value);
            let old_chunk = self.bodies.chunk(&value)?;
            let old_bytes = match Locator::decode(&value) {
                Some(locator) => codec::event_ranges(start, &old_chunk, &offsets)?
                    .into_iter()
                    .map(|(at, len)| Scrub {
                        segment: locator.segment,
                        pos: locator.pos + at,
                        len,
                    })
                    .collect(),
                None => Vec::new(),
            };
            let (chunk, removed) = codec::remove_events(start, old_chunk, &offsets)?;
            for event in &removed {
                let identity = identity(event)?;
                self.forget_id(&identity, event.offset)?;
            }
            let new_len = chunk.len() as u64;
            self.tree.insert(key, chunk)?;
            // The old bytes in the journal go too, once this rewrite is durable: recorded after
            // it, so a durable record means a durable rewrite.
            for range in old_bytes {
                scrubs::record(&self.tree, range, start)?;
                recorded = true;
            }
            removed_events += removed.len() as u64;
            if let Ok(mut counted) = self.counted.lock()
                && start < counted.next_chunk
            {
                counted.bytes = counted.bytes.saturating_sub(old_len - new_len);
            }
        }
        if recorded {
            self.sealed.scrub_later();
        }
        for key in entries {
            self.tree.remove(key)?;
        }
        self.tail.drop_through(tombstone.through_offset);
        // The tombstone goes last, and only if it is in sled as read (not raised meanwhile, not
        // still waiting for the applier): otherwise the next compaction finishes the job.
        let swapped = self.tree.compare_and_swap(
            tombstones::sled_key(stream_id),
            Some(tombstone.encode()),
            None as Option<&[u8]>,
        )?;
        report.deleted_events_removed += removed_events;
        if swapped.is_ok() {
            self.tombstones.remove_if(stream_id, tombstone);
            report.streams_removed += 1;
            info!(
                stream_id,
                version = tombstone.version,
                events = removed_events,
                "deleted stream removed from storage"
            );
        }
        Ok(())
    }
}

/// Finds the chunk holding an offset, remembering the last one (a stream's events are often
/// close together).
#[derive(Default)]
struct ChunkFinder {
    last: Option<(u64, u64)>,
}

impl ChunkFinder {
    fn find(&mut self, tree: &sled::Tree, offset: u64) -> Result<u64, StoreError> {
        if let Some((start, end)) = self.last
            && (start..end).contains(&offset)
        {
            return Ok(start);
        }
        let Some(entry) = tree.range(keys::event(0)..=keys::event(offset)).next_back() else {
            return Err(codec::corrupt(
                "stream index",
                format!("no chunk holds offset {offset}"),
            ));
        };
        let (key, value) = entry?;
        let start = decode_offset(&key[1..], "event key")?;
        self.last = Some((start, start + chunk_events(&value)?));
        Ok(start)
    }
}

fn identity(event: &RawEvent) -> Result<EventIdentity, StoreError> {
    EventIdentity::decode(event.bytes.as_ref()).map_err(|e| codec::corrupt("event", e.to_string()))
}

/// The newest event time in a chunk (removed events do not count).
fn newest_ms(start: u64, chunk: Bytes) -> Result<u64, StoreError> {
    Ok(codec::parse(start, chunk)?
        .iter()
        .filter(|e| !e.is_removed())
        .map(|e| EventTime::ms(&e.bytes))
        .max()
        .unwrap_or(0))
}
