//! Many appends from one caller (`enqueue_many`, which `AppendStream` uses) without a round
//! trip each: lone events with no version or idempotency check are published back to back and
//! their acks awaited afterwards, in order; anything else waits for those and takes the
//! one-at-a-time path. JetStream stores messages of one connection in the order sent, so the
//! offsets follow the call order either way.

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use tokio::sync::OwnedMutexGuard;

use super::{
    super::{AppendBatch, AppendOutcome, StoreError},
    append::Shared,
    nats_error,
};

type Outcome = Result<AppendOutcome, StoreError>;

/// A lone event sent, its ack not yet read.
struct InFlight {
    batch: AppendBatch,
    ack: PublishAckFuture,
}

impl Shared {
    /// Appends `batches` in order, each answered as [`Shared::append`] would answer it alone.
    /// `turn` is released once every message is sent, before the last acks are read: the next
    /// caller's messages then follow these on the connection, and so in the log.
    pub async fn append_many(
        &self,
        batches: Vec<AppendBatch>,
        turn: OwnedMutexGuard<()>,
    ) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(batches.len());
        let mut in_flight: Vec<InFlight> = Vec::new();
        for mut batch in batches {
            if !pipelinable(&batch) {
                self.settle(&mut in_flight, &mut outcomes).await;
                outcomes.push(self.append(batch).await);
                continue;
            }
            self.assign_ids(&mut batch);
            match self.already_stored(&batch) {
                Ok(Some(outcome)) => {
                    self.settle(&mut in_flight, &mut outcomes).await;
                    outcomes.push(Ok(outcome));
                    continue;
                }
                Ok(None) => {}
                Err(err) => {
                    self.settle(&mut in_flight, &mut outcomes).await;
                    outcomes.push(Err(err));
                    continue;
                }
            }
            // One event, so one message.
            let message = match self.messages(&batch, &mut Default::default(), true) {
                Ok(mut messages) => messages.pop(),
                Err(err) => {
                    self.settle(&mut in_flight, &mut outcomes).await;
                    outcomes.push(Err(err));
                    continue;
                }
            };
            let Some(message) = message else {
                continue;
            };
            if let Err(err) = self.check_sizes(std::slice::from_ref(&message)) {
                self.settle(&mut in_flight, &mut outcomes).await;
                outcomes.push(Err(err));
                continue;
            }
            match self
                .js()
                .publish_with_headers(message.subject, message.headers, message.payload)
                .await
            {
                Ok(ack) => in_flight.push(InFlight { batch, ack }),
                Err(err) => {
                    self.settle(&mut in_flight, &mut outcomes).await;
                    outcomes.push(Err(nats_error("publishing", err)));
                }
            }
        }
        drop(turn);
        self.settle(&mut in_flight, &mut outcomes).await;
        outcomes
    }

    /// Reads the acks of everything in flight, in order, and answers each.
    async fn settle(&self, in_flight: &mut Vec<InFlight>, outcomes: &mut Vec<Outcome>) {
        for InFlight { batch, ack } in in_flight.drain(..) {
            let outcome = match ack.await {
                Ok(ack) if ack.duplicate => match self.visible(ack.sequence).await {
                    // Stored before: answered as the copy says, like a lone retry.
                    Ok(()) => match self.already_stored(&batch) {
                        Ok(Some(outcome)) => Ok(outcome),
                        Ok(None) => self.stored(batch, ack.sequence, ack.sequence).await,
                        Err(err) => Err(err),
                    },
                    Err(err) => Err(err),
                },
                Ok(ack) => self.stored(batch, ack.sequence, ack.sequence).await,
                Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => {
                    Err(StoreError::Nats(
                        "JetStream refused an append with a sequence check it did not carry".into(),
                    ))
                }
                Err(err) => Err(nats_error("appending", err)),
            };
            outcomes.push(outcome);
        }
    }
}

/// A lone event with nothing to check before it: the kind `AppendStream` sends.
fn pipelinable(batch: &AppendBatch) -> bool {
    batch.events.len() == 1 && batch.expected_versions.is_empty() && batch.idempotency.is_none()
}
