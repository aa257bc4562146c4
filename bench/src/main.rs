//! `ordo-bench`: measures Ordo the way users feel it — durable appends per second, producer to
//! subscriber latency, catch-up speed, fan-out and scale — against a server it starts itself
//! (release `ordo-server`, temp data dir) or the ones given with `--addr` (several nodes serving
//! one log: clients and subscribers spread over them).
//!
//! Shapes follow the peers' published measurements (256-byte payloads, closed-loop clients at
//! 1/16/64/256), and every append figure comes with its ceiling measured in the same run.

mod ceiling;
mod consume;
mod metrics;
mod ops;
mod progress;
mod report;
mod scenarios;
mod server;
mod stats;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use report::Row;
use scenarios::AppendKind;
use server::OwnedServer;
use tonic::transport::Channel;

/// Benchmarks an Ordo server. Build first: `cargo build --release -p ordo-server -p ordo-bench`.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    after_help = "Examples:\n  target/release/ordo-bench all\n  target/release/ordo-bench --addr http://127.0.0.1:50051,http://127.0.0.1:50052 append --clients 1,16\n  target/release/ordo-bench append --clients 1,16,64\n  target/release/ordo-bench append-stream --streams 1,16 --window 1000\n  target/release/ordo-bench catchup --events 1000000 --subscribers 1,4\n  target/release/ordo-bench consume --events 50000 --members 1,4\n  target/release/ordo-bench metrics --clients 1,16\n  target/release/ordo-bench all --quick --json"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Args)]
struct Global {
    /// Benchmark this running server instead of starting one (fan-out RSS and scale then need
    /// the bench's own server and are skipped). Several, comma-separated (nodes serving one
    /// log): clients and subscribers are spread over them round-robin, e2e's producer writes
    /// to the first and its subscribers read from the others, consume uses the first.
    #[arg(long, global = true, env = "ORDO_BENCH_ADDR", value_delimiter = ',')]
    addr: Vec<String>,
    /// Print JSON lines instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Extra flags for the server the bench starts (repeatable), e.g. `--server-arg=--sync=no-fsync-unsafe`.
    #[arg(long = "server-arg", global = true, allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Seconds per measured run.
    #[arg(long, global = true, default_value_t = 5.0)]
    duration: f64,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Single-event Publish and CreateOrder calls from C closed-loop clients, each next to the
    /// ceiling (a bare tonic echo) at the same C, measured just before it.
    Append {
        #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
        clients: Vec<usize>,
    },
    /// The bare gRPC ceiling alone: an in-process tonic server answering Publish without storage.
    Ceiling {
        #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
        clients: Vec<usize>,
    },
    /// 256-byte write + fdatasync on the data dir's filesystem: the floor of one durable append.
    Disk {
        /// Directory on the filesystem to measure (default: the bench's temp dir, where its
        /// server keeps its data).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Publish with many events per call.
    AppendBatch {
        #[arg(long, default_value_t = 4)]
        clients: usize,
        #[arg(long, default_value_t = 100)]
        batch: usize,
    },
    /// AppendStream: S streams (one connection each), each with up to W events in flight and a
    /// durable ack per event: events/s and ack latency.
    AppendStream {
        #[arg(long, value_delimiter = ',', default_value = "1,16")]
        streams: Vec<usize>,
        #[arg(long, default_value_t = 1000)]
        window: usize,
    },
    /// Producer at a fixed rate, K live subscribers: send-to-receipt latency.
    E2e {
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        rate: Vec<u64>,
        #[arg(long, default_value_t = 1)]
        subscribers: usize,
    },
    /// Pre-filled log, subscribers from offset 1 until caught_up.
    Catchup {
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        #[arg(long, value_delimiter = ',', default_value = "1,4")]
        subscribers: Vec<usize>,
    },
    /// Pre-filled log, a new consumer group per row with M members acking every delivery (one
    /// ack request per batch of deliveries read together): acked events/s until settled.
    Consume {
        #[arg(long, default_value_t = 50_000)]
        events: u64,
        #[arg(long, value_delimiter = ',', default_value = "1,4")]
        members: Vec<usize>,
        /// The group's max_in_flight: deliveries one member holds unacked (server default 100).
        #[arg(long, default_value_t = 100)]
        max_in_flight: u32,
    },
    /// Many live subscribers while appending: delivery latency and the server's peak RSS.
    Fanout {
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        #[arg(long, default_value_t = 1000)]
        rate: u64,
    },
    /// Append latency and start time with an empty log vs N stored events.
    Scale {
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
    },
    /// Retention on the bench's own server: N events appended, one compaction down to
    /// --keep-mib (timed), then --cycles rounds of N more appended and compacted: trim rate and
    /// sled's bytes on disk at each step.
    Retention {
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        #[arg(long, default_value_t = 16)]
        keep_mib: u64,
        #[arg(long, default_value_t = 3)]
        cycles: usize,
    },
    /// Online backups of a log of N events: throughput alone and during appends, and the
    /// appends' throughput (C closed-loop Publish clients) without and during backups.
    Backup {
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        #[arg(long, default_value_t = 16)]
        clients: usize,
    },
    /// Single-event Publish throughput with `--metrics-listen` off and on (fresh servers,
    /// alternating, `rounds` each), and the time of one scrape.
    Metrics {
        #[arg(long, value_delimiter = ',', default_value = "16")]
        clients: Vec<usize>,
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        #[arg(long, default_value_t = 50)]
        scrapes: usize,
    },
    /// Every scenario in turn (with `--quick`: tiny sizes, for CI smoke runs).
    All {
        #[arg(long)]
        quick: bool,
    },
}

/// Longest a `consume` row may take before the bench gives up on it.
const CONSUME_TIMEOUT: Duration = Duration::from_secs(600);

/// The server's allocator, so the bench's receivers (which share the machine's cores with the
/// server in `fanout`) do not pay glibc's malloc per message.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let g = &cli.global;
    let duration = Duration::from_secs_f64(g.duration);
    if !g.json {
        println!("{}", report::table_header());
    }
    let emit = |row: &Row| {
        if g.json {
            println!("{}", row.json_line());
        } else {
            println!("{}", row.table_line());
        }
    };
    match &cli.scenario {
        Scenario::Append { clients } => {
            let floor = disk_floor(g, clients).await?;
            if let Some(disk) = &floor {
                emit(disk);
            }
            let (_owned, channels) = target(g).await?;
            for row in appends(&channels, clients, duration, floor.as_ref()).await? {
                emit(&row);
            }
        }
        Scenario::Ceiling { clients } => {
            let ceiling = ceiling::Ceiling::start().await?;
            for &c in clients {
                emit(&ceiling.measure(c, duration).await?);
            }
        }
        Scenario::Disk { dir } => {
            let dir = dir.clone().unwrap_or_else(std::env::temp_dir);
            emit(&tokio::task::spawn_blocking(move || ceiling::disk(&dir, duration)).await??);
        }
        Scenario::AppendBatch { clients, batch } => {
            let (_owned, channels) = target(g).await?;
            emit(&scenarios::append_batch(&channels, *clients, *batch, duration).await?);
        }
        Scenario::AppendStream { streams, window } => {
            let (owned, _channels) = target(g).await?;
            let addrs = addresses(g, owned.as_ref());
            for &s in streams {
                emit(&scenarios::append_stream(&addrs, s, *window, duration).await?);
            }
        }
        Scenario::E2e { rate, subscribers } => {
            let (_owned, channels) = target(g).await?;
            for &r in rate {
                emit(&e2e(&channels, r, *subscribers, duration).await?);
            }
        }
        Scenario::Catchup {
            events,
            subscribers,
        } => {
            let (_owned, channels) = target(g).await?;
            fill(&channels[0], *events).await?;
            for &s in subscribers {
                emit(&scenarios::catchup(&channels, s).await?);
            }
        }
        Scenario::Consume {
            events,
            members,
            max_in_flight,
        } => {
            let (owned, channels) = target(g).await?;
            fill(&channels[0], *events).await?;
            let addr = addresses(g, owned.as_ref()).swap_remove(0);
            for &m in members {
                emit(&consume::run(&addr, m, *max_in_flight, CONSUME_TIMEOUT).await?);
            }
        }
        Scenario::Fanout { subscribers, rate } => {
            emit(&fanout(g, *subscribers, *rate, duration).await?);
        }
        Scenario::Scale { events } => {
            for row in scale(g, *events).await? {
                emit(&row);
            }
        }
        Scenario::Retention {
            events,
            keep_mib,
            cycles,
        } => {
            if !g.addr.is_empty() {
                anyhow::bail!(
                    "retention sets the server's flags, so it needs the bench's own server (drop --addr)"
                );
            }
            let mut args = ops::retention_server_args(*keep_mib);
            args.extend(g.server_args.iter().cloned());
            let (_server, _) = OwnedServer::start(&args).await?;
            let channel = scenarios::connect(&_server.addr).await?;
            emit(&ops::retention(&channel, *events, *cycles).await?);
        }
        Scenario::Backup { events, clients } => {
            let (_owned, channels) = target(g).await?;
            fill(&channels[0], *events).await?;
            for row in ops::backup(&channels[0], *clients, duration).await? {
                emit(&row);
            }
        }
        Scenario::Metrics {
            clients,
            rounds,
            scrapes,
        } => {
            anyhow::ensure!(
                g.addr.is_empty(),
                "metrics starts its own servers with and without --metrics-listen (drop --addr)"
            );
            for row in
                metrics::metrics_cost(&g.server_args, clients, *rounds, duration, *scrapes).await?
            {
                emit(&row);
            }
        }
        Scenario::All { quick } => {
            let (clients, batch_dur, events, fan, big) = if *quick {
                (vec![1, 4], Duration::from_millis(500), 5_000, 50, 20_000)
            } else {
                (vec![1, 16, 64, 256], duration, 1_000_000, 1000, 10_000_000)
            };
            let run = if *quick {
                Duration::from_millis(500)
            } else {
                duration
            };
            {
                let floor = disk_floor(g, &clients).await?;
                if let Some(disk) = &floor {
                    emit(disk);
                }
                let (_owned, channels) = target(g).await?;
                for row in appends(&channels, &clients, run, floor.as_ref()).await? {
                    emit(&row);
                }
                emit(&scenarios::append_batch(&channels, 4, 100, batch_dur).await?);
                let addrs = addresses(g, _owned.as_ref());
                for streams in [1, 16] {
                    emit(&scenarios::append_stream(&addrs, streams, 1000, batch_dur).await?);
                }
                for rate in [1000, 10_000] {
                    emit(&e2e(&channels, rate, 1, run).await?);
                }
            }
            {
                let (_owned, channels) = target(g).await?;
                fill(&channels[0], events).await?;
                for s in [1, 4] {
                    emit(&scenarios::catchup(&channels, s).await?);
                }
            }
            {
                let (owned, channels) = target(g).await?;
                let consumed = if *quick { 5_000 } else { 50_000 };
                fill(&channels[0], consumed).await?;
                let addr = addresses(g, owned.as_ref()).swap_remove(0);
                for m in [1, 4] {
                    emit(&consume::run(&addr, m, 100, CONSUME_TIMEOUT).await?);
                }
            }
            emit(&fanout(g, fan, 1000, run).await?);
            for row in scale(g, big).await? {
                emit(&row);
            }
            if g.addr.is_empty() {
                let scrapes = if *quick { 5 } else { 50 };
                for row in metrics::metrics_cost(&g.server_args, &[16], 1, run, scrapes).await? {
                    emit(&row);
                }
            }
        }
    }
    Ok(())
}

