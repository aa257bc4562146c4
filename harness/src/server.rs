//! A real server on an ephemeral port over a real sled directory, either in-process (fast, for
//! behaviour) or as the real binary in a child process (for crash and restart tests).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use ordo_api::v1::{
    admin_service_client::AdminServiceClient, consumer_service_client::ConsumerServiceClient,
    event_service_client::EventServiceClient, order_service_client::OrderServiceClient,
};
use ordo_server::{ServerConfig, auth::Auth};
use tempfile::TempDir;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

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

    async fn start_full(
        dir: TempDir,
        auth: Option<Auth>,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        let mut config = ServerConfig::new(dir.path());
        configure(&mut config);
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
        let server = Self {
            addr,
            dir,
            shutdown,
            handle: Some(handle),
        };
        server.wait_ready().await;
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

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(self.addr).await.is_err() {
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

/// An `ordo-server` child process, for tests that kill or restart the real binary.
pub struct ChildServer {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    child: Child,
}

impl ChildServer {
    /// Starts the binary on `data_dir` at a free port (or `port` to reuse one after a restart).
    pub async fn start(data_dir: &Path, port: Option<u16>, extra_args: &[&str]) -> Self {
        let port = port.unwrap_or_else(free_port);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let child = Command::new(server_binary())
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra_args)
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
        let server = Self {
            addr,
            data_dir: data_dir.to_path_buf(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "ordo-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server
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
