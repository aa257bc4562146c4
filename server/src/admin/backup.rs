//! Backups out of a running server (`AdminService/Backup`) and the offline tools
//! (`ordo-server backup`, `ordo-server restore`).
//!
//! A backup directory holds [`BACKUP_FILE`] (the log, see `store::backup`) and
//! [`CHECKSUM_FILE`] (its SHA-256 in `sha256sum` format, so `sha256sum -c` checks it).

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
};

use bytes::{Bytes, BytesMut};
use ordo_api::v1::{BackupResponse, BackupSummary as ApiSummary, backup_response::Message};
use tokio::sync::mpsc;
use tracing::warn;

use crate::{
    error::OrdoError,
    store::{BackupSummary, LogOptions, RestoreSummary, SharedLog, SledLog, StoreError, SyncMode},
};

/// The backup file in a backup directory.
pub const BACKUP_FILE: &str = "ordo.backup";
/// Its checksum, as `sha256sum` writes it.
pub const CHECKSUM_FILE: &str = "ordo.backup.sha256";
/// Bytes per `data` message.
const CHUNK_BYTES: usize = 256 * 1024;
/// Messages buffered towards the client: a slow client slows the backup down.
const CHANNEL_DEPTH: usize = 8;

/// Starts a backup of the live log on a blocking thread; its `data` messages, then its
/// summary, arrive on the returned channel. A client that goes away ends the backup.
pub fn stream(log: SharedLog) -> mpsc::Receiver<Result<BackupResponse, OrdoError>> {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter {
            tx: tx.clone(),
            buf: BytesMut::with_capacity(CHUNK_BYTES),
        };
        let result = log.backup(&mut out).and_then(|summary| {
            out.flush()?;
            Ok(summary)
        });
        let last = match result {
            Ok(summary) => Ok(BackupResponse {
                message: Some(Message::Summary(api_summary(&summary))),
            }),
            Err(err) => {
                warn!(error = %err, "backup failed");
                Err(OrdoError::from(err))
            }
        };
        let _ = tx.blocking_send(last);
    });
    rx
}

pub fn api_summary(summary: &BackupSummary) -> ApiSummary {
    ApiSummary {
        first_offset: summary.first_offset,
        head_offset: summary.head,
        bytes: summary.bytes,
        sha256: hex(&summary.sha256),
        created_at: crate::clock::timestamp(summary.created_ms),
    }
}

/// Sends what is written as `data` messages of up to [`CHUNK_BYTES`].
struct ChannelWriter {
    tx: mpsc::Sender<Result<BackupResponse, OrdoError>>,
    buf: BytesMut,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data: Bytes = self.buf.split().freeze();
        self.tx
            .blocking_send(Ok(BackupResponse {
                message: Some(Message::Data(data.to_vec())),
            }))
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "the client went away during the backup",
                )
            })
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK_BYTES - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// `ordo-server backup`: a backup of the data dir of a stopped server into `out_dir` (created;
/// must not hold a backup already). A running server has the data dir locked: back it up with
/// `ordo admin backup` instead.
pub fn backup_offline(data_dir: &Path, out_dir: &Path) -> Result<BackupSummary, StoreError> {
    if !data_dir.join("db").exists() {
        return Err(StoreError::Backup(format!(
            "{} holds no Ordo data (no db file)",
            data_dir.display()
        )));
    }
    let file = backup_path(out_dir);
    if file.exists() {
        return Err(StoreError::Backup(format!(
            "{} already exists; back up into a new directory",
            file.display()
        )));
    }
    std::fs::create_dir_all(out_dir)?;
    let log = SledLog::open_with(
        data_dir,
        LogOptions {
            sync: SyncMode::Fdatasync,
            ..LogOptions::default()
        },
    )?;
    let partial = out_dir.join(format!("{BACKUP_FILE}.partial"));
    let result = (|| -> Result<BackupSummary, StoreError> {
        let mut out = BufWriter::new(File::create(&partial)?);
        let summary = crate::store::EventLog::backup(log.as_ref(), &mut out)?;
        out.into_inner()
            .map_err(|err| StoreError::Io(err.into_error()))?
            .sync_all()?;
        std::fs::rename(&partial, &file)?;
        std::fs::write(
            out_dir.join(CHECKSUM_FILE),
            format!("{}  {BACKUP_FILE}\n", hex(&summary.sha256)),
        )?;
        File::open(out_dir)?.sync_all()?;
        Ok(summary)
    })();
    let closed = crate::store::EventLog::close(log.as_ref());
    let summary = result?;
    closed?;
    Ok(summary)
}

/// `ordo-server restore`: restores the backup in `from` (a backup directory, or the backup file
/// itself) into `data_dir`, which must not exist or be empty.
pub fn restore(from: &Path, data_dir: &Path) -> Result<RestoreSummary, StoreError> {
    let file = if from.is_dir() {
        backup_path(from)
    } else {
        from.to_path_buf()
    };
    crate::store::restore(&file, data_dir)
}

fn backup_path(dir: &Path) -> PathBuf {
    dir.join(BACKUP_FILE)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