/// For each client count: the ceiling, then Publish and CreateOrder with their ratio to it. At
/// one client, Publish also gets the floor its p50 is held to: ceiling p50 + disk p50 + 0.1 ms.
async fn appends(
    channels: &[Channel],
    clients: &[usize],
    duration: Duration,
    disk: Option<&Row>,
) -> anyhow::Result<Vec<Row>> {
    let echo = ceiling::Ceiling::start().await?;
    let mut rows = Vec::new();
    for &c in clients {
        let bare = echo.measure(c, duration).await?;
        for kind in [AppendKind::Publish { batch: 1 }, AppendKind::CreateOrder] {
            let mut row =
                ceiling::against(scenarios::append(channels, kind, c, duration).await?, &bare);
            if c == 1
                && matches!(kind, AppendKind::Publish { .. })
                && let Some(disk) = disk
            {
                let floor = bare.p50_ms + disk.p50_ms + 0.1;
                row = row.extra("p50_floor_ms", format!("{floor:.3}"));
            }
            rows.push(row);
        }
        rows.insert(rows.len() - 2, bare);
    }
    Ok(rows)
}

/// The disk's fdatasync floor, when a single-client run will be held to it.
async fn disk_floor(g: &Global, clients: &[usize]) -> anyhow::Result<Option<Row>> {
    if !clients.contains(&1) || !g.addr.is_empty() {
        return Ok(None);
    }
    let probe = Duration::from_secs_f64(g.duration.min(2.0));
    let row =
        tokio::task::spawn_blocking(move || ceiling::disk(&std::env::temp_dir(), probe)).await??;
    Ok(Some(row))
}

