//! Turns a `StartPosition` into the first offset to deliver.

use ordo_api::v1::{StartPosition, start_position::Position};

use crate::{error::OrdoError, store::StoreError};

/// The log's retained range when a read or subscription starts.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    /// The first retained offset (1 until retention removed anything).
    pub first: u64,
    pub head: u64,
}

/// The first offset a reader should examine. A start beyond the head is OUT_OF_RANGE rather
/// than a silent wait: it usually means a cursor from another data dir. `start` (and its
/// spellings `after_offset = 0`, `from_offset` 0 or 1) means the log's beginning: the first
/// retained offset. An explicit offset below it is OUT_OF_RANGE naming the first retained
/// offset, unless the caller opted into `start_at_first_retained`.
pub fn first_offset(
    start: Option<&StartPosition>,
    range: Range,
    start_at_first_retained: bool,
) -> Result<u64, OrdoError> {
    let Range { first, head } = range;
    let (offset, field) = match start.and_then(|s| s.position) {
        None | Some(Position::Start(_)) | Some(Position::AfterOffset(0)) => return Ok(first),
        Some(Position::FromOffset(0 | 1)) => return Ok(first),
        Some(Position::End(_)) => return Ok(head.saturating_add(1)),
        Some(Position::AfterOffset(after)) => (after.saturating_add(1), "after_offset"),
        Some(Position::FromOffset(from)) => (from, "from_offset"),
    };
    if offset > head.saturating_add(1) {
        return Err(OrdoError::OutOfRange(format!(
            "start.{field} is beyond the head of the log (offset {head}); resume from an offset you received from this server"
        )));
    }
    if offset < first {
        if start_at_first_retained {
            return Ok(first);
        }
        return Err(StoreError::Trimmed {
            requested: offset,
            first,
        }
        .into());
    }
    Ok(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(offset: u64) -> Option<StartPosition> {
        Some(StartPosition {
            position: Some(Position::AfterOffset(offset)),
        })
    }

    #[test]
    fn below_the_first_retained_offset_is_refused_unless_opted_in() {
        let range = Range {
            first: 120,
            head: 500,
        };
        assert_eq!(first_offset(None, range, false).ok(), Some(120));
        assert_eq!(
            first_offset(after(0).as_ref(), range, false).ok(),
            Some(120)
        );
        assert_eq!(
            first_offset(after(119).as_ref(), range, false).ok(),
            Some(120)
        );
        let err = first_offset(after(4).as_ref(), range, false).expect_err("below first");
        assert!(
            err.to_string()
                .contains("offset 5 is below the first retained offset 120"),
            "{err}"
        );
        assert_eq!(first_offset(after(4).as_ref(), range, true).ok(), Some(120));
        assert!(first_offset(after(900).as_ref(), range, true).is_err());
    }
}
