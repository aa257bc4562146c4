//! The series read from the server's state when it is scraped, rather than recorded as things
//! happen: reading them costs nothing between scrapes, and each server's scrape shows its own
//! state even when tests run several servers in one process.

use std::path::{Path, PathBuf};

use tracing::warn;

use super::recorder::{DISK_BYTES, HEAD_OFFSET, REJECTIONS, WEBHOOK_PENDING};
use crate::{rejections, store::SharedLog, workers::Workers};

/// What a scrape reads.
#[derive(Clone)]
pub struct ScrapeSources {
    pub log: SharedLog,
    pub data_dir: PathBuf,
    /// Webhook gauges are read where webhooks run (see `crate::workers`).
    pub workers: Workers,
}

impl ScrapeSources {
    /// Sets the scrape-time series. Blocking (it walks the data dir and reads one cursor per
    /// enabled webhook, at most `max_webhooks`): run it on a blocking thread.
    pub fn collect(&self) {
        metrics::gauge!(HEAD_OFFSET).set(self.log.head() as f64);
        match disk_bytes(&self.data_dir) {
            Ok(bytes) => metrics::gauge!(DISK_BYTES).set(bytes as f64),
            Err(err) => {
                warn!(error = %err, dir = %self.data_dir.display(), "cannot measure the data dir for ordo_disk_bytes")
            }
        }
        for (reason, count) in rejections::summary() {
            metrics::counter!(REJECTIONS, "reason" => reason).absolute(count);
        }
        let Ok(webhooks) = self.workers.webhooks() else {
            return;
        };
        match webhooks.pending_events() {
            Ok(pending) => metrics::gauge!(WEBHOOK_PENDING).set(pending as f64),
            Err(err) => {
                warn!(error = %err, "cannot read webhook cursors for ordo_webhook_pending_events")
            }
        }
    }
}

/// Space the files under `dir` take on disk: allocated blocks where the platform says (what
/// `du` reports, and what fills a disk), the file length elsewhere.
pub fn disk_bytes(dir: &Path) -> Result<u64, walkdir::Error> {
    let mut total = 0;
    for entry in walkdir::WalkDir::new(dir) {
        let entry = entry?;
        if !entry.file_type().is_file() {
            continue;
        }
        let metadata = entry.metadata()?;
        #[cfg(unix)]
        let bytes = std::os::unix::fs::MetadataExt::blocks(&metadata) * 512;
        #[cfg(not(unix))]
        let bytes = metadata.len();
        total += bytes;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_bytes_counts_nested_files() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(disk_bytes(dir.path()).unwrap(), 0);
        std::fs::create_dir(dir.path().join("journal")).unwrap();
        std::fs::write(dir.path().join("journal/a"), vec![1u8; 64 * 1024]).unwrap();
        std::fs::write(dir.path().join("db"), vec![1u8; 10]).unwrap();
        let bytes = disk_bytes(dir.path()).unwrap();
        assert!(bytes >= 64 * 1024 + 10, "{bytes}");
    }
}
