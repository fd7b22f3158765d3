//! `rollback`: undoes an apply or provision run, newest step first.

use super::checks::check_run;
use super::guard::refuse_while_server_runs;
use super::leftovers::remove_leftovers;
use super::resources::batches;
use super::summary::{interrupted, totals, RunSummary};
use super::undo::{undo_batch, undo_single, UndoItem};
use super::{RollbackOptions, BATCH, PAGE};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::interrupt;
use crate::progress::Progress;
use crate::state::journal_rows::{self as rows, AppliedStep, NewRun};
use crate::state::{Action, RunEvent, RunKind, RunState, State, StepState};
use crate::store::seam::{Backups, Store, StoreRoots};
use std::path::{Path, PathBuf};

/// The run `rollback` undoes when none is named: the newest apply or provision run not yet
/// rolled back, else the newest one (to report that it was rolled back).
pub(super) fn default_rollback_target(state: &State) -> Result<i64> {
    if let Some(id) = rows::newest_undoable_run(&state.conn, true)? {
        return Ok(id);
    }
    rows::newest_undoable_run(&state.conn, false)?
        .ok_or_else(|| Error::usage("no applied run to roll back"))
}

/// Undoes an apply or provision run (the latest not yet undone when `run` is `None`), newest step
/// first. Apply runs made later on the same store and not rolled back are undone first (newest
/// first), so every run's state stays true. One summary per run undone.
pub fn rollback(
    progress: &dyn Progress,
    cfg: &Config,
    opts: &RollbackOptions,
) -> Result<Vec<RunSummary>> {
    let (run, force) = (opts.run, opts.force);
    let mut state = State::open_existing(&cfg.state.path)?;
    if cfg.store.kind == crate::config::StoreKind::CalendarserverPg {
        return Ok(vec![crate::db::rollback::rollback(
            progress, cfg, run, force,
        )?]);
    }
    let target = match run {
        Some(id) => id,
        None => default_rollback_target(&state)?,
    };
    let run = rows::run_to_undo(&state.conn, target)?
        .ok_or_else(|| Error::usage(format!("there is no run {target}")))?;
    let (kind, store_path) = (run.kind, run.store_path);
    if kind == RunKind::Rollback {
        return Err(Error::usage(format!(
            "run {target} is a rollback (of run {}), not an apply or provision run; to redo what it undid, run `principal-reconciler apply` again",
            run.undoes.unwrap_or_default()
        )));
    }
    let store = PathBuf::from(&store_path);
    refuse_pruned(&state, target)?;
    let roots = crate::addressbooks::run_roots(&state, target, store)?;
    for root in roots.all() {
        refuse_while_server_runs(root, force)?;
    }
    let mut order: Vec<i64> = if kind == RunKind::Apply {
        rows::later_apply_runs(&state.conn, &store_path, target)?
    } else {
        Vec::new()
    };
    for &id in &order {
        refuse_pruned(&state, id).map_err(|e| {
            e.context(format!(
                "run {id} was applied on the same store after run {target} and must be undone first"
            ))
        })?;
    }
    order.push(target);
    let backups = Backups::open(&cfg.state.path)?;
    let _signals = interrupt::install();
    let mut out = Vec::new();
    for id in order {
        let mut s = rollback_one(progress, &mut state, &backups, id, force)?;
        if id != target {
            s.notes.push(format!(
                "run {id} was applied on the same store after run {target}: undone first, so run {target} can be undone"
            ));
        }
        let stop = s.interrupted.is_some();
        out.push(s);
        if stop {
            break;
        }
    }
    Ok(out)
}

/// A run whose journal and backups `state prune` dropped cannot be rolled back.
pub(super) fn refuse_pruned(state: &State, run: i64) -> Result<()> {
    match rows::pruned_at(&state.conn, run)? {
        Some(at) => Err(Error::usage(format!(
            "run {run} can no longer be rolled back: its journal and backups were dropped by `principal-reconciler state prune` ({at})"
        ))),
        None => Ok(()),
    }
}

/// Undoes one run, newest step first (resuming a rollback of it an interruption left unfinished).
pub(super) fn rollback_one(
    progress: &dyn Progress,
    state: &mut State,
    backups: &Backups,
    target: i64,
    force: bool,
) -> Result<RunSummary> {
    let run = rows::run_to_undo(&state.conn, target)?
        .ok_or_else(|| Error::usage(format!("there is no run {target}")))?;
    let (store_path, plan_id, finished) = (run.store_path, run.plan_id, run.finished_at);
    let store = PathBuf::from(&store_path);
    let dirs = StoreRoots::open(crate::addressbooks::run_roots(
        state,
        target,
        store.clone(),
    )?)
    .ok();
    let mut summary = RunSummary {
        kind: "rollback",
        undoes_run: Some(target),
        plan_id,
        ..Default::default()
    };
    let current = state.run_state(target)?;
    let previous = rows::latest_rollback_of(&state.conn, target);
    if current == RunState::RolledBack {
        let checked = check_run(state, dirs.as_ref().map(|d| d as &dyn Store), target, true)?;
        if checked.differing.is_empty() || !force {
            let (rb, at) = previous.unwrap_or((0, finished));
            summary.run_id = rb;
            summary.already_done = true;
            summary.finished_at = at;
            summary.state = Some(RunState::RolledBack);
            summary.checked = Some(checked);
            totals(state, &mut summary)?;
            return Ok(summary);
        }
        summary.notes.push(format!(
            "run {target} was rolled back before, but {} of its files no longer hold their original bytes: restoring them again (--force)",
            checked.differing.len()
        ));
    }
    let resumable = previous
        .map(|(id, _)| id)
        .filter(|_| current == RunState::RollingBack);
    let rb = open_rollback_run(state, resumable, plan_id, target, &store, &mut summary)?;
    summary.run_id = rb;
    if current == RunState::RolledBack {
        // A forced second rollback: the state machine goes through rolling back again.
        rows::mark_rolling_back(&state.conn, target)?;
    } else {
        state.advance_run(target, RunEvent::StartRollback)?;
    }
    // Temporary files an interrupted apply (or rollback) left beside the resources.
    if let (Some(r), Some(p)) = (&dirs, plan_id) {
        let removed = remove_leftovers(state, r, p)?;
        if removed > 0 {
            summary.notes.push(format!(
                "removed {removed} temporary file(s) an interrupted run had left in the store"
            ));
        }
    }
    let undoing = Undoing {
        rb,
        target,
        dirs: dirs.as_ref().map(|d| d as &dyn Store),
        store: &store,
        backups,
        force,
        // A forced second rollback of a rolled-back run puts back files only: its home steps
        // were undone by the first rollback.
        files_only: current == RunState::RolledBack,
    };
    if let Some(sig) = undo_steps(state, progress, &undoing)? {
        interrupted(state, &mut summary, sig)?;
        summary.state = Some(RunState::RollingBack);
        return Ok(summary);
    }
    rows::finish_run(&state.conn, rb)?;
    summary.state = Some(state.advance_run(target, RunEvent::FinishRollback)?);
    totals(state, &mut summary)?;
    Ok(summary)
}

