//! Operations on the log as a whole: retention and compaction, stream deletion and backups
//! (docs/operations.md). The storage work lives in `store`; this is the policy around it and
//! what the admin RPCs and the `ordo-server backup`/`restore` tools call.
//!
//! - [`maintenance`]: the compaction task (retention rules, removal of deleted streams) and the
//!   [`TrimHooks`] that consumers of the log (webhooks, consumer groups) plug into.
//! - [`streams`]: `DeleteStream`'s rules.
//! - [`backup`]: an online backup as a stream of messages, and the offline tools.

pub mod backup;
pub mod maintenance;
pub mod streams;

pub use maintenance::{Maintenance, RetentionConfig, TrimHooks};
