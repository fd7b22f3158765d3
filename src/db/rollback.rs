//! `rollback` on the database: every row an apply run changed gets its old contents back, newest
//! step first — homes and rows from their journaled JSON, objects from their saved columns (text,
//! MD5, ORGANIZER) with a new revision so clients fetch the old text again. Only bookkeeping
//! (MODIFIED, revision numbers) is left newer. A row changed after the run is skipped unless
//! `--force`. Journaled and resumable like apply.

use crate::config::Config;
use crate::db::apply::{finish_run, start_or_resume, unpack_saved, ObjectWrite};
use crate::error::{Error, Result};
use crate::journal::RunSummary;
use crate::progress::Bar;
use crate::progress::Progress;
use crate::state::journal_rows;
use crate::state::pg_rows::{self, Mark, SavedStep};
use crate::state::{RunEvent, State, StepState};
use crate::store::pg::edits;
use crate::store::pg::schema::md5_hex;
use crate::store::pg::Db;
use crate::store::pg::Schema;
use crate::store::seam::{Backups, SideFile};
use std::path::Path;

const BATCH: i64 = 500;

fn err(what: &str) -> impl Fn(postgres::Error) -> Error + '_ {
    crate::store::pg::pg_err(what)
}

/// Undoes an apply run on the database (the latest when `run` is `None`).
pub fn rollback(
    progress: &dyn Progress,
    cfg: &Config,
    run: Option<i64>,
    force: bool,
) -> Result<RunSummary> {
    let mut state = State::open_existing(&cfg.state.path)?;
    let target = run_to_undo(&state, run)?;
    let store = applied_store(&state, target)?;
    let mut db = Db::open(cfg)?;
    let label = db.target.label.clone();
    if store != label {
        return Err(Error::usage(format!(
            "run {target} changed {store}, not {label}; point [store] dsn at that database"
        )));
    }
    crate::store::pg::connect::refuse_while_connected(&mut db.client, &label, force)?;
    let mut summary = RunSummary {
        kind: "rollback",
        undoes_run: Some(target),
        ..Default::default()
    };
    let Some(run_id) = start_or_resume(&state, &mut summary, &label)? else {
        finished_counts(&mut db, &state, &mut summary, target)?;
        return Ok(summary);
    };
    state.advance_run(target, RunEvent::StartRollback)?;
    let _signals = crate::interrupt::install();
    let undo = Undo {
        run_id,
        target,
        force,
    };

    // 1. Row steps (homes, uid columns), newest first, each with its undo journaled.
    let bar = progress.start("restoring", None);
    undo_rows(&mut db, &mut state, &undo, &*bar, &mut summary)?;

    // 2. Objects: the saved columns back, a batch at a time, newest first.
    if !restore_objects(&mut db, &mut state, &undo, &*bar, &mut summary)? {
        bar.finish();
        return Ok(summary);
    }
    bar.finish();
    // Undo steps an interrupted rollback left pending were looked at again above (pending undos
    // do not count as undone: their row showed whether the transaction committed); drop them.
    pg_rows::drop_pending_undos(&state.conn, run_id)?;

    // 3. The delegate database files (journaled by the file journal as 'database' steps).
    restore_databases(&state, target, cfg, force, &mut summary)?;
    finish_run(&state, run_id)?;
    state.advance_run(target, RunEvent::FinishRollback)?;
    Ok(summary)
}

/// The rollback run, the apply run it undoes, and whether `--force` restores rows changed since.
struct Undo {
    run_id: i64,
    target: i64,
    force: bool,
}

/// The apply run to undo: `run`, or the latest not rolled back (else the latest).
fn run_to_undo(state: &State, run: Option<i64>) -> Result<i64> {
    match run {
        Some(id) => Ok(id),
        None => pg_rows::apply_run_to_undo(&state.conn)?
            .ok_or_else(|| Error::usage("no applied run to roll back")),
    }
}

/// The store an apply run changed (refusing a run that is not an apply run).
fn applied_store(state: &State, target: i64) -> Result<String> {
    let Some(run) = pg_rows::run_store(&state.conn, target)? else {
        return Err(Error::usage(format!("there is no run {target}")));
    };
    if run.kind != "apply" {
        return Err(Error::usage(format!(
            "run {target} is a {}, not an apply run",
            run.kind
        )));
    }
    Ok(run.store_path)
}

/// The row steps of the apply run (done, or pending: an interrupted apply may have committed
/// them before marking them), newest first, each undone in its own transaction.
fn undo_rows(
    db: &mut Db,
    state: &mut State,
    undo: &Undo,
    bar: &dyn Bar,
    summary: &mut RunSummary,
) -> Result<()> {
    let undone = pg_rows::undone_seqs(&state.conn, undo.run_id)?;
    let steps = edits::steps(
        state,
        undo.target,
        &[StepState::Done, StepState::Pending],
        true,
    )?;
    for step in steps.into_iter().filter(|s| !undone.contains(&s.seq)) {
        undo_row(db, state, undo.run_id, &step, summary)?;
        bar.inc(1);
    }
    Ok(())
}

