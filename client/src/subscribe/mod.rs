//! Self-resuming subscriptions.
//!
//! A background task owns the gRPC stream and reconnects it; the consumer reads a plain
//! `Stream` (from `tokio-stream`/`futures`), [`Subscription`]. The task remembers the last offset it
//! handed over (an event's offset, or a heartbeat's `scanned_offset`) and resumes with
//! `after_offset` = that offset, which the server treats as exclusive: no gap, no duplicate.

mod item;
mod options;
mod stream;
mod task;

pub use item::SubscriptionItem;
pub use options::{Start, SubscribeOptions};
pub use stream::Subscription;
