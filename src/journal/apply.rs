//! `apply`: carries out a stored plan, or a stage of it.

use super::checks::{check_run, check_store_matches_plan};
use super::guard::{refuse_while_server_runs, store_path_of};
use super::home_steps::adopt_homes;
use super::leftovers::remove_leftovers;
use super::resources::{apply_batch, batches, Batch, Item};
use super::side_files::apply_databases;
use super::summary::{interrupted, totals, Checked, RunSummary};
use super::todo::TodoPages;
use super::{ApplyOptions, BATCH, BATCH_FOLDERS};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::interrupt;
use crate::progress::Progress;
use crate::replay::NewBytes;
use crate::stage::{self, Layout, Request, Selection};
use crate::state::journal_rows::{self as rows, ApplyRun, NewRun, PlannedHashes};
use crate::state::{RunEvent, RunKind, RunState, RunStatus, State};
use crate::store::confined::split_rel;
use crate::store::props::{edits_from_json, AttrEdit};
use crate::store::seam::{Backups, Store, StoreRoots};
use crate::store::write::WriteOptions;
use std::path::{Path, PathBuf};

/// Carries out a stored plan, or a stage of it: the homes `opts.request` names (or the next ones
/// up to its limit), or all that is pending (see [`crate::stage`]).
pub fn apply(progress: &dyn Progress, cfg: &Config, opts: &ApplyOptions) -> Result<RunSummary> {
    if cfg.store.kind == crate::config::StoreKind::CalendarserverPg {
        if !opts.request.is_whole() {
            return Err(Error::usage(
                "apply --home / --limit (a staged migration) is not yet on a database store (`[store] kind = \"calendarserver-pg\"`): apply the whole plan",
            ));
        }
        return crate::db::apply::apply(progress, cfg, opts.plan, opts.force, opts.rehearsal);
    }
    let mut state = State::open_existing(&cfg.state.path)?;
    let (plan_id, passed_over) = state.plan_to_apply(opts.plan)?;
    let store = planned_store(&state, cfg, plan_id, opts.rehearsal)?;
    let roots = crate::addressbooks::apply_roots(&state, plan_id, cfg, opts.rehearsal)?;
    for root in roots.all() {
        refuse_while_server_runs(root, opts.force)?;
    }
    let started = std::time::Instant::now();
    let backups = Backups::open(&cfg.state.path)?;
    let dirs = StoreRoots::open(roots.clone())?;
    let mut summary = RunSummary {
        kind: "apply",
        plan_id: Some(plan_id),
        ..Default::default()
    };
    summary.notes.extend(passed_over);
    let layout = Layout::load(&state, plan_id)?;
    let plan = Planned {
        plan_id,
        layout: &layout,
        dirs: &dirs,
    };
    let Some((run_id, selection)) = open_run(&state, &plan, &opts.request, &store, &mut summary)?
    else {
        return Ok(summary);
    };
    summary.run_id = run_id;
    state.advance_run(run_id, RunEvent::StartApply)?;
    crate::addressbooks::record_run_root(&state, run_id, &roots)?;
    let _signals = interrupt::install();
    let removed = remove_leftovers(&state, &dirs, plan_id)?;
    if removed > 0 {
        summary.notes.push(format!(
            "removed {removed} temporary file(s) an interrupted run had left in the store"
        ));
    }
    let write = WriteOptions {
        xattr_prefix: cfg.store.xattr_prefix.clone(),
        plain_files: cfg.store.kind == crate::config::StoreKind::IcsDir,
    };
    let rewrites = crate::replay::PlannedRewrites::load(&state, plan_id)?;
    let batch = Batch {
        run_id,
        dirs: &dirs,
        state_dir: &cfg.state.path,
        backups: &backups,
        opts: &write,
        rewrites: &rewrites,
    };
    // 1. Steps an interruption left pending (the last batch), then 2. the plan's resources not
    //    yet journaled, in batches.
    resume_pending(&mut state, &batch, plan_id)?;
    let takes = |rel: &str| layout.takes(selection.as_ref(), rel);
    if let Some(sig) = apply_resources(&mut state, progress, &batch, plan_id, &takes)? {
        interrupted(&state, &mut summary, sig)?;
        return Ok(summary);
    }
    tracing::info!("resources: done at {:.2?}", started.elapsed());
    if let Some(sig) = interrupt::pending() {
        interrupted(&state, &mut summary, sig)?;
        return Ok(summary);
    }
    if selection.as_ref().is_none_or(|s| s.rest) {
        apply_databases(&mut state, run_id, plan_id, &backups, &mut summary)?;
    }
    let take = |home: &str| layout.takes_home(selection.as_ref(), home);
    if !adopt_homes(&mut state, run_id, plan_id, &dirs, &take, &mut summary)? {
        let sig = interrupt::pending().unwrap_or(libc::SIGINT);
        interrupted(&state, &mut summary, sig)?;
        return Ok(summary);
    }
    tracing::info!("homes adopted, run finished at {:.2?}", started.elapsed());
    finish_run(&state, plan_id, selection.is_some(), &mut summary)?;
    Ok(summary)
}

