//! `ReadEvents`: one bounded page of the log.

use ordo_api::v1::{ReadEventsRequest, ReadEventsResponse};
use prost::Message;

use super::position;
use crate::{error::OrdoError, filter::Matcher, paging, store::SharedLog};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// Events examined per page at most, so a sparse filter cannot turn one call into a full scan.
const MAX_SCAN: u64 = 10_000;
/// Encoded events per page at most (but always at least one), so that a page fits a default
/// client's 4 MiB message limit even when every event is near the 1 MiB payload limit.
const MAX_PAGE_BYTES: usize = 3 * 1024 * 1024;
/// Bytes read from the store per step.
pub const READ_CHUNK_BYTES: usize = 1024 * 1024;

pub fn read(log: &SharedLog, req: &ReadEventsRequest) -> Result<ReadEventsResponse, OrdoError> {
    read_within(log, req, None)
}

/// [`read`], returning only events that also pass `within` (a token's restriction).
pub fn read_within(
    log: &SharedLog,
    req: &ReadEventsRequest,
    within: Option<&Matcher>,
) -> Result<ReadEventsResponse, OrdoError> {
    let limit = paging::page_size("limit", req.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    let matcher = Matcher::new(req.filter.as_ref())?.within(within);
    let head = log.head();
    let range = position::Range {
        first: log.first_offset(),
        head,
    };
    let first = position::first_offset(req.start.as_ref(), range, req.start_at_first_retained)?;
    let mut next = first;
    let mut events = Vec::new();
    let mut bytes = 0;
    'scan: while next <= head && next - first < MAX_SCAN && events.len() < limit {
        let page = log.read_page(next, limit.min(MAX_LIMIT), READ_CHUNK_BYTES)?;
        if page.next <= next {
            break;
        }
        for raw in page.events {
            let event = raw.decode()?;
            if matcher.matches(&event) {
                // The event that would overflow the page starts the next one.
                let size = event.encoded_len();
                if !events.is_empty() && bytes + size > MAX_PAGE_BYTES {
                    break 'scan;
                }
                bytes += size;
                next = event.offset + 1;
                events.push(event);
                if events.len() == limit {
                    break 'scan;
                }
            } else {
                next = event.offset + 1;
            }
        }
        // Events of deleted streams at the end of the page were examined too.
        next = page.next;
    }
    Ok(ReadEventsResponse {
        events,
        next_after_offset: next - 1,
        head_offset: head,
        first_offset: range.first,
    })
}
