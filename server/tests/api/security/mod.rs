//! Security: bearer tokens and scopes on every RPC, event-type/stream restrictions, token
//! revocation on reload (in-process and by SIGHUP), TLS and mTLS, the loopback rule for dev
//! mode, and the per-token abuse limits.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use ordo_api::v1::{
    AckRequest, BackupRequest, CancelOrderRequest, CompactRequest, ConsumeRequest,
    CreateWebhookRequest, DeleteStreamRequest, DeleteWebhookRequest, EventFilter, GetGroupRequest,
    GetLogInfoRequest, GetOrderRequest, GetWebhookRequest, JoinGroup, ListDeadLettersRequest,
    ListDeliveriesRequest, ListGroupsRequest, ListOrdersRequest, ListParkedRequest,
    ListWebhooksRequest, PublishRequest, ReadEventsRequest, RedriveDeadLettersRequest,
    ReplayParkedRequest, RotateSecretRequest, SubscribeRequest, SubscribeResponse,
    UpdateOrderStatusRequest, UpdateWebhookRequest, admin_service_client::AdminServiceClient,
    consume_request, consumer_service_client::ConsumerServiceClient,
    event_service_client::EventServiceClient, order_service_client::OrderServiceClient,
    subscribe_response::Message, webhook_service_client::WebhookServiceClient,
};
use ordo_server::{
    ServerConfig,
    auth::{Auth, Scope, hash_token},
    config::TlsConfig,
};
use ordo_test_harness::{
    ChildServer, TestServer,
    api::{create_req, end, new_event, publish_req},
    consumer::group_req,
    free_port,
    pki::{Pki, pki, write_pem},
    tokens::{Tok, with_token, write_tokens},
};
use tempfile::TempDir;
use tokio_stream::StreamExt;
use tonic::{
    Code, Request, Status, Streaming,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

mod exposure;
mod limits;
mod scopes;
mod tls;
mod tokens;

/// A server with auth on; returns it, the reload handle and the tokens file path.
async fn start_with_tokens(
    tokens: &[Tok<'_>],
    configure: impl FnOnce(&mut ServerConfig),
) -> (TestServer, Auth, TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tokens.toml");
    write_tokens(&path, tokens);
    let auth = Auth::load(&path).expect("load tokens");
    let server = TestServer::start_with_auth(auth.clone(), configure).await;
    (server, auth, dir, path)
}

#[derive(Debug, Clone, Copy)]
enum Rpc {
    CreateOrder,
    GetOrder,
    ListOrders,
    UpdateOrderStatus,
    CancelOrder,
    Subscribe,
    ReadEvents,
    Publish,
    CreateWebhook,
    GetWebhook,
    ListWebhooks,
    UpdateWebhook,
    DeleteWebhook,
    RotateSecret,
    ListDeliveries,
    ListDeadLetters,
    RedriveDeadLetters,
    GetLogInfo,
    Compact,
    DeleteStream,
    Backup,
    CreateGroup,
    GetGroup,
    ListGroups,
    Consume,
    Ack,
    ListParked,
    ReplayParked,
}

const ALL_RPCS: [Rpc; 28] = [
    Rpc::CreateOrder,
    Rpc::GetOrder,
    Rpc::ListOrders,
    Rpc::UpdateOrderStatus,
    Rpc::CancelOrder,
    Rpc::Subscribe,
    Rpc::ReadEvents,
    Rpc::Publish,
    Rpc::CreateWebhook,
    Rpc::GetWebhook,
    Rpc::ListWebhooks,
    Rpc::UpdateWebhook,
    Rpc::DeleteWebhook,
    Rpc::RotateSecret,
    Rpc::ListDeliveries,
    Rpc::ListDeadLetters,
    Rpc::RedriveDeadLetters,
    Rpc::GetLogInfo,
    Rpc::Compact,
    Rpc::DeleteStream,
    Rpc::Backup,
    Rpc::CreateGroup,
    Rpc::GetGroup,
    Rpc::ListGroups,
    Rpc::Consume,
    Rpc::Ack,
    Rpc::ListParked,
    Rpc::ReplayParked,
];

impl Rpc {
    fn scope(self) -> Scope {
        match self {
            Rpc::CreateOrder | Rpc::UpdateOrderStatus | Rpc::CancelOrder => Scope::OrdersWrite,
            Rpc::GetOrder | Rpc::ListOrders => Scope::OrdersRead,
            Rpc::Subscribe | Rpc::ReadEvents => Scope::EventsSubscribe,
            Rpc::Publish => Scope::EventsPublish,
            Rpc::GetLogInfo | Rpc::Compact | Rpc::DeleteStream | Rpc::Backup => Scope::Admin,
            Rpc::CreateGroup
            | Rpc::GetGroup
            | Rpc::ListGroups
            | Rpc::Consume
            | Rpc::Ack
            | Rpc::ListParked
            | Rpc::ReplayParked => Scope::EventsConsume,
            _ => Scope::WebhooksAdmin,
        }
    }

    /// Calls the RPC with a plausible request; `Ok` when the server accepted the call.
    async fn call(self, channel: &Channel, token: Option<&str>) -> Result<(), Status> {
        let mut orders = OrderServiceClient::new(channel.clone());
        let mut events = EventServiceClient::new(channel.clone());
        let mut hooks = WebhookServiceClient::new(channel.clone());
        let mut admin = AdminServiceClient::new(channel.clone());
        let mut groups = ConsumerServiceClient::new(channel.clone());
        let t = token;
        let missing = "01ARZ3NDEKTSV4RRFFQ69G5FAV".to_string();
        match self {
            Rpc::CreateOrder => orders
                .create_order(with_token(create_req("c-1"), t))
                .await
                .map(drop),
            Rpc::GetOrder => orders
                .get_order(with_token(
                    GetOrderRequest {
                        order_id: missing,
                        at_version: None,
                    },
                    t,
                ))
                .await
                .map(drop),
            Rpc::ListOrders => orders
                .list_orders(with_token(ListOrdersRequest::default(), t))
                .await
                .map(drop),
            Rpc::UpdateOrderStatus => orders
                .update_order_status(with_token(
                    UpdateOrderStatusRequest {
                        order_id: missing,
                        status: 2,
                        ..Default::default()
                    },
                    t,
                ))
                .await
                .map(drop),
            Rpc::CancelOrder => orders
                .cancel_order(with_token(
                    CancelOrderRequest {
                        order_id: missing,
                        ..Default::default()
                    },
                    t,
                ))
                .await
                .map(drop),
            Rpc::Subscribe => events
                .subscribe(with_token(SubscribeRequest::default(), t))
                .await
                .map(drop),
            Rpc::ReadEvents => events
                .read_events(with_token(ReadEventsRequest::default(), t))
                .await
                .map(drop),
            Rpc::Publish => events
                .publish(with_token(publish_request("misc-1", "misc.happened"), t))
                .await
                .map(drop),
            Rpc::CreateWebhook => hooks
                .create_webhook(with_token(
                    CreateWebhookRequest {
                        url: "http://127.0.0.1:9/hook".into(),
                        ..Default::default()
                    },
                    t,
                ))
                .await
                .map(drop),
            Rpc::GetWebhook => hooks
                .get_webhook(with_token(GetWebhookRequest { id: missing }, t))
                .await
                .map(drop),
            Rpc::ListWebhooks => hooks
                .list_webhooks(with_token(ListWebhooksRequest::default(), t))
                .await
                .map(drop),
            Rpc::UpdateWebhook => hooks
                .update_webhook(with_token(
                    UpdateWebhookRequest {
                        id: missing,
                        ..Default::default()
                    },
                    t,
                ))
                .await
                .map(drop),
            Rpc::DeleteWebhook => hooks
                .delete_webhook(with_token(DeleteWebhookRequest { id: missing }, t))
                .await
                .map(drop),
            Rpc::RotateSecret => hooks
                .rotate_secret(with_token(
                    RotateSecretRequest {
                        id: missing,
                        ..Default::default()
                    },
                    t,
                ))
                .await
                .map(drop),
            Rpc::ListDeliveries => hooks
                .list_deliveries(with_token(
                    ListDeliveriesRequest {
                        webhook_id: missing,
                        ..Default::default()
                    },
                    t,
                ))
                .await
                .map(drop),
            Rpc::ListDeadLetters => hooks
                .list_dead_letters(with_token(
                    ListDeadLettersRequest {
                        webhook_id: missing,
                        ..Default::default()
                    },
                    t,
                ))
                .await
                .map(drop),
            Rpc::RedriveDeadLetters => hooks
                .redrive_dead_letters(with_token(
                    RedriveDeadLettersRequest {
                        webhook_id: missing,
                        ..Default::default()
                    },
                    t,
                ))
                .await
                .map(drop),
            Rpc::GetLogInfo => admin
                .get_log_info(with_token(GetLogInfoRequest {}, t))
                .await
                .map(drop),
            Rpc::Compact => admin
                .compact(with_token(CompactRequest {}, t))
                .await
                .map(drop),
            Rpc::DeleteStream => admin
                .delete_stream(with_token(
                    DeleteStreamRequest {
                        stream_id: "missing-stream".into(),
                    },
                    t,
                ))
                .await
                .map(drop),
            Rpc::Backup => admin
                .backup(with_token(BackupRequest {}, t))
                .await
                .map(drop),
            Rpc::CreateGroup => groups
                .create_group(with_token(group_req("sec"), t))
                .await
                .map(drop),
            Rpc::GetGroup => groups
                .get_group(with_token(GetGroupRequest { name: missing }, t))
                .await
                .map(drop),
            Rpc::ListGroups => groups
                .list_groups(with_token(ListGroupsRequest::default(), t))
                .await
                .map(drop),
            Rpc::Consume => {
                let join = ConsumeRequest {
                    message: Some(consume_request::Message::Join(JoinGroup {
                        group: missing,
                        ..Default::default()
                    })),
                };
                groups
                    .consume(with_token(tokio_stream::iter(vec![join]), t))
                    .await
                    .map(drop)
            }
            Rpc::Ack => groups
                .ack(with_token(
                    AckRequest {
                        group: missing.clone(),
                        delivery_ids: vec![format!("{missing}/1/1")],
                    },
                    t,
                ))
                .await
                .map(drop),
            Rpc::ListParked => groups
                .list_parked(with_token(
                    ListParkedRequest {
                        group: missing,
                        ..Default::default()
                    },
                    t,
                ))
                .await
                .map(drop),
            Rpc::ReplayParked => groups
                .replay_parked(with_token(
                    ReplayParkedRequest {
                        group: missing,
                        ..Default::default()
                    },
                    t,
                ))
                .await
                .map(drop),
        }
    }
}

fn publish_request(stream: &str, ty: &str) -> PublishRequest {
    publish_req(vec![new_event(stream, ty)])
}

async fn head(channel: &Channel, token: Option<&str>) -> u64 {
    EventServiceClient::new(channel.clone())
        .read_events(with_token(
            ReadEventsRequest {
                start: end(),
                ..Default::default()
            },
            token,
        ))
        .await
        .expect("read head")
        .into_inner()
        .head_offset
}

const ADMIN: &str = "admin-token-0123456789abcdef";

fn all_but(scope: Scope) -> Vec<Scope> {
    Scope::ALL.into_iter().filter(|s| *s != scope).collect()
}

async fn collect_until_caught_up(
    stream: &mut Streaming<SubscribeResponse>,
) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("stream item in time")
            .expect("stream open")
            .expect("no error");
        match item.message {
            Some(Message::Event(e)) => seen.push((e.r#type, e.stream_id)),
            Some(Message::CaughtUp(_)) => return seen,
            _ => {}
        }
    }
}
