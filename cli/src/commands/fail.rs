//! Turns any error into one line on stderr and an exit code: what failed, why, and what to do.

use ordo_client::ClientError;

use super::out::StdoutClosed;

/// Exit code for a request the server refused or that failed.
pub const EXIT_FAILED: i32 = 1;
/// Exit code for bad usage or an invalid argument (same as clap's usage errors).
pub const EXIT_USAGE: i32 = 2;
/// Exit code when the server cannot be reached (sysexits `EX_UNAVAILABLE`).
pub const EXIT_UNAVAILABLE: i32 = 69;

/// An error raised by the CLI itself, with its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Bad input from the user: exit 2.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(EXIT_USAGE, message)
    }
}

/// The message (without the `error: ` prefix) and exit code for `err`, or `None` when the
/// program should exit quietly with success (stdout closed by the reader).
pub fn report(err: &anyhow::Error, addr: &str) -> Option<(String, i32)> {
    if err.downcast_ref::<StdoutClosed>().is_some() {
        return None;
    }
    // `{:#}` joins the context chain: "cannot create order: invalid argument: ...".
    let text = format!("{err:#}");
    if let Some(failure) = err.downcast_ref::<Failure>() {
        return Some((text, failure.code));
    }
    let Some(client) = err.chain().find_map(|e| e.downcast_ref::<ClientError>()) else {
        return Some((text, EXIT_FAILED));
    };
    let (hint, code) = match client {
        ClientError::Connect { .. } | ClientError::Unavailable(_) => (
            format!("is ordo-server running at {addr}? Set --addr or ORDO_ADDR"),
            EXIT_UNAVAILABLE,
        ),
        ClientError::InvalidArgument(_) => ("fix the arguments (see --help)".into(), EXIT_USAGE),
        ClientError::OutOfRange(_) => (
            "use an offset this server has (see `ordo events read`)".into(),
            EXIT_USAGE,
        ),
        ClientError::Config(_) => (
            "check --addr, --token and the TLS flags (--ca-cert, --client-cert)".into(),
            EXIT_USAGE,
        ),
        ClientError::NotFound(_) => ("check the id (see `ordo orders list`)".into(), EXIT_FAILED),
        ClientError::Conflict(_) => (
            "someone changed it first: re-read the current version (`ordo orders get ID`, `ordo events read --stream S`) and retry".into(),
            EXIT_FAILED,
        ),
        ClientError::FailedPrecondition(_) => (
            "the current state does not allow this (see `ordo orders get ID`)".into(),
            EXIT_FAILED,
        ),
        ClientError::AlreadyExists(_) => {
            ("use a new idempotency key or event id".into(), EXIT_FAILED)
        }
        ClientError::Unauthenticated(_) => ("set --token or ORDO_TOKEN".into(), EXIT_FAILED),
        ClientError::PermissionDenied(_) => (
            "use a token with the scope this command needs (see docs/security.md)".into(),
            EXIT_FAILED,
        ),
        ClientError::Cursor { .. } => ("fix or delete the cursor file".into(), EXIT_USAGE),
        _ => (String::new(), EXIT_FAILED),
    };
    let text = if hint.is_empty() {
        text
    } else {
        format!("{text}; {hint}")
    };
    // One line, whatever the server put in its message.
    Some((text.replace('\n', " "), code))
}
