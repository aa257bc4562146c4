//! A real NATS JetStream cluster for tests: `nodes` nats-server processes on 127.0.0.1, routed
//! to each other, each with its own JetStream store in a temp dir the cluster owns.
//!
//! Processes never outlive the test process, however it ends. Each nats-server runs under a
//! small `sh` wrapper whose stdin is a pipe from the test process; the wrapper waits for a line
//! or end-of-file on it, then SIGKILLs its nats-server and, unless the line was `keep`, removes
//! the node's directory. The kernel closes that pipe when the test process exits, panics or is
//! killed (even by SIGKILL), so the shared cluster, which lives in a static that is never
//! dropped, is torn down and deleted at exit too: no pid files, no sweeping of stale pids, no
//! `unsafe` (the workspace forbids it, and with it `prctl(PR_SET_PDEATHSIG)`). The one way
//! to leak a nats-server is to SIGKILL its wrapper alone.
//!
//! Start-up waits until JetStream answers on every node and the cluster can place, replicate
//! and delete a throwaway stream with the tests' replica count; see [`NatsCluster::start`].

mod binary;

use std::{
    future::Future,
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use async_nats::jetstream;
use tempfile::TempDir;

pub use binary::{NATS_SERVER_VERSION, nats_server_binary};

use crate::server::free_port;

/// How long start-up and restarts may take before the test fails with the last error seen.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// `$0` nats-server, `$1` its config file, `$2` the node's dir. Prints nats-server's pid, then
/// waits on stdin (see the module doc).
const WRAPPER: &str = r#"
"$0" -c "$1" </dev/null 1>&2 &
pid=$!
echo "$pid"
read -r command
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
if [ "$command" != keep ]; then
    rm -rf "$2"
    rmdir "$(dirname "$2")" 2>/dev/null
fi
exit 0
"#;

/// A running NATS cluster. Dropping it kills every node and deletes their stores.
pub struct NatsCluster {
    nodes: Vec<NodeSpec>,
    running: Mutex<Vec<Option<Running>>>,
    root: TempDir,
}

/// What stays the same across a restart of one node.
struct NodeSpec {
    client_port: u16,
    dir: PathBuf,
    config: PathBuf,
}

/// One node's wrapper process (see the module doc) and the pid of its nats-server.
struct Running {
    wrapper: Child,
    stdin: ChildStdin,
    pid: u32,
}

impl NatsCluster {
    /// Starts `nodes` routed nats-servers (`1`: one standalone JetStream server) and returns
    /// once JetStream is ready across the cluster; panics after 30 s with the last error.
    /// Blocks the calling thread (the readiness probe runs on a thread of its own), so it can
    /// be called from sync code and from inside a test's runtime alike.
    pub fn start(nodes: usize) -> Self {
        assert!(nodes >= 1, "a cluster needs at least one node");
        let started = Instant::now();
        let binary = nats_server_binary();
        let root = tempfile::Builder::new()
            .prefix("ordo-nats-")
            .tempdir()
            .expect("temp dir");
        let ports: Vec<(u16, u16)> = (0..nodes).map(|_| (free_port(), free_port())).collect();
        let specs: Vec<NodeSpec> = (0..nodes)
            .map(|i| {
                let dir = root.path().join(format!("node-{i}"));
                std::fs::create_dir_all(&dir).expect("node dir");
                let config = dir.join("nats.conf");
                std::fs::write(&config, node_config(i, &ports, &dir)).expect("write nats.conf");
                NodeSpec {
                    client_port: ports[i].0,
                    dir,
                    config,
                }
            })
            .collect();
        let running = specs
            .iter()
            .map(|spec| Some(spawn(&binary, spec)))
            .collect();
        // Built before waiting, so that a failed start still kills what it started.
        let cluster = Self {
            nodes: specs,
            running: Mutex::new(running),
            root,
        };
        let urls = cluster.urls();
        let replicas = nodes.min(3);
        if let Err(err) = block_on(wait_until_ready(&urls, replicas)) {
            panic!(
                "the {nodes}-node NATS cluster was not ready within {READY_TIMEOUT:?}: {err} \
                 (ORDO_TEST_LOG=1 shows nats-server's output)"
            );
        }
        eprintln!(
            "nats cluster: {nodes} node(s) of nats-server {} ready in {:?} at {}",
            NATS_SERVER_VERSION,
            started.elapsed(),
            urls.join(",")
        );
        cluster
    }

    /// One 3-node cluster per test process, started on first use, shared by every test in it
    /// (each test server gets its own stream, see `crate::backend::stream_for_dir`). Torn down
    /// when the process exits (see the module doc). Do not kill its nodes: tests that do start
    /// their own cluster.
    pub fn shared() -> &'static NatsCluster {
        static SHARED: OnceLock<NatsCluster> = OnceLock::new();
        SHARED.get_or_init(|| NatsCluster::start(3))
    }

    /// How many nodes the cluster has, running or not.
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// `nats://127.0.0.1:PORT` of every node, in node order.
    pub fn urls(&self) -> Vec<String> {
        (0..self.nodes()).map(|i| self.url(i)).collect()
    }

    /// Node `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// The directory holding every node's config and store.
    pub fn dir(&self) -> &std::path::Path {
        self.root.path()
    }

    /// SIGKILLs node `i`'s nats-server and waits for it to be gone; its store stays for
    /// [`NatsCluster::restart`].
    pub fn kill9(&self, i: usize) {
        let running = self.lock()[i]
            .take()
            .unwrap_or_else(|| panic!("nats node {i} is not running"));
        stop(running, true);
    }

    /// Starts node `i` again on the same ports and store, and waits until its JetStream
    /// answers.
    pub fn restart(&self, i: usize) {
        {
            let mut running = self.lock();
            assert!(running[i].is_none(), "nats node {i} is still running");
            running[i] = Some(spawn(&nats_server_binary(), &self.nodes[i]));
        }
        let url = self.url(i);
        let deadline = Instant::now() + READY_TIMEOUT;
        let ready = block_on(async { retry_until(deadline, || probe_account(&url)).await });
        if let Err(err) = ready {
            panic!("nats node {i} did not come back within {READY_TIMEOUT:?}: {err}");
        }
    }

    /// The pid of node `i`'s nats-server, if it is running.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.lock()[i].as_ref().map(|r| r.pid)
    }

    /// A client connected to the cluster (any node; it fails over to the others).
    pub async fn client(&self) -> async_nats::Client {
        connect(&self.urls())
            .await
            .expect("connect to the NATS cluster")
    }

    /// A JetStream context on [`NatsCluster::client`].
    /// The index of the node that leads `stream` (node i is named `ordo-test-<i>`), so a
    /// failover test can kill the leader, the case that makes JetStream elect a new one.
    pub async fn leader_of(&self, stream: &str) -> usize {
        let mut stream = self
            .jetstream()
            .await
            .get_stream(stream)
            .await
            .expect("stream exists");
        let info = stream.info().await.expect("stream info");
        let leader = info
            .cluster
            .as_ref()
            .and_then(|cluster| cluster.leader.clone())
            .expect("a clustered stream has a leader");
        leader
            .rsplit('-')
            .next()
            .and_then(|i| i.parse().ok())
            .expect("leader named ordo-test-<i>")
    }

    pub async fn jetstream(&self) -> jetstream::Context {
        jetstream::new(self.client().await)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<Running>>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for running in self.lock().iter_mut().filter_map(Option::take) {
            stop(running, false);
        }
    }
}

