//! Turns a `StartPosition` into the first offset to deliver.

use ordo_api::v1::{StartPosition, start_position::Position};

use crate::error::OrdoError;

/// The first offset a reader should examine, given the log's head now. A start beyond the head
/// is OUT_OF_RANGE rather than a silent wait: it usually means a cursor from another data dir.
pub fn first_offset(start: Option<&StartPosition>, head: u64) -> Result<u64, OrdoError> {
    let (first, field) = match start.and_then(|s| s.position) {
        None | Some(Position::Start(_)) => return Ok(1),
        Some(Position::End(_)) => return Ok(head.saturating_add(1)),
        Some(Position::AfterOffset(after)) => (after.saturating_add(1), "after_offset"),
        Some(Position::FromOffset(from)) => (from.max(1), "from_offset"),
    };
    if first > head.saturating_add(1) {
        return Err(OrdoError::OutOfRange(format!(
            "start.{field} is beyond the head of the log (offset {head}); resume from an offset you received from this server"
        )));
    }
    Ok(first)
}
