//! What `--metrics-listen` costs: append throughput and the server's CPU time per append with
//! metrics off and on, in the same run (alternating fresh servers, so drift in the machine hits
//! both alike), and the time of one scrape of a server that has just served the run.

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    report::Row,
    scenarios::{self, AppendKind},
    server::OwnedServer,
    stats::{Latencies, micros},
};

/// For each client count: single-event Publish throughput with metrics off and on, `rounds`
/// times each (off, on, off, on...), each "on" next to its ratio to the "off" just before it,
/// then the mean of each; and `scrapes` timed scrapes of the last server.
pub async fn metrics_cost(
    server_args: &[String],
    clients: &[usize],
    rounds: usize,
    duration: Duration,
    scrapes: usize,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mut scrape_row = None;
    let rounds = rounds.max(1);
    for (i, &c) in clients.iter().enumerate() {
        let (mut off_rates, mut on_rates) = (Vec::new(), Vec::new());
        let (mut off_cpu, mut on_cpu) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            // One server at a time: they share the bench's data dir.
            let (off, cpu, _) = run(server_args, None, c, duration).await?;
            off_cpu.extend(cpu);
            let addr = free_addr()?;
            let (on, cpu, server) = run(server_args, Some(&addr), c, duration).await?;
            on_cpu.extend(cpu);
            if i + 1 == clients.len() && round == rounds {
                scrape_row = Some(scrape_time(&addr, scrapes).await?);
            }
            drop(server);
            let ratio = on.rate / off.rate.max(f64::MIN_POSITIVE);
            off_rates.push(off.rate);
            on_rates.push(on.rate);
            rows.push(named(off, format!("clients={c} off round={round}")));
            rows.push(
                named(on, format!("clients={c} on round={round}"))
                    .extra("ratio_on_off", format!("{ratio:.3}")),
            );
        }
        let (off, on) = (mean(&off_rates), mean(&on_rates));
        let mut summary = Row::new("metrics", format!("clients={c} on, mean"), on, "ops")
            .extra("off_ops", format!("{off:.0}"))
            .extra(
                "ratio_on_off",
                format!("{:.3}", on / off.max(f64::MIN_POSITIVE)),
            );
        if !off_cpu.is_empty() && !on_cpu.is_empty() {
            summary = summary
                .extra("cpu_us_per_op_off", format!("{:.1}", mean(&off_cpu)))
                .extra("cpu_us_per_op_on", format!("{:.1}", mean(&on_cpu)));
        }
        rows.push(summary);
    }
    rows.extend(scrape_row);
    Ok(rows)
}

/// One append run on a fresh server, with metrics on `metrics` if given: its row, the
/// server's CPU microseconds per append (where /proc says), and the server, still running so
/// that it can be scraped afterwards.
async fn run(
    server_args: &[String],
    metrics: Option<&str>,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<(Row, Option<f64>, OwnedServer)> {
    let mut args = server_args.to_vec();
    if let Some(addr) = metrics {
        args.push(format!("--metrics-listen={addr}"));
    }
    let (server, _) = OwnedServer::start(&args).await?;
    let channel = scenarios::connect(&server.addr).await?;
    let cpu_before = server.cpu_seconds();
    let started = Instant::now();
    let row = scenarios::append(
        std::slice::from_ref(&channel),
        AppendKind::Publish { batch: 1 },
        clients,
        duration,
    )
    .await?;
    let ops = row.rate * started.elapsed().as_secs_f64();
    // CPU per append: what metrics cost, steadier than throughput on a shared machine.
    let cpu = match (cpu_before, server.cpu_seconds()) {
        (Some(before), Some(after)) if ops > 0.0 => Some((after - before) * 1e6 / ops),
        _ => None,
    };
    let row = match cpu {
        Some(us) => row.extra("server_cpu_us_per_op", format!("{us:.1}")),
        None => row,
    };
    Ok((row, cpu, server))
}

fn mean(rates: &[f64]) -> f64 {
    rates.iter().sum::<f64>() / rates.len().max(1) as f64
}

fn named(mut row: Row, params: String) -> Row {
    row.scenario = "metrics".into();
    row.params = params;
    row
}

fn free_addr() -> anyhow::Result<String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Ok(format!("127.0.0.1:{port}"))
}

/// `scrapes` sequential GET /metrics, each on a new connection as Prometheus' first scrape
/// would be: their latency, and the size of the last one.
async fn scrape_time(addr: &str, scrapes: usize) -> anyhow::Result<Row> {
    let mut samples = Vec::with_capacity(scrapes);
    let mut body = String::new();
    let started = Instant::now();
    for _ in 0..scrapes.max(1) {
        let one = Instant::now();
        body = scrape(addr).await?;
        samples.push(micros(one.elapsed()));
    }
    let rate = samples.len() as f64 / started.elapsed().as_secs_f64();
    let series = body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    Ok(Row::new("metrics", "scrape".into(), rate, "scrape")
        .latencies(&Latencies::from_samples(samples))
        .extra("bytes", body.len())
        .extra("samples", series))
}

/// One scrape over plain HTTP/1.1; the body.
async fn scrape(addr: &str) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to the metrics port {addr}"))?;
    stream
        .write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .context("scrape took over 10 s")??;
    let text = String::from_utf8(raw).context("scrape is not utf-8")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("scrape is not an http response")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "scrape answered {}",
        head.lines().next().unwrap_or_default()
    );
    Ok(body.to_string())
}
