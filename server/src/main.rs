//! `ordo-server`: flags, logging and signals around [`ordo_server::run`].

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use ordo_server::{ServerConfig, store::SyncMode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Ordo: order commands and resumable event subscriptions over gRPC.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to serve gRPC on.
    #[arg(long, env = "ORDO_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Directory of the sled event log; created if missing.
    #[arg(long, env = "ORDO_DATA_DIR", default_value = "./ordo-data")]
    data_dir: PathBuf,
    /// How an acknowledged append is made durable.
    #[arg(long, env = "ORDO_SYNC", value_enum, default_value_t = Sync::Fdatasync)]
    sync: Sync,
    /// Default heartbeat period for subscriptions, in milliseconds.
    #[arg(long, env = "ORDO_HEARTBEAT_MS", default_value_t = 5000)]
    heartbeat_ms: u64,
    /// Most events one Publish call may carry.
    #[arg(long, env = "ORDO_MAX_EVENTS_PER_PUBLISH", default_value_t = 1000)]
    max_events_per_publish: usize,
    /// Largest event payload in bytes.
    #[arg(long, env = "ORDO_MAX_PAYLOAD_BYTES", default_value_t = 1024 * 1024)]
    max_payload_bytes: usize,
    /// Most line items in one order.
    #[arg(long, env = "ORDO_MAX_ITEMS_PER_ORDER", default_value_t = 100)]
    max_items_per_order: usize,
    /// Largest gRPC request in bytes.
    #[arg(long, env = "ORDO_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    max_message_bytes: usize,
    /// Most Subscribe streams open at once.
    #[arg(long, env = "ORDO_MAX_SUBSCRIBERS", default_value_t = 10_000)]
    max_subscribers: usize,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Sync {
    /// fdatasync before every acknowledgement (group-committed): survives power loss.
    Fdatasync,
    /// No fsync: survives a process crash but NOT a power loss or kernel crash.
    NoFsyncUnsafe,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();

    let mut config = ServerConfig::new(&args.data_dir);
    config.sync = match args.sync {
        Sync::Fdatasync => SyncMode::Fdatasync,
        Sync::NoFsyncUnsafe => SyncMode::NoFsyncUnsafe,
    };
    config.heartbeat_interval = Duration::from_millis(args.heartbeat_ms.max(100));
    config.limits.max_events_per_publish = args.max_events_per_publish;
    config.limits.max_payload_bytes = args.max_payload_bytes;
    config.limits.max_items_per_order = args.max_items_per_order;
    config.limits.max_message_bytes = args.max_message_bytes;
    config.limits.max_subscribers = args.max_subscribers;

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    ordo_server::run(listener, config, shutdown)
        .await
        .context("ordo-server failed")?;
    info!("ordo-server stopped");
    Ok(())
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    shutdown.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    info!("signal received");
    shutdown.cancel();
}
