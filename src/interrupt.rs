//! SIGINT / SIGTERM during `apply` and `rollback`: the signal only sets a flag; the run finishes
//! the batch it is in (so no temporary file is left in the store), records itself as interrupted
//! (resumable) and ends with exit code 130. A second signal ends the process at once (the handler
//! is reset after the first), which is as safe as `kill -9`: the journal resumes it.

use std::sync::atomic::{AtomicI32, Ordering};

static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
}

/// While alive, SIGINT and SIGTERM set the flag instead of ending the process.
pub struct Guard {
    old: Vec<(libc::c_int, libc::sigaction)>,
}

/// Installs the handlers (until the guard is dropped).
pub fn install() -> Guard {
    let mut old = Vec::new();
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with our handler, an emptied mask and flags; `prev` receives
        // the previous action, restored on drop.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = libc::SA_RESTART | libc::SA_RESETHAND;
            let mut prev: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, &sa, &mut prev) == 0 {
                old.push((sig, prev));
            }
        }
    }
    Guard { old }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for (sig, prev) in &self.old {
            // SAFETY: restores the action saved by `install`.
            unsafe {
                libc::sigaction(*sig, prev, std::ptr::null_mut());
            }
        }
    }
}

/// The signal received since the handlers were installed, if any.
pub fn pending() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// `SIGINT`, `SIGTERM`, ...
pub fn name(sig: i32) -> String {
    match sig {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        n => format!("signal {n}"),
    }
}

/// Test hook (tests only, never set in production): with the environment variable
/// `PRINCIPAL_RECONCILER_TEST_PAUSE` equal to `phase`, the run announces `paused at PHASE` on
/// stderr and waits there, once, until it is signalled (SIGINT/SIGTERM resume it so it can stop
/// cleanly; SIGKILL ends it), so a test can kill it at an exact instant.
pub fn test_pause(phase: &str) {
    static PAUSED: std::sync::Once = std::sync::Once::new();
    if std::env::var("PRINCIPAL_RECONCILER_TEST_PAUSE").as_deref() != Ok(phase) {
        return;
    }
    PAUSED.call_once(|| {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "paused at {phase}");
        let _ = std::io::stderr().flush();
        while pending().is_none() {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    });
}
