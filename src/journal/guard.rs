//! What an apply or rollback checks of the host first: no calendar server running on the store;
//! where the store and the state folder live.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::store::seam::{canonical, server_running};
use std::path::{Path, PathBuf};

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

pub(super) fn store_path_of(cfg: &Config) -> PathBuf {
    canonical(&cfg.store.path)
}
