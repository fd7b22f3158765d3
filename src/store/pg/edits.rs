//! Journaled edits of whole rows, for every table that is not calendar text: a row is identified by
//! its complete old contents (`to_jsonb(row)`), changed by setting some columns, and restored by
//! finding the row with its complete new contents and setting them back. Values travel as JSON and
//! are typed by PostgreSQL itself (`jsonb_populate_record(NULL::table, …)`), so one mechanism
//! serves every table and column type of every schema version.
//!
//! The protocol of a unit of work (one database transaction): the rows are selected `FOR UPDATE`,
//! each edit is recorded `pending` in the state database with the row before and after, and made
//! durable; then the rows are written; after the commit they are marked `done`. A pending edit found
//! after a crash is finished by looking at the database: the row as it should be after means done,
//! the row as it was before means do it again, anything else is someone else's change (skipped).

use crate::error::{Error, Result};
use crate::state::pg_rows::{self, Mark};
use crate::state::{State, StepState};
use postgres::Transaction;
use serde_json::Value;

/// One row to change: where it is, what it holds, which columns become what.
#[derive(Clone, Debug)]
pub struct RowEdit {
    /// The table holding the row (upper-case, as in the schema).
    pub table: String,
    /// The row's ctid in this transaction (rows are locked, so it holds until we write it).
    pub ctid: String,
    /// The whole row as read, as a JSON object of lower-case column names.
    pub before: Value,
    /// Lower-case column names and their new values.
    pub set: Vec<(String, Value)>,
    /// A delete instead of an update (`set` empty).
    pub delete: bool,
}

impl RowEdit {
    /// The row as it will be after the edit: `before` with `set` applied.
    pub fn after(&self) -> Value {
        let mut v = self.before.clone();
        if let Value::Object(m) = &mut v {
            for (k, val) in &self.set {
                m.insert(k.clone(), val.clone());
            }
        }
        v
    }
}

fn err(what: &str) -> impl Fn(postgres::Error) -> Error + '_ {
    super::pg_err(what)
}

/// Rows of `table` matching `filter` (SQL over alias `t`), locked, with their ctid.
pub fn select_rows(
    tx: &mut Transaction<'_>,
    table: &str,
    filter: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
) -> Result<Vec<(String, Value)>> {
    let sql = format!(
        "SELECT t.ctid::text, to_jsonb(t)::text FROM {table} t WHERE {filter} ORDER BY t.ctid FOR UPDATE OF t"
    );
    let rows = tx.query(&sql, params).map_err(err(table))?;
    rows.iter()
        .map(|r| {
            let j: String = r.get(1);
            Ok((r.get::<_, String>(0), serde_json::from_str(&j)?))
        })
        .collect()
}

