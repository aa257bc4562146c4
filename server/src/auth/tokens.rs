//! The tokens file: who may call what.
//!
//! ```toml
//! [[token]]
//! name = "billing"                      # shown in logs instead of the token
//! sha256 = "9f86d081884c7d65..."        # hex SHA-256 of the bearer token
//! scopes = ["events:publish", "events:subscribe"]
//! event_types = ["payment.*"]           # optional: only these event types
//! streams = ["payment-*"]               # optional: only these streams
//! ```
//!
//! Only hashes are stored, so a leaked file does not leak tokens; tokens are high-entropy random
//! strings, so a fast hash is enough (no password stretching needed).

use std::{collections::BTreeSet, fmt, path::Path, str::FromStr, sync::Arc};

use ordo_api::v1::EventFilter;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::filter::Matcher;

/// Why a tokens file was refused. The previous token set stays in force on reload.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("cannot read tokens file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("tokens file {path} is not valid TOML: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("tokens file {path}: token {name:?}: {message}")]
    Invalid {
        path: String,
        name: String,
        message: String,
    },
}

/// A permission a token can carry. Each RPC needs exactly one (see `layer::rule_for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    OrdersRead,
    OrdersWrite,
    EventsPublish,
    EventsSubscribe,
    /// Consumer groups: define them, join them, settle and replay their deliveries.
    EventsConsume,
    WebhooksAdmin,
    /// AdminService: compaction, stream deletion, backups (which hold every event).
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 7] = [
        Scope::OrdersRead,
        Scope::OrdersWrite,
        Scope::EventsPublish,
        Scope::EventsSubscribe,
        Scope::EventsConsume,
        Scope::WebhooksAdmin,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::OrdersRead => "orders:read",
            Scope::OrdersWrite => "orders:write",
            Scope::EventsPublish => "events:publish",
            Scope::EventsSubscribe => "events:subscribe",
            Scope::EventsConsume => "events:consume",
            Scope::WebhooksAdmin => "webhooks:admin",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown scope {s:?}; known scopes: {}", known.join(", "))
            })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    sha256: String,
    scopes: Vec<String>,
    #[serde(default)]
    event_types: Vec<String>,
    #[serde(default)]
    streams: Vec<String>,
}

/// One configured token: its name, what it may do and which events it may touch.
pub struct Grant {
    pub name: String,
    hash: [u8; 32],
    pub scopes: BTreeSet<Scope>,
    /// Allowed event-type patterns (`order.*` or exact); empty means all.
    pub event_types: Vec<String>,
    /// Allowed stream-id patterns; empty means all.
    pub streams: Vec<String>,
    /// `event_types` and `streams` compiled; `None` when the token is not restricted.
    restriction: Option<Matcher>,
}

impl Grant {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    /// The prefix restriction every event this token reads or writes must pass.
    pub fn restriction(&self) -> Option<&Matcher> {
        self.restriction.as_ref()
    }

    /// True when `other` grants exactly the same to the same token: an open stream keeps
    /// running across a reload only if its grant did not change.
    pub fn same_as(&self, other: &Grant) -> bool {
        self.name == other.name
            && self.hash == other.hash
            && self.scopes == other.scopes
            && self.event_types == other.event_types
            && self.streams == other.streams
    }

    fn hash(&self) -> &[u8; 32] {
        &self.hash
    }
}

impl fmt::Debug for Grant {
    /// Leaves the hash out: it is not secret, but there is no reason to spread it through logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grant")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .field("event_types", &self.event_types)
            .field("streams", &self.streams)
            .finish()
    }
}

/// Every token the server accepts right now. Replaced as a whole on reload.
#[derive(Debug, Default)]
pub struct TokenSet {
    grants: Vec<Arc<Grant>>,
}

impl TokenSet {
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    /// Parses and validates a whole file; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, TokensError> {
        let file: TokensFile = toml::from_str(text).map_err(|source| TokensError::Parse {
            path: origin.to_string(),
            source: Box::new(source),
        })?;
        let mut grants: Vec<Arc<Grant>> = Vec::with_capacity(file.token.len());
        for entry in file.token {
            let invalid = |message: String| TokensError::Invalid {
                path: origin.to_string(),
                name: entry.name.clone(),
                message,
            };
            if entry.name.trim().is_empty() {
                return Err(invalid("name must not be empty".into()));
            }
            let hash = parse_hash(&entry.sha256).map_err(&invalid)?;
            let mut scopes = BTreeSet::new();
            for scope in &entry.scopes {
                scopes.insert(scope.parse::<Scope>().map_err(&invalid)?);
            }
            let restriction = if entry.event_types.is_empty() && entry.streams.is_empty() {
                None
            } else {
                let filter = EventFilter {
                    types: entry.event_types.clone(),
                    stream_ids: entry.streams.clone(),
                };
                Some(Matcher::new(Some(&filter)).map_err(|err| invalid(err.to_string()))?)
            };
            // A webhook delivers whatever types it is created for, so a restricted token that
            // may create webhooks could read around its restriction.
            if restriction.is_some() && scopes.contains(&Scope::WebhooksAdmin) {
                return Err(invalid(
                    "webhooks:admin cannot be combined with event_types/streams: a webhook would deliver events outside them".into(),
                ));
            }
            // A backup holds every event, and deleting streams reaches outside any prefix.
            if restriction.is_some() && scopes.contains(&Scope::Admin) {
                return Err(invalid(
                    "admin cannot be combined with event_types/streams: backups and stream deletion reach every event".into(),
                ));
            }
            if grants.iter().any(|g| g.name == entry.name) {
                return Err(invalid("the name is used twice".into()));
            }
            if grants.iter().any(|g| g.hash == hash) {
                return Err(invalid("the same sha256 appears twice".into()));
            }
            grants.push(Arc::new(Grant {
                name: entry.name,
                hash,
                scopes,
                event_types: entry.event_types,
                streams: entry.streams,
                restriction,
            }));
        }
        Ok(Self { grants })
    }

    pub fn len(&self) -> usize {
        self.grants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    /// The grant of a presented bearer token. Compares the token's hash with every configured
    /// hash in constant time and never stops early, so timing tells nothing about which hash
    /// came close.
    pub fn authenticate(&self, token: &str) -> Option<Arc<Grant>> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for grant in &self.grants {
            if bool::from(grant.hash().ct_eq(&presented)) {
                found = Some(grant.clone());
            }
        }
        found
    }

    /// True when `grant` is still configured unchanged in this set.
    pub fn still_grants(&self, grant: &Grant) -> bool {
        self.grants
            .iter()
            .any(|g| bool::from(g.hash().ct_eq(grant.hash())) && g.same_as(grant))
    }
}

