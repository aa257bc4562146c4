//! `Publish`: generic producer appends, validated and stored atomically.

use std::{collections::HashMap, time::SystemTime};

use ordo_api::v1::{
    Event, EventPosition, NewEvent, PublishRequest, PublishResponse, event::Payload,
};

use crate::{
    config::Limits,
    error::OrdoError,
    store::{AppendBatch, AppendOutcome, Position, SharedLog},
    validate,
};

/// Prefixes that belong to OrderService: publishing into them would bypass the projection.
const RESERVED_STREAM_PREFIX: &str = "order-";
const RESERVED_TYPE_PREFIX: &str = "order.";
const MAX_METADATA_TEXT: usize = 1024;

pub async fn publish(
    log: &SharedLog,
    limits: &Limits,
    req: PublishRequest,
) -> Result<PublishResponse, OrdoError> {
    let count = req.events.len();
    if count == 0 {
        return Err(OrdoError::invalid("events must contain at least one event"));
    }
    if count > limits.max_events_per_publish {
        return Err(OrdoError::invalid(format!(
            "events has {count} entries; the limit (max_events_per_publish) is {}",
            limits.max_events_per_publish
        )));
    }
    let mut expected: Vec<(String, u64)> = Vec::new();
    let mut seen: HashMap<String, Option<u64>> = HashMap::new();
    let now = SystemTime::now();
    let mut events = Vec::with_capacity(count);
    let index_ids = req.events.iter().any(|e| !e.id.is_empty());
    for (i, new) in req.events.into_iter().enumerate() {
        check(&format!("events[{i}]"), &new, limits)?;
        match seen.get(&new.stream_id) {
            None => {
                seen.insert(new.stream_id.clone(), new.expected_stream_version);
                if let Some(version) = new.expected_stream_version {
                    expected.push((new.stream_id.clone(), version));
                }
            }
            Some(first)
                if new.expected_stream_version.is_some()
                    && new.expected_stream_version != *first =>
            {
                return Err(OrdoError::invalid(format!(
                    "events[{i}].expected_stream_version differs from an earlier event of stream {}; set it on the first event of each stream only",
                    new.stream_id
                )));
            }
            Some(_) => {}
        }
        events.push(to_event(new, now));
    }
    let mut ids = std::collections::HashSet::with_capacity(count);
    for (i, event) in events.iter().enumerate() {
        if !event.id.is_empty() && !ids.insert(event.id.as_str()) {
            return Err(OrdoError::invalid(format!(
                "events[{i}].id {:?} appears twice in this request; event ids must be unique",
                event.id
            )));
        }
    }
    let batch = AppendBatch {
        events,
        expected_versions: expected,
        idempotency: None,
        index_ids,
        project: None,
    };
    let (positions, deduplicated) = match log.append(batch).await? {
        AppendOutcome::Appended { positions, .. } => (positions, false),
        AppendOutcome::Deduplicated { positions } => (positions, true),
        AppendOutcome::Replayed { .. } => (Vec::new(), true),
    };
    Ok(PublishResponse {
        positions: positions.into_iter().map(to_wire).collect(),
        deduplicated,
    })
}

/// Validates one event; `at` names it in messages (`events[3]` in a Publish, `event` in an
/// AppendStream request).
pub(crate) fn check(at: &str, new: &NewEvent, limits: &Limits) -> Result<(), OrdoError> {
    validate::name("stream_id", &new.stream_id).map_err(|e| within(at, e))?;
    validate::name("type", &new.r#type).map_err(|e| within(at, e))?;
    if new.stream_id.starts_with(RESERVED_STREAM_PREFIX) {
        return Err(OrdoError::invalid(format!(
            "{at}.stream_id {:?} is reserved for OrderService (streams starting with {RESERVED_STREAM_PREFIX:?}); use OrderService or another stream id",
            new.stream_id
        )));
    }
    if new.r#type.starts_with(RESERVED_TYPE_PREFIX) {
        return Err(OrdoError::invalid(format!(
            "{at}.type {:?} is reserved for OrderService (types starting with {RESERVED_TYPE_PREFIX:?})",
            new.r#type
        )));
    }
    if !new.id.is_empty() {
        validate::name("id", &new.id).map_err(|e| within(at, e))?;
    }
    validate::text("source", &new.source, validate::MAX_NAME_LEN, false)
        .map_err(|e| within(at, e))?;
    validate::text(
        "datacontenttype",
        &new.datacontenttype,
        validate::MAX_NAME_LEN,
        false,
    )
    .map_err(|e| within(at, e))?;
    if new.data.len() > limits.max_payload_bytes {
        return Err(OrdoError::invalid(format!(
            "{at}.data is {} bytes; the limit (max_payload_bytes) is {}",
            new.data.len(),
            limits.max_payload_bytes
        )));
    }
    if new.metadata.len() > limits.max_metadata_entries {
        return Err(OrdoError::invalid(format!(
            "{at}.metadata has {} entries; the limit is {}",
            new.metadata.len(),
            limits.max_metadata_entries
        )));
    }
    for (key, value) in &new.metadata {
        validate::text(
            &format!("{at}.metadata key"),
            key,
            validate::MAX_NAME_LEN,
            true,
        )?;
        validate::text(
            &format!("{at}.metadata[{key}]"),
            value,
            MAX_METADATA_TEXT,
            false,
        )?;
    }
    Ok(())
}

/// A field's error, named within its event (`events[3].type ...`). The field names are joined
/// only on error: building them for every field of every event cost an allocation each on the
/// hot path of AppendStream.
fn within(at: &str, err: OrdoError) -> OrdoError {
    match err {
        OrdoError::InvalidArgument(message) => {
            OrdoError::InvalidArgument(format!("{at}.{message}"))
        }
        other => other,
    }
}

pub(crate) fn to_event(new: NewEvent, now: SystemTime) -> Event {
    let or = |value: String, default: &str| {
        if value.is_empty() {
            default.to_string()
        } else {
            value
        }
    };
    Event {
        offset: 0,
        // Empty: the log assigns an id that embeds the offset (see store::chunk::server_id).
        id: new.id,
        source: or(new.source, "ordo"),
        r#type: new.r#type,
        subject: new.stream_id.clone(),
        stream_id: new.stream_id,
        stream_version: 0,
        time: Some(now.into()),
        datacontenttype: or(new.datacontenttype, "application/octet-stream"),
        metadata: new.metadata,
        payload: Some(Payload::Data(new.data)),
    }
}

pub(crate) fn to_wire(position: Position) -> EventPosition {
    EventPosition {
        id: position.id,
        offset: position.offset,
        stream_id: position.stream_id,
        stream_version: position.stream_version,
    }
}
