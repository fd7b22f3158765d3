//! The write-ahead journal: `apply` carries out a stored plan, `rollback` undoes a run.
//!
//! Before a resource is replaced, its original bytes are saved in the state folder (`backups/`,
//! content-addressed, files 0600 in folders 0700) and the step is recorded as `pending` with the
//! original owner, mode and extended attributes; the record is durable before the store is touched.
//! After the write the step is marked `done`. Steps are made durable in batches, so the cost of
//! syncing stays bounded, and no batch is written before it is durable. Rollback works the same
//! way, in batches, newest step first.
//!
//! After a crash (`kill -9` at any instant) the next `apply` finds the run still `applying` and
//! resumes it: a pending step whose file already holds the new bytes is done, one that still holds
//! the old bytes is redone, anything else is someone else's change and is skipped. Every collection
//! of a step not known to be finished gets a new `getctag`, so clients re-fetch. The store ends
//! byte for byte as an uninterrupted run leaves it.
//!
//! Every file and folder in the store is reached from the store root one component at a time, never
//! through a symbolic link ([`crate::store::confined`]), through the store seam
//! ([`crate::store::seam`]): the journal makes no file-system call of its own, and keeps its rows
//! through [`crate::state::journal_rows`].
//!
//! A run's lifecycle ([`RunState`](crate::state::RunState)): applying → applied → rolling back →
//! rolled back; a plan whose run was rolled back is applied again by a new run. SIGINT / SIGTERM
//! stop a run after its current batch ([`crate::interrupt`]).

mod apply;
mod checks;
mod guard;
mod home_steps;
mod leftovers;
mod marks;
mod resources;
mod rollback;
mod saved;
mod side_files;
mod summary;
mod todo;
mod undo;

pub use self::apply::apply;
pub use self::rollback::rollback;
pub use self::side_files::journaled_file_write;
pub(crate) use self::side_files::{apply_databases, restore_saved};
pub use self::summary::{Checked, RunSummary};
use crate::stage::Request;
pub use crate::store::seam::server_running;
pub use crate::store::seam::Backups;

/// Steps made durable together.
const BATCH: usize = 1024;
/// Folders one batch may hold open (each is a descriptor until the batch ends).
const BATCH_FOLDERS: usize = 256;

/// Rows read from the state database at a time where a whole run or plan would not fit in
/// memory (keyset pagination: peak memory stays flat however large the plan).
const PAGE: i64 = 2000;

/// What `apply` is asked for.
#[derive(Clone, Debug, Default)]
pub struct ApplyOptions {
    /// The plan to apply (`None`: the latest complete one).
    pub plan: Option<i64>,
    /// Run even though the calendar server seems to be running on the store.
    pub force: bool,
    /// The store is a rehearsal copy (not the store the plan was made for).
    pub rehearsal: bool,
    /// The stage asked for (`--home`, `--limit`); the default is all that is pending.
    pub request: Request,
}

impl ApplyOptions {
    /// The whole of a plan (what is pending of it), on the store it was made for.
    pub fn whole(plan: i64, force: bool) -> ApplyOptions {
        ApplyOptions {
            plan: Some(plan),
            force,
            ..Default::default()
        }
    }
}

/// What `rollback` is asked for.
#[derive(Clone, Copy, Debug, Default)]
pub struct RollbackOptions {
    /// The run to undo (`None`: the latest not yet undone).
    pub run: Option<i64>,
    /// Restore files even when they changed after the run.
    pub force: bool,
}
