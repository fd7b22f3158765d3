//! The database store's rows in the state database (migration 0008): the plan tables
//! `pg_plans`, `pg_plan_principals`, `pg_plan_objects`, `pg_plan_homes`, `pg_plan_values`, and
//! the run journal `pg_journal`, behind typed functions. Each takes the connection (or an open
//! transaction of it, which derefs to one), so a caller's transaction holds its statements
//! together. `db::plan` writes the plan rows, `db::apply` and `db::rollback` read them and keep
//! the journal: this is where the database store's plan and apply meet.

use super::{RunStatus, StepState};
use crate::address::Principal;
use crate::error::Result;
use rusqlite::{params, Connection, Statement};
use std::collections::{HashMap, HashSet};

// ---- plans ------------------------------------------------------------------------------------

/// The database a plan was made on (`pg_plans`).
pub struct PlanTarget {
    /// The database's label (`postgresql://user@host:port/db`).
    pub database: String,
    /// CalendarServer's schema version at planning.
    pub schema_version: u32,
}

/// Records the database a plan is made on.
pub fn insert_plan(conn: &Connection, plan_id: i64, target: &PlanTarget) -> Result<()> {
    conn.execute(
        "INSERT INTO pg_plans (plan_id, schema_version, database) VALUES (?1, ?2, ?3)",
        params![plan_id, target.schema_version, target.database],
    )?;
    Ok(())
}

/// The database a plan was made on.
pub fn plan_target(conn: &Connection, plan_id: i64) -> Result<PlanTarget> {
    Ok(conn.query_row(
        "SELECT database, schema_version FROM pg_plans WHERE plan_id = ?1",
        [plan_id],
        |r| {
            Ok(PlanTarget {
                database: r.get(0)?,
                schema_version: r.get(1)?,
            })
        },
    )?)
}

/// Stores the resolver a plan's rewrites used, for apply to replay them exactly.
pub fn insert_principals(
    conn: &Connection,
    plan_id: i64,
    resolver: &HashMap<String, Principal>,
) -> Result<()> {
    let mut ins = conn.prepare(
        "INSERT INTO pg_plan_principals (plan_id, key, principal_json) VALUES (?1, ?2, ?3)",
    )?;
    for (k, p) in resolver {
        ins.execute(params![plan_id, k, serde_json::to_string(p)?])?;
    }
    Ok(())
}

/// The resolver a plan's rewrites used (`pg_plan_principals`), keyed by normalised address.
pub fn plan_principals(conn: &Connection, plan_id: i64) -> Result<HashMap<String, Principal>> {
    let mut st =
        conn.prepare("SELECT key, principal_json FROM pg_plan_principals WHERE plan_id = ?1")?;
    let rows = st.query_map([plan_id], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = HashMap::new();
    for r in rows {
        let (k, j) = r?;
        out.insert(k, serde_json::from_str(&j)?);
    }
    Ok(out)
}

/// One planned object (`pg_plan_objects`): a calendar object or card whose text changes.
#[derive(Clone, Debug, Default)]
pub struct PlannedObject {
    /// `calendar` or `vcard`.
    pub kind: String,
    /// Its RESOURCE_ID.
    pub id: i64,
    /// owner/collection/name, for reports.
    pub label: String,
    /// md5 of the text as planned.
    pub old_text_md5: String,
    /// md5 of the text after the rewrite.
    pub new_text_md5: String,
    /// The MD5 (ETag) column as planned.
    pub old_md5: String,
    /// The MD5 column after the rewrite.
    pub new_md5: String,
}

/// A planned object to store, borrowed (planning stores many).
pub struct NewObject<'a> {
    /// `calendar` or `vcard`.
    pub kind: &'a str,
    /// Its RESOURCE_ID.
    pub id: i64,
    /// owner/collection/name, for reports.
    pub label: &'a str,
    /// md5 of the text as planned.
    pub old_text_md5: &'a str,
    /// md5 of the text after the rewrite.
    pub new_text_md5: &'a str,
    /// The MD5 (ETag) column as planned.
    pub old_md5: &'a str,
    /// The MD5 column after the rewrite.
    pub new_md5: &'a str,
    /// The ORGANIZER column as planned (calendar objects).
    pub old_organizer: Option<&'a str>,
    /// The ORGANIZER column after the rewrite.
    pub new_organizer: Option<&'a str>,
    /// How many properties change.
    pub changes: i64,
}

/// The prepared insert of planned objects (one plan's many rows).
pub struct ObjectInserter<'c> {
    plan_id: i64,
    st: Statement<'c>,
}

