//! Ordo's Rust client.
//!
//! [`OrdoClient`] has one typed method per RPC and maps gRPC statuses to [`ClientError`].
//! [`OrdoClient::subscribe`] returns a [`Subscription`] that survives server restarts and
//! network drops: it reconnects with capped, jittered backoff and resumes after the last position
//! it delivered, so each matching event arrives exactly once and in order.
//! [`OrdoClient::producer`] opens a [`Producer`] for high-rate appends: send events without
//! waiting and get a durable ack for each, in send order.
//!
//! ```no_run
//! use ordo_client::{OrdoClient, Start, SubscribeOptions, SubscriptionItem};
//! use tokio_stream::StreamExt;
//!
//! # async fn run() -> Result<(), ordo_client::ClientError> {
//! let client = OrdoClient::connect("http://127.0.0.1:50051").await?;
//! let options = SubscribeOptions::new()
//!     .start(Start::Beginning)
//!     .event_type("order.*")
//!     .cursor_file("orders.cursor");
//! let mut events = client.subscribe(options)?;
//! while let Some(item) = events.next().await {
//!     if let SubscriptionItem::Event(event) = item? {
//!         println!("{} {}", event.offset, event.r#type);
//!     }
//! }
//! # Ok(())
//! # }
//! ```

mod auth;
pub mod backoff;
mod client;
pub mod cursor;
mod error;
pub mod producer;
pub mod subscribe;

pub use backoff::{Backoff, BackoffPolicy};
pub use client::{ClientBuilder, Health, OrdoClient, TlsOptions};
pub use cursor::CursorFile;
pub use error::{ClientError, Result};
pub use ordo_api::v1;
pub use producer::{Ack, AckFuture, Producer};
pub use subscribe::{Start, SubscribeOptions, Subscription, SubscriptionItem};
