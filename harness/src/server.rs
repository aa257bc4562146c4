//! A real server on an ephemeral port over a real data directory, either in-process (fast, for
//! behaviour) or as the real binary in a child process (for crash and restart tests).
//!
//! The log is sled or a JetStream stream on the shared NATS cluster, as [`backend`] says: the
//! same test code runs on both. On NATS the stream is named after the data dir, so a restart on
//! the same dir finds the same log; [`TestServer::start_nats_node`] and
//! [`ChildServer::start_nats`] pick the cluster and stream themselves, for several Ordo nodes
//! on one log.

use std::{
    ffi::OsString,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use ordo_api::v1::{
    admin_service_client::AdminServiceClient, consumer_service_client::ConsumerServiceClient,
    event_service_client::EventServiceClient, order_service_client::OrderServiceClient,
};
use ordo_server::{ServerConfig, auth::Auth, config::StoreBackend};
use tempfile::TempDir;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};

use crate::{
    backend::{Backend, backend, nats_args, nats_config, stream_for_dir},
    nats::NatsCluster,
};

/// How long a server on the sled log may take to accept connections.
const SLED_START: Duration = Duration::from_secs(10);
/// How long a server on NATS may take to serve: it creates or finds its streams and rebuilds
/// its copy of the log from JetStream first.
const NATS_START: Duration = Duration::from_secs(60);

/// An in-process server. Dropping it cancels the server; call [`TestServer::stop`] to wait for
/// a clean shutdown.
pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: TempDir,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<Result<(), ordo_server::server::ServeError>>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts with a fresh temp dir and a config adjusted by `configure`.
    pub async fn start_with(configure: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, configure).await
    }

    /// Starts on an existing data dir (e.g. one returned by [`TestServer::stop`]).
    pub async fn start_in(dir: TempDir, configure: impl FnOnce(&mut ServerConfig)) -> Self {
        Self::start_full(dir, None, configure).await
    }

    /// Starts with tokens already loaded, so the test keeps the handle to reload them.
    pub async fn start_with_auth(auth: Auth, configure: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_full(dir, Some(auth), configure).await
    }

    /// Starts an Ordo node on a fresh data dir whose log is `stream` on `cluster`, whatever
    /// [`backend`] says: several nodes started with the same stream share one log.
    pub async fn start_nats_node(
        stream: &str,
        cluster: &NatsCluster,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = StoreBackend::Nats(nats_config(cluster, stream));
        Self::start_on(dir, None, store, configure).await
    }

    async fn start_full(
        dir: TempDir,
        auth: Option<Auth>,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        let store = match backend() {
            Backend::Sled => StoreBackend::Sled,
            Backend::Nats => StoreBackend::Nats(nats_config(
                NatsCluster::shared(),
                &stream_for_dir(dir.path()),
            )),
        };
        Self::start_on(dir, auth, store, configure).await
    }

    /// `store` is set before `configure` runs, so a test may still change it.
    async fn start_on(
        dir: TempDir,
        auth: Option<Auth>,
        store: StoreBackend,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        let mut config = ServerConfig::new(dir.path());
        config.store = store;
        configure(&mut config);
        // On NATS, wait for an answer over gRPC, not just a connection (see `wait_ready`).
        let probe = matches!(config.store, StoreBackend::Nats(_)) && config.tls.is_none();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        // Without a handle, `run` loads `config.auth.tokens_file` itself, as in production.
        let handle = match auth {
            Some(auth) => tokio::spawn(ordo_server::run_with_auth(
                listener,
                config,
                Some(auth),
                shutdown.clone(),
            )),
            None => tokio::spawn(ordo_server::run(listener, config, shutdown.clone())),
        };
        let mut server = Self {
            addr,
            dir,
            shutdown,
            handle: Some(handle),
        };
        server.wait_ready(probe).await;
        server
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .expect("url")
            .connect()
            .await
            .expect("connect")
    }

    pub async fn orders(&self) -> OrderServiceClient<Channel> {
        OrderServiceClient::new(self.channel().await)
    }

    pub async fn events(&self) -> EventServiceClient<Channel> {
        EventServiceClient::new(self.channel().await)
    }

    pub async fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel().await)
    }

    pub async fn consumers(&self) -> ConsumerServiceClient<Channel> {
        ConsumerServiceClient::new(self.channel().await)
    }

    /// Graceful shutdown; returns the data dir so a test can restart on it.
    pub async fn stop(mut self) -> TempDir {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(10), handle)
                .await
                .expect("server stops within 10 s")
                .expect("server task")
                .expect("server ran cleanly");
        }
        // Move the dir out without running Drop's cancel twice.
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"))
    }

    /// The listener is bound before the server starts, so a connection only proves that. On
    /// NATS, where opening the log takes a while, `probe` also waits for a gRPC answer, so
    /// that a test's timings do not include the start (the probe is a health check, which
    /// a test counting gRPC calls in metrics would see; none of those runs on NATS). Fails at
    /// once, with the server's error, if the server task ends during start-up.
    async fn wait_ready(&mut self, probe: bool) {
        let deadline = Instant::now() + if probe { NATS_START } else { SLED_START };
        loop {
            if self.handle.as_ref().is_some_and(JoinHandle::is_finished) {
                let result = self.handle.take().expect("handle").await;
                panic!("the server stopped while starting: {result:?}");
            }
            if tokio::net::TcpStream::connect(self.addr).await.is_ok()
                && (!probe || answers_grpc(&self.url()).await)
            {
                return;
            }
            assert!(Instant::now() < deadline, "server did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The `ordo-server` binary: `ORDO_SERVER_BIN` when set, else the one cargo built next to the
/// test executable's directory (it builds every binary of the workspace, or of the server
/// package, before running tests), else built on demand.
pub fn server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ORDO_SERVER_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current exe");
    let target_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    let binary = target_dir.join("ordo-server");
    if !binary.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "ordo-server", "--bin", "ordo-server"])
            .status()
            .expect("cargo build");
        assert!(status.success(), "building ordo-server failed");
    }
    binary
}

