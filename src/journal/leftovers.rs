//! Removal of the temporary files an interrupted run left beside the resources.

use super::PAGE;
use crate::error::Result;
use crate::state::journal_rows as rows;
use crate::state::State;
use crate::store::confined::split_rel;
use crate::store::seam::Store;

/// Removes the temporary files (`.NAME.principal-reconciler.tmp`) that an interrupted run left in
/// the folders of the plan's resources; returns how many. The paths are read a page at a time,
/// in (folder, name) order, so a folder's resources come together: each folder is listed once (a folder
/// whose resources are interleaved with a subfolder's may be listed again, which finds nothing).
pub(super) fn remove_leftovers(state: &State, dirs: &dyn Store, plan_id: i64) -> Result<u64> {
    let mut removed = 0;
    let mut last: Option<String> = None;
    let mut previous_folder: Option<String> = None;
    loop {
        // The first page from '' on (every path), the next ones after the last path read.
        let page = rows::resource_paths_page(&state.conn, plan_id, last.as_deref(), PAGE)?;
        let Some(tail) = page.last() else { break };
        last = Some(tail.clone());
        for rel in &page {
            let folder = split_rel(rel).0;
            if previous_folder.as_deref() == Some(folder) {
                continue;
            }
            removed += dirs.remove_leftovers_in(folder)?;
            previous_folder = Some(folder.to_string());
        }
        if (page.len() as i64) < PAGE {
            break;
        }
    }
    Ok(removed)
}
