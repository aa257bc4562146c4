//! `ordo consume` and `ordo groups` end to end against a real server: acks that bring the
//! group to the head, `--exec` with and without `--nack-on-exit-code`, parking and replaying,
//! the admin round trip, and bad input.

use ordo_client::OrdoClient;
use ordo_test_harness::TestServer;
use serde_json::Value;

use crate::cli::{assert_one_error_line, json_lines, ok, ordo};

/// Publishes `n` JSON events on streams `s-0`..`s-2` through the CLI; returns the head.
async fn publish(addr: &str, n: usize) -> u64 {
    let mut head = 0;
    for i in 0..n {
        let stream = format!("s-{}", i % 3);
        let data = format!("{{\"n\": {i}}}");
        let out = ok(
            addr,
            &[
                "--json",
                "events",
                "publish",
                "--stream",
                &stream,
                "--type",
                "job.queued",
                "--data",
                &data,
            ],
        )
        .await;
        head = json_lines(&out)[0]["offset"].as_u64().expect("offset");
    }
    head
}

async fn group(addr: &str, name: &str) -> Value {
    let out = ok(addr, &["--json", "groups", "get", name]).await;
    json_lines(&out).remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_prints_and_acks_until_the_group_reaches_the_head() {
    let server = TestServer::start().await;
    let addr = server.url();
    let head = publish(&addr, 12).await;
    ok(&addr, &["groups", "create", "work", "--from", "start"]).await;

    let out = ok(&addr, &["--json", "consume", "work", "--count", "12"]).await;
    let lines = json_lines(&out);
    let offsets: Vec<u64> = lines.iter().filter_map(|l| l["offset"].as_u64()).collect();
    assert_eq!(offsets, (1..=head).collect::<Vec<_>>(), "{out}");
    assert_eq!(lines[0]["delivery_id"], "work/1/1");
    assert_eq!(lines[0]["attempt"], 1);
    assert_eq!(lines[0]["data"]["n"], 0, "the event's JSON payload");

    let status = group(&addr, "work").await;
    assert_eq!(status["settled_through_offset"], head, "{status}");
    assert_eq!(status["head_offset"], head);
    assert_eq!(status["in_flight"], 0);
    assert_eq!(status["members"], 0, "ordo left the group on exit");

    // Text mode: the `events tail` line format; nothing left to deliver.
    let more = publish(&addr, 1).await;
    let text = ok(&addr, &["consume", "work", "--count", "1"]).await;
    assert!(
        text.starts_with(&format!("#{more} ")) && text.contains("job.queued"),
        "{text}"
    );
    assert_eq!(group(&addr, "work").await["settled_through_offset"], more);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_failure_nacks_with_the_flag_and_stops_without_it() {
    let server = TestServer::start().await;
    let addr = server.url();
    let dir = tempfile::tempdir().expect("temp dir");
    let got = dir.path().join("got.jsonl");
    let got = got.to_str().expect("utf-8 path");
    publish(&addr, 1).await;

    // Fails on the first attempt, succeeds on the second: the nacked event comes again.
    ok(
        &addr,
        &[
            "groups",
            "create",
            "retry",
            "--from",
            "start",
            "--backoff-initial-ms",
            "50",
        ],
    )
    .await;
    let command = format!(
        "cat >> {got}; echo \"$ORDO_DELIVERY_ID\" >> {got}.ids; test \"$ORDO_ATTEMPT\" -ge 2"
    );
    let out = ok(
        &addr,
        &[
            "--json",
            "consume",
            "retry",
            "--count",
            "2",
            "--exec",
            &command,
            "--nack-on-exit-code",
        ],
    )
    .await;
    let attempts: Vec<(u64, u64)> = json_lines(&out)
        .iter()
        .map(|l| {
            (
                l["offset"].as_u64().unwrap_or(0),
                l["attempt"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(attempts, [(1, 1), (1, 2)], "{out}");
    let stdin: Vec<Value> = json_lines(&std::fs::read_to_string(got).expect("command's input"));
    assert_eq!(stdin.len(), 2);
    assert_eq!(stdin[0]["offset"], 1, "the event's JSON on stdin");
    let ids = std::fs::read_to_string(format!("{got}.ids")).expect("ids");
    assert_eq!(ids, "retry/1/1\nretry/1/2\n");
    assert_eq!(group(&addr, "retry").await["settled_through_offset"], 1);

    // With max_deliveries 1 the nack parks the event; replay delivers it once more.
    ok(
        &addr,
        &[
            "groups",
            "create",
            "strict",
            "--from",
            "start",
            "--max-deliveries",
            "1",
        ],
    )
    .await;
    ok(
        &addr,
        &[
            "consume",
            "strict",
            "--count",
            "1",
            "--exec",
            "exit 3",
            "--nack-on-exit-code",
        ],
    )
    .await;
    let parked = json_lines(&ok(&addr, &["--json", "groups", "parked", "strict"]).await);
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0]["event"]["offset"], 1);
    assert_eq!(parked[0]["attempts"], 1);
    let reason = parked[0]["reason"].as_str().expect("reason");
    assert!(reason.contains("exited with code 3"), "{reason}");
    let status = group(&addr, "strict").await;
    assert_eq!(status["parked"], 1, "{status}");

    let replayed = json_lines(&ok(&addr, &["--json", "groups", "replay", "strict", "--all"]).await);
    assert_eq!(replayed[0]["replayed"], 1, "{replayed:?}");
    assert_eq!(replayed[0]["more"], false);
    let again = json_lines(&ok(&addr, &["--json", "consume", "strict", "--count", "1"]).await);
    assert_eq!(again[0]["offset"], 1);
    let status = group(&addr, "strict").await;
    assert_eq!(
        (
            status["parked"].as_u64(),
            status["settled_through_offset"].as_u64()
        ),
        (Some(0), Some(1)),
        "{status}"
    );
    let none = ok(&addr, &["groups", "parked", "strict"]).await;
    assert!(none.is_empty(), "{none}");

    // Without --nack-on-exit-code a failing command stops ordo; the event stays unacked.
    ok(&addr, &["groups", "create", "stop", "--from", "start"]).await;
    let run = ordo(&addr, &["consume", "stop", "--exec", "exit 5"]).await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("exited with code 5") && run.stderr.contains("not acked"),
        "{}",
        run.stderr
    );
    let status = group(&addr, "stop").await;
    assert_eq!(status["settled_through_offset"], 0, "{status}");
    let redelivered = json_lines(&ok(&addr, &["--json", "consume", "stop", "--count", "1"]).await);
    assert_eq!(redelivered[0]["offset"], 1);
    assert_eq!(redelivered[0]["attempt"], 2, "delivered again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_create_list_get_update_delete_round_trip() {
    let server = TestServer::start().await;
    let addr = server.url();
    let created = json_lines(
        &ok(
            &addr,
            &[
                "--json",
                "groups",
                "create",
                "shipping",
                "--type",
                "order.*",
                "--stream",
                "order-*",
                "--from",
                "start",
                "--ack-timeout-ms",
                "4000",
                "--max-deliveries",
                "3",
                "--backoff-initial-ms",
                "200",
                "--backoff-max-ms",
                "5000",
                "--max-in-flight",
                "7",
                "--strategy",
                "pinned",
            ],
        )
        .await,
    )
    .remove(0);
    assert_eq!(created["name"], "shipping");
    assert_eq!(created["filter"]["types"][0], "order.*");
    assert_eq!(created["filter"]["stream_ids"][0], "order-*");
    assert_eq!(created["start"]["start"], true);
    assert_eq!(created["strategy"], "PINNED_BY_STREAM");
    assert_eq!(created["ack_timeout_ms"], 4000);
    assert_eq!(created["max_deliveries"], 3);
    assert_eq!(created["retry_backoff"]["initial_ms"], 200);
    assert_eq!(created["retry_backoff"]["max_ms"], 5000);
    assert_eq!(created["max_in_flight"], 7);
    ok(&addr, &["groups", "create", "audit"]).await;

    let listed = json_lines(&ok(&addr, &["--json", "groups", "list"]).await);
    let names: Vec<&str> = listed.iter().filter_map(|g| g["name"].as_str()).collect();
    assert_eq!(names, ["audit", "shipping"]);
    let text = ok(&addr, &["groups", "list"]).await;
    assert!(
        text.contains("shipping") && text.contains("PINNED_BY_STREAM"),
        "{text}"
    );
    assert_eq!(
        group(&addr, "audit").await["start"]["end"],
        true,
        "default start"
    );
    let detail = ok(&addr, &["groups", "get", "shipping"]).await;
    assert!(
        detail.contains("types=order.*") && detail.contains("4000 ms"),
        "{detail}"
    );

    // One backoff flag keeps the other value.
    let updated = json_lines(
        &ok(
            &addr,
            &[
                "--json",
                "groups",
                "update",
                "shipping",
                "--backoff-max-ms",
                "9000",
                "--strategy",
                "round-robin",
            ],
        )
        .await,
    )
    .remove(0);
    assert_eq!(updated["retry_backoff"]["initial_ms"], 200, "{updated}");
    assert_eq!(updated["retry_backoff"]["max_ms"], 9000);
    assert_eq!(updated["strategy"], "ROUND_ROBIN");
    assert_eq!(updated["ack_timeout_ms"], 4000, "unchanged");

    // The library sees what the CLI did.
    let client = OrdoClient::connect(addr.clone()).await.expect("connect");
    assert_eq!(
        client
            .get_group("shipping")
            .await
            .expect("get")
            .max_deliveries,
        3
    );

    ok(&addr, &["groups", "delete", "shipping"]).await;
    let gone = ordo(&addr, &["groups", "get", "shipping"]).await;
    assert_eq!(gone.code, 1);
    assert_one_error_line(&gone);
    assert!(gone.stderr.contains("does not exist"), "{}", gone.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_group_input_fails_with_the_servers_message() {
    let server = TestServer::start().await;
    let addr = server.url();

    let unknown = ordo(&addr, &["consume", "nope"]).await;
    assert_eq!(unknown.code, 1, "{}", unknown.stderr);
    assert_one_error_line(&unknown);
    assert!(
        unknown
            .stderr
            .contains("consumer group \"nope\" does not exist")
            && unknown.stderr.contains("ordo groups create nope"),
        "{}",
        unknown.stderr
    );

    let bad_name = ordo(&addr, &["groups", "create", "bad name!"]).await;
    assert_eq!(bad_name.code, 2, "{}", bad_name.stderr);
    assert_one_error_line(&bad_name);
    assert!(
        bad_name.stderr.contains("name contains"),
        "{}",
        bad_name.stderr
    );

    ok(&addr, &["groups", "create", "g"]).await;
    let taken = ordo(&addr, &["groups", "create", "g"]).await;
    assert_eq!(taken.code, 1);
    assert!(taken.stderr.contains("already exists"), "{}", taken.stderr);
    let nothing = ordo(&addr, &["groups", "update", "g"]).await;
    assert_eq!(nothing.code, 2);
    assert!(
        nothing.stderr.contains("nothing to change"),
        "{}",
        nothing.stderr
    );
    let too_many = ordo(&addr, &["groups", "update", "g", "--max-in-flight", "5000"]).await;
    assert_eq!(too_many.code, 2, "{}", too_many.stderr);
    assert!(
        too_many.stderr.contains("max_in_flight"),
        "{}",
        too_many.stderr
    );
    let flag = ordo(&addr, &["consume", "g", "--nack-on-exit-code"]).await;
    assert_eq!(flag.code, 2, "--nack-on-exit-code needs --exec");
}
