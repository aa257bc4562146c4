//! [`OrdoClient`]: one typed method per RPC over a single shared HTTP/2 channel.

use std::time::Duration;

use ordo_api::v1::{
    BackupRequest, BackupResponse, CancelOrderRequest, CompactRequest, CompactResponse,
    CreateOrderRequest, DeleteStreamRequest, DeleteStreamResponse, GetLogInfoRequest,
    GetLogInfoResponse, GetOrderRequest, ListOrdersRequest, ListOrdersResponse, NewEvent, Order,
    PublishRequest, PublishResponse, ReadEventsRequest, ReadEventsResponse, SubscribeRequest,
    SubscribeResponse, UpdateOrderStatusRequest, admin_service_client::AdminServiceClient,
    consumer_service_client::ConsumerServiceClient, event_service_client::EventServiceClient,
    order_service_client::OrderServiceClient,
};
use tonic::{
    Streaming,
    service::interceptor::InterceptedService,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use tonic_health::pb::{HealthCheckRequest, health_check_response, health_client::HealthClient};

use crate::{
    auth::AuthInterceptor,
    error::{ClientError, Result},
    producer::Producer,
    subscribe::{SubscribeOptions, Subscription},
};

pub(crate) type AuthChannel = InterceptedService<Channel, AuthInterceptor>;

/// TLS settings for an `https://` address. This client has no built-in trust store, so the CA
/// that signed the server's certificate must be given (self-hosted Ordo usually has its own CA).
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct TlsOptions {
    /// PEM of the CA that signed the server's certificate.
    pub ca_certificate_pem: Option<Vec<u8>>,
    /// The name to verify the server's certificate against, if not the URL's host.
    pub domain_name: Option<String>,
    /// Client certificate and private key (PEM), for servers that require mutual TLS.
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsOptions {
    /// No settings yet; add at least [`TlsOptions::ca_certificate_pem`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Trust this CA (PEM) for the server's certificate.
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_certificate_pem = Some(pem.into());
        self
    }

    /// Verify the server's certificate against this name instead of the URL's host.
    pub fn domain_name(mut self, name: impl Into<String>) -> Self {
        self.domain_name = Some(name.into());
        self
    }

    /// Present this client certificate and key (PEM), for mutual TLS.
    pub fn identity_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.identity_pem = Some((cert.into(), key.into()));
        self
    }

    fn to_tonic(&self) -> Result<ClientTlsConfig> {
        let Some(ca) = &self.ca_certificate_pem else {
            return Err(ClientError::Config(
                "TLS needs the CA certificate that signed the server's certificate (this client has no built-in trust store)".into(),
            ));
        };
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if let Some(name) = &self.domain_name {
            config = config.domain_name(name.clone());
        }
        if let Some((cert, key)) = &self.identity_pem {
            config = config.identity(Identity::from_pem(cert, key));
        }
        Ok(config)
    }
}

impl std::fmt::Debug for TlsOptions {
    // Never print the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("ca_certificate_pem", &self.ca_certificate_pem.is_some())
            .field("domain_name", &self.domain_name)
            .field("identity_pem", &self.identity_pem.is_some())
            .finish()
    }
}

/// Configures an [`OrdoClient`]. Start with [`OrdoClient::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    url: String,
    bearer_token: Option<String>,
    tls: Option<TlsOptions>,
    connect_timeout: Duration,
    request_timeout: Option<Duration>,
    lazy: bool,
}

