//! `ordo.v1.EventService`.

use std::{pin::Pin, sync::Arc, time::Duration};

use ordo_api::v1::{
    AppendStreamRequest, AppendStreamResponse, CaughtUp, Heartbeat, PublishRequest,
    PublishResponse, ReadEventsRequest, ReadEventsResponse, SubscribeRequest,
};
use tokio::sync::Semaphore;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    auth,
    config::ServerConfig,
    error::{OrdoError, Refused},
    events::{
        append_stream::{APPEND_STREAM_PATH, AppendStream},
        pacer::Pacer,
        position, publish, read,
        subscription::{Item, MIN_HEARTBEAT, Subscription},
    },
    filter::Matcher,
    grpc::wire::{EventService, Frame, SubscribeFrame},
    store::SharedLog,
};

const SUBSCRIBE_PATH: &str = "/ordo.v1.EventService/Subscribe";
const PUBLISH_PATH: &str = "/ordo.v1.EventService/Publish";

/// Frames are wire-identical to `ordo.v1.SubscribeResponse` but carry each event's stored
/// encoding as it is (see `server/proto/wire/frame.proto`): no decode or re-encode per event.
pub type SubscribeStream = Pin<Box<dyn Stream<Item = Result<SubscribeFrame, Status>> + Send>>;

/// A subscription's item as a wire frame; its error as the status that ends the stream.
fn frame(item: Result<Item, OrdoError>) -> Result<SubscribeFrame, Status> {
    let message = match item? {
        Item::Event(encoded) => Frame::Event(encoded),
        Item::CaughtUp {
            head_offset,
            first_offset,
        } => Frame::CaughtUp(CaughtUp {
            head_offset,
            first_offset,
        }),
        Item::Heartbeat {
            head_offset,
            scanned_offset,
            first_offset,
            time,
        } => Frame::Heartbeat(Heartbeat {
            head_offset,
            scanned_offset,
            time: Some(time.into()),
            first_offset,
        }),
    };
    Ok(SubscribeFrame {
        message: Some(message),
    })
}

/// An AppendStream's answers; its errors end the stream.
pub type AnswerStream = Pin<Box<dyn Stream<Item = Result<AppendStreamResponse, Status>> + Send>>;

pub struct EventApi {
    log: SharedLog,
    config: ServerConfig,
    subscribers: Arc<Semaphore>,
    pacer: Pacer,
    shutdown: CancellationToken,
}

impl EventApi {
    /// Must be called within the runtime: it starts the fan-out pacer.
    pub fn new(log: SharedLog, config: ServerConfig, shutdown: CancellationToken) -> Self {
        let max = config.limits.max_subscribers;
        let subscribers = Arc::new(Semaphore::new(max));
        let pacer = Pacer::spawn(&log, subscribers.clone(), max, shutdown.clone());
        Self {
            log,
            config,
            subscribers,
            pacer,
            shutdown,
        }
    }
}

#[tonic::async_trait]
impl EventService for EventApi {
    type SubscribeStream = SubscribeStream;
    type AppendStreamStream = AnswerStream;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        // A restricted token sees only its own events, whatever filter it asks for.
        let matcher = Matcher::new(req.filter.as_ref())?.within(principal.restriction());
        let range = position::Range {
            first: self.log.first_offset(),
            head: self.log.head(),
        };
        let first_offset =
            position::first_offset(req.start.as_ref(), range, req.start_at_first_retained)?;
        let heartbeat = match req.heartbeat_interval_ms {
            0 => self.config.heartbeat_interval,
            ms => Duration::from_millis(ms.into()).max(MIN_HEARTBEAT),
        };
        let access = principal.open_stream(SUBSCRIBE_PATH)?;
        let permit =
            self.subscribers
                .clone()
                .try_acquire_owned()
                .map_err(|_| OrdoError::SubscriberCap {
                    max: self.config.limits.max_subscribers,
                    refused: Refused::new(principal.name(), SUBSCRIBE_PATH, "max_subscribers"),
                })?;
        let stream = Subscription {
            log: self.log.clone(),
            first_offset,
            start_at_first_retained: req.start_at_first_retained,
            matcher,
            heartbeat,
            shutdown: self.shutdown.clone(),
            permit,
            access,
            pacer: self.pacer.clone(),
        }
        .spawn();
        Ok(Response::new(Box::pin(stream.map(frame))))
    }

    async fn read_events(
        &self,
        request: Request<ReadEventsRequest>,
    ) -> Result<Response<ReadEventsResponse>, Status> {
        let principal = auth::principal(&request)?;
        let page = read::read_within(&self.log, request.get_ref(), principal.restriction())?;
        Ok(Response::new(page))
    }

    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let principal = auth::principal(&request)?;
        let denied = request
            .get_ref()
            .events
            .iter()
            .position(|e| !principal.may_write(&e.r#type, &e.stream_id));
        if let Some(i) = denied {
            let event = &request.get_ref().events[i];
            return Err(OrdoError::PermissionDenied {
                message: format!(
                    "events[{i}] (type {:?}, stream {:?}) is outside the event types/streams token {:?} may publish; nothing was appended",
                    event.r#type,
                    event.stream_id,
                    principal.name()
                ),
                refused: Refused::new(principal.name(), PUBLISH_PATH, "event prefix"),
            }
            .into());
        }
        let response =
            publish::publish(&self.log, &self.config.limits, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    async fn append_stream(
        &self,
        request: Request<Streaming<AppendStreamRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let principal = auth::principal(&request)?;
        let access = principal.watch_stream(APPEND_STREAM_PATH);
        let answers = AppendStream {
            log: self.log.clone(),
            limits: self.config.limits.clone(),
            principal,
            access,
            shutdown: self.shutdown.clone(),
        }
        .spawn(
            request
                .into_inner()
                .map(|request| request.map_err(|status| OrdoError::request_stream(&status))),
        );
        Ok(Response::new(Box::pin(
            answers.map(|answer| answer.map_err(Status::from)),
        )))
    }
}
