//! `ordo events publish`: one event from flags, or many from a JSON-lines file (on one
//! AppendStream, or in Publish batches with `--batch-size`) with a progress bar when a person
//! is watching.

use std::{
    collections::{HashMap, VecDeque},
    io::Read,
    path::Path,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context;
use base64::Engine;
use indicatif::ProgressBar;
use ordo_client::{
    AckFuture, Backoff, BackoffPolicy, ClientError, OrdoClient,
    v1::{EventPosition, NewEvent, PublishResponse},
};
use serde_json::{Value, json};

use super::{
    fail::{EXIT_FAILED, Failure},
    json,
    out::Out,
    progress::progress_bar,
};

/// Attempts per batch (or stream reconnects in a row) when the server is briefly unavailable.
/// Retrying is safe: every event carries an id, so what was stored before a lost
/// acknowledgement is deduplicated.
const BATCH_ATTEMPTS: u32 = 5;
/// Refused lines named in the error; the count says how many more.
const MAX_REFUSALS_SHOWN: usize = 5;
/// Exit code after Ctrl-C, as shells report SIGINT.
const EXIT_INTERRUPTED: i32 = 130;

/// A single event given with flags.
pub struct One {
    pub stream: String,
    pub event_type: String,
    pub data: String,
    pub content_type: Option<String>,
    pub id: Option<String>,
    pub source: Option<String>,
    pub metadata: Vec<String>,
    pub expected_version: Option<u64>,
}

pub async fn one(client: &OrdoClient, out: &Out, one: One) -> anyhow::Result<()> {
    let metadata = one
        .metadata
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| {
                    Failure::usage(format!("invalid --meta {pair:?}: expected KEY=VALUE"))
                })
        })
        .collect::<Result<HashMap<_, _>, _>>()?;
    let content_type = one.content_type.unwrap_or_else(|| {
        if one.data.is_empty() {
            String::new()
        } else if serde_json::from_str::<Value>(&one.data).is_ok() {
            "application/json".into()
        } else {
            "text/plain".into()
        }
    });
    let event = NewEvent {
        stream_id: one.stream,
        r#type: one.event_type,
        id: one.id.unwrap_or_else(new_id),
        source: one.source.unwrap_or_default(),
        datacontenttype: content_type,
        data: one.data.into_bytes(),
        metadata,
        expected_stream_version: one.expected_version,
    };
    let response = client
        .publish(vec![event])
        .await
        .context("cannot publish the event")?;
    for position in &response.positions {
        if out.json() {
            out.json_line(&json::position(position, response.deduplicated))?;
        } else {
            let note = if response.deduplicated {
                " (already stored: deduplicated)"
            } else {
                ""
            };
            out.line(&format!(
                "published {} at offset {} ({}@{}){note}",
                position.id, position.offset, position.stream_id, position.stream_version
            ))?;
        }
    }
    Ok(())
}

/// Client-side ids make retries idempotent.
fn new_id() -> String {
    ulid::Ulid::new().to_string()
}

/// Publishes every line of `path`: on one AppendStream (each event acked once durable, many in
/// flight), or with `batch_size`, in atomic Publish batches of that many events.
pub async fn from_file(
    client: &OrdoClient,
    out: &Out,
    path: &Path,
    batch_size: Option<usize>,
) -> anyhow::Result<()> {
    let name = path.display().to_string();
    let text = read_input(path).with_context(|| format!("cannot read {name}"))?;
    // Parse everything first: a typo on line 9,000 must not leave 8,999 events half-published.
    let events = parse_lines(&text, &name)?;
    if events.is_empty() {
        return Err(Failure::usage(format!("{name} holds no events")).into());
    }
    let total = events.len();
    let bar = progress_bar(total as u64, "events");
    let started = Instant::now();
    let published = AtomicUsize::new(0);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let work = async {
        match batch_size {
            Some(size) => publish_batches(client, &events, size, &name, &bar, &published).await,
            None => stream(client, &events, &name, &bar, &published).await,
        }
    };
    let (summary, refused) = tokio::select! {
        _ = &mut ctrl_c => {
            bar.abandon();
            return Err(Failure::new(
                EXIT_INTERRUPTED,
                format!(
                    "interrupted: published {} of {total} events from {name}; rerunning is safe only for lines with an \"id\"",
                    published.load(Ordering::Relaxed)
                ),
            ).into());
        }
        result = work => result?,
    };
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let rate = summary.published as f64 / seconds.max(1e-6);
    let dedup_key = if batch_size.is_some() {
        "deduplicated_batches"
    } else {
        "deduplicated"
    };
    if out.json() {
        let mut line = json!({
            "published": summary.published,
            "first_offset": summary.first,
            "last_offset": summary.last,
            "refused": refused.len(),
            "seconds": seconds,
        });
        line[dedup_key] = json!(summary.deduplicated);
        out.json_line(&line)?;
    } else {
        let dedup = if summary.deduplicated > 0 {
            let what = if batch_size.is_some() {
                "batches were"
            } else {
                "events were"
            };
            format!(", {} {what} already stored", summary.deduplicated)
        } else {
            String::new()
        };
        out.line(&format!(
            "published {} events (offsets {}..{}) in {seconds:.2} s, {rate:.0} events/s{dedup}",
            summary.published,
            summary.first.unwrap_or(0),
            summary.last.unwrap_or(0),
        ))?;
    }
    if refused.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = refused
        .iter()
        .take(MAX_REFUSALS_SHOWN)
        .map(|(line, why)| format!("line {line}: {why}"))
        .collect();
    let more = refused.len().saturating_sub(MAX_REFUSALS_SHOWN);
    let more = if more > 0 {
        format!("; and {more} more")
    } else {
        String::new()
    };
    Err(Failure::new(
        EXIT_FAILED,
        format!(
            "the server refused {} of {total} events from {name} (the others are stored): {}{more}",
            refused.len(),
            shown.join("; ")
        ),
    )
    .into())
}

