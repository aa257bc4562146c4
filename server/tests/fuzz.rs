//! Property test: arbitrary field values (huge strings, empty ids, invalid enums, unknown
//! fields, extreme numbers) thrown at every RPC of one running server, with auth on
//! (AppendStream too: per event).
//!
//! For every call: no panic (the server keeps answering), never INTERNAL/UNKNOWN/UNAVAILABLE,
//! a rejection carries a client-error code, and a rejected call leaves the log head unchanged.
//! Bounded to 64 cases per RPC so CI stays fast; `PROPTEST_CASES` raises it locally.

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use ordo_api::v1::{
    AckRequest, CancelOrderRequest, CreateGroupRequest, CreateOrderRequest, CreateWebhookRequest,
    DeleteGroupRequest, DeleteWebhookRequest, EventFilter, GetGroupRequest, GetOrderRequest,
    GetWebhookRequest, LineItem, ListDeadLettersRequest, ListDeliveriesRequest, ListGroupsRequest,
    ListOrdersRequest, ListParkedRequest, ListWebhooksRequest, Money, NackRequest, NewEvent,
    PublishRequest, ReadEventsRequest, RedriveDeadLettersRequest, ReplayParkedRequest,
    RetryBackoff, RotateSecretRequest, StartPosition, SubscribeRequest, UpdateGroupRequest,
    UpdateOrderStatusRequest, UpdateWebhookRequest, start_position::Position,
};
use ordo_server::auth::{Scope, hash_token};
use ordo_test_harness::TestServer;
use proptest::{collection::vec, prelude::*};
use tokio::runtime::Runtime;
use tonic::{Code, Request, Status, codegen::http::uri::PathAndQuery, transport::Channel};

const TOKEN: &str = "fuzz-admin-token-0123456789abcdef";

struct Env {
    rt: Runtime,
    /// Cases run one at a time: proptest runs each property on its own test thread, and the
    /// "log unchanged after a rejection" check needs no concurrent accepted appends.
    serial: tokio::sync::Mutex<()>,
    channel: Channel,
    _server: TestServer,
    _tokens: tempfile::TempDir,
}

/// One server for the whole binary: starting one per case would make the test slow.
fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let tokens = tempfile::tempdir().expect("dir");
        let path = tokens.path().join("tokens.toml");
        let scopes: Vec<String> = Scope::ALL
            .iter()
            .map(|s| format!("{:?}", s.as_str()))
            .collect();
        std::fs::write(
            &path,
            format!(
                "[[token]]\nname = \"fuzz\"\nsha256 = \"{}\"\nscopes = [{}]\n",
                hash_token(TOKEN),
                scopes.join(", ")
            ),
        )
        .expect("tokens");
        let (server, channel) = rt.block_on(async {
            let server = TestServer::start_with(move |cfg| {
                cfg.auth.tokens_file = Some(path);
                cfg.limits.append_rate_per_token = 0;
                // Keep huge inputs under the decoder limit sometimes and over it sometimes.
                cfg.limits.max_message_bytes = 512 * 1024;
            })
            .await;
            let channel = server.channel().await;
            (server, channel)
        });
        Env {
            rt,
            serial: tokio::sync::Mutex::new(()),
            channel,
            _server: server,
            _tokens: tokens,
        }
    })
}

fn authed<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {TOKEN}").parse().expect("metadata"),
    );
    request.set_timeout(Duration::from_secs(20));
    request
}

/// Sends `message` to `path` with the prost codec: any message type to any method, which is
/// how unknown fields and mismatched messages reach the server.
async fn raw_unary<M>(channel: Channel, path: &'static str, message: M) -> Result<(), Status>
where
    M: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<M, ()>::default();
    grpc.unary(authed(message), PathAndQuery::from_static(path), codec)
        .await
        .map(drop)
}

