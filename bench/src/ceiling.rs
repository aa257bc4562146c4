//! The two floors every append figure is read against, measured in the same run:
//!
//! - `ceiling`: a bare tonic server in this process that answers `Publish` without storing
//!   anything (same request and response messages, so the same bytes on the wire). No durable
//!   one-event-per-call API can beat it at the same concurrency on the same machine.
//! - `disk`: one 256-byte write plus `fdatasync` on the data dir's filesystem: the physical floor
//!   of a lone durable append.

use std::{
    fs::OpenOptions,
    io::Write,
    os::unix::fs::FileExt,
    path::Path,
    time::{Duration, Instant},
};

use ordo_api::v1::{
    AppendStreamRequest, AppendStreamResponse, EventPosition, PublishRequest, PublishResponse,
    ReadEventsRequest, ReadEventsResponse, SubscribeRequest, SubscribeResponse,
    event_service_server::{EventService, EventServiceServer},
};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    report::Row,
    scenarios::{self, AppendKind, PAYLOAD},
    stats::{Latencies, micros},
};

/// Answers Publish at once with made-up positions.
struct Echo;

#[tonic::async_trait]
impl EventService for Echo {
    type SubscribeStream = tokio_stream::Empty<Result<SubscribeResponse, Status>>;
    type AppendStreamStream = tokio_stream::Empty<Result<AppendStreamResponse, Status>>;

    async fn subscribe(
        &self,
        _: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Err(Status::unimplemented(
            "the ceiling server only echoes Publish",
        ))
    }

    async fn read_events(
        &self,
        _: Request<ReadEventsRequest>,
    ) -> Result<Response<ReadEventsResponse>, Status> {
        Err(Status::unimplemented(
            "the ceiling server only echoes Publish",
        ))
    }

    async fn append_stream(
        &self,
        _: Request<Streaming<AppendStreamRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        Err(Status::unimplemented(
            "the ceiling server only echoes Publish",
        ))
    }

    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let positions = request
            .into_inner()
            .events
            .into_iter()
            .enumerate()
            .map(|(i, event)| EventPosition {
                // The size of a real answer: a 26-character id, offsets, the stream id.
                id: "01JDZZZZZZZZZZZZZZZZZZZZZZ".into(),
                offset: 1_000_000 + i as u64,
                stream_id: event.stream_id,
                stream_version: 1000,
            })
            .collect();
        Ok(Response::new(PublishResponse {
            positions,
            deduplicated: false,
        }))
    }
}

/// The in-process echo server, stopped on drop.
pub struct Ceiling {
    pub addr: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Ceiling {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Ceiling {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel();
        // Nodelay on accepted sockets, as ordo-server sets it.
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(EventServiceServer::new(Echo))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                }),
        );
        Ok(Self {
            addr,
            stop: Some(stop),
        })
    }

    /// The same closed loop as `append`, against the echo.
    pub async fn measure(&self, clients: usize, duration: Duration) -> anyhow::Result<Row> {
        let channel = scenarios::connect(&self.addr).await?;
        let mut row = scenarios::append(
            std::slice::from_ref(&channel),
            AppendKind::Publish { batch: 1 },
            clients,
            duration,
        )
        .await?;
        row.scenario = "ceiling".into();
        Ok(row)
    }
}

/// Puts an append row next to its ceiling: the ratio of rates, in the same run.
pub fn against(row: Row, ceiling: &Row) -> Row {
    let ratio = if ceiling.rate > 0.0 {
        row.rate / ceiling.rate
    } else {
        0.0
    };
    row.extra("ceiling_rate", format!("{:.0}", ceiling.rate))
        .extra("x_ceiling", format!("{ratio:.2}"))
}

/// 256-byte appends, each followed by fdatasync, into a pre-zeroed file in `dir` (overwriting
/// written blocks, as the journal does), for `duration`.
pub fn disk(dir: &Path, duration: Duration) -> anyhow::Result<Row> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("ordo-bench-disk-{}", std::process::id()));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    const SIZE: u64 = 64 * 1024 * 1024;
    let zeros = vec![0u8; 1024 * 1024];
    for _ in 0..SIZE / zeros.len() as u64 {
        file.write_all(&zeros)?;
    }
    file.sync_all()?;
    let record = [b'x'; PAYLOAD];
    let mut samples = Vec::new();
    let mut at = 0u64;
    let started = Instant::now();
    while started.elapsed() < duration && at + PAYLOAD as u64 <= SIZE {
        let t0 = Instant::now();
        file.write_all_at(&record, at)?;
        file.sync_data()?;
        samples.push(micros(t0.elapsed()));
        at += PAYLOAD as u64;
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&path);
    let lat = Latencies::from_samples(samples);
    Ok(Row::new(
        "disk",
        "write 256 B + fdatasync".into(),
        lat.count() as f64 / elapsed,
        "syncs",
    )
    .latencies(&lat))
}