/// One node's config: flags cannot set the JetStream store dir, server name and routes all at
/// once. `max_payload` is raised from NATS's 1 MiB default: one Ordo event may carry a 1 MiB
/// payload plus its envelope.
fn node_config(i: usize, ports: &[(u16, u16)], dir: &std::path::Path) -> String {
    let store = dir.join("jetstream");
    let store = store.to_str().expect("UTF-8 temp dir");
    assert!(!store.contains('"'), "a quote in {store}");
    let mut config = format!(
        "server_name: \"ordo-test-{i}\"\n\
         listen: \"127.0.0.1:{}\"\n\
         max_payload: 8388608\n\
         jetstream {{\n  store_dir: \"{store}\"\n  max_memory_store: 268435456\n}}\n",
        ports[i].0
    );
    if ports.len() > 1 {
        let routes: Vec<String> = ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, (_, cluster))| format!("\"nats-route://127.0.0.1:{cluster}\""))
            .collect();
        config.push_str(&format!(
            "cluster {{\n  name: \"ordo-test\"\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
            ports[i].1,
            routes.join(", ")
        ));
    }
    config
}

/// Starts one node under its wrapper and reads its nats-server's pid.
fn spawn(binary: &std::path::Path, spec: &NodeSpec) -> Running {
    let log = std::env::var_os("ORDO_TEST_LOG").is_some();
    let mut wrapper = Command::new("sh")
        .arg("-c")
        .arg(WRAPPER)
        .arg(binary)
        .arg(&spec.config)
        .arg(&spec.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(if log { Stdio::inherit() } else { Stdio::null() })
        .spawn()
        .expect("spawn sh for nats-server");
    let stdin = wrapper.stdin.take().expect("wrapper stdin");
    let mut line = String::new();
    BufReader::new(wrapper.stdout.take().expect("wrapper stdout"))
        .read_line(&mut line)
        .expect("read the nats-server pid");
    let pid = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("the nats-server wrapper printed {line:?}, not a pid"));
    Running {
        wrapper,
        stdin,
        pid,
    }
}