impl<'c> ObjectInserter<'c> {
    /// Prepares the insert for plan `plan_id`.
    pub fn new(conn: &'c Connection, plan_id: i64) -> Result<ObjectInserter<'c>> {
        let st = conn.prepare(
            "INSERT OR REPLACE INTO pg_plan_objects (plan_id, kind, resource_id, label, old_text_md5, new_text_md5, old_md5, new_md5, old_organizer, new_organizer, changes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?;
        Ok(ObjectInserter { plan_id, st })
    }

    /// Stores one planned object (replacing an earlier plan of the same object).
    pub fn insert(&mut self, o: &NewObject<'_>) -> Result<()> {
        self.st.execute(params![
            self.plan_id,
            o.kind,
            o.id,
            o.label,
            o.old_text_md5,
            o.new_text_md5,
            o.old_md5,
            o.new_md5,
            o.old_organizer,
            o.new_organizer,
            o.changes
        ])?;
        Ok(())
    }
}

/// Drops the planned calendar object `resource_id` (planned again with the final mapping).
pub fn delete_calendar_object(conn: &Connection, plan_id: i64, resource_id: i64) -> Result<()> {
    conn.execute(
        "DELETE FROM pg_plan_objects WHERE plan_id = ?1 AND kind = 'calendar' AND resource_id = ?2",
        params![plan_id, resource_id],
    )?;
    Ok(())
}

/// Planned objects of a plan (what pruning it frees, beside `plan_changes`; apply's total).
pub fn plan_objects(conn: &Connection, plan_id: i64) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT COUNT(*) FROM pg_plan_objects WHERE plan_id = ?1",
        [plan_id],
        |r| r.get(0),
    )
}

/// A page of a plan's objects of `kind` after RESOURCE_ID `after_id`, in id order, leaving out
/// those run `run_id` already settled (a journal step that is not pending).
pub fn objects_to_apply(
    conn: &Connection,
    plan_id: i64,
    kind: &str,
    after_id: i64,
    run_id: i64,
    limit: usize,
) -> Result<Vec<PlannedObject>> {
    let mut st = conn.prepare(
        "SELECT kind, resource_id, label, old_text_md5, new_text_md5, old_md5, new_md5 FROM pg_plan_objects p
         WHERE plan_id = ?1 AND kind = ?2 AND resource_id > ?3
           AND NOT EXISTS (SELECT 1 FROM pg_journal j WHERE j.run_id = ?4 AND j.kind = 'object' AND j.table_name = p.kind
                           AND j.key = CAST(p.resource_id AS TEXT) AND j.state != 'pending')
         ORDER BY resource_id LIMIT ?5",
    )?;
    let rows = st.query_map(
        params![plan_id, kind, after_id, run_id, limit as i64],
        |r| {
            Ok(PlannedObject {
                kind: r.get(0)?,
                id: r.get(1)?,
                label: r.get(2)?,
                old_text_md5: r.get(3)?,
                new_text_md5: r.get(4)?,
                old_md5: r.get(5)?,
                new_md5: r.get(6)?,
            })
        },
    )?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A home kept under an old uid (`pg_plan_homes`): renamed, or merged into another.
#[derive(Clone, Debug)]
pub struct PlannedHome {
    /// CALENDAR_HOME, ADDRESSBOOK_HOME or NOTIFICATION_HOME.
    pub table: String,
    /// The home's RESOURCE_ID.
    pub resource_id: i64,
    /// OWNER_UID as found.
    pub old_uid: String,
    /// OWNER_UID after.
    pub new_uid: String,
    /// `rename` or `merge`.
    pub action: String,
    /// merge: the home that stays.
    pub target_id: Option<i64>,
}

/// Stores one planned home.
pub fn insert_home(conn: &Connection, plan_id: i64, h: &PlannedHome) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO pg_plan_homes (plan_id, home_table, resource_id, old_uid, new_uid, action, target_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        plan_id,
        h.table,
        h.resource_id,
        h.old_uid,
        h.new_uid,
        h.action,
        h.target_id
    ])?;
    Ok(())
}

