//! `--log-format json`: one JSON object per line, with the event's fields at the top level.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
};

use serde_json::Value;

use super::*;

/// Starts the binary with `extra` and returns its stdout lines up to (and with) the one that
/// says it is listening.
fn lines_until_listening(extra: &[&str]) -> Vec<String> {
    let data = tempfile::tempdir().expect("dir");
    let port = free_port();
    let mut child = Command::new(ordo_test_harness::server_binary())
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data.path())
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ordo-server");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("no 'listening' line within 20 s; got {lines:#?}")
        });
        let listening = line.contains("ordo-server listening");
        lines.push(line);
        if listening {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

#[test]
fn json_logs_are_one_object_per_line_with_the_fields_at_the_top() {
    let lines = lines_until_listening(&["--log-format", "json"]);
    let objects: Vec<Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let listening = objects.last().expect("a line");
    assert_eq!(listening["message"], "ordo-server listening");
    assert_eq!(listening["level"], "INFO");
    assert_eq!(listening["target"], "ordo_server::server");
    assert!(
        listening["addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{listening}"
    );
    assert_eq!(listening["head"], 0);
    let timestamp = listening["timestamp"].as_str().expect("timestamp");
    assert!(
        timestamp.starts_with("20") && timestamp.ends_with('Z'),
        "{timestamp}"
    );
    // The auth warning carries its fields the same way.
    assert!(
        objects.iter().any(|o| o["level"] == "WARN"
            && o["message"]
                .as_str()
                .is_some_and(|m| m.contains("AUTH IS OFF"))),
        "{objects:#?}"
    );
}

#[test]
fn text_stays_the_default_log_format() {
    let lines = lines_until_listening(&[]);
    let listening = lines.last().expect("a line");
    assert!(
        serde_json::from_str::<Value>(listening).is_err(),
        "{listening}"
    );
    assert!(listening.contains("INFO"), "{listening}");
}
