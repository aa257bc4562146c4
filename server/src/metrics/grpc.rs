//! The go-grpc-prometheus series, from a tower layer around every service.
//!
//! `grpc_server_started_total`, `grpc_server_handled_total{grpc_code}`,
//! `grpc_server_handling_seconds`, `grpc_server_msg_received_total` and
//! `grpc_server_msg_sent_total`, labelled `grpc_service`, `grpc_method` and `grpc_type`
//! (`unary`, `client_stream`, `server_stream`, `bidi_stream`) exactly as go-grpc-prometheus
//! names them, so existing dashboards and alerts work unchanged.
//!
//! - **Refused calls count.** The layer sits outside the auth layer, which answers refusals
//!   itself: a call refused for its token is started and handled (`Unauthenticated`) here.
//! - **The code** of a normal response is in the `grpc-status` trailer, so the response body is
//!   wrapped and its trailers read; a trailers-only response (every error answered before a
//!   message) carries it in the headers. A call whose response is dropped before its status
//!   (the client cancelled or went away) is handled as `Canceled`, as in grpc-go.
//! - **Messages** are counted exactly, by following the gRPC length prefixes of the request and
//!   response bodies ([`super::framing`]), as each data frame passes: a long subscription's
//!   `msg_sent` grows while it runs.
//! - **Time** is observed for unary calls only. go-grpc-prometheus also times streams, from open
//!   to close; here every stream is a subscription, an `AppendStream` or a health watch that
//!   lives as long as its client wants, so its "handling time" would only fill the last bucket
//!   and hide the latency of the calls that have one.
//! - **Bounded labels.** Only the methods of the descriptor sets the server serves get their
//!   own series; any other path (the client's choice) is counted as `unknown`/`unknown`.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use metrics::{Counter, Histogram, Label};
use prost::Message;
use tonic::{Code, Status, body::Body};
use tower::{Layer, Service};

use super::{
    enabled,
    framing::MessageCounter,
    recorder::{
        GRPC_HANDLED, GRPC_HANDLING_SECONDS, GRPC_MSG_RECEIVED, GRPC_MSG_SENT, GRPC_STARTED,
    },
};

/// How a method streams, as go-grpc-prometheus' `grpc_type` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcType {
    Unary,
    ClientStream,
    ServerStream,
    BidiStream,
}

impl GrpcType {
    pub fn new(client_streaming: bool, server_streaming: bool) -> Self {
        match (client_streaming, server_streaming) {
            (false, false) => GrpcType::Unary,
            (true, false) => GrpcType::ClientStream,
            (false, true) => GrpcType::ServerStream,
            (true, true) => GrpcType::BidiStream,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GrpcType::Unary => "unary",
            GrpcType::ClientStream => "client_stream",
            GrpcType::ServerStream => "server_stream",
            GrpcType::BidiStream => "bidi_stream",
        }
    }
}

/// The `grpc_code` label: grpc-go's names for the codes (`OK`, `NotFound`...).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Codes 0..=16.
const CODES: usize = 17;

/// One method's series, registered once when the layer is built.
struct MethodSeries {
    labels: Vec<Label>,
    started: Counter,
    received: Counter,
    sent: Counter,
    /// Unary methods only (see the module doc).
    seconds: Option<Histogram>,
    /// By code, registered on first use so that only codes that happened are exported.
    handled: [OnceLock<Counter>; CODES],
}

impl MethodSeries {
    fn new(service: &str, method: &str, kind: GrpcType) -> Self {
        let labels = vec![
            Label::new("grpc_service", service.to_string()),
            Label::new("grpc_method", method.to_string()),
            Label::new("grpc_type", kind.as_str()),
        ];
        Self {
            started: metrics::counter!(GRPC_STARTED, labels.clone()),
            received: metrics::counter!(GRPC_MSG_RECEIVED, labels.clone()),
            sent: metrics::counter!(GRPC_MSG_SENT, labels.clone()),
            seconds: (kind == GrpcType::Unary)
                .then(|| metrics::histogram!(GRPC_HANDLING_SECONDS, labels.clone())),
            handled: Default::default(),
            labels,
        }
    }

    fn handled(&self, code: Code) -> &Counter {
        let index = (code as usize).min(CODES - 1);
        self.handled[index].get_or_init(|| {
            let mut labels = self.labels.clone();
            labels.push(Label::new("grpc_code", code_name(code)));
            metrics::counter!(GRPC_HANDLED, labels)
        })
    }
}

/// The series of every method the server serves, by path.
struct MethodTable {
    methods: HashMap<String, Arc<MethodSeries>>,
    unknown: Arc<MethodSeries>,
}

impl MethodTable {
    /// Reads the methods and their streaming kinds from encoded `FileDescriptorSet`s (the ones
    /// the server registers for reflection), so new RPCs are labelled without a list to keep.
    fn from_descriptor_sets(sets: &[&[u8]]) -> Self {
        let mut methods = HashMap::new();
        for set in sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
                tracing::warn!(
                    "a compiled-in descriptor set does not decode; its methods are counted as unknown"
                );
                continue;
            };
            for file in &set.file {
                for service in &file.service {
                    let service_name = match file.package() {
                        "" => service.name().to_string(),
                        package => format!("{package}.{}", service.name()),
                    };
                    for method in &service.method {
                        let kind =
                            GrpcType::new(method.client_streaming(), method.server_streaming());
                        methods.insert(
                            format!("/{service_name}/{}", method.name()),
                            Arc::new(MethodSeries::new(&service_name, method.name(), kind)),
                        );
                    }
                }
            }
        }
        Self {
            methods,
            unknown: Arc::new(MethodSeries::new("unknown", "unknown", GrpcType::Unary)),
        }
    }

    fn get(&self, path: &str) -> Arc<MethodSeries> {
        self.methods.get(path).unwrap_or(&self.unknown).clone()
    }
}

