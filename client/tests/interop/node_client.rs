//! The Node.js example (`examples/node/`) against the real `ordo-server` binary. The example
//! loads `proto/` at run time with `@grpc/proto-loader`; this test installs its npm packages when
//! missing (and Node.js itself from the system's package manager when there is no `node`; if
//! that fails the test fails, it never skips). Then the producer creates an order and publishes,
//! and the consumer prints history, one caught-up marker and live events, across a dropped
//! connection, a `kill -9` restart of the server and a restart of its own from its cursor file;
//! and both work with a bearer token over TLS and over mutual TLS.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use ordo_test_harness::{ChildServer, pki::pki};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{ChildStdout, Command},
    sync::OnceCell,
};

fn example_dir() -> PathBuf {
    crate::repo().join("examples/node")
}

/// Runs a command to completion; `None` when it cannot be started.
async fn run(program: &str, args: &[&str], dir: &Path) -> Option<std::process::Output> {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .await
        .ok()
}

/// The major version of the `node` on the PATH, if there is one.
async fn node_major() -> Option<u32> {
    let output = run("node", &["--version"], &crate::repo()).await?;
    let version = String::from_utf8_lossy(&output.stdout);
    version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Installs Node.js and npm with the system's package manager (as root, or with `sudo -n`).
async fn install_node() -> Result<(), String> {
    let root = run("id", &["-u"], &crate::repo())
        .await
        .is_some_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let managers: [&[&str]; 4] = [
        &["apt-get", "install", "-y", "-q", "nodejs", "npm"],
        &["dnf", "install", "-y", "nodejs", "npm"],
        &["apk", "add", "nodejs", "npm"],
        &["brew", "install", "node"],
    ];
    let mut tried = Vec::new();
    for command in managers {
        if run("which", &[command[0]], &crate::repo())
            .await
            .is_none_or(|o| !o.status.success())
        {
            continue;
        }
        let (program, args): (&str, Vec<&str>) = if root || command[0] == "brew" {
            (command[0], command[1..].to_vec())
        } else {
            ("sudo", [&["-n"], command].concat())
        };
        if command[0] == "apt-get" {
            let update: Vec<&str> = if program == "sudo" {
                vec!["-n", "apt-get", "update", "-q"]
            } else {
                vec!["update", "-q"]
            };
            run(program, &update, &crate::repo()).await;
        }
        match run(program, &args, &crate::repo()).await {
            Some(output) if output.status.success() => return Ok(()),
            Some(output) => tried.push(format!(
                "`{program} {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            )),
            None => tried.push(format!("`{program}` could not be started")),
        }
    }
    Err(if tried.is_empty() {
        "no supported package manager (apt-get, dnf, apk, brew) found".to_string()
    } else {
        tried.join("; ")
    })
}

/// Node.js 18+ and the example's npm packages, once per test binary.
async fn node_ready() {
    static READY: OnceCell<()> = OnceCell::const_new();
    READY
        .get_or_init(|| async {
            if node_major().await.is_none()
                && let Err(why) = install_node().await
            {
                panic!(
                    "this test needs Node.js 18+ with npm (`node` is not on the PATH) and \
                     could not install it: {why}. Install Node.js, e.g. \
                     `apt-get install nodejs npm`, and run the test again"
                );
            }
            let major = node_major().await.expect("node runs after installing it");
            assert!(
                major >= 18,
                "this test needs Node.js 18 or newer, found v{major}"
            );
            let modules = example_dir().join("node_modules/@grpc");
            if !(modules.join("grpc-js").exists() && modules.join("proto-loader").exists()) {
                let output = run(
                    "npm",
                    &["ci", "--no-audit", "--no-fund", "--loglevel=error"],
                    &example_dir(),
                )
                .await
                .expect("npm must come with node (install the npm package)");
                assert!(
                    output.status.success(),
                    "npm ci in examples/node failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        })
        .await;
}

fn node(script: &str) -> Command {
    let mut command = Command::new("node");
    command
        .arg(example_dir().join(script))
        .env_remove("ORDO_ADDR")
        .env_remove("ORDO_CA_CERT")
        .env_remove("ORDO_TLS_DOMAIN")
        .env_remove("ORDO_TOKEN")
        .stdin(Stdio::null());
    command
}

fn parse(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

async fn run_json(mut command: Command) -> Vec<Value> {
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("node script finishes")
        .expect("run node");
    assert!(
        output.status.success(),
        "node failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    parse(&output.stdout)
}

/// A uint64 the example prints as a decimal string.
fn offset(value: &Value) -> u64 {
    value
        .as_str()
        .unwrap_or_else(|| panic!("offsets are strings: {value}"))
        .parse()
        .expect("decimal offset")
}

/// The offsets of the `{"event": ...}` lines, in output order.
fn event_offsets(lines: &[Value]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|v| v.get("event"))
        .map(offset)
        .collect()
}

/// The producer's published offsets, after checking its order lines.
fn check_producer(lines: &[Value], first: u64) -> Vec<u64> {
    assert_eq!(offset(&lines[0]["offset"]), first, "{lines:?}");
    assert!(lines[0]["order_created"].is_string(), "{lines:?}");
    assert_eq!(offset(&lines[1]["offset"]), first + 1, "{lines:?}");
    assert_eq!(lines[1]["status"], "ORDER_STATUS_PAID", "{lines:?}");
    assert_eq!(lines.last().expect("read")["customer"], "node-customer");
    lines
        .iter()
        .filter(|v| v.get("published").is_some())
        .map(|v| offset(&v["offset"]))
        .collect()
}

/// Reads JSON lines from a running consumer until one has `key`.
async fn read_until(lines: &mut Lines<BufReader<ChildStdout>>, seen: &mut Vec<Value>, key: &str) {
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no {key:?} line within 60 s: {seen:?}"))
            .expect("read")
            .unwrap_or_else(|| panic!("consumer exited before {key:?}: {seen:?}"));
        let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
        let found = value.get(key).is_some();
        seen.push(value);
        if found {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_consumer_sees_every_event_once_across_a_disconnect_a_kill9_and_its_own_restart() {
    node_ready().await;
    let data = tempfile::tempdir().expect("temp dir");
    let work = tempfile::tempdir().expect("temp dir");
    let cursor = work.path().join("consumer.cursor");
    let cursor_arg = cursor.to_str().expect("utf-8 path");
    let mut server = ChildServer::start(data.path(), None, &[]).await;
    let addr = server.addr.to_string();

    // Producer: order created (1) and paid (2), three published events (3..=5).
    let mut producer = node("producer.js");
    producer.args(["--addr", &addr, "--events", "3"]);
    assert_eq!(check_producer(&run_json(producer).await, 1), [3, 4, 5]);

    // The consumer follows the log with a cursor file, dropping its connection once after two
    // events (during the history).
    let mut child = node("consumer.js")
        .args(["--addr", &addr, "--cursor", cursor_arg, "--count", "10"])
        .args(["--disconnect-after", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn consumer");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    read_until(&mut lines, &mut seen, "caught_up").await;

    // kill -9 while it follows live, restart on the same port and data, publish five more.
    let port = server.addr.port();
    server.kill9();
    server = ChildServer::start(data.path(), Some(port), &[]).await;
    let mut producer = node("producer.js");
    producer.args(["--addr", &addr, "--events", "3"]);
    assert_eq!(check_producer(&run_json(producer).await, 6), [8, 9, 10]);
    read_until(&mut lines, &mut seen, "done").await;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("consumer exits after --count events")
        .expect("wait");
    assert!(status.success(), "consumer failed: {seen:?}");

    assert_eq!(seen[0]["start_after"], "0", "{seen:?}");
    assert_eq!(
        event_offsets(&seen),
        (1..=10).collect::<Vec<u64>>(),
        "every offset exactly once, in order: {seen:?}"
    );
    let caught_up: Vec<usize> = (0..seen.len())
        .filter(|&i| seen[i].get("caught_up").is_some())
        .collect();
    assert_eq!(caught_up.len(), 1, "exactly one caught_up: {seen:?}");
    let at = caught_up[0];
    assert_eq!(offset(&seen[at]["caught_up"]), 5, "{seen:?}");
    assert_eq!(event_offsets(&seen[..at]), [1, 2, 3, 4, 5], "{seen:?}");
    let reconnects: Vec<usize> = (0..seen.len())
        .filter(|&i| seen[i].get("reconnecting").is_some())
        .collect();
    assert!(
        reconnects
            .iter()
            .any(|&i| i < at && seen[i]["reconnecting"] == "CANCELLED" && seen[i]["after"] == "2"),
        "the dropped connection resumed after offset 2: {seen:?}"
    );
    assert!(
        reconnects
            .iter()
            .any(|&i| i > at && seen[i]["after"] == "5"),
        "the kill -9 was seen live and resumed after offset 5: {seen:?}"
    );
    let done = seen.last().expect("done");
    assert_eq!(done["done"], 10, "{seen:?}");
    assert_eq!(
        done["offsets"],
        serde_json::json!(["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"])
    );
    assert_eq!(
        std::fs::read_to_string(&cursor)
            .expect("cursor file")
            .trim(),
        "10"
    );

    // A new consumer process with the same cursor file continues after offset 10.
    let mut producer = node("producer.js");
    producer.args(["--addr", &addr, "--events", "3"]);
    assert_eq!(check_producer(&run_json(producer).await, 11), [13, 14, 15]);
    let mut consumer = node("consumer.js");
    consumer.args(["--addr", &addr, "--cursor", cursor_arg, "--count", "5"]);
    let resumed = run_json(consumer).await;
    assert_eq!(resumed[0]["start_after"], "10", "{resumed:?}");
    assert_eq!(event_offsets(&resumed), [11, 12, 13, 14, 15], "{resumed:?}");
    assert_eq!(
        std::fs::read_to_string(&cursor)
            .expect("cursor file")
            .trim(),
        "15"
    );
    drop(server);
}

/// The token this test uses, and its SHA-256 (`printf %s TOKEN | sha256sum`).
const TOKEN: &str = "ordo-node-test-token";
const TOKEN_SHA256: &str = "e70d740eb3df5cc782e1b9eca591812c6cc40158f4384da9e76e873e85694d0d";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_producer_and_consumer_use_a_token_over_tls_and_mutual_tls() {
    node_ready().await;
    let pki = pki();
    let secrets = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, text: &str| {
        let path = secrets.path().join(name);
        std::fs::write(&path, text).expect("write");
        path.to_str().expect("utf-8 path").to_string()
    };
    let ca_path = write("ca.pem", &pki.ca_pem);
    let tokens = write(
        "tokens.toml",
        &format!(
            "[[token]]\nname = \"node\"\nsha256 = \"{TOKEN_SHA256}\"\nscopes = [\"orders:write\", \"orders:read\", \"events:publish\", \"events:subscribe\"]\n"
        ),
    );
    let cert_path = write("server.pem", &pki.server_cert);
    let key_path = write("server.key", &pki.server_key);
    let client_cert = write("client.pem", &pki.client_cert);
    let client_key = write("client.key", &pki.client_key);
    let data = tempfile::tempdir().expect("temp dir");
    let server = ChildServer::start(
        data.path(),
        None,
        &[
            "--auth-tokens",
            &tokens,
            "--tls-cert",
            &cert_path,
            "--tls-key",
            &key_path,
        ],
    )
    .await;
    let addr = server.addr.to_string();

    // The producer with flags.
    let mut producer = node("producer.js");
    producer.args([
        "--addr",
        &addr,
        "--ca",
        &ca_path,
        "--tls-domain",
        "localhost",
    ]);
    producer.args(["--token", TOKEN, "--events", "3"]);
    assert_eq!(check_producer(&run_json(producer).await, 1), [3, 4, 5]);

    // The consumer with the environment variables and an https:// address.
    let consumer = |token: Option<&str>| {
        let mut command = node("consumer.js");
        command
            .args(["--addr", &format!("https://{addr}"), "--count", "5"])
            .env("ORDO_CA_CERT", &ca_path)
            .env("ORDO_TLS_DOMAIN", "localhost");
        if let Some(token) = token {
            command.env("ORDO_TOKEN", token);
        }
        command
    };
    let consumed = run_json(consumer(Some(TOKEN))).await;
    assert_eq!(event_offsets(&consumed), [1, 2, 3, 4, 5], "{consumed:?}");

    // Without the token the server refuses, and the consumer says so and fails.
    let refused = tokio::time::timeout(Duration::from_secs(60), consumer(None).output())
        .await
        .expect("consumer finishes")
        .expect("run node");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("UNAUTHENTICATED"), "{stderr}");
    assert!(event_offsets(&parse(&refused.stdout)).is_empty());
    drop(server);

    // Mutual TLS: the same server requiring a client certificate signed by the CA.
    let data = tempfile::tempdir().expect("temp dir");
    let server = ChildServer::start(
        data.path(),
        None,
        &[
            "--auth-tokens",
            &tokens,
            "--tls-cert",
            &cert_path,
            "--tls-key",
            &key_path,
            "--tls-client-ca",
            &ca_path,
        ],
    )
    .await;
    let addr = server.addr.to_string();
    let producer = |identity: bool| {
        let mut command = node("producer.js");
        command.args([
            "--addr",
            &addr,
            "--ca",
            &ca_path,
            "--tls-domain",
            "localhost",
        ]);
        command.args(["--token", TOKEN, "--events", "1"]);
        if identity {
            command.args(["--cert", &client_cert, "--key", &client_key]);
        }
        command
    };
    assert_eq!(check_producer(&run_json(producer(true)).await, 1), [3]);
    let refused = tokio::time::timeout(Duration::from_secs(60), producer(false).output())
        .await
        .expect("producer finishes")
        .expect("run node");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("UNAVAILABLE"), "{stderr}");
    let mut consumer = node("consumer.js");
    consumer.args([
        "--addr",
        &addr,
        "--ca",
        &ca_path,
        "--tls-domain",
        "localhost",
    ]);
    consumer.args(["--cert", &client_cert, "--key", &client_key]);
    consumer.args(["--token", TOKEN, "--count", "3"]);
    assert_eq!(event_offsets(&run_json(consumer).await), [1, 2, 3]);
    drop(server);
}
