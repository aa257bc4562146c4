//! `ordo.v1.AdminService`: maps requests to [`crate::admin`] and back.

use std::pin::Pin;

use ordo_api::v1::{
    BackupRequest, BackupResponse, CompactRequest, CompactResponse, DeleteStreamRequest,
    DeleteStreamResponse, GetLogInfoRequest, GetLogInfoResponse,
    admin_service_server::AdminService,
};
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use crate::{
    admin::{Maintenance, backup, streams},
    store::SharedLog,
};

/// A backup's messages; an error ends the stream (and the backup is incomplete).
pub type BackupStream = Pin<Box<dyn Stream<Item = Result<BackupResponse, Status>> + Send>>;

pub struct AdminApi {
    log: SharedLog,
    maintenance: Maintenance,
}

impl AdminApi {
    pub fn new(log: SharedLog, maintenance: Maintenance) -> Self {
        Self { log, maintenance }
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    type BackupStream = BackupStream;

    async fn get_log_info(
        &self,
        _request: Request<GetLogInfoRequest>,
    ) -> Result<Response<GetLogInfoResponse>, Status> {
        let info = self.maintenance.info().await?;
        let config = self.maintenance.config();
        Ok(Response::new(GetLogInfoResponse {
            first_offset: info.first_offset,
            head_offset: info.head,
            disk_bytes: info.disk_bytes,
            pending_deleted_streams: info.pending_deleted_streams,
            retention_max_age_seconds: config.max_age.map_or(0, |age| age.as_secs()),
            retention_max_bytes: config.max_bytes.unwrap_or(0),
            journal_bytes: info.journal_bytes,
        }))
    }

    async fn compact(
        &self,
        _request: Request<CompactRequest>,
    ) -> Result<Response<CompactResponse>, Status> {
        let done = self.maintenance.compact().await?;
        let report = done.report;
        Ok(Response::new(CompactResponse {
            first_offset_before: report.first_before,
            first_offset_after: report.first_after,
            events_trimmed: report.events_trimmed,
            bytes_trimmed: report.bytes_trimmed,
            streams_removed: report.streams_removed,
            deleted_events_removed: report.deleted_events_removed,
            disk_bytes_before: done.disk_bytes_before,
            disk_bytes_after: done.disk_bytes_after,
        }))
    }

    async fn delete_stream(
        &self,
        request: Request<DeleteStreamRequest>,
    ) -> Result<Response<DeleteStreamResponse>, Status> {
        let response = streams::delete(&self.log, &request.get_ref().stream_id).await?;
        Ok(Response::new(response))
    }

    async fn backup(
        &self,
        _request: Request<BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let messages = ReceiverStream::new(backup::stream(self.log.clone()));
        Ok(Response::new(Box::pin(
            messages.map(|message| message.map_err(Status::from)),
        )))
    }
}
