//! Assembles the gRPC server and runs it until shutdown. Made to be called from tests with an
//! ephemeral listener as well as from `main`.

use std::{sync::Arc, time::Duration};

use ordo_api::v1::{
    admin_service_server::AdminServiceServer, order_service_server::OrderServiceServer,
    webhook_service_server::WebhookServiceServer,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tracing::{info, warn};

use crate::{
    admin::Maintenance,
    auth::{Auth, AuthLayer, TokensError, layer::AuthSettings},
    config::{ServerConfig, StoreBackend, TlsConfig},
    grpc::{
        admin::AdminApi,
        consumer::ConsumerApi,
        events::EventApi,
        orders::OrderApi,
        webhooks::WebhookApi,
        wire::{ConsumerServiceServer, EventServiceServer},
    },
    metrics::{MetricsListener, MetricsStartError, ScrapeSources, grpc::GrpcMetricsLayer},
    orders::OrderCommands,
    orders::derive::OrderProjection,
    store::{LogOptions, NatsLog, SharedLog, SledLog, StoreError},
    workers::{Workers, WorkersError},
};

/// How long a node on the nats store waits at start to learn where webhooks and consumer
/// groups run (here or elsewhere) before it serves anyway.
const WORKERS_SETTLE: Duration = Duration::from_secs(10);
/// How long shutdown waits for open calls to finish before closing their connections.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the event log: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("cannot build reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Workers(#[from] WorkersError),
    #[error(
        "refusing to serve without authentication on non-loopback address {0}: pass --auth-tokens FILE, bind 127.0.0.1, or pass --insecure to accept the risk"
    )]
    InsecureBind(std::net::SocketAddr),
    #[error("tls: {0}")]
    Tls(String),
    #[error("cannot load the tokens file: {0}")]
    Tokens(#[from] TokensError),
    #[error(transparent)]
    Metrics(#[from] MetricsStartError),
}

/// Opens the log in `config.data_dir` and serves on `listener` until `shutdown` is cancelled;
/// then ends open subscriptions, waits for in-flight calls and closes the log. Loads
/// `config.auth.tokens_file` first: a missing or invalid file never starts an open server.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let auth = config
        .auth
        .tokens_file
        .as_deref()
        .map(Auth::load)
        .transpose()?;
    run_with_auth(listener, config, auth, shutdown).await
}

/// [`run`] with the tokens already loaded, for callers that keep the handle to reload them
/// (`main` on SIGHUP, tests). `config.auth.tokens_file` is not read: `auth` is what is
/// enforced, and `None` is dev mode.
pub async fn run_with_auth(
    listener: TcpListener,
    config: ServerConfig,
    auth: Option<Auth>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    check_exposure(listener.local_addr()?, &config, auth.as_ref())?;
    // Before the log opens, so that the series of the first commits are recorded.
    let metrics = match config.metrics_listen {
        Some(addr) => Some(MetricsListener::bind(addr).await?),
        None => None,
    };
    let (log, nats) = open_log(&config).await?;
    let result = serve(listener, config, auth, log.clone(), nats, metrics, shutdown).await;
    let closing = log.clone();
    match tokio::task::spawn_blocking(move || closing.close()).await {
        Ok(Ok(())) => info!("event log closed"),
        Ok(Err(err)) => warn!(error = %err, "closing the event log failed"),
        Err(err) => warn!(error = %err, "closing the event log panicked"),
    }
    result
}

/// The log `config.store` names: sled in the data dir, or JetStream with this node's copy in
/// the data dir.
async fn open_log(config: &ServerConfig) -> Result<(SharedLog, Option<Arc<NatsLog>>), ServeError> {
    match &config.store {
        StoreBackend::Sled => {
            let log: SharedLog = SledLog::open_with(
                &config.data_dir,
                LogOptions {
                    sync: config.sync,
                    journal_segment_bytes: config.journal_segment_bytes,
                    sled_flush_interval: config.sled_flush_interval,
                },
            )?;
            Ok((log, None))
        }
        StoreBackend::Nats(nats) => {
            let retention = &config.retention;
            if retention.max_age.is_some() || retention.max_bytes.is_some() {
                return Err(ServeError::Store(StoreError::Unsupported(
                    "--retention-* is not available with --store nats: the JetStream stream denies purges so that offsets stay gapless".into(),
                )));
            }
            let log = NatsLog::open(nats, &config.data_dir, Arc::new(OrderProjection)).await?;
            log.check_max_payload(config.limits.max_payload_bytes);
            Ok((log.clone(), Some(log)))
        }
    }
}