/// The bench's own server (kept alive by the returned guard) or the ones at `--addr`: one
/// channel per server, in `--addr` order (never empty).
async fn target(g: &Global) -> anyhow::Result<(Option<OwnedServer>, Vec<Channel>)> {
    if g.addr.is_empty() {
        let (server, _) = OwnedServer::start(&g.server_args).await?;
        let channel = scenarios::connect(&server.addr).await?;
        return Ok((Some(server), vec![channel]));
    }
    let mut channels = Vec::with_capacity(g.addr.len());
    for addr in &g.addr {
        channels.push(scenarios::connect(addr).await?);
    }
    Ok((None, channels))
}

/// The address of the bench's own server, or those of `--addr` (never empty).
fn addresses(g: &Global, owned: Option<&OwnedServer>) -> Vec<String> {
    match owned {
        Some(server) => vec![server.addr.clone()],
        None => g.addr.clone(),
    }
}

/// `e2e` on one server, or across servers: the producer writes to the first and the
/// subscribers read from the others, so the latency includes one node learning of another's
/// append (`nodes=N` in the row's params).
async fn e2e(
    channels: &[Channel],
    rate: u64,
    subscribers: usize,
    duration: Duration,
) -> anyhow::Result<Row> {
    let Some((producer, others)) = channels.split_first() else {
        anyhow::bail!("no server to measure");
    };
    if others.is_empty() {
        return scenarios::e2e(producer, channels, rate, subscribers, duration, "e2e").await;
    }
    let mut row = scenarios::e2e(producer, others, rate, subscribers, duration, "e2e").await?;
    row.params.push_str(&scenarios::nodes(channels.len()));
    let on = match others.len() {
        1 => "2".to_string(),
        n => format!("2-{}", n + 1),
    };
    Ok(row.extra("producer_node", 1).extra("subscriber_nodes", on))
}

