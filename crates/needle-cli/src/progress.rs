//! Progress bars on stderr, hidden when stderr is not a terminal. The bar drawn last is kept
//! so that an interrupt can clear it before saying what was interrupted.

use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

/// The bar or spinner drawn last.
static CURRENT: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Remembers `bar` as the one an interrupt clears, and returns it.
fn shown(bar: ProgressBar) -> ProgressBar {
    if let Ok(mut current) = CURRENT.lock() {
        *current = Some(bar.clone());
    }
    bar
}

/// Clears the bar drawn last, if any, leaving the line empty.
pub fn clear() {
    if let Ok(mut current) = CURRENT.lock() {
        if let Some(bar) = current.take() {
            bar.finish_and_clear();
        }
    }
}

/// A byte-count bar with a rate and an ETA.
pub fn bytes(total: u64, msg: String) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg:30} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(msg);
    shown(bar)
}

/// A step-count bar with an ETA.
pub fn steps(total: u64, msg: impl Into<String>) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg:30} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(msg.into());
    shown(bar)
}

/// A spinner with a message.
pub fn spinner(msg: String) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_message(msg);
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    shown(bar)
}
