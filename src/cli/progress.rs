//! Progress on a terminal: [`Context`] is the library's [`Progress`] sink, drawing indicatif bars
//! on stderr when progress is on (a terminal, no `--no-progress`, no `--quiet`).

use super::Context;
use crate::progress::{Bar, Progress};

/// A progress bar on stderr, hidden when progress is off.
pub fn progress_bar(ctx: &Context, len: Option<u64>, what: &str) -> indicatif::ProgressBar {
    if !ctx.progress {
        return indicatif::ProgressBar::hidden();
    }
    // Whole resources per second: indicatif's own {per_sec} prints four decimals.
    let rate = |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
        let _ = write!(w, "{:.0}/s", s.per_sec());
    };
    let bar = match len {
        Some(n) => indicatif::ProgressBar::new(n).with_style(
            indicatif::ProgressStyle::with_template(
                "{msg:>10} [{bar:40}] {human_pos}/{human_len} {rate} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .with_key("rate", rate)
            .progress_chars("=> "),
        ),
        None => indicatif::ProgressBar::new_spinner().with_style(
            indicatif::ProgressStyle::with_template("{msg:>10} {spinner} {human_pos} {rate}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
                .with_key("rate", rate),
        ),
    };
    bar.set_message(what.to_string());
    bar
}

/// A terminal bar is a [`Bar`]; finishing clears it.
struct TerminalBar(indicatif::ProgressBar);

impl Bar for TerminalBar {
    fn inc(&self, n: u64) {
        self.0.inc(n);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl Progress for Context {
    fn start(&self, label: &str, total: Option<u64>) -> Box<dyn Bar> {
        Box::new(TerminalBar(progress_bar(self, total, label)))
    }
    fn shown(&self) -> bool {
        self.progress
    }
}
