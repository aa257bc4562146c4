//! The write-ahead journal, black-box: the real binary killed with SIGKILL again and again under
//! concurrent load (segment roll-overs, background sled flushes, and retention deleting segments
//! included) loses no acknowledged event, and a damaged journal gives the documented outcome: a
//! torn last frame is cut off with a warning, damage followed by whole frames refuses to start
//! and names the file, damage in an old segment fails only reads of the batch it hit.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use ordo_api::v1::{
    EventPosition, NewEvent, event_service_client::EventServiceClient,
    order_service_client::OrderServiceClient,
};
use ordo_test_harness::api::*;
use ordo_test_harness::{ChildServer, free_port, server_binary};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tonic::transport::Channel;

async fn connect(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .expect("url")
        // Generous: a debug build verifying 50k events on two busy cores.
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect")
}

/// Small segments and a fast sled flush make roll-overs and background flushes frequent, so
/// the kills land in the middle of them.
const CHURN: &[&str] = &["--journal-segment-mb", "4", "--sled-flush-ms", "50"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_torture_over_the_journal() {
    let mut rng = torture_rng();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut acked: Vec<EventPosition> = Vec::new();
    let mut orders: Vec<(String, u64)> = Vec::new();
    const TRIALS: usize = 6;
    for trial in 0..TRIALS {
        let server = ChildServer::start(dir.path(), None, CHURN).await;
        let url = server.url();
        // Everything acknowledged in earlier trials is still there before new load starts.
        verify(&url, &acked, &orders).await;
        let mut writers = Vec::new();
        for w in 0..6usize {
            let channel = connect(&url).await;
            writers.push(tokio::spawn(load(channel, trial, w)));
        }
        let run = Duration::from_millis(rng.random_range(150..1200));
        tokio::time::sleep(run).await;
        server.kill9();
        let this_trial = join_writers(writers, &mut acked, &mut orders).await;
        let segments = journal_segments(dir.path());
        println!(
            "trial {trial}: killed after {run:?}, {this_trial} events acknowledged, journal segments on disk: {:?}",
            segments
                .iter()
                .filter_map(|p| p.file_stem().and_then(|s| s.to_str()?.parse::<u64>().ok()))
                .collect::<Vec<_>>()
        );
    }
    assert!(acked.len() > 5_000, "too little load to mean anything");
    let server = ChildServer::start(dir.path(), None, CHURN).await;
    verify(&server.url(), &acked, &orders).await;
}

/// Retention deletes the journal segments it has emptied while appends, roll-overs, sled
/// flushes and compactions (every 100 ms, down to 4 MiB) run, and `kill -9` lands anywhere in
/// that: after each restart the retained log reads back whole (no chunk pointing at a deleted
/// or zeroed segment), gapless from its first retained offset, with every acknowledged event
/// at or above it in place, and every acknowledged order still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_torture_with_retention_deleting_segments() {
    const RETAIN: &[&str] = &[
        "--journal-segment-mb",
        "4",
        "--sled-flush-ms",
        "50",
        "--retention-max-bytes",
        "4MiB",
        "--compaction-interval",
        "100ms",
    ];
    let mut rng = torture_rng();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut acked: Vec<EventPosition> = Vec::new();
    let mut orders: Vec<(String, u64)> = Vec::new();
    let mut first = 1;
    for trial in 0..5 {
        let server = ChildServer::start(dir.path(), None, RETAIN).await;
        let url = server.url();
        let mut writers = Vec::new();
        for w in 0..4usize {
            writers.push(tokio::spawn(load(connect(&url).await, trial, w)));
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(600..1500))).await;
        server.kill9();
        join_writers(writers, &mut acked, &mut orders).await;
        // Checked on a server that does not compact, so the range read stays put.
        let server = ChildServer::start(dir.path(), None, CHURN).await;
        let checked = verify_retained(&server.url(), &acked, &orders).await;
        assert!(checked >= first, "the first retained offset went back");
        first = checked;
        server.kill9();
    }
    // On a busy machine (a debug build, tests in parallel) the compactions of short trials may
    // all be cut off by their kill: one more run, as long as it takes, lets retention trim and
    // delete segments, so the test always sees that, and the log read back whole after it.
    let server = ChildServer::start(dir.path(), None, RETAIN).await;
    let url = server.url();
    let mut writers = Vec::new();
    for w in 0..4usize {
        writers.push(tokio::spawn(load(connect(&url).await, 99, w)));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while journal_segments(dir.path())
        .iter()
        .any(|p| p.ends_with("00000000000000000001.journal"))
    {
        assert!(
            Instant::now() < deadline,
            "retention deleted no segment: {:?}",
            journal_segments(dir.path())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.kill9();
    join_writers(writers, &mut acked, &mut orders).await;
    let server = ChildServer::start(dir.path(), None, CHURN).await;
    let checked = verify_retained(&server.url(), &acked, &orders).await;
    assert!(
        checked > 1 && checked >= first,
        "retention never trimmed (first retained offset {checked}, before {first})"
    );
}

/// [`verify`] for a log that retention trims: gapless from its first retained offset, which it
/// returns.
async fn verify_retained(url: &str, acked: &[EventPosition], created: &[(String, u64)]) -> u64 {
    let channel = connect(url).await;
    let mut events = EventServiceClient::new(channel.clone());
    let mut log = Vec::new();
    let mut start = from(1);
    loop {
        let page = events
            .read_events(ordo_api::v1::ReadEventsRequest {
                start,
                limit: 1000,
                start_at_first_retained: true,
                ..Default::default()
            })
            .await
            .expect("every retained event reads")
            .into_inner();
        log.extend(page.events);
        if page.next_after_offset >= page.head_offset {
            // (Nothing at all when the kill came before the first append.)
            assert_eq!(log.last().map_or(0, |e| e.offset), page.head_offset);
            break;
        }
        start = after(page.next_after_offset);
    }
    let first = log.first().map_or(1, |e| e.offset);
    assert_eq!(
        offsets(&log),
        (first..first + log.len() as u64).collect::<Vec<_>>(),
        "offsets are gapless from the first retained one"
    );
    for position in acked.iter().filter(|p| p.offset >= first) {
        let event = &log[(position.offset - first) as usize];
        assert_eq!(event.id, position.id, "acknowledged event lost or moved");
        assert_eq!(event.stream_version, position.stream_version);
    }
    let mut orders = OrderServiceClient::new(channel);
    for (id, last_offset) in created {
        assert_order_created(&mut orders, id, *last_offset).await;
    }
    first
}

/// The torture tests' randomness, from `ORDO_TORTURE_SEED` when set (printed to replay a run).
fn torture_rng() -> StdRng {
    let seed: u64 = std::env::var("ORDO_TORTURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (ORDO_TORTURE_SEED to replay)");
    StdRng::seed_from_u64(seed)
}

type Load = (Vec<EventPosition>, Vec<(String, u64)>);

/// Waits for the writers of a killed server and keeps what they had acknowledged; returns how
/// many events that was.
async fn join_writers(
    writers: Vec<tokio::task::JoinHandle<Load>>,
    acked: &mut Vec<EventPosition>,
    orders: &mut Vec<(String, u64)>,
) -> usize {
    let mut count = 0;
    for writer in writers {
        let (events, created) = tokio::time::timeout(Duration::from_secs(15), writer)
            .await
            .expect("writers notice the crash")
            .expect("writer task");
        count += events.len();
        acked.extend(events);
        orders.extend(created);
    }
    count
}

/// One writer: batches of 1-60 events (so segments fill and roll), and orders on writer 0.
async fn load(channel: Channel, trial: usize, w: usize) -> Load {
    let mut events = EventServiceClient::new(channel.clone());
    let mut orders = OrderServiceClient::new(channel);
    let mut acked = Vec::new();
    let mut created = Vec::new();
    for n in 0..1_000_000u64 {
        if w == 0 && n % 4 == 0 {
            match orders
                .create_order(create_req(&format!("torture-{trial}-{n}")))
                .await
            {
                Ok(r) => {
                    let order = r.into_inner().order.expect("order");
                    created.push((order.id, order.last_offset));
                }
                Err(_) => break,
            }
            continue;
        }
        let size = (n * 7 + w as u64) % 60 + 1;
        let batch = (0..size)
            .map(|i| NewEvent {
                // 1 KiB each: a 4 MiB segment fills in well under a second.
                data: vec![b'x'; 1024],
                ..new_event_with_id(
                    &format!("torture-{w}"),
                    "test.torture",
                    &format!("t{trial}-w{w}-{n}-{i}"),
                )
            })
            .collect();
        match events.publish(publish_req(batch)).await {
            Ok(r) => acked.extend(r.into_inner().positions),
            Err(_) => break,
        }
    }
    (acked, created)
}

/// Every acknowledged event is at its offset once, offsets are gapless, stream versions count
/// up in offset order, and every acknowledged order folds to what its create returned.
async fn verify(url: &str, acked: &[EventPosition], created: &[(String, u64)]) {
    let channel = connect(url).await;
    let mut events = EventServiceClient::new(channel.clone());
    let mut orders = OrderServiceClient::new(channel);
    let log = read_all(&mut events).await;
    assert_eq!(
        log.len() as u64,
        head(&mut events).await,
        "the whole log is read back"
    );
    assert_log_holds(&log, acked);
    for (id, last_offset) in created {
        assert_order_created(&mut orders, id, *last_offset).await;
    }
}

fn journal_segments(data_dir: &Path) -> Vec<PathBuf> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(data_dir.join("journal"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "journal"))
                .collect()
        })
        .unwrap_or_default();
    segments.sort();
    segments
}

