//! Journal bytes waiting to be zeroed: the events of deleted streams, recorded in sled.
//!
//! A stream deletion rewrites each chunk without the deleted events (in sled), but the events'
//! bytes are still in the journal segment the chunk's locator pointed at. They may be zeroed
//! only once sled's rewrite is durable, or a crash could leave a durable locator pointing at
//! zeros. So compaction records each byte range here, next to the rewrite, and the applier
//! zeroes the recorded ranges after its next sled flush, then removes the records. A record is
//! durable with the rewrite it belongs to, so a crash anywhere in between only means the
//! zeroing is done again at the next start (zeroing twice is harmless); nothing is forgotten
//! and nothing waits in memory.
//!
//! The records describe this data dir's journal files only: backups leave them out.

use super::{
    StoreError,
    codec::Locator,
    journal::Scrub,
    keys::{self, SCRUB},
};

/// Ranges taken per sled flush at most; the rest wait for the next one.
pub const SCRUBS_PER_FLUSH: usize = 4096;

/// A recorded range and the chunk it belonged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub range: Scrub,
    /// The first offset of the chunk whose old bytes these are.
    pub chunk: u64,
}

/// Records `range` (old bytes of the chunk starting at `chunk`) for zeroing. Written after
/// the chunk's rewrite, so a durable record means a durable rewrite.
pub fn record(tree: &sled::Tree, range: Scrub, chunk: u64) -> Result<(), StoreError> {
    let mut value = [0u8; 16];
    value[..8].copy_from_slice(&range.len.to_be_bytes());
    value[8..].copy_from_slice(&chunk.to_be_bytes());
    tree.insert(keys::scrub(range.segment, range.pos), &value)?;
    Ok(())
}

/// Whether any range waits (read at start).
pub fn any(tree: &sled::Tree) -> Result<bool, StoreError> {
    Ok(tree.scan_prefix([SCRUB]).next().transpose()?.is_some())
}

/// Up to `max` recorded ranges, in segment order.
pub fn waiting(tree: &sled::Tree, max: usize) -> Result<Vec<Recorded>, StoreError> {
    let mut out = Vec::new();
    for entry in tree.scan_prefix([SCRUB]).take(max) {
        let (key, value) = entry?;
        let number = |bytes: &[u8]| keys::decode_u64(bytes).ok_or_else(|| bad_record(&key));
        if key.len() != 17 || value.len() != 16 {
            return Err(bad_record(&key));
        }
        out.push(Recorded {
            range: Scrub {
                segment: number(&key[1..9])?,
                pos: number(&key[9..17])?,
                len: number(&value[..8])?,
            },
            chunk: number(&value[8..])?,
        });
    }
    Ok(out)
}

/// The ranges safe to zero: a range that a chunk's current locator still points into (which a
/// sled that lost the rewrite but kept the record would show) is left alone, and logged.
pub fn unreferenced(tree: &sled::Tree, recorded: &[Recorded]) -> Result<Vec<Scrub>, StoreError> {
    let mut out = Vec::with_capacity(recorded.len());
    for r in recorded {
        let live = tree
            .get(keys::event(r.chunk))?
            .and_then(|value| Locator::decode(&value))
            .is_some_and(|locator| {
                locator.segment == r.range.segment
                    && locator.pos < r.range.pos + r.range.len
                    && r.range.pos < locator.pos + u64::from(locator.len)
            });
        if live {
            tracing::warn!(
                segment = r.range.segment,
                pos = r.range.pos,
                chunk = r.chunk,
                "journal bytes of a deleted stream are still referenced; not zeroing them"
            );
        } else {
            out.push(r.range);
        }
    }
    Ok(out)
}

/// Removes the records of ranges that were zeroed (or skipped for good).
pub fn forget(tree: &sled::Tree, recorded: &[Recorded]) -> Result<(), StoreError> {
    for r in recorded {
        tree.remove(keys::scrub(r.range.segment, r.range.pos))?;
    }
    Ok(())
}

fn bad_record(key: &[u8]) -> StoreError {
    super::codec::corrupt("scrub record", format!("{} byte key", key.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(segment: u64, pos: u64, len: u64) -> Scrub {
        Scrub { segment, pos, len }
    }

    #[test]
    fn recorded_ranges_round_trip_and_referenced_ones_are_not_zeroed() {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let tree = db.open_tree("t").expect("tree");
        assert!(!any(&tree).expect("any"));
        // Chunk 10 was rewritten inline (its old bytes may go); chunk 20 still points at its
        // bytes in segment 3 (a rewrite sled lost): that range must stay.
        tree.insert(keys::event(10), b"\x02ab".as_slice())
            .expect("insert");
        let live = Locator {
            segment: 3,
            pos: 4096,
            len: 100,
            crc: 0,
            events: 1,
        };
        tree.insert(keys::event(20), &live.encode())
            .expect("insert");
        record(&tree, range(3, 1000, 50), 10).expect("record");
        record(&tree, range(3, 4120, 10), 20).expect("record");
        record(&tree, range(2, 7, 3), 10).expect("record");
        assert!(any(&tree).expect("any"));

        let all = waiting(&tree, 10).expect("waiting");
        assert_eq!(
            all.iter().map(|r| (r.range, r.chunk)).collect::<Vec<_>>(),
            [
                (range(2, 7, 3), 10),
                (range(3, 1000, 50), 10),
                (range(3, 4120, 10), 20)
            ]
        );
        assert_eq!(waiting(&tree, 2).expect("waiting").len(), 2);
        assert_eq!(
            unreferenced(&tree, &all).expect("check"),
            [range(2, 7, 3), range(3, 1000, 50)]
        );
        forget(&tree, &all).expect("forget");
        assert!(!any(&tree).expect("any"));
    }
}
