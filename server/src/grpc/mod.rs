//! The gRPC surface: thin adapters from generated service traits to the domain modules.

pub mod admin;
pub mod consumer;
pub mod events;
pub mod orders;
pub mod webhooks;
pub mod wire;
