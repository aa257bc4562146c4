//! Writing to stdout without panicking: `println!` panics when the reader goes away
//! (`ordo events tail | head`); here that becomes a quiet, successful exit.

use std::io::{self, Write};

/// The stdout writer shared by all commands.
pub struct Out {
    json: bool,
}

/// The reader closed stdout; stop quietly.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed")]
pub struct StdoutClosed;

impl Out {
    pub fn new(json: bool) -> Self {
        Self { json }
    }

    /// True in `--json` mode.
    pub fn json(&self) -> bool {
        self.json
    }

    /// Prints one line (stdout is line-buffered, so tails show up at once).
    pub fn line(&self, text: &str) -> anyhow::Result<()> {
        let mut stdout = io::stdout().lock();
        match writeln!(stdout, "{text}").and_then(|_| stdout.flush()) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
            Err(err) => Err(anyhow::Error::new(err).context("cannot write to stdout")),
        }
    }

    /// A remark for the person at the terminal (progress, hints), on stderr so stdout stays
    /// clean for pipes. Failing to write it is not worth failing the command.
    pub fn note(&self, text: &str) {
        let _ = writeln!(io::stderr(), "{text}");
    }

    /// Prints one JSON value as one line.
    pub fn json_line(&self, value: &serde_json::Value) -> anyhow::Result<()> {
        self.line(&value.to_string())
    }
}
