//! A subscription cursor in a file, so a consumer process that restarts resumes where it left
//! off instead of replaying the log or skipping ahead.
//!
//! The file holds one decimal offset: "every matching event up to here was processed". It is
//! replaced atomically (write a temp file in the same directory, then rename), so a crash leaves
//! either the old or the new value, never a torn one. It is not fsync'd per write: after a
//! power loss it may be one step behind, which means a few events are delivered again, never
//! skipped.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use crate::error::ClientError;

/// A cursor stored in a file.
#[derive(Debug, Clone)]
pub struct CursorFile {
    path: PathBuf,
}

impl CursorFile {
    /// A cursor at `path`. Nothing is read or created until [`CursorFile::load`] or
    /// [`CursorFile::save`].
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved offset, or `None` when the file does not exist yet.
    pub fn load(&self) -> Result<Option<u64>, ClientError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(self.error(err)),
        };
        text.trim().parse::<u64>().map(Some).map_err(|_| {
            self.error(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "expected one offset (a whole number), found {:?}; fix or delete the file",
                    text.trim()
                ),
            ))
        })
    }

    /// Replaces the saved offset atomically.
    pub fn save(&self, offset: u64) -> Result<(), ClientError> {
        let tmp = self.temp_path();
        let write = || -> io::Result<()> {
            let mut file = fs::File::create(&tmp)?;
            writeln!(file, "{offset}")?;
            drop(file);
            fs::rename(&tmp, &self.path)
        };
        write().map_err(|err| {
            let _ = fs::remove_file(&tmp);
            self.error(err)
        })
    }

    /// A sibling of the cursor file, so the rename stays on one file system.
    fn temp_path(&self) -> PathBuf {
        let mut name = self
            .path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| "cursor".into());
        name.push(format!(".tmp-{}", std::process::id()));
        self.path.with_file_name(name)
    }

    fn error(&self, source: io::Error) -> ClientError {
        ClientError::Cursor {
            path: self.path.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_then_saved_then_replaced() -> Result<(), ClientError> {
        let dir = std::env::temp_dir().join(format!("ordo-cursor-test-{}", std::process::id()));
        let _ = fs::create_dir_all(&dir);
        let cursor = CursorFile::new(dir.join("cursor"));
        let _ = fs::remove_file(cursor.path());
        assert_eq!(cursor.load()?, None);
        cursor.save(7)?;
        assert_eq!(cursor.load()?, Some(7));
        cursor.save(12)?;
        assert_eq!(cursor.load()?, Some(12));
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn garbage_is_an_error_not_a_restart() {
        let dir = std::env::temp_dir().join(format!("ordo-cursor-bad-{}", std::process::id()));
        let _ = fs::create_dir_all(&dir);
        let cursor = CursorFile::new(dir.join("cursor"));
        let _ = fs::write(cursor.path(), "not a number");
        assert!(matches!(cursor.load(), Err(ClientError::Cursor { .. })));
        let _ = fs::remove_dir_all(&dir);
    }
}
