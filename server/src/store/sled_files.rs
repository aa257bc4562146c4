//! Making sled's own files durable.

use std::{
    collections::HashSet,
    fs::File,
    path::{Path, PathBuf},
    time::SystemTime,
};

/// sled's own flush only issues `sync_file_range`, which survives a process crash but not a
/// power loss, and it never syncs the files it writes for large nodes (`blobs/`). This syncs both.
pub struct DurableFiles {
    data: File,
    blobs_dir: PathBuf,
    blobs_seen: Option<SystemTime>,
    /// Blob files already synced; sled never rewrites a blob file, it writes a new one.
    blobs_synced: HashSet<std::ffi::OsString>,
}

impl DurableFiles {
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        Ok(Self {
            data: File::open(dir.join("db"))?,
            blobs_dir: dir.join("blobs"),
            blobs_seen: None,
            blobs_synced: HashSet::new(),
        })
    }

    pub fn sync(&mut self) -> std::io::Result<()> {
        self.data.sync_data()?;
        // Blobs are rare (nodes over a quarter of a segment): one stat per commit notices them.
        let Ok(modified) = std::fs::metadata(&self.blobs_dir).and_then(|m| m.modified()) else {
            return Ok(());
        };
        if self.blobs_seen == Some(modified) {
            return Ok(());
        }
        let mut present = HashSet::new();
        for entry in std::fs::read_dir(&self.blobs_dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if !self.blobs_synced.contains(&name) && entry.file_type()?.is_file() {
                File::open(entry.path())?.sync_data()?;
            }
            present.insert(name);
        }
        File::open(&self.blobs_dir)?.sync_all()?;
        self.blobs_synced = present;
        self.blobs_seen = Some(modified);
        Ok(())
    }
}
