//! Ordo's Rust client.
//!
//! [`OrdoClient`] has one typed method per RPC and maps gRPC statuses to [`ClientError`].
//! [`OrdoClient::subscribe`] returns a [`Subscription`] that survives server restarts and
//! network drops: it reconnects with capped, jittered backoff and resumes after the last position
//! it delivered, so each matching event arrives exactly once and in order.
//! [`OrdoClient::producer`] opens a [`Producer`] for high-rate appends: send events without
//! waiting and get a durable ack for each, in send order.
//! [`OrdoClient::consume`] joins a consumer group as a [`Consumer`] that rejoins after restarts
//! and drops: the group's members share its events, at least once, and ack each one.
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
//!
//! A consumer-group member (create the group once, e.g. with `ordo groups create billing`):
//!
//! ```no_run
//! use ordo_client::{ConsumeOptions, ConsumerItem, Nack, OrdoClient};
//! use tokio_stream::StreamExt;
//!
//! # async fn handle(_: &ordo_client::v1::Event) -> Result<(), String> { Ok(()) }
//! # async fn run() -> Result<(), ordo_client::ClientError> {
//! let client = OrdoClient::connect("http://127.0.0.1:50051").await?;
//! let mut consumer = client.consume(ConsumeOptions::new("billing").max_in_flight(50))?;
//! while let Some(item) = consumer.next().await {
//!     let ConsumerItem::Delivery(delivery) = item? else { continue };
//!     // Queued and sent along with the other acks of the moment; awaiting the returned
//!     // Settlement as well (`.await?.await?`) waits until the server made it durable.
//!     match handle(&delivery.event).await {
//!         Ok(()) => delivery.ack().await?,
//!         Err(why) => delivery.nack(Nack::retry().reason(why)).await?,
//!     };
//! }
//! # Ok(())
//! # }
//! ```

mod auth;
pub mod backoff;
mod client;
pub mod consume;
pub mod cursor;
mod error;
mod groups;
pub mod producer;
pub mod subscribe;

pub use backoff::{Backoff, BackoffPolicy};
pub use client::{ClientBuilder, Health, OrdoClient, TlsOptions};
pub use consume::{ConsumeOptions, Consumer, ConsumerItem, Delivery, Nack, Settlement};
pub use cursor::CursorFile;
pub use error::{ClientError, Result};
pub use ordo_api::v1;
pub use producer::{Ack, AckFuture, Producer};
pub use subscribe::{Start, SubscribeOptions, Subscription, SubscriptionItem};
