//! A consumer-group member over a real Consume stream, for tests: join, read deliveries with a
//! deadline, ack/nack/extend and wait for the server's answers.

use std::time::Duration;

use ordo_api::v1::{
    AckDeliveries, ConsumeRequest, ConsumeResponse, ConsumerGroup, CreateGroupRequest, Delivery,
    ExtendDeliveries, JoinGroup, NackAction, NackDeliveries, Rejected,
    consume_request::Message as Request, consume_response::Message as Response,
    consumer_service_client::ConsumerServiceClient,
};
use tokio::sync::mpsc;
use tonic::{Status, Streaming, transport::Channel};

pub type Consumers = ConsumerServiceClient<Channel>;

/// A group named `name` reading from the start of the log with the given tweaks.
pub fn group_req(name: &str) -> CreateGroupRequest {
    CreateGroupRequest {
        name: name.into(),
        start: crate::api::start(),
        ..Default::default()
    }
}

/// One member's Consume stream.
pub struct Member {
    pub member_id: String,
    pub group: ConsumerGroup,
    requests: mpsc::Sender<ConsumeRequest>,
    responses: Streaming<ConsumeResponse>,
}

/// What a member received besides deliveries.
#[derive(Debug)]
pub enum Answer {
    Settled(Vec<String>),
    Rejected(Rejected),
}

impl Member {
    /// Joins `group`; panics unless the server answers `joined`.
    pub async fn join(client: &mut Consumers, group: &str, max_in_flight: u32) -> Self {
        Self::try_join(client, group, max_in_flight)
            .await
            .expect("join")
    }

    pub async fn try_join(
        client: &mut Consumers,
        group: &str,
        max_in_flight: u32,
    ) -> Result<Self, Status> {
        let (requests, rx) = mpsc::channel(64);
        requests
            .send(ConsumeRequest {
                message: Some(Request::Join(JoinGroup {
                    group: group.into(),
                    member_name: "test".into(),
                    max_in_flight,
                })),
            })
            .await
            .expect("queue join");
        let mut responses = client
            .consume(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), responses.message())
            .await
            .expect("joined within 10 s")?;
        match first.and_then(|r| r.message) {
            Some(Response::Joined(joined)) => Ok(Self {
                member_id: joined.member_id,
                group: joined.group.unwrap_or_default(),
                requests,
                responses,
            }),
            other => panic!("expected joined, got {other:?}"),
        }
    }

    /// The next message, or None when the stream ended cleanly; panics after `within`.
    pub async fn next(&mut self, within: Duration) -> Result<Option<Response>, Status> {
        match tokio::time::timeout(within, self.responses.message()).await {
            Ok(message) => Ok(message?.and_then(|r| r.message)),
            Err(_) => panic!("no message within {within:?}"),
        }
    }

    /// The next message if one comes within `within`.
    pub async fn poll(&mut self, within: Duration) -> Option<Result<Option<Response>, Status>> {
        match tokio::time::timeout(within, self.responses.message()).await {
            Ok(message) => Some(message.map(|m| m.and_then(|r| r.message))),
            Err(_) => None,
        }
    }

    /// The next delivery (answers to acks that come first are skipped).
    pub async fn delivery(&mut self, within: Duration) -> Delivery {
        loop {
            match self.next(within).await {
                Ok(Some(Response::Delivery(d))) => return d,
                Ok(Some(Response::Settled(_))) => continue,
                other => panic!("expected a delivery, got {other:?}"),
            }
        }
    }

    /// `n` deliveries.
    pub async fn deliveries(&mut self, n: usize, within: Duration) -> Vec<Delivery> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.delivery(within).await);
        }
        out
    }

    /// Asserts no delivery arrives for `quiet` (settle answers are ignored).
    pub async fn assert_no_delivery(&mut self, quiet: Duration) {
        let deadline = tokio::time::Instant::now() + quiet;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match self.poll(left).await {
                None => return,
                Some(Ok(Some(Response::Settled(_)))) => continue,
                Some(other) => panic!("expected no delivery for {quiet:?}, got {other:?}"),
            }
        }
    }

    pub async fn send(&self, message: Request) {
        self.requests
            .send(ConsumeRequest {
                message: Some(message),
            })
            .await
            .expect("request stream open");
    }

    pub async fn ack(&self, ids: Vec<String>) {
        self.send(Request::Ack(AckDeliveries { delivery_ids: ids }))
            .await;
    }

    pub async fn nack(&self, ids: Vec<String>, action: NackAction, delay_ms: u32) {
        self.send(Request::Nack(NackDeliveries {
            delivery_ids: ids,
            action: action as i32,
            delay_ms,
            reason: "test nack".into(),
        }))
        .await;
    }

    pub async fn extend(&self, ids: Vec<String>, extend_ms: u32) {
        self.send(Request::Extend(ExtendDeliveries {
            delivery_ids: ids,
            extend_ms,
        }))
        .await;
    }

    /// The answer to the next ack or nack (deliveries that arrive first are returned too).
    pub async fn answer(&mut self, within: Duration) -> (Answer, Vec<Delivery>) {
        let mut deliveries = Vec::new();
        loop {
            match self.next(within).await {
                Ok(Some(Response::Settled(s))) => {
                    return (Answer::Settled(s.delivery_ids), deliveries);
                }
                Ok(Some(Response::Rejected(r))) => return (Answer::Rejected(r), deliveries),
                Ok(Some(Response::Delivery(d))) => deliveries.push(d),
                other => panic!("expected an answer, got {other:?}"),
            }
        }
    }

    /// Acks and waits until the server says the acks are durable.
    pub async fn ack_durably(&mut self, ids: Vec<String>) -> Vec<Delivery> {
        self.ack(ids.clone()).await;
        match self.answer(Duration::from_secs(10)).await {
            (Answer::Settled(settled), deliveries) => {
                assert_eq!(settled, ids);
                deliveries
            }
            (other, _) => panic!("ack refused: {other:?}"),
        }
    }

    /// Closes the send side: the server takes that as leaving the group.
    pub fn leave(self) -> Streaming<ConsumeResponse> {
        self.responses
    }
}

/// The stream id of a delivery.
pub fn stream_of(delivery: &Delivery) -> &str {
    delivery
        .event
        .as_ref()
        .map(|e| e.stream_id.as_str())
        .unwrap_or_default()
}

/// The offset of a delivery.
pub fn offset_of(delivery: &Delivery) -> u64 {
    delivery.event.as_ref().map_or(0, |e| e.offset)
}