/// A data dir whose journal holds `events` single-event frames (sled's flush interval is longer
/// than the test, so the journal keeps them all; sled may still have written some on its own),
/// and the byte ranges of those frames.
async fn journal_only_log(events: u64) -> (tempfile::TempDir, PathBuf, Vec<(usize, usize)>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ChildServer::start(dir.path(), None, &["--sled-flush-ms", "600000"]).await;
    let mut client = EventServiceClient::new(connect(&server.url()).await);
    for n in 0..events {
        let position = client
            .publish(publish_req(vec![new_event_with_id(
                "torn",
                "test.torn",
                &format!("torn-{n}"),
            )]))
            .await
            .expect("publish")
            .into_inner()
            .positions;
        assert_eq!(position[0].offset, n + 1);
    }
    server.kill9();
    let segment = journal_segments(dir.path())
        .into_iter()
        .next()
        .expect("a journal segment");
    let bytes = std::fs::read(&segment).expect("read segment");
    // Frame header: magic, payload length (u32 LE at 4..8), lsn, two checksums: 24 bytes.
    let mut frames = Vec::new();
    let mut at = 0;
    while bytes.len() >= at + 24 && &bytes[at..at + 4] == b"ORDJ" {
        let len = 24 + u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4")) as usize;
        frames.push((at, at + len));
        at += len;
    }
    assert_eq!(
        frames.len() as u64,
        events,
        "one frame per acknowledged publish"
    );
    (dir, segment, frames)
}

