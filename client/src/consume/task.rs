//! The background task behind a [`super::Consumer`]: join, pass deliveries on and settles back,
//! and on a retryable failure wait (backoff) and join again.
//!
//! The task never blocks on the caller. Deliveries it cannot hand over yet wait in a queue that
//! the server's `max_in_flight` bounds, so it keeps reading the stream, and with it the answers
//! that let the server read the caller's next acks. Blocking instead could deadlock: a caller
//! waiting for room to queue an ack, the task waiting for the caller to take a delivery.

use std::{collections::VecDeque, future::Future, sync::atomic::Ordering};

use ordo_api::v1::{
    ConsumeRequest, ConsumeResponse, JoinGroup, consume_request::Message as Request,
    consume_response::Message as Response,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::{
    consumer::ConsumerItem,
    delivery::{Command, Delivery, Link, closed, stale},
    options::ConsumeOptions,
    pending::Pending,
};
use crate::{
    backoff::Backoff,
    client::OrdoClient,
    error::{ClientError, Result},
};

/// Requests handed to the gRPC stream but not sent yet. Small, so that acks pile up in
/// [`Pending`] while the stream is busy and leave merged into one request.
const REQUESTS: usize = 4;
/// Requests waiting for the stream before the task stops taking commands (and `ack()` waits).
const MAX_QUEUED: usize = 64;
/// Commands taken in one go, so acks queued together leave together.
const DRAIN: usize = 1_000;

type Items = mpsc::Sender<Result<ConsumerItem>>;

/// Why a connection ended.
enum Ended {
    /// The caller closed or dropped the consumer.
    Stopped,
    /// Rejoin after a backoff.
    Retry(String),
    /// Give up: hand this error to the caller.
    Fatal(ClientError),
}

pub(super) struct Task {
    client: OrdoClient,
    options: ConsumeOptions,
    link: Link,
    commands: mpsc::Receiver<Command>,
    items: Items,
}

/// What woke the serving loop, handled once the branches' borrows are over. Lives for one
/// loop turn on the stack, so its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Step {
    Message(std::result::Result<Option<ConsumeResponse>, tonic::Status>),
    Command(Option<Command>),
}

/// One joined stream's state.
struct Connection {
    generation: u64,
    max_in_flight: u32,
    requests: mpsc::Sender<ConsumeRequest>,
    pending: Pending,
    /// Items the caller has not taken yet; at most `max_in_flight` deliveries and a `Joined`.
    outbox: VecDeque<Result<ConsumerItem>>,
    closing: Option<oneshot::Sender<Result<()>>>,
}

impl Task {
    pub fn new(
        client: OrdoClient,
        options: ConsumeOptions,
        link: Link,
        commands: mpsc::Receiver<Command>,
        items: Items,
    ) -> Self {
        Self {
            client,
            options,
            link,
            commands,
            items,
        }
    }

    pub async fn run(mut self) {
        let mut backoff = Backoff::new(self.options.backoff);
        loop {
            let ended = self.connection(&mut backoff).await;
            // Whatever the broken stream delivered is now someone else's to settle.
            self.link.generation.fetch_add(1, Ordering::AcqRel);
            let reason = match ended {
                Ended::Stopped => return,
                Ended::Fatal(err) => return self.fail(err).await,
                Ended::Retry(reason) => reason,
            };
            if let Some(max) = self.options.max_attempts
                && backoff.attempt() >= max
            {
                let err = ClientError::Unavailable(format!(
                    "gave up after {max} attempts to rejoin consumer group {:?}: {reason}",
                    self.options.group
                ));
                return self.fail(err).await;
            }
            let delay = backoff.next_delay();
            let note = ConsumerItem::Reconnecting {
                attempt: backoff.attempt(),
                delay,
                reason,
            };
            let sent = between(&mut self.commands, self.items.send(Ok(note))).await;
            if !matches!(sent, Some(Ok(()))) {
                return;
            }
            if between(&mut self.commands, tokio::time::sleep(delay))
                .await
                .is_none()
            {
                return;
            }
        }
    }

    async fn fail(&mut self, err: ClientError) {
        let _ = between(&mut self.commands, self.items.send(Err(err))).await;
    }

