//! Event filters: exact or `prefix*` matches on type and stream id.

use ordo_api::v1::{Event, EventFilter};

use crate::{error::OrdoError, validate};

/// Most entries per filter list; keeps matching cheap per event.
const MAX_ENTRIES: usize = 64;

/// A validated filter, ready to test events against.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    types: Vec<Pattern>,
    streams: Vec<Pattern>,
}

#[derive(Debug, Clone)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
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
        Ok(Self {
            types: patterns("filter.types", &filter.types)?,
            streams: patterns("filter.stream_ids", &filter.stream_ids)?,
        })
    }

    pub fn matches(&self, event: &Event) -> bool {
        let any = |patterns: &[Pattern], value: &str| {
            patterns.is_empty() || patterns.iter().any(|p| p.matches(value))
        };
        any(&self.types, &event.r#type) && any(&self.streams, &event.stream_id)
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
