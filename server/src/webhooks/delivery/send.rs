//! HTTP sending: signing an event, POSTing it through the SSRF-guarded client and reading the
//! answer into a [`Sent`]. Knows nothing of cursors or records.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use ordo_api::v1::Event;
use reqwest::header::HeaderMap;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::retry::{self, Class};
use crate::{
    clock::now_ms,
    webhooks::{
        config::WebhookConfig,
        payload,
        records::StoredWebhook,
        signing,
        ssrf::{AddressPolicy, GuardedResolver},
    },
};

/// Response body bytes kept in an attempt record to explain a failure.
const MAX_ERROR_BODY: usize = 512;

/// What every delivery attempt shares: the HTTP client and the cap on requests in flight.
pub struct Sender {
    client: reqwest::Client,
    /// HTTP requests in flight across all webhooks.
    permits: Arc<Semaphore>,
    policy: Arc<AddressPolicy>,
    attempt_timeout: Duration,
}

impl Sender {
    pub fn new(config: &WebhookConfig, policy: Arc<AddressPolicy>) -> Result<Self, reqwest::Error> {
        Ok(Self {
            client: http_client(config, policy.clone())?,
            permits: Arc::new(Semaphore::new(config.max_concurrent_deliveries.max(1))),
            policy,
            attempt_timeout: config.attempt_timeout,
        })
    }

    pub fn policy(&self) -> &AddressPolicy {
        &self.policy
    }

    /// Signs and POSTs the event. None when `cancel` fired meanwhile. Takes `&self` only, so
    /// the parallel mode can run several at once.
    pub async fn send(
        &self,
        cancel: &CancellationToken,
        hook: &StoredWebhook,
        event: &Event,
    ) -> Option<Sent> {
        let started = Instant::now();
        let fail = |error: String| Sent {
            class: Class::Retryable,
            status: None,
            error,
            retry_after: None,
            latency: started.elapsed(),
        };
        let url = match self.policy.check_url(&hook.url) {
            Ok(url) => url,
            Err(err) => return Some(fail(err.to_string())),
        };
        let body = match payload::cloudevent_json(event) {
            Ok(body) => body,
            Err(err) => return Some(fail(format!("cannot encode the event as JSON: {err}"))),
        };
        let now = now_ms();
        let mut secrets = vec![hook.secret.as_str()];
        if hook.previous_secret_expires_ms > now && !hook.previous_secret.is_empty() {
            secrets.push(hook.previous_secret.as_str());
        }
        let ts = now / 1000;
        let signature = match signing::signature_header(&secrets, &event.id, ts, &body) {
            Ok(signature) => signature,
            Err(err) => return Some(fail(err.to_string())),
        };
        let permits = self.permits.clone();
        let _permit = tokio::select! {
            _ = cancel.cancelled() => return None,
            permit = permits.acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return None,
            },
        };
        let started = Instant::now();
        let request = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &event.id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .timeout(self.attempt_timeout)
            .body(body);
        let exchange = async {
            let mut response = request.send().await?;
            let status = response.status();
            let retry_after = retry_after(response.headers());
            let mut snippet = Vec::new();
            if !status.is_success() {
                while snippet.len() < MAX_ERROR_BODY {
                    match response.chunk().await? {
                        Some(chunk) => snippet.extend_from_slice(&chunk),
                        None => break,
                    }
                }
                snippet.truncate(MAX_ERROR_BODY);
            }
            Ok::<_, reqwest::Error>((status, retry_after, snippet))
        };
        let result = tokio::select! {
            _ = cancel.cancelled() => return None,
            result = exchange => result,
        };
        let latency = started.elapsed();
        Some(match result {
            Ok((status, retry_after, snippet)) => Sent {
                class: retry::classify(status.as_u16()),
                status: Some(status.as_u16()),
                error: if status.is_success() {
                    String::new()
                } else {
                    String::from_utf8_lossy(&snippet).into_owned()
                },
                retry_after,
                latency,
            },
            Err(err) => Sent {
                error: error_chain(&err),
                latency,
                ..fail(String::new())
            },
        })
    }
}

/// The shared HTTP client: connection pooling across attempts, the SSRF-guarded resolver, no
/// redirects (a redirect could lead to a refused address) and no proxies.
fn http_client(
    config: &WebhookConfig,
    policy: Arc<AddressPolicy>,
) -> Result<reqwest::Client, reqwest::Error> {
    // One crypto provider for the whole binary (ring); a second install attempt is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver { policy }))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(config.attempt_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(4)
        .user_agent(concat!("ordo-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// The result of one HTTP attempt.
pub struct Sent {
    pub class: Class,
    pub status: Option<u16>,
    /// Why it failed: the transport error or the start of the response body.
    pub error: String,
    pub retry_after: Option<Duration>,
    pub latency: Duration,
}

/// The `Retry-After` header as a delay.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    retry::parse_retry_after(value, SystemTime::now())
}

/// reqwest's top-level message hides the cause ("error sending request"); keep every level.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}
