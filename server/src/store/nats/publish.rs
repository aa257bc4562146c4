//! Publishing to JetStream and reading its answer: one message as a plain JetStream publish,
//! several as one atomic batch (nats-server 2.12+), so a multi-event append is stored whole or
//! not at all.

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use serde::Deserialize;

use super::super::StoreError;

/// JetStream's error codes for a failed `Nats-Expected-Last-Subject-Sequence` check: with the
/// sequence found (10071), and without it (10164, what a clustered stream answers).
const WRONG_LAST_SEQUENCE: [u64; 2] = [10071, 10164];
/// A message with the same `Nats-Msg-Id` is being stored right now (a racing twin).
const DUPLICATE_IN_PROCESS: u64 = 10158;

/// One message to publish.
pub struct Outgoing {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

/// What JetStream did with a publish.
#[derive(Debug, PartialEq, Eq)]
pub enum Published {
    /// Stored; `last` is the sequence of the last message (a batch's are consecutive).
    Stored { last: u64 },
    /// A message with the same `Nats-Msg-Id` was stored within the dedupe window, at `seq`.
    Duplicate { seq: u64 },
}

/// Why a publish was not stored.
#[derive(Debug)]
pub enum Refused {
    /// An expected-last-subject-sequence check failed: the stream moved on since it was read.
    WrongLastSequence,
    /// A twin with the same `Nats-Msg-Id` is being stored: ask again in a moment, and it is a
    /// duplicate of that one.
    TwinInProcess,
    Other(StoreError),
}

#[derive(Deserialize)]
struct Ack {
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    duplicate: bool,
    #[serde(default)]
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

/// Publishes `messages` (at least one) and waits for JetStream's answer. A batch goes out as
/// plain publishes on one connection (so in order) with the batch headers, the last one as a
/// request carrying the commit marker: JetStream answers only the commit.
pub async fn publish(client: &Client, mut messages: Vec<Outgoing>) -> Result<Published, Refused> {
    let Some(mut last) = messages.pop() else {
        return Err(Refused::Other(StoreError::Nats(
            "nothing to publish".into(),
        )));
    };
    if !messages.is_empty() {
        let batch = ulid::Ulid::new().to_string();
        let count = messages.len() + 1;
        for (i, mut message) in messages.into_iter().enumerate() {
            message.headers.insert("Nats-Batch-Id", batch.as_str());
            message
                .headers
                .insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
            client
                .publish_with_headers(message.subject, message.headers, message.payload)
                .await
                .map_err(|e| Refused::Other(StoreError::Nats(format!("publishing: {e}"))))?;
        }
        last.headers.insert("Nats-Batch-Id", batch.as_str());
        last.headers
            .insert("Nats-Batch-Sequence", count.to_string().as_str());
        last.headers.insert("Nats-Batch-Commit", "1");
    }
    let reply = client
        .request_with_headers(last.subject, last.headers, last.payload)
        .await
        .map_err(|e| {
            Refused::Other(StoreError::Nats(format!(
                "no answer from JetStream (the append may or may not be stored; a retry is deduplicated only if its events carry ids you chose, or the command an idempotency key): {e}"
            )))
        })?;
    parse_ack(&reply.payload)
}

fn parse_ack(payload: &[u8]) -> Result<Published, Refused> {
    let ack: Ack = serde_json::from_slice(payload).map_err(|e| {
        Refused::Other(StoreError::Nats(format!(
            "unreadable answer from JetStream: {e}"
        )))
    })?;
    if let Some(error) = ack.error {
        if WRONG_LAST_SEQUENCE.contains(&error.err_code) {
            return Err(Refused::WrongLastSequence);
        }
        if error.err_code == DUPLICATE_IN_PROCESS {
            return Err(Refused::TwinInProcess);
        }
        return Err(Refused::Other(StoreError::Nats(format!(
            "JetStream refused the append: {} (code {})",
            error.description, error.err_code
        ))));
    }
    if ack.seq == 0 {
        return Err(Refused::Other(StoreError::Nats(
            "JetStream acknowledged without a sequence".into(),
        )));
    }
    Ok(if ack.duplicate {
        Published::Duplicate { seq: ack.seq }
    } else {
        Published::Stored { last: ack.seq }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_and_refusals_are_told_apart() {
        assert_eq!(
            parse_ack(br#"{"stream":"S","seq":7}"#).ok(),
            Some(Published::Stored { last: 7 })
        );
        assert_eq!(
            parse_ack(br#"{"stream":"S","seq":3,"duplicate":true}"#).ok(),
            Some(Published::Duplicate { seq: 3 })
        );
        assert!(matches!(
            parse_ack(br#"{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 4"}}"#),
            Err(Refused::WrongLastSequence)
        ));
        assert!(matches!(
            parse_ack(
                br#"{"error":{"code":400,"err_code":10164,"description":"wrong last sequence"}}"#
            ),
            Err(Refused::WrongLastSequence)
        ));
        assert!(matches!(
            parse_ack(br#"{"error":{"code":503,"err_code":10008,"description":"no quorum"}}"#),
            Err(Refused::Other(StoreError::Nats(_)))
        ));
    }
}
