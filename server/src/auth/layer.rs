//! The tower layer in front of every service: bearer token, scope, append rate, timeout.
//!
//! It answers refusals itself with a real gRPC status (HTTP 200, `grpc-status` header; built
//! from an [`OrdoError`] like every other status) rather than an HTTP 401, which gRPC clients
//! would show as a confusing transport error. Refused calls never reach a handler, so they have
//! no side effect.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use tonic::Status;
use tower::{Layer, Service};

use super::{Auth, Principal, Scope, limits::TokenQuota};
use crate::error::{OrdoError, Refused};
use crate::rejections::Rejection;

/// What a path needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// No token needed (health, reflection when configured open).
    Open,
    /// A valid token; no particular scope (unknown methods: tonic answers UNIMPLEMENTED, but
    /// only to callers who authenticated).
    Authenticated,
    /// A valid token with this scope. `append` calls also take from the token's rate bucket.
    Scope { scope: Scope, append: bool },
}

/// Maps a gRPC path (`/package.Service/Method`) to what it requires.
pub fn rule_for(path: &str, open_health: bool, open_reflection: bool) -> Rule {
    let (service, method) = match path.strip_prefix('/').and_then(|p| p.split_once('/')) {
        Some(parts) => parts,
        None => return Rule::Authenticated,
    };
    let scope = |scope, append| Rule::Scope { scope, append };
    match (service, method) {
        ("grpc.health.v1.Health", _) if open_health => Rule::Open,
        ("grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection", _)
            if open_reflection =>
        {
            Rule::Open
        }
        ("ordo.v1.OrderService", "CreateOrder" | "UpdateOrderStatus" | "CancelOrder") => {
            scope(Scope::OrdersWrite, true)
        }
        ("ordo.v1.OrderService", "GetOrder" | "ListOrders") => scope(Scope::OrdersRead, false),
        // An AppendStream takes one append from the token's bucket when it opens (as a Publish
        // does per call); its events are then paced by the stream's window.
        ("ordo.v1.EventService", "Publish" | "AppendStream") => scope(Scope::EventsPublish, true),
        ("ordo.v1.EventService", "Subscribe" | "ReadEvents") => {
            scope(Scope::EventsSubscribe, false)
        }
        ("ordo.v1.WebhookService", _) => scope(Scope::WebhooksAdmin, false),
        ("ordo.v1.AdminService", _) => scope(Scope::Admin, false),
        ("ordo.v1.ConsumerService", _) => scope(Scope::EventsConsume, false),
        _ => Rule::Authenticated,
    }
}

/// Settings of the layer, from [`crate::config::AuthConfig`] and [`crate::config::Limits`].
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// `None`: dev mode, every call runs as [`Principal::anonymous`].
    pub auth: Option<Auth>,
    pub open_health: bool,
    pub open_reflection: bool,
    pub append_rate_per_token: u32,
    pub append_burst_per_token: u32,
    pub max_subscriptions_per_token: usize,
    /// Time limit for a call to produce its response (a stream's headers, not its whole life).
    pub request_timeout: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct AuthLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    settings: AuthSettings,
    /// Quotas by token name: they survive reloads, so a reload does not refill buckets. Grows
    /// only with the names ever configured.
    quotas: Mutex<HashMap<String, Arc<TokenQuota>>>,
}

impl AuthLayer {
    pub fn new(settings: AuthSettings) -> Self {
        Self {
            shared: Arc::new(Shared {
                settings,
                quotas: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl Shared {
    fn quota(&self, name: &str) -> Arc<TokenQuota> {
        let mut quotas = self.quotas.lock().unwrap_or_else(|p| p.into_inner());
        quotas
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(TokenQuota::new(
                    self.settings.append_rate_per_token,
                    self.settings.append_burst_per_token,
                    self.settings.max_subscriptions_per_token,
                ))
            })
            .clone()
    }

    /// Decides a call: the principal to run it as, or the error to refuse it with.
    fn admit(&self, path: &str, headers: &http::HeaderMap) -> Result<Option<Principal>, OrdoError> {
        let settings = &self.settings;
        let rule = rule_for(path, settings.open_health, settings.open_reflection);
        if rule == Rule::Open {
            return Ok(None);
        }
        let Some(auth) = &settings.auth else {
            return Ok(Some(Principal::anonymous()));
        };
        let token = bearer(headers).map_err(|reason| OrdoError::Unauthenticated {
            message: format!("{reason}: send metadata `authorization: Bearer <token>`"),
            refused: Refused::new("anonymous", path, reason),
        })?;
        let Some(grant) = auth.current().authenticate(token) else {
            return Err(OrdoError::Unauthenticated {
                message: "invalid bearer token: it is unknown or was revoked".into(),
                refused: Refused::new("anonymous", path, "unknown token"),
            });
        };
        if let Rule::Scope { scope, append } = rule {
            if !grant.has(scope) {
                return Err(OrdoError::PermissionDenied {
                    message: format!(
                        "token {:?} lacks the scope {scope} that {path} requires",
                        grant.name
                    ),
                    refused: Refused::new(grant.name.as_str(), path, scope.as_str()),
                });
            }
            let quota = self.quota(&grant.name);
            if append && let Err(wait) = quota.take_append() {
                return Err(OrdoError::RateLimited {
                    rate: settings.append_rate_per_token,
                    retry_after_ms: u64::try_from(wait.as_millis().max(1)).unwrap_or(u64::MAX),
                    refused: Refused::new(grant.name.as_str(), path, "append rate"),
                });
            }
            return Ok(Some(Principal::token(grant, quota, auth.subscribe())));
        }
        let quota = self.quota(&grant.name);
        Ok(Some(Principal::token(grant, quota, auth.subscribe())))
    }
}

/// The token of an `authorization: Bearer <token>` header.
fn bearer(headers: &http::HeaderMap) -> Result<&str, &'static str> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or("missing bearer token")?;
    let value = value
        .to_str()
        .map_err(|_| "malformed authorization metadata")?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or("malformed authorization metadata: expected `Bearer <token>`")?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err("unsupported authorization scheme: expected `Bearer <token>`");
    }
    let token = token.trim();
    if token.is_empty() {
        return Err("empty bearer token");
    }
    Ok(token)
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, ResBody> Service<Request<B>> for AuthService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let path = request.uri().path().to_string();
        match self.shared.admit(&path, request.headers()) {
            Err(err) => return Box::pin(async move { Ok(Status::from(err).into_http()) }),
            Ok(Some(principal)) => {
                request.extensions_mut().insert(principal);
            }
            Ok(None) => {}
        }
        // The clone is ready-polled by tower's contract only for `self.inner`: swap them so the
        // ready one serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let timeout = self.shared.settings.request_timeout;
        Box::pin(async move {
            let call = inner.call(request);
            let Some(limit) = timeout else {
                return call.await.inspect(|r| count_oversized(r, &path));
            };
            match tokio::time::timeout(limit, call).await {
                Ok(response) => response.inspect(|r| count_oversized(r, &path)),
                Err(_) => Ok(Status::from(OrdoError::Timeout {
                    limit,
                    refused: Refused::new("-", path, "request timeout"),
                })
                .into_http()),
            }
        })
    }
}

