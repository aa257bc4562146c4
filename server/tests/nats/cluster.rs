//! The NATS test cluster itself (harness/src/nats.rs), independent of Ordo: if these fail, the
//! scale-out tests' failures say nothing about the server. JetStream must keep an R3 stream
//! writable with one node killed, and a restarted node must serve again from its own store.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream::Config};
use ordo_test_harness::{NatsCluster, backend::stream_for_dir};

/// Publishes `payload` on `subject`, retrying for up to 15 s while the cluster fails over (a
/// client connected to a killed node reconnects to another; the stream may elect a leader).
async fn publish_retrying(js: &jetstream::Context, subject: &str, payload: &'static str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let attempt = async { js.publish(subject.to_string(), payload.into()).await?.await };
        match attempt.await {
            Ok(ack) => return ack.sequence,
            Err(err) => {
                assert!(Instant::now() < deadline, "publish kept failing: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test]
async fn r3_stream_stays_writable_through_a_node_kill_and_restart() {
    let started = Instant::now();
    let cluster = NatsCluster::start(3);
    let start_time = started.elapsed();
    let js = cluster.jetstream().await;
    let stream = js
        .create_stream(Config {
            name: "SMOKE".into(),
            subjects: vec!["smoke.>".into()],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .expect("create an R3 stream");
    assert_eq!(publish_retrying(&js, "smoke.a", "one").await, 1);
    let message = stream.get_raw_message(1).await.expect("read it back");
    assert_eq!(&message.payload[..], b"one");

    let pid = cluster.pid(0).expect("node 0 runs");
    cluster.kill9(0);
    assert!(cluster.pid(0).is_none());
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "nats-server {pid} is gone after kill9"
    );
    assert_eq!(publish_retrying(&js, "smoke.b", "two").await, 2);

    cluster.restart(0);
    // Node 0 alone serves the stream again, with both messages.
    let only_node_0 = jetstream::new(
        async_nats::connect(cluster.url(0))
            .await
            .expect("connect to node 0"),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let stream = loop {
        match only_node_0.get_stream("SMOKE").await {
            Ok(stream) => break stream,
            Err(err) => {
                assert!(
                    Instant::now() < deadline,
                    "node 0 never served SMOKE: {err}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let message = stream.get_raw_message(2).await.expect("read the second");
    assert_eq!(&message.payload[..], b"two");
    eprintln!("3-node cluster started in {start_time:?}");

    let dir = cluster.dir().to_path_buf();
    drop(cluster);
    assert!(!dir.exists(), "dropping the cluster deletes its stores");
}

#[tokio::test]
async fn a_one_node_cluster_serves_jetstream() {
    let cluster = NatsCluster::start(1);
    assert_eq!(cluster.urls().len(), 1);
    let js = cluster.jetstream().await;
    js.create_stream(Config {
        name: "SOLO".into(),
        subjects: vec!["solo".into()],
        ..Default::default()
    })
    .await
    .expect("create an R1 stream");
    assert_eq!(publish_retrying(&js, "solo", "x").await, 1);
}

/// Test servers find their log again after a restart on the same data dir, and no two data
/// dirs share one.
#[test]
fn stream_names_are_stable_per_data_dir_and_valid() {
    let a = stream_for_dir(std::path::Path::new("/tmp/.tmpAbC/x y"));
    assert_eq!(a, stream_for_dir(std::path::Path::new("/tmp/.tmpAbC/x y")));
    assert_ne!(a, stream_for_dir(std::path::Path::new("/tmp/.tmpAbD/x y")));
    assert_eq!(a.len(), 17);
    assert!(a.starts_with('T') && a.chars().all(|c| c.is_ascii_alphanumeric()));
}