    /// Joins, serves the stream until it ends, and answers every settle it leaves open.
    async fn connection(&mut self, backoff: &mut Backoff) -> Ended {
        let (requests, rx) = mpsc::channel(REQUESTS);
        let join = ConsumeRequest {
            message: Some(Request::Join(JoinGroup {
                group: self.options.group.clone(),
                member_name: self.options.member_name.clone(),
                max_in_flight: self.options.max_in_flight,
            })),
        };
        if requests.try_send(join).is_err() {
            return Ended::Retry("cannot queue the join request".into());
        }
        let (mut stream, joined) = match self.join(ReceiverStream::new(rx)).await {
            Ok(joined) => joined,
            Err(ended) => return ended,
        };
        // The server answered: the next outage starts with a short delay again.
        backoff.reset();
        let mut conn = Connection {
            generation: self.link.current(),
            max_in_flight: joined.max_in_flight,
            requests,
            pending: Pending::default(),
            outbox: VecDeque::new(),
            closing: None,
        };
        conn.outbox.push_back(Ok(ConsumerItem::Joined {
            member_id: joined.member_id,
            max_in_flight: joined.max_in_flight,
            group: Box::new(joined.group.unwrap_or_default()),
        }));
        let ended = self.serve(&mut conn, &mut stream).await;
        let reason = match &ended {
            Ended::Stopped => "the consumer was closed".to_string(),
            Ended::Retry(reason) => reason.clone(),
            Ended::Fatal(err) => err.to_string(),
        };
        let unanswered = conn.pending.fail_all(&reason);
        if let Some(reply) = conn.closing.take() {
            let result = if unanswered == 0 {
                Ok(())
            } else {
                Err(ClientError::Unavailable(format!(
                    "{unanswered} acks or nacks were not confirmed before the stream ended ({reason}); those deliveries will be delivered again"
                )))
            };
            let _ = reply.send(result);
            return Ended::Stopped;
        }
        ended
    }

    /// Opens the stream and waits for `joined`, within the join timeout.
    async fn join(
        &mut self,
        requests: ReceiverStream<ConsumeRequest>,
    ) -> Result<(Streaming<ConsumeResponse>, ordo_api::v1::Joined), Ended> {
        let limit = self.options.join_timeout;
        let timed_out =
            || Ended::Retry(format!("no answer to join within {} ms", limit.as_millis()));
        let opened = between(
            &mut self.commands,
            tokio::time::timeout(limit, self.client.consume_once(requests)),
        )
        .await;
        let mut stream = match opened {
            None => return Err(Ended::Stopped),
            Some(Err(_)) => return Err(timed_out()),
            Some(Ok(Err(err))) => return Err(classify(err)),
            Some(Ok(Ok(stream))) => stream,
        };
        let first = between(
            &mut self.commands,
            tokio::time::timeout(limit, stream.message()),
        )
        .await;
        match first {
            None => Err(Ended::Stopped),
            Some(Err(_)) => Err(timed_out()),
            Some(Ok(Err(status))) => Err(classify(status.into())),
            Some(Ok(Ok(None))) => Err(Ended::Retry(
                "the server ended the stream before answering the join".into(),
            )),
            Some(Ok(Ok(Some(ConsumeResponse {
                message: Some(Response::Joined(joined)),
            })))) => Ok((stream, joined)),
            Some(Ok(Ok(Some(other)))) => Err(Ended::Retry(format!(
                "the server answered the join with {other:?} instead of joined"
            ))),
        }
    }

