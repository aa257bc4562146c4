//! Which log the test servers run on, so that one test file runs against either backend.
//!
//! The `api` binary runs on sled and the `nats` binary (server/tests/nats) includes the same
//! modules and runs them on a JetStream cluster; `ORDO_TEST_STORE` overrides either. The
//! choice lives here rather than in each test so that no test has to know about it.

use std::{path::Path, sync::OnceLock};

use ordo_server::config::NatsConfig;
use sha2::{Digest, Sha256};

use crate::nats::NatsCluster;

/// The log under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded journal + sled store in the server's data dir.
    Sled,
    /// A JetStream stream on [`NatsCluster::shared`]; the data dir is only the node's copy.
    Nats,
}

/// `ORDO_TEST_STORE` (`sled` | `nats`) when set; otherwise `Nats` in a test executable whose
/// file name starts with `nats` (cargo names the `nats` test binary `nats-<hash>`), else `Sled`.
pub fn backend() -> Backend {
    static BACKEND: OnceLock<Backend> = OnceLock::new();
    *BACKEND.get_or_init(|| match std::env::var("ORDO_TEST_STORE") {
        Ok(value) => match value.trim().to_ascii_lowercase().as_str() {
            "sled" => Backend::Sled,
            "nats" => Backend::Nats,
            other => panic!("ORDO_TEST_STORE={other:?}: expected `sled` or `nats`"),
        },
        Err(_) => {
            let exe = std::env::current_exe().expect("current exe");
            let name = exe.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.starts_with("nats") {
                Backend::Nats
            } else {
                Backend::Sled
            }
        }
    })
}

/// The JetStream stream of the server on `data_dir`: unique per data dir (every test gets its
/// own log on the shared cluster) and stable across a restart on the same dir (so that
/// `stop()` then `start_in(dir)` finds its log again). `T` + 16 hex digits of the path's
/// SHA-256: stream names allow no dots, slashes or spaces.
pub fn stream_for_dir(data_dir: &Path) -> String {
    let digest = Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("T{hex}")
}

/// Replicas of the streams the server creates: `ORDO_TEST_NATS_REPLICAS` (default 3), at most
/// the cluster's size (a 1-node cluster cannot hold an R3 stream).
pub fn replicas_for(cluster: &NatsCluster) -> usize {
    let wanted = match std::env::var("ORDO_TEST_NATS_REPLICAS") {
        Ok(value) => value
            .trim()
            .parse::<usize>()
            .unwrap_or_else(|_| panic!("ORDO_TEST_NATS_REPLICAS={value:?}: expected a number")),
        Err(_) => 3,
    };
    wanted.clamp(1, cluster.nodes())
}

/// The store settings of a server whose log is `stream` on `cluster`.
pub fn nats_config(cluster: &NatsCluster, stream: &str) -> NatsConfig {
    NatsConfig {
        urls: cluster.urls(),
        stream: stream.to_string(),
        replicas: replicas_for(cluster),
    }
}

/// The `ordo-server` flags for the same settings as [`nats_config`].
pub fn nats_args(cluster: &NatsCluster, stream: &str) -> Vec<String> {
    let config = nats_config(cluster, stream);
    vec![
        "--store".into(),
        "nats".into(),
        "--nats-url".into(),
        config.urls.join(","),
        "--nats-stream".into(),
        config.stream,
        "--nats-replicas".into(),
        config.replicas.to_string(),
    ]
}

/// For tests of what the nats store does not offer (retention, `DeleteStream`; see
/// docs/scale-out.md): true, with a note on stderr, when running on it, and the test returns.
/// The nats suite checks separately that those calls are refused.
pub fn unsupported_on_nats(what: &str) -> bool {
    let skip = backend() == Backend::Nats;
    if skip {
        eprintln!("not run on the nats store: {what} is not available there");
    }
    skip
}

/// For a test whose timing the nats store cannot meet, with the reason on stderr (true on it).
pub fn timing_differs_on_nats(why: &str) -> bool {
    let skip = backend() == Backend::Nats;
    if skip {
        eprintln!("not run on the nats store: {why}");
    }
    skip
}
