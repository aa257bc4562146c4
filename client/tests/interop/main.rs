//! Clients that are not Rust: the Python examples (generated stubs), the Node.js examples (proto
//! loaded at run time) and grpcurl (reflection), against a real server. Each installs its tool
//! (pip, npm) on first run.

mod grpcurl;
mod node_client;
mod python_client;