/// The real binary on a damaged data dir, killed when dropped.
struct Recovering {
    child: std::process::Child,
    port: u16,
}

impl Recovering {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Recovering {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary on `dir` until it answers a call (returns it with its stderr so far) or
/// exits (returns its stderr). The port is bound before the log opens, so only an answered
/// call means recovery is over.
async fn start_and_report(dir: &Path) -> Result<(Recovering, String), String> {
    let port = free_port();
    let log = dir.join("server.log");
    let child = Command::new(server_binary())
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        // tracing writes to stdout, anyhow's exit error to stderr: keep both.
        .stdout(std::fs::File::create(&log).expect("log file"))
        .stderr(
            std::fs::OpenOptions::new()
                .append(true)
                .open(&log)
                .expect("log file"),
        )
        .spawn()
        .expect("spawn");
    let mut server = Recovering { child, port };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(_)) = server.child.try_wait() {
            return Err(std::fs::read_to_string(&log).unwrap_or_default());
        }
        if let Ok(channel) = Channel::from_shared(server.url())
            .expect("url")
            .timeout(Duration::from_secs(2))
            .connect()
            .await
            && EventServiceClient::new(channel)
                .read_events(ordo_api::v1::ReadEventsRequest::default())
                .await
                .is_ok()
        {
            return Ok((server, std::fs::read_to_string(&log).unwrap_or_default()));
        }
        assert!(
            Instant::now() < deadline,
            "ordo-server neither started nor exited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Truncating the last segment anywhere keeps every frame before the cut, cuts the torn one
/// off with a warning naming the file, and the log goes on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_journal_tail_is_cut_and_logged() {
    const EVENTS: u64 = 12;
    let (source, segment, frames) = journal_only_log(EVENTS).await;
    let end = frames.last().expect("frames").1;
    let mut rng = StdRng::seed_from_u64(rand::random());
    let mut cuts: Vec<usize> = (0..5).map(|_| rng.random_range(0..end)).collect();
    // A cut inside the very first header, one on a frame boundary, one just before the end.
    cuts.extend([3, frames[5].1, end - 1]);
    for cut in cuts {
        let copy = tempfile::tempdir().expect("temp dir");
        copy_dir(source.path(), copy.path());
        let name = segment.file_name().expect("name");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(copy.path().join("journal").join(name))
            .expect("open segment");
        file.set_len(cut as u64).expect("truncate");
        drop(file);

        let whole = frames.iter().filter(|(_, e)| *e <= cut).count() as u64;
        let torn = frames.iter().any(|(s, e)| *s < cut && cut < *e);
        let (server, stderr) = start_and_report(copy.path())
            .await
            .unwrap_or_else(|log| panic!("cut at {cut}: the server refused to start: {log}"));
        let mut client = EventServiceClient::new(connect(&server.url()).await);
        let log = read_all(&mut client).await;
        // sled may have applied (and written) frames past the cut: those stay too.
        let head = log.len() as u64;
        assert!(
            head >= whole,
            "cut at {cut}: every whole frame before it is kept"
        );
        assert_eq!(
            offsets(&log),
            (1..=head).collect::<Vec<_>>(),
            "cut at {cut}: gapless"
        );
        for event in &log {
            assert_eq!(event.id, format!("torn-{}", event.offset - 1));
        }
        if torn {
            assert!(
                stderr.contains("torn frame") && stderr.contains(name.to_str().expect("utf8")),
                "cut at {cut}: the torn frame is logged with its file: {stderr}"
            );
        }
        let next = client
            .publish(publish_req(vec![new_event("torn", "test.after")]))
            .await
            .expect("publish after recovery")
            .into_inner();
        assert_eq!(next.positions[0].offset, head + 1, "cut at {cut}");
        assert_eq!(next.positions[0].stream_version, head + 1);
    }
}

/// A flipped byte in the middle of the journal (whole frames after it) refuses to start and
/// names the file and byte; the same damage in the last frame is treated as a torn write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_journal_refuses_to_start_or_cuts_the_last_frame() {
    const EVENTS: u64 = 8;
    let (source, segment, frames) = journal_only_log(EVENTS).await;
    let name = segment.file_name().expect("name").to_owned();
    let flip = |dir: &Path, at: usize| {
        let path = dir.join("journal").join(&name);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[at] ^= 0x55;
        std::fs::write(&path, bytes).expect("write");
    };