async fn serve(
    listener: TcpListener,
    config: ServerConfig,
    auth: Option<Auth>,
    log: SharedLog,
    nats: Option<Arc<NatsLog>>,
    metrics: Option<MetricsListener>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let max_message = config.limits.max_message_bytes;
    let orders = OrderServiceServer::new(OrderApi::new(OrderCommands::new(
        log.clone(),
        config.limits.clone(),
    )))
    .max_decoding_message_size(max_message);
    let events =
        EventServiceServer::new(EventApi::new(log.clone(), config.clone(), shutdown.clone()))
            .max_decoding_message_size(max_message);

    // Webhook delivery and group tasks stop on `shutdown`; joined below before the log is
    // closed. With JetStream they run on whichever node holds the workers lease.
    let workers = match &nats {
        None => Workers::local(log.clone(), config.webhooks.clone(), shutdown.clone()).await?,
        Some(nats) => {
            let advertise = config
                .advertise_addr
                .clone()
                .unwrap_or(listener.local_addr()?.to_string());
            let lease = nats.campaign(advertise.clone()).await?;
            let workers = Workers::leased(
                log.clone(),
                config.webhooks.clone(),
                lease,
                advertise,
                shutdown.clone(),
            );
            workers.settled(WORKERS_SETTLE).await;
            workers
        }
    };
    let webhooks = WebhookServiceServer::new(WebhookApi::new(workers.clone()))
        .max_decoding_message_size(max_message);

    // Compaction (retention, deleted streams); consumers of the log learn when it trims.
    let maintenance = Maintenance::new(log.clone(), config.retention.clone());
    let woken = workers.clone();
    maintenance.hooks().register(move |_first| woken.wake_all());
    let compactor = maintenance.clone().spawn(shutdown.clone());
    let admin = AdminServiceServer::new(AdminApi::new(log.clone(), maintenance))
        .max_decoding_message_size(max_message);
    let consumer = ConsumerServiceServer::new(ConsumerApi::new(workers.clone(), shutdown.clone()))
        .max_decoding_message_size(max_message);

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<OrderServiceServer<OrderApi>>().await;
    health.set_serving::<EventServiceServer<EventApi>>().await;
    health
        .set_serving::<WebhookServiceServer<WebhookApi>>()
        .await;
    health.set_serving::<AdminServiceServer<AdminApi>>().await;
    health
        .set_serving::<ConsumerServiceServer<ConsumerApi>>()
        .await;

    // grpcurl 1.8 speaks only v1alpha, newer tools v1: serve both.
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ordo_api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ordo_api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let sweeper =
        spawn_idempotency_sweeper(log.clone(), config.idempotency_retention, shutdown.clone());

    let addr = listener.local_addr()?;
    info!(%addr, data_dir = %config.data_dir.display(), head = log.head(), "ordo-server listening");
    let health_on_shutdown = health.clone();
    let stop = shutdown.clone();
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(config.limits.max_concurrent_streams_per_connection))
        .tcp_nodelay(true);
    if let Some(tls) = &config.tls {
        builder = builder.tls_config(server_tls(tls)?)?;
    }
    let metrics = match metrics {
        Some(metrics) => Some(metrics.serve(
            ScrapeSources {
                log: log.clone(),
                data_dir: config.data_dir.clone(),
                workers: workers.clone(),
            },
            shutdown.clone(),
        )?),
        None => None,
    };

    let serving = builder
        // Outside the auth layer, so that the calls it refuses are counted too.
        .layer(GrpcMetricsLayer::new(&[
            ordo_api::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ]))
        .layer(auth_layer(&config, auth))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(orders)
        .add_service(events)
        .add_service(webhooks)
        .add_service(admin)
        .add_service(consumer)
        // Nodelay on every accepted socket: with Nagle, a response written after a window update
        // waits for the client's delayed ACK (~40 ms). Builder::tcp_nodelay only applies to
        // listeners tonic binds itself.
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move {
                stop.cancelled().await;
                info!("shutting down: ending subscriptions and draining calls");
                health_on_shutdown
                    .set_not_serving::<OrderServiceServer<OrderApi>>()
                    .await;
            },
        );
    // A client that stops reading keeps its stream's data in HTTP/2 windows, and tonic waits for
    // every stream: bound the drain so one stalled client cannot hold shutdown forever.
    let drain_deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(DRAIN_DEADLINE).await;
    };
    let served = tokio::select! {
        served = serving => served,
        _ = drain_deadline => {
            warn!(?DRAIN_DEADLINE, "calls still open after shutdown began; closing them");
            Ok(())
        }
    };
    workers.join().await;
    // Every holder of the log is gone before `run` closes it, so a restart can reopen the dir.
    let _ = sweeper.await;
    let _ = compactor.await;
    if let Some(metrics) = metrics {
        metrics.join().await;
    }
    info!(rejections = ?crate::rejections::summary(), "rejections since start");
    served?;
    Ok(())
}