/// Whether a plaintext server at `url` answers a gRPC call (any status the server itself sends
/// counts, e.g. UNAUTHENTICATED without a token); a transport failure or no answer within 2 s
/// does not.
async fn answers_grpc(url: &str) -> bool {
    let call = async {
        let channel = Channel::from_shared(url.to_string())
            .expect("url")
            .connect()
            .await
            .ok()?;
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        Some(
            health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await,
        )
    };
    match tokio::time::timeout(Duration::from_secs(2), call).await {
        Ok(Some(Ok(_))) => true,
        Ok(Some(Err(status))) => !matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
        ),
        Ok(None) | Err(_) => false,
    }
}

/// An `ordo-server` child process, for tests that kill or restart the real binary.
pub struct ChildServer {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    child: Child,
}

impl ChildServer {
    /// Starts the binary on `data_dir` at a free port (or `port` to reuse one after a restart).
    /// On the NATS [`backend`], its log is the stream named after `data_dir` on the shared
    /// cluster, so a restart on the same dir serves the same log.
    pub async fn start(data_dir: &Path, port: Option<u16>, extra_args: &[&str]) -> Self {
        let mut args: Vec<OsString> = extra_args.iter().map(OsString::from).collect();
        if backend() == Backend::Nats {
            args.extend(
                nats_args(NatsCluster::shared(), &stream_for_dir(data_dir))
                    .into_iter()
                    .map(OsString::from),
            );
        }
        Self::spawn(data_dir, port, args).await
    }

    /// Starts the binary on `data_dir` with `stream` on `cluster` as its log, whatever
    /// [`backend`] says: several children given the same stream share one log.
    pub async fn start_nats(
        data_dir: &Path,
        port: Option<u16>,
        cluster: &NatsCluster,
        stream: &str,
        extra_args: &[&str],
    ) -> Self {
        let mut args: Vec<OsString> = extra_args.iter().map(OsString::from).collect();
        args.extend(nats_args(cluster, stream).into_iter().map(OsString::from));
        Self::spawn(data_dir, port, args).await
    }

    async fn spawn(data_dir: &Path, port: Option<u16>, args: Vec<OsString>) -> Self {
        let nats = args
            .windows(2)
            .any(|pair| pair[0] == "--store" && pair[1] == "nats")
            || args.iter().any(|a| a == "--store=nats");
        let tls = args
            .iter()
            .any(|a| a.to_string_lossy().starts_with("--tls-cert"));
        let port = port.unwrap_or_else(free_port);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let child = Command::new(server_binary())
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            // ORDO_TEST_LOG=info shows the server's logs (tracing writes to stdout).
            .env(
                "RUST_LOG",
                std::env::var("ORDO_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(if std::env::var_os("ORDO_TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ordo-server");
        let mut server = Self {
            addr,
            data_dir: data_dir.to_path_buf(),
            child,
        };
        // As for TestServer: on NATS, wait for a gRPC answer, not just a connection.
        let probe = nats && !tls;
        let deadline = Instant::now() + if nats { NATS_START } else { 2 * SLED_START };
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("ordo-server exited while starting: {status}");
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok()
                && (!probe || answers_grpc(&server.url()).await)
            {
                return server;
            }
            assert!(Instant::now() < deadline, "ordo-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait; returns the exit status code.
    pub fn terminate(mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
