//! `ordo events tail|read` (publish lives in `publish.rs`).

use std::path::PathBuf;

use anyhow::Context;
use ordo_client::{
    CursorFile, OrdoClient, Start, SubscribeOptions, SubscriptionItem,
    v1::{EventFilter, ReadEventsRequest},
};
use serde_json::json;
use tokio_stream::StreamExt;

use super::{
    args::{EventsCommand, FilterArgs},
    fail::Failure,
    human, json,
    out::Out,
    publish,
};

pub async fn run(client: &OrdoClient, out: &Out, command: EventsCommand) -> anyhow::Result<()> {
    match command {
        EventsCommand::Tail {
            from,
            filter,
            cursor_file,
            follow,
            heartbeat_ms,
        } => {
            let tail = Tail {
                start: parse_start(&from)?,
                filter,
                cursor_file,
                follow,
                heartbeat_ms,
            };
            tail.run(client, out).await
        }
        EventsCommand::Read {
            from,
            filter,
            limit,
        } => read(client, out, parse_start(&from)?, filter, limit).await,
        EventsCommand::Publish {
            stream,
            event_type,
            data,
            content_type,
            id,
            source,
            metadata,
            expected_version,
            from_file,
            batch_size,
        } => match from_file {
            Some(path) => {
                publish::from_file(client, out, &path, batch_size.map(|n| n as usize)).await
            }
            None => {
                let one = publish::One {
                    stream: stream.unwrap_or_default(),
                    event_type: event_type.unwrap_or_default(),
                    data,
                    content_type,
                    id,
                    source,
                    metadata,
                    expected_version,
                };
                publish::one(client, out, one).await
            }
        },
    }
}

/// `start`, `end` or an inclusive offset.
pub(super) fn parse_start(text: &str) -> Result<Start, Failure> {
    match text {
        "start" | "beginning" => Ok(Start::Beginning),
        "end" => Ok(Start::End),
        offset => offset.parse::<u64>().map(Start::From).map_err(|_| {
            Failure::usage(format!(
                "invalid --from {offset:?}: expected start, end or an offset (a whole number)"
            ))
        }),
    }
}

pub(super) fn proto_filter(filter: &FilterArgs) -> Option<EventFilter> {
    if filter.types.is_empty() && filter.streams.is_empty() {
        return None;
    }
    Some(EventFilter {
        types: filter.types.clone(),
        stream_ids: filter.streams.clone(),
    })
}

struct Tail {
    start: Start,
    filter: FilterArgs,
    cursor_file: Option<PathBuf>,
    follow: bool,
    heartbeat_ms: u32,
}

impl Tail {
    async fn run(self, client: &OrdoClient, out: &Out) -> anyhow::Result<()> {
        let mut options = SubscribeOptions::new()
            .start(self.start)
            .heartbeat(std::time::Duration::from_millis(self.heartbeat_ms.into()));
        for event_type in &self.filter.types {
            options = options.event_type(event_type.clone());
        }
        for stream in &self.filter.streams {
            options = options.stream_id(stream.clone());
        }
        if let Some(path) = &self.cursor_file {
            if let Some(saved) = CursorFile::new(path).load()? {
                out.note(&format!(
                    "resuming after offset {saved} (from {})",
                    path.display()
                ));
            }
            options = options.cursor_file(path);
        }
        let mut subscription = client.subscribe(options)?;
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        let mut shown_caught_up = false;
        loop {
            let item = tokio::select! {
                _ = &mut ctrl_c => break,
                item = subscription.next() => item,
            };
            let item = match item {
                None => break,
                Some(Ok(item)) => item,
                Some(Err(err)) => {
                    // Keep what was printed so far; the error is what the user needs to see.
                    let _ = subscription.commit();
                    return Err(err).context("the subscription failed");
                }
            };
            match item {
                SubscriptionItem::Event(event) => {
                    if out.json() {
                        out.json_line(&json::event(&event))?;
                    } else {
                        out.line(&human::event(&event))?;
                    }
                }
                SubscriptionItem::CaughtUp { head_offset } => {
                    if !shown_caught_up {
                        shown_caught_up = true;
                        if out.json() {
                            out.json_line(&json!({"caught_up": {"head_offset": head_offset}}))?;
                        } else if self.follow {
                            out.line(&format!(
                                "--- caught up at offset {head_offset}; following live (Ctrl-C to stop) ---"
                            ))?;
                        } else {
                            out.line(&format!("--- caught up at offset {head_offset} ---"))?;
                        }
                    }
                    if !self.follow {
                        break;
                    }
                }
                SubscriptionItem::Reconnecting {
                    delay,
                    reason,
                    resume_after,
                    ..
                } => {
                    let resume =
                        resume_after.map_or_else(|| "the start".into(), |o| format!("offset {o}"));
                    out.note(&format!(
                        "ordo: connection lost ({reason}); reconnecting in {} ms, resuming after {resume}",
                        delay.as_millis()
                    ));
                }
                _ => {}
            }
        }
        subscription
            .commit()
            .context("cannot save the cursor file")?;
        Ok(())
    }
}

async fn read(
    client: &OrdoClient,
    out: &Out,
    start: Start,
    filter: FilterArgs,
    limit: u32,
) -> anyhow::Result<()> {
    let page = client
        .read_events(ReadEventsRequest {
            start: Some(start.to_proto()),
            filter: proto_filter(&filter),
            limit,
            ..Default::default()
        })
        .await
        .context("cannot read events")?;
    for event in &page.events {
        if out.json() {
            out.json_line(&json::event(event))?;
        } else {
            out.line(&human::event(event))?;
        }
    }
    if out.json() {
        return out.json_line(&json!({"page": {
            "next_after_offset": page.next_after_offset,
            "head_offset": page.head_offset,
        }}));
    }
    if page.next_after_offset < page.head_offset {
        out.note(&format!(
            "more events: add --from {} (head is {})",
            page.next_after_offset + 1,
            page.head_offset
        ));
    } else {
        out.note(&format!("end of log (head is {})", page.head_offset));
    }
    Ok(())
}