/// A plan's homes, by table and id.
pub fn plan_homes(conn: &Connection, plan_id: i64) -> Result<Vec<PlannedHome>> {
    let mut st = conn.prepare(
        "SELECT home_table, resource_id, old_uid, new_uid, action, target_id FROM pg_plan_homes WHERE plan_id = ?1 ORDER BY home_table, resource_id",
    )?;
    let rows = st.query_map([plan_id], |r| {
        Ok(PlannedHome {
            table: r.get(0)?,
            resource_id: r.get(1)?,
            old_uid: r.get(2)?,
            new_uid: r.get(3)?,
            action: r.get(4)?,
            target_id: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A uid or address value outside the objects (`pg_plan_values`): every row holding `old_value`
/// in `table.column` gets `new_value`.
#[derive(Clone, Debug)]
pub struct PlannedValue {
    /// The table.
    pub table: String,
    /// The column.
    pub column: String,
    /// The value as found.
    pub old_value: String,
    /// The value after.
    pub new_value: String,
    /// Rows seen holding it when planning.
    pub rows: i64,
}

/// Stores one planned value.
pub fn insert_value(conn: &Connection, plan_id: i64, v: &PlannedValue) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO pg_plan_values (plan_id, table_name, column_name, old_value, new_value, rows) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        plan_id,
        v.table,
        v.column,
        v.old_value,
        v.new_value,
        v.rows
    ])?;
    Ok(())
}

/// A plan's values, by table, column and old value.
pub fn plan_values(conn: &Connection, plan_id: i64) -> Result<Vec<PlannedValue>> {
    let mut st = conn.prepare(
        "SELECT table_name, column_name, old_value, new_value, rows FROM pg_plan_values WHERE plan_id = ?1 ORDER BY table_name, column_name, old_value",
    )?;
    let rows = st.query_map([plan_id], |r| {
        Ok(PlannedValue {
            table: r.get(0)?,
            column: r.get(1)?,
            old_value: r.get(2)?,
            new_value: r.get(3)?,
            rows: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The database store's plan tables, keyed by `plan_id`.
const PLAN_TABLES: [&str; 4] = [
    "pg_plan_objects",
    "pg_plan_principals",
    "pg_plan_homes",
    "pg_plan_values",
];

/// Drops the database store's data of one plan (the `pg_plans` row stays, like `plans`).
pub fn drop_plan(conn: &Connection, plan_id: i64) -> rusqlite::Result<()> {
    for t in PLAN_TABLES {
        conn.execute(&format!("DELETE FROM {t} WHERE plan_id = ?1"), [plan_id])?;
    }
    Ok(())
}

// ---- runs -------------------------------------------------------------------------------------

/// What a database-store run carries out: an apply run a plan, a rollback run an apply run.
#[derive(Clone, Copy, Debug)]
pub enum RunOf {
    /// `runs.plan_id`.
    Plan(i64),
    /// `runs.undoes_run`.
    Undoes(i64),
}

impl RunOf {
    fn column_and_id(self) -> (&'static str, i64) {
        match self {
            RunOf::Plan(id) => ("plan_id", id),
            RunOf::Undoes(id) => ("undoes_run", id),
        }
    }
}

/// A run as `runs` records it: its id and whether its process finished.
pub struct RunRow {
    /// `runs.id`.
    pub id: i64,
    /// `runs.status`.
    pub status: RunStatus,
}

/// The latest run of `kind` carrying out `of`, if any.
pub fn latest_run(conn: &Connection, kind: &str, of: RunOf) -> Option<RunRow> {
    let (col, target) = of.column_and_id();
    conn.query_row(
        &format!(
            "SELECT id, status FROM runs WHERE kind = ?1 AND {col} = ?2 ORDER BY id DESC LIMIT 1"
        ),
        params![kind, target],
        |r| {
            Ok(RunRow {
                id: r.get(0)?,
                status: r.get(1)?,
            })
        },
    )
    .ok()
}

/// Starts a run of `kind` carrying out `of` on the store `store_path`; returns its id.
pub fn insert_run(conn: &Connection, kind: &str, of: RunOf, store_path: &str) -> Result<i64> {
    let (col, target) = of.column_and_id();
    conn.execute(
        &format!("INSERT INTO runs (kind, {col}, store_path, started_at, status) VALUES (?1, ?2, ?3, ?4, 'running')"),
        params![kind, target, store_path, super::now_rfc3339()],
    )?;
    Ok(conn.last_insert_rowid())
}

/// The signal that stopped a run, if one did.
pub fn stopped_by(conn: &Connection, run_id: i64) -> Option<String> {
    conn.query_row("SELECT stopped_by FROM runs WHERE id = ?1", [run_id], |r| {
        r.get(0)
    })
    .ok()
    .flatten()
}

/// A run taken up again: running, stopped by nothing.
pub fn resume_run(conn: &Connection, run_id: i64) -> Result<()> {
    conn.execute(
        "UPDATE runs SET status = 'running', stopped_by = NULL WHERE id = ?1",
        [run_id],
    )?;
    Ok(())
}

/// A run stopped by signal `name` between two transactions (resumable).
pub fn interrupt_run(conn: &Connection, run_id: i64, name: &str) -> Result<()> {
    conn.execute(
        "UPDATE runs SET status = 'interrupted', stopped_by = ?1 WHERE id = ?2",
        params![name, run_id],
    )?;
    Ok(())
}

/// A run whose process finished, now.
pub fn finish_run(conn: &Connection, run_id: i64) -> Result<()> {
    conn.execute(
        "UPDATE runs SET status = 'done', finished_at = ?1 WHERE id = ?2",
        params![super::now_rfc3339(), run_id],
    )?;
    Ok(())
}

/// A write that changes nothing, to make every step journaled so far durable at its commit.
pub fn touch_run(conn: &Connection, run_id: i64) -> Result<()> {
    conn.execute("UPDATE runs SET status = status WHERE id = ?1", [run_id])?;
    Ok(())
}

/// The apply run a rollback undoes when none is named: the latest not rolled back, else the
/// latest.
pub fn apply_run_to_undo(conn: &Connection) -> Result<Option<i64>> {
    Ok(conn.query_row(
        "SELECT COALESCE(MAX(CASE WHEN COALESCE(state, '') != 'rolled-back' THEN id END), MAX(id)) FROM runs WHERE kind = 'apply'",
        [],
        |r| r.get::<_, Option<i64>>(0),
    )?)
}

/// A run's kind and the store it changed.
pub struct RunStore {
    /// `runs.kind`.
    pub kind: String,
    /// `runs.store_path`.
    pub store_path: String,
}

/// A run's kind and store; `None` when there is no such run.
pub fn run_store(conn: &Connection, run_id: i64) -> Result<Option<RunStore>> {
    match conn.query_row(
        "SELECT kind, store_path FROM runs WHERE id = ?1",
        [run_id],
        |r| {
            Ok(RunStore {
                kind: r.get(0)?,
                store_path: r.get(1)?,
            })
        },
    ) {
        Ok(r) => Ok(Some(r)),
        Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

// ---- the journal ------------------------------------------------------------------------------

/// A step to journal (`pg_journal`); the run and the next seq are given by [`append_steps`].
#[derive(Clone, Debug, Default)]
pub struct NewStep<'a> {
    /// `object`, `row`, `delete` or `undo`.
    pub kind: &'a str,
    /// The object kind (`calendar`, `vcard`) or the table of the row.
    pub table: &'a str,
    /// object: its RESOURCE_ID; row: the row as JSON before.
    pub key: String,
    /// For reports.
    pub label: &'a str,
    /// object: md5 of the text before.
    pub before_hash: &'a str,
    /// object: md5 of the text after.
    pub after_hash: &'a str,
    /// object: the saved old columns (zlib); row: the row as JSON after.
    pub old_row: Option<&'a [u8]>,
    /// undo: the seq of the step it undoes.
    pub undoes_seq: Option<i64>,
    /// The step's state as journaled.
    pub state: Option<StepState>,
    /// Why it was skipped, or a note.
    pub detail: &'a str,
}

/// The highest seq of a run's steps (0 when none).
pub fn last_seq(conn: &Connection, run_id: i64) -> Result<i64> {
    Ok(conn.query_row(
        "SELECT COALESCE(MAX(seq), 0) FROM pg_journal WHERE run_id = ?1",
        [run_id],
        |r| r.get(0),
    )?)
}

/// The prepared insert of a run's journal steps, numbering them on from the run's last seq.
pub struct StepAppender<'c> {
    run_id: i64,
    seq: i64,
    st: Statement<'c>,
}

impl<'c> StepAppender<'c> {
    /// Prepares the insert for run `run_id`, numbering on from its last step.
    pub fn new(conn: &'c Connection, run_id: i64) -> Result<StepAppender<'c>> {
        let seq = last_seq(conn, run_id)?;
        let st = conn.prepare(
            "INSERT INTO pg_journal (run_id, seq, kind, table_name, key, label, before_hash, after_hash, old_row, undoes_seq, state, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?;
        Ok(StepAppender { run_id, seq, st })
    }

    /// Journals one step (pending unless it says otherwise); returns its seq.
    pub fn append(&mut self, s: &NewStep<'_>) -> Result<i64> {
        self.seq += 1;
        self.st.execute(params![
            self.run_id,
            self.seq,
            s.kind,
            s.table,
            s.key,
            s.label,
            s.before_hash,
            s.after_hash,
            s.old_row,
            s.undoes_seq,
            s.state.unwrap_or(StepState::Pending),
            s.detail
        ])?;
        Ok(self.seq)
    }
}

/// The outcome of a journaled step.
#[derive(Clone, Debug)]
pub struct Mark {
    /// The step's seq in its run.
    pub seq: i64,
    /// Its state now.
    pub state: StepState,
    /// Why (skipped), or empty.
    pub detail: String,
}

impl Mark {
    /// A step done.
    pub fn done(seq: i64) -> Mark {
        Mark {
            seq,
            state: StepState::Done,
            detail: String::new(),
        }
    }

    /// A step skipped, with the reason.
    pub fn skipped(seq: i64, why: impl Into<String>) -> Mark {
        Mark {
            seq,
            state: StepState::Skipped,
            detail: why.into(),
        }
    }
}

/// Marks steps of run `run_id` with their outcome (in the caller's transaction, if any).
pub fn mark_steps(conn: &Connection, run_id: i64, marks: &[Mark]) -> Result<()> {
    let mut up = conn
        .prepare("UPDATE pg_journal SET state = ?1, detail = ?2 WHERE run_id = ?3 AND seq = ?4")?;
    for m in marks {
        up.execute(params![m.state, m.detail, run_id, m.seq])?;
    }
    Ok(())
}

/// After a commit: every row step still pending in the run is done.
pub fn mark_row_steps_done(conn: &Connection, run_id: i64) -> Result<()> {
    conn.execute(
        "UPDATE pg_journal SET state = 'done' WHERE run_id = ?1 AND kind IN ('row', 'delete') AND state = 'pending'",
        [run_id],
    )?;
    Ok(())
}

/// Object steps of a run still pending (their transaction may or may not have committed):
/// RESOURCE_ID → seq.
pub fn pending_objects(conn: &Connection, run_id: i64, kind: &str) -> Result<HashMap<i64, i64>> {
    let mut pending = HashMap::new();
    let mut st = conn.prepare(
        "SELECT key, seq FROM pg_journal WHERE run_id = ?1 AND kind = 'object' AND table_name = ?2 AND state = 'pending'",
    )?;
    let rows = st.query_map(params![run_id, kind], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })?;
    for r in rows {
        let (k, s) = r?;
        if let Ok(id) = k.parse() {
            pending.insert(id, s);
        }
    }
    Ok(pending)
}

/// What an apply run's journal holds, counted.
pub struct ApplyCounts {
    /// Objects written.
    pub written: u64,
    /// Objects found already as planned.
    pub unchanged: u64,
    /// Homes renamed or merged.
    pub homes_adopted: u64,
}

/// The counts of an apply run, from its journal (across resumed processes).
pub fn apply_counts(conn: &Connection, run_id: i64) -> Result<ApplyCounts> {
    let count = |sql: &str| -> Result<u64> {
        Ok(conn.query_row(sql, [run_id], |r| r.get::<_, i64>(0))? as u64)
    };
    Ok(ApplyCounts {
        written: count("SELECT COUNT(*) FROM pg_journal WHERE run_id = ?1 AND kind = 'object' AND state = 'done' AND old_row IS NOT NULL")?,
        unchanged: count("SELECT COUNT(*) FROM pg_journal WHERE run_id = ?1 AND kind = 'object' AND state = 'done' AND old_row IS NULL")?,
        homes_adopted: count("SELECT COUNT(*) FROM pg_journal WHERE run_id = ?1 AND kind = 'row' AND state = 'done' AND table_name IN ('CALENDAR_HOME', 'ADDRESSBOOK_HOME', 'NOTIFICATION_HOME')")?,
    })
}

/// What a rollback run's journal holds, counted: (objects restored, homes restored).
pub fn rollback_counts(conn: &Connection, run_id: i64) -> Result<(u64, u64)> {
    let count = |sql: &str| -> Result<u64> {
        Ok(conn.query_row(sql, [run_id], |r| r.get::<_, i64>(0))? as u64)
    };
    Ok((
        count(
            "SELECT COUNT(*) FROM pg_journal WHERE run_id = ?1 AND kind = 'undo' AND table_name IN ('calendar', 'vcard') AND state = 'done' AND detail = ''",
        )?,
        count(
            "SELECT COUNT(*) FROM pg_journal WHERE run_id = ?1 AND kind = 'undo' AND table_name IN ('CALENDAR_HOME', 'ADDRESSBOOK_HOME', 'NOTIFICATION_HOME') AND state = 'done' AND detail = ''",
        )?,
    ))
}

/// The skipped steps of a run, in order: (label, why).
pub fn skipped_steps(conn: &Connection, run_id: i64) -> Result<Vec<(String, String)>> {
    let mut st = conn.prepare(
        "SELECT label, detail FROM pg_journal WHERE run_id = ?1 AND state = 'skipped' ORDER BY seq",
    )?;
    let rows = st.query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// An object a run wrote (or restored), and the md5 its text must still have.
#[derive(Clone, Debug)]
pub struct WrittenObject {
    /// `calendar` or `vcard`.
    pub kind: String,
    /// Its RESOURCE_ID.
    pub id: i64,
    /// For reports.
    pub label: String,
    /// md5 of the text the run left.
    pub md5: String,
}

fn written_objects_of(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<WrittenObject>> {
    let mut st = conn.prepare(sql)?;
    let rows = st.query_map(params, |r| {
        Ok(WrittenObject {
            kind: r.get(0)?,
            id: r.get(1)?,
            label: r.get(2)?,
            md5: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The objects an apply run wrote, with their md5 after.
pub fn objects_written(conn: &Connection, run_id: i64) -> Result<Vec<WrittenObject>> {
    written_objects_of(
        conn,
        "SELECT table_name, CAST(key AS INTEGER), label, after_hash FROM pg_journal
             WHERE run_id = ?1 AND kind = 'object' AND state = 'done' AND old_row IS NOT NULL ORDER BY seq",
        [run_id],
    )
}

/// The objects rollback run `run_id` restored (undoing apply run `target`), with the md5 they
/// had before the apply run.
pub fn objects_restored(conn: &Connection, run_id: i64, target: i64) -> Result<Vec<WrittenObject>> {
    written_objects_of(
        conn,
        "SELECT u.table_name, CAST(u.key AS INTEGER), u.label, a.before_hash FROM pg_journal u
             JOIN pg_journal a ON a.run_id = ?2 AND a.seq = u.undoes_seq
             WHERE u.run_id = ?1 AND u.kind = 'undo' AND u.table_name IN ('calendar', 'vcard') AND u.state = 'done' AND u.detail = ''
             ORDER BY u.seq",
        [run_id, target],
    )
}

/// A journaled row step as stored (its JSON still text).
pub struct StoredRowStep {
    /// The step's seq.
    pub seq: i64,
    /// `row` or `delete`.
    pub kind: String,
    /// The table.
    pub table: String,
    /// The row before, as JSON.
    pub before: String,
    /// The row after, as JSON (empty for a delete).
    pub after: Vec<u8>,
    /// For reports.
    pub label: String,
}

/// Row steps of a run in one of `states`, newest first or oldest first.
pub fn row_steps(
    conn: &Connection,
    run_id: i64,
    states: &[StepState],
    newest_first: bool,
) -> Result<Vec<StoredRowStep>> {
    let states = states
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    let mut st = conn.prepare(&format!(
        "SELECT seq, kind, table_name, key, COALESCE(old_row, X''), label FROM pg_journal
         WHERE run_id = ?1 AND kind IN ('row', 'delete') AND state IN ({states}) ORDER BY seq {}",
        if newest_first { "DESC" } else { "ASC" }
    ))?;
    let rows = st.query_map([run_id], |r| {
        Ok(StoredRowStep {
            seq: r.get(0)?,
            kind: r.get(1)?,
            table: r.get(2)?,
            before: r.get(3)?,
            after: r.get(4)?,
            label: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The seqs of apply steps rollback run `run_id` has settled (an undo that is not pending).
pub fn undone_seqs(conn: &Connection, run_id: i64) -> Result<HashSet<i64>> {
    let mut st = conn.prepare(
        "SELECT undoes_seq FROM pg_journal WHERE run_id = ?1 AND undoes_seq IS NOT NULL AND state != 'pending'",
    )?;
    let rows = st.query_map([run_id], |r| r.get::<_, i64>(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// An object step of an apply run, with the old columns it saved.
pub struct SavedStep {
    /// The step's seq.
    pub seq: i64,
    /// `calendar` or `vcard`.
    pub kind: String,
    /// The object's RESOURCE_ID, as stored.
    pub key: String,
    /// For reports.
    pub label: String,
    /// md5 of the text before the run.
    pub before_hash: String,
    /// md5 of the text the run wrote.
    pub after_hash: String,
    /// The saved old columns (zlib).
    pub old_row: Vec<u8>,
}

/// A page of the objects apply run `target` wrote (done or pending) with seq below
/// `before_seq`, newest first, leaving out those rollback run `run_id` has settled.
pub fn objects_to_restore(
    conn: &Connection,
    target: i64,
    before_seq: i64,
    run_id: i64,
    limit: i64,
) -> Result<Vec<SavedStep>> {
    let mut st = conn.prepare(
        "SELECT j.seq, j.table_name, j.key, j.label, j.before_hash, j.after_hash, j.old_row FROM pg_journal j
                 WHERE j.run_id = ?1 AND j.kind = 'object' AND j.state IN ('done', 'pending') AND j.old_row IS NOT NULL AND j.seq < ?2
                   AND NOT EXISTS (SELECT 1 FROM pg_journal u WHERE u.run_id = ?3 AND u.undoes_seq = j.seq AND u.state != 'pending')
                 ORDER BY j.seq DESC LIMIT ?4",
    )?;
    let rows = st.query_map(params![target, before_seq, run_id, limit], |r| {
        Ok(SavedStep {
            seq: r.get(0)?,
            kind: r.get(1)?,
            key: r.get(2)?,
            label: r.get(3)?,
            before_hash: r.get(4)?,
            after_hash: r.get(5)?,
            old_row: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Drops the undo steps an interrupted rollback left pending (looked at again since).
pub fn drop_pending_undos(conn: &Connection, run_id: i64) -> Result<()> {
    conn.execute(
        "DELETE FROM pg_journal WHERE run_id = ?1 AND kind = 'undo' AND state = 'pending'",
        [run_id],
    )?;
    Ok(())
}

/// Journal steps of one run in `pg_journal`.
pub fn journal_steps(conn: &Connection, run_id: i64) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT COUNT(*) FROM pg_journal WHERE run_id = ?1",
        [run_id],
        |r| r.get(0),
    )
}

/// Drops the `pg_journal` steps of the runs in `ids`.
pub fn drop_journals(conn: &Connection, ids: &[i64]) -> rusqlite::Result<()> {
    let mut st = conn.prepare("DELETE FROM pg_journal WHERE run_id = ?1")?;
    for id in ids {
        st.execute([id])?;
    }
    Ok(())
}

/// An SQL expression counting the steps in state `st` of the run `runs.id`, in the file journal
/// and, where the state database has one, the database store's journal.
pub fn steps_sql(conn: &Connection, st: &str) -> String {
    let file =
        format!("(SELECT COUNT(*) FROM journal j WHERE j.run_id = runs.id AND j.state = '{st}')");
    let has_pg: bool = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'pg_journal'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .unwrap_or(false);
    if has_pg {
        format!("({file} + (SELECT COUNT(*) FROM pg_journal p WHERE p.run_id = runs.id AND p.state = '{st}'))")
    } else {
        file
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::State;

    fn state_with_a_plan_and_a_run() -> (tempfile::TempDir, State) {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(&dir.path().join("state")).unwrap();
        state
            .conn
            .execute_batch(
                "INSERT INTO plans (id, created_at, store_kind, store_path, address_form, directory)
                 VALUES (1, 'now', 'calendarserver-pg', 'postgresql://u@h:5432/db', 'urn:uuid', 'ldif');
                 INSERT INTO runs (id, kind, plan_id, store_path, started_at, status)
                 VALUES (7, 'apply', 1, 'postgresql://u@h:5432/db', 'now', 'running');",
            )
            .unwrap();
        (dir, state)
    }

    #[test]
    fn plan_rows_read_back_as_stored_and_a_journaled_object_leaves_the_page_to_apply() {
        let (_dir, state) = state_with_a_plan_and_a_run();
        let c = &state.conn;
        let target = PlanTarget {
            database: "postgresql://u@h:5432/db".into(),
            schema_version: 66,
        };
        insert_plan(c, 1, &target).unwrap();
        let back = plan_target(c, 1).unwrap();
        assert_eq!((back.database, back.schema_version), (target.database, 66));
        let mut objects = ObjectInserter::new(c, 1).unwrap();
        for id in [3, 1, 2] {
            objects
                .insert(&NewObject {
                    kind: "calendar",
                    id,
                    label: &format!("u/calendar/{id}.ics"),
                    old_text_md5: "a",
                    new_text_md5: "b",
                    old_md5: "c",
                    new_md5: "d",
                    old_organizer: None,
                    new_organizer: Some("urn:x-uid:NEW"),
                    changes: 2,
                })
                .unwrap();
        }
        drop(objects);
        assert_eq!(plan_objects(c, 1).unwrap(), 3);
        let page = objects_to_apply(c, 1, "calendar", i64::MIN, 7, 2).unwrap();
        assert_eq!(page.iter().map(|p| p.id).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(
            (page[0].label.as_str(), page[0].new_md5.as_str()),
            ("u/calendar/1.ics", "d")
        );
        // Object 1 journaled and done, object 2 pending: only 1 leaves the page.
        let mut steps = StepAppender::new(c, 7).unwrap();
        let saved = b"old".to_vec();
        let step = |id: i64| NewStep {
            kind: "object",
            table: "calendar",
            key: id.to_string(),
            label: "x",
            before_hash: "a",
            after_hash: "b",
            old_row: Some(&saved),
            ..Default::default()
        };
        let one = steps.append(&step(1)).unwrap();
        let two = steps.append(&step(2)).unwrap();
        drop(steps);
        assert_eq!((one, two), (1, 2));
        mark_steps(c, 7, &[Mark::done(one)]).unwrap();
        let page = objects_to_apply(c, 1, "calendar", i64::MIN, 7, 10).unwrap();
        assert_eq!(page.iter().map(|p| p.id).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(pending_objects(c, 7, "calendar").unwrap()[&2], two);
        let counts = apply_counts(c, 7).unwrap();
        assert_eq!((counts.written, counts.unchanged), (1, 0));
        let written = objects_written(c, 7).unwrap();
        assert_eq!((written[0].id, written[0].md5.as_str()), (1, "b"));
        mark_steps(c, 7, &[Mark::skipped(two, "changed since plan")]).unwrap();
        assert_eq!(
            skipped_steps(c, 7).unwrap(),
            [("x".to_string(), "changed since plan".to_string())]
        );
        // The stored words are the journal's: pending, done, skipped.
        let states: Vec<String> = c
            .prepare("SELECT state FROM pg_journal WHERE run_id = 7 ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(states, ["done", "skipped"]);
        drop_journals(c, &[7]).unwrap();
        drop_plan(c, 1).unwrap();
        assert_eq!(
            (journal_steps(c, 7).unwrap(), plan_objects(c, 1).unwrap()),
            (0, 0)
        );
    }

    #[test]
    fn homes_values_and_row_steps_round_trip() {
        let (_dir, state) = state_with_a_plan_and_a_run();
        let c = &state.conn;
        let home = PlannedHome {
            table: "CALENDAR_HOME".into(),
            resource_id: 4,
            old_uid: "OLD".into(),
            new_uid: "NEW".into(),
            action: "merge".into(),
            target_id: Some(9),
        };
        insert_home(c, 1, &home).unwrap();
        let homes = plan_homes(c, 1).unwrap();
        assert_eq!(
            (
                homes[0].new_uid.as_str(),
                homes[0].action.as_str(),
                homes[0].target_id
            ),
            ("NEW", "merge", Some(9))
        );
        for old in ["b", "a"] {
            let v = PlannedValue {
                table: "APN_SUBSCRIPTIONS".into(),
                column: "RESOURCE_KEY".into(),
                old_value: old.into(),
                new_value: "n".into(),
                rows: 3,
            };
            insert_value(c, 1, &v).unwrap();
        }
        let values = plan_values(c, 1).unwrap();
        assert_eq!(
            values
                .iter()
                .map(|v| v.old_value.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        let mut steps = StepAppender::new(c, 7).unwrap();
        let after = br#"{"owner_uid":"NEW"}"#.to_vec();
        for kind in ["row", "delete"] {
            steps
                .append(&NewStep {
                    kind,
                    table: "CALENDAR_HOME",
                    key: r#"{"owner_uid":"OLD"}"#.into(),
                    label: "home",
                    old_row: (kind == "row").then_some(&after[..]),
                    ..Default::default()
                })
                .unwrap();
        }
        drop(steps);
        let newest = row_steps(c, 7, &[StepState::Pending], true).unwrap();
        assert_eq!(
            newest
                .iter()
                .map(|s| (s.seq, s.kind.as_str()))
                .collect::<Vec<_>>(),
            [(2, "delete"), (1, "row")]
        );
        assert_eq!(newest[1].after, after);
        assert!(newest[0].after.is_empty());
        mark_row_steps_done(c, 7).unwrap();
        assert!(row_steps(c, 7, &[StepState::Pending], false)
            .unwrap()
            .is_empty());
        assert_eq!(apply_counts(c, 7).unwrap().homes_adopted, 1);
    }
}
