//! How to join a consumer group.

use std::time::Duration;

use crate::backoff::BackoffPolicy;

/// Options for [`crate::OrdoClient::consume`].
#[derive(Debug, Clone)]
pub struct ConsumeOptions {
    pub(crate) group: String,
    pub(crate) member_name: String,
    pub(crate) max_in_flight: u32,
    pub(crate) backoff: BackoffPolicy,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) join_timeout: Duration,
}

impl ConsumeOptions {
    /// Joins `group` (created beforehand with [`crate::OrdoClient::create_group`]), holding as
    /// many deliveries at once as the group allows.
    pub fn new(group: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            member_name: String::new(),
            max_in_flight: 0,
            backoff: BackoffPolicy::default(),
            max_attempts: None,
            join_timeout: Duration::from_secs(10),
        }
    }

    /// A name for this member in the server's logs (at most 128 characters).
    pub fn member_name(mut self, name: impl Into<String>) -> Self {
        self.member_name = name.into();
        self
    }

    /// Deliveries this member holds unacked at once; 0 (the default) or more than the group's
    /// `max_in_flight` means the group's. The server sends nothing more until some are settled,
    /// which is also what bounds this client's buffers.
    pub fn max_in_flight(mut self, n: u32) -> Self {
        self.max_in_flight = n;
        self
    }

    /// Rejoin delays (default 100 ms doubling to 5 s, with jitter).
    pub fn backoff(mut self, policy: BackoffPolicy) -> Self {
        self.backoff = policy;
        self
    }

    /// Give up (with [`crate::ClientError::Unavailable`]) when this many rejoins in a row fail
    /// (default: never).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// How long to wait for the server's `joined` answer before trying again (default 10 s), so
    /// a server that accepts connections but does not answer cannot hang the consumer.
    pub fn join_timeout(mut self, timeout: Duration) -> Self {
        self.join_timeout = timeout;
        self
    }
}