/// Undoes one row step: the row back as it was, unless it is no longer as the run left it.
fn undo_row(
    db: &mut Db,
    state: &mut State,
    run_id: i64,
    step: &edits::Step,
    summary: &mut RunSummary,
) -> Result<()> {
    let mut tx = db.client.transaction().map_err(err("begin"))?;
    let pk = edits::primary_key(&mut tx, &step.table)?;
    let here = if step.kind == "delete" {
        match edits::find_row(&mut tx, &step.table, &pk, &step.before)? {
            Some(_) => None,
            None => Some(String::new()),
        }
    } else {
        edits::find_row(&mut tx, &step.table, &pk, &step.after)?
    };
    let undo = match here {
        Some(ctid) => edits::undo_of(step, ctid),
        None => {
            // Not as the run left it: already restored, or someone else's change.
            let restored = edits::find_row(&mut tx, &step.table, &pk, &step.before)?.is_some();
            let detail = if restored {
                "already restored".to_string()
            } else {
                "changed after the run; left as it is".to_string()
            };
            if !restored {
                summary
                    .skipped
                    .push((format!("{} {}", step.table, step.before), detail.clone()));
            }
            // Record that this step was looked at (no undo to do).
            let seqs = edits::journal_pending(
                state,
                run_id,
                "undo",
                &[edits::undo_of(step, String::new())],
                &[Some(step.seq)],
                &step.label,
            )?;
            let mark = Mark {
                seq: seqs[0],
                state: if restored {
                    StepState::Done
                } else {
                    StepState::Skipped
                },
                detail,
            };
            edits::mark(state, run_id, &[mark])?;
            tx.commit().map_err(err("commit"))?;
            return Ok(());
        }
    };
    let seqs = edits::journal_pending(
        state,
        run_id,
        "undo",
        std::slice::from_ref(&undo),
        &[Some(step.seq)],
        &step.label,
    )?;
    let ok = edits::write(&mut tx, &undo)?;
    tx.commit().map_err(err("commit"))?;
    let mark = if ok {
        if step.table.ends_with("_HOME") {
            summary.homes_adopted += 1;
        }
        Mark::done(seqs[0])
    } else {
        summary.skipped.push((
            format!("{} {}", step.table, step.before),
            "a row with the old value exists again".into(),
        ));
        Mark::skipped(seqs[0], "a row with the old value exists again")
    };
    edits::mark(state, run_id, &[mark])?;
    Ok(())
}

