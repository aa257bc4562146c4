//! What the nats store refuses, and how: stream deletion, backups and retention would need
//! deletes or purges on a stream that denies them to keep offsets gapless, so they are refused
//! with FAILED_PRECONDITION (or at start) saying what to use instead, and nothing is changed.
//! A stream name or an existing stream Ordo cannot use stops the server at start.

use std::time::Duration;

use async_nats::jetstream::stream::{Config, StorageType};
use ordo_api::v1::{BackupRequest, DeleteStreamRequest};
use ordo_server::{
    ServerConfig,
    config::{NatsConfig, StoreBackend},
};
use ordo_test_harness::{NatsCluster, TestServer, api::*};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::Code;

#[tokio::test]
async fn delete_stream_and_backup_are_refused_and_change_nothing() {
    let server = TestServer::start().await;
    let mut events = server.events().await;
    events
        .publish(publish_req(vec![new_event("keep-me", "t.kept")]))
        .await
        .expect("publish");
    let mut admin = server.admin().await;

    let refused = admin
        .delete_stream(DeleteStreamRequest {
            stream_id: "keep-me".into(),
        })
        .await;
    assert_status(
        refused,
        Code::FailedPrecondition,
        "DeleteStream is not available with --store nats",
    );
    let log = read_all(&mut events).await;
    assert_eq!(log.len(), 1, "the stream's event is still there");
    assert_eq!(log[0].stream_id, "keep-me");

    let refused = match admin.backup(BackupRequest {}).await {
        Ok(response) => response.into_inner().message().await.map(|_| ()),
        Err(status) => Err(status),
    };
    let status = refused.expect_err("a backup is refused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("nats stream backup"),
        "says what to use instead: {status:?}"
    );
}

/// Runs a server on `config` and returns the error it stops with at start.
async fn start_error(config: ServerConfig) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let run = ordo_server::run(listener, config, CancellationToken::new());
    match tokio::time::timeout(Duration::from_secs(30), run).await {
        Ok(Err(err)) => err.to_string(),
        Ok(Ok(())) => panic!("the server ran and stopped cleanly instead of refusing to start"),
        Err(_) => panic!("the server started instead of refusing to"),
    }
}

fn nats_config(dir: &std::path::Path, stream: &str) -> ServerConfig {
    let mut config = ServerConfig::new(dir);
    let mut nats = NatsConfig::new(NatsCluster::shared().urls());
    nats.stream = stream.to_string();
    config.store = StoreBackend::Nats(nats);
    config
}

#[tokio::test]
async fn retention_a_bad_stream_name_and_a_deletable_stream_stop_the_start() {
    let dir = tempfile::tempdir().expect("dir");

    let mut config = nats_config(dir.path(), "UNSUPPORTED_RETENTION");
    config.retention.max_age = Some(Duration::from_secs(3600));
    let err = start_error(config).await;
    assert!(
        err.contains("--retention-* is not available with --store nats"),
        "{err}"
    );

    let err = start_error(nats_config(dir.path(), "has.dot")).await;
    assert!(
        err.contains("nats stream name \"has.dot\" is not valid"),
        "{err}"
    );

    // A stream someone made by hand, without deny_delete/deny_purge: offsets could get gaps.
    let js = NatsCluster::shared().jetstream().await;
    js.create_stream(Config {
        name: "UNSUPPORTED_DELETABLE".into(),
        subjects: vec!["ordo.UNSUPPORTED_DELETABLE.ev.>".into()],
        storage: StorageType::File,
        num_replicas: 1,
        ..Default::default()
    })
    .await
    .expect("create a deletable stream");
    let err = start_error(nats_config(dir.path(), "UNSUPPORTED_DELETABLE")).await;
    assert!(err.contains("allows deletes or purges"), "{err}");
}

#[tokio::test]
async fn an_event_over_the_nats_max_payload_is_refused_before_anything_is_sent() {
    // The test cluster takes 8 MiB messages; let Ordo accept a 9 MiB event so NATS is the limit.
    let server = TestServer::start_with(|cfg| {
        cfg.limits.max_payload_bytes = 10 * 1024 * 1024;
        cfg.limits.max_message_bytes = 16 * 1024 * 1024;
    })
    .await;
    let mut events = server.events().await;
    let mut big = new_event("big", "t.big");
    big.data = vec![b'x'; 9 * 1024 * 1024];
    let refused = events
        .publish(publish_req(vec![new_event("small", "t.small"), big]))
        .await;
    assert_status(
        refused,
        Code::FailedPrecondition,
        "over the 8388608 bytes the NATS server takes in one message",
    );
    assert!(
        read_all(&mut events).await.is_empty(),
        "nothing of the append was stored"
    );
}
