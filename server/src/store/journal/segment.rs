//! Segment files: `<index, 20 digits>.journal`, zero-filled and synced before the writer uses
//! them.
//!
//! Writing zeros (instead of `fallocate`, which leaves "unwritten" extents whose conversion is a
//! metadata change) means every later frame overwrites blocks that already exist, so the
//! `fdatasync` after each group commit flushes data only: no inode, no extent tree, no ext4
//! journal commit. That is the difference between one device round trip and two.

use std::{
    fs::{self, File, OpenOptions},
    io::Write,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

const SUFFIX: &str = "journal";
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

pub fn path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:020}.{SUFFIX}"))
}

/// The segments in `dir`, by index. Leftover temporary files of an interrupted preparation are
/// removed.
pub fn list(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut indexes = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") {
            fs::remove_file(entry.path())?;
            continue;
        }
        if let Some(index) = name
            .strip_suffix(SUFFIX)
            .and_then(|stem| stem.strip_suffix('.'))
            .and_then(|stem| stem.parse::<u64>().ok())
        {
            indexes.push(index);
        }
    }
    indexes.sort_unstable();
    Ok(indexes)
}

/// The segments in `dir`, by index, touching nothing: safe while the journal is live (a
/// preparation's temporary file is simply not listed).
pub fn indexes(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut indexes = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(index) = name
            .to_str()
            .and_then(|name| name.strip_suffix(SUFFIX))
            .and_then(|stem| stem.strip_suffix('.'))
            .and_then(|stem| stem.parse::<u64>().ok())
        {
            indexes.push(index);
        }
    }
    indexes.sort_unstable();
    Ok(indexes)
}

/// Creates segment `index` of `bytes` zeros, durably: written under a temporary name, synced,
/// renamed, and the directory synced, so a crash leaves either no segment or a whole one.
pub fn create(dir: &Path, index: u64, bytes: u64) -> std::io::Result<()> {
    let final_path = path(dir, index);
    let tmp = final_path.with_extension(format!("{SUFFIX}.tmp"));
    let mut file = File::create(&tmp)?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(ZEROS.len() as u64) as usize;
        file.write_all(&ZEROS[..n])?;
        left -= n as u64;
    }
    file.sync_all()?;
    fs::rename(&tmp, &final_path)?;
    sync_dir(dir)
}

/// Zeroes `from..to` of an open segment (extending it if shorter) and syncs it: recovery's way
/// of cutting off a torn tail so that no stale bytes are ever read as frames again.
pub fn zero_range(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    zero_bytes(file, from, to)?;
    file.sync_all()
}

/// Zeroes `from..to` of an open segment, without syncing.
pub fn zero_bytes(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// The lsn of a segment's first frame, read from its header alone (`None`: no whole frame
/// header there, or the segment is gone). How recovery and backups skip the segments that hold
/// only event bodies sled already points at, without reading them.
pub fn first_lsn(dir: &Path, index: u64) -> std::io::Result<Option<u64>> {
    let file = match File::open(path(dir, index)) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let mut header = [0u8; super::HEADER_LEN];
    match file.read_exact_at(&mut header, 0) {
        Ok(()) => Ok(super::frame::first_lsn(&header)),
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(err) => Err(err),
    }
}

pub fn open(dir: &Path, index: u64) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path(dir, index))
}

pub fn remove(dir: &Path, index: u64) -> std::io::Result<()> {
    match fs::remove_file(path(dir, index)) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
