//! The runs table as apply and rollback see it: the latest apply run of a plan, a new run.

use crate::error::Result;
use crate::state::{now_rfc3339, RunKind, RunState, RunStatus, State};
use std::path::Path;

/// A run as `apply` looks at it: id, lifecycle state, process status, the signal that stopped it,
/// when it finished.
pub(super) type RunRow = (i64, RunState, RunStatus, Option<String>, Option<String>);

/// The latest apply run of a plan.
pub(super) fn latest_apply_run(state: &State, plan_id: i64) -> Result<Option<RunRow>> {
    let row = state.conn.query_row(
        "SELECT id, COALESCE(state, 'applying'), status, stopped_by, finished_at FROM runs
          WHERE kind = 'apply' AND plan_id = ?1 ORDER BY id DESC LIMIT 1",
        [plan_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
    );
    match row {
        Ok(r) => Ok(Some(r)),
        Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(super) fn new_run(
    state: &State,
    kind: RunKind,
    plan_id: Option<i64>,
    undoes: Option<i64>,
    store: &Path,
) -> Result<i64> {
    let run_state = (kind != RunKind::Rollback).then_some(RunState::Applying);
    state.conn.execute(
        "INSERT INTO runs (kind, plan_id, undoes_run, store_path, started_at, status, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        rusqlite::params![
            kind,
            plan_id,
            undoes,
            store.to_string_lossy(),
            now_rfc3339(),
            RunStatus::Running,
            run_state
        ],
    )?;
    Ok(state.conn.last_insert_rowid())
}