/// The rollback run: the unfinished one of `target` (`resumable`, when its process ended before
/// it finished), else a new one.
fn open_rollback_run(
    state: &State,
    resumable: Option<i64>,
    plan_id: Option<i64>,
    target: i64,
    store: &Path,
    summary: &mut RunSummary,
) -> Result<i64> {
    if let Some(id) = resumable {
        if rows::run_unfinished(&state.conn, id)? {
            summary.resumed = true;
            summary
                .notes
                .push(format!("rollback run {id} did not finish; resuming it"));
            rows::resume_rollback_run(&state.conn, id)?;
            return Ok(id);
        }
    }
    let run = NewRun {
        kind: RunKind::Rollback,
        plan_id,
        undoes: Some(target),
        store_path: &store.to_string_lossy(),
    };
    rows::insert_run(&state.conn, &run)
}

/// What undoing a run's steps needs besides the state database.
struct Undoing<'a> {
    /// The rollback run.
    rb: i64,
    /// The run it undoes.
    target: i64,
    dirs: Option<&'a dyn Store>,
    store: &'a Path,
    backups: &'a Backups,
    force: bool,
    /// Put back files only (a forced second rollback).
    files_only: bool,
}

impl Undoing<'_> {
    /// Undoes the rewrite steps gathered so far, in batches.
    fn flush(&self, state: &mut State, batch: &mut Vec<UndoItem>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let items = std::mem::take(batch);
        let dirs = self.dirs.ok_or_else(|| {
            Error::runtime(format!("cannot open the store {}", self.store.display()))
        })?;
        for part in batches(items, |i| &i.rel) {
            undo_batch(state, self.rb, dirs, self.backups, self.force, part)?;
        }
        Ok(())
    }
}

/// Undoes the run's steps, newest first: rewrite steps in batches, the others one at a time.
/// `Some(signal)` when a signal stopped it between two steps.
fn undo_steps(state: &mut State, progress: &dyn Progress, u: &Undoing<'_>) -> Result<Option<i32>> {
    let mut next_seq = rows::last_seq(&state.conn, u.rb)?;
    let total = rows::live_steps(&state.conn, u.target)?;
    let bar = progress.start("restoring", Some(total));
    let mut batch: Vec<UndoItem> = Vec::new();
    let mut before = i64::MAX;
    loop {
        // The run's steps are read newest first a page at a time (keyset pagination on the
        // journal's primary key): a list of them all, with their saved attributes, would grow
        // with the run (199 MB at 100,000 resources).
        let page = rows::applied_steps_page(&state.conn, u.target, before, PAGE)?;
        let Some(tail) = page.last() else { break };
        before = tail.seq;
        for step in page {
            let AppliedStep {
                seq: undone_seq,
                action,
                rel,
                target: target_path,
                original_sha,
                applied_sha,
                backup,
                meta,
            } = step;
            bar.inc(1);
            if action == Action::Rewrite && backup.is_none() {
                continue; // the file already held the new bytes: nothing of ours to undo
            }
            if u.files_only && !action.is_file() {
                continue;
            }
            let existing = match rows::undo_of(&state.conn, u.rb, undone_seq)? {
                Some((_, StepState::Done | StepState::Skipped)) => continue,
                Some((seq, StepState::Pending)) => Some(seq),
                None => None,
            };
            let seq = match existing {
                Some(s) => s,
                None => {
                    next_seq += 1;
                    next_seq
                }
            };
            let item = UndoItem {
                undone: undone_seq,
                action,
                rel,
                target: target_path,
                original_sha,
                applied_sha,
                backup,
                meta,
                existing,
                seq,
            };
            if action == Action::Rewrite {
                batch.push(item);
                if batch.len() >= BATCH {
                    u.flush(state, &mut batch)?;
                }
            } else {
                u.flush(state, &mut batch)?;
                undo_single(state, u.rb, u.dirs, u.backups, u.force, item)?;
            }
            if batch.is_empty() {
                if let Some(sig) = interrupt::pending() {
                    bar.finish();
                    return Ok(Some(sig));
                }
            }
        }
    }
    u.flush(state, &mut batch)?;
    bar.finish();
    Ok(None)
}