async fn fill(channel: &Channel, events: u64) -> anyhow::Result<()> {
    let bar = progress::progress_bar(events, "events prefilled");
    scenarios::prefill(channel, events, |done| bar.set_position(done)).await?;
    bar.finish_and_clear();
    Ok(())
}

async fn fanout(
    g: &Global,
    subscribers: usize,
    rate: u64,
    duration: Duration,
) -> anyhow::Result<Row> {
    let (owned, _) = target(g).await?;
    let addrs = addresses(g, owned.as_ref());
    // HTTP/2 caps concurrent streams per connection: spread subscribers over connections (and
    // the connections over the servers); the producer uses the first.
    let mut channels = Vec::new();
    for i in 0..subscribers.div_ceil(100).max(addrs.len()) {
        channels.push(scenarios::connect(&addrs[i % addrs.len()]).await?);
    }
    let mut row = scenarios::e2e(
        &channels[0],
        &channels,
        rate,
        subscribers,
        duration,
        "fanout",
    )
    .await?;
    row.params.push_str(&scenarios::nodes(addrs.len()));
    Ok(match owned.as_ref().and_then(OwnedServer::peak_rss_mib) {
        Some(rss) => row.extra("server_peak_rss_mib", format!("{rss:.0}")),
        None => row,
    })
}

/// Start time and single-client append latency on an empty log, then after `events` appends.
async fn scale(g: &Global, events: u64) -> anyhow::Result<Vec<Row>> {
    if !g.addr.is_empty() {
        anyhow::bail!(
            "scale restarts the server, so it needs the bench's own server (drop --addr)"
        );
    }
    let probe = Duration::from_secs_f64(g.duration.min(3.0));
    let (mut server, start_empty) = OwnedServer::start(&g.server_args).await?;
    let channel = scenarios::connect(&server.addr).await?;
    let empty = scenarios::append(
        std::slice::from_ref(&channel),
        AppendKind::Publish { batch: 1 },
        1,
        probe,
    )
    .await?;
    fill(&channel, events).await?;
    server.stop()?;
    let start_full = server.spawn().await?;
    let channel = scenarios::connect(&server.addr).await?;
    let full = scenarios::append(
        std::slice::from_ref(&channel),
        AppendKind::Publish { batch: 1 },
        1,
        probe,
    )
    .await?;
    let mut rows = Vec::new();
    for (label, row, start) in [("0", empty, start_empty), ("filled", full, start_full)] {
        let stored = if label == "0" { 0 } else { events };
        let mut row = row.extra("start_ms", format!("{:.0}", start.as_secs_f64() * 1000.0));
        row.scenario = "scale".into();
        row.params = format!("stored={stored}");
        rows.push(row);
    }
    let disk = server.disk_usage_mib();
    if let Some(last) = rows.last_mut() {
        last.extra.push(("disk_mib".into(), format!("{disk:.0}")));
    }
    Ok(rows)
}
