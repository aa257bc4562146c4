//! `ordo.v1.EventService`.

use std::{sync::Arc, time::Duration};

use ordo_api::v1::{
    PublishRequest, PublishResponse, ReadEventsRequest, ReadEventsResponse, SubscribeRequest,
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{
    auth::{self, Rejection},
    config::ServerConfig,
    events::{
        filter::Matcher,
        position, publish, read,
        subscription::{MIN_HEARTBEAT, SubscribeStream, Subscription},
    },
    grpc::wire::EventService,
    store::SharedLog,
};

const SUBSCRIBE_PATH: &str = "/ordo.v1.EventService/Subscribe";
const PUBLISH_PATH: &str = "/ordo.v1.EventService/Publish";

pub struct EventApi {
    log: SharedLog,
    config: ServerConfig,
    subscribers: Arc<Semaphore>,
    shutdown: CancellationToken,
}

impl EventApi {
    pub fn new(log: SharedLog, config: ServerConfig, shutdown: CancellationToken) -> Self {
        let subscribers = Arc::new(Semaphore::new(config.limits.max_subscribers));
        Self {
            log,
            config,
            subscribers,
            shutdown,
        }
    }
}

#[tonic::async_trait]
impl EventService for EventApi {
    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let principal = auth::principal(&request)?;
        let req = request.into_inner();
        // A restricted token sees only its own events, whatever filter it asks for.
        let matcher = Matcher::new(req.filter.as_ref())?.within(principal.restriction());
        let first_offset = position::first_offset(req.start.as_ref(), self.log.head())?;
        let heartbeat = match req.heartbeat_interval_ms {
            0 => self.config.heartbeat_interval,
            ms => Duration::from_millis(ms.into()).max(MIN_HEARTBEAT),
        };
        let access = principal.open_stream(SUBSCRIBE_PATH)?;
        let permit = self.subscribers.clone().try_acquire_owned().map_err(|_| {
            Rejection::Subscribers.record(principal.name(), SUBSCRIBE_PATH, "max_subscribers");
            Status::resource_exhausted(format!(
                "the server already serves {} subscriptions (max_subscribers); retry later",
                self.config.limits.max_subscribers
            ))
        })?;
        let stream = Subscription {
            log: self.log.clone(),
            first_offset,
            matcher,
            heartbeat,
            shutdown: self.shutdown.clone(),
            permit,
            access,
        }
        .spawn();
        Ok(Response::new(stream))
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
            Rejection::PermissionDenied.record(principal.name(), PUBLISH_PATH, "event prefix");
            let message = format!(
                "events[{i}] (type {:?}, stream {:?}) is outside the event types/streams token {:?} may publish; nothing was appended",
                event.r#type,
                event.stream_id,
                principal.name()
            );
            return Err(Status::permission_denied(
                crate::error::clip(&message).into_owned(),
            ));
        }
        let response =
            publish::publish(&self.log, &self.config.limits, request.into_inner()).await?;
        Ok(Response::new(response))
    }
}
