//! Progress bars for bulk work, shown only to a person: hidden when stderr is piped or in CI,
//! so logs and test output stay clean. (The `ordo` CLI has the same helper; each binary owns
//! its presentation rather than reaching into the other's sources.)

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `total` `unit`s with rate and ETA on an interactive stderr; a no-op bar otherwise.
pub fn progress_bar(total: u64, unit: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let template = format!(
        "{{spinner}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {unit} {{per_sec}} eta {{eta}}"
    );
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
}
