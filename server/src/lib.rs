//! Ordo's server: order commands and resumable event subscriptions over gRPC, on a durable,
//! gapless log.
//!
//! [`server::run`] is the whole server; `main.rs` only parses flags and signals around it, so
//! tests run exactly what production runs.
//!
//! # The layout, following one event
//!
//! - **Where a call enters.** [`server`] assembles tonic's server. Every call first passes the
//!   tower layer in [`auth::layer`] (bearer token, scope, append rate, request timeout), which
//!   puts an [`auth::Principal`] in the request. The handlers in [`grpc`] are thin adapters from
//!   the generated service traits to the domain modules; they never hold business rules.
//! - **Where it is decided.** The domain modules validate and build what to append:
//!   [`orders`] (commands checked against the order state machine, plus the order projection as
//!   records written with the events), [`events`] (`Publish`, `AppendStream`, `ReadEvents`,
//!   subscriptions), [`webhooks`] (definitions and their delivery) and [`groups`] (consumer
//!   groups: one task per group owns its window of deliveries and writes its progress).
//!   Shared leaves: [`filter`] (type and stream matching, also used by token restrictions,
//!   webhooks and groups), [`validate`], [`paging`], [`clock`].
//! - **Where it is made durable.** Everything is appended through [`store`]'s `EventLog` trait
//!   (`SharedLog`): one `AppendBatch` holds events and records and is acknowledged only once it
//!   is on disk, in order, with gapless offsets. Inside, one writer thread group-commits appends
//!   as checksummed frames of a write-ahead journal (one `pwrite` + one `fdatasync` per group);
//!   an applier thread copies them into sled, which serves reads and indexes, and pending writes
//!   and the in-memory tail cover what sled has not applied yet (docs/storage.md). Nothing above
//!   `store` touches files.
//! - **Where live subscribers are woken.** The durable head (a `watch`); on a crowded server a
//!   paced copy of it ([`events::pacer`]) so one wake-up carries several commits.
//! - **Where it is trimmed, deleted and backed up.** [`admin`]: the compaction task (retention by
//!   age or size, removal of deleted streams) with the hooks consumers of the log register to
//!   learn that it trimmed past them, `DeleteStream`'s rules, and backups; the storage work is in
//!   `store` (docs/operations.md).
//! - **Where it leaves.** Subscriptions ([`events::subscription`]) read the log up to the durable
//!   head and wait for it to move, yielding domain items that [`grpc::events`] turns into wire
//!   frames; webhook delivery tasks ([`webhooks::delivery`]) read the same log from their own
//!   durable cursors and POST each event; consumer-group tasks ([`groups::actor`]) read it into
//!   their window and hand each event to one member of the group.
//! - **Where errors become statuses.** Every failure a caller can see is an
//!   [`error::OrdoError`]; its `From<OrdoError> for tonic::Status` is the only place a status is
//!   built, which clips messages and counts security refusals ([`rejections`]).
//! - **What it measures.** [`metrics`]: off unless a metrics address is configured; then a
//!   tower layer outside the auth layer counts every call (go-grpc-prometheus names), a few
//!   calls in the writer, subscriptions and webhook delivery record Ordo's own series, and a
//!   scrape reads the rest (head, disk bytes, rejections) from the server's state.
//! - **Settings.** [`config::ServerConfig`] is plain data with working defaults; `main.rs`
//!   fills it from flags, tests from code.

pub mod admin;
pub mod auth;
pub mod clock;
pub mod config;
pub mod error;
pub mod events;
pub mod filter;
pub mod groups;
pub mod grpc;
pub mod metrics;
pub mod orders;
pub mod paging;
pub mod rejections;
pub mod server;
pub mod store;
pub mod validate;
pub mod webhooks;
pub mod workers;

pub use config::{Limits, ServerConfig};
pub use server::{run, run_with_auth};
