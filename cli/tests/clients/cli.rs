//! End-to-end tests of the `ordo` binary against a real server: text and JSON output, exit
//! codes, cursor files, Ctrl-C and bulk publishing.

use std::{path::Path, process::Stdio, time::Duration};

use ordo_test_harness::{ChildServer, TestServer};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};

const ORDO: &str = env!("CARGO_BIN_EXE_ordo");

pub(crate) struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub(crate) async fn ordo(addr: &str, args: &[&str]) -> Run {
    let output = Command::new(ORDO)
        .arg("--addr")
        .arg(addr)
        .args(args)
        .env_remove("ORDO_TOKEN")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run ordo");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs and insists on exit 0.
pub(crate) async fn ok(addr: &str, args: &[&str]) -> String {
    let run = ordo(addr, args).await;
    assert_eq!(
        run.code, 0,
        "ordo {args:?} failed: {}{}",
        run.stdout, run.stderr
    );
    run.stdout
}

pub(crate) fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
        .collect()
}

/// Exactly one `error: ...` line on stderr, no panic or debug output.
pub(crate) fn assert_one_error_line(run: &Run) {
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr: {:?}", run.stderr);
    assert!(lines[0].starts_with("error: "), "{:?}", run.stderr);
    assert!(!run.stderr.contains("panicked") && !run.stderr.contains("Status {"));
}