/// Like [`raw_unary`] for Subscribe: the call's answer is its first stream item.
async fn raw_subscribe<M>(channel: Channel, message: M) -> Result<(), Status>
where
    M: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<M, ()>::default();
    let mut stream = grpc
        .server_streaming(
            authed(message),
            PathAndQuery::from_static("/ordo.v1.EventService/Subscribe"),
            codec,
        )
        .await?
        .into_inner();
    match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) => Err(status),
        Err(_) => Err(Status::deadline_exceeded("no first item in 10 s")),
    }
}

async fn head(channel: &Channel) -> u64 {
    let page = raw_read(channel).await;
    page.head_offset
}

async fn raw_read(channel: &Channel) -> ordo_api::v1::ReadEventsResponse {
    let mut client = ordo_api::v1::event_service_client::EventServiceClient::new(channel.clone());
    client
        .read_events(authed(ReadEventsRequest {
            start: Some(StartPosition {
                position: Some(Position::End(true)),
            }),
            ..Default::default()
        }))
        .await
        .expect("read head")
        .into_inner()
}

/// Codes a hostile but well-formed request may get: client errors only.
fn acceptable(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::Aborted
            | Code::AlreadyExists
            | Code::OutOfRange
            | Code::ResourceExhausted
            | Code::PermissionDenied
    )
}

/// Runs one call and checks the properties.
fn check<F, Fut>(what: &str, call: F) -> Result<(), TestCaseError>
where
    F: FnOnce(Channel) -> Fut,
    Fut: std::future::Future<Output = Result<(), Status>>,
{
    let env = env();
    env.rt.block_on(async {
        let _serial = env.serial.lock().await;
        let before = head(&env.channel).await;
        let started = Instant::now();
        let result = call(env.channel.clone()).await;
        if let Err(status) = &result {
            prop_assert!(
                acceptable(status.code()),
                "{what}: unexpected {:?}: {} (after {:?})",
                status.code(),
                status.message(),
                started.elapsed()
            );
            prop_assert!(!status.message().is_empty(), "{what}: empty message");
            // Still alive, and a rejection changed nothing.
            let after = head(&env.channel).await;
            prop_assert_eq!(after, before, "{}: a rejected call appended", what);
        }
        Ok(())
    })
}

/// AppendStream with hostile events: one answer per event, in send order (until a message too
/// large to decode, which ends the stream with a client-error status); refusals carry
/// client-error codes and messages; the log grows by exactly the events acked as new.
fn append_stream_case(events: Vec<NewEvent>) -> Result<(), TestCaseError> {
    use ordo_api::v1::{AppendStreamRequest, append_stream_response::Message};
    let env = env();
    env.rt.block_on(async {
        let _serial = env.serial.lock().await;
        let before = head(&env.channel).await;
        let mut client =
            ordo_api::v1::event_service_client::EventServiceClient::new(env.channel.clone());
        let requests: Vec<AppendStreamRequest> = events
            .into_iter()
            .enumerate()
            .map(|(i, event)| AppendStreamRequest {
                event: Some(event),
                client_seq: i as u64 + 1,
            })
            .collect();
        let sent = requests.len() as u64;
        let mut answers = match client
            .append_stream(authed(tokio_stream::iter(requests)))
            .await
        {
            Ok(answers) => answers.into_inner(),
            Err(status) => {
                prop_assert!(false, "AppendStream refused: {status:?}");
                unreachable!()
            }
        };
        let (mut next, mut appended, mut broken) = (1u64, 0u64, false);
        loop {
            let answer = tokio::time::timeout(Duration::from_secs(20), answers.message()).await;
            let answer = match answer {
                Ok(Ok(Some(answer))) => answer,
                Ok(Ok(None)) => break,
                // An oversized message breaks the request stream: the stream ends with a
                // client-error status after the events before it were answered.
                Ok(Err(status)) => {
                    prop_assert!(
                        acceptable(status.code()),
                        "AppendStream ended with {:?}: {}",
                        status.code(),
                        status.message()
                    );
                    prop_assert!(status.message().contains("resend"), "{}", status.message());
                    broken = true;
                    break;
                }
                other => {
                    prop_assert!(false, "AppendStream broke: {other:?}");
                    unreachable!()
                }
            };
            match answer.message {
                Some(Message::Window(_)) => {}
                Some(Message::Ack(ack)) => {
                    prop_assert_eq!(ack.client_seq, next);
                    next += 1;
                    appended += u64::from(!ack.deduplicated);
                }
                Some(Message::Rejected(rejected)) => {
                    prop_assert_eq!(rejected.client_seq, next);
                    next += 1;
                    prop_assert!(
                        acceptable(Code::from_i32(rejected.code)),
                        "AppendStream: unexpected code {}: {}",
                        rejected.code,
                        rejected.message
                    );
                    prop_assert!(!rejected.message.is_empty());
                }
                None => prop_assert!(false, "an empty answer"),
            }
        }
        if !broken {
            prop_assert_eq!(next, sent + 1, "one answer per event");
        }
        prop_assert_eq!(head(&env.channel).await, before + appended);
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Strategies

/// Strings that break validators: empty, long, huge, unicode, control characters, and the
/// occasional valid name.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(String::new()),
        3 => "[A-Za-z0-9._:-]{1,20}",
        2 => "[A-Za-z0-9._:-]{120,140}",
        3 => any::<String>(),
        2 => "\\PC{0,300}",
        1 => "[\\x00-\\x1f\\u{7f}\\u{202e}\\u{fffd}]{1,10}",
        1 => (1usize..700_000).prop_map(|n| "a".repeat(n)),
        1 => Just("order-x".to_string()),
        1 => Just("order.created".to_string()),
        1 => Just("01ARZ3NDEKTSV4RRFFQ69G5FAV".to_string()),
    ]
}

fn number() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1u64),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(i64::MAX as u64),
        any::<u64>(),
        0u64..100,
    ]
}

