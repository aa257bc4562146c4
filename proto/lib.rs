//! Ordo's gRPC contract, generated from `proto/ordo/v1/*.proto`.
//!
//! Both the server and every Rust client depend on this one crate, so they can never disagree
//! about the wire format.

/// Version 1 of the API (`ordo.v1`).
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("ordo.v1");
}

/// The prost version the generated types are built with, so users encode with the same one.
pub use prost;

/// The encoded `FileDescriptorSet` of every Ordo proto, for gRPC server reflection, so that
/// `grpcurl` works with no proto files at hand.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ordo_descriptor");
