//! Ordo's server, black-box over real gRPC: one test binary, one module per topic, so the
//! topics link once and run side by side. Every test starts a real server (in-process, or the
//! real binary for crashes and restarts) from `ordo_test_harness`.
//!
//! Run one topic with a filter, e.g. `cargo test -p ordo-server --test api events::subscribe`.

mod append_stream;
mod backup;
mod deletion;
mod durability;
mod events;
mod groups;
mod journal;
mod observability;
mod orders;
mod retention;
mod security;
mod webhooks;
