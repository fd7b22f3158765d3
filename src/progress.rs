//! Progress reporting: the library reports its work to a sink, the commands layer draws it.
//!
//! A long stage (a walk of the store, a directory pull) asks its [`Progress`] for a [`Bar`] with
//! [`Progress::start`], advances it with [`Bar::inc`] and ends it with [`Bar::finish`]. The
//! library never draws anything itself: [`NoProgress`] ignores every report (tests, nested
//! stages), and the command-line implementation (terminal bars on stderr) lives in
//! `cli::progress`.

/// Where a library function reports how far it got.
pub trait Progress: Sync {
    /// Starts a stage called `label` with `total` steps (`None`: not known in advance).
    fn start(&self, label: &str, total: Option<u64>) -> Box<dyn Bar>;
    /// Whether the stages are shown to someone: a stage may then spend a little (listing folders)
    /// to know its total first. Nothing is shown by default.
    fn shown(&self) -> bool {
        false
    }
}

/// One stage being reported: advanced from any thread.
pub trait Bar: Send + Sync {
    /// Counts `n` more steps done.
    fn inc(&self, n: u64);
    /// Ends the stage (a terminal bar is cleared).
    fn finish(&self);
}

/// A sink that reports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

/// The bar of [`NoProgress`]: ignores every step.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoBar;

impl Progress for NoProgress {
    fn start(&self, _label: &str, _total: Option<u64>) -> Box<dyn Bar> {
        Box::new(NoBar)
    }
}

impl Bar for NoBar {
    fn inc(&self, _n: u64) {}
    fn finish(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    struct Counting(Arc<AtomicU64>);
    struct CountingBar(Arc<AtomicU64>);
    impl Progress for Counting {
        fn start(&self, _label: &str, _total: Option<u64>) -> Box<dyn Bar> {
            Box::new(CountingBar(self.0.clone()))
        }
    }
    impl Bar for CountingBar {
        fn inc(&self, n: u64) {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
        fn finish(&self) {}
    }

    #[test]
    fn a_sink_sees_every_step_and_no_progress_ignores_them() {
        let n = Arc::new(AtomicU64::new(0));
        let sink: &dyn Progress = &Counting(n.clone());
        let bar = sink.start("walk", Some(3));
        bar.inc(1);
        bar.inc(2);
        bar.finish();
        assert_eq!(n.load(Ordering::Relaxed), 3);
        let quiet: &dyn Progress = &NoProgress;
        let bar = quiet.start("walk", None);
        bar.inc(5);
        bar.finish();
    }
}
