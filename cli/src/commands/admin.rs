//! `ordo admin ...`: the log's retained range, compaction, stream deletion and backups.

use std::{
    fs::File,
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::Context;
use ordo_client::{
    OrdoClient,
    v1::{BackupSummary, backup_response::Message},
};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{args::AdminCommand, fail::Failure, out::Out};

/// The file `ordo-server restore` reads in a backup directory.
const BACKUP_FILE: &str = "ordo.backup";
/// Its checksum in `sha256sum` format.
const CHECKSUM_FILE: &str = "ordo.backup.sha256";

pub async fn run(client: &OrdoClient, out: &Out, command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::Info => info(client, out).await,
        AdminCommand::Compact => compact(client, out).await,
        AdminCommand::DeleteStream { stream, yes } => {
            delete_stream(client, out, &stream, yes).await
        }
        AdminCommand::Backup { dir } => backup(client, out, &dir).await,
    }
}

async fn info(client: &OrdoClient, out: &Out) -> anyhow::Result<()> {
    let info = client
        .log_info()
        .await
        .context("cannot read the log info")?;
    if out.json() {
        return out.json_line(&json!({
            "first_offset": info.first_offset,
            "head_offset": info.head_offset,
            "disk_bytes": info.disk_bytes,
            "journal_bytes": info.journal_bytes,
            "pending_deleted_streams": info.pending_deleted_streams,
            "retention_max_age_seconds": info.retention_max_age_seconds,
            "retention_max_bytes": info.retention_max_bytes,
        }));
    }
    let limit = |value: u64, unit: &str| {
        if value == 0 {
            "none".to_string()
        } else {
            format!("{value} {unit}")
        }
    };
    out.line(&format!(
        "offsets {}..={}  disk {} bytes (journal {})  deleted streams awaiting compaction {}  retention: max age {}, max bytes {}",
        info.first_offset,
        info.head_offset,
        info.disk_bytes,
        info.journal_bytes,
        info.pending_deleted_streams,
        limit(info.retention_max_age_seconds, "s"),
        limit(info.retention_max_bytes, "bytes"),
    ))
}

async fn compact(client: &OrdoClient, out: &Out) -> anyhow::Result<()> {
    let done = client.compact().await.context("compaction failed")?;
    if out.json() {
        return out.json_line(&json!({
            "first_offset_before": done.first_offset_before,
            "first_offset_after": done.first_offset_after,
            "events_trimmed": done.events_trimmed,
            "bytes_trimmed": done.bytes_trimmed,
            "streams_removed": done.streams_removed,
            "deleted_events_removed": done.deleted_events_removed,
            "disk_bytes_before": done.disk_bytes_before,
            "disk_bytes_after": done.disk_bytes_after,
        }));
    }
    out.line(&format!(
        "first offset {} -> {}; {} events ({} bytes) trimmed; {} deleted streams ({} events) removed; disk {} -> {} bytes",
        done.first_offset_before,
        done.first_offset_after,
        done.events_trimmed,
        done.bytes_trimmed,
        done.streams_removed,
        done.deleted_events_removed,
        done.disk_bytes_before,
        done.disk_bytes_after,
    ))
}

async fn delete_stream(
    client: &OrdoClient,
    out: &Out,
    stream: &str,
    yes: bool,
) -> anyhow::Result<()> {
    if !yes {
        return Err(Failure::usage(format!(
            "deleting stream {stream:?} cannot be undone; pass --yes to confirm"
        ))
        .into());
    }
    let deleted = client
        .delete_stream(stream)
        .await
        .with_context(|| format!("cannot delete stream {stream}"))?;
    if out.json() {
        return out.json_line(&json!({
            "stream_id": stream,
            "deleted_through_version": deleted.deleted_through_version,
            "deleted_at_offset": deleted.deleted_at_offset,
        }));
    }
    out.line(&format!(
        "deleted {stream} up to version {} (head {}); the next compaction removes it from storage",
        deleted.deleted_through_version, deleted.deleted_at_offset
    ))
}

/// Streams the backup into `dir/ordo.backup.partial`, checks its SHA-256 against the
/// server's summary, syncs it and only then names it `ordo.backup`: a backup cut short never
/// looks complete.
async fn backup(client: &OrdoClient, out: &Out, dir: &Path) -> anyhow::Result<()> {
    let file_path = dir.join(BACKUP_FILE);
    if file_path.exists() {
        return Err(Failure::usage(format!(
            "{} already exists; back up into a new directory",
            file_path.display()
        ))
        .into());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let partial: PathBuf = dir.join(format!("{BACKUP_FILE}.partial"));
    let mut file =
        File::create(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    let mut stream = client.backup().await.context("cannot start the backup")?;
    let mut hash = Sha256::new();
    let mut written = 0u64;
    let mut summary: Option<BackupSummary> = None;
    while let Some(message) = stream
        .message()
        .await
        .map_err(ordo_client::ClientError::from)
        .context("the backup stream broke; the partial file is not a backup")?
    {
        match message.message {
            Some(Message::Data(data)) => {
                file.write_all(&data)
                    .with_context(|| format!("cannot write {}", partial.display()))?;
                hash.update(&data);
                written += data.len() as u64;
            }
            Some(Message::Summary(done)) => summary = Some(done),
            None => {}
        }
    }
    let Some(summary) = summary else {
        return Err(Failure::new(
            1,
            format!(
                "the server ended the backup without its summary; {} is incomplete",
                partial.display()
            ),
        )
        .into());
    };
    let sha256: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if sha256 != summary.sha256 || written != summary.bytes {
        return Err(Failure::new(
            1,
            format!(
                "the backup received ({written} bytes, sha256 {sha256}) is not what the server sent ({} bytes, sha256 {}); take it again",
                summary.bytes, summary.sha256
            ),
        )
        .into());
    }
    file.sync_all()
        .with_context(|| format!("cannot sync {}", partial.display()))?;
    drop(file);
    std::fs::rename(&partial, &file_path)
        .with_context(|| format!("cannot rename {}", partial.display()))?;
    std::fs::write(
        dir.join(CHECKSUM_FILE),
        format!("{sha256}  {BACKUP_FILE}\n"),
    )
    .with_context(|| format!("cannot write {}", dir.join(CHECKSUM_FILE).display()))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))?;
    if out.json() {
        return out.json_line(&json!({
            "dir": dir.display().to_string(),
            "first_offset": summary.first_offset,
            "head_offset": summary.head_offset,
            "bytes": summary.bytes,
            "sha256": summary.sha256,
        }));
    }
    out.line(&format!(
        "backed up offsets {}..={} to {} ({} bytes, sha256 {}); restore with: ordo-server restore {} --data-dir NEW_DATA_DIR",
        summary.first_offset,
        summary.head_offset,
        file_path.display(),
        summary.bytes,
        summary.sha256,
        dir.display()
    ))
}
