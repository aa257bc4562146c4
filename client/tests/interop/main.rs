//! Clients that are not Rust: the Python examples (generated stubs), the Node.js examples (proto
//! loaded at run time) and grpcurl (reflection), against a real server. Each installs its tool
//! (pip, npm) on first run.

mod grpcurl;
mod node_client;
mod python_client;

use std::path::{Path, PathBuf};

/// The repository root (examples and `proto/` live there).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}
