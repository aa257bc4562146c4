//! Webhook delivery and consumer groups run on one node: the holder of the workers lease.
//! The other nodes refuse their calls with UNAVAILABLE naming the holder. Events appended on
//! any node are delivered once (not once per node). When the holder stops, another node takes
//! over, and it keeps the webhooks, groups and progress that the first one stored.

use std::time::{Duration, Instant};

use ordo_api::v1::{
    CreateGroupRequest, CreateWebhookRequest, GetGroupRequest, ListWebhooksRequest,
    consumer_service_client::ConsumerServiceClient, webhook_service_client::WebhookServiceClient,
};
use ordo_test_harness::{NatsCluster, TestServer, api::*, receiver::Receiver};
use tonic::Code;

use crate::scale_out::fresh_stream;

fn local_receivers(config: &mut ordo_server::ServerConfig) {
    config.webhooks.allow_nets = vec!["127.0.0.0/8".parse().expect("net")];
}

/// Which of the two nodes holds the lease: the one whose webhook calls succeed. The other's
/// refusal names the holder's address.
async fn holder(nodes: &[&TestServer; 2]) -> (usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut answers = Vec::new();
        for node in nodes {
            let mut hooks = WebhookServiceClient::new(node.channel().await);
            answers.push(hooks.list_webhooks(ListWebhooksRequest::default()).await);
        }
        match (&answers[0], &answers[1]) {
            (Ok(_), Err(status)) | (Err(status), Ok(_)) => {
                let (held, other) = if answers[0].is_ok() { (0, 1) } else { (1, 0) };
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(
                    status.message().contains(&nodes[held].addr.to_string()),
                    "the refusal names the holder {}: {status:?}",
                    nodes[held].addr
                );
                return (held, other);
            }
            _ => {
                assert!(
                    Instant::now() < deadline,
                    "exactly one node should serve webhooks: {answers:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_delivers_and_another_takes_over_when_it_stops() {
    let cluster = NatsCluster::shared();
    let stream = fresh_stream("workers");
    let a = TestServer::start_nats_node(&stream, cluster, local_receivers).await;
    let b = TestServer::start_nats_node(&stream, cluster, local_receivers).await;
    let (held, other) = holder(&[&a, &b]).await;
    let mut nodes = [Some(a), Some(b)];
    let holder_node = nodes[held].take().expect("holder");
    let other_node = nodes[other].take().expect("other");

    let receiver = Receiver::start().await;
    let mut hooks = WebhookServiceClient::new(holder_node.channel().await);
    hooks
        .create_webhook(CreateWebhookRequest {
            url: receiver.url(),
            event_types: vec!["work.*".into()],
            ..Default::default()
        })
        .await
        .expect("create webhook on the holder");
    let mut consumers = ConsumerServiceClient::new(holder_node.channel().await);
    consumers
        .create_group(CreateGroupRequest {
            name: "workers".into(),
            ..Default::default()
        })
        .await
        .expect("create group on the holder");
    let refused = ConsumerServiceClient::new(other_node.channel().await)
        .get_group(GetGroupRequest {
            name: "workers".into(),
        })
        .await;
    assert_status(refused, Code::Unavailable, "call that node");

    // Appended on the node that does not deliver: delivered once, by the holder.
    let mut events = other_node.events().await;
    for i in 0..5 {
        events
            .publish(publish_req(vec![new_event(&format!("w-{i}"), "work.done")]))
            .await
            .expect("publish");
    }
    let delivered = receiver.wait_delivered(5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.delivered().len(),
        5,
        "each event delivered once, not once per node: {delivered:?}"
    );

    // The holder stops (handing the lease over); the other node takes over with the stored
    // webhook and group, and delivers what comes next from the stored cursor.
    holder_node.stop().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let group = loop {
        let answer = ConsumerServiceClient::new(other_node.channel().await)
            .get_group(GetGroupRequest {
                name: "workers".into(),
            })
            .await;
        match answer {
            Ok(group) => break group.into_inner().group.expect("group"),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(Instant::now() < deadline, "no takeover within 15 s");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(group.name, "workers");
    events
        .publish(publish_req(vec![new_event("w-after", "work.done")]))
        .await
        .expect("publish after the takeover");
    let delivered = receiver.wait_delivered(6).await;
    let subjects: Vec<String> = delivered
        .iter()
        .map(|r| {
            r.json()["ordostream"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(subjects.len(), 6, "{subjects:?}");
    assert!(
        subjects.iter().any(|s| s == "w-after"),
        "the new holder delivers: {subjects:?}"
    );
}
