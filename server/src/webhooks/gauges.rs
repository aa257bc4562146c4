//! What the metrics read from the webhook engine: the delivery backlog, and the dead-letter
//! count it is seeded with at start (then kept up to date in memory, see
//! `crate::metrics::dead_letters_changed`).

use super::{Webhooks, records};
use crate::store::StoreError;

/// Records read per page when counting dead letters.
const COUNT_PAGE: usize = 1024;

impl Webhooks {
    /// Events after the cursors of the enabled webhooks, summed: what they have yet to deliver
    /// or skip. One cursor read per enabled webhook (at most `max_webhooks`); blocking.
    pub fn pending_events(&self) -> Result<u64, StoreError> {
        let ids: Vec<String> = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        let head = self.log().head();
        let mut pending = 0u64;
        for id in ids {
            let cursor = self.load_cursor(&id)?;
            pending += head.saturating_sub(cursor.delivered_through);
        }
        Ok(pending)
    }

    /// The dead letters stored for one webhook (at most `max_dead_letters`); blocking.
    pub(crate) fn count_dead_letters(&self, id: &str) -> Result<u64, StoreError> {
        let prefix = records::dead_prefix(id);
        let mut after: Option<Vec<u8>> = None;
        let mut count = 0u64;
        loop {
            let page = self
                .log()
                .scan_records(&prefix, after.as_deref(), COUNT_PAGE)?;
            let Some((last, _)) = page.last() else {
                return Ok(count);
            };
            count += page.len() as u64;
            after = Some(last.clone());
        }
    }
}
