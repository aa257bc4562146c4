//! The event side of Ordo: publish, read and subscribe.

pub mod pacer;
pub mod position;
pub mod publish;
pub mod read;
pub mod subscription;