/// The layer; outermost, so that it sees every call, refused ones included.
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    /// `None` when metrics are off: calls then pass through untouched.
    table: Option<Arc<MethodTable>>,
}

impl GrpcMetricsLayer {
    /// Registers a series for every method of `descriptor_sets` if metrics are on (the recorder
    /// must be installed first); otherwise a pass-through.
    pub fn new(descriptor_sets: &[&[u8]]) -> Self {
        Self {
            table: enabled().then(|| Arc::new(MethodTable::from_descriptor_sets(descriptor_sets))),
        }
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            table: self.table.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    table: Option<Arc<MethodTable>>,
}

impl<S> Service<Request<Body>> for GrpcMetrics<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    // The auth layer's boxed future.
    S::Future: Unpin,
{
    type Response = Response<MeteredBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let Some(table) = &self.table else {
            return ResponseFuture {
                inner: self.inner.call(request),
                call: None,
            };
        };
        let series = table.get(request.uri().path());
        series.started.increment(1);
        let received = series.received.clone();
        let request = request.map(|body| {
            Body::new(ReceivedBody {
                inner: body,
                messages: MessageCounter::default(),
                received,
            })
        });
        ResponseFuture {
            inner: self.inner.call(request),
            call: Some(Call {
                series,
                started: Instant::now(),
                messages: MessageCounter::default(),
                finished: false,
            }),
        }
    }
}

/// One call in flight: handled as `Canceled` if dropped before it saw its status.
struct Call {
    series: Arc<MethodSeries>,
    started: Instant,
    messages: MessageCounter,
    finished: bool,
}

impl Call {
    fn sent(&mut self, data: &[u8]) {
        let messages = self.messages.feed(data);
        if messages > 0 {
            self.series.sent.increment(messages);
        }
    }

    fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        self.series.handled(code).increment(1);
        if let Some(seconds) = &self.series.seconds {
            seconds.record(self.started.elapsed().as_secs_f64());
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

/// The `grpc-status` of a header or trailer map, if it has one.
fn status_code(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?;
    let code = std::str::from_utf8(value.as_bytes())
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(Code::from_i32(code))
}

/// The inner service's response future; finishes trailers-only responses.
pub struct ResponseFuture<F> {
    inner: F,
    call: Option<Call>,
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>> + Unpin,
{
    type Output = Result<Response<MeteredBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let result = match Pin::new(&mut this.inner).poll(cx) {
            Poll::Ready(result) => result,
            Poll::Pending => return Poll::Pending,
        };
        let mut call = this.call.take();
        Poll::Ready(match result {
            Ok(response) => {
                if let (Some(call), Some(code)) = (&mut call, status_code(response.headers())) {
                    call.finish(code);
                }
                Ok(response.map(|inner| MeteredBody { inner, call }))
            }
            Err(err) => {
                if let Some(call) = &mut call {
                    call.finish(Code::Unknown);
                }
                Err(err)
            }
        })
    }
}

/// A response body that counts the messages sent and finishes its call on the trailers.
pub struct MeteredBody {
    inner: Body,
    call: Option<Call>,
}

impl HttpBody for MeteredBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Some(call), Poll::Ready(frame)) = (&mut this.call, &polled) {
            match frame {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        call.sent(data);
                    } else if let Some(trailers) = frame.trailers_ref() {
                        call.finish(status_code(trailers).unwrap_or(Code::Unknown));
                    }
                }
                Some(Err(status)) => call.finish(status.code()),
                // Ended without a status: not a gRPC response we understand.
                None => call.finish(Code::Unknown),
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that counts the messages received as they arrive.
struct ReceivedBody {
    inner: Body,
    messages: MessageCounter,
    received: Counter,
}

impl HttpBody for ReceivedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let messages = this.messages.feed(data);
            if messages > 0 {
                this.received.increment(messages);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_kinds_come_from_the_descriptors() {
        let table = MethodTable::from_descriptor_sets(&[
            ordo_api::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ]);
        let kind = |path: &str| {
            table
                .methods
                .get(path)
                .map(|m| m.labels[2].value().to_string())
        };
        assert_eq!(
            kind("/ordo.v1.EventService/Subscribe"),
            Some("server_stream".to_string())
        );
        assert_eq!(
            kind("/ordo.v1.EventService/AppendStream"),
            Some("bidi_stream".to_string())
        );
        assert_eq!(
            kind("/ordo.v1.OrderService/CreateOrder"),
            Some("unary".to_string())
        );
        assert_eq!(
            kind("/grpc.health.v1.Health/Watch"),
            Some("server_stream".to_string())
        );
        assert_eq!(kind("/ordo.v1.Nope/Nope"), None);
        assert!(table.get("/ordo.v1.EventService/Publish").seconds.is_some());
        assert!(
            table
                .get("/ordo.v1.EventService/Subscribe")
                .seconds
                .is_none()
        );
        let unknown = table.get("/attacker.Chosen/Path");
        assert_eq!(unknown.labels[0].value(), "unknown");
        assert_eq!(unknown.labels[1].value(), "unknown");
    }

    #[test]
    fn status_codes_are_read_from_headers_and_named_like_grpc_go() {
        let mut headers = HeaderMap::new();
        assert_eq!(status_code(&headers), None);
        headers.insert("grpc-status", "5".parse().unwrap());
        assert_eq!(status_code(&headers), Some(Code::NotFound));
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::Cancelled), "Canceled");
        assert_eq!(code_name(Code::Unauthenticated), "Unauthenticated");
    }
}