    /// Moves deliveries to the caller and settles to the server until the stream ends or a
    /// close has nothing left to wait for.
    async fn serve(
        &mut self,
        conn: &mut Connection,
        stream: &mut Streaming<ConsumeResponse>,
    ) -> Ended {
        loop {
            if conn.closing.is_some() && conn.pending.is_idle() {
                if let Some(reply) = conn.closing.take() {
                    let _ = reply.send(Ok(()));
                }
                return Ended::Stopped;
            }
            let step = tokio::select! {
                message = stream.message() => Step::Message(message),
                command = self.commands.recv(), if conn.pending.queued() < MAX_QUEUED => {
                    Step::Command(command)
                }
                permit = conn.requests.reserve(), if conn.pending.queued() > 0 => match permit {
                    Ok(permit) => {
                        if let Some(request) = conn.pending.pop() {
                            permit.send(request);
                        }
                        continue;
                    }
                    Err(_) => return Ended::Retry("the request stream closed".into()),
                },
                permit = self.items.reserve(), if !conn.outbox.is_empty() => match permit {
                    Ok(permit) => {
                        if let Some(item) = conn.outbox.pop_front() {
                            permit.send(item);
                        }
                        continue;
                    }
                    // The caller dropped the consumer.
                    Err(_) => return Ended::Stopped,
                },
            };
            match step {
                Step::Message(Ok(Some(response))) => {
                    if let Some(ended) = self.on_response(conn, response) {
                        return ended;
                    }
                }
                Step::Message(Ok(None)) => {
                    return Ended::Retry("the server ended the stream".into());
                }
                Step::Message(Err(status)) => return classify(status.into()),
                Step::Command(None) => return Ended::Stopped,
                Step::Command(Some(command)) => {
                    conn.command(command);
                    for _ in 1..DRAIN {
                        match self.commands.try_recv() {
                            Ok(command) => conn.command(command),
                            Err(_) => break,
                        }
                    }
                }
            }
        }
    }

    fn on_response(&self, conn: &mut Connection, response: ConsumeResponse) -> Option<Ended> {
        match response.message? {
            Response::Delivery(delivery) => {
                if conn.closing.is_some() {
                    // Not handed out: it goes to another member when this one leaves.
                    return None;
                }
                if conn.outbox.len() > conn.max_in_flight as usize {
                    return Some(Ended::Retry(format!(
                        "the server sent more than the {} deliveries this member may hold",
                        conn.max_in_flight
                    )));
                }
                conn.outbox.push_back(Ok(ConsumerItem::Delivery(Delivery {
                    id: delivery.delivery_id,
                    attempt: delivery.attempt,
                    event: delivery.event.unwrap_or_default(),
                    ack_deadline: delivery.ack_deadline,
                    generation: conn.generation,
                    link: self.link.clone(),
                })));
            }
            Response::Settled(settled) => conn.pending.settled(settled.delivery_ids),
            Response::Rejected(rejected) => {
                conn.pending
                    .rejected(rejected.delivery_ids, rejected.code, rejected.message)
            }
            Response::Joined(_) => {}
        }
        None
    }
}

impl Connection {
    fn command(&mut self, command: Command) {
        match command {
            Command::Settle {
                generation,
                id,
                how,
                reply,
            } => {
                if generation != self.generation {
                    let _ = reply.send(Err(stale(&id)));
                } else if self.closing.is_some() {
                    let _ = reply.send(Err(closed()));
                } else {
                    self.pending.settle(id, how, reply);
                }
            }
            Command::Extend { generation, id, by } => {
                if generation == self.generation && self.closing.is_none() {
                    self.pending.extend(id, by);
                }
            }
            Command::Close { reply } => {
                if let Some(earlier) = self.closing.replace(reply) {
                    let _ = earlier.send(Ok(()));
                }
            }
        }
    }
}

/// Waits for `work` while no stream is joined, answering commands meanwhile so a caller
/// settling an old delivery is never stuck: every settle is stale then, and a close has
/// nothing left to wait for. `None` when the consumer was closed meanwhile.
async fn between<F: Future>(commands: &mut mpsc::Receiver<Command>, work: F) -> Option<F::Output> {
    tokio::pin!(work);
    loop {
        tokio::select! {
            output = &mut work => return Some(output),
            command = commands.recv() => match command {
                None => return None,
                Some(Command::Close { reply }) => {
                    let _ = reply.send(Ok(()));
                    return None;
                }
                Some(Command::Settle { id, reply, .. }) => {
                    let _ = reply.send(Err(stale(&id)));
                }
                Some(Command::Extend { .. }) => {}
            },
        }
    }
}

fn classify(err: ClientError) -> Ended {
    if err.is_retryable() {
        Ended::Retry(err.to_string())
    } else {
        Ended::Fatal(err)
    }
}
