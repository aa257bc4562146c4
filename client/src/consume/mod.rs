//! Consumer groups from a member's side: [`Consumer`], a self-rejoining `Consume` stream.
//!
//! A background task owns the gRPC stream ([`task`]); the caller reads a plain `Stream` of
//! [`ConsumerItem`]s and settles each [`Delivery`] through the delivery itself. Acks queued
//! together go out as one request, and each ack is matched to the server's `settled` or
//! `rejected` answer by its delivery id ([`pending`]).
//!
//! Delivery is at-least-once, as the server's contract says. When the stream breaks, the task
//! rejoins with capped, jittered backoff; whatever was not acked (and confirmed) on the broken
//! stream is delivered again, to this member or another one. Every connection is a new
//! *generation*: a delivery from an older one can no longer be settled (the server gave it to
//! someone again), so it is skipped if it was not read yet, and settling it fails at once
//! instead of being sent.

mod consumer;
mod delivery;
mod options;
mod pending;
mod task;

pub use consumer::{Consumer, ConsumerItem};
pub use delivery::{Delivery, Nack, Settlement};
pub use options::ConsumeOptions;
