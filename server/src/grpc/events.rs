//! `ordo.v1.EventService`.

use std::{sync::Arc, time::Duration};

use ordo_api::v1::{
    PublishRequest, PublishResponse, ReadEventsRequest, ReadEventsResponse, SubscribeRequest,
    event_service_server::EventService,
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{
    config::ServerConfig,
    events::{
        filter::Matcher,
        position, publish, read,
        subscription::{MIN_HEARTBEAT, SubscribeStream, Subscription},
    },
    store::SharedLog,
};

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
        let req = request.into_inner();
        let matcher = Matcher::new(req.filter.as_ref())?;
        let first_offset = position::first_offset(req.start.as_ref(), self.log.head())?;
        let heartbeat = match req.heartbeat_interval_ms {
            0 => self.config.heartbeat_interval,
            ms => Duration::from_millis(ms.into()).max(MIN_HEARTBEAT),
        };
        let permit = self.subscribers.clone().try_acquire_owned().map_err(|_| {
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
        }
        .spawn();
        Ok(Response::new(stream))
    }

    async fn read_events(
        &self,
        request: Request<ReadEventsRequest>,
    ) -> Result<Response<ReadEventsResponse>, Status> {
        Ok(Response::new(read::read(&self.log, request.get_ref())?))
    }

    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let response =
            publish::publish(&self.log, &self.config.limits, request.into_inner()).await?;
        Ok(Response::new(response))
    }
}
