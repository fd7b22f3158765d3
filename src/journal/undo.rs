//! Undoing a run's steps: rewrite steps in batches, other steps one at a time.

use super::marks::{self, Mark};
use super::saved::SavedMeta;
use crate::error::{Error, Result};
use crate::homes::HomeStep;
use crate::interrupt;
use crate::state::journal_rows::{self as rows, NewUndo};
use crate::state::{Action, State, StepState};
use crate::store::confined::split_rel;
use crate::store::seam::{Backups, Batch, Collection, CtagRenewal, SideFile, Staged, Store};
use crate::store::write::{FileMeta, WriteError};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A step of the undone run, as rollback reads it.
pub(super) struct UndoItem {
    pub(super) undone: i64,
    pub(super) action: Action,
    pub(super) rel: String,
    pub(super) target: Option<String>,
    pub(super) original_sha: String,
    pub(super) applied_sha: String,
    pub(super) backup: Option<String>,
    pub(super) meta: Option<String>,
    /// This rollback's own step for it, when an interruption left one pending.
    pub(super) existing: Option<i64>,
    /// The seq of this rollback's step.
    pub(super) seq: i64,
}

/// Decision about one file of a rollback batch.
pub(super) struct Undo {
    pub(super) item: UndoItem,
    pub(super) state: StepState,
    pub(super) detail: String,
    pub(super) prepared: Option<Staged>,
    pub(super) renew: Option<(String, CtagRenewal)>,
}

pub(super) fn undo_detail_missing() -> String {
    "missing: deleted or moved after the run; `--force` restores it from its backup".into()
}

pub(super) fn undo_detail_changed() -> String {
    "changed after the run (it no longer holds what the run wrote); `--force` restores the original anyway, replacing that change".into()
}

/// The bytes of a backup, or why not (a damaged or missing backup).
pub(super) fn backup_bytes(backups: &Backups, item: &UndoItem) -> Result<Vec<u8>> {
    backups.get(item.backup.as_deref().unwrap_or_default())
}

pub(super) fn prepare_undo(
    cache: &dyn Batch,
    backups: &Backups,
    force: bool,
    item: UndoItem,
) -> Result<Undo> {
    let mut u = Undo {
        item,
        state: StepState::Done,
        detail: String::new(),
        prepared: None,
        renew: None,
    };
    let file = match cache.file(&u.item.rel) {
        Ok(f) => f,
        Err(e) => {
            u.state = StepState::Skipped;
            u.detail = format!("not restored: {e}");
            return Ok(u);
        }
    };
    let current = file.hash()?;
    // A step that changed only attributes left the bytes as they were: it is undone unless the
    // attributes are back too.
    let restored = current.as_deref() == Some(u.item.original_sha.as_str())
        && (u.item.original_sha != u.item.applied_sha
            || attrs_as_saved(&file.meta()?, u.item.meta.as_deref())?);
    if restored {
        u.detail = "already restored".into();
        if u.item.existing.is_some() {
            if let Some(collection) = file.restored_collection() {
                u.renew = Some((split_rel(&u.item.rel).0.to_string(), collection));
            }
        }
        return Ok(u);
    }
    if !force {
        if current.is_none() {
            u.state = StepState::Skipped;
            u.detail = undo_detail_missing();
            return Ok(u);
        }
        if current.as_deref() != Some(u.item.applied_sha.as_str()) {
            u.state = StepState::Skipped;
            u.detail = undo_detail_changed();
            return Ok(u);
        }
    }
    let bytes = match backup_bytes(backups, &u.item) {
        Ok(b) => b,
        Err(e) if force => {
            u.state = StepState::Skipped;
            u.detail = e.message;
            return Ok(u);
        }
        Err(e) => {
            return Err(Error::runtime(format!(
                "{}: {}; nothing of this batch was restored. `rollback --force` skips this file (reporting it) and restores the rest",
                u.item.rel, e.message
            )))
        }
    };
    let meta: SavedMeta = serde_json::from_str(u.item.meta.as_deref().unwrap_or("{}"))?;
    let meta = meta.to_meta()?;
    let prepared = file.stage_restore(current, &bytes, &meta)?;
    u.state = StepState::Pending;
    u.prepared = Some(prepared);
    Ok(u)
}

