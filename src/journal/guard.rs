//! What an apply or rollback checks of the host first: no calendar server running on the store;
//! where the store and the state folder live.

use crate::config::Config;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Looks for a running CalendarServer on the store: a pid file whose process is alive.
pub fn server_running(store: &Path) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    for dir in [Some(store), store.parent()].into_iter().flatten() {
        for name in [
            "caldavd.pid",
            "Data/caldavd.pid",
            "Run/caldavd.pid",
            "caldavd.lock",
        ] {
            candidates.push(dir.join(name));
        }
    }
    candidates.push(PathBuf::from("/var/run/caldavd/caldavd.pid"));
    candidates.push(PathBuf::from("/var/run/caldavd.pid"));
    for p in candidates {
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        let Ok(pid) = text.trim().parse::<i32>() else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks that the process exists.
        if pid > 0 && unsafe { libc::kill(pid, 0) } == 0 {
            return Some(p);
        }
    }
    None
}

/// Refuses to touch a store the calendar server is running on (it caches properties and would
/// overwrite the changes), unless forced.
pub(super) fn refuse_while_server_runs(store: &Path, force: bool) -> Result<()> {
    if force {
        return Ok(());
    }
    match server_running(store) {
        Some(pid) => Err(Error::usage(format!(
            "the calendar server seems to be running ({} names a live process); stop it first — it caches properties and would overwrite the changes — or pass --force",
            pid.display()
        ))),
        None => Ok(()),
    }
}

pub(super) fn same_filesystem(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev(),
        _ => false,
    }
}

pub(super) fn store_path_of(cfg: &Config) -> PathBuf {
    cfg.store
        .path
        .canonicalize()
        .unwrap_or_else(|_| cfg.store.path.clone())
}