/// Counts requests tonic's decoder refused for size: they never reach a handler, so this is
/// the one place that sees them. Such refusals are trailers-only responses (status in headers).
fn count_oversized<B>(response: &Response<B>, path: &str) {
    let headers = response.headers();
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|code| code.as_bytes() == b"11");
    if out_of_range
        && headers
            .get("grpc-message")
            .is_some_and(|m| m.to_str().is_ok_and(|m| m.contains("too%20large")))
    {
        Rejection::Oversized.record("-", path, "max_message_bytes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ordo_method_has_a_scope() {
        let cases = [
            (
                "/ordo.v1.OrderService/CreateOrder",
                Scope::OrdersWrite,
                true,
            ),
            (
                "/ordo.v1.OrderService/UpdateOrderStatus",
                Scope::OrdersWrite,
                true,
            ),
            (
                "/ordo.v1.OrderService/CancelOrder",
                Scope::OrdersWrite,
                true,
            ),
            ("/ordo.v1.OrderService/GetOrder", Scope::OrdersRead, false),
            (
                "/ordo.v1.ConsumerService/Consume",
                Scope::EventsConsume,
                false,
            ),
            ("/ordo.v1.ConsumerService/Ack", Scope::EventsConsume, false),
            ("/ordo.v1.OrderService/ListOrders", Scope::OrdersRead, false),
            ("/ordo.v1.EventService/Publish", Scope::EventsPublish, true),
            (
                "/ordo.v1.EventService/AppendStream",
                Scope::EventsPublish,
                true,
            ),
            (
                "/ordo.v1.EventService/Subscribe",
                Scope::EventsSubscribe,
                false,
            ),
            (
                "/ordo.v1.EventService/ReadEvents",
                Scope::EventsSubscribe,
                false,
            ),
            (
                "/ordo.v1.WebhookService/CreateWebhook",
                Scope::WebhooksAdmin,
                false,
            ),
            ("/ordo.v1.AdminService/Backup", Scope::Admin, false),
            ("/ordo.v1.AdminService/DeleteStream", Scope::Admin, false),
        ];
        for (path, scope, append) in cases {
            assert_eq!(
                rule_for(path, true, true),
                Rule::Scope { scope, append },
                "{path}"
            );
        }
    }

    #[test]
    fn health_and_reflection_are_open_only_when_configured() {
        let health = "/grpc.health.v1.Health/Check";
        let reflection = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";
        assert_eq!(rule_for(health, true, true), Rule::Open);
        assert_eq!(rule_for(reflection, true, true), Rule::Open);
        assert_eq!(rule_for(health, false, true), Rule::Authenticated);
        assert_eq!(rule_for(reflection, true, false), Rule::Authenticated);
        assert_eq!(rule_for("/nope", true, true), Rule::Authenticated);
        assert_eq!(
            rule_for("/ordo.v1.OrderService/Nope", true, true),
            Rule::Authenticated
        );
    }

    #[test]
    fn bearer_parsing() {
        let mut headers = http::HeaderMap::new();
        assert!(bearer(&headers).is_err());
        headers.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&headers), Ok("abc"));
        headers.insert("authorization", "bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&headers), Ok("abc"));
        headers.insert("authorization", "Basic abc".parse().unwrap());
        assert!(bearer(&headers).is_err());
        headers.insert("authorization", "Bearer ".parse().unwrap());
        assert!(bearer(&headers).is_err());
    }
}
