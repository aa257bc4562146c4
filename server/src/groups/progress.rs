//! What a group has settled: everything up to `settled_through`, plus ranges above it. Events
//! settle out of order (members ack in parallel, a retried event lags behind), so a single
//! offset cannot say it; ranges stay few because every gap is an event still in the group's
//! bounded window.

use std::collections::BTreeMap;

use super::records::Checkpoint;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    settled_through: u64,
    /// start -> end (inclusive) of settled ranges above `settled_through + 1`; never adjacent
    /// to each other or to `settled_through`.
    ranges: BTreeMap<u64, u64>,
}

impl Progress {
    pub fn new(settled_through: u64) -> Self {
        Self {
            settled_through,
            ranges: BTreeMap::new(),
        }
    }

    pub fn from_checkpoint(checkpoint: &Checkpoint) -> Self {
        let mut progress = Self::new(checkpoint.settled_through);
        for (&start, &end) in checkpoint.starts.iter().zip(&checkpoint.ends) {
            progress.settle_range(start, end);
        }
        progress
    }

    pub fn to_checkpoint(&self) -> Checkpoint {
        Checkpoint {
            settled_through: self.settled_through,
            starts: self.ranges.keys().copied().collect(),
            ends: self.ranges.values().copied().collect(),
            trimmed: 0,
        }
    }

    pub fn settled_through(&self) -> u64 {
        self.settled_through
    }

    pub fn is_settled(&self, offset: u64) -> bool {
        offset <= self.settled_through
            || self
                .ranges
                .range(..=offset)
                .next_back()
                .is_some_and(|(_, &end)| offset <= end)
    }

    /// The first offset above `after` that is not settled.
    pub fn next_unsettled(&self, after: u64) -> u64 {
        let mut next = after.max(self.settled_through) + 1;
        while let Some((_, &end)) = self.ranges.range(..=next).next_back() {
            if end < next {
                break;
            }
            next = end + 1;
        }
        next
    }

    pub fn settle(&mut self, offset: u64) {
        self.settle_range(offset, offset);
    }

    /// Marks `[start, end]` settled, merging with neighbours and advancing `settled_through`.
    pub fn settle_range(&mut self, start: u64, end: u64) {
        let mut start = start.max(self.settled_through + 1);
        let mut end = end;
        if start > end {
            return;
        }
        // Merge with a range that overlaps or touches on the left.
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back()
            && e.saturating_add(1) >= start
        {
            start = s;
            end = end.max(e);
            self.ranges.remove(&s);
        }
        // Swallow ranges that start inside or right after.
        while let Some((&s, &e)) = self.ranges.range(start..).next() {
            if s > end.saturating_add(1) {
                break;
            }
            end = end.max(e);
            self.ranges.remove(&s);
        }
        if start == self.settled_through + 1 {
            self.settled_through = end;
        } else {
            self.ranges.insert(start, end);
        }
    }

    /// Settled ranges above `settled_through`: the size of the checkpoint record.
    pub fn gaps(&self) -> usize {
        self.ranges.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settles_out_of_order_and_advances() {
        let mut p = Progress::new(10);
        p.settle(13);
        p.settle(12);
        assert_eq!(p.settled_through(), 10);
        assert!(p.is_settled(12) && p.is_settled(13) && !p.is_settled(11) && !p.is_settled(14));
        assert_eq!(p.next_unsettled(10), 11);
        assert_eq!(p.next_unsettled(11), 14);
        p.settle(11);
        assert_eq!(p.settled_through(), 13);
        assert_eq!(p.gaps(), 0);
        p.settle_range(20, 25);
        p.settle_range(15, 19);
        assert_eq!(p.settled_through(), 13);
        assert_eq!(p.gaps(), 1);
        let restored = Progress::from_checkpoint(&p.to_checkpoint());
        assert_eq!(restored, p);
        p.settle(14);
        assert_eq!(p.settled_through(), 25);
        p.settle(3);
        assert_eq!(p.settled_through(), 25);
    }
}