/// Refuses an unauthenticated server on a non-loopback address (unless `insecure`), and says
/// loudly at start when auth is off, so nobody runs an open event log by accident.
fn check_exposure(
    addr: std::net::SocketAddr,
    config: &ServerConfig,
    auth: Option<&Auth>,
) -> Result<(), ServeError> {
    if let Some(auth) = auth {
        info!(path = %auth.path().display(), "auth: bearer tokens required");
        return Ok(());
    }
    if addr.ip().is_loopback() {
        warn!(%addr, "AUTH IS OFF (dev mode): no --auth-tokens, anyone who can reach {addr} may read and write everything; allowed only because it is a loopback address");
        return Ok(());
    }
    if config.auth.insecure {
        warn!(%addr, "AUTH IS OFF on a non-loopback address because of --insecure: anyone who can reach {addr} may read and write everything");
        return Ok(());
    }
    Err(ServeError::InsecureBind(addr))
}

fn auth_layer(config: &ServerConfig, auth: Option<Auth>) -> AuthLayer {
    let limits = &config.limits;
    AuthLayer::new(AuthSettings {
        auth,
        open_health: config.auth.open_health,
        open_reflection: config.auth.open_reflection,
        append_rate_per_token: limits.append_rate_per_token,
        append_burst_per_token: limits.append_burst_per_token,
        max_subscriptions_per_token: limits.max_subscriptions_per_token,
        request_timeout: limits.request_timeout,
    })
}

/// Reads the PEM files once at start: a missing or bad file stops the server before it
/// listens in plaintext by mistake.
fn server_tls(tls: &TlsConfig) -> Result<ServerTlsConfig, ServeError> {
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|err| ServeError::Tls(format!("cannot read {what} {}: {err}", path.display())))
    };
    let cert = read("certificate", &tls.cert)?;
    let key = read("private key", &tls.key)?;
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    match &tls.client_ca {
        Some(ca) => {
            let ca = read("client CA", ca)?;
            config = config.client_ca_root(Certificate::from_pem(ca));
            info!(cert = %tls.cert.display(), "tls on; client certificates required (mTLS)");
        }
        None => info!(cert = %tls.cert.display(), "tls on"),
    }
    Ok(config)
}

/// Forgets idempotency keys older than the retention, once a minute.
fn spawn_idempotency_sweeper(
    log: SharedLog,
    retention: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let cutoff = crate::clock::ms_ago(retention);
            let log = log.clone();
            match tokio::task::spawn_blocking(move || log.expire_idempotency(cutoff)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(removed)) => info!(removed, "expired idempotency keys"),
                Ok(Err(err)) => warn!(error = %err, "expiring idempotency keys failed"),
                Err(err) => warn!(error = %err, "idempotency sweeper panicked"),
            }
        }
    })
}