fn enum_value() -> impl Strategy<Value = i32> {
    prop_oneof![-1..7i32, Just(i32::MIN), Just(i32::MAX), any::<i32>()]
}

fn start() -> impl Strategy<Value = Option<StartPosition>> {
    let position = prop_oneof![
        any::<bool>().prop_map(Position::Start),
        any::<bool>().prop_map(Position::End),
        number().prop_map(Position::AfterOffset),
        number().prop_map(Position::FromOffset),
    ];
    proptest::option::of(
        proptest::option::of(position).prop_map(|position| StartPosition { position }),
    )
}

fn filter() -> impl Strategy<Value = Option<EventFilter>> {
    proptest::option::of(
        (vec(text(), 0..4), vec(text(), 0..70))
            .prop_map(|(types, stream_ids)| EventFilter { types, stream_ids }),
    )
}

fn items() -> impl Strategy<Value = Vec<LineItem>> {
    let item = (
        text(),
        any::<u32>(),
        proptest::option::of((any::<i64>(), text())),
    )
        .prop_map(|(sku, quantity, price)| LineItem {
            sku,
            quantity,
            unit_price: price.map(|(amount_minor, currency)| Money {
                amount_minor,
                currency,
            }),
        })
        .boxed();
    prop_oneof![vec(item.clone(), 0..4), vec(item, 99..103)]
}

/// `big`: allow payloads over the message limit (rarely, to keep memory bounded).
fn new_event(big: bool) -> impl Strategy<Value = NewEvent> {
    let data = if big {
        prop_oneof![
            4 => vec(any::<u8>(), 0..64),
            1 => (0usize..600_000).prop_map(|n| vec![0u8; n])
        ]
        .boxed()
    } else {
        vec(any::<u8>(), 0..16).boxed()
    };
    (
        text(),
        text(),
        text(),
        text(),
        text(),
        data,
        vec((text(), text()), 0..3),
        proptest::option::of(number()),
    )
        .prop_map(
            |(stream_id, r#type, id, source, datacontenttype, data, metadata, expected)| NewEvent {
                stream_id,
                r#type,
                id,
                source,
                datacontenttype,
                data,
                metadata: metadata.into_iter().collect(),
                expected_stream_version: expected,
            },
        )
}

