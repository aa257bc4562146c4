//! Delivery ids: `group/offset/attempt`. Readable in logs and grpcurl output, and they carry
//! what the server needs to check an ack without a lookup table: which group, which event, and
//! which delivery of it (so a late ack of a delivery that was since given to someone else is
//! told apart from an ack of the current one).

use std::fmt;

use crate::error::OrdoError;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeliveryId {
    pub group: String,
    pub offset: u64,
    pub attempt: u32,
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.group, self.offset, self.attempt)
    }
}

impl DeliveryId {
    /// Parses an id sent by a client, which must belong to `group`.
    pub fn parse(raw: &str, group: &str) -> Result<Self, OrdoError> {
        let malformed = || {
            OrdoError::invalid(format!(
                "delivery id {raw:?} is malformed; send the delivery_id of a Delivery as received (group/offset/attempt)"
            ))
        };
        let mut parts = raw.rsplitn(3, '/');
        let attempt = parts.next().and_then(|p| p.parse::<u32>().ok());
        let offset = parts.next().and_then(|p| p.parse::<u64>().ok());
        let (Some(attempt), Some(offset), Some(owner)) = (attempt, offset, parts.next()) else {
            return Err(malformed());
        };
        if offset == 0 || attempt == 0 {
            return Err(malformed());
        }
        if owner != group {
            return Err(OrdoError::invalid(format!(
                "delivery id {raw:?} belongs to group {owner:?}, not {group:?}"
            )));
        }
        Ok(Self {
            group: group.to_string(),
            offset,
            attempt,
        })
    }
}

/// Parses a request's ids: at most `MAX_IDS`, none twice, all of `group`.
pub fn parse_all(raw: &[String], group: &str) -> Result<Vec<DeliveryId>, OrdoError> {
    if raw.is_empty() {
        return Err(OrdoError::invalid("delivery_ids is empty"));
    }
    if raw.len() > MAX_IDS {
        return Err(OrdoError::invalid(format!(
            "delivery_ids has {} entries; the limit is {MAX_IDS}",
            raw.len()
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(raw.len());
    raw.iter()
        .map(|id| {
            let parsed = DeliveryId::parse(id, group)?;
            if !seen.insert(parsed.offset) {
                return Err(OrdoError::invalid(format!(
                    "delivery_ids names the event at offset {} twice",
                    parsed.offset
                )));
            }
            Ok(parsed)
        })
        .collect()
}

/// Most ids per Ack, Nack or Extend.
pub const MAX_IDS: usize = 1_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let id = DeliveryId {
            group: "g.1".into(),
            offset: 42,
            attempt: 3,
        };
        assert_eq!(DeliveryId::parse(&id.to_string(), "g.1").ok(), Some(id));
        for bad in ["", "g", "g/1", "g/x/1", "g/1/0", "g/0/1", "/1/1x"] {
            assert!(DeliveryId::parse(bad, "g").is_err(), "{bad}");
        }
        let err = DeliveryId::parse("other/5/1", "g").unwrap_err();
        assert!(err.to_string().contains("belongs to group \"other\""));
        let twice = parse_all(&["g/5/1".into(), "g/5/2".into()], "g").unwrap_err();
        assert!(twice.to_string().contains("twice"));
    }
}
