//! `ordo.v1.ConsumerService`.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use ordo_api::v1::{
    AckRequest, AckResponse, ConsumeRequest, CreateGroupRequest, CreateGroupResponse,
    DeleteGroupRequest, DeleteGroupResponse, GetGroupRequest, GetGroupResponse,
    Joined as JoinedMessage, ListGroupsRequest, ListGroupsResponse, ListParkedRequest,
    ListParkedResponse, NackAction, NackRequest, NackResponse, Rejected, ReplayParkedRequest,
    ReplayParkedResponse, Settled, UpdateGroupRequest, UpdateGroupResponse, consume_request,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use crate::{
    auth::{self, StreamAccess},
    clock,
    error::OrdoError,
    groups::{Command, Groups, How, Joined, Origin, Out, settings},
    grpc::wire::{ConsumeFrame, ConsumeMessage, ConsumerService, DeliveryFrame},
    validate,
    workers::Workers,
};

const CONSUME_PATH: &str = "/ordo.v1.ConsumerService/Consume";
const MAX_MEMBER_NAME: usize = 128;
const MAX_REASON: usize = 512;
/// Answers to a member's acks and nacks not yet sent; while full, its requests are not read.
const ANSWERS: usize = 64;

pub struct ConsumerApi {
    workers: Workers,
    shutdown: CancellationToken,
}

impl ConsumerApi {
    pub fn new(workers: Workers, shutdown: CancellationToken) -> Self {
        Self { workers, shutdown }
    }

    /// Consumer groups run on one node at a time (see `crate::workers`).
    fn groups(&self) -> Result<Arc<Groups>, Status> {
        Ok(self.workers.groups()?)
    }
}

/// What a nack asks for, checked.
fn nack_how(action: i32, delay_ms: u32, reason: String) -> Result<How, OrdoError> {
    validate::text("reason", &reason, MAX_REASON, false)?;
    if delay_ms > settings::MAX_DELAY_MS {
        return Err(OrdoError::invalid(format!(
            "delay_ms {delay_ms} is over the maximum of {}",
            settings::MAX_DELAY_MS
        )));
    }
    let reason = if reason.is_empty() {
        "nacked".to_string()
    } else {
        reason
    };
    match NackAction::try_from(action) {
        Ok(NackAction::Unspecified | NackAction::Retry) => Ok(How::Retry {
            delay: (delay_ms > 0).then(|| Duration::from_millis(delay_ms.into())),
            reason,
        }),
        Ok(NackAction::Park) => Ok(How::Park { reason }),
        Err(_) => Err(OrdoError::invalid(format!(
            "action {action} is unknown; use NACK_ACTION_RETRY or NACK_ACTION_PARK"
        ))),
    }
}

#[tonic::async_trait]
impl ConsumerService for ConsumerApi {
    type ConsumeStream = MemberStream;

    async fn create_group(
        &self,
        request: Request<CreateGroupRequest>,
    ) -> Result<Response<CreateGroupResponse>, Status> {
        let principal = auth::principal(&request)?;
        let group = self
            .groups()?
            .create(request.into_inner(), &principal)
            .await?;
        Ok(Response::new(CreateGroupResponse { group: Some(group) }))
    }

    async fn get_group(
        &self,
        request: Request<GetGroupRequest>,
    ) -> Result<Response<GetGroupResponse>, Status> {
        let principal = auth::principal(&request)?;
        let group = self
            .groups()?
            .status(&request.get_ref().name, &principal)
            .await?;
        Ok(Response::new(GetGroupResponse { group: Some(group) }))
    }

    async fn list_groups(
        &self,
        request: Request<ListGroupsRequest>,
    ) -> Result<Response<ListGroupsResponse>, Status> {
        let principal = auth::principal(&request)?;
        Ok(Response::new(
            self.groups()?.list(request.get_ref(), &principal).await?,
        ))
    }

    async fn update_group(
        &self,
        request: Request<UpdateGroupRequest>,
    ) -> Result<Response<UpdateGroupResponse>, Status> {
        let principal = auth::principal(&request)?;
        let group = self.groups()?.update(request.get_ref(), &principal).await?;
        Ok(Response::new(UpdateGroupResponse { group: Some(group) }))
    }

    async fn delete_group(
        &self,
        request: Request<DeleteGroupRequest>,
    ) -> Result<Response<DeleteGroupResponse>, Status> {
        let principal = auth::principal(&request)?;
        self.groups()?
            .delete(&request.get_ref().name, &principal)
            .await?;
        Ok(Response::new(DeleteGroupResponse {}))
    }