/// A message of unknown fields only (tags no Ordo request uses), with any values.
#[derive(Clone, PartialEq, prost::Message)]
struct Unknown {
    #[prost(uint64, tag = "100")]
    a: u64,
    #[prost(string, tag = "101")]
    b: String,
    #[prost(bytes = "vec", tag = "536870911")]
    c: Vec<u8>,
    #[prost(sint64, tag = "9999")]
    d: i64,
}

fn unknown() -> impl Strategy<Value = Unknown> {
    (any::<u64>(), text(), vec(any::<u8>(), 0..32), any::<i64>()).prop_map(|(a, b, c, d)| Unknown {
        a,
        b,
        c,
        d,
    })
}

const PATHS: [&str; 25] = [
    "/ordo.v1.OrderService/CreateOrder",
    "/ordo.v1.OrderService/GetOrder",
    "/ordo.v1.OrderService/ListOrders",
    "/ordo.v1.OrderService/UpdateOrderStatus",
    "/ordo.v1.OrderService/CancelOrder",
    "/ordo.v1.EventService/ReadEvents",
    "/ordo.v1.EventService/Publish",
    "/ordo.v1.WebhookService/CreateWebhook",
    "/ordo.v1.WebhookService/GetWebhook",
    "/ordo.v1.WebhookService/ListWebhooks",
    "/ordo.v1.WebhookService/UpdateWebhook",
    "/ordo.v1.WebhookService/DeleteWebhook",
    "/ordo.v1.WebhookService/RotateSecret",
    "/ordo.v1.WebhookService/ListDeliveries",
    "/ordo.v1.WebhookService/ListDeadLetters",
    "/ordo.v1.WebhookService/RedriveDeadLetters",
    "/ordo.v1.ConsumerService/CreateGroup",
    "/ordo.v1.ConsumerService/GetGroup",
    "/ordo.v1.ConsumerService/ListGroups",
    "/ordo.v1.ConsumerService/UpdateGroup",
    "/ordo.v1.ConsumerService/DeleteGroup",
    "/ordo.v1.ConsumerService/Ack",
    "/ordo.v1.ConsumerService/Nack",
    "/ordo.v1.ConsumerService/ListParked",
    "/ordo.v1.ConsumerService/ReplayParked",
];

