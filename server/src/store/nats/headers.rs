//! The headers Ordo puts on its JetStream messages, beside JetStream's own.

use async_nats::HeaderMap;

/// Messages still to come in the same append (0 on the last one): readers apply an append
/// whole.
pub const LEFT: &str = "Ordo-Left";
/// On a records message: the key was deleted.
pub const DELETE: &str = "Ordo-Delete";
/// On the first event of an append that claimed an idempotency key: the key, and the hex
/// SHA-256 of the request that claimed it.
pub const IDEMPOTENCY_KEY: &str = "Ordo-Idempotency-Key";
pub const IDEMPOTENCY_FINGERPRINT: &str = "Ordo-Idempotency-Fingerprint";

/// What the headers of one message say.
#[derive(Debug, Default)]
pub struct Read {
    pub left: u64,
    pub delete: bool,
    pub claim: Option<(String, [u8; 32])>,
}

pub fn read(headers: Option<&HeaderMap>) -> Read {
    let Some(headers) = headers else {
        return Read::default();
    };
    let text = |name: &str| headers.get(name).map(|v| v.as_str().to_string());
    let claim = match (text(IDEMPOTENCY_KEY), text(IDEMPOTENCY_FINGERPRINT)) {
        (Some(key), Some(fingerprint)) => hex::decode(fingerprint)
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .map(|fingerprint| (key, fingerprint)),
        _ => None,
    };
    Read {
        left: text(LEFT).and_then(|v| v.parse().ok()).unwrap_or(0),
        delete: headers.get(DELETE).is_some(),
        claim,
    }
}