    async fn consume(
        &self,
        request: Request<Streaming<ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        let principal = auth::principal(&request)?;
        let access = principal.open_stream(CONSUME_PATH)?;
        let mut inbound = request.into_inner();
        let join = match inbound.message().await {
            Ok(Some(ConsumeRequest {
                message: Some(consume_request::Message::Join(join)),
            })) => join,
            Ok(_) => {
                return Err(OrdoError::invalid(
                    "the first message on Consume must be join (the group to join)",
                )
                .into());
            }
            Err(status) => return Err(OrdoError::request_stream(&status).into()),
        };
        validate::text(
            "join.member_name",
            &join.member_name,
            MAX_MEMBER_NAME,
            false,
        )?;
        let (joined, commands) = self
            .groups()?
            .join(
                &join.group,
                join.member_name,
                join.max_in_flight,
                &principal,
            )
            .await?;
        let (local_end, local_ended) = oneshot::channel();
        let (answers, answered) = mpsc::channel(ANSWERS);
        tokio::spawn(read_member(
            inbound,
            Inbound {
                commands,
                member: joined.member_id,
                answers,
                access,
                end: local_end,
                shutdown: self.shutdown.clone(),
            },
        ));
        Ok(Response::new(MemberStream::new(
            joined,
            answered,
            local_ended,
        )))
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        self.groups()?
            .settle(&req.group, req.delivery_ids, How::Ack, &principal)
            .await?;
        Ok(Response::new(AckResponse {}))
    }

    async fn nack(&self, request: Request<NackRequest>) -> Result<Response<NackResponse>, Status> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        let how = nack_how(req.action, req.delay_ms, req.reason)?;
        self.groups()?
            .settle(&req.group, req.delivery_ids, how, &principal)
            .await?;
        Ok(Response::new(NackResponse {}))
    }

    async fn list_parked(
        &self,
        request: Request<ListParkedRequest>,
    ) -> Result<Response<ListParkedResponse>, Status> {
        let principal = auth::principal(&request)?;
        Ok(Response::new(
            self.groups()?
                .list_parked(request.get_ref(), &principal)
                .await?,
        ))
    }

    async fn replay_parked(
        &self,
        request: Request<ReplayParkedRequest>,
    ) -> Result<Response<ReplayParkedResponse>, Status> {
        let principal = auth::principal(&request)?;
        Ok(Response::new(
            self.groups()?
                .replay_parked(request.get_ref(), &principal)
                .await?,
        ))
    }
}

/// What the task reading a member's requests needs.
struct Inbound {
    commands: mpsc::Sender<Command>,
    member: u64,
    /// Where the answers go; a slot is reserved before each request is forwarded.
    answers: mpsc::Sender<Out>,
    access: StreamAccess,
    /// Ends the member's stream with a protocol error or revocation.
    end: oneshot::Sender<OrdoError>,
    shutdown: CancellationToken,
}

/// Forwards a member's acks, nacks and extends to its group until the member stops sending
/// (closing the send side leaves the group), breaks the protocol, or its token is revoked.
async fn read_member(mut inbound: Streaming<ConsumeRequest>, ctx: Inbound) {
    let member = ctx.member;
    let failure = loop {
        // A slot for the answer first: a member that does not read its answers is not read.
        let answer = tokio::select! {
            permit = ctx.answers.clone().reserve_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break None,
            },
            _ = ctx.access.revoked() => break Some(ctx.access.revoked_error()),
            _ = ctx.shutdown.cancelled() => break None,
        };
        let next = tokio::select! {
            next = inbound.message() => next,
            _ = ctx.access.revoked() => break Some(ctx.access.revoked_error()),
            _ = ctx.shutdown.cancelled() => break None,
        };
        let message = match next {
            Ok(Some(ConsumeRequest { message: Some(m) })) => m,
            Ok(Some(ConsumeRequest { message: None })) => {
                break Some(OrdoError::invalid(
                    "a Consume request must set ack, nack or extend",
                ));
            }
            Ok(None) => break None,
            Err(status) => {
                debug!(member, error = %status, "member's request stream ended");
                break None;
            }
        };
        let command = match message {
            consume_request::Message::Join(_) => {
                break Some(OrdoError::invalid(
                    "join may be sent only once, as the first message; open another Consume stream to join again",
                ));
            }
            consume_request::Message::Ack(ack) => Command::Settle {
                origin: Origin::Member(member, answer),
                ids: ack.delivery_ids,
                how: How::Ack,
            },
            consume_request::Message::Nack(nack) => {
                match nack_how(nack.action, nack.delay_ms, nack.reason) {
                    Ok(how) => Command::Settle {
                        origin: Origin::Member(member, answer),
                        ids: nack.delivery_ids,
                        how,
                    },
                    Err(err) => break Some(err),
                }
            }
            consume_request::Message::Extend(extend) => {
                if extend.extend_ms > settings::MAX_DELAY_MS {
                    break Some(OrdoError::invalid(format!(
                        "extend_ms {} is over the maximum of {}",
                        extend.extend_ms,
                        settings::MAX_DELAY_MS
                    )));
                }
                Command::Extend {
                    member,
                    answer,
                    ids: extend.delivery_ids,
                    extend: (extend.extend_ms > 0)
                        .then(|| Duration::from_millis(extend.extend_ms.into())),
                }
            }
        };
        if ctx.commands.send(command).await.is_err() {
            break None;
        }
    };
    if let Some(err) = failure {
        let _ = ctx.end.send(err);
    }
    let _ = ctx.commands.send(Command::Leave { member }).await;
}

