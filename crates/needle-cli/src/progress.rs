//! Progress on stderr: bars on a terminal (indicatif hides them elsewhere), and for a scan
//! ([`Bars`]) a line per stage when stderr is not a terminal (CI, a pipe, `nohup`), so that a
//! long scan's log shows where it is and how long each stage took. The bar drawn last is kept
//! so that an interrupt can clear it before saying what was interrupted.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use needle_scan::Stage;

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

/// A step-count bar with the time elapsed and an ETA.
pub fn steps(total: u64, msg: impl Into<String>) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg:30} [{bar:30}] {pos}/{len} {elapsed} eta {eta}")
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

/// A duration as a person reads it: `41.2s`, `12m 03s`, `1h 02m 03s`.
pub fn duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        return format!("{secs:.1}s");
    }
    let whole = d.as_secs();
    let (h, m, s) = (whole / 3600, whole / 60 % 60, whole % 60);
    if h == 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{h}h {m:02}m {s:02}s")
    }
}

/// `[N/M] stage`: the stage's place in the pipeline and its name.
fn tag(stage: Stage) -> String {
    let n = Stage::ALL.iter().position(|&s| s == stage).map_or(0, |i| i + 1);
    format!("[{n}/{}] {}", Stage::ALL.len(), stage.name())
}

/// The stage running now.
struct Current {
    stage: Stage,
    start: Instant,
    /// Its bar, on a terminal.
    bar: Option<ProgressBar>,
}

/// A scan's progress on stderr, fed by the pipeline's progress callback. On a terminal, one bar
/// per stage (`[N/M] stage`, units done of the total); elsewhere a line when a stage starts.
/// Either way a line when a stage ends, with the time it took, and the total at the end.
pub struct Bars {
    /// Whether stderr is a terminal (bars) or not (start lines).
    terminal: bool,
    current: Option<Current>,
    /// When the first stage started.
    first: Option<Instant>,
    /// Stages run so far.
    ran: usize,
}

impl Default for Bars {
    fn default() -> Self {
        Self {
            terminal: std::io::stderr().is_terminal(),
            current: None,
            first: None,
            ran: 0,
        }
    }
}

impl Bars {
    /// Shows `stage`'s progress (`done` of `total` units; `(0, 0)` when it starts), ending the
    /// previous stage's when the stage changes.
    pub fn update(&mut self, stage: Stage, done: usize, total: usize) {
        if self.current.as_ref().is_none_or(|c| c.stage != stage) {
            self.end(true);
            self.begin(stage);
        }
        let Some(bar) = self.current.as_ref().and_then(|c| c.bar.as_ref()) else {
            return;
        };
        if total == 0 {
            return;
        }
        let (done, total) = (done as u64, total as u64);
        if bar.length().is_none() {
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed} eta {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
        }
        if done >= total {
            // Done: a stage that counted its units may report `(1, 1)` at its end.
            let len = bar.length().unwrap_or(0).max(total);
            bar.set_length(len);
            bar.set_position(len);
        } else {
            bar.set_length(total);
            bar.set_position(done);
        }
    }

    /// Starts showing `stage`.
    fn begin(&mut self, stage: Stage) {
        crate::interrupt::stage(stage.name());
        let now = Instant::now();
        self.first.get_or_insert(now);
        let bar = if self.terminal {
            // Units unknown until the stage reports its total: a spinner until then.
            let bar = ProgressBar::no_length();
            bar.set_style(
                ProgressStyle::with_template("{prefix} {spinner} {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(tag(stage));
            bar.enable_steady_tick(Duration::from_millis(200));
            Some(shown(bar))
        } else {
            eprintln!("{}: started", tag(stage));
            None
        };
        self.current = Some(Current { stage, start: now, bar });
    }

    /// Ends the current stage's display: `done` when it finished, else it stopped (an error).
    fn end(&mut self, done: bool) {
        let Some(c) = self.current.take() else {
            return;
        };
        if let Some(bar) = &c.bar {
            bar.finish_and_clear();
        }
        let took = duration(c.start.elapsed());
        if done {
            self.ran += 1;
            eprintln!("{}: done in {took}", tag(c.stage));
        } else {
            eprintln!("{}: stopped after {took}", tag(c.stage));
        }
    }

    /// Ends the last stage and prints the total: `ok` when the stages finished, else they
    /// stopped at an error (which the caller reports).
    pub fn finish(&mut self, ok: bool) {
        self.end(ok);
        if let (true, Some(first)) = (ok, self.first) {
            let stages = if self.ran == 1 { "stage" } else { "stages" };
            eprintln!("total: {} for {} {stages}", duration(first.elapsed()), self.ran);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_seconds_minutes_and_hours() {
        assert_eq!(duration(Duration::from_millis(41_249)), "41.2s");
        assert_eq!(duration(Duration::from_secs(723)), "12m 03s");
        assert_eq!(duration(Duration::from_secs(3723)), "1h 02m 03s");
    }

    #[test]
    fn stages_are_tagged_with_their_place_in_the_pipeline() {
        assert_eq!(tag(Stage::Leak), format!("[1/{}] leak", Stage::ALL.len()));
        assert_eq!(tag(Stage::Report), format!("[{0}/{0}] report", Stage::ALL.len()));
    }
}
