//! Progress bars for transfers; hidden when stderr is not a terminal.

use indicatif::{ProgressBar, ProgressStyle};

pub fn bytes(total: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

pub use aic_core::size;
