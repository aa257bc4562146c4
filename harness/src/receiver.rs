//! A webhook receiver: a tiny axum app on 127.0.0.1 that records every request and answers from
//! a script, and an independent Standard Webhooks verifier (hmac/sha2 directly, not the
//! server's signing code).

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::net::TcpListener;

/// Longest a receiver waits for expected requests before failing the test.
pub const WAIT: Duration = Duration::from_secs(10);

/// What the receiver answers to one request.
#[derive(Clone)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<&'static str>,
}

/// A plain reply with this status.
pub fn reply(status: u16) -> Reply {
    Reply {
        status,
        retry_after: None,
    }
}

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Received {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub content_type: String,
    pub body: Vec<u8>,
    pub answered: u16,
    pub at: Instant,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("body is JSON")
    }
}

/// What a receiver has seen and will answer; kept across a restart on the same port.
#[derive(Default)]
pub struct Shared {
    seen: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Option<Reply>>,
}

/// A webhook endpoint on 127.0.0.1 that records every request and answers from a script
/// (then with the default reply, 200 unless changed).
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
}

impl Receiver {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(listener, Arc::default())
    }

    /// Starts on a port chosen earlier (for "receiver down, then up").
    pub async fn start_on(addr: SocketAddr, shared: Arc<Shared>) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind again");
        Self::serve(listener, shared)
    }

    fn serve(listener: TcpListener, shared: Arc<Shared>) -> Self {
        let addr = listener.local_addr().expect("addr");
        let app = Router::new().fallback(handle).with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, shared }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.script.lock().unwrap().extend(replies);
    }

    pub fn set_default(&self, reply: Reply) {
        *self.shared.default.lock().unwrap() = Some(reply);
    }

    pub fn seen(&self) -> Vec<Received> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Requests answered with a 2xx.
    pub fn delivered(&self) -> Vec<Received> {
        self.seen()
            .into_iter()
            .filter(|r| (200..300).contains(&r.answered))
            .collect()
    }

    pub async fn wait_delivered(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + WAIT;
        loop {
            let delivered = self.delivered();
            if delivered.len() >= n {
                return delivered;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} deliveries arrived in {WAIT:?}; seen: {:?}",
                delivered.len(),
                self.seen().iter().map(|r| r.answered).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn wait_seen(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + WAIT;
        loop {
            let seen = self.seen();
            if seen.len() >= n {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} requests arrived",
                seen.len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn handle(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let reply = shared
        .script
        .lock()
        .unwrap()
        .pop_front()
        .or_else(|| shared.default.lock().unwrap().clone())
        .unwrap_or(reply(200));
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    shared.seen.lock().unwrap().push(Received {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        content_type: header("content-type"),
        body: body.to_vec(),
        answered: reply.status,
        at: Instant::now(),
    });
    let status = StatusCode::from_u16(reply.status).expect("status");
    match reply.retry_after {
        Some(after) => (status, [("retry-after", after)], "slow down").into_response(),
        None => (status, format!("answered {}", reply.status)).into_response(),
    }
}

/// Standard Webhooks verification, written from the spec: HMAC-SHA256 keyed with the base64
/// part of the secret over `id.timestamp.body`; any of the space-separated `v1,` entries.
pub fn verify(secret: &str, id: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
    let key = B64
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .expect("base64 secret");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("hmac key");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", B64.encode(mac.finalize().into_bytes()));
    header.split(' ').any(|sig| sig == expected)
}

/// Asserts a request carries a valid, current Standard Webhooks signature.
pub fn assert_signed(secret: &str, r: &Received) {
    assert!(
        verify(secret, &r.id, &r.timestamp, &r.body, &r.signature),
        "signature {:?} does not verify",
        r.signature
    );
    let ts: u64 = r.timestamp.parse().expect("numeric webhook-timestamp");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(ts) < 300, "timestamp {ts} is not current");
}
