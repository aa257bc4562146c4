//! Paging of list calls, the same for every service: a size with a default and a maximum, and
//! a page token that is the id of the last item returned.

use crate::error::OrdoError;

/// The page size a request asked for: `default` for 0, an error above `max`.
pub fn page_size(field: &str, value: u32, default: usize, max: usize) -> Result<usize, OrdoError> {
    match value as usize {
        0 => Ok(default),
        n if n > max => Err(OrdoError::invalid(format!(
            "{field} {n} is over the maximum of {max}"
        ))),
        n => Ok(n),
    }
}

/// The key to scan after for `page_token` under `prefix`: None for the first page.
pub fn after_key(prefix: &[u8], page_token: &str) -> Option<Vec<u8>> {
    (!page_token.is_empty()).then(|| [prefix, page_token.as_bytes()].concat())
}

/// The token of the next page: the last item's id when more rows were found than returned
/// (callers read one extra row to know), empty at the end.
pub fn next_page_token(more: bool, last_id: Option<&str>) -> String {
    match (more, last_id) {
        (true, Some(id)) => id.to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_tokens() {
        assert_eq!(page_size("limit", 0, 50, 500).ok(), Some(50));
        assert_eq!(page_size("limit", 7, 50, 500).ok(), Some(7));
        let err = page_size("limit", 501, 50, 500).unwrap_err();
        assert_eq!(err.to_string(), "limit 501 is over the maximum of 500");
        assert_eq!(after_key(b"o", ""), None);
        assert_eq!(after_key(b"o", "x"), Some(b"ox".to_vec()));
        assert_eq!(next_page_token(true, Some("a")), "a");
        assert_eq!(next_page_token(false, Some("a")), "");
    }
}