/// What the choice of a run looks at: the plan, its homes, the store's roots.
struct Planned<'a> {
    plan_id: i64,
    layout: &'a Layout,
    dirs: &'a dyn Store,
}

/// The store the plan was made for, which must be the configured one (a rehearsal works on a
/// copy of it elsewhere).
fn planned_store(state: &State, cfg: &Config, plan_id: i64, rehearsal: bool) -> Result<PathBuf> {
    let planned_store = state.plan_text(plan_id, "store_path")?;
    let store = store_path_of(cfg);
    if !rehearsal && Path::new(&planned_store) != store {
        return Err(Error::usage(format!(
            "plan {plan_id} was made for the store {planned_store}, not {}; plan again for this store",
            store.display()
        )));
    }
    Ok(store)
}

/// The run this apply carries on (an unfinished one) or starts, and the homes it takes (`None`:
/// the whole plan). `None` when nothing is pending: `summary` then says what the runs left.
fn open_run(
    state: &State,
    plan: &Planned<'_>,
    req: &Request,
    store: &Path,
    summary: &mut RunSummary,
) -> Result<Option<(i64, Option<Selection>)>> {
    let plan_id = plan.plan_id;
    let latest = rows::latest_apply_run(&state.conn, plan_id)?;
    match latest.as_ref().map(|r| (r.id, r.state)) {
        Some((_, RunState::Applying | RunState::Planned)) => {
            let run = latest.unwrap_or_else(|| unreachable!("matched above"));
            resume_run(state, run, req, summary).map(Some)
        }
        Some((id, RunState::RollingBack)) => Err(Error::usage(format!(
            "plan {plan_id} cannot be applied now: its run {id} is partly rolled back (the rollback was interrupted). Finish the rollback with `principal-reconciler rollback --run {id}`; then `apply` applies plan {plan_id} again"
        ))),
        _ => {
            let sel = stage::choose(state, plan_id, plan.layout, req, &mut summary.notes)?;
            if sel.homes.is_empty() && !sel.rest {
                if let Some(run) = latest {
                    already_applied(state, plan, run.id, run.finished_at, summary)?;
                    return Ok(None);
                }
            }
            let whole = sel.rest && sel.homes.len() == plan.layout.units.len();
            if let Some((id, RunState::RolledBack)) = latest.as_ref().map(|r| (r.id, r.state)) {
                check_store_matches_plan(state, plan.dirs, plan_id, plan.layout, &sel)?;
                summary.notes.push(format!(
                    "plan {plan_id} was applied by run {id} and rolled back; the store holds what the plan was made from again, so it is applied again by a new run"
                ));
            } else if latest.is_some() {
                summary.notes.push(format!(
                    "plan {plan_id} is partly applied; this run carries out {}",
                    if whole || stage::progress(state, plan_id)?.pending_homes.len() == sel.homes.len() { "the rest".to_string() } else { "the next stage".to_string() }
                ));
            }
            let run = NewRun {
                kind: RunKind::Apply,
                plan_id: Some(plan_id),
                undoes: None,
                store_path: &store.to_string_lossy(),
            };
            let id = rows::insert_run(&state.conn, &run)?;
            // A whole plan in one run (nothing of it in force) keeps no selection, as before
            // stages existed.
            let selection = if whole {
                None
            } else {
                stage::record(state, id, &sel)?;
                Some(sel)
            };
            Ok(Some((id, selection)))
        }
    }
}

/// Carries on an unfinished run (a crash, a kill, a signal) with the homes it took.
fn resume_run(
    state: &State,
    run: ApplyRun,
    req: &Request,
    summary: &mut RunSummary,
) -> Result<(i64, Option<Selection>)> {
    let id = run.id;
    summary.resumed = true;
    summary.notes.push(match (run.status, run.stopped_by) {
        (RunStatus::Interrupted, Some(sig)) => {
            format!("run {id} was stopped by {sig}; resuming it")
        }
        _ => format!("run {id} did not finish (its process ended without finishing: a crash or kill); resuming it"),
    });
    let selection = stage::run_selection(state, id)?;
    if !req.is_whole() {
        summary.notes.push(format!(
            "--home / --limit are not used while run {id} is unfinished: it is resumed with the homes it took; run `apply` again for the next stage"
        ));
    }
    rows::resume_apply_run(&state.conn, id)?;
    Ok((id, selection))
}

/// Nothing pending: every stage is applied. The summary of the latest run, with a check of what
/// the plan's runs wrote.
fn already_applied(
    state: &State,
    plan: &Planned<'_>,
    id: i64,
    finished: Option<String>,
    summary: &mut RunSummary,
) -> Result<()> {
    summary.run_id = id;
    summary.already_done = true;
    summary.state = Some(RunState::Applied);
    summary.finished_at = finished;
    let mut checked = Checked::default();
    let progress = stage::progress(state, plan.plan_id)?;
    for &run in &progress.runs {
        let c = check_run(state, Some(plan.dirs), run, false)?;
        checked.files += c.files;
        checked.holding += c.holding;
        checked.differing.extend(c.differing);
    }
    summary.checked = Some(checked);
    if progress.runs.len() > 1 {
        summary.stage = Some(progress);
    }
    totals(state, summary)
}

