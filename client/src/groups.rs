//! [`OrdoClient`]'s consumer-group calls: one typed method per `ConsumerService` RPC, and
//! [`OrdoClient::consume`], the self-rejoining member most callers want instead of the raw
//! [`OrdoClient::consume_once`].

use ordo_api::v1::{
    AckRequest, ConsumeRequest, ConsumeResponse, ConsumerGroup, CreateGroupRequest,
    DeleteGroupRequest, GetGroupRequest, ListGroupsRequest, ListGroupsResponse, ListParkedRequest,
    ListParkedResponse, NackRequest, ReplayParkedRequest, ReplayParkedResponse, UpdateGroupRequest,
};
use tonic::{IntoStreamingRequest, Streaming};

use crate::{
    client::OrdoClient,
    consume::{ConsumeOptions, Consumer},
    error::{ClientError, Result},
};

impl OrdoClient {
    /// Defines a consumer group; returns it with its defaults filled in. `AlreadyExists` if the
    /// name is taken.
    pub async fn create_group(&self, request: CreateGroupRequest) -> Result<ConsumerGroup> {
        let response = self.consumers.clone().create_group(request).await?;
        expect_group(response.into_inner().group)
    }

    /// A group's settings and its progress now (settled offset, head, members, in flight,
    /// retrying, parked).
    pub async fn get_group(&self, name: &str) -> Result<ConsumerGroup> {
        let request = GetGroupRequest {
            name: name.to_string(),
        };
        let response = self.consumers.clone().get_group(request).await?;
        expect_group(response.into_inner().group)
    }

    /// One page of groups in name order; pass `next_page_token` back for the next one.
    pub async fn list_groups(&self, request: ListGroupsRequest) -> Result<ListGroupsResponse> {
        Ok(self
            .consumers
            .clone()
            .list_groups(request)
            .await?
            .into_inner())
    }

    /// Changes the settings set in `request` (the filter and start cannot change); returns the
    /// group as it is now.
    pub async fn update_group(&self, request: UpdateGroupRequest) -> Result<ConsumerGroup> {
        let response = self.consumers.clone().update_group(request).await?;
        expect_group(response.into_inner().group)
    }

    /// Removes the group, its progress and its parked events; its members' streams end with
    /// `NotFound`.
    pub async fn delete_group(&self, name: &str) -> Result<()> {
        let request = DeleteGroupRequest {
            name: name.to_string(),
        };
        self.consumers.clone().delete_group(request).await?;
        Ok(())
    }

    /// Acks deliveries by id without a Consume stream; returns once they are durable. All or
    /// nothing: the first bad id fails the call.
    pub async fn ack_deliveries(&self, group: &str, delivery_ids: Vec<String>) -> Result<()> {
        let request = AckRequest {
            group: group.to_string(),
            delivery_ids,
        };
        self.consumers.clone().ack(request).await?;
        Ok(())
    }

    /// Nacks deliveries by id without a Consume stream (retry or park), with the rules of
    /// [`OrdoClient::ack_deliveries`].
    pub async fn nack_deliveries(&self, request: NackRequest) -> Result<()> {
        self.consumers.clone().nack(request).await?;
        Ok(())
    }

    /// One page of the group's dead-letter queue, in offset order.
    pub async fn list_parked(&self, request: ListParkedRequest) -> Result<ListParkedResponse> {
        Ok(self
            .consumers
            .clone()
            .list_parked(request)
            .await?
            .into_inner())
    }

    /// Takes up to `limit` parked events out of the dead-letter queue and delivers them again;
    /// call again from `next_from_offset` while `more` is set.
    pub async fn replay_parked(
        &self,
        request: ReplayParkedRequest,
    ) -> Result<ReplayParkedResponse> {
        Ok(self
            .consumers
            .clone()
            .replay_parked(request)
            .await?
            .into_inner())
    }

    /// One raw `Consume` call: the first request must be `join`; it ends when the connection
    /// does. Most callers want [`OrdoClient::consume`], which rejoins by itself.
    pub async fn consume_once(
        &self,
        requests: impl IntoStreamingRequest<Message = ConsumeRequest>,
    ) -> Result<Streaming<ConsumeResponse>> {
        Ok(self.consumers.clone().consume(requests).await?.into_inner())
    }

    /// Joins a group as a member that rejoins after network drops and server restarts. Events
    /// not acked before a break are delivered again (at-least-once); see [`Consumer`].
    pub fn consume(&self, options: ConsumeOptions) -> Result<Consumer> {
        Consumer::start(self.clone(), options)
    }
}

fn expect_group(group: Option<ConsumerGroup>) -> Result<ConsumerGroup> {
    group.ok_or_else(|| ClientError::Other {
        code: tonic::Code::Internal,
        message: "the server's response carries no consumer group".into(),
    })
}
