//! Ordo's server: order commands and resumable event subscriptions over gRPC, on a durable,
//! gapless sled log.
//!
//! [`server::run`] is the whole server; `main.rs` only parses flags and signals around it, so
//! tests run exactly what production runs.

pub mod auth;
pub mod clock;
pub mod config;
pub mod error;
pub mod events;
pub mod filter;
pub mod grpc;
pub mod orders;
pub mod paging;
pub mod server;
pub mod store;
pub mod validate;
pub mod webhooks;

pub use config::{Limits, ServerConfig};
pub use server::{run, run_with_auth};