/// A member's responses: `joined`, then deliveries and settle answers, ended by the group (an
/// error when it was deleted, the server stops or the member did not read) or by the member's
/// own request stream breaking the protocol.
pub struct MemberStream {
    joined: Option<ConsumeFrame>,
    deliveries: ReceiverStream<Out>,
    answers: ReceiverStream<Out>,
    ended: Option<oneshot::Receiver<OrdoError>>,
    local: Option<oneshot::Receiver<OrdoError>>,
    done: bool,
}

impl MemberStream {
    fn new(
        joined: Joined,
        answers: mpsc::Receiver<Out>,
        local: oneshot::Receiver<OrdoError>,
    ) -> Self {
        Self {
            joined: Some(ConsumeFrame {
                message: Some(ConsumeMessage::Joined(JoinedMessage {
                    member_id: joined.member_id.to_string(),
                    group: Some(joined.group),
                    max_in_flight: joined.max_in_flight,
                })),
            }),
            deliveries: ReceiverStream::new(joined.deliveries),
            answers: ReceiverStream::new(answers),
            ended: Some(joined.ended),
            local: Some(local),
            done: false,
        }
    }
}

/// Polls an ending channel: the error it carries, if it fired; a dropped sender just stops
/// being polled.
fn poll_end(
    slot: &mut Option<oneshot::Receiver<OrdoError>>,
    cx: &mut Context<'_>,
) -> Option<OrdoError> {
    let receiver = slot.as_mut()?;
    match Pin::new(receiver).poll(cx) {
        Poll::Ready(Ok(err)) => {
            *slot = None;
            Some(err)
        }
        Poll::Ready(Err(_)) => {
            *slot = None;
            None
        }
        Poll::Pending => None,
    }
}

impl Stream for MemberStream {
    type Item = Result<ConsumeFrame, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(joined) = this.joined.take() {
            return Poll::Ready(Some(Ok(joined)));
        }
        let ended = poll_end(&mut this.ended, cx).or_else(|| poll_end(&mut this.local, cx));
        if let Some(err) = ended {
            this.done = true;
            return Poll::Ready(Some(Err(Status::from(err))));
        }
        // Answers first; they end with the reading task, so only the deliveries end the stream.
        if let Poll::Ready(Some(answer)) = Pin::new(&mut this.answers).poll_next(cx) {
            return Poll::Ready(Some(Ok(frame(answer))));
        }
        match Pin::new(&mut this.deliveries).poll_next(cx) {
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            other => other.map(|item| item.map(|out| Ok(frame(out)))),
        }
    }
}

/// A group's message as its wire frame.
fn frame(out: Out) -> ConsumeFrame {
    let message = match out {
        Out::Delivery {
            delivery_id,
            attempt,
            event,
            ack_deadline_ms,
        } => ConsumeMessage::Delivery(DeliveryFrame {
            delivery_id,
            attempt,
            event,
            ack_deadline: clock::timestamp(ack_deadline_ms),
        }),
        Out::Settled(delivery_ids) => ConsumeMessage::Settled(Settled { delivery_ids }),
        Out::Rejected {
            delivery_ids,
            code,
            message,
        } => ConsumeMessage::Rejected(Rejected {
            delivery_ids,
            code,
            message,
        }),
    };
    ConsumeFrame {
        message: Some(message),
    }
}
