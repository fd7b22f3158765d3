//! The file stores' run journal in the state database: the `runs` rows `apply` and `rollback`
//! keep, their `journal` steps, and the plan rows they carry out (`plan_resources`,
//! `plan_databases`, `plan_homes`), behind typed functions. Each takes the connection (or an
//! open transaction of it, which derefs to one), so a caller's transaction holds its statements
//! together. `crate::journal` is their only user: it holds no SQL of its own.

use super::{now_rfc3339, Action, RunKind, RunState, RunStatus, StepState};
use crate::error::Result;
use rusqlite::{params, Connection, OptionalExtension};

// ---- runs -------------------------------------------------------------------------------------

/// A plan's apply run as `apply` looks at it.
#[derive(Clone, Debug)]
pub struct ApplyRun {
    /// The run (`runs.id`).
    pub id: i64,
    /// Its lifecycle state (`applying` when none is stored).
    pub state: RunState,
    /// Its process status.
    pub status: RunStatus,
    /// The signal that stopped it.
    pub stopped_by: Option<String>,
    /// When it finished.
    pub finished_at: Option<String>,
}

/// The latest apply run of a plan.
pub fn latest_apply_run(conn: &Connection, plan_id: i64) -> Result<Option<ApplyRun>> {
    Ok(conn
        .query_row(
            "SELECT id, COALESCE(state, 'applying'), status, stopped_by, finished_at FROM runs
              WHERE kind = 'apply' AND plan_id = ?1 ORDER BY id DESC LIMIT 1",
            [plan_id],
            |r| {
                Ok(ApplyRun {
                    id: r.get(0)?,
                    state: r.get(1)?,
                    status: r.get(2)?,
                    stopped_by: r.get(3)?,
                    finished_at: r.get(4)?,
                })
            },
        )
        .optional()?)
}

/// A run to record.
pub struct NewRun<'a> {
    /// Apply or rollback.
    pub kind: RunKind,
    /// The plan it carries out (a rollback: the plan of the run it undoes).
    pub plan_id: Option<i64>,
    /// A rollback: the run it undoes.
    pub undoes: Option<i64>,
    /// The store it works on.
    pub store_path: &'a str,
}

