//! Opening the log: sled (waiting out a holder of its lock that is going away), the journal's
//! recovery and the replay of what sled has not made durable, then the writer and applier
//! threads and the handles that readers, compaction and backups share.

use std::{
    path::Path,
    sync::{Arc, Mutex, RwLock},
    thread,
};

use tokio::sync::{mpsc, watch};
use tracing::info;

use super::{LogOptions, QUEUE_DEPTH, SledLog, SyncMode, TREE};
use crate::store::{
    StoreError,
    applier::{Applier, ApplyJob, QUEUE_FRAMES},
    bodies::Bodies,
    codec::{self, decode_offset},
    compaction::Compactor,
    first::FirstOffset,
    journal::{self, JournalOptions},
    keys,
    pending::Pending,
    progress::{Mark, Progress},
    reader::Reader,
    scrubs,
    sled_files::DurableFiles,
    staging::Stores,
    tail::Tail,
    tombstones::Tombstones,
    view::View,
    writer::Writer,
};

/// sled's settings, shared by the log and by restores (which must write what the log reads).
pub(in crate::store) fn sled_config(dir: &Path) -> sled::Config {
    sled::Config::new()
        .path(dir)
        // The applier flushes on its own schedule; sled's periodic flusher would only add
        // contention.
        .flush_every_ms(None)
        // Larger segments raise sled's blob threshold (a quarter segment) above our node
        // sizes, so nodes stay in the main file; see codec.rs.
        .segment_size(8 * 1024 * 1024)
}

impl SledLog {
    /// Opens (or creates) the log in `dir`: replays the journal frames sled has not made
    /// durable, then starts the writer and the applier. Start-up reads only the frames not yet
    /// in sled and the last event key, so its cost does not grow with the log.
    pub fn open_with(dir: &Path, options: LogOptions) -> Result<Arc<Self>, StoreError> {
        std::fs::create_dir_all(dir)?;
        let config = sled_config(dir);
        let db = open_when_unlocked(&config)?;
        let tree = db.open_tree(TREE)?;
        let applied = match tree.get(keys::JOURNAL_APPLIED)? {
            Some(bytes) => decode_offset(&bytes, "journal applied lsn")?,
            None => 0,
        };
        let sync = options.sync == SyncMode::Fdatasync;
        let bodies = Arc::new(Bodies::new(dir.join("journal")));
        let recovered = journal::recover(
            &dir.join("journal"),
            applied,
            JournalOptions {
                sync,
                max_segment_bytes: options.journal_segment_bytes,
            },
        )?;
        let pending = Arc::new(Pending::default());
        let tail = Arc::new(Tail::default());
        let progress = Arc::new(Progress::new(Mark {
            lsn: applied,
            head: 0,
        }));
        let sealed = recovered.journal.sealed();
        if scrubs::any(&tree)? {
            // A deletion's journal bytes were not zeroed before the last stop.
            sealed.scrub_later();
        }
        let mut applier = Applier {
            db: db.clone(),
            tree: tree.clone(),
            durability: if sync {
                Some(DurableFiles::open(dir)?)
            } else {
                None
            },
            pending: pending.clone(),
            tail: tail.clone(),
            sealed: recovered.journal.sealed(),
            bodies: bodies.clone(),
            flush_every: options.sled_flush_interval,
            backlog: Arc::default(),
            progress: progress.clone(),
        };
        let replayed = recovered.frames.len();
        if let Some(last) = recovered.frames.last().map(|frame| frame.lsn) {
            let jobs: Vec<ApplyJob> = recovered
                .frames
                .into_iter()
                .map(|frame| ApplyJob {
                    lsn: frame.lsn,
                    ops: frame.ops,
                    at: frame.at,
                    bytes: 0,
                    head: 0,
                })
                .collect();
            for batch in jobs.chunks(256) {
                applier.apply(batch)?;
            }
            applier.flush(last)?;
        }
        let first = Arc::new(FirstOffset::load(&tree)?);
        // Offsets are never reused: with every event removed, the head stays below the first.
        let head = last_offset(&tree)?.max(first.get() - 1);
        progress.set_committed(recovered.next_lsn - 1);
        progress.set_applied(Mark {
            lsn: recovered.next_lsn - 1,
            head,
        });
        progress.set_flushed(head);
        let tombstones = Arc::new(Tombstones::load(&tree)?);
        info!(head, first = first.get(), replayed, dir = %dir.display(), ?options, "event log opened");

        let view = View {
            tree: tree.clone(),
            pending: pending.clone(),
        };
        let reader = Reader {
            tree: tree.clone(),
            tail: tail.clone(),
            bodies: bodies.clone(),
        };
        let compactor = Compactor::new(
            tree,
            tail.clone(),
            first.clone(),
            tombstones.clone(),
            progress.clone(),
            bodies.clone(),
            sealed.clone(),
        );
        let (head_tx, head_rx) = watch::channel(head);
        let (sender, receiver) = mpsc::channel(QUEUE_DEPTH);
        let (apply_tx, apply_rx) = std::sync::mpsc::sync_channel(QUEUE_FRAMES);
        let writer = Writer {
            stores: Stores {
                view: view.clone(),
                reader: reader.clone(),
            },
            journal: recovered.journal,
            next_lsn: recovered.next_lsn,
            versions: Default::default(),
            pending,
            head,
            head_tx,
            tail,
            applier: apply_tx,
            backlog: applier.backlog.clone(),
            progress: progress.clone(),
        };
        let applier_thread = thread::Builder::new()
            .name("ordo-log-applier".into())
            .spawn(move || applier.run(apply_rx))?;
        let writer_thread = thread::Builder::new()
            .name("ordo-log-writer".into())
            .spawn(move || writer.run(receiver))?;
        Ok(Arc::new(Self {
            db,
            dir: dir.to_path_buf(),
            view,
            reader,
            sender: RwLock::new(Some(sender)),
            head_rx,
            // Joined in this order on close: the writer's end lets the applier finish.
            threads: std::sync::Mutex::new(vec![writer_thread, applier_thread]),
            first,
            tombstones,
            progress,
            sealed,
            bodies,
            compactor,
            maintenance: Mutex::new(()),
        }))
    }
}

/// The last event of the last chunk in sled: one lookup, whatever the log's size.
fn last_offset(tree: &sled::Tree) -> Result<u64, StoreError> {
    match tree.scan_prefix([keys::EVENT]).next_back() {
        Some(entry) => {
            let (key, value) = entry?;
            let first = decode_offset(&key[1..], "event key")?;
            let count = codec::chunk_events(&value)?;
            Ok(first + count.saturating_sub(1))
        }
        None => Ok(0),
    }
}

/// How long `open` waits for another holder of the data dir's lock (e.g. a server in the same
/// process that is still finishing its shutdown) before giving up.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens sled, retrying while the directory is locked by a holder that is going away, and
/// saying plainly what is wrong if it is not.
fn open_when_unlocked(config: &sled::Config) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Err(sled::Error::Io(err))
                if err.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(sled::Error::Io(err)) if err.to_string().contains("could not acquire lock") => {
                return Err(StoreError::Io(std::io::Error::other(format!(
                    "the data dir is in use by another ordo-server (or another sled user): {err}"
                ))));
            }
            other => return Ok(other?),
        }
    }
}