/// Where a planned resource's new bytes come from, and its attribute edits.
fn blob_of(state: &State, plan_id: i64, rel: &str) -> Result<(NewBytes, Vec<AttrEdit>)> {
    let (blob, edits) = crate::replay::planned_resource(state, plan_id, rel)?.ok_or_else(|| {
        Error::runtime(format!(
            "state database: plan {plan_id} no longer holds {rel}"
        ))
    })?;
    Ok((blob, edits_from_json(edits.as_deref())?))
}

/// The steps an interruption left pending (the last batch), carried out again.
fn resume_pending(state: &mut State, batch: &Batch<'_>, plan_id: i64) -> Result<()> {
    let pending = rows::pending_rewrites(&state.conn, batch.run_id)?;
    let mut resumed_items = Vec::with_capacity(pending.len());
    for p in pending {
        let (blob, edits) = blob_of(state, plan_id, &p.rel)?;
        resumed_items.push(Item {
            edits,
            seq: p.seq,
            rel: p.rel,
            old_sha: p.old_sha,
            new_sha: p.new_sha,
            blob,
            resumed: true,
        });
    }
    for items in batches(resumed_items, |i| &i.rel) {
        apply_batch(state, batch, items)?;
    }
    Ok(())
}

/// The plan's resources not yet journaled in this run, that this run takes, in (folder, name) order, a
/// page at a time (a to-do list of the whole plan would grow with it: about 300 B a resource),
/// in batches. `Some(signal)` when a signal stopped it between two batches.
fn apply_resources(
    state: &mut State,
    progress: &dyn Progress,
    batch: &Batch<'_>,
    plan_id: i64,
    takes: &dyn Fn(&str) -> bool,
) -> Result<Option<i32>> {
    let mut seq = rows::last_seq(&state.conn, batch.run_id)?;
    let mut todo = TodoPages::new(plan_id, batch.run_id);
    let total = todo.count(state, takes)?;
    let bar = progress.start("applying", Some(total));
    // The same batches as [`batches`] makes of the whole list: one resource may wait for the next.
    let mut carried: Option<PlannedHashes> = None;
    loop {
        let chunk = next_chunk(state, &mut todo, takes, &mut carried)?;
        if chunk.is_empty() {
            break;
        }
        if let Some(sig) = interrupt::pending() {
            bar.finish();
            return Ok(Some(sig));
        }
        let n = chunk.len() as u64;
        let mut items = Vec::with_capacity(chunk.len());
        for p in chunk {
            seq += 1;
            let (blob, edits) = blob_of(state, plan_id, &p.rel)?;
            items.push(Item {
                edits,
                seq,
                rel: p.rel,
                old_sha: p.old_sha,
                new_sha: p.new_sha,
                blob,
                resumed: false,
            });
        }
        apply_batch(state, batch, items)?;
        bar.inc(n);
    }
    bar.finish();
    Ok(None)
}

/// The next batch of to-do resources: at most [`BATCH`] of them in at most [`BATCH_FOLDERS`]
/// folders; the first one that does not fit is `carried` to the next batch.
fn next_chunk(
    state: &State,
    todo: &mut TodoPages,
    takes: &dyn Fn(&str) -> bool,
    carried: &mut Option<PlannedHashes>,
) -> Result<Vec<PlannedHashes>> {
    let mut chunk = Vec::new();
    let mut folders: std::collections::HashSet<String> = Default::default();
    loop {
        let next = match carried.take() {
            Some(t) => t,
            None => match todo.next(state, takes)? {
                Some(t) => t,
                None => break,
            },
        };
        let folder = split_rel(&next.rel).0;
        if chunk.len() >= BATCH || (!folders.contains(folder) && folders.len() >= BATCH_FOLDERS) {
            *carried = Some(next);
            break;
        }
        folders.insert(folder.to_string());
        chunk.push(next);
    }
    Ok(chunk)
}

/// Marks the run finished and fills in the whole run's counts (and, for a stage, how far the
/// plan is now).
fn finish_run(state: &State, plan_id: i64, staged: bool, summary: &mut RunSummary) -> Result<()> {
    let run_id = summary.run_id;
    rows::finish_run(&state.conn, run_id)?;
    summary.state = Some(state.advance_run(run_id, RunEvent::FinishApply)?);
    totals(state, summary)?;
    if staged {
        let p = stage::progress(state, plan_id)?;
        if !p.complete() && summary.homes_adopted > 0 {
            summary.notes.push(
                "dropbox and attachment links (X-APPLE-DROPBOX, ATTACH) in the homes not yet applied that point into the homes this stage moved stay stale until the stage of their own home rewrites them".to_string(),
            );
        }
        summary.stage = Some(p);
    }
    Ok(())
}