/// The objects the apply run wrote, their saved columns back, a page at a time, newest first;
/// `false` when a signal stopped the run (recorded interrupted).
fn restore_objects(
    db: &mut Db,
    state: &mut State,
    undo: &Undo,
    bar: &dyn Bar,
    summary: &mut RunSummary,
) -> Result<bool> {
    let schema = db.schema.clone();
    let mut before_seq = i64::MAX;
    loop {
        let page =
            pg_rows::objects_to_restore(&state.conn, undo.target, before_seq, undo.run_id, BATCH)?;
        let Some(last) = page.last() else { break };
        before_seq = last.seq;
        for kind in ["calendar", "vcard"] {
            let items: Vec<&SavedStep> = page.iter().filter(|r| r.kind == kind).collect();
            if items.is_empty() {
                continue;
            }
            let written = restore_batch(db, state, &schema, undo, kind, &items, summary)?;
            bar.inc(written);
        }
        if crate::db::apply::stop_if_signalled(state, summary)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// An object's undo, decided: the step it undoes, its state and why, and the object to write
/// (pending) when there is one.
struct UndoStep<'s> {
    undoes: &'s SavedStep,
    state: StepState,
    detail: String,
    write: Option<i64>,
}

/// One batch of objects of a kind restored in one transaction, their undos journaled first;
/// returns how many were written.
fn restore_batch(
    db: &mut Db,
    state: &mut State,
    schema: &Schema,
    undo: &Undo,
    kind: &str,
    items: &[&SavedStep],
    summary: &mut RunSummary,
) -> Result<u64> {
    let ids: Vec<i64> = items.iter().filter_map(|r| r.key.parse().ok()).collect();
    let mut tx = db.client.transaction().map_err(err("begin"))?;
    let rows = crate::db::apply::locked_objects(&mut tx, schema, kind, &ids)?;
    let mut writes = Vec::new();
    let mut undos = Vec::new();
    for &item in items {
        let id: i64 = item.key.parse().unwrap_or_default();
        let settle = |state, detail: String| UndoStep {
            undoes: item,
            state,
            detail,
            write: None,
        };
        let Some(row) = rows.get(&id) else {
            summary
                .skipped
                .push((item.label.clone(), "deleted after the run".into()));
            undos.push(settle(StepState::Skipped, "deleted after the run".into()));
            continue;
        };
        let cur = row.text_md5.clone();
        if cur == item.before_hash {
            undos.push(settle(StepState::Done, "already restored".into()));
            continue;
        }
        if cur != item.after_hash && !undo.force {
            let why = format!("changed after the run (md5 {cur}); use --force to restore anyway");
            summary.skipped.push((item.label.clone(), why.clone()));
            undos.push(settle(StepState::Skipped, why));
            continue;
        }
        let saved = unpack_saved(&item.old_row)?;
        if md5_hex(saved.text.as_bytes()) != item.before_hash {
            return Err(Error::runtime(format!(
                "state database: the saved text of {} does not match its hash",
                item.label
            )));
        }
        writes.push(ObjectWrite {
            seq: 0,
            id,
            text: saved.text,
            md5: saved.md5,
            organizer: saved.organizer,
            expect_md5: row.md5.clone(),
            expect_text_md5: cur,
        });
        undos.push(UndoStep {
            write: Some(id),
            ..settle(StepState::Pending, String::new())
        });
    }
    // Journal the undo steps (pending) before writing.
    let pending_seqs = journal_undos(state, undo.run_id, kind, &undos)?;
    let done = crate::db::apply::write_objects(&mut tx, schema, kind, &writes)?;
    tx.commit().map_err(err("commit"))?;
    let done: std::collections::HashSet<i64> = done.into_iter().collect();
    let mut marks = Vec::new();
    for (seq, id) in pending_seqs {
        if done.contains(&id) {
            summary.written += 1;
            marks.push(Mark::done(seq));
        } else {
            marks.push(Mark::skipped(seq, "changed while restoring"));
        }
    }
    edits::mark(state, undo.run_id, &marks)?;
    Ok(writes.len() as u64)
}

/// Journals the undo steps of a batch in one state transaction; returns (seq, RESOURCE_ID) of
/// the ones to write.
fn journal_undos(
    state: &mut State,
    run_id: i64,
    kind: &str,
    undos: &[UndoStep<'_>],
) -> Result<Vec<(i64, i64)>> {
    let stx = state.conn.transaction()?;
    let mut pending_seqs = Vec::new();
    {
        let mut steps = pg_rows::StepAppender::new(&stx, run_id)?;
        for u in undos {
            let seq = steps.append(&pg_rows::NewStep {
                kind: "undo",
                table: kind,
                key: u.write.map(|i| i.to_string()).unwrap_or_default(),
                label: &u.undoes.label,
                undoes_seq: Some(u.undoes.seq),
                state: Some(u.state),
                detail: &u.detail,
                ..Default::default()
            })?;
            if let Some(id) = u.write {
                pending_seqs.push((seq, id));
            }
        }
    }
    stx.commit()?;
    Ok(pending_seqs)
}

/// For a rollback that already finished: what it did, counted from its journal (objects and
/// homes restored, steps skipped), as the run itself reported it.
fn finished_counts(db: &mut Db, state: &State, s: &mut RunSummary, target: i64) -> Result<()> {
    let run = s.run_id;
    s.finished_at = state.run_finished_at(run);
    (s.written, s.homes_adopted) = pg_rows::rollback_counts(&state.conn, run)?;
    s.skipped = pg_rows::skipped_steps(&state.conn, run)?;
    // The objects it restored, checked against the text they had before the apply run.
    let restored = pg_rows::objects_restored(&state.conn, run, target)?;
    s.checked = Some(crate::db::apply::check_hashes(db, &restored)?);
    Ok(())
}

/// Restores the delegate databases an apply run rewrote (3.x–5.x `proxies.sqlite`), through the
/// store seam and the file journal's restore.
fn restore_databases(
    state: &State,
    target: i64,
    cfg: &Config,
    force: bool,
    summary: &mut RunSummary,
) -> Result<()> {
    let backups = Backups::open(&cfg.state.path)?;
    for step in journal_rows::done_database_steps(&state.conn, target)? {
        let file = SideFile(Path::new(&step.rel));
        let cur = file.hash().unwrap_or_default();
        if cur == step.original_sha {
            continue;
        }
        if cur != step.applied_sha && !force {
            summary.skipped.push((
                step.rel.clone(),
                "changed after the run; use --force to restore anyway".into(),
            ));
            continue;
        }
        let bytes = backups.get(step.backup.as_deref().unwrap_or_default())?;
        match step.meta.as_deref() {
            Some(meta) => crate::journal::restore_saved(file, &bytes, meta)?,
            None => file.restore(&bytes, &file.meta()?)?,
        }
        summary.databases += 1;
    }
    Ok(())
}