    // Middle: frame 3's payload.
    let copy = tempfile::tempdir().expect("temp dir");
    copy_dir(source.path(), copy.path());
    let (start, end) = frames[3];
    flip(copy.path(), (start + end) / 2);
    let stderr = match start_and_report(copy.path()).await {
        Err(stderr) => stderr,
        Ok((_, log)) => {
            panic!("a corrupt frame followed by acknowledged ones must not start: {log}")
        }
    };
    assert!(
        stderr.contains("is corrupt at byte")
            && stderr.contains(&start.to_string())
            && stderr.contains(name.to_str().expect("utf8")),
        "names the file and byte: {stderr}"
    );
    // Nothing was changed on disk: the journal still holds the damage for the operator.
    let kept = std::fs::read(copy.path().join("journal").join(&name)).expect("read");
    assert_eq!(kept.len(), std::fs::read(&segment).expect("read").len());

    // Last frame: cut off like a torn write; the rest is there.
    let copy = tempfile::tempdir().expect("temp dir");
    copy_dir(source.path(), copy.path());
    let (start, end) = frames[EVENTS as usize - 1];
    flip(copy.path(), (start + end) / 2);
    let (server, stderr) = start_and_report(copy.path())
        .await
        .expect("a damaged last frame is cut off");
    assert!(stderr.contains("torn frame"), "{stderr}");
    let mut client = EventServiceClient::new(connect(&server.url()).await);
    let log = read_all(&mut client).await;
    assert!(
        log.len() as u64 >= EVENTS - 1,
        "only the damaged frame may go"
    );
    assert_eq!(offsets(&log), (1..=log.len() as u64).collect::<Vec<_>>());
}

/// 1 KiB of payload that names its batch and place, so a test can find it in a segment file.
fn marked_event(batch: u64, i: u64) -> NewEvent {
    let mut data = format!("body-{batch:05}-{i:02}-").into_bytes();
    data.resize(1024, b'x');
    NewEvent {
        data,
        ..new_event("bodies", "test.body")
    }
}

/// Event bodies are read from the journal's segments and checked against their own checksum.
/// A flipped byte inside an old segment, whose frames sled had all applied, does not stop the
/// start (start-up does not read that segment); reads of the damaged batch fail with INTERNAL
/// naming the segment, and every other event still reads back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_in_an_applied_segment_fails_only_reads_of_that_batch() {
    const BATCHES: u64 = 400;
    const PER_BATCH: u64 = 16;
    let configure = |cfg: &mut ordo_server::ServerConfig| {
        cfg.journal_segment_bytes = 4 * 1024 * 1024;
        cfg.sled_flush_interval = Duration::from_millis(20);
    };
    let server = ordo_test_harness::TestServer::start_with(configure).await;
    let mut events = server.events().await;
    // 6.4 MiB: the first 4 MiB segment fills and is sealed.
    for batch in 0..BATCHES {
        let batch_events = (0..PER_BATCH).map(|i| marked_event(batch, i)).collect();
        events
            .publish(publish_req(batch_events))
            .await
            .expect("publish");
    }
    let dir = server.stop().await;
    let first_segment = journal_segments(dir.path())
        .into_iter()
        .next()
        .expect("a journal segment");
    let mut bytes = std::fs::read(&first_segment).expect("read segment");
    let needle = b"body-00010-03-";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("batch 10 is in the first segment");
    bytes[at + 100] ^= 0x55;
    std::fs::write(&first_segment, bytes).expect("write segment");

