//! The Python example (`examples/python/`) against the real `ordo-server` binary: stubs are
//! generated from `proto/` with grpcio-tools at test time, then the producer creates an order
//! and publishes, and the consumer subscribes from an offset and resumes after a client-side
//! disconnect and after a `kill -9` restart of the server; the consumer-group member acks,
//! nacks and rejoins.

use std::{path::Path, process::Stdio, time::Duration};

use ordo_test_harness::ChildServer;
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};

/// Installs grpcio and grpcio-tools (quietly; a no-op when present), once per test run: the
/// tests of this file run in parallel, and two pip installs into one interpreter at once race
/// on its site-packages (seen on a fresh machine: `No such file or directory:
/// .../site-packages/_distutils_hack/`).
async fn pip_install() {
    static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    INSTALLED.get_or_init(install).await;
}

async fn install() {
    let output = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["grpcio", "grpcio-tools"])
        .output()
        .await
        .expect("python3 must be installed (Python 3.11 is on every machine of this project)");
    assert!(
        output.status.success(),
        "pip install grpcio grpcio-tools failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn python(script: &str, stubs: &Path) -> Command {
    let mut command = Command::new("python3");
    command
        .arg(crate::repo().join("examples/python").join(script))
        .env("ORDO_STUBS_DIR", stubs)
        .env("ORDO_PROTO_DIR", crate::repo().join("proto"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null());
    command
}

async fn run_json(mut command: Command) -> Vec<Value> {
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("python script finishes")
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_producer_and_consumer_work_and_resume() {
    pip_install().await;
    let data = tempfile::tempdir().expect("temp dir");
    let stubs = tempfile::tempdir().expect("temp dir");
    let mut server = ChildServer::start(data.path(), None, &[]).await;
    let addr = server.addr.to_string();

    // Producer: order created (1) and paid (2), three published events (3..=5).
    let mut producer = python("producer.py", stubs.path());
    producer.args(["--addr", &addr, "--events", "3"]);
    let produced = run_json(producer).await;
    assert_eq!(produced[0]["offset"], 1, "{produced:?}");
    assert!(produced[0]["order_created"].is_string());
    assert_eq!(produced[1]["offset"], 2);
    let published: Vec<u64> = produced
        .iter()
        .filter(|v| v.get("published").is_some())
        .filter_map(|v| v["offset"].as_u64())
        .collect();
    assert_eq!(published, vec![3, 4, 5]);
    assert_eq!(produced.last().expect("read")["customer"], "py-customer");

    // Consumer from an offset, dropping its connection once after two events.
    let mut consumer = python("consumer.py", stubs.path());
    consumer.args([
        "--addr",
        &addr,
        "--after",
        "1",
        "--count",
        "4",
        "--disconnect-after",
        "2",
    ]);
    let consumed = run_json(consumer).await;
    assert!(
        consumed.iter().any(|v| v.get("reconnecting").is_some()),
        "{consumed:?}"
    );
    assert_eq!(
        consumed.last().expect("done")["offsets"],
        serde_json::json!([2, 3, 4, 5])
    );

    // Consumer across a kill -9 restart of the server.
    let mut child = python("consumer.py", stubs.path())
        .args(["--addr", &addr, "--after", "0", "--count", "10"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn consumer");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("consumer output")
            .expect("read")
            .expect("consumer still running");
        seen.push(line.clone());
        if line.contains("caught_up") {
            break;
        }
    }
    let port = server.addr.port();
    server.kill9();
    server = ChildServer::start(data.path(), Some(port), &[]).await;
    let mut producer = python("producer.py", stubs.path());
    producer.args(["--addr", &addr, "--events", "3"]);
    run_json(producer).await;
    while let Some(line) = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("consumer output")
        .expect("read")
    {
        seen.push(line);
    }
    let status = child.wait().await.expect("consumer exits");
    assert!(status.success(), "consumer failed: {seen:?}");
    let values: Vec<Value> = seen
        .iter()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert!(
        values.iter().any(|v| v.get("reconnecting").is_some()),
        "the consumer saw the restart: {seen:?}"
    );
    assert_eq!(
        values.last().expect("done")["offsets"],
        serde_json::json!([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
        "{seen:?}"
    );
    drop(server);
}

/// The streaming producer: events acked in send order on one AppendStream, and a rerun with the
/// same ids answered from the log (deduplicated, same offsets, nothing stored twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_streaming_producer_acks_in_order_and_resends_safely() {
    pip_install().await;
    let data = tempfile::tempdir().expect("temp dir");
    let stubs = tempfile::tempdir().expect("temp dir");
    let server = ChildServer::start(data.path(), None, &[]).await;
    let addr = server.addr.to_string();
    let args = [
        "--addr",
        &addr,
        "--append-stream",
        "3000",
        "--id-prefix",
        "py-ingest",
    ];

    let mut producer = python("producer.py", stubs.path());
    producer.args(args);
    let first = run_json(producer).await;
    assert_eq!(first[0]["window"], 1000, "{first:?}");
    let summary = first.last().expect("summary");
    assert_eq!(summary["streamed"], 3000, "{summary}");
    assert_eq!(summary["rejected"], 0);
    assert_eq!(summary["deduplicated"], 0);
    assert_eq!(summary["first_offset"], 1);
    assert_eq!(summary["last_offset"], 3000);

    let mut again = python("producer.py", stubs.path());
    again.args(args);
    let second = run_json(again).await;
    let summary = second.last().expect("summary");
    assert_eq!(summary["deduplicated"], 3000, "{summary}");
    assert_eq!(summary["last_offset"], 3000, "nothing stored twice");
}

/// The consumer-group example (`group_consumer.py`) over the bidirectional Consume stream:
/// it acks what it handles, rejoins after dropping its stream and gets the unacked deliveries
/// again, and nacks what its handler fails on; the server's view of the groups proves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_group_consumer_acks_nacks_and_rejoins() {
    use ordo_client::{
        OrdoClient,
        v1::{CreateGroupRequest, EventFilter, NewEvent, StartPosition, start_position},
    };

    pip_install().await;
    let data = tempfile::tempdir().expect("temp dir");
    let stubs = tempfile::tempdir().expect("temp dir");
    let server = ChildServer::start(data.path(), None, &[]).await;
    let addr = server.addr.to_string();
    let client = OrdoClient::connect(server.url()).await.expect("connect");
    let event = |i: usize, kind: &str| NewEvent {
        stream_id: format!("job-{i}"),
        r#type: kind.into(),
        data: b"{}".to_vec(),
        ..Default::default()
    };
    let mut events: Vec<NewEvent> = (0..5).map(|i| event(i, "job.ok")).collect();
    events.push(event(5, "job.poison"));
    client.publish(events).await.expect("publish");
    let group = |name: &str, types: &[&str], max_deliveries: u32| CreateGroupRequest {
        name: name.into(),
        filter: Some(EventFilter {
            types: types.iter().map(|t| t.to_string()).collect(),
            stream_ids: Vec::new(),
        }),
        start: Some(StartPosition {
            position: Some(start_position::Position::Start(true)),
        }),
        max_deliveries,
        ..Default::default()
    };

    // Two handled and acked, the rest left unacked on a dropped stream: they come again.
    client
        .create_group(group("py-ok", &["job.ok"], 0))
        .await
        .expect("create");
    let mut rejoin = python("group_consumer.py", stubs.path());
    rejoin.args([
        "--addr",
        &addr,
        "--group",
        "py-ok",
        "--count",
        "5",
        "--disconnect-after",
        "2",
    ]);
    let lines = run_json(rejoin).await;
    assert!(
        lines.iter().any(|v| v.get("reconnecting").is_some()),
        "{lines:?}"
    );
    assert_eq!(
        lines.iter().filter(|v| v.get("joined").is_some()).count(),
        2,
        "{lines:?}"
    );
    let done = lines.last().expect("done");
    assert_eq!(done["acked"], serde_json::json!([1, 2, 3, 4, 5]), "{done}");
    assert!(
        lines
            .iter()
            .any(|v| v["offset"] == 3 && v["attempt"] == 2 && v.get("delivery").is_some()),
        "an unacked delivery came again after the rejoin: {lines:?}"
    );
    let status = client.get_group("py-ok").await.expect("get");
    assert_eq!(status.settled_through_offset, status.head_offset);
    assert_eq!((status.head_offset, status.parked), (6, 0));

    // The handler raises on the poison event: nacked, and parked (max_deliveries 1).
    client
        .create_group(group("py-poison", &[], 1))
        .await
        .expect("create");
    let mut poison = python("group_consumer.py", stubs.path());
    poison.args([
        "--addr",
        &addr,
        "--group",
        "py-poison",
        "--count",
        "6",
        "--fail-type",
        "job.poison",
    ]);
    let lines = run_json(poison).await;
    let done = lines.last().expect("done");
    assert_eq!(done["acked"], serde_json::json!([1, 2, 3, 4, 5]), "{done}");
    assert_eq!(done["nacked"], serde_json::json!([6]), "{done}");
    let status = client.get_group("py-poison").await.expect("get");
    assert_eq!(status.settled_through_offset, 6);
    assert_eq!(status.parked, 1, "{status:?}");
    let parked = client
        .list_parked(ordo_client::v1::ListParkedRequest {
            group: "py-poison".into(),
            ..Default::default()
        })
        .await
        .expect("list parked");
    assert!(
        parked.parked[0].reason.contains("cannot handle job.poison"),
        "{parked:?}"
    );

    // An unknown group is an error, not a retry loop.
    let mut missing = python("group_consumer.py", stubs.path());
    missing.args(["--addr", &addr, "--group", "nope"]);
    let output = tokio::time::timeout(Duration::from_secs(60), missing.output())
        .await
        .expect("exits")
        .expect("run python3");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("NOT_FOUND"), "{stderr}");
}