/// Tells the wrapper to SIGKILL its nats-server (removing the node's dir unless `keep`) and
/// waits until it has.
fn stop(running: Running, keep: bool) {
    let Running {
        mut wrapper,
        mut stdin,
        ..
    } = running;
    let _ = stdin.write_all(if keep { b"keep\n" } else { b"drop\n" });
    drop(stdin);
    let _ = wrapper.wait();
}

/// Runs `future` to completion on a fresh thread with its own runtime: callable from sync code
/// and from inside another runtime (where `block_on` would panic).
fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("probe runtime")
                    .block_on(future)
            })
            .join()
            .expect("the NATS readiness probe panicked")
    })
}

/// JetStream answers on every node, then a throwaway stream with `replicas` replicas can be
/// created, written, acknowledged and deleted: the meta leader is elected and enough peers
/// are current.
async fn wait_until_ready(urls: &[String], replicas: usize) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    for url in urls {
        retry_until(deadline, || probe_account(url)).await?;
    }
    retry_until(deadline, || probe_stream(urls, replicas)).await
}

async fn retry_until<F, Fut>(deadline: Instant, mut attempt: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let err =
            match tokio::time::timeout(remaining.min(Duration::from_secs(10)), attempt()).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(err)) => err,
                Err(_) => "timed out".to_string(),
            };
        if Instant::now() >= deadline {
            return Err(err);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn connect(urls: &[String]) -> Result<async_nats::Client, String> {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_secs(5)))
        .connect(urls)
        .await
        .map_err(|err| format!("connect to {urls:?}: {err}"))
}

async fn probe_account(url: &str) -> Result<(), String> {
    let client = connect(&[url.to_string()]).await?;
    jetstream::new(client)
        .query_account()
        .await
        .map(|_| ())
        .map_err(|err| format!("{url}: JetStream account info: {err}"))
}

async fn probe_stream(urls: &[String], replicas: usize) -> Result<(), String> {
    let js = jetstream::new(connect(urls).await?);
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let probe = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("HARNESS_READY_{}_{probe}", std::process::id());
    let subject = format!("harness.ready.{name}");
    js.create_stream(jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![subject.clone()],
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|err| format!("create an R{replicas} stream: {err}"))?;
    let written = async {
        js.publish(subject, "ready".into())
            .await
            .map_err(|err| format!("publish: {err}"))?
            .await
            .map_err(|err| format!("publish ack: {err}"))
    }
    .await;
    let deleted = js
        .delete_stream(&name)
        .await
        .map_err(|err| format!("delete the probe stream: {err}"));
    written.and(deleted).map(|_| ())
}
