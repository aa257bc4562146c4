//! Creating (or checking) the JetStream streams the log lives in.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    stream::{Config, DiscardPolicy, StorageType},
};

use super::{super::StoreError, names::Names, nats_error};

/// How long JetStream remembers a `Nats-Msg-Id`: a retried publish within it is answered with
/// the first one's sequence instead of being stored twice.
pub const DEDUPE_WINDOW: Duration = Duration::from_secs(120);

/// Creates the events and records streams if missing; refuses an existing events stream that
/// allows deletes or purges, since either would put gaps into the offsets.
pub async fn ensure_streams(
    js: &jetstream::Context,
    names: &Names,
    replicas: usize,
) -> Result<(), StoreError> {
    let events = Config {
        name: names.events_stream.clone(),
        description: Some("Ordo event log: stream sequence = global offset".into()),
        subjects: vec![names.events_wildcard()],
        storage: StorageType::File,
        num_replicas: replicas,
        deny_delete: true,
        deny_purge: true,
        allow_atomic_publish: true,
        allow_direct: true,
        duplicate_window: DEDUPE_WINDOW,
        discard: DiscardPolicy::New,
        ..Default::default()
    };
    let mut stream = js
        .get_or_create_stream(events)
        .await
        .map_err(|e| nats_error("creating the events stream", e))?;
    let info = stream
        .info()
        .await
        .map_err(|e| nats_error("reading the events stream", e))?;
    if !info.config.deny_delete || !info.config.deny_purge {
        return Err(StoreError::Unsupported(format!(
            "the JetStream stream {} allows deletes or purges, which would leave gaps in the offsets; set deny_delete and deny_purge on it (nats stream edit) or pick another --nats-stream",
            names.events_stream
        )));
    }
    if !info.config.allow_atomic_publish {
        return Err(StoreError::Unsupported(format!(
            "the JetStream stream {} does not allow atomic batch publish, which multi-event appends need; enable allow_atomic (nats-server 2.12 or later)",
            names.events_stream
        )));
    }
    let records = Config {
        name: names.records_stream.clone(),
        description: Some("Ordo records: the latest value of each key".into()),
        subjects: vec![names.records_wildcard()],
        storage: StorageType::File,
        num_replicas: replicas,
        max_messages_per_subject: 1,
        allow_atomic_publish: true,
        deny_delete: true,
        ..Default::default()
    };
    js.get_or_create_stream(records)
        .await
        .map_err(|e| nats_error("creating the records stream", e))?;
    Ok(())
}
