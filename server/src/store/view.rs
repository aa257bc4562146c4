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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::journal::Op;

    fn op(key: &str, value: Option<&str>) -> Op {
        Op {
            key: key.as_bytes().to_vec(),
            value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
        }
    }

    fn keys(entries: &[(Vec<u8>, Bytes)]) -> Vec<String> {
        entries
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(k),
                    String::from_utf8_lossy(v)
                )
            })
            .collect()
    }

    /// Pending writes win over sled, pending deletes hide sled's value, and both directions
    /// merge in key order; once applied, a key is read from sled alone.
    #[test]
    fn pending_writes_merge_over_sled() {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let tree = db.open_tree("t").expect("tree");
        for (k, v) in [
            ("r1", "old"),
            ("r2", "sled"),
            ("r4", "gone"),
            ("r6", "sled"),
        ] {
            tree.insert(k, v).expect("insert");
        }
        let pending = Arc::new(Pending::default());
        let frame = vec![
            op("r1", Some("new")),
            op("r3", Some("pending")),
            op("r4", None),
            op("r5", Some("pending")),
        ];
        pending.insert(7, &frame);
        let view = View {
            tree: tree.clone(),
            pending: pending.clone(),
        };
        let all = |direction| {
            view.range(
                Bound::Included(b"r".as_slice()),
                Bound::Excluded(b"s".as_slice()),
                direction,
                usize::MAX,
            )
            .expect("range")
        };
        assert_eq!(
            keys(&all(Direction::Forward)),
            ["r1=new", "r2=sled", "r3=pending", "r5=pending", "r6=sled"]
        );
        assert_eq!(
            keys(&all(Direction::Backward)),
            ["r6=sled", "r5=pending", "r3=pending", "r2=sled", "r1=new"]
        );
        let last_at_or_before_r4 = view
            .range(
                Bound::Unbounded,
                Bound::Included(b"r4".as_slice()),
                Direction::Backward,
                1,
            )
            .expect("range");
        assert_eq!(keys(&last_at_or_before_r4), ["r3=pending"]);
        assert_eq!(view.get(b"r4").expect("get"), None);
        assert_eq!(view.get(b"r1").expect("get").as_deref(), Some(&b"new"[..]));

        // A later frame rewrote r1: applying frame 7 must not forget the newer value.
        pending.insert(8, &[op("r1", Some("newer"))]);
        for op in &frame {
            match &op.value {
                Some(v) => tree.insert(&op.key, v.as_ref()).map(|_| ()),
                None => tree.remove(&op.key).map(|_| ()),
            }
            .expect("apply");
        }
        pending.applied(7, &frame);
        assert_eq!(
            view.get(b"r1").expect("get").as_deref(),
            Some(&b"newer"[..])
        );
        assert_eq!(
            view.get(b"r3").expect("get").as_deref(),
            Some(&b"pending"[..])
        );
        assert_eq!(view.get(b"r4").expect("get"), None);
    }
}
