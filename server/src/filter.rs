//! Event filters: exact or `prefix*` matches on type and stream id.
//!
//! A leaf module (it needs only the API types and validation), because three layers use it:
//! subscriptions and reads, token restrictions in `auth`, and webhook filters.

use ordo_api::v1::{Event, EventFilter};

use crate::{error::OrdoError, validate};

/// Most entries per filter list; keeps matching cheap per event.
const MAX_ENTRIES: usize = 64;

/// A validated filter, ready to test events against.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    types: Vec<Pattern>,
    streams: Vec<Pattern>,
    /// A second matcher every event must also pass: a token's type/stream restriction, so a
    /// restricted token never sees events outside it, whatever filter it sends.
    within: Option<Box<Matcher>>,
}

#[derive(Debug, Clone)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    /// Whether every value `inner` matches, this matches too.
    fn covers(&self, inner: &Pattern) -> bool {
        match (self, inner) {
            (Pattern::Prefix(p), Pattern::Exact(v) | Pattern::Prefix(v)) => {
                v.starts_with(p.as_str())
            }
            (Pattern::Exact(a), Pattern::Exact(b)) => a == b,
            (Pattern::Exact(_), Pattern::Prefix(_)) => false,
        }
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Exact(exact) => value == exact,
            Pattern::Prefix(prefix) => value.starts_with(prefix.as_str()),
        }
    }
}

impl Matcher {
    pub fn new(filter: Option<&EventFilter>) -> Result<Self, OrdoError> {
        let Some(filter) = filter else {
            return Ok(Self::default());
        };
        Self::from_lists(
            ("filter.types", &filter.types),
            ("filter.stream_ids", &filter.stream_ids),
        )
    }

    /// A matcher from bare type and stream-id lists, each given with the field name errors
    /// should use (webhook requests name them differently from `EventFilter`).
    pub fn from_lists(
        (types_field, types): (&str, &[String]),
        (streams_field, streams): (&str, &[String]),
    ) -> Result<Self, OrdoError> {
        Ok(Self {
            types: patterns(types_field, types)?,
            streams: patterns(streams_field, streams)?,
            within: None,
        })
    }

    /// This filter intersected with `outer` (when given).
    pub fn within(mut self, outer: Option<&Matcher>) -> Self {
        self.within = outer.map(|m| Box::new(m.clone()));
        self
    }

    /// True when every event this matcher accepts is also accepted by `outer`: a restricted
    /// token may use a shared consumer group only if the group cannot hand it anything else.
    pub fn is_within(&self, outer: &Matcher) -> bool {
        let covered = |inner: &[Pattern], outer: &[Pattern]| {
            outer.is_empty()
                || (!inner.is_empty() && inner.iter().all(|i| outer.iter().any(|o| o.covers(i))))
        };
        covered(&self.types, &outer.types)
            && covered(&self.streams, &outer.streams)
            && outer.within.as_ref().is_none_or(|w| self.is_within(w))
    }

    /// True when every event matches, so callers can skip looking at events at all.
    pub fn is_everything(&self) -> bool {
        self.types.is_empty()
            && self.streams.is_empty()
            && self.within.as_ref().is_none_or(|w| w.is_everything())
    }

    pub fn matches(&self, event: &Event) -> bool {
        self.matches_parts(&event.r#type, &event.stream_id)
    }

    /// [`Matcher::matches`] on an event type and stream id, before there is an event.
    pub fn matches_parts(&self, event_type: &str, stream_id: &str) -> bool {
        let any = |patterns: &[Pattern], value: &str| {
            patterns.is_empty() || patterns.iter().any(|p| p.matches(value))
        };
        any(&self.types, event_type)
            && any(&self.streams, stream_id)
            && self
                .within
                .as_ref()
                .is_none_or(|w| w.matches_parts(event_type, stream_id))
    }
}

fn patterns(field: &str, entries: &[String]) -> Result<Vec<Pattern>, OrdoError> {
    if entries.len() > MAX_ENTRIES {
        return Err(OrdoError::invalid(format!(
            "{field} has {} entries; the limit is {MAX_ENTRIES}",
            entries.len()
        )));
    }
    entries
        .iter()
        .map(|entry| match entry.strip_suffix('*') {
            Some("") => Ok(Pattern::Prefix(String::new())),
            Some(prefix) => validate::name(field, prefix).map(|_| Pattern::Prefix(prefix.into())),
            None => validate::name(field, entry).map(|_| Pattern::Exact(entry.clone())),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(types: &[&str], streams: &[&str]) -> Matcher {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Matcher::from_lists(("t", &owned(types)), ("s", &owned(streams))).expect("valid")
    }

    #[test]
    fn within_means_no_event_escapes() {
        let outer = m(&["order.*"], &[]);
        assert!(m(&["order.created"], &[]).is_within(&outer));
        assert!(m(&["order.*"], &["o-1"]).is_within(&outer));
        assert!(!m(&[], &[]).is_within(&outer));
        assert!(!m(&["payment.done"], &[]).is_within(&outer));
        assert!(!m(&["*"], &[]).is_within(&outer));
        assert!(m(&["x"], &["a"]).is_within(&Matcher::default()));
        assert!(!m(&["order.*"], &[]).is_within(&m(&["order.created"], &[])));
    }
}
