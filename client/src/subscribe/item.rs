//! What a subscription yields.

use std::time::Duration;

use ordo_api::v1::Event;

/// One item of a [`crate::Subscription`].
///
/// Not boxed although `Event` is large: events are nearly every item, so boxing would add an
/// allocation per event to save space on the rare heartbeat.
#[derive(Debug, Clone)]
#[non_exhaustive]
#[allow(clippy::large_enum_variant)]
pub enum SubscriptionItem {
    /// A matching event, delivered once, in log order.
    Event(Event),
    /// Every matching event up to `head_offset` has been delivered; what follows is live. Sent
    /// again after each reconnect, once the subscription has caught up again.
    CaughtUp {
        /// The log's head when the subscription caught up.
        head_offset: u64,
    },
    /// The stream is alive. `scanned_offset` is a safe resume point even when nothing matched.
    Heartbeat {
        /// The newest durable offset in the log.
        head_offset: u64,
        /// Every event up to here has been examined (and delivered if it matched).
        scanned_offset: u64,
    },
    /// The connection was lost; the subscription retries after `delay` and resumes after
    /// `resume_after` (or from the original start if nothing was received yet).
    Reconnecting {
        /// Consecutive failed attempts, from 1.
        attempt: u32,
        /// How long it waits before the next attempt.
        delay: Duration,
        /// Why the previous connection ended.
        reason: String,
        /// The offset it will resume after, if known.
        resume_after: Option<u64>,
    },
}

impl SubscriptionItem {
    /// The position this item proves the consumer has seen everything up to, if any.
    pub fn position(&self) -> Option<u64> {
        match self {
            SubscriptionItem::Event(event) => Some(event.offset),
            SubscriptionItem::CaughtUp { head_offset } => Some(*head_offset),
            SubscriptionItem::Heartbeat { scanned_offset, .. } => Some(*scanned_offset),
            SubscriptionItem::Reconnecting { .. } => None,
        }
    }
}
