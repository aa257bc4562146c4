//! The `/metrics` listener: plain HTTP/1.1 on its own address, so that Prometheus needs
//! neither gRPC nor a token, and the metrics port can stay on a private interface while the
//! API port is public.
//!
//! Served with hyper, which tonic already brings: a scrape is one GET, so a router would add
//! nothing. Each scrape first reads the server's state ([`ScrapeSources::collect`]) and renders
//! the registry, both on a blocking thread.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use metrics_exporter_prometheus::{BuildError, PrometheusHandle};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::scrape::ScrapeSources;

/// Connections served at once; more are closed as they arrive. Each serves one scrape.
const MAX_CONNECTIONS: usize = 16;
/// A client must send its request headers within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for scrapes in progress.
const DRAIN: Duration = Duration::from_secs(2);

/// Why the metrics listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsStartError {
    #[error("cannot listen for metrics on {addr}: {source}; pick another --metrics-listen address")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install the prometheus recorder: {0}")]
    Recorder(#[from] BuildError),
    #[error("cannot start the metrics upkeep thread: {0}")]
    Upkeep(std::io::Error),
}

/// The metrics address, bound, with the recorder installed: the first step of starting
/// metrics, done before the log opens so that the series of the first commits are not lost.
pub struct MetricsListener {
    handle: PrometheusHandle,
    listener: TcpListener,
}

impl MetricsListener {
    /// Installs the recorder (once per process) and binds `addr`.
    pub async fn bind(addr: SocketAddr) -> Result<Self, MetricsStartError> {
        let handle = super::install()?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsStartError::Bind { addr, source })?;
        Ok(Self { handle, listener })
    }

    /// Serves `GET /metrics` until `shutdown`, reading `sources` at each scrape.
    pub fn serve(
        self,
        sources: ScrapeSources,
        shutdown: CancellationToken,
    ) -> std::io::Result<MetricsServer> {
        let addr = self.listener.local_addr()?;
        info!(%addr, "metrics listening on http://{addr}/metrics");
        let scraper = Arc::new(Scraper {
            handle: self.handle,
            sources,
        });
        let task = tokio::spawn(accept_loop(self.listener, scraper, shutdown));
        Ok(MetricsServer { addr, task })
    }
}

/// The running listener; it stops when the server's shutdown token is cancelled.
pub struct MetricsServer {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// Waits for the listener to stop (after shutdown).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

struct Scraper {
    handle: PrometheusHandle,
    sources: ScrapeSources,
}

async fn accept_loop(listener: TcpListener, scraper: Arc<Scraper>, shutdown: CancellationToken) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    warn!(error = %err, "metrics listener cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            debug!(%peer, "too many metrics connections; closing this one");
            continue;
        };
        let scraper = scraper.clone();
        let service = service_fn(move |request| {
            let scraper = scraper.clone();
            async move { Ok::<_, Infallible>(scraper.answer(request).await) }
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            // One scrape per connection: an idle keep-alive connection would hold one of the
            // few slots for as long as its client likes.
            .keep_alive(false)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                debug!(%peer, error = %err, "metrics connection ended with an error");
            }
            drop(permit);
        });
    }
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        debug!("metrics connections still open after shutdown; dropping them");
    }
}

impl Scraper {
    async fn answer(self: Arc<Self>, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if request.uri().path() != "/metrics" {
            return plain(
                StatusCode::NOT_FOUND,
                "not found: metrics are at /metrics\n",
            );
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: scrape /metrics with GET\n",
            );
        }
        let scraper = self.clone();
        match tokio::task::spawn_blocking(move || {
            scraper.sources.collect();
            scraper.handle.render()
        })
        .await
        {
            Ok(text) => {
                let mut response = Response::new(Full::new(Bytes::from(text)));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            Err(err) => {
                warn!(error = %err, "rendering metrics failed");
                plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "rendering metrics failed; see the server log\n",
                )
            }
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}
