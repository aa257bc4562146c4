//! Ordo's Rust client.
pub use ordo_api::v1;
