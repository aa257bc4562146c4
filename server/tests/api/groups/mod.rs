//! ConsumerService, black-box: real servers, real Consume streams (the harness's `Member`), and
//! for crashes the real binary killed with SIGKILL. Timeouts and backoffs are in milliseconds
//! so the suite stays fast; every wait has a deadline.

use std::time::Duration;

use ordo_api::v1::{CreateGroupRequest, GetGroupRequest, NewEvent, PublishRequest};
use ordo_test_harness::{
    api::new_event,
    consumer::{Consumers, group_req},
};

mod bad_input;
mod basics;
mod crash;
mod redelivery;
mod retention;
mod strategies;

const WAIT: Duration = Duration::from_secs(10);

/// Publishes `n` events spread over `streams` streams (`s-0`..), in batches; returns the last
/// offset.
async fn publish(
    events: &mut ordo_api::v1::event_service_client::EventServiceClient<tonic::transport::Channel>,
    n: usize,
    streams: usize,
) -> u64 {
    let mut last = 0;
    let all: Vec<NewEvent> = (0..n)
        .map(|i| new_event(&format!("s-{}", i % streams.max(1)), "item.added"))
        .collect();
    for batch in all.chunks(500) {
        let response = events
            .publish(PublishRequest {
                events: batch.to_vec(),
            })
            .await
            .expect("publish")
            .into_inner();
        last = response.positions.last().map_or(last, |p| p.offset);
    }
    last
}

async fn create(consumers: &mut Consumers, req: CreateGroupRequest) {
    consumers.create_group(req).await.expect("create group");
}

async fn status(consumers: &mut Consumers, name: &str) -> ordo_api::v1::ConsumerGroup {
    consumers
        .get_group(GetGroupRequest { name: name.into() })
        .await
        .expect("get group")
        .into_inner()
        .group
        .expect("group")
}

/// A group from the start with short timeouts, for redelivery tests.
fn fast_group(name: &str, ack_timeout_ms: u32, max_deliveries: u32) -> CreateGroupRequest {
    CreateGroupRequest {
        ack_timeout_ms,
        max_deliveries,
        retry_backoff: Some(ordo_api::v1::RetryBackoff {
            initial_ms: 50,
            max_ms: 200,
        }),
        ..group_req(name)
    }
}
