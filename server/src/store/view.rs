//! Reads of sled's tree as the acknowledged log sees it: sled plus the writes still pending in
//! the journal (`pending.rs`). Every non-chunk read goes through here, the writer's own
//! validation reads included, so versions, idempotency keys, event ids and records reflect
//! every acknowledged append the moment it is acknowledged.

use std::{cmp::Ordering, ops::Bound, sync::Arc};

use bytes::Bytes;

use super::{StoreError, pending::Pending};

#[derive(Clone)]
pub struct View {
    pub tree: sled::Tree,
    pub pending: Arc<Pending>,
}

/// Which way a range is walked.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

impl View {
    pub fn get(&self, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        if let Some(pending) = self.pending.get(key) {
            return Ok(pending);
        }
        Ok(self.tree.get(key)?.map(|v| Bytes::copy_from_slice(&v)))
    }

    /// Up to `limit` live entries with keys in `(start, end)`, merged from both sources (pending
    /// wins; pending deletes hide sled's value).
    ///
    /// The pending snapshot is taken before sled is read: an entry missing from the snapshot was
    /// already applied when it was taken, so the sled read that follows sees it.
    pub fn range(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Bytes)>, StoreError> {
        let mut pending = self.pending.range(start, end);
        let owned = (start.map(<[u8]>::to_vec), end.map(<[u8]>::to_vec));
        let mut sled: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> =
            match direction {
                Direction::Forward => Box::new(self.tree.range(owned)),
                Direction::Backward => {
                    pending.reverse();
                    Box::new(self.tree.range(owned).rev())
                }
            };
        let mut pending = pending.into_iter().peekable();
        let mut next_sled = sled.next().transpose()?;
        let mut out = Vec::new();
        while out.len() < limit {
            let order = match (pending.peek(), &next_sled) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((p, _)), Some((s, _))) => {
                    let order = p.as_slice().cmp(s.as_ref());
                    if direction == Direction::Backward {
                        order.reverse()
                    } else {
                        order
                    }
                }
            };
            if order != Ordering::Less
                && let Some((key, value)) = next_sled.take()
            {
                next_sled = sled.next().transpose()?;
                if order == Ordering::Greater {
                    out.push((key.to_vec(), Bytes::copy_from_slice(&value)));
                    continue;
                }
            }
            // Pending first (or the same key in both: pending is newer).
            if let Some((key, value)) = pending.next()
                && let Some(value) = value
            {
                out.push((key, value));
            }
        }
        Ok(out)
    }
}
