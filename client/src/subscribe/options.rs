//! How to start a subscription.

use std::{path::PathBuf, time::Duration};

use ordo_api::v1::{EventFilter, StartPosition, start_position::Position};

use crate::backoff::BackoffPolicy;

/// Where a subscription begins when there is no saved cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Start {
    /// From the first event in the log.
    #[default]
    Beginning,
    /// Only events appended after the subscription starts.
    End,
    /// Events with offset > n (exclusive: resume after the last one you processed).
    After(u64),
    /// Events with offset >= n (inclusive).
    From(u64),
}

impl Start {
    /// The wire form, for calls such as `ReadEvents` that take a `StartPosition` too.
    pub fn to_proto(self) -> StartPosition {
        let position = match self {
            Start::Beginning => Position::Start(true),
            Start::End => Position::End(true),
            Start::After(offset) => Position::AfterOffset(offset),
            Start::From(offset) => Position::FromOffset(offset),
        };
        StartPosition {
            position: Some(position),
        }
    }
}

/// Options for [`crate::OrdoClient::subscribe`].
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    pub(crate) start: Start,
    pub(crate) types: Vec<String>,
    pub(crate) stream_ids: Vec<String>,
    pub(crate) heartbeat: Duration,
    pub(crate) backoff: BackoffPolicy,
    pub(crate) cursor_file: Option<PathBuf>,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) start_at_first_retained: bool,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            start: Start::Beginning,
            types: Vec::new(),
            stream_ids: Vec::new(),
            heartbeat: Duration::from_secs(5),
            backoff: BackoffPolicy::default(),
            cursor_file: None,
            max_attempts: None,
            start_at_first_retained: false,
        }
    }
}

impl SubscribeOptions {
    /// Everything from the beginning of the log, no filter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Where to begin when no cursor file holds a position.
    pub fn start(mut self, start: Start) -> Self {
        self.start = start;
        self
    }

    /// Only events of this type (`prefix*` allowed). Repeat to match any of several.
    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.types.push(event_type.into());
        self
    }

    /// Only events of this stream (`prefix*` allowed). Repeat to match any of several.
    pub fn stream_id(mut self, stream_id: impl Into<String>) -> Self {
        self.stream_ids.push(stream_id.into());
        self
    }

    /// How often the server sends a heartbeat. A connection silent for three periods counts as
    /// dead and is replaced, so a stalled stream cannot hang the consumer. Default 5 s.
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// Reconnect delays.
    pub fn backoff(mut self, policy: BackoffPolicy) -> Self {
        self.backoff = policy;
        self
    }

    /// Keeps the position in this file: a saved position wins over [`SubscribeOptions::start`],
    /// and the position is saved as the consumer moves on (see [`crate::Subscription`]).
    pub fn cursor_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.cursor_file = Some(path.into());
        self
    }

    /// Give up (with [`crate::ClientError::Unavailable`]) when this many reconnects in a row
    /// fail (default: never).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// When [`SubscribeOptions::start`] names an offset that retention has already removed,
    /// begin at the server's first retained offset instead of failing with
    /// [`crate::ClientError::OutOfRange`]. Applies to the first connection only: a resume
    /// (from the last position, or a cursor file) that retention overtook still fails, so a
    /// consumer never skips events without knowing.
    pub fn start_at_first_retained(mut self, yes: bool) -> Self {
        self.start_at_first_retained = yes;
        self
    }

    pub(crate) fn filter(&self) -> Option<EventFilter> {
        if self.types.is_empty() && self.stream_ids.is_empty() {
            return None;
        }
        Some(EventFilter {
            types: self.types.clone(),
            stream_ids: self.stream_ids.clone(),
        })
    }
}
