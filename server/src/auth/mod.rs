//! Authentication, authorisation and per-token limits.
//!
//! A tower layer ([`layer::AuthLayer`]) in front of every service checks the bearer token
//! against the [`TokenSet`], the scope against the RPC's path and the per-token append rate,
//! then hands the handlers a [`Principal`] in the request extensions. Handlers use it for what
//! the path alone cannot decide: event-type and stream prefixes, and per-token stream slots.
//! The token set lives in a `watch` channel so a reload reaches open streams at once.

pub mod layer;
pub mod limits;
pub mod tokens;

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::sync::{OwnedSemaphorePermit, watch};
use tracing::{info, warn};

pub use layer::AuthLayer;
pub use tokens::{Grant, Scope, TokenSet, TokensError, hash_token};

use crate::{
    error::{OrdoError, Refused},
    filter::Matcher,
};

/// The loaded tokens file and the way to reload it. Cheap to clone; every clone sees reloads.
#[derive(Clone)]
pub struct Auth {
    path: Arc<PathBuf>,
    tokens: Arc<watch::Sender<Arc<TokenSet>>>,
}

impl Auth {
    /// Reads `path`; fails if it is missing or invalid, so a typo never starts an open server.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, TokensError> {
        let path = path.as_ref().to_path_buf();
        let set = TokenSet::load(&path)?;
        info!(path = %path.display(), tokens = set.len(), "auth: tokens loaded");
        let (tokens, _) = watch::channel(Arc::new(set));
        Ok(Self {
            path: Arc::new(path),
            tokens: Arc::new(tokens),
        })
    }

    /// Re-reads the file (SIGHUP, or tests). On error the current tokens stay in force. Open
    /// streams whose token disappeared or changed end within a moment (see [`StreamAccess`]).
    pub fn reload(&self) -> Result<usize, TokensError> {
        match TokenSet::load(&self.path) {
            Ok(set) => {
                let count = set.len();
                self.tokens.send_replace(Arc::new(set));
                info!(path = %self.path.display(), tokens = count, "auth: tokens reloaded");
                Ok(count)
            }
            Err(err) => {
                warn!(error = %err, "auth: reload failed; keeping the previous tokens");
                Err(err)
            }
        }
    }

    pub fn current(&self) -> Arc<TokenSet> {
        self.tokens.borrow().clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn subscribe(&self) -> watch::Receiver<Arc<TokenSet>> {
        self.tokens.subscribe()
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("path", &self.path)
            .field("tokens", &self.tokens.borrow().len())
            .finish()
    }
}

/// Who is calling, as the auth layer established it. Always present in request extensions of
/// Ordo's services; in dev mode (no tokens file) it is an unrestricted anonymous principal.
#[derive(Clone)]
pub struct Principal {
    grant: Option<Arc<Grant>>,
    quota: Option<Arc<limits::TokenQuota>>,
    tokens: Option<watch::Receiver<Arc<TokenSet>>>,
}

impl Principal {
    /// Auth is off: everything allowed, no per-token limits.
    pub fn anonymous() -> Self {
        Self {
            grant: None,
            quota: None,
            tokens: None,
        }
    }

    pub(crate) fn token(
        grant: Arc<Grant>,
        quota: Arc<limits::TokenQuota>,
        tokens: watch::Receiver<Arc<TokenSet>>,
    ) -> Self {
        Self {
            grant: Some(grant),
            quota: Some(quota),
            tokens: Some(tokens),
        }
    }

    /// The token's name for logs ("anonymous" in dev mode). Never the token itself.
    pub fn name(&self) -> &str {
        self.grant.as_ref().map_or("anonymous", |g| g.name.as_str())
    }

    pub fn has(&self, scope: Scope) -> bool {
        self.grant.as_ref().is_none_or(|g| g.has(scope))
    }

    /// The event-type/stream restriction of the token, if it has one.
    pub fn restriction(&self) -> Option<&Matcher> {
        self.grant.as_ref().and_then(|g| g.restriction())
    }