/// Line numbers (1-based, among non-empty lines) and why the server refused them.
type Refused = Vec<(usize, String)>;

async fn publish_batches(
    client: &OrdoClient,
    events: &[NewEvent],
    batch_size: usize,
    name: &str,
    bar: &ProgressBar,
    published: &AtomicUsize,
) -> anyhow::Result<(Summary, Refused)> {
    let mut summary = Summary::default();
    for batch in events.chunks(batch_size) {
        let response = publish_with_retry(client, batch).await.with_context(|| {
            format!(
                "cannot publish {name} (published {} of {} events before this batch)",
                summary.published,
                events.len()
            )
        })?;
        if response.deduplicated {
            summary.deduplicated += 1;
        }
        for position in &response.positions {
            summary.add(position);
        }
        published.store(summary.published, Ordering::Relaxed);
        bar.inc(batch.len() as u64);
    }
    Ok((summary, Vec::new()))
}

/// One AppendStream, with up to the server's window of events in flight. When the stream
/// breaks (server restart, network), it reconnects and resends from the oldest unacked event:
/// every line has an id, so events stored before the break are answered as duplicates.
async fn stream(
    client: &OrdoClient,
    events: &[NewEvent],
    name: &str,
    bar: &ProgressBar,
    published: &AtomicUsize,
) -> anyhow::Result<(Summary, Refused)> {
    let mut summary = Summary::default();
    let mut refused = Vec::new();
    let mut backoff = Backoff::new(BackoffPolicy {
        initial: Duration::from_millis(200),
        max: Duration::from_secs(3),
    });
    // Every event before `next` is answered.
    let mut next = 0;
    loop {
        let broke = match client.producer().await {
            Err(err) => err,
            Ok(mut producer) => {
                let window = producer.max_in_flight() as usize;
                let mut acks: VecDeque<(usize, AckFuture)> = VecDeque::with_capacity(window);
                let mut to_send = next;
                let broke = loop {
                    if to_send < events.len() && acks.len() < window {
                        match producer.send(events[to_send].clone()).await {
                            Ok(ack) => {
                                acks.push_back((to_send, ack));
                                to_send += 1;
                                continue;
                            }
                            Err(err) => break Some(err),
                        }
                    }
                    let Some((i, ack)) = acks.pop_front() else {
                        break None;
                    };
                    match ack.await {
                        Ok(ack) => {
                            summary.add(&ack.position);
                            if ack.deduplicated {
                                summary.deduplicated += 1;
                            }
                        }
                        Err(err) if err.is_retryable() => break Some(err),
                        Err(err) => refused.push((i + 1, err.to_string())),
                    }
                    next = i + 1;
                    published.store(summary.published, Ordering::Relaxed);
                    bar.inc(1);
                };
                match broke {
                    None => {
                        producer
                            .close()
                            .await
                            .with_context(|| format!("the stream publishing {name} ended badly"))?;
                        return Ok((summary, refused));
                    }
                    Some(err) => err,
                }
            }
        };
        if !broke.is_retryable() || backoff.attempt() + 1 >= BATCH_ATTEMPTS {
            return Err(anyhow::Error::new(broke).context(format!(
                "cannot publish {name} (published {} of {} events)",
                summary.published,
                events.len()
            )));
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

#[derive(Default)]
struct Summary {
    published: usize,
    first: Option<u64>,
    last: Option<u64>,
    /// Batches (Publish) or events (stream) that were already stored.
    deduplicated: usize,
}

impl Summary {
    fn add(&mut self, position: &EventPosition) {
        self.published += 1;
        self.first = Some(
            self.first
                .map_or(position.offset, |f| f.min(position.offset)),
        );
        self.last = Some(
            self.last
                .map_or(position.offset, |l| l.max(position.offset)),
        );
    }
}

async fn publish_with_retry(
    client: &OrdoClient,
    batch: &[NewEvent],
) -> Result<PublishResponse, ClientError> {
    let mut backoff = Backoff::new(BackoffPolicy {
        initial: Duration::from_millis(200),
        max: Duration::from_secs(3),
    });
    loop {
        match client.publish(batch.to_vec()).await {
            Err(err) if err.is_retryable() && backoff.attempt() + 1 < BATCH_ATTEMPTS => {
                tokio::time::sleep(backoff.next_delay()).await;
            }
            result => return result,
        }
    }
}

fn read_input(path: &Path) -> std::io::Result<String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        return Ok(text);
    }
    std::fs::read_to_string(path)
}

fn parse_lines(text: &str, name: &str) -> Result<Vec<NewEvent>, Failure> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            parse_line(line).map_err(|why| Failure::usage(format!("{name} line {}: {why}", i + 1)))
        })
        .collect()
}

