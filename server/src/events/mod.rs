//! The event side of Ordo: publish (one call or a stream), read and subscribe.

pub mod append_stream;
pub mod pacer;
pub mod position;
pub mod publish;
pub mod read;
pub mod subscription;
