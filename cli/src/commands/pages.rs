//! Paged list commands (`orders list`, `groups list`): print one page and say how to get the
//! next, or every page with `--all`. One loop, so every list pages the same way.

use std::future::Future;

use serde_json::json;

use super::out::Out;

/// Fetches pages from `page_token` on with `fetch` (token in; items and the next token out)
/// and prints each item with `print`. Without `all` it stops after one page and tells how to
/// continue (a `{"page": ...}` line with `--json`). Returns how many items were printed.
pub async fn print_pages<T, F, Fut>(
    out: &Out,
    what: &str,
    all: bool,
    mut page_token: Option<String>,
    mut fetch: F,
    mut print: impl FnMut(&T) -> anyhow::Result<()>,
) -> anyhow::Result<usize>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = anyhow::Result<(Vec<T>, String)>>,
{
    let mut printed = 0usize;
    loop {
        let (items, next) = fetch(page_token.take().unwrap_or_default()).await?;
        for item in &items {
            print(item)?;
        }
        printed += items.len();
        if next.is_empty() {
            return Ok(printed);
        }
        if !all {
            if out.json() {
                out.json_line(&json!({"page": {"next_page_token": next}}))?;
            } else {
                out.note(&format!("more {what}: add --page-token {next} (or --all)"));
            }
            return Ok(printed);
        }
        page_token = Some(next);
    }
}
