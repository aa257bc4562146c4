//! `ordo admin` against the real binaries: a backup taken with `ordo admin backup` from a
//! running server, restored with `ordo-server restore` into a new data dir, serves the same
//! log; stream deletion needs `--yes`; `info` and `compact` report the log.

use ordo_api::v1::{NewEvent, OrderStatus, UpdateOrderStatusRequest};
use ordo_client::OrdoClient;
use ordo_test_harness::{ChildServer, server_binary};
use tokio::process::Command;

use crate::{
    cli::{assert_one_error_line, json_lines, ok, ordo},
    read_all,
};

fn event(stream: &str, n: u64) -> NewEvent {
    NewEvent {
        stream_id: stream.into(),
        r#type: "test.backup".into(),
        data: format!("payload {n}").into_bytes(),
        ..Default::default()
    }
}

/// `ordo-server restore BACKUP --data-dir DIR`: (exit code, stdout, stderr).
async fn restore(backup: &std::path::Path, data_dir: &std::path::Path) -> (i32, String, String) {
    let output = Command::new(server_binary())
        .arg("restore")
        .arg(backup)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .await
        .expect("run ordo-server restore");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_with_the_cli_restores_with_the_server_binary() {
    let data = tempfile::tempdir().expect("temp dir");
    let server = ChildServer::start(data.path(), None, &[]).await;
    let addr = server.url();
    let client = OrdoClient::connect(addr.clone()).await.expect("connect");
    for n in 0..20 {
        client
            .publish(vec![event(&format!("s-{}", n % 3), n)])
            .await
            .expect("publish");
    }
    let order = client
        .create_order(ordo_test_harness::api::create_req("cust-cli"))
        .await
        .expect("create");
    client
        .update_order_status(UpdateOrderStatusRequest {
            order_id: order.id.clone(),
            status: OrderStatus::Paid as i32,
            ..Default::default()
        })
        .await
        .expect("pay");

    let backups = tempfile::tempdir().expect("temp dir");
    let dir = backups.path().join("nightly");
    let dir_arg = dir.to_str().expect("utf-8 path");
    let text = ok(&addr, &["admin", "backup", dir_arg]).await;
    assert!(text.contains("backed up offsets 1..=22"), "{text}");
    let file = std::fs::read(dir.join("ordo.backup")).expect("backup file");
    let checksum = std::fs::read_to_string(dir.join("ordo.backup.sha256")).expect("checksum");
    let sha256: String = <sha2::Sha256 as sha2::Digest>::digest(&file)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(checksum, format!("{sha256}  ordo.backup\n"));
    assert!(!dir.join("ordo.backup.partial").exists());

    // Into a directory that already holds a backup: refused, exit 2, nothing overwritten.
    let again = ordo(&addr, &["admin", "backup", dir_arg]).await;
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert_one_error_line(&again);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    assert_eq!(std::fs::read(dir.join("ordo.backup")).expect("kept"), file);

    let source = read_all(&client).await;
    let restored_dir = tempfile::tempdir().expect("temp dir");
    let target = restored_dir.path().join("data");
    let (code, stdout, stderr) = restore(&dir, &target).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("restored offsets 1..=22"), "{stdout}");
    // A second restore into the now populated dir is refused.
    let (code, _, stderr) = restore(&dir, &target).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("is not empty"), "{stderr}");

    let restored = ChildServer::start(&target, None, &[]).await;
    let restored_client = OrdoClient::connect(restored.url()).await.expect("connect");
    assert_eq!(read_all(&restored_client).await, source);
    assert_eq!(
        restored_client
            .get_order(&order.id, None)
            .await
            .expect("order"),
        client.get_order(&order.id, None).await.expect("order")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_stream_info_and_compact() {
    let data = tempfile::tempdir().expect("temp dir");
    let server = ChildServer::start(data.path(), None, &["--sled-flush-ms", "20"]).await;
    let addr = server.url();
    let client = OrdoClient::connect(addr.clone()).await.expect("connect");
    for n in 0..3 {
        client
            .publish(vec![event("customer-9", n), event("other", n)])
            .await
            .expect("publish");
    }

    let refused = ordo(&addr, &["admin", "delete-stream", "customer-9"]).await;
    assert_eq!(refused.code, 2);
    assert_one_error_line(&refused);
    assert!(refused.stderr.contains("pass --yes"), "{}", refused.stderr);
    assert_eq!(read_all(&client).await.len(), 6, "nothing was deleted");

    let deleted = json_lines(
        &ok(
            &addr,
            &["--json", "admin", "delete-stream", "customer-9", "--yes"],
        )
        .await,
    );
    assert_eq!(deleted[0]["deleted_through_version"], 3);
    assert_eq!(read_all(&client).await.len(), 3);

    let info = json_lines(&ok(&addr, &["--json", "admin", "info"]).await);
    assert_eq!(info[0]["first_offset"], 1);
    assert_eq!(info[0]["head_offset"], 6);
    assert_eq!(info[0]["pending_deleted_streams"], 1);
    assert!(info[0]["disk_bytes"].as_u64().expect("bytes") > 0);

    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let compacted = json_lines(&ok(&addr, &["--json", "admin", "compact"]).await);
    assert_eq!(compacted[0]["streams_removed"], 1);
    assert_eq!(compacted[0]["deleted_events_removed"], 3);
    let text = ok(&addr, &["admin", "info"]).await;
    assert!(text.contains("offsets 1..=6"), "{text}");
    assert!(text.contains("retention: max age none"), "{text}");

    let missing = ordo(&addr, &["admin", "delete-stream", "nobody", "--yes"]).await;
    assert_eq!(missing.code, 1);
    assert_one_error_line(&missing);
    assert!(
        missing.stderr.contains("has no events to delete"),
        "{}",
        missing.stderr
    );
}

/// `ordo-server backup` on the data dir of a stopped server; a running server's data dir is
/// refused (sled holds its lock) with a message naming the online command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_backup_of_a_stopped_server() {
    let data = tempfile::tempdir().expect("temp dir");
    let server = ChildServer::start(data.path(), None, &[]).await;
    let client = OrdoClient::connect(server.url()).await.expect("connect");
    for n in 0..5 {
        client.publish(vec![event("s", n)]).await.expect("publish");
    }
    let source = read_all(&client).await;
    let backups = tempfile::tempdir().expect("temp dir");
    let out = backups.path().join("offline");
    let run = |out: std::path::PathBuf| {
        let data = data.path().to_path_buf();
        async move {
            Command::new(server_binary())
                .arg("backup")
                .arg(&out)
                .arg("--data-dir")
                .arg(&data)
                .output()
                .await
                .expect("run ordo-server backup")
        }
    };
    let busy = run(backups.path().join("busy")).await;
    assert_eq!(busy.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&busy.stderr);
    assert!(stderr.contains("in use by another ordo-server"), "{stderr}");
    assert_eq!(server.terminate(), Some(0));

    let done = run(out.clone()).await;
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(String::from_utf8_lossy(&done.stdout).contains("backed up offsets 1..=5"));
    let target = backups.path().join("restored");
    let (code, _, stderr) = restore(&out, &target).await;
    assert_eq!(code, 0, "{stderr}");
    let restored = ChildServer::start(&target, None, &[]).await;
    let restored_client = OrdoClient::connect(restored.url()).await.expect("connect");
    assert_eq!(read_all(&restored_client).await, source);
}
