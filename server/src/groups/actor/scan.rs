//! Reading the log into the group's window: matching events become unsettled entries, the
//! rest (not matching, deleted, removed by retention) is settled on the way.

use super::*;

impl Actor {
    /// Reads the log past `scanned` into the window; true if more is there to read.
    pub(super) fn fill(&mut self) -> Result<bool, StoreError> {
        self.skip_trimmed();
        let head = self.log.head();
        for _ in 0..READS_PER_ROUND {
            if self.scanned >= head || !self.window_has_room() {
                return Ok(false);
            }
            let from = self.scanned + 1;
            let page = match self.log.read_page(from, READ_EVENTS, READ_CHUNK_BYTES) {
                Ok(page) => page,
                // Retention moved the first offset meanwhile: skip to it, visibly.
                Err(StoreError::Trimmed { .. }) => {
                    self.skip_trimmed();
                    continue;
                }
                Err(err) => return Err(err),
            };
            if page.next <= from {
                return Ok(false);
            }
            for event in page.events {
                // Offsets the page skipped (events of deleted streams) are settled like
                // events the filter does not want.
                if event.offset > self.scanned + 1 {
                    self.progress
                        .settle_range(self.scanned + 1, event.offset - 1);
                    self.checkpoint_dirty = true;
                }
                self.take(event)?;
                if !self.window_has_room() {
                    return Ok(false);
                }
            }
            if page.next - 1 > self.scanned {
                self.progress.settle_range(self.scanned + 1, page.next - 1);
                self.checkpoint_dirty = true;
                self.scanned = page.next - 1;
            }
        }
        Ok(self.scanned < head)
    }

    /// Retention removed events below the log's first offset: the ones this group had not
    /// settled are skipped, counted in `trimmed` (shown by GetGroup) and logged at WARN, never
    /// silently.
    pub(super) fn skip_trimmed(&mut self) {
        let first = self.log.first_offset();
        if first <= self.progress.settled_through() + 1
            && self.window.range(..first).next().is_none()
        {
            return;
        }
        let mut skipped = 0u64;
        let below: Vec<u64> = self.window.range(..first).map(|(o, _)| *o).collect();
        for offset in below {
            if let Some(entry) = self.remove(offset) {
                if entry.replay {
                    self.replaying -= 1;
                } else {
                    skipped += 1;
                }
                self.writes.push(records::delete(records::failure_key(
                    &self.group.name,
                    offset,
                )));
            }
        }
        // Never examined: counted whether or not they matched the filter (they cannot be read
        // any more to tell).
        skipped += (first - 1).saturating_sub(self.scanned.max(self.progress.settled_through()));
        self.progress.settle_range(1, first - 1);
        self.scanned = self.scanned.max(first - 1);
        self.checkpoint_dirty = true;
        if skipped > 0 {
            self.trimmed += skipped;
            warn!(group = %self.group.name, first_offset = first, skipped, "retention removed events this consumer group had not settled; skipped");
        }
    }

    /// One event of the scan: settled already, not wanted (settled now), or into the window.
    pub(super) fn take(&mut self, event: RawEvent) -> Result<(), StoreError> {
        let offset = event.offset;
        self.scanned = offset;
        if self.progress.is_settled(offset) || self.window.contains_key(&offset) {
            return Ok(());
        }
        let key = event.key()?;
        if !self.matcher.matches_parts(&key.r#type, &key.stream_id) {
            self.progress.settle(offset);
            self.checkpoint_dirty = true;
            return Ok(());
        }
        let failure = self.known_failures.remove(&offset).unwrap_or_default();
        let state = match not_before(failure.not_before_ms) {
            Some(until) => {
                self.timers.insert((until, offset));
                State::Waiting { until }
            }
            None => State::Ready,
        };
        let cached = (self.cached_bytes + event.bytes.len() <= CACHE_BYTES).then(|| {
            self.cached_bytes += event.bytes.len();
            event.bytes.clone()
        });
        self.window.insert(
            offset,
            Entry {
                stream_id: key.stream_id.clone(),
                stream_version: key.stream_version,
                failures: failure.failures,
                replay: false,
                state,
                cached,
            },
        );
        Ok(())
    }

    /// An unsettled event that disappeared from the log (its stream deleted, or trimmed):
    /// settled without delivery.
    pub(super) fn forget_gone(&mut self, offset: u64) {
        info!(group = %self.group.name, offset, "event is gone from the log (deleted stream or retention); settled without delivery");
        self.ack(offset);
    }
}