/// Undoes a batch of rewrite steps: backups read and the originals put in temporary files (in
/// parallel), made durable; the undo steps recorded durably; then the renames, a new ctag for
/// every collection touched, made durable; then marked done.
pub(super) fn undo_batch(
    state: &mut State,
    rb: i64,
    dirs: &dyn Store,
    backups: &Backups,
    force: bool,
    items: Vec<UndoItem>,
) -> Result<()> {
    use rayon::prelude::*;
    let cache = dirs.open_batch()?;
    let undos: Vec<Undo> = items
        .into_par_iter()
        .map(|it| prepare_undo(&*cache, backups, force, it))
        .collect::<Result<_>>()?;
    if undos.iter().any(|u| u.prepared.is_some()) {
        dirs.sync()?;
    }
    {
        let tx = state.conn.transaction()?;
        for u in &undos {
            match u.item.existing {
                Some(seq) => rows::mark_step(&tx, rb, seq, u.state, &u.detail)?,
                None => {
                    let undo = NewUndo {
                        seq: u.item.seq,
                        rel: &u.item.rel,
                        target: u.item.target.as_deref(),
                        undoes_seq: u.item.undone,
                        outcome: Some((u.state, &u.detail)),
                    };
                    rows::insert_undo(&tx, rb, &undo)?;
                }
            }
        }
        tx.commit()?;
    }
    let mut collections: BTreeMap<String, CtagRenewal> = BTreeMap::new();
    let mut prepared = Vec::new();
    for u in undos {
        if let Some((folder, c)) = u.renew {
            collections.entry(folder).or_insert(c);
        }
        if let Some(p) = u.prepared {
            let seq = u.item.existing.unwrap_or(u.item.seq);
            prepared.push((seq, u.item.rel, p));
        }
    }
    let committed: Vec<Committed> = prepared
        .into_par_iter()
        .map(|(seq, rel, p)| {
            let collection = p.collection();
            let result = p.commit();
            Committed {
                seq,
                rel,
                collection,
                result,
            }
        })
        .collect();
    interrupt::test_pause("rollback-rename");
    let mut results = Vec::with_capacity(committed.len());
    for c in committed {
        let seq = c.seq;
        match c.result {
            Ok(()) => {
                let (folder, name) = split_rel(&c.rel);
                if c.collection.renewed_by(name) {
                    collections
                        .entry(folder.to_string())
                        .or_insert(c.collection);
                }
                results.push(Mark::new(seq, StepState::Done, ""));
            }
            Err(WriteError::Changed { .. }) => {
                results.push(Mark::new(seq, StepState::Skipped, undo_detail_changed()))
            }
            Err(WriteError::Failed(e)) => return Err(e),
        }
    }
    for c in collections.values() {
        c.renew()?;
    }
    if !results.is_empty() {
        dirs.sync()?;
    }
    marks::record(state, rb, results)?;
    interrupt::test_pause("rollback-batch");
    Ok(())
}

/// A rename of a rollback batch: its step, file and collection, and how it went.
struct Committed {
    seq: i64,
    rel: String,
    collection: CtagRenewal,
    result: std::result::Result<(), WriteError>,
}

/// Undoes one step that is not a store resource (a home step, a delegate database, a whole file
/// such as augments.xml), journaled on its own.
pub(super) fn undo_single(
    state: &mut State,
    rb: i64,
    dirs: Option<&dyn Store>,
    backups: &Backups,
    force: bool,
    item: UndoItem,
) -> Result<()> {
    let seq = match item.existing {
        Some(seq) => seq,
        None => {
            let undo = NewUndo {
                seq: item.seq,
                rel: &item.rel,
                target: item.target.as_deref(),
                undoes_seq: item.undone,
                outcome: None,
            };
            rows::insert_undo(&state.conn, rb, &undo)?;
            item.seq
        }
    };
    let (st, detail) = if item.action.is_file() {
        // Outside the store: the path is absolute.
        let path = PathBuf::from(&item.rel);
        let current = SideFile(&path).hash();
        if current.as_deref() == Some(item.original_sha.as_str()) {
            (StepState::Done, "already restored".to_string())
        } else if !force && current.is_none() {
            (StepState::Skipped, undo_detail_missing())
        } else if !force && current.as_deref() != Some(item.applied_sha.as_str()) {
            (StepState::Skipped, undo_detail_changed())
        } else {
            match backup_bytes(backups, &item) {
                Err(e) if force => (StepState::Skipped, e.message),
                Err(e) => {
                    return Err(Error::runtime(format!(
                    "{}: {}; `rollback --force` skips this file (reporting it) and restores the rest",
                    item.rel, e.message
                )))
                }
                Ok(bytes) => {
                    let meta = item.meta.as_deref().unwrap_or("{}");
                    super::side_files::restore_saved(SideFile(&path), &bytes, meta)?;
                    (StepState::Done, String::new())
                }
            }
        }
    } else {
        let store = dirs.ok_or_else(|| Error::runtime("the store of this run cannot be opened"))?;
        let step = HomeStep::from_row(
            item.action.as_str(),
            item.rel.clone(),
            item.target.clone(),
            item.meta.as_deref().unwrap_or("{}"),
        )?;
        store.home_step(&step, true)?;
        (StepState::Done, String::new())
    };
    rows::mark_step(&state.conn, rb, seq, st, &detail)
}

/// Whether a file's attributes are those saved in a step (a step that changed only attributes
/// is undone when they differ, though its bytes are the original ones).
pub(super) fn attrs_as_saved(now: &FileMeta, meta_json: Option<&str>) -> Result<bool> {
    let Some(json) = meta_json else {
        return Ok(false);
    };
    let saved: SavedMeta = serde_json::from_str(json)?;
    let mut now = now.xattrs.clone();
    let mut want = saved.to_meta()?.xattrs;
    now.sort();
    want.sort();
    Ok(now == want)
}