fn event_offsets(stdout: &str) -> Vec<u64> {
    json_lines(stdout)
        .iter()
        .filter_map(|v| v.get("offset").and_then(Value::as_u64))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_commands_print_text_and_json_lines() {
    let server = TestServer::start().await;
    let addr = server.url();

    let text = ok(
        &addr,
        &[
            "orders",
            "create",
            "--customer",
            "cust-1",
            "--item",
            "book:2:1250",
            "--item",
            "pen:1:199",
        ],
    )
    .await;
    assert!(text.contains("CREATED"), "{text}");
    assert!(text.contains("26.99 EUR"), "{text}");

    let created = json_lines(
        &ok(
            &addr,
            &[
                "--json",
                "orders",
                "create",
                "--customer",
                "cust-2",
                "--item",
                "mug:1:800",
            ],
        )
        .await,
    );
    assert_eq!(created.len(), 1);
    let id = created[0]["id"].as_str().expect("id").to_string();
    assert_eq!(created[0]["status"], "CREATED");
    assert_eq!(created[0]["version"], 1);
    assert_eq!(created[0]["items"][0]["unit_price"]["amount_minor"], 800);

    let got = ok(&addr, &["orders", "get", &id]).await;
    assert!(got.contains(&id) && got.contains("cust-2"), "{got}");

    let paid = json_lines(&ok(&addr, &["--json", "orders", "status", &id, "paid"]).await);
    assert_eq!(paid[0]["status"], "PAID");
    assert_eq!(paid[0]["version"], 2);
    let cancelled = json_lines(
        &ok(
            &addr,
            &[
                "--json",
                "orders",
                "cancel",
                &id,
                "--reason",
                "changed mind",
            ],
        )
        .await,
    );
    assert_eq!(cancelled[0]["status"], "CANCELLED");
    assert_eq!(cancelled[0]["cancel_reason"], "changed mind");
    let as_created = json_lines(
        &ok(
            &addr,
            &["--json", "orders", "get", &id, "--at-version", "1"],
        )
        .await,
    );
    assert_eq!(as_created[0]["status"], "CREATED");

    let listed = json_lines(&ok(&addr, &["--json", "orders", "list"]).await);
    assert_eq!(listed.len(), 2);
    let paged = json_lines(&ok(&addr, &["--json", "orders", "list", "--page-size", "1"]).await);
    assert_eq!(paged.len(), 2, "one order and a page marker: {paged:?}");
    assert!(paged[1]["page"]["next_page_token"].is_string());
    let all = json_lines(
        &ok(
            &addr,
            &["--json", "orders", "list", "--page-size", "1", "--all"],
        )
        .await,
    );
    assert_eq!(all.len(), 2);
    let text_list = ok(&addr, &["orders", "list", "--status", "cancelled"]).await;
    assert_eq!(text_list.lines().count(), 1, "{text_list}");

    let read = json_lines(&ok(&addr, &["--json", "events", "read"]).await);
    let events: Vec<&Value> = read.iter().filter(|v| v.get("offset").is_some()).collect();
    assert_eq!(events.len(), 4, "2 created, paid, cancelled: {read:?}");
    assert_eq!(events[0]["type"], "order.created");
    assert_eq!(events[3]["order"]["cancelled"]["reason"], "changed mind");
    assert_eq!(read.last().expect("page")["page"]["head_offset"], 4);

    let demo = json_lines(&ok(&addr, &["--json", "demo", "--orders", "10"]).await);
    assert_eq!(demo[0]["orders"], 10);
    let demo_events = demo[0]["events"].as_u64().expect("events");
    let head = json_lines(&ok(&addr, &["--json", "events", "read", "--from", "end"]).await);
    assert_eq!(head[0]["page"]["head_offset"], 4 + demo_events);

    let health = ok(&addr, &["health"]).await;
    assert!(health.starts_with("SERVING"), "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_exits_non_zero_with_one_clear_line() {
    let server = TestServer::start().await;
    let addr = server.url();

    let zero = ordo(
        &addr,
        &[
            "orders",
            "create",
            "--customer",
            "c",
            "--item",
            "book:0:100",
        ],
    )
    .await;
    assert_eq!(zero.code, 2, "{}", zero.stderr);
    assert_one_error_line(&zero);
    assert!(zero.stderr.contains("quantity"), "{}", zero.stderr);

    let shape = ordo(
        &addr,
        &["orders", "create", "--customer", "c", "--item", "book"],
    )
    .await;
    assert_eq!(shape.code, 2);
    assert_one_error_line(&shape);
    assert!(
        shape.stderr.contains("SKU:QUANTITY:UNIT_PRICE"),
        "{}",
        shape.stderr
    );

    let missing = ordo(&addr, &["orders", "get", "01ARZ3NDEKTSV4RRFFQ69G5FAV"]).await;
    assert_eq!(missing.code, 1);
    assert_one_error_line(&missing);
    assert!(missing.stderr.contains("not found"), "{}", missing.stderr);

    let from = ordo(&addr, &["events", "tail", "--from", "soon"]).await;
    assert_eq!(from.code, 2);
    assert_one_error_line(&from);

    let beyond = ordo(&addr, &["events", "read", "--from", "50"]).await;
    assert_eq!(beyond.code, 2, "{}", beyond.stderr);
    assert_one_error_line(&beyond);

    let reserved = ordo(
        &addr,
        &["events", "publish", "--stream", "order-x", "--type", "x.y"],
    )
    .await;
    assert_eq!(reserved.code, 2, "{}", reserved.stderr);
    assert_one_error_line(&reserved);

    // clap's own usage errors also exit 2.
    let usage = ordo(&addr, &["orders", "create"]).await;
    assert_eq!(usage.code, 2);
}

#[tokio::test]
async fn unreachable_server_exits_69_naming_the_address() {
    let port = ordo_test_harness::free_port();
    let addr = format!("http://127.0.0.1:{port}");
    for args in [
        &["orders", "list"][..],
        &["events", "tail", "--follow"][..],
        &["health"][..],
    ] {
        let run = ordo(&addr, args).await;
        assert_eq!(run.code, 69, "{args:?}: {}", run.stderr);
        assert_one_error_line(&run);
        assert!(run.stderr.contains(&addr), "{}", run.stderr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_with_cursor_file_continues_after_the_last_printed_event() {
    let server = TestServer::start().await;
    let addr = server.url();
    let dir = tempfile::tempdir().expect("temp dir");
    let cursor = dir.path().join("tail.cursor");
    let cursor_arg = cursor.to_str().expect("utf-8 path");
    let publish = |n: usize, kind: &'static str| {
        let addr = addr.clone();
        async move {
            for i in 0..n {
                ok(
                    &addr,
                    &[
                        "events",
                        "publish",
                        "--stream",
                        "s-1",
                        "--type",
                        kind,
                        "--data",
                        &i.to_string(),
                    ],
                )
                .await;
            }
        }
    };
    publish(3, "a.one").await;
    let first = ok(
        &addr,
        &["--json", "events", "tail", "--cursor-file", cursor_arg],
    )
    .await;
    assert_eq!(event_offsets(&first), vec![1, 2, 3]);
    assert_eq!(
        json_lines(&first).last().expect("marker")["caught_up"]["head_offset"],
        3
    );
    assert_eq!(
        std::fs::read_to_string(&cursor).expect("cursor").trim(),
        "3"
    );

    publish(2, "a.one").await;
    let second = ok(
        &addr,
        &["--json", "events", "tail", "--cursor-file", cursor_arg],
    )
    .await;
    assert_eq!(event_offsets(&second), vec![4, 5]);

    // Filtered: the cursor advances past non-matching events too, so the rerun rescans nothing
    // and prints only what is new.
    publish(2, "b.two").await;
    publish(1, "a.one").await;
    let filtered_cursor = dir.path().join("filtered.cursor");
    let filtered_arg = filtered_cursor.to_str().expect("utf-8 path");
    let third = ok(
        &addr,
        &[
            "--json",
            "events",
            "tail",
            "--type",
            "b.*",
            "--cursor-file",
            filtered_arg,
        ],
    )
    .await;
    assert_eq!(event_offsets(&third), vec![6, 7]);
    assert_eq!(
        std::fs::read_to_string(&filtered_cursor)
            .expect("cursor")
            .trim(),
        "8"
    );
    let again = ok(
        &addr,
        &[
            "--json",
            "events",
            "tail",
            "--type",
            "b.*",
            "--cursor-file",
            filtered_arg,
        ],
    )
    .await;
    assert!(event_offsets(&again).is_empty(), "{again}");

    // Text mode marks the caught-up point.
    let text = ok(&addr, &["events", "tail", "--from", "8"]).await;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("#8 "), "{text}");
    assert!(lines[1].contains("caught up at offset 8"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_prints_live_events_and_ctrl_c_exits_cleanly_saving_the_cursor() {
    let server = TestServer::start().await;
    let addr = server.url();
    let dir = tempfile::tempdir().expect("temp dir");
    let cursor = dir.path().join("follow.cursor");
    ok(
        &addr,
        &["events", "publish", "--stream", "s-1", "--type", "t.x"],
    )
    .await;
    let mut child = Command::new(ORDO)
        .args([
            "--addr",
            &addr,
            "--json",
            "events",
            "tail",
            "--follow",
            "--cursor-file",
        ])
        .arg(&cursor)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tail");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next = async || -> Value {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("a line within 10 s")
            .expect("read")
            .expect("not closed");
        serde_json::from_str(&line).expect("json line")
    };
    assert_eq!(next().await["offset"], 1);
    assert_eq!(next().await["caught_up"]["head_offset"], 1);
    for _ in 0..2 {
        ok(
            &addr,
            &["events", "publish", "--stream", "s-2", "--type", "t.live"],
        )
        .await;
    }
    assert_eq!(next().await["type"], "t.live");
    let last = next().await;
    assert_eq!(last["offset"], 3);

    let pid = child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill -INT");
    assert!(status.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits within 10 s after Ctrl-C")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(&cursor).expect("cursor").trim(),
        "3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_survives_a_kill9_restart_of_the_server_without_gap_or_repeat() {
    let data = tempfile::tempdir().expect("temp dir");
    let mut server = ChildServer::start(data.path(), None, &[]).await;
    let addr = server.url();
    for _ in 0..3 {
        ok(
            &addr,
            &["events", "publish", "--stream", "s-1", "--type", "t.before"],
        )
        .await;
    }
    let mut child = Command::new(ORDO)
        .args(["--addr", &addr, "--json", "events", "tail", "--follow"])
        .args(["--heartbeat-ms", "200"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn tail");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut offsets = Vec::new();
    let mut next = async || -> Value {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("a line within 20 s")
            .expect("read")
            .expect("not closed");
        serde_json::from_str(&line).expect("json line")
    };
    loop {
        let value = next().await;
        if value.get("caught_up").is_some() {
            break;
        }
        offsets.extend(value["offset"].as_u64());
    }
    let port = server.addr.port();
    server.kill9();
    server = ChildServer::start(data.path(), Some(port), &[]).await;
    for _ in 0..3 {
        ok(
            &addr,
            &["events", "publish", "--stream", "s-1", "--type", "t.after"],
        )
        .await;
    }
    while offsets.len() < 6 {
        let value = next().await;
        assert!(
            value.get("caught_up").is_none(),
            "caught_up is printed once: {value}"
        );
        offsets.extend(value["offset"].as_u64());
    }
    assert_eq!(offsets, vec![1, 2, 3, 4, 5, 6]);
    let pid = child.id().expect("pid").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill -INT");
    assert!(sent.success());
    let output = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("exits after Ctrl-C")
        .expect("wait");
    assert_eq!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("reconnecting"), "{stderr}");
    drop(server);
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").expect("write jsonl");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_from_file_sends_every_line_or_none() {
    let server = TestServer::start().await;
    let addr = server.url();
    let dir = tempfile::tempdir().expect("temp dir");
    let good = dir.path().join("good.jsonl");
    let lines: Vec<String> = (0..250)
        .map(|i| {
            format!(
                r#"{{"stream_id":"bulk-{}","type":"bulk.item","data":{{"n":{i}}}}}"#,
                i % 7
            )
        })
        .collect();
    write_lines(&good, &lines);
    let summary = json_lines(
        &ok(
            &addr,
            &[
                "--json",
                "events",
                "publish",
                "--from-file",
                good.to_str().expect("path"),
                "--batch-size",
                "100",
            ],
        )
        .await,
    );
    assert_eq!(summary[0]["published"], 250);
    assert_eq!(summary[0]["first_offset"], 1);
    assert_eq!(summary[0]["last_offset"], 250);
    let read = json_lines(&ok(&addr, &["--json", "events", "read", "--from", "250"]).await);
    assert_eq!(read[0]["data"]["n"], 249);
    assert_eq!(read[0]["datacontenttype"], "application/json");

    let bad = dir.path().join("bad.jsonl");
    let mut broken = lines.clone();
    broken[120] = r#"{"stream_id":"bulk-1","typ":"oops"}"#.into();
    write_lines(&bad, &broken);
    let run = ordo(
        &addr,
        &[
            "events",
            "publish",
            "--from-file",
            bad.to_str().expect("path"),
        ],
    )
    .await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert_one_error_line(&run);
    assert!(run.stderr.contains("line 121"), "{}", run.stderr);
    let after = json_lines(&ok(&addr, &["--json", "events", "read", "--from", "end"]).await);
    assert_eq!(
        after[0]["page"]["head_offset"], 250,
        "nothing from the bad file was published"
    );
}

#[tokio::test]
async fn every_help_level_has_examples() {
    for args in [
        &[][..],
        &["orders"][..],
        &["orders", "create"][..],
        &["orders", "get"][..],
        &["orders", "list"][..],
        &["orders", "status"][..],
        &["orders", "cancel"][..],
        &["events"][..],
        &["events", "tail"][..],
        &["events", "read"][..],
        &["events", "publish"][..],
        &["health"][..],
        &["demo"][..],
    ] {
        let output = Command::new(ORDO)
            .args(args)
            .arg("--help")
            .output()
            .await
            .expect("run ordo");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{args:?}");
        assert!(
            text.contains("Examples:"),
            "{args:?} --help has no examples:\n{text}"
        );
    }
}

/// Without --batch-size the file goes on one AppendStream: a line the server refuses does not
/// stop the others, the command fails naming it, and rerunning the file stores nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_from_file_streams_and_names_refused_lines() {
    let server = TestServer::start().await;
    let addr = server.url();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("stream.jsonl");
    let mut lines: Vec<String> = (0..3000)
        .map(|i| {
            format!(
                r#"{{"stream_id":"flow-{}","type":"flow.item","id":"flow-{i}","data":{{"n":{i}}}}}"#,
                i % 5
            )
        })
        .collect();
    // Parses, but the server refuses it: types starting with `order.` belong to OrderService.
    lines[1500] = r#"{"stream_id":"flow-x","type":"order.sneaky","id":"bad-1"}"#.into();
    write_lines(&file, &lines);
    let path = file.to_str().expect("path");

    let run = ordo(&addr, &["--json", "events", "publish", "--from-file", path]).await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert_one_error_line(&run);
    assert!(run.stderr.contains("line 1501"), "{}", run.stderr);
    assert!(run.stderr.contains("order."), "{}", run.stderr);
    let summary = json_lines(&run.stdout);
    assert_eq!(summary[0]["published"], 2999);
    assert_eq!(summary[0]["refused"], 1);
    let read = json_lines(&ok(&addr, &["--json", "events", "read", "--from", "1501"]).await);
    assert_eq!(
        read[0]["data"]["n"], 1501,
        "the log keeps the file's order, without the refused line"
    );

    // Every line has an id: a rerun is answered from the log.
    let again = ordo(&addr, &["--json", "events", "publish", "--from-file", path]).await;
    assert_eq!(again.code, 1, "{}", again.stderr);
    let summary = json_lines(&again.stdout);
    assert_eq!(summary[0]["deduplicated"], 2999);
    assert_eq!(summary[0]["last_offset"], 2999);
}
