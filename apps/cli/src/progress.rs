//! Progress bars shared by the long-running subcommands.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar with count, rate and ETA, drawn on stderr (hidden when stderr is not a terminal).
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{msg:>10} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} ETA {eta}",
    )
    .expect("static progress template is valid");
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar
}