impl ClientBuilder {
    /// Sends `authorization: Bearer <token>` with every call.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.bearer_token = Some(token.into());
        self
    }

    /// Connects with TLS; the address must be `https://`.
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// How long to wait for a TCP connection. Default 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// A deadline for each unary call. Default none. It does not apply to subscriptions, which
    /// watch for stalls with heartbeats instead.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// Do not dial now: the first call connects. Useful when the server may start later.
    pub fn lazy(mut self, lazy: bool) -> Self {
        self.lazy = lazy;
        self
    }

    /// Builds the client, connecting now unless [`ClientBuilder::lazy`] was set.
    pub async fn connect(self) -> Result<OrdoClient> {
        let https = self.url.starts_with("https://");
        let tls = match (&self.tls, https) {
            (Some(tls), true) => Some(tls.to_tonic()?),
            (None, false) => None,
            (None, true) => {
                return Err(ClientError::Config(
                    "an https:// address needs TLS options with the server's CA certificate".into(),
                ));
            }
            (Some(_), false) => {
                return Err(ClientError::Config(
                    "TLS options need an https:// address".into(),
                ));
            }
        };
        let urls: Vec<&str> = self.url.split(',').map(str::trim).collect();
        let mut endpoints = Vec::with_capacity(urls.len());
        for url in &urls {
            endpoints.push(self.endpoint(url, tls.as_ref())?);
        }
        let channel = match endpoints.pop() {
            Some(endpoint) if endpoints.is_empty() => {
                if self.lazy {
                    endpoint.connect_lazy()
                } else {
                    endpoint
                        .connect()
                        .await
                        .map_err(|err| ClientError::Connect {
                            addr: self.url.clone(),
                            reason: error_chain(&err),
                        })?
                }
            }
            // Several nodes of one deployment (`--store nats`): calls go to the nodes that
            // answer, so a node that dies costs the calls in flight on it, not the client.
            Some(last) => {
                endpoints.push(last);
                Channel::balance_list(endpoints.into_iter())
            }
            None => {
                return Err(ClientError::Config("no server address given".into()));
            }
        };
        let auth = AuthInterceptor::new(self.bearer_token.as_deref())?;
        Ok(OrdoClient {
            orders: OrderServiceClient::with_interceptor(channel.clone(), auth.clone()),
            events: EventServiceClient::with_interceptor(channel.clone(), auth.clone()),
            admin: AdminServiceClient::with_interceptor(channel.clone(), auth.clone()),
            consumers: ConsumerServiceClient::with_interceptor(channel.clone(), auth.clone()),
            health: HealthClient::with_interceptor(channel, auth),
            url: self.url,
        })
    }
}

impl ClientBuilder {
    fn endpoint(&self, url: &str, tls: Option<&ClientTlsConfig>) -> Result<Endpoint> {
        let mut endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|err| ClientError::Config(format!("invalid address {url:?}: {err}")))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            // Keepalive pings let a dead connection fail instead of hanging silently.
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        if let Some(timeout) = self.request_timeout {
            endpoint = endpoint.timeout(timeout);
        }
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(|err| {
                ClientError::Config(format!("invalid TLS settings: {}", error_chain(&err)))
            })?;
        }
        Ok(endpoint)
    }
}

/// The innermost useful text of a transport error ("tcp connect error: Connection refused"):
/// tonic's own `Display` only says "transport error".
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

/// The server's health as reported by the standard gRPC health service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Serving requests.
    Serving,
    /// Up but not serving (e.g. shutting down).
    NotServing,
    /// The server does not know the service, or reported something else.
    Unknown,
}

/// A connection to an Ordo server. Cheap to clone: clones share one HTTP/2 connection.
#[derive(Debug, Clone)]
pub struct OrdoClient {
    orders: OrderServiceClient<AuthChannel>,
    events: EventServiceClient<AuthChannel>,
    admin: AdminServiceClient<AuthChannel>,
    /// Used by the consumer-group methods in `groups.rs`.
    pub(crate) consumers: ConsumerServiceClient<AuthChannel>,
    health: HealthClient<AuthChannel>,
    url: String,
}

impl OrdoClient {
    /// Connects to `url` (e.g. `http://127.0.0.1:50051`) with default options.
    pub async fn connect(url: impl Into<String>) -> Result<Self> {
        Self::builder(url).connect().await
    }

