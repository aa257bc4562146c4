//! `ordo consume GROUP`: a consumer-group member in the terminal. Prints each delivery (or runs
//! `--exec` for it), then acks it; on exit waits until every ack is durable.

use std::process::Stdio;

use anyhow::Context;
use ordo_client::{ClientError, ConsumeOptions, ConsumerItem, Delivery, Nack, OrdoClient};
use tokio::{io::AsyncWriteExt, task::JoinSet};
use tokio_stream::StreamExt;

use super::{
    args::ConsumeArgs,
    fail::{EXIT_FAILED, Failure},
    groups::group_error,
    human, json,
    out::Out,
};

/// The most a member may hold (the server's limit), for `--count` without `--max-in-flight`.
const SERVER_MAX_IN_FLIGHT: u64 = 1_000;

/// What was done with the deliveries so far.
#[derive(Default)]
struct Tally {
    acked: u64,
    nacked: u64,
    /// Settles the server refused or could not confirm (the event comes again).
    unconfirmed: u64,
}

pub async fn run(client: &OrdoClient, out: &Out, args: ConsumeArgs) -> anyhow::Result<()> {
    let options = ConsumeOptions::new(&args.group)
        .member_name(
            args.member_name
                .clone()
                .unwrap_or_else(|| format!("ordo-cli-{}", std::process::id())),
        )
        .max_in_flight(max_in_flight(args.max_in_flight, args.count));
    let mut consumer = client.consume(options)?;
    // The server's answers to acks and nacks, awaited here so a refused one is reported.
    let mut settles: JoinSet<Result<(), ClientError>> = JoinSet::new();
    let mut tally = Tally::default();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut done = 0u64;
    let failure = loop {
        if args.count.is_some_and(|count| done >= count) {
            break None;
        }
        let item = tokio::select! {
            _ = &mut ctrl_c => break None,
            Some(joined) = settles.join_next(), if !settles.is_empty() => {
                confirm(out, &mut tally, joined);
                continue;
            }
            item = consumer.next() => item,
        };
        let item = match item {
            None => break None,
            Some(Ok(item)) => item,
            Some(Err(err)) => {
                break Some(group_error(err, "cannot consume from group", &args.group));
            }
        };
        match item {
            ConsumerItem::Joined {
                member_id,
                max_in_flight,
                group,
            } => out.note(&format!(
                "ordo: joined consumer group {} as member {member_id} (up to {max_in_flight} in flight; settled through offset {} of {})",
                group.name, group.settled_through_offset, group.head_offset
            )),
            ConsumerItem::Reconnecting { delay, reason, .. } => out.note(&format!(
                "ordo: connection lost ({reason}); rejoining in {} ms; unacked deliveries will come again",
                delay.as_millis()
            )),
            ConsumerItem::Delivery(delivery) => {
                if let Err(err) = print(out, &delivery) {
                    break Some(err);
                }
                let settle = match outcome(&args, &delivery).await {
                    Outcome::Ack => {
                        tally.acked += 1;
                        delivery.ack().await
                    }
                    Outcome::Nack(reason) => {
                        out.note(&format!("ordo: {reason}; nacked {}", delivery.id));
                        tally.nacked += 1;
                        delivery.nack(Nack::retry().reason(reason)).await
                    }
                    Outcome::Stop(err) => break Some(err),
                };
                done += 1;
                match settle {
                    Ok(settlement) => {
                        settles.spawn(settlement);
                    }
                    Err(err) => break Some(anyhow::Error::new(err).context("cannot settle a delivery")),
                }
            }
            _ => {}
        }
    };
    // Acks queued so far still count: wait for the server to make them durable.
    let closed = consumer.close().await;
    while let Some(joined) = settles.join_next().await {
        confirm(out, &mut tally, joined);
    }
    if done > 0 {
        out.note(&format!(
            "ordo: acked {}, nacked {}, unconfirmed {}",
            tally.acked, tally.nacked, tally.unconfirmed
        ));
    }
    if let Some(err) = failure {
        return Err(err);
    }
    // A settle that was not confirmed is reported above and not an error: its event is
    // delivered again, which at-least-once consumers expect.
    closed.context("cannot leave the consumer group cleanly")
}

/// The member's max_in_flight: the flag (0 = the group's), lowered to `count` so that no
/// more is held than will be processed.
fn max_in_flight(flag: u32, count: Option<u64>) -> u32 {
    let Some(count) = count else {
        return flag;
    };
    let cap = if flag == 0 {
        SERVER_MAX_IN_FLIGHT
    } else {
        u64::from(flag)
    };
    u32::try_from(count.min(cap)).unwrap_or(flag)
}

/// What to do with one delivery.
enum Outcome {
    Ack,
    Nack(String),
    Stop(anyhow::Error),
}

/// Acks unless `--exec`'s command fails: then a nack with `--nack-on-exit-code`, else stop.
async fn outcome(args: &ConsumeArgs, delivery: &Delivery) -> Outcome {
    let Some(command) = &args.exec else {
        return Outcome::Ack;
    };
    match exec(command, &args.group, delivery).await {
        Ok(0) => Outcome::Ack,
        Ok(code) if args.nack_on_exit_code => {
            Outcome::Nack(format!("--exec command exited with code {code}"))
        }
        Ok(code) => Outcome::Stop(
            Failure::new(
                EXIT_FAILED,
                format!(
                    "the --exec command exited with code {code} for delivery {}; it was not acked and will be delivered again (add --nack-on-exit-code to nack it and go on)",
                    delivery.id
                ),
            )
            .into(),
        ),
        Err(err) => Outcome::Stop(err),
    }
}

fn confirm(
    out: &Out,
    tally: &mut Tally,
    joined: Result<Result<(), ClientError>, tokio::task::JoinError>,
) {
    match joined {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            tally.unconfirmed += 1;
            out.note(&format!("ordo: not confirmed: {err}"));
        }
        Err(err) => {
            tally.unconfirmed += 1;
            out.note(&format!("ordo: waiting for a confirmation failed: {err}"));
        }
    }
}

fn print(out: &Out, delivery: &Delivery) -> anyhow::Result<()> {
    if out.json() {
        let mut value = json::event(&delivery.event);
        if let Some(object) = value.as_object_mut() {
            object.insert("delivery_id".into(), delivery.id.clone().into());
            object.insert("attempt".into(), delivery.attempt.into());
        }
        out.json_line(&value)
    } else if delivery.attempt > 1 {
        out.line(&format!(
            "{}  (attempt {})",
            human::event(&delivery.event),
            delivery.attempt
        ))
    } else {
        out.line(&human::event(&delivery.event))
    }
}

/// Runs `sh -c command` with the event's JSON on stdin; returns its exit code (a signal counts
/// as a failure, like a shell's 128 + n).
async fn exec(command: &str, group: &str, delivery: &Delivery) -> anyhow::Result<i32> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("ORDO_GROUP", group)
        .env("ORDO_DELIVERY_ID", &delivery.id)
        .env("ORDO_ATTEMPT", delivery.attempt.to_string())
        .env("ORDO_OFFSET", delivery.offset().to_string())
        .stdin(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run --exec command {command:?}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let mut line = json::event(&delivery.event).to_string();
        line.push('\n');
        // A command that does not read its input is not an error.
        match stdin.write_all(line.as_bytes()).await {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err(err) => {
                return Err(anyhow::Error::new(err).context("cannot write the event to --exec"));
            }
        }
    }
    let status = child
        .wait()
        .await
        .with_context(|| format!("cannot wait for --exec command {command:?}"))?;
    Ok(status.code().unwrap_or(128))
}
