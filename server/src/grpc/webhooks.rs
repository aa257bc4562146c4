//! `ordo.v1.WebhookService`: a thin adapter over [`crate::webhooks::Webhooks`].

use ordo_api::v1::{
    CreateWebhookRequest, CreateWebhookResponse, DeleteWebhookRequest, DeleteWebhookResponse,
    GetWebhookRequest, GetWebhookResponse, ListDeadLettersRequest, ListDeadLettersResponse,
    ListDeliveriesRequest, ListDeliveriesResponse, ListWebhooksRequest, ListWebhooksResponse,
    RedriveDeadLettersRequest, RedriveDeadLettersResponse, RotateSecretRequest,
    RotateSecretResponse, UpdateWebhookRequest, UpdateWebhookResponse,
    webhook_service_server::WebhookService,
};
use tonic::{Request, Response, Status};

use crate::{webhooks::Webhooks, workers::Workers};

pub struct WebhookApi {
    workers: Workers,
}

impl WebhookApi {
    pub fn new(workers: Workers) -> Self {
        Self { workers }
    }

    /// Webhooks run on one node at a time (see `crate::workers`).
    fn webhooks(&self) -> Result<Webhooks, Status> {
        Ok(self.workers.webhooks()?)
    }
}

#[tonic::async_trait]
impl WebhookService for WebhookApi {
    async fn create_webhook(
        &self,
        request: Request<CreateWebhookRequest>,
    ) -> Result<Response<CreateWebhookResponse>, Status> {
        Ok(Response::new(
            self.webhooks()?.create(request.into_inner()).await?,
        ))
    }

    async fn get_webhook(
        &self,
        request: Request<GetWebhookRequest>,
    ) -> Result<Response<GetWebhookResponse>, Status> {
        let webhook = self.webhooks()?.get(&request.get_ref().id)?;
        Ok(Response::new(GetWebhookResponse {
            webhook: Some(webhook),
        }))
    }

    async fn list_webhooks(
        &self,
        request: Request<ListWebhooksRequest>,
    ) -> Result<Response<ListWebhooksResponse>, Status> {
        Ok(Response::new(self.webhooks()?.list(request.get_ref())?))
    }

    async fn update_webhook(
        &self,
        request: Request<UpdateWebhookRequest>,
    ) -> Result<Response<UpdateWebhookResponse>, Status> {
        let webhook = self.webhooks()?.update(request.into_inner()).await?;
        Ok(Response::new(UpdateWebhookResponse {
            webhook: Some(webhook),
        }))
    }

    async fn delete_webhook(
        &self,
        request: Request<DeleteWebhookRequest>,
    ) -> Result<Response<DeleteWebhookResponse>, Status> {
        self.webhooks()?.delete(&request.get_ref().id).await?;
        Ok(Response::new(DeleteWebhookResponse {}))
    }

    async fn rotate_secret(
        &self,
        request: Request<RotateSecretRequest>,
    ) -> Result<Response<RotateSecretResponse>, Status> {
        Ok(Response::new(
            self.webhooks()?.rotate_secret(request.get_ref()).await?,
        ))
    }

    async fn list_deliveries(
        &self,
        request: Request<ListDeliveriesRequest>,
    ) -> Result<Response<ListDeliveriesResponse>, Status> {
        Ok(Response::new(
            self.webhooks()?.list_deliveries(request.get_ref())?,
        ))
    }

    async fn list_dead_letters(
        &self,
        request: Request<ListDeadLettersRequest>,
    ) -> Result<Response<ListDeadLettersResponse>, Status> {
        Ok(Response::new(
            self.webhooks()?.list_dead_letters(request.get_ref())?,
        ))
    }

    async fn redrive_dead_letters(
        &self,
        request: Request<RedriveDeadLettersRequest>,
    ) -> Result<Response<RedriveDeadLettersResponse>, Status> {
        Ok(Response::new(
            self.webhooks()?.redrive(request.get_ref()).await?,
        ))
    }
}
