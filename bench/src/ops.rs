//! Operations on a filled log, over the admin API: how fast compaction trims and what it gives
//! back on disk (`retention`), and what an online backup costs and how fast it goes
//! (`backup`).

use std::time::{Duration, Instant};

use anyhow::Context;
use ordo_api::v1::{
    BackupRequest, CompactRequest, GetLogInfoRequest, GetLogInfoResponse,
    admin_service_client::AdminServiceClient, backup_response::Message,
};
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::{
    report::Row,
    scenarios::{self, AppendKind},
};

const MIB: f64 = 1024.0 * 1024.0;

/// Server flags of the retention scenario: the limit, compaction only when asked, frequent
/// sled flushes (compaction trims only what sled has made durable).
pub fn retention_server_args(keep_mib: u64) -> Vec<String> {
    vec![
        format!("--retention-max-bytes={keep_mib}MiB"),
        "--compaction-interval=24h".into(),
        "--sled-flush-ms=50".into(),
    ]
}

async fn info(admin: &mut AdminServiceClient<Channel>) -> anyhow::Result<GetLogInfoResponse> {
    Ok(admin.get_log_info(GetLogInfoRequest {}).await?.into_inner())
}

fn sled_mib(info: &GetLogInfoResponse) -> f64 {
    (info.disk_bytes - info.journal_bytes) as f64 / MIB
}

/// On a server started with [`retention_server_args`]: `events` appended, one compaction down to
/// the limit (timed), then `cycles` more rounds of `events` appended and compacted. Reports the
/// first trim's rate, sled's bytes on disk after each step and the journal's (whose segments
/// hold the events' bodies) after each round: without reuse of the freed space and deletion of
/// emptied segments they would grow by the first figure every round.
pub async fn retention(channel: &Channel, events: u64, cycles: usize) -> anyhow::Result<Row> {
    let mut admin = AdminServiceClient::new(channel.clone());
    scenarios::prefill(channel, events, |_| {}).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let full = info(&mut admin).await?;
    let started = Instant::now();
    let done = admin.compact(CompactRequest {}).await?.into_inner();
    let took = started.elapsed();
    let compacted = info(&mut admin).await?;
    let mut rounds = Vec::new();
    let mut journal_rounds = Vec::new();
    for _ in 0..cycles {
        scenarios::prefill(channel, events, |_| {}).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        admin.compact(CompactRequest {}).await?;
        // The applier deletes emptied segments after its next sled flush.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = info(&mut admin).await?;
        rounds.push(format!("{:.0}", sled_mib(&now)));
        journal_rounds.push(format!("{:.0}", now.journal_bytes as f64 / MIB));
    }
    let last = info(&mut admin).await?;
    Ok(Row::new(
        "retention",
        format!("events={events} trimmed={}", done.events_trimmed),
        done.events_trimmed as f64 / took.as_secs_f64(),
        "ev",
    )
    .extra("compact_ms", format!("{:.0}", took.as_secs_f64() * 1000.0))
    .extra("sled_mib_full", format!("{:.0}", sled_mib(&full)))
    .extra("sled_mib_compacted", format!("{:.0}", sled_mib(&compacted)))
    .extra("sled_mib_after_each_refill", rounds.join("/"))
    .extra(
        "journal_mib_full",
        format!("{:.0}", full.journal_bytes as f64 / MIB),
    )
    .extra("journal_mib_after_each_refill", journal_rounds.join("/"))
    .extra(
        "journal_mib",
        format!("{:.0}", last.journal_bytes as f64 / MIB),
    ))
}

/// One backup, streamed and counted (not stored): bytes and how long it took.
async fn one_backup(channel: &Channel) -> anyhow::Result<(u64, Duration)> {
    let started = Instant::now();
    let mut stream = AdminServiceClient::new(channel.clone())
        .backup(BackupRequest {})
        .await?
        .into_inner();
    let mut bytes = 0u64;
    let mut complete = false;
    while let Some(message) = stream.message().await? {
        match message.message {
            Some(Message::Data(data)) => bytes += data.len() as u64,
            Some(Message::Summary(summary)) => {
                anyhow::ensure!(summary.bytes == bytes, "backup size mismatch");
                complete = true;
            }
            None => {}
        }
    }
    anyhow::ensure!(complete, "the backup ended without its summary");
    Ok((bytes, started.elapsed()))
}

/// On a filled log: one backup alone; then `clients` closed-loop Publish clients for `duration`
/// without a backup, and again with backups running back to back. Rows: backup throughput
/// idle and under load, and append throughput without and during backups.
pub async fn backup(
    channel: &Channel,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Vec<Row>> {
    let (bytes, took) = one_backup(channel).await?;
    let idle = Row::new(
        "backup",
        "idle".into(),
        bytes as f64 / MIB / took.as_secs_f64(),
        "MiB",
    )
    .extra("backup_mib", format!("{:.1}", bytes as f64 / MIB))
    .extra("backup_ms", format!("{:.0}", took.as_secs_f64() * 1000.0));
    let alone = scenarios::append(
        std::slice::from_ref(channel),
        AppendKind::Publish { batch: 1 },
        clients,
        duration,
    )
    .await?;
    let mut backups: JoinSet<anyhow::Result<(u64, Duration)>> = JoinSet::new();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let channel = channel.clone();
        let stop = stop.clone();
        backups.spawn(async move {
            let (mut bytes, mut took) = (0, Duration::ZERO);
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let (b, t) = one_backup(&channel).await?;
                bytes += b;
                took += t;
            }
            Ok((bytes, took))
        });
    }
    let during = scenarios::append(
        std::slice::from_ref(channel),
        AppendKind::Publish { batch: 1 },
        clients,
        duration,
    )
    .await?;
    stop.store(true, std::sync::atomic::Ordering::Release);
    let (bytes, took) = backups
        .join_next()
        .await
        .context("backup task")??
        .context("backups under load")?;
    let loaded = Row::new(
        "backup",
        format!("during appends c={clients}"),
        bytes as f64 / MIB / took.as_secs_f64(),
        "MiB",
    );
    let mut during = during;
    during.params = format!("clients={clients} during backups");
    Ok(vec![idle, alone, during, loaded])
}
