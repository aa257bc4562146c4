//! The server under test: either one the bench starts itself (the release `ordo-server` next to
//! this binary, on a temp data dir) or an existing one given by address.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use ordo_api::v1::{
    ReadEventsRequest, StartPosition, event_service_client::EventServiceClient,
    start_position::Position,
};
use tonic::transport::Channel;

/// A server the bench owns; killed and its data removed on drop.
pub struct OwnedServer {
    pub addr: String,
    pub data_dir: PathBuf,
    child: Option<Child>,
    remove_dir: bool,
    extra_args: Vec<String>,
}

impl OwnedServer {
    /// Starts `ordo-server` on a fresh temp dir.
    pub async fn start(extra_args: &[String]) -> anyhow::Result<(Self, Duration)> {
        let data_dir = std::env::temp_dir().join(format!("ordo-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data_dir);
        let mut server = Self {
            addr: String::new(),
            data_dir,
            child: None,
            remove_dir: true,
            extra_args: extra_args.to_vec(),
        };
        let took = server.spawn().await?;
        Ok((server, took))
    }

    /// (Re)starts the process on the same data dir; returns the time until it answered a call.
    pub async fn spawn(&mut self) -> anyhow::Result<Duration> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let listen = format!("127.0.0.1:{port}");
        let started = Instant::now();
        let child = Command::new(server_binary()?)
            .arg("--listen")
            .arg(&listen)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra_args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context(
                "cannot start ordo-server; build it with `cargo build --release -p ordo-server`",
            )?;
        self.child = Some(child);
        self.addr = format!("http://{listen}");
        let deadline = started + Duration::from_secs(120);
        loop {
            if let Ok(channel) = Channel::from_shared(self.addr.clone())?.connect().await {
                let mut events = EventServiceClient::new(channel);
                let probe = ReadEventsRequest {
                    start: Some(StartPosition {
                        position: Some(Position::End(true)),
                    }),
                    ..Default::default()
                };
                if events.read_events(probe).await.is_ok() {
                    return Ok(started.elapsed());
                }
            }
            if Instant::now() > deadline {
                bail!("ordo-server did not answer within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Graceful stop (SIGTERM), keeping the data dir.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Peak resident memory of the server so far (Linux `VmHWM`), in MiB.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }

    /// CPU time the server has used so far, user + system (Linux `/proc/<pid>/stat`, in
    /// USER_HZ ticks of 10 ms).
    pub fn cpu_seconds(&self) -> Option<f64> {
        let pid = self.child.as_ref()?.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces), from field 3 on.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        Some(ticks / 100.0)
    }

    pub fn disk_usage_mib(&self) -> f64 {
        dir_size(&self.data_dir) as f64 / (1024.0 * 1024.0)
    }
}

impl Drop for OwnedServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.remove_dir {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

/// `ORDO_SERVER_BIN`, or the `ordo-server` built next to this binary.
fn server_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("ORDO_SERVER_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("bench binary has no directory")?;
    for candidate in [dir.join("ordo-server"), dir.join("../ordo-server")] {
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!(
        "no ordo-server next to {}; run `cargo build --release -p ordo-server` first",
        exe.display()
    )
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