/// Primary-key columns of a table (lower case), empty when it has none.
pub fn primary_key(tx: &mut Transaction<'_>, table: &str) -> Result<Vec<String>> {
    let rows = tx
        .query(
            "SELECT a.attname::text FROM pg_index i
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
             WHERE i.indrelid = to_regclass(lower($1)) AND i.indisprimary ORDER BY a.attnum",
            &[&table],
        )
        .map_err(err(table))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Finds the row whose complete contents are `contents` (using the primary key to get there),
/// locked; its ctid.
pub fn find_row(
    tx: &mut Transaction<'_>,
    table: &str,
    pk: &[String],
    contents: &Value,
) -> Result<Option<String>> {
    let mut filter = String::from("to_jsonb(t) = $1::text::jsonb");
    for c in pk {
        filter.push_str(&format!(
            " AND t.{c} = (jsonb_populate_record(NULL::{table}, $1::text::jsonb)).{c}"
        ));
    }
    let text = contents.to_string();
    let sql = format!("SELECT t.ctid::text FROM {table} t WHERE {filter} LIMIT 1 FOR UPDATE OF t");
    let row = tx.query_opt(&sql, &[&text]).map_err(err(table))?;
    Ok(row.map(|r| r.get(0)))
}

/// Writes one edit (the row must be locked by this transaction). A unique violation is
/// returned as `Ok(false)` with the transaction still usable (a savepoint guards each write).
pub fn write(tx: &mut Transaction<'_>, e: &RowEdit) -> Result<bool> {
    let mut sp = tx.savepoint("edit").map_err(err(&e.table))?;
    let result = if e.delete {
        sp.execute(
            &format!("DELETE FROM {} WHERE ctid = $1::text::tid", e.table),
            &[&e.ctid],
        )
    } else if e.ctid.is_empty() {
        // Re-insert a deleted row exactly.
        let text = e.after().to_string();
        sp.execute(
            &format!(
                "INSERT INTO {t} SELECT * FROM jsonb_populate_record(NULL::{t}, $1::text::jsonb)",
                t = e.table
            ),
            &[&text],
        )
    } else {
        let cols: Vec<&str> = e.set.iter().map(|(c, _)| c.as_str()).collect();
        let after = e.after().to_string();
        sp.execute(
            &format!(
                "UPDATE {t} SET ({c}) = (SELECT {c} FROM jsonb_populate_record(NULL::{t}, $1::text::jsonb)) WHERE ctid = $2::text::tid",
                t = e.table,
                c = cols.join(", ")
            ),
            &[&after, &e.ctid],
        )
    };
    match result {
        Ok(n) => {
            sp.commit().map_err(err(&e.table))?;
            Ok(n == 1)
        }
        Err(x) if x.code().map(|c| c.code()) == Some("23505") => Ok(false),
        Err(x) => Err(Error::runtime(format!(
            "{}: {}",
            e.table,
            super::connect::describe(&x)
        ))),
    }
}

/// Writes many updates that set the same columns to the same values in one statement (rows locked
/// by this transaction); `None` when that hit a unique violation (nothing written: write them one
/// by one to find which).
pub fn write_same(tx: &mut Transaction<'_>, edits: &[RowEdit]) -> Result<Option<u64>> {
    let Some(first) = edits.first() else {
        return Ok(Some(0));
    };
    let cols: Vec<&str> = first.set.iter().map(|(c, _)| c.as_str()).collect();
    let after = first.after().to_string();
    let ctids: Vec<&str> = edits.iter().map(|e| e.ctid.as_str()).collect();
    let mut sp = tx.savepoint("edits").map_err(err(&first.table))?;
    let r = sp.execute(
        &format!(
            "UPDATE {t} SET ({c}) = (SELECT {c} FROM jsonb_populate_record(NULL::{t}, $1::text::jsonb)) WHERE ctid = ANY($2::text[]::tid[])",
            t = first.table,
            c = cols.join(", ")
        ),
        &[&after, &ctids],
    );
    match r {
        Ok(n) => {
            sp.commit().map_err(err(&first.table))?;
            Ok(Some(n))
        }
        Err(x) if x.code().map(|c| c.code()) == Some("23505") => Ok(None),
        Err(x) => Err(Error::runtime(format!(
            "{}: {}",
            first.table,
            super::connect::describe(&x)
        ))),
    }
}

/// Journals edits as pending (durably, before the database is written); returns their seqs.
pub fn journal_pending(
    state: &mut State,
    run_id: i64,
    kind: &str,
    edits: &[RowEdit],
    undoes: &[Option<i64>],
    label: &str,
) -> Result<Vec<i64>> {
    let tx = state.conn.transaction()?;
    let mut out = Vec::with_capacity(edits.len());
    {
        let mut steps = pg_rows::StepAppender::new(&tx, run_id)?;
        for (i, e) in edits.iter().enumerate() {
            let after = if e.delete { Value::Null } else { e.after() };
            let after = after.to_string().into_bytes();
            out.push(steps.append(&pg_rows::NewStep {
                kind: if e.delete { "delete" } else { kind },
                table: &e.table,
                key: e.before.to_string(),
                label,
                old_row: Some(&after),
                undoes_seq: undoes.get(i).copied().flatten(),
                ..Default::default()
            })?);
        }
    }
    tx.commit()?;
    Ok(out)
}

/// Marks journal steps with their outcome.
pub fn mark(state: &mut State, run_id: i64, marks: &[Mark]) -> Result<()> {
    let tx = state.conn.transaction()?;
    pg_rows::mark_steps(&tx, run_id, marks)?;
    tx.commit()?;
    Ok(())
}

/// A journaled row step as stored.
#[derive(Clone, Debug)]
pub struct Step {
    /// The step's sequence number in its run's `pg_journal`.
    pub seq: i64,
    /// `row` (an update) or `delete`.
    pub kind: String,
    /// The table holding the row.
    pub table: String,
    /// The whole row before the step, as a JSON object.
    pub before: Value,
    /// The row after the step; JSON null for a delete.
    pub after: Value,
    /// What the batch of edits is about, shown in messages (one label per batch).
    pub label: String,
}

/// Rebuilds the edit a journal step describes, for the row as it is now (`ctid`).
pub fn edit_of(step: &Step, ctid: String) -> RowEdit {
    let set = match (&step.before, &step.after) {
        (Value::Object(b), Value::Object(a)) => a
            .iter()
            .filter(|(k, v)| b.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        _ => Vec::new(),
    };
    RowEdit {
        table: step.table.clone(),
        ctid,
        before: step.before.clone(),
        set,
        delete: step.kind == "delete",
    }
}

/// The edit that undoes a step: from the row after back to the row before.
pub fn undo_of(step: &Step, ctid: String) -> RowEdit {
    if step.kind == "delete" {
        // Put the deleted row back.
        return RowEdit {
            table: step.table.clone(),
            ctid: String::new(),
            before: step.before.clone(),
            set: Vec::new(),
            delete: false,
        };
    }
    let set = match (&step.before, &step.after) {
        (Value::Object(b), Value::Object(a)) => b
            .iter()
            .filter(|(k, v)| a.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        _ => Vec::new(),
    };
    RowEdit {
        table: step.table.clone(),
        ctid,
        before: step.after.clone(),
        set,
        delete: false,
    }
}

/// Steps of a run in one of `states`, newest first or oldest first.
pub fn steps(
    state: &State,
    run_id: i64,
    states: &[StepState],
    newest_first: bool,
) -> Result<Vec<Step>> {
    let mut out = Vec::new();
    for r in pg_rows::row_steps(&state.conn, run_id, states, newest_first)? {
        out.push(Step {
            seq: r.seq,
            kind: r.kind,
            table: r.table,
            before: serde_json::from_str(&r.before)?,
            after: if r.after.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&r.after)?
            },
            label: r.label,
        });
    }
    Ok(out)
}

/// Finishes the row steps a crash left pending: done when the row is as after, redone when it is
/// as before, skipped otherwise.
pub fn finish_pending(tx: &mut Transaction<'_>, state: &State, run_id: i64) -> Result<Vec<Mark>> {
    let mut marks = Vec::new();
    for step in steps(state, run_id, &[StepState::Pending], false)? {
        let pk = primary_key(tx, &step.table)?;
        let done = if step.kind == "delete" {
            find_row(tx, &step.table, &pk, &step.before)?.is_none()
        } else {
            find_row(tx, &step.table, &pk, &step.after)?.is_some()
        };
        if done {
            marks.push(Mark::done(step.seq));
            continue;
        }
        match find_row(tx, &step.table, &pk, &step.before)? {
            Some(ctid) => {
                if write(tx, &edit_of(&step, ctid))? {
                    marks.push(Mark::done(step.seq));
                } else {
                    marks.push(Mark::skipped(
                        step.seq,
                        "a row with the new value exists already",
                    ));
                }
            }
            None => marks.push(Mark::skipped(
                step.seq,
                "changed since plan (found after an interrupted run)",
            )),
        }
    }
    Ok(marks)
}

/// Lower-case object keys of a JSON row.
pub fn field<'a>(row: &'a Value, col: &str) -> Option<&'a Value> {
    match row {
        Value::Object(m) => m.get(&col.to_ascii_lowercase()),
        _ => None,
    }
}

/// `{col: value}` as a set list.
pub fn set1(col: &str, v: Value) -> Vec<(String, Value)> {
    vec![(col.to_ascii_lowercase(), v)]
}