/// Hex SHA-256 of `token`: what goes into the tokens file.
pub fn hash_token(token: &str) -> String {
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hash(hex: &str) -> Result<[u8; 32], String> {
    let hex = hex.trim();
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return Err(format!(
            "sha256 must be 64 hex characters (the SHA-256 of the token), got {}",
            bytes.len()
        ));
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        match (digit(pair[0]), digit(pair[1])) {
            (Some(hi), Some(lo)) => out[i] = (hi * 16 + lo) as u8,
            _ => return Err("sha256 must be hex (0-9, a-f)".into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(entries: &str) -> Result<TokenSet, TokensError> {
        TokenSet::parse(entries, "test.toml")
    }

    #[test]
    fn authenticates_by_hash_only() {
        let text = format!(
            "[[token]]\nname = \"a\"\nsha256 = \"{}\"\nscopes = [\"orders:read\"]\n",
            hash_token("secret-a")
        );
        let set = file(&text).unwrap();
        let grant = set.authenticate("secret-a").unwrap();
        assert_eq!(grant.name, "a");
        assert!(grant.has(Scope::OrdersRead));
        assert!(!grant.has(Scope::OrdersWrite));
        assert!(set.authenticate("secret-b").is_none());
        assert!(set.authenticate("").is_none());
        assert!(set.still_grants(&grant));
    }

    #[test]
    fn refuses_bad_entries() {
        let bad_scope = format!(
            "[[token]]\nname = \"a\"\nsha256 = \"{}\"\nscopes = [\"orders:admin\"]\n",
            hash_token("x")
        );
        assert!(
            file(&bad_scope)
                .unwrap_err()
                .to_string()
                .contains("unknown scope")
        );
        let bad_hash = "[[token]]\nname = \"a\"\nsha256 = \"abc\"\nscopes = []\n";
        assert!(file(bad_hash).unwrap_err().to_string().contains("64 hex"));
        let bad_prefix = format!(
            "[[token]]\nname = \"a\"\nsha256 = \"{}\"\nscopes = []\nevent_types = [\"a b*\"]\n",
            hash_token("x")
        );
        assert!(file(&bad_prefix).is_err());
        let unknown_field = format!(
            "[[token]]\nname = \"a\"\nsha256 = \"{}\"\nscopes = []\ntoken = \"plain\"\n",
            hash_token("x")
        );
        assert!(file(&unknown_field).is_err());
        let twice = format!(
            "[[token]]\nname = \"a\"\nsha256 = \"{h}\"\nscopes = []\n[[token]]\nname = \"b\"\nsha256 = \"{h}\"\nscopes = []\n",
            h = hash_token("x")
        );
        assert!(file(&twice).unwrap_err().to_string().contains("twice"));
        let restricted_admin = format!(
            "[[token]]\nname = \"a\"\nsha256 = \"{}\"\nscopes = [\"webhooks:admin\"]\nstreams = [\"p-*\"]\n",
            hash_token("x")
        );
        assert!(
            file(&restricted_admin)
                .unwrap_err()
                .to_string()
                .contains("webhooks:admin")
        );
        let restricted_ops = restricted_admin.replace("webhooks:admin", "admin");
        assert!(
            file(&restricted_ops)
                .unwrap_err()
                .to_string()
                .contains("admin cannot be combined with event_types/streams")
        );
    }

    #[test]
    fn a_changed_grant_is_not_the_same() {
        let v1 = format!(
            "[[token]]\nname = \"a\"\nsha256 = \"{}\"\nscopes = [\"events:subscribe\"]\n",
            hash_token("t")
        );
        let v2 = format!(
            "[[token]]\nname = \"a\"\nsha256 = \"{}\"\nscopes = [\"events:publish\"]\n",
            hash_token("t")
        );
        let grant = file(&v1).unwrap().authenticate("t").unwrap();
        assert!(!file(&v2).unwrap().still_grants(&grant));
        assert!(!TokenSet::default().still_grants(&grant));
    }
}
