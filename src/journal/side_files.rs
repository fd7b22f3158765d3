//! Files outside the store a run rewrites: the delegate and auto-accept databases, a whole file
//! such as augments.xml.

use super::saved::SavedMeta;
use super::summary::RunSummary;
use crate::error::{Error, Result};
use crate::state::journal_rows::{
    self as rows, DatabaseTodo, FileStep, NewDatabaseStep, PendingDatabase,
};
use crate::state::State;
use crate::store::seam::{Backups, SideFile};
use crate::store::write::sha256_hex;
use std::path::Path;

/// Rewrites the delegate and auto-accept databases as planned, each a journaled step with a
/// backup of the whole file.
pub(crate) fn apply_databases(
    state: &mut State,
    run_id: i64,
    plan_id: i64,
    backups: &Backups,
    summary: &mut RunSummary,
) -> Result<()> {
    // A database step left pending: SQLite commits atomically, so the file either still has its
    // planned bytes (redo) or holds our committed change (done).
    for PendingDatabase { seq, path, before } in rows::pending_databases(&state.conn, run_id)? {
        let current = SideFile(Path::new(&path)).hash().unwrap_or_default();
        if current == before {
            let json = rows::database_plan(&state.conn, plan_id, &path)?;
            let plan: crate::provision::proxy::DbPlan = serde_json::from_str(&json)?;
            crate::provision::proxy::apply_db_rewrite(Path::new(&path), &plan)?;
        }
        let after = SideFile(Path::new(&path)).hash().unwrap_or_default();
        rows::database_done(&state.conn, run_id, seq, &after)?;
    }
    for todo in rows::databases_todo(&state.conn, plan_id, run_id)? {
        let DatabaseTodo {
            path,
            old_sha,
            plan_json: json,
        } = todo;
        let file = SideFile(Path::new(&path));
        if let Some(side) = file.sqlite_side_file() {
            return Err(Error::usage(format!(
                "{} exists: the database is in use or was not closed cleanly; stop the calendar server first",
                side.display()
            )));
        }
        let seq = rows::last_seq(&state.conn, run_id)? + 1;
        let bytes = file.read()?;
        if sha256_hex(&bytes) != old_sha {
            let step = NewDatabaseStep {
                seq,
                path: &path,
                before: &old_sha,
                backup: None,
            };
            rows::insert_database_step(&state.conn, run_id, &step)?;
            summary.skipped.push((path, "changed since plan".into()));
            continue;
        }
        let backup = backups.put(&bytes)?;
        backups.sync()?;
        let meta = serde_json::to_string(&SavedMeta::from_meta(&file.meta()?))?;
        let step = NewDatabaseStep {
            seq,
            path: &path,
            before: &old_sha,
            backup: Some((&backup, &meta)),
        };
        rows::insert_database_step(&state.conn, run_id, &step)?;
        let plan: crate::provision::proxy::DbPlan = serde_json::from_str(&json)?;
        crate::provision::proxy::apply_db_rewrite(file.0, &plan)?;
        let after = sha256_hex(&file.read()?);
        rows::database_done(&state.conn, run_id, seq, &after)?;
        summary.databases += 1;
    }
    Ok(())
}

/// Replaces a whole file (e.g. `augments.xml`) as a journaled run of its own, so `rollback --run N`
/// restores it: the original saved in backups/, the step durable before the write, owner, mode and
/// attributes kept. Returns the run id and the backup's SHA-256.
pub fn journaled_file_write(
    state_dir: &Path,
    kind: &'static str,
    path: &Path,
    new_bytes: &[u8],
) -> Result<(i64, String)> {
    let mut state = State::open(state_dir)?;
    let backups = Backups::open(state_dir)?;
    let file = SideFile(path);
    let old = file.read()?;
    let backup = backups.put(&old)?;
    backups.sync()?;
    let meta = file.meta()?;
    let tx = state.conn.transaction()?;
    let run_id = rows::insert_file_run(
        &tx,
        &FileStep {
            kind,
            path: &path.to_string_lossy(),
            folder: &path.parent().unwrap_or(Path::new("/")).to_string_lossy(),
            before: &backup,
            after: &sha256_hex(new_bytes),
            meta: &serde_json::to_string(&SavedMeta::from_meta(&meta))?,
        },
    )?;
    tx.commit()?;
    file.restore(new_bytes, &meta)?;
    rows::finish_file_run(&state.conn, run_id)?;
    Ok((run_id, backup))
}

/// Puts a file outside the store back as a step saved it: `bytes` (read from its backup) with
/// the owner, mode and attributes of `meta_json` (a saved [`SavedMeta`]).
pub(crate) fn restore_saved(file: SideFile<'_>, bytes: &[u8], meta_json: &str) -> Result<()> {
    let meta: SavedMeta = serde_json::from_str(meta_json)?;
    file.restore(bytes, &meta.to_meta()?)
}