/// Records a new run, running now (an apply starts `applying`); returns its id.
pub fn insert_run(conn: &Connection, run: &NewRun<'_>) -> Result<i64> {
    let run_state = (run.kind != RunKind::Rollback).then_some(RunState::Applying);
    conn.execute(
        "INSERT INTO runs (kind, plan_id, undoes_run, store_path, started_at, status, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            run.kind,
            run.plan_id,
            run.undoes,
            run.store_path,
            now_rfc3339(),
            RunStatus::Running,
            run_state
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

/// An unfinished apply run goes on: running again, in the `applying` state.
pub fn resume_apply_run(conn: &Connection, run_id: i64) -> Result<()> {
    conn.execute(
        "UPDATE runs SET status = 'running', stopped_by = NULL, state = 'applying' WHERE id = ?1",
        [run_id],
    )?;
    Ok(())
}

/// An unfinished rollback run goes on: running again.
pub fn resume_rollback_run(conn: &Connection, run_id: i64) -> Result<()> {
    conn.execute(
        "UPDATE runs SET status = 'running', stopped_by = NULL WHERE id = ?1",
        [run_id],
    )?;
    Ok(())
}

/// A run stopped by a signal (`name`): resumable.
pub fn interrupt_run(conn: &Connection, run_id: i64, name: &str) -> Result<()> {
    conn.execute(
        "UPDATE runs SET status = ?1, stopped_by = ?2 WHERE id = ?3",
        params![RunStatus::Interrupted, name, run_id],
    )?;
    Ok(())
}

/// A run's process finished it (now).
pub fn finish_run(conn: &Connection, run_id: i64) -> Result<()> {
    conn.execute(
        "UPDATE runs SET status = 'done', finished_at = ?1 WHERE id = ?2",
        params![now_rfc3339(), run_id],
    )?;
    Ok(())
}

/// A forced second rollback: the run goes through `rolling-back` again.
pub fn mark_rolling_back(conn: &Connection, run_id: i64) -> Result<()> {
    conn.execute(
        "UPDATE runs SET state = 'rolling-back' WHERE id = ?1",
        [run_id],
    )?;
    Ok(())
}

/// The newest apply or provision run: `open` only those not rolled back.
pub fn newest_undoable_run(conn: &Connection, open: bool) -> Result<Option<i64>> {
    let sql = if open {
        "SELECT MAX(id) FROM runs WHERE kind IN ('apply', 'provision') AND COALESCE(state, '') != 'rolled-back'"
    } else {
        "SELECT MAX(id) FROM runs WHERE kind IN ('apply', 'provision')"
    };
    Ok(conn.query_row(sql, [], |r| r.get(0))?)
}

/// A run as `rollback` looks at it before undoing it.
pub struct RunToUndo {
    /// Apply, provision or rollback.
    pub kind: RunKind,
    /// The store it worked on.
    pub store_path: String,
    /// A rollback: the run it undid.
    pub undoes: Option<i64>,
    /// The plan it carried out.
    pub plan_id: Option<i64>,
    /// When it finished.
    pub finished_at: Option<String>,
}

/// A run by id; `None` when there is none.
pub fn run_to_undo(conn: &Connection, run_id: i64) -> Result<Option<RunToUndo>> {
    Ok(conn
        .query_row(
            "SELECT kind, store_path, undoes_run, plan_id, finished_at FROM runs WHERE id = ?1",
            [run_id],
            |r| {
                Ok(RunToUndo {
                    kind: r.get(0)?,
                    store_path: r.get(1)?,
                    undoes: r.get(2)?,
                    plan_id: r.get(3)?,
                    finished_at: r.get(4)?,
                })
            },
        )
        .optional()?)
}

/// The apply runs made on a store after `run_id` and not rolled back, newest first.
pub fn later_apply_runs(conn: &Connection, store_path: &str, run_id: i64) -> Result<Vec<i64>> {
    let mut st = conn.prepare(
        "SELECT id FROM runs WHERE kind = 'apply' AND store_path = ?1 AND id > ?2
           AND COALESCE(state, 'applying') != 'rolled-back' ORDER BY id DESC",
    )?;
    let rows = st.query_map(params![store_path, run_id], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// When `state prune` dropped a run's journal and backups (`None`: it did not).
pub fn pruned_at(conn: &Connection, run_id: i64) -> Result<Option<String>> {
    Ok(
        conn.query_row("SELECT pruned_at FROM runs WHERE id = ?1", [run_id], |r| {
            r.get(0)
        })?,
    )
}

/// The latest rollback run of a run: its id and when it finished.
pub fn latest_rollback_of(conn: &Connection, run_id: i64) -> Option<(i64, Option<String>)> {
    conn.query_row(
        "SELECT id, finished_at FROM runs WHERE kind = 'rollback' AND undoes_run = ?1 ORDER BY id DESC LIMIT 1",
        [run_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .ok()
}

/// Whether a run's process has not finished it.
pub fn run_unfinished(conn: &Connection, run_id: i64) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT status != 'done' FROM runs WHERE id = ?1",
        [run_id],
        |r| r.get(0),
    )?)
}

// ---- a whole-file run (augments.xml) ----------------------------------------------------------

/// The one step of a run that replaces a whole file.
pub struct FileStep<'a> {
    /// The run's kind (`provision`).
    pub kind: &'a str,
    /// The file (absolute).
    pub path: &'a str,
    /// The folder it is in (the run's `store_path`).
    pub folder: &'a str,
    /// The SHA-256 of its original bytes (also the backup's name).
    pub before: &'a str,
    /// The SHA-256 of its new bytes.
    pub after: &'a str,
    /// The saved owner, mode and attributes (JSON).
    pub meta: &'a str,
}

/// Records a run replacing a whole file and its step, pending; returns the run's id.
pub fn insert_file_run(conn: &Connection, f: &FileStep<'_>) -> Result<i64> {
    conn.execute(
        "INSERT INTO runs (kind, store_path, started_at, status, state) VALUES (?1, ?2, ?3, 'running', 'applying')",
        params![f.kind, f.folder, now_rfc3339()],
    )?;
    let run_id = conn.last_insert_rowid();
    conn.execute(
        "INSERT INTO journal (run_id, seq, action, rel_path, before_sha256, after_sha256, backup_sha256, meta_json, state)
         VALUES (?1, 1, 'file', ?2, ?3, ?4, ?5, ?6, 'pending')",
        params![run_id, f.path, f.before, f.after, f.before, f.meta],
    )?;
    Ok(run_id)
}

/// The whole-file run's step is done, and the run applied.
pub fn finish_file_run(conn: &Connection, run_id: i64) -> Result<()> {
    mark_done(conn, run_id, 1)?;
    conn.execute(
        "UPDATE runs SET status = 'done', state = 'applied', finished_at = ?1 WHERE id = ?2",
        params![now_rfc3339(), run_id],
    )?;
    Ok(())
}

// ---- journal steps ----------------------------------------------------------------------------

/// The highest step number of a run (0 when it has none).
pub fn last_seq(conn: &Connection, run_id: i64) -> Result<i64> {
    Ok(conn.query_row(
        "SELECT COALESCE(MAX(seq), 0) FROM journal WHERE run_id = ?1",
        [run_id],
        |r| r.get(0),
    )?)
}

/// A step is done.
pub fn mark_done(conn: &Connection, run_id: i64, seq: i64) -> Result<()> {
    conn.execute(
        "UPDATE journal SET state = 'done' WHERE run_id = ?1 AND seq = ?2",
        params![run_id, seq],
    )?;
    Ok(())
}

/// A step's outcome and why.
pub fn mark_step(
    conn: &Connection,
    run_id: i64,
    seq: i64,
    state: StepState,
    detail: &str,
) -> Result<()> {
    conn.prepare_cached(
        "UPDATE journal SET state = ?1, detail = ?2 WHERE run_id = ?3 AND seq = ?4",
    )?
    .execute(params![state, detail, run_id, seq])?;
    Ok(())
}

/// A rewrite step of an apply run, as it is recorded.
pub struct NewRewrite<'a> {
    /// The step number.
    pub seq: i64,
    /// The resource.
    pub rel: &'a str,
    /// Its SHA-256 as planned, and the new bytes'.
    pub old_sha: &'a str,
    /// The SHA-256 of the bytes it writes.
    pub new_sha: &'a str,
    /// The backup of its original bytes (`None`: they were not saved, nothing is written).
    pub backup: Option<&'a str>,
    /// The saved owner, mode and attributes (JSON).
    pub meta: Option<&'a str>,
    /// Pending, done or skipped.
    pub state: Option<StepState>,
    /// Why (a skipped step), or a remark.
    pub detail: &'a str,
}

/// Records a rewrite step.
pub fn insert_rewrite(conn: &Connection, run_id: i64, s: &NewRewrite<'_>) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO journal (run_id, seq, action, rel_path, before_sha256, after_sha256, backup_sha256, meta_json, state, detail)
         VALUES (?1, ?2, 'rewrite', ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        run_id, s.seq, s.rel, s.old_sha, s.new_sha, s.backup, s.meta, s.state, s.detail
    ])?;
    Ok(())
}

