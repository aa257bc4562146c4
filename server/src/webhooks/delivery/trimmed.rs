//! Events retention removed before a webhook delivered them: skipped visibly, never silently.
//!
//! The skipped range is written to the webhook's delivery history as one attempt with outcome
//! `DELIVERY_OUTCOME_TRIMMED` (what `ListDeliveries` and `ordo` show) and logged at WARN, and
//! delivery goes on at the first retained offset. Queued redrives and parallel retries of
//! removed events are dropped in the same durable write.

use ordo_api::v1::{DeliveryAttempt, DeliveryOutcome};
use tracing::warn;

use super::{DeliveryError, DeliveryTask};
use crate::{
    clock::{now_ms, timestamp},
    store::RecordWrite,
    webhooks::records,
};

/// Records of one kind scanned per write, so one step's write stays bounded.
const SCAN_PAGE: usize = 1000;

impl DeliveryTask {
    /// Moves the cursor to the first retained offset, recording what was skipped.
    pub(super) async fn skip_trimmed(&mut self) -> Result<(), DeliveryError> {
        let log = self.state.log().clone();
        let first = log.first_offset();
        self.ahead.clear();
        self.ahead_range = 0..0;
        let mut dropped = Vec::new();
        for prefix in [
            records::redrive_prefix(&self.id),
            records::parallel_prefix(&self.id),
        ] {
            for (key, _) in log.scan_records(&prefix, None, SCAN_PAGE)? {
                if records::trailing_u64(&key).is_some_and(|offset| offset < first) {
                    dropped.push(records::delete(key));
                }
            }
        }
        let redrives_dropped = dropped.len();
        let max_kept = self.state.config().max_attempts_kept.max(1);
        let id = self.id.clone();
        let skipped = self
            .state
            .modify(&self.id, |_, cursor| {
                let mut writes: Vec<RecordWrite> = dropped;
                let from = if cursor.pending_offset != 0 && cursor.pending_offset < first {
                    cursor.pending_offset
                } else {
                    cursor.delivered_through + 1
                };
                if cursor.pending_offset != 0 && cursor.pending_offset < first {
                    cursor.clear_pending();
                }
                cursor.delivered_through = cursor.delivered_through.max(first - 1);
                if from >= first {
                    return (writes, None);
                }
                let seq = cursor.attempt_seq;
                cursor.attempt_seq += 1;
                writes.push(records::put(
                    records::attempt_key(&id, seq),
                    &DeliveryAttempt {
                        event_offset: from,
                        attempt: 0,
                        time: timestamp(now_ms()),
                        error: format!(
                            "events {from}..={} were removed by retention before they were delivered; delivery continues at offset {first}",
                            first - 1
                        ),
                        outcome: DeliveryOutcome::Trimmed as i32,
                        ..DeliveryAttempt::default()
                    },
                ));
                if seq >= max_kept {
                    writes.push(records::delete(records::attempt_key(&id, seq - max_kept)));
                }
                (writes, Some(from))
            })
            .await?;
        match skipped {
            Some(Some(from)) => warn!(
                webhook = %self.id,
                from,
                through = first - 1,
                first_retained = first,
                redrives_dropped,
                "retention removed events this webhook had not delivered; they were skipped"
            ),
            _ if redrives_dropped > 0 => warn!(
                webhook = %self.id,
                first_retained = first,
                redrives_dropped,
                "retention removed events queued for redrive or retry; they were dropped"
            ),
            _ => {}
        }
        Ok(())
    }
}
