//! The Rust clients against a real server: the `ordo` CLI (commands, output, exit codes, follow
//! and resume across restarts) and the `ordo-client` library it is built on (typed errors,
//! self-resuming subscriptions, TLS and tokens). One binary, since both need the `ordo` binary.

mod cli;
mod client_resume;
mod producer;