    /// Starts configuring a client for `url`, or for several nodes of one deployment as a
    /// comma-separated list (`http://a:50051,http://b:50051`, see docs/scale-out.md): calls are
    /// spread over the nodes that answer, and a dead node's calls fail over to the others.
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            bearer_token: None,
            tls: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: None,
            lazy: false,
        }
    }

    /// The address this client talks to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Creates an order; returns it as stored (status CREATED, version 1).
    pub async fn create_order(&self, request: CreateOrderRequest) -> Result<Order> {
        let response = self.orders.clone().create_order(request).await?;
        expect_order(response.into_inner().order)
    }

    /// The current order, or with `at_version` the order as it was after that version.
    pub async fn get_order(&self, order_id: &str, at_version: Option<u64>) -> Result<Order> {
        let request = GetOrderRequest {
            order_id: order_id.to_string(),
            at_version,
        };
        let response = self.orders.clone().get_order(request).await?;
        expect_order(response.into_inner().order)
    }

    /// One page of orders; pass `next_page_token` back for the next one.
    pub async fn list_orders(&self, request: ListOrdersRequest) -> Result<ListOrdersResponse> {
        Ok(self.orders.clone().list_orders(request).await?.into_inner())
    }

    /// Moves an order one step along its lifecycle; returns the updated order.
    pub async fn update_order_status(&self, request: UpdateOrderStatusRequest) -> Result<Order> {
        let response = self.orders.clone().update_order_status(request).await?;
        expect_order(response.into_inner().order)
    }

    /// Cancels an order; returns the updated order.
    pub async fn cancel_order(&self, request: CancelOrderRequest) -> Result<Order> {
        let response = self.orders.clone().cancel_order(request).await?;
        expect_order(response.into_inner().order)
    }

    /// One page of the log.
    pub async fn read_events(&self, request: ReadEventsRequest) -> Result<ReadEventsResponse> {
        Ok(self.events.clone().read_events(request).await?.into_inner())
    }

    /// Appends `events` atomically: all are stored, or none.
    pub async fn publish(&self, events: Vec<NewEvent>) -> Result<PublishResponse> {
        let request = PublishRequest { events };
        Ok(self.events.clone().publish(request).await?.into_inner())
    }

    /// Opens a streaming producer (`AppendStream`): send events without waiting and get a
    /// durable ack for each, in send order. See [`Producer`] for reconnecting and resending.
    pub async fn producer(&self) -> Result<Producer> {
        Producer::open(self.events.clone()).await
    }

    /// One raw `Subscribe` call: it ends when the connection does. Most callers want
    /// [`OrdoClient::subscribe`], which resumes by itself.
    pub async fn subscribe_once(
        &self,
        request: SubscribeRequest,
    ) -> Result<Streaming<SubscribeResponse>> {
        Ok(self.events.clone().subscribe(request).await?.into_inner())
    }

    /// A subscription that reconnects and resumes across server restarts and network drops, so
    /// the consumer sees each matching event exactly once, in order.
    pub fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription> {
        Subscription::start(self.clone(), options)
    }

    /// The log's retained range, size on disk and retention settings (scope `admin`).
    pub async fn log_info(&self) -> Result<GetLogInfoResponse> {
        let request = GetLogInfoRequest {};
        Ok(self.admin.clone().get_log_info(request).await?.into_inner())
    }

    /// Runs a compaction now: retention, and removing deleted streams from storage.
    pub async fn compact(&self) -> Result<CompactResponse> {
        Ok(self
            .admin
            .clone()
            .compact(CompactRequest {})
            .await?
            .into_inner())
    }

    /// Deletes every event of a stream (see `AdminService/DeleteStream`).
    pub async fn delete_stream(&self, stream_id: &str) -> Result<DeleteStreamResponse> {
        let request = DeleteStreamRequest {
            stream_id: stream_id.to_string(),
        };
        Ok(self
            .admin
            .clone()
            .delete_stream(request)
            .await?
            .into_inner())
    }

    /// Starts an online backup: `data` messages to write to one file in order, then a summary.
    /// A stream that ends without the summary is an incomplete backup.
    pub async fn backup(&self) -> Result<Streaming<BackupResponse>> {
        Ok(self
            .admin
            .clone()
            .backup(BackupRequest {})
            .await?
            .into_inner())
    }

    /// Asks the gRPC health service about `service` (`""` for the whole server).
    pub async fn health(&self, service: &str) -> Result<Health> {
        let request = HealthCheckRequest {
            service: service.to_string(),
        };
        let response = self.health.clone().check(request).await?.into_inner();
        Ok(
            match health_check_response::ServingStatus::try_from(response.status) {
                Ok(health_check_response::ServingStatus::Serving) => Health::Serving,
                Ok(health_check_response::ServingStatus::NotServing) => Health::NotServing,
                _ => Health::Unknown,
            },
        )
    }
}

fn expect_order(order: Option<Order>) -> Result<Order> {
    order.ok_or_else(|| ClientError::Other {
        code: tonic::Code::Internal,
        message: "the server's response carries no order".into(),
    })
}