// ---------------------------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn create_order(customer_id in text(), items in items(), key in text()) {
        check("CreateOrder", |ch| raw_unary(ch, PATHS[0], CreateOrderRequest { customer_id, items, idempotency_key: key }))?;
    }

    #[test]
    fn get_order(order_id in text(), at_version in proptest::option::of(number())) {
        check("GetOrder", |ch| raw_unary(ch, PATHS[1], GetOrderRequest { order_id, at_version }))?;
    }

    #[test]
    fn list_orders(page_size in any::<u32>(), page_token in text(), status in enum_value()) {
        check("ListOrders", |ch| raw_unary(ch, PATHS[2], ListOrdersRequest { page_size, page_token, status }))?;
    }

    #[test]
    fn update_order_status(order_id in text(), status in enum_value(), expected_version in proptest::option::of(number()), key in text()) {
        check("UpdateOrderStatus", |ch| raw_unary(ch, PATHS[3], UpdateOrderStatusRequest { order_id, status, expected_version, idempotency_key: key }))?;
    }

    #[test]
    fn cancel_order(order_id in text(), reason in text(), expected_version in proptest::option::of(number()), key in text()) {
        check("CancelOrder", |ch| raw_unary(ch, PATHS[4], CancelOrderRequest { order_id, reason, expected_version, idempotency_key: key }))?;
    }

    #[test]
    fn read_events(start in start(), filter in filter(), limit in any::<u32>()) {
        check("ReadEvents", |ch| raw_unary(ch, PATHS[5], ReadEventsRequest { start, filter, limit, ..Default::default() }))?;
    }

    #[test]
    fn subscribe(start in start(), filter in filter(), heartbeat_interval_ms in any::<u32>()) {
        check("Subscribe", |ch| raw_subscribe(ch, SubscribeRequest { start, filter, heartbeat_interval_ms, ..Default::default() }))?;
    }

    #[test]
    fn publish(events in prop_oneof![4 => vec(new_event(true), 0..4), 1 => vec(new_event(false), 1001..1003)]) {
        check("Publish", |ch| raw_unary(ch, PATHS[6], PublishRequest { events }))?;
    }

    #[test]
    fn append_stream(events in vec(new_event(true), 0..6)) {
        append_stream_case(events)?;
    }

    #[test]
    fn webhooks(url in text(), types in vec(text(), 0..3), id in text(), n in any::<u32>(), offset in number(), which in 0usize..9) {
        check("WebhookService", |ch| async move {
            match which {
                0 => raw_unary(ch, PATHS[7], CreateWebhookRequest { url, event_types: types, stream_ids: vec![], description: id, ..Default::default() }).await,
                1 => raw_unary(ch, PATHS[8], GetWebhookRequest { id }).await,
                2 => raw_unary(ch, PATHS[9], ListWebhooksRequest { page_size: n, page_token: url }).await,
                3 => raw_unary(ch, PATHS[10], UpdateWebhookRequest { id, url: Some(url), description: None, enabled: Some(n % 2 == 0), ..Default::default() }).await,
                4 => raw_unary(ch, PATHS[11], DeleteWebhookRequest { id }).await,
                5 => raw_unary(ch, PATHS[12], RotateSecretRequest { id, grace_period_seconds: n }).await,
                6 => raw_unary(ch, PATHS[13], ListDeliveriesRequest { webhook_id: id, limit: n }).await,
                7 => raw_unary(ch, PATHS[14], ListDeadLettersRequest { webhook_id: id, after_offset: offset, limit: n }).await,
                _ => raw_unary(ch, PATHS[15], RedriveDeadLettersRequest { webhook_id: id, ..Default::default() }).await,
            }
        })?;
    }

    #[test]
    fn consumer_groups(name in prop_oneof![3 => Just("fuzz".to_string()), 2 => text()], ids in vec(text(), 0..3), n in any::<u32>(), offset in number(), filter in filter(), start in start(), action in enum_value(), which in 0usize..9) {
        check("ConsumerService", |ch| async move {
            match which {
                0 => raw_unary(ch, PATHS[16], CreateGroupRequest { name, filter, start, ack_timeout_ms: n, max_deliveries: n / 3, retry_backoff: Some(RetryBackoff { initial_ms: n, max_ms: n / 7 }), max_in_flight: n % 2_000, strategy: action }).await,
                1 => raw_unary(ch, PATHS[17], GetGroupRequest { name }).await,
                2 => raw_unary(ch, PATHS[18], ListGroupsRequest { page_size: n, page_token: name }).await,
                3 => raw_unary(ch, PATHS[19], UpdateGroupRequest { name, ack_timeout_ms: Some(n), strategy: Some(action), ..Default::default() }).await,
                4 => raw_unary(ch, PATHS[20], DeleteGroupRequest { name }).await,
                5 => raw_unary(ch, PATHS[21], AckRequest { group: name, delivery_ids: ids }).await,
                6 => raw_unary(ch, PATHS[22], NackRequest { group: name, delivery_ids: ids, action, delay_ms: n, reason: String::new() }).await,
                7 => raw_unary(ch, PATHS[23], ListParkedRequest { group: name, from_offset: offset, page_size: n }).await,
                _ => raw_unary(ch, PATHS[24], ReplayParkedRequest { group: name, from_offset: offset, to_offset: offset / 2, limit: n }).await,
            }
        })?;
    }

    #[test]
    fn unknown_fields_everywhere(message in unknown(), path in 0usize..PATHS.len()) {
        check(PATHS[path], |ch| raw_unary(ch, PATHS[path], message.clone()))?;
        check("Subscribe", |ch| raw_subscribe(ch, message))?;
    }
}
