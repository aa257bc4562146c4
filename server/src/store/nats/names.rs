//! Names of what Ordo keeps in JetStream, derived from the one stream name the operator picks,
//! so that several deployments can share a cluster without seeing each other's subjects.

use super::super::StoreError;

/// The streams, bucket and subjects of one Ordo log.
#[derive(Debug, Clone)]
pub struct Names {
    /// The log: one message per event, stream sequence = global offset.
    pub events_stream: String,
    /// Records (webhook subscriptions and cursors, consumer-group state): one subject per key,
    /// keeping only the latest value of each.
    pub records_stream: String,
    /// Which node runs webhook delivery and consumer groups (`lease.rs`).
    pub lease_bucket: String,
    events_prefix: String,
    records_prefix: String,
}

impl Names {
    /// Checks `stream` against JetStream's naming rules, kept stricter here (letters, digits,
    /// `_`, `-`) because the name is also part of subjects and a bucket name.
    pub fn new(stream: &str) -> Result<Self, StoreError> {
        if stream.is_empty()
            || stream.len() > 48
            || !stream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(StoreError::Unsupported(format!(
                "nats stream name {stream:?} is not valid: use 1 to 48 letters, digits, _ or -"
            )));
        }
        Ok(Self {
            events_stream: stream.to_string(),
            records_stream: format!("{stream}_RECORDS"),
            lease_bucket: format!("{stream}_LEASE"),
            events_prefix: format!("ordo.{stream}.ev"),
            records_prefix: format!("ordo.{stream}.rec"),
        })
    }

    /// Every event subject, for the stream's configuration.
    pub fn events_wildcard(&self) -> String {
        format!("{}.>", self.events_prefix)
    }

    pub fn records_wildcard(&self) -> String {
        format!("{}.>", self.records_prefix)
    }

    /// One subject per Ordo stream, so JetStream's last-sequence-per-subject is the stream's
    /// last offset. Stream ids use letters, digits and `. _ : -`; only `.` (a subject token
    /// separator) is escaped, as `%2E` (`%` never occurs in a stream id, so this is
    /// reversible).
    pub fn event_subject(&self, stream_id: &str) -> String {
        format!("{}.{}", self.events_prefix, stream_id.replace('.', "%2E"))
    }

    /// Record keys are bytes: hex keeps every key a single valid subject token.
    pub fn record_subject(&self, key: &[u8]) -> String {
        format!("{}.{}", self.records_prefix, hex::encode(key))
    }

    /// The record key a record subject names; `None` for a subject that is not one.
    pub fn record_key(&self, subject: &str) -> Option<Vec<u8>> {
        let token = subject
            .strip_prefix(self.records_prefix.as_str())?
            .strip_prefix('.')?;
        hex::decode(token).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_single_tokens_and_reversible() {
        let names = Names::new("ORDO").expect("valid");
        assert_eq!(names.event_subject("a.b:c"), "ordo.ORDO.ev.a%2Eb:c");
        let subject = names.record_subject(b"o\x01key");
        assert_eq!(names.record_key(&subject), Some(b"o\x01key".to_vec()));
        assert_eq!(names.record_key("ordo.OTHER.rec.00"), None);
        assert!(Names::new("has.dot").is_err());
        assert!(Names::new("").is_err());
    }
}