    /// May this token write an event of `event_type` to `stream_id`?
    pub fn may_write(&self, event_type: &str, stream_id: &str) -> bool {
        self.restriction()
            .is_none_or(|m| m.matches_parts(event_type, stream_id))
    }

    /// Ties a stream to the token's validity without taking a Subscribe slot (AppendStream:
    /// its memory is bounded by its window, not by a count of streams).
    pub fn watch_stream(&self, path: &str) -> StreamAccess {
        StreamAccess {
            path: path.to_string(),
            watch: match (&self.grant, &self.tokens) {
                (Some(grant), Some(tokens)) => Some((grant.clone(), tokens.clone())),
                _ => None,
            },
            _permit: None,
        }
    }

    /// Takes one of the token's Subscribe slots and ties the stream to the token's validity.
    pub fn open_stream(&self, path: &str) -> Result<StreamAccess, OrdoError> {
        let permit = match &self.quota {
            None => None,
            Some(quota) => Some(
                quota
                    .take_stream()
                    .map_err(|max| OrdoError::TokenStreamCap {
                        max,
                        refused: Refused::new(self.name(), path, "stream cap"),
                    })?,
            ),
        };
        Ok(StreamAccess {
            path: path.to_string(),
            watch: match (&self.grant, &self.tokens) {
                (Some(grant), Some(tokens)) => Some((grant.clone(), tokens.clone())),
                _ => None,
            },
            _permit: permit,
        })
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("grant", &self.grant)
            .finish()
    }
}

/// The principal of a request, put there by the auth layer. Missing means the layer was not in
/// front of the service: refuse rather than run unchecked.
pub fn principal<T>(request: &tonic::Request<T>) -> Result<Principal, OrdoError> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| OrdoError::Unauthenticated {
            message: "no authenticated principal on this call".into(),
            refused: Refused::new("-", "-", "no principal"),
        })
}

/// What an open stream keeps of its token: a stream slot, and a view of the token set that
/// tells when the token was revoked or its grant changed.
pub struct StreamAccess {
    /// The stream's gRPC path, for the rejection log when it is revoked.
    path: String,
    watch: Option<(Arc<Grant>, watch::Receiver<Arc<TokenSet>>)>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl StreamAccess {
    /// No token, no limits: dev mode and internal use.
    pub fn unrestricted() -> Self {
        Self {
            path: String::new(),
            watch: None,
            _permit: None,
        }
    }

    /// True once the token is gone from the current token set or its grant changed. Cheap
    /// enough to call per event: one atomic load until a reload happens.
    pub fn is_revoked(&self) -> bool {
        match &self.watch {
            None => false,
            // Unchanged since the call was admitted (the receiver was taken then): still valid.
            Some((_, tokens)) if !tokens.has_changed().unwrap_or(false) => false,
            Some((grant, tokens)) => !tokens.borrow().still_grants(grant),
        }
    }

    /// Resolves when [`StreamAccess::is_revoked`] becomes true; never in dev mode.
    /// Cancel-safe: it works on its own copy of the receiver.
    pub async fn revoked(&self) {
        let Some((grant, tokens)) = &self.watch else {
            return std::future::pending().await;
        };
        let mut tokens = tokens.clone();
        loop {
            if !tokens.borrow_and_update().still_grants(grant) {
                return;
            }
            if tokens.changed().await.is_err() {
                // The server dropped its token set: it is shutting down, which ends streams.
                return std::future::pending().await;
            }
        }
    }

    /// The error an open stream ends with when its token is revoked.
    pub fn revoked_error(&self) -> OrdoError {
        let name = self
            .watch
            .as_ref()
            .map_or("anonymous", |(g, _)| g.name.as_str());
        OrdoError::Revoked {
            refused: Refused::new(name, self.path.as_str(), "token revoked"),
        }
    }
}