    let server = ordo_test_harness::TestServer::start_in(dir, configure).await;
    let mut events = server.events().await;
    let read = |from_offset: u64| ordo_api::v1::ReadEventsRequest {
        start: from(from_offset),
        limit: PER_BATCH as u32,
        ..Default::default()
    };
    // Batch 10 holds offsets 161..=176.
    let damaged = events.read_events(read(161)).await;
    assert_status(damaged, tonic::Code::Internal, "checksum mismatch");
    let damaged = events.read_events(read(170)).await;
    assert_status(damaged, tonic::Code::Internal, "journal segment 1");
    for (from_offset, batch) in [(1, 0), (177, 11), (PER_BATCH * 300 + 1, 300)] {
        let page = events
            .read_events(read(from_offset))
            .await
            .expect("an undamaged batch reads")
            .into_inner()
            .events;
        assert_eq!(page.len() as u64, PER_BATCH, "batch {batch}");
        for (i, event) in page.iter().enumerate() {
            assert_eq!(event.offset, from_offset + i as u64);
            let Some(ordo_api::v1::event::Payload::Data(data)) = &event.payload else {
                panic!("offset {} has no data", event.offset);
            };
            assert!(
                data.starts_with(format!("body-{batch:05}-{i:02}-").as_bytes()),
                "offset {} holds its own payload",
                event.offset
            );
            assert_eq!(data.len(), 1024);
        }
    }
}

/// Restarts with little or nothing written in between do not each leave a segment behind: a
/// start resumes after the last frame, in the segment that holds it, and drops the empty one
/// the previous run had made ahead of time (preallocated, up to 64 MiB each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_do_not_pile_up_segments() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut acked = Vec::new();
    for round in 0..6 {
        let server = ChildServer::start(dir.path(), None, &[]).await;
        let mut events = EventServiceClient::new(connect(&server.url()).await);
        let reply = events
            .publish(publish_req(vec![new_event("restarts", "test.restart")]))
            .await
            .expect("publish");
        acked.extend(reply.into_inner().positions);
        // Time for the next segment to be made ahead, as in any run longer than a moment.
        tokio::time::sleep(Duration::from_millis(300)).await;
        if round % 2 == 0 {
            server.kill9();
        } else {
            server.terminate();
        }
    }
    let segments = journal_segments(dir.path());
    assert!(
        segments.len() <= 2,
        "one segment in use and one made ahead, not one per restart: {segments:?}"
    );
    let server = ChildServer::start(dir.path(), None, &[]).await;
    verify(&server.url(), &acked, &[]).await;
}