/// One line: `{"stream_id", "type", "data" | "data_base64", "id", "source", "datacontenttype",
/// "metadata", "expected_stream_version"}`. Unknown keys are refused so typos do not pass.
fn parse_line(line: &str) -> Result<NewEvent, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e})"))?;
    let Value::Object(object) = value else {
        return Err("expected a JSON object".into());
    };
    let mut event = NewEvent::default();
    let mut content_type = None;
    for (key, value) in object {
        let text = |value: &Value| {
            value
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("{key:?} must be a string"))
        };
        match key.as_str() {
            "stream_id" | "stream" => event.stream_id = text(&value)?,
            "type" => event.r#type = text(&value)?,
            "id" => event.id = text(&value)?,
            "source" => event.source = text(&value)?,
            "datacontenttype" => event.datacontenttype = text(&value)?,
            "data" => match value {
                Value::String(s) => {
                    content_type = Some("text/plain");
                    event.data = s.into_bytes();
                }
                Value::Null => {}
                other => {
                    content_type = Some("application/json");
                    event.data = other.to_string().into_bytes();
                }
            },
            "data_base64" => {
                event.data = base64::engine::general_purpose::STANDARD
                    .decode(text(&value)?)
                    .map_err(|e| format!("\"data_base64\" is not base64 ({e})"))?;
            }
            "metadata" => {
                let Value::Object(map) = value else {
                    return Err("\"metadata\" must be an object of strings".into());
                };
                for (k, v) in map {
                    let v = v
                        .as_str()
                        .ok_or_else(|| format!("metadata {k:?} must be a string"))?;
                    event.metadata.insert(k, v.to_string());
                }
            }
            "expected_stream_version" => {
                event.expected_stream_version = Some(
                    value
                        .as_u64()
                        .ok_or("\"expected_stream_version\" must be a whole number")?,
                );
            }
            other => return Err(format!("unknown key {other:?}")),
        }
    }
    if event.stream_id.is_empty() || event.r#type.is_empty() {
        return Err("\"stream_id\" and \"type\" are required".into());
    }
    if event.datacontenttype.is_empty()
        && let Some(content_type) = content_type
    {
        event.datacontenttype = content_type.into();
    }
    if event.id.is_empty() {
        event.id = new_id();
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::parse_line;

    #[test]
    fn lines_parse_with_json_text_and_binary_data() {
        let json = parse_line(r#"{"stream_id":"s-1","type":"t.x","data":{"a":1}}"#);
        let json = json.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(json.data, br#"{"a":1}"#);
        assert_eq!(json.datacontenttype, "application/json");
        assert!(!json.id.is_empty());
        let text = parse_line(r#"{"stream":"s-1","type":"t.x","data":"hi","id":"e1"}"#);
        let text = text.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((text.data.as_slice(), text.id.as_str()), (&b"hi"[..], "e1"));
        let bin = parse_line(r#"{"stream_id":"s-1","type":"t.x","data_base64":"AAE="}"#);
        assert_eq!(bin.map(|e| e.data).ok(), Some(vec![0, 1]));
        assert!(parse_line(r#"{"stream_id":"s-1"}"#).is_err());
        assert!(parse_line(r#"{"stream_id":"s-1","type":"t","dta":1}"#).is_err());
        assert!(parse_line("[1]").is_err());
    }
}
