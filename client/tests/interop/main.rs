//! Clients that are not Rust: the Python examples (generated stubs) and grpcurl (reflection),
//! against a real server. Each installs its tool with pip on first run.

mod grpcurl;
mod python_client;
