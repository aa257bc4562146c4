//! The one test harness for every Ordo integration suite.
//!
//! - [`server`]: a real server on an ephemeral port over a real data directory, in-process
//!   ([`TestServer`]) or as the real binary ([`ChildServer`], for kill -9 and restarts).
//! - [`backend`]: which log those servers run on, sled or NATS ([`backend()`]), so that one test
//!   file runs against both. [`nats`]: a real NATS JetStream cluster ([`NatsCluster`]).
//! - [`api`]: request builders, log reads, status assertions and time-bounded stream reads.
//! - [`consumer`]: a consumer-group member over a real Consume stream.
//! - [`tokens`]: tokens files and authorised requests. [`pki`]: a throwaway CA and certificates.
//! - [`receiver`]: a recording webhook endpoint and an independent signature verifier.
//!
//! A library rather than a `mod common;` per test binary: every helper exists once, and unused
//! ones need no `#![allow(dead_code)]`.

pub mod api;
pub mod backend;
pub mod consumer;
pub mod nats;
pub mod pki;
pub mod receiver;
pub mod server;
pub mod tokens;

pub use backend::{Backend, backend, timing_differs_on_nats, unsupported_on_nats};
pub use nats::NatsCluster;
pub use server::{ChildServer, TestServer, free_port, server_binary};
