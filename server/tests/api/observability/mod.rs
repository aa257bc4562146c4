//! Operations, black-box on the real binary: the Prometheus endpoint (`--metrics-listen`),
//! scraped over HTTP and read with a Prometheus text-format parser after real gRPC calls, and
//! the JSON log format (`--log-format json`).
//!
//! Every test runs its own `ordo-server` process: the metrics recorder is process-wide, so
//! only a process of its own makes a scrape's counts exactly the test's.

use std::{
    collections::HashSet,
    net::SocketAddr,
    time::{Duration, Instant},
};

use ordo_api::v1::{
    CreateWebhookRequest, GetOrderRequest, RedriveDeadLettersRequest, SubscribeRequest,
    event_service_client::EventServiceClient, order_service_client::OrderServiceClient,
    redrive_dead_letters_request::Selection, webhook_service_client::WebhookServiceClient,
};
use ordo_server::auth::Scope;
use ordo_test_harness::{
    ChildServer,
    api::{assert_status, new_event, publish_req, read_until_caught_up, start},
    free_port,
    receiver::{Receiver, reply},
    tokens::{Tok, with_token, write_tokens},
};
use prometheus_parse::{Scrape, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Code, transport::Channel};

mod logs;
mod metrics;

const ADMIN: &str = "observability-admin-token-0123";

/// A loopback address with a free port, for `--metrics-listen`.
fn metrics_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

async fn connect(url: String) -> Channel {
    Channel::from_shared(url)
        .expect("url")
        .connect()
        .await
        .expect("connect")
}

/// GETs `path` over plain HTTP/1.1; the status code and the body.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    // The binary's gRPC port (bound by main, which ChildServer waits for) may answer a moment
    // before the metrics port is bound.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => break stream,
            Err(err) => {
                assert!(Instant::now() < deadline, "metrics port {addr}: {err}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("response within 10 s")
        .expect("read response");
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("http response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, body.to_string())
}

/// One scrape, parsed by a Prometheus text-format parser.
struct Metrics(Scrape);

impl Metrics {
    async fn scrape(addr: SocketAddr) -> Self {
        let (status, body) = http_get(addr, "/metrics").await;
        assert_eq!(status, 200, "scrape answered {status}: {body}");
        let scrape = Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("parse");
        Self(scrape)
    }

    /// The sum of the samples of `name` whose labels include `labels`; None when there is none.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let values: Vec<f64> = self
            .0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                other => panic!("{name} is not a single value: {other:?}"),
            })
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    #[track_caller]
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| {
            let names: HashSet<&str> = self.0.samples.iter().map(|s| s.metric.as_str()).collect();
            panic!("no sample {name}{labels:?}; the scrape has {names:?}")
        })
    }
}

/// The ports `pid` listens on (TCP, v4 and v6), from /proc: its socket inodes matched against
/// the kernel's table of listening sockets.
#[cfg(target_os = "linux")]
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read the child's fds")
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            let inode = target.strip_prefix("socket:[")?.strip_suffix(']')?;
            Some(inode.to_string())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address is cols[1] (hex ip:port), st cols[3] (0A = LISTEN), inode cols[9].
            if cols.len() > 9 && cols[3] == "0A" && inodes.contains(cols[9]) {
                let port = cols[1].rsplit(':').next().expect("port");
                ports.push(u16::from_str_radix(port, 16).expect("hex port"));
            }
        }
    }
    ports.sort_unstable();
    ports
}