/// A rewrite step an interruption left pending.
pub struct PendingRewrite {
    /// The step number.
    pub seq: i64,
    /// The resource.
    pub rel: String,
    /// Its SHA-256 as planned.
    pub old_sha: String,
    /// The SHA-256 of the bytes it writes.
    pub new_sha: String,
}

/// The rewrite steps of a run left pending, in order.
pub fn pending_rewrites(conn: &Connection, run_id: i64) -> Result<Vec<PendingRewrite>> {
    let mut st = conn.prepare(
        "SELECT seq, rel_path, before_sha256, after_sha256 FROM journal WHERE run_id = ?1 AND state = 'pending' AND action = 'rewrite' ORDER BY seq",
    )?;
    let rows = st.query_map([run_id], |r| {
        Ok(PendingRewrite {
            seq: r.get(0)?,
            rel: r.get(1)?,
            old_sha: r.get(2)?,
            new_sha: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The steps of a run that were skipped: path and why, in order.
pub fn skipped_steps(conn: &Connection, run_id: i64) -> Result<Vec<(String, String)>> {
    let mut st = conn.prepare(
        "SELECT rel_path, detail FROM journal WHERE run_id = ?1 AND state = 'skipped' ORDER BY seq",
    )?;
    let rows = st.query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A run's counts, from its journal.
#[derive(Clone, Copy, Debug, Default)]
pub struct Totals {
    /// Resources written (an apply) or restored (a rollback).
    pub written: u64,
    /// Resources already as the step would leave them.
    pub unchanged: u64,
    /// Homes adopted (an apply) or home moves undone (a rollback).
    pub homes_adopted: u64,
    /// Databases rewritten (an apply).
    pub databases: u64,
}

/// The counts of an apply run, or of a rollback run (`rollback`).
pub fn totals(conn: &Connection, run_id: i64, rollback: bool) -> Result<Totals> {
    let count = |sql: &str| -> Result<u64> {
        Ok(conn.query_row(sql, [run_id], |r| r.get::<_, i64>(0))? as u64)
    };
    if rollback {
        return Ok(Totals {
            written: count(
                "SELECT COUNT(*) FROM journal u JOIN runs r ON r.id = u.run_id
                   JOIN journal j ON j.run_id = r.undoes_run AND j.seq = u.undoes_seq
                  WHERE u.run_id = ?1 AND u.state = 'done' AND u.detail = ''
                    AND j.action IN ('rewrite', 'database', 'file')",
            )?,
            unchanged: count(
                "SELECT COUNT(*) FROM journal WHERE run_id = ?1 AND state = 'done' AND detail = 'already restored'",
            )?,
            homes_adopted: count(
                "SELECT COUNT(*) FROM journal u JOIN runs r ON r.id = u.run_id
                   JOIN journal j ON j.run_id = r.undoes_run AND j.seq = u.undoes_seq
                  WHERE u.run_id = ?1 AND u.state = 'done' AND j.action = 'move'",
            )?,
            databases: 0,
        });
    }
    Ok(Totals {
        written: count(
            "SELECT COUNT(*) FROM journal WHERE run_id = ?1 AND action = 'rewrite' AND state = 'done' AND backup_sha256 IS NOT NULL",
        )?,
        unchanged: count(
            "SELECT COUNT(*) FROM journal WHERE run_id = ?1 AND action = 'rewrite' AND state = 'done' AND backup_sha256 IS NULL",
        )?,
        homes_adopted: count(
            "SELECT COUNT(DISTINCT detail) FROM journal WHERE run_id = ?1 AND action = 'move' AND state = 'done' AND detail LIKE 'home:%'",
        )?,
        databases: count(
            "SELECT COUNT(*) FROM journal WHERE run_id = ?1 AND action = 'database' AND state = 'done'",
        )?,
    })
}

/// The home moves a run made, in order: from and to.
pub fn done_moves(conn: &Connection, run_id: i64) -> Result<Vec<(String, String)>> {
    let mut st = conn.prepare(
        "SELECT rel_path, target_path FROM journal WHERE run_id = ?1 AND action = 'move' AND state = 'done' ORDER BY seq",
    )?;
    let rows = st.query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A file a run replaced (a resource, a database, a whole file).
pub struct WrittenFile {
    /// Rewrite, database or file.
    pub action: Action,
    /// The resource (relative) or the file (absolute).
    pub rel: String,
    /// Its SHA-256 before the run.
    pub before: String,
    /// Its SHA-256 after the run.
    pub after: String,
}

/// The files a run replaced (with a backup), in order.
pub fn written_files(conn: &Connection, run_id: i64) -> Result<Vec<WrittenFile>> {
    let mut st = conn.prepare(
        "SELECT action, rel_path, before_sha256, after_sha256 FROM journal
          WHERE run_id = ?1 AND action IN ('rewrite', 'database', 'file') AND state = 'done'
            AND backup_sha256 IS NOT NULL ORDER BY seq",
    )?;
    let rows = st.query_map([run_id], |r| {
        Ok(WrittenFile {
            action: r.get(0)?,
            rel: r.get(1)?,
            before: r.get(2)?,
            after: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

// ---- the plan rows apply carries out ----------------------------------------------------------

/// A resource of a plan: its path, its SHA-256 as planned and the one it is rewritten to.
#[derive(Clone, Debug)]
pub struct PlannedHashes {
    /// The resource.
    pub rel: String,
    /// Its SHA-256 as planned.
    pub old_sha: String,
    /// The SHA-256 of its new bytes.
    pub new_sha: String,
}

/// A page of a plan's resources with their hashes, in (folder, name) order after `after`
/// (`None`: from the first).
pub fn planned_hashes_page(
    conn: &Connection,
    plan_id: i64,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<PlannedHashes>> {
    page(
        conn,
        (PAGE_HASHES, ""),
        (plan_id, after, limit, 0),
        planned_hashes_row,
    )
}

fn planned_hashes_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PlannedHashes> {
    Ok(PlannedHashes {
        rel: r.get(0)?,
        old_sha: r.get(1)?,
        new_sha: r.get(2)?,
    })
}

/// A page of the plan's resources in (folder, name) order after `after` (`None`: from the
/// first), read through the indexes of `plan_folders` and `plan_items`, so each page costs its
/// own rows, not a sort of the whole plan (what the `plan_resources` view's `ORDER BY rel_path`
/// needs): first the rest of `after`'s folder (`name > ?3`), then the folders after it. `and`
/// filters further (with `?5` = `extra`); `row` reads `columns`.
fn page<T>(
    conn: &Connection,
    (columns, and): (&str, &str),
    (plan_id, after, limit, extra): (i64, Option<&str>, i64, i64),
    row: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<T> + Copy,
) -> Result<Vec<T>> {
    const FROM: &str =
        "FROM plan_folders f JOIN plan_items i ON i.plan_id = f.plan_id AND i.folder_id = f.id
          WHERE f.plan_id = ?1";
    let (folder, name) = after.map_or(("", None), |a| {
        let (f, n) = super::plan_rows::split_path(a);
        (f, Some(n))
    });
    let run = |sql: String, name: Option<&str>, limit: i64| -> Result<Vec<T>> {
        let mut st = conn.prepare_cached(&sql)?;
        let rows = if and.contains("?5") {
            st.query_map(params![plan_id, folder, name, limit, extra], row)?
                .collect::<rusqlite::Result<Vec<_>>>()?
        } else {
            st.query_map(params![plan_id, folder, name, limit], row)?
                .collect::<rusqlite::Result<Vec<_>>>()?
        };
        Ok(rows)
    };
    let mut out = Vec::new();
    if name.is_some() {
        out = run(
            format!("SELECT {columns} {FROM} AND f.path = ?2 AND i.name > ?3{and} ORDER BY i.name LIMIT ?4"),
            name,
            limit,
        )?;
    }
    let left = limit - out.len() as i64;
    if left > 0 {
        // `?3` is not used here: bound as NULL to keep the numbering.
        let op = if name.is_some() { ">" } else { ">=" };
        out.extend(run(
            format!(
                "SELECT {columns} {FROM} AND f.path {op} ?2{and} ORDER BY f.path, i.name LIMIT ?4"
            ),
            None,
            left,
        )?);
    }
    Ok(out)
}

const PAGE_HASHES: &str = "f.path || i.name,
    CASE WHEN typeof(i.old_sha) = 'blob' THEN lower(hex(i.old_sha)) ELSE i.old_sha END,
    CASE WHEN typeof(i.new_sha) = 'blob' THEN lower(hex(i.new_sha)) ELSE i.new_sha END";

/// Not yet journaled by run `?5`.
const NOT_JOURNALED: &str = " AND NOT EXISTS (SELECT 1 FROM journal j WHERE j.run_id = ?5 AND j.rel_path = f.path || i.name)";

/// A page of a plan's resource paths, in (folder, name) order: after `after` (`None`: from the
/// first).
pub fn resource_paths_page(
    conn: &Connection,
    plan_id: i64,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<String>> {
    page(
        conn,
        ("f.path || i.name", ""),
        (plan_id, after, limit, 0),
        |r| r.get(0),
    )
}

/// Where a page of a plan's resources not yet journaled by a run starts.
#[derive(Clone, Copy, Debug)]
pub struct TodoPage<'a> {
    /// The plan.
    pub plan_id: i64,
    /// The run.
    pub run_id: i64,
    /// After this path (`None`: from the first).
    pub after: Option<&'a str>,
    /// At most this many.
    pub limit: i64,
}

/// A page of the paths of a plan's resources a run has not journaled yet, in (folder, name)
/// order.
pub fn todo_paths(conn: &Connection, p: &TodoPage<'_>) -> Result<Vec<String>> {
    page(
        conn,
        ("f.path || i.name", NOT_JOURNALED),
        (p.plan_id, p.after, p.limit, p.run_id),
        |r| r.get(0),
    )
}

/// A page of a plan's resources a run has not journaled yet, in (folder, name) order.
pub fn todo_resources(conn: &Connection, p: &TodoPage<'_>) -> Result<Vec<PlannedHashes>> {
    page(
        conn,
        (PAGE_HASHES, NOT_JOURNALED),
        (p.plan_id, p.after, p.limit, p.run_id),
        planned_hashes_row,
    )
}

/// The databases a plan changes: path and SHA-256 as planned.
pub fn changed_databases(conn: &Connection, plan_id: i64) -> Result<Vec<(String, String)>> {
    let mut st = conn.prepare(
        "SELECT path, old_sha256 FROM plan_databases WHERE plan_id = ?1 AND changes + dropped > 0",
    )?;
    let rows = st.query_map([plan_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

// ---- database steps ---------------------------------------------------------------------------

/// A database step an interruption left pending.
pub struct PendingDatabase {
    /// The step number.
    pub seq: i64,
    /// The database (absolute).
    pub path: String,
    /// Its SHA-256 as planned.
    pub before: String,
}

/// The database steps of a run left pending.
pub fn pending_databases(conn: &Connection, run_id: i64) -> Result<Vec<PendingDatabase>> {
    let mut st = conn.prepare(
        "SELECT seq, rel_path, before_sha256 FROM journal WHERE run_id = ?1 AND state = 'pending' AND action = 'database'",
    )?;
    let rows = st.query_map([run_id], |r| {
        Ok(PendingDatabase {
            seq: r.get(0)?,
            path: r.get(1)?,
            before: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The planned rewrite of a database (JSON).
pub fn database_plan(conn: &Connection, plan_id: i64, path: &str) -> Result<String> {
    Ok(conn.query_row(
        "SELECT plan_json FROM plan_databases WHERE plan_id = ?1 AND path = ?2",
        params![plan_id, path],
        |r| r.get(0),
    )?)
}

/// A database step is done: its file now hashes to `after`.
pub fn database_done(conn: &Connection, run_id: i64, seq: i64, after: &str) -> Result<()> {
    conn.execute(
        "UPDATE journal SET state = 'done', after_sha256 = ?1 WHERE run_id = ?2 AND seq = ?3",
        params![after, run_id, seq],
    )?;
    Ok(())
}

/// A database a plan changes that a run has not journaled yet.
pub struct DatabaseTodo {
    /// The database (absolute).
    pub path: String,
    /// Its SHA-256 as planned.
    pub old_sha: String,
    /// Its planned rewrite (JSON).
    pub plan_json: String,
}

/// The databases a plan changes that a run has not journaled yet, in path order.
pub fn databases_todo(conn: &Connection, plan_id: i64, run_id: i64) -> Result<Vec<DatabaseTodo>> {
    let mut st = conn.prepare(
        "SELECT d.path, d.old_sha256, d.plan_json FROM plan_databases d
         WHERE d.plan_id = ?1 AND d.changes + d.dropped > 0
           AND NOT EXISTS (SELECT 1 FROM journal j WHERE j.run_id = ?2 AND j.rel_path = d.path)
         ORDER BY d.path",
    )?;
    let rows = st.query_map(params![plan_id, run_id], |r| {
        Ok(DatabaseTodo {
            path: r.get(0)?,
            old_sha: r.get(1)?,
            plan_json: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A database step as it is recorded.
pub struct NewDatabaseStep<'a> {
    /// The step number.
    pub seq: i64,
    /// The database (absolute).
    pub path: &'a str,
    /// Its SHA-256 as planned.
    pub before: &'a str,
    /// The backup of its bytes and the saved owner, mode and attributes (JSON); `None`: the
    /// database changed since the plan and the step is skipped.
    pub backup: Option<(&'a str, &'a str)>,
}

/// Records a database step: pending with its backup, or skipped (changed since the plan).
pub fn insert_database_step(conn: &Connection, run_id: i64, s: &NewDatabaseStep<'_>) -> Result<()> {
    match s.backup {
        None => conn.execute(
            "INSERT INTO journal (run_id, seq, action, rel_path, before_sha256, state, detail) VALUES (?1, ?2, 'database', ?3, ?4, 'skipped', 'changed since plan')",
            params![run_id, s.seq, s.path, s.before],
        )?,
        Some((backup, meta)) => conn.execute(
            "INSERT INTO journal (run_id, seq, action, rel_path, before_sha256, backup_sha256, meta_json, state) VALUES (?1, ?2, 'database', ?3, ?4, ?5, ?6, 'pending')",
            params![run_id, s.seq, s.path, s.before, backup, meta],
        )?,
    };
    Ok(())
}

// ---- home steps -------------------------------------------------------------------------------

/// A home step (mkdir, move, xattr, rmdir) as it is recorded, pending.
pub struct NewHomeStep<'a> {
    /// The step's action.
    pub action: &'a str,
    /// The folder it acts on.
    pub rel: &'a str,
    /// Where a move puts it.
    pub target: Option<&'a str>,
    /// What it needs to be undone (JSON).
    pub meta: Option<&'a str>,
    /// `home:<old path>`: the home it adopts.
    pub detail: &'a str,
}

/// Records a home step as the run's next, pending; returns its number.
pub fn insert_home_step(conn: &Connection, run_id: i64, s: &NewHomeStep<'_>) -> Result<i64> {
    let seq = last_seq(conn, run_id)? + 1;
    conn.execute(
        "INSERT INTO journal (run_id, seq, action, rel_path, target_path, meta_json, state, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7)",
        params![run_id, seq, s.action, s.rel, s.target, s.meta, s.detail],
    )?;
    Ok(seq)
}

/// A home step an interruption left pending.
pub struct PendingHomeStep {
    /// The step number.
    pub seq: i64,
    /// Its action.
    pub action: String,
    /// The folder it acts on.
    pub rel: String,
    /// Where a move puts it.
    pub target: Option<String>,
    /// What it needs to be undone (JSON, `{}` when none).
    pub meta: String,
}

/// The home steps of a run left pending, in order.
pub fn pending_home_steps(conn: &Connection, run_id: i64) -> Result<Vec<PendingHomeStep>> {
    let mut st = conn.prepare(
        "SELECT seq, action, rel_path, target_path, COALESCE(meta_json, '{}') FROM journal
         WHERE run_id = ?1 AND state = 'pending' AND action IN ('mkdir', 'move', 'xattr', 'rmdir') ORDER BY seq",
    )?;
    let rows = st.query_map([run_id], |r| {
        Ok(PendingHomeStep {
            seq: r.get(0)?,
            action: r.get(1)?,
            rel: r.get(2)?,
            target: r.get(3)?,
            meta: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A calendar home of a plan that apply moves to its new GUID's place.
pub struct HomeToAdopt {
    /// Where it is now.
    pub old_rel: String,
    /// Its layout (`hashed`, `flat`, …).
    pub layout: String,
    /// The id it is kept under.
    pub old_id: String,
    /// Its owner's GUID now.
    pub new_guid: String,
}

/// The calendar homes of a plan to adopt, in path order.
pub fn homes_to_adopt(conn: &Connection, plan_id: i64) -> Result<Vec<HomeToAdopt>> {
    let mut st = conn.prepare(
        "SELECT rel_path, layout, old_id, new_guid FROM plan_homes
         WHERE plan_id = ?1 AND new_guid IS NOT NULL AND (outcome = 'moved' OR layout != 'hashed') ORDER BY rel_path",
    )?;
    let rows = st.query_map([plan_id], |r| {
        Ok(HomeToAdopt {
            old_rel: r.get(0)?,
            layout: r.get(1)?,
            old_id: r.get(2)?,
            new_guid: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The address-book homes of a plan to adopt, in path order: where each is now and its owner's
/// GUID now.
pub fn addressbook_homes_to_adopt(
    conn: &Connection,
    plan_id: i64,
) -> Result<Vec<(String, String)>> {
    let mut st = conn.prepare(
        "SELECT rel_path, new_guid FROM plan_addressbook_homes
         WHERE plan_id = ?1 AND new_guid IS NOT NULL AND (outcome = 'moved' OR layout != 'hashed') ORDER BY rel_path",
    )?;
    let rows = st.query_map([plan_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

// ---- undo steps -------------------------------------------------------------------------------

/// A step of the run a rollback undoes, as it was recorded.
pub struct AppliedStep {
    /// The step number.
    pub seq: i64,
    /// Its action.
    pub action: Action,
    /// The resource, folder or file.
    pub rel: String,
    /// Where a move put it.
    pub target: Option<String>,
    /// The SHA-256 before the run.
    pub original_sha: String,
    /// The SHA-256 the run wrote.
    pub applied_sha: String,
    /// The backup of the original bytes.
    pub backup: Option<String>,
    /// The saved owner, mode and attributes (JSON).
    pub meta: Option<String>,
}

/// A page of a run's done or pending steps before `before`, newest first.
pub fn applied_steps_page(
    conn: &Connection,
    run_id: i64,
    before: i64,
    limit: i64,
) -> Result<Vec<AppliedStep>> {
    let mut st = conn.prepare_cached(
        "SELECT seq, action, rel_path, target_path, before_sha256, after_sha256, backup_sha256, meta_json FROM journal
         WHERE run_id = ?1 AND seq < ?2 AND state IN ('done', 'pending') ORDER BY seq DESC LIMIT ?3",
    )?;
    let rows = st.query_map(params![run_id, before, limit], applied_step_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The database steps of a run done with a backup, newest first (what a database store's
/// rollback puts back).
pub fn done_database_steps(conn: &Connection, run_id: i64) -> Result<Vec<AppliedStep>> {
    let mut st = conn.prepare(
        "SELECT seq, action, rel_path, target_path, before_sha256, after_sha256, backup_sha256, meta_json FROM journal
         WHERE run_id = ?1 AND action = 'database' AND state = 'done' AND backup_sha256 IS NOT NULL ORDER BY seq DESC",
    )?;
    let rows = st.query_map([run_id], applied_step_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// An [`AppliedStep`] from its eight columns, in the order the queries above select them.
fn applied_step_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AppliedStep> {
    Ok(AppliedStep {
        seq: r.get(0)?,
        action: r.get(1)?,
        rel: r.get(2)?,
        target: r.get(3)?,
        original_sha: r.get(4)?,
        applied_sha: r.get(5)?,
        backup: r.get(6)?,
        meta: r.get(7)?,
    })
}

/// How many steps of a run are done or pending.
pub fn live_steps(conn: &Connection, run_id: i64) -> Result<u64> {
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM journal WHERE run_id = ?1 AND state IN ('done', 'pending')",
        [run_id],
        |r| r.get(0),
    )?)
}

/// The undo step a rollback run recorded for a step (found through `journal_by_undone`): its
/// number and state.
pub fn undo_of(conn: &Connection, rb: i64, undone_seq: i64) -> Result<Option<(i64, StepState)>> {
    let mut st = conn.prepare_cached(
        "SELECT seq, state FROM journal INDEXED BY journal_by_undone
         WHERE run_id = ?1 AND undoes_seq = ?2 AND action = 'undo'
         ORDER BY seq DESC LIMIT 1",
    )?;
    Ok(st
        .query_row(params![rb, undone_seq], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

/// An undo step as it is recorded.
pub struct NewUndo<'a> {
    /// The step number.
    pub seq: i64,
    /// The resource, folder or file.
    pub rel: &'a str,
    /// Where a move put it.
    pub target: Option<&'a str>,
    /// The step it undoes.
    pub undoes_seq: i64,
    /// Its state and why; `None`: pending, with no remark yet.
    pub outcome: Option<(StepState, &'a str)>,
}

/// Records an undo step.
pub fn insert_undo(conn: &Connection, run_id: i64, u: &NewUndo<'_>) -> Result<()> {
    match u.outcome {
        Some((state, detail)) => conn.execute(
            "INSERT INTO journal (run_id, seq, action, rel_path, target_path, undoes_seq, state, detail) VALUES (?1, ?2, 'undo', ?3, ?4, ?5, ?6, ?7)",
            params![run_id, u.seq, u.rel, u.target, u.undoes_seq, state, detail],
        )?,
        None => conn.execute(
            "INSERT INTO journal (run_id, seq, action, rel_path, target_path, undoes_seq, state) VALUES (?1, ?2, 'undo', ?3, ?4, ?5, 'pending')",
            params![run_id, u.seq, u.rel, u.target, u.undoes_seq],
        )?,
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::plan_rows::{begin_plan, ChangeRow, NewPlan, PlanRows, ResourceRow};
    use crate::state::State;

    #[test]
    fn pages_go_through_every_folder_in_folder_and_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::open(dir.path()).unwrap();
        let tx = state.conn.transaction().unwrap();
        let plan = NewPlan {
            created_at: "t",
            store_kind: "ics-dir",
            store_path: "/s",
            address_form: "keep",
            directory: "d",
        };
        let plan_id = begin_plan(&tx, &plan).unwrap();
        let sha = "ab".repeat(32);
        let mut rels: Vec<String> = (0..7).map(|i| format!("a/{i}.ics")).collect();
        rels.extend(["top.ics", "a/c/w.ics", "b/x.ics", "b/y.ics"].map(String::from));
        {
            let mut rows = PlanRows::new(&tx, plan_id).unwrap();
            for rel in &rels {
                let change = ChangeRow {
                    line: 3,
                    property: "ORGANIZER",
                    old_value: "mailto:a@x",
                    new_value: "urn:uuid:A",
                    old_line: "",
                    new_line: "",
                };
                let row = ResourceRow {
                    rel_path: rel,
                    old_sha256: &sha,
                    new_sha256: &sha,
                    new_bytes: None,
                    rewrite_pass: Some(0),
                    attr_edits: None,
                };
                rows.insert(&row, &[change]).unwrap();
            }
            rows.finish().unwrap();
        }
        tx.commit().unwrap();
        // Pages of 3: one folder (a/, 7 resources) spans pages, and pages span folders.
        let (mut paths, mut todo) = (Vec::new(), Vec::new());
        let mut after: Option<String> = None;
        loop {
            let page = resource_paths_page(&state.conn, plan_id, after.as_deref(), 3).unwrap();
            let p = TodoPage {
                plan_id,
                run_id: 1,
                after: after.as_deref(),
                limit: 3,
            };
            let t = todo_resources(&state.conn, &p).unwrap();
            assert_eq!(
                t.iter().map(|t| t.rel.clone()).collect::<Vec<_>>(),
                todo_paths(&state.conn, &p).unwrap()
            );
            todo.extend(t.into_iter().map(|t| t.rel));
            let Some(last) = page.last() else { break };
            after = Some(last.clone());
            paths.extend(page);
        }
        let mut expected: Vec<&str> = vec!["top.ics"];
        expected.extend(["a/0.ics", "a/1.ics", "a/2.ics", "a/3.ics", "a/4.ics"]);
        expected.extend(["a/5.ics", "a/6.ics", "a/c/w.ics", "b/x.ics", "b/y.ics"]);
        assert_eq!(paths, expected);
        assert_eq!(todo, expected, "a run with no steps has everything to do");
    }
}
