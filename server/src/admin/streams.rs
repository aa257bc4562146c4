//! `DeleteStream`: which streams may be deleted, and the answer.

use ordo_api::v1::DeleteStreamResponse;
use tracing::info;

use crate::{error::OrdoError, store::SharedLog, validate};

/// Order streams belong to OrderService: the order projection is kept next to their events,
/// and deleting them would leave orders that say they have events the log no longer returns.
const ORDER_STREAM_PREFIX: &str = "order-";

/// Deletes every event of `stream_id` (see `EventLog::delete_stream`).
pub async fn delete(log: &SharedLog, stream_id: &str) -> Result<DeleteStreamResponse, OrdoError> {
    validate::name("stream_id", stream_id)?;
    if stream_id.starts_with(ORDER_STREAM_PREFIX) {
        return Err(OrdoError::FailedPrecondition(format!(
            "stream {stream_id:?} is an order stream; orders cannot be deleted (their projection depends on their events)"
        )));
    }
    let tombstone = log.delete_stream(stream_id).await?;
    info!(
        stream_id,
        version = tombstone.version,
        through_offset = tombstone.through_offset,
        "stream deleted"
    );
    Ok(DeleteStreamResponse {
        deleted_through_version: tombstone.version,
        deleted_at_offset: tombstone.through_offset,
    })
}
