//! History (`runs`): every plan and every run in the state database, with what `rollback` would
//! undo now — the `git log` of a migration.

use crate::error::Result;
use crate::state::State;
use serde::Serialize;

/// One plan.
#[derive(Clone, Debug, Serialize)]
pub struct PlanEntry {
    /// Plan id (`apply --plan N`).
    pub id: i64,
    /// When the plan was made (RFC 3339).
    pub created_at: String,
    /// building | complete | failed
    pub status: String,
    /// The store's data root the plan was made for.
    pub store_path: String,
    /// Resources the plan rewrites.
    pub resources_changed: i64,
    /// Calendar homes the plan moves to a new GUID.
    pub homes_moved: i64,
    /// How far its runs in force carried it out (when it has any): applied and pending homes and
    /// resources — a staged migration (`apply --home`, `--limit`) shows what is still pending.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<crate::stage::Tally>,
}

/// One run of apply, rollback or provision.
#[derive(Clone, Debug, Serialize)]
pub struct RunEntry {
    /// Run id (`rollback --run N`).
    pub id: i64,
    /// apply | rollback | provision
    pub kind: String,
    /// The plan it carries out; None for a run without one (e.g. provision).
    pub plan_id: Option<i64>,
    /// A rollback: the run it undoes.
    pub undoes_run: Option<i64>,
    /// When the run started (RFC 3339).
    pub started_at: String,
    /// When it finished; None while running or after a crash.
    pub finished_at: Option<String>,
    /// The process: running | interrupted | done.
    pub status: String,
    /// An apply or provision run's lifecycle: applying | applied | rolling-back | rolled-back.
    pub state: Option<String>,
    /// Journal steps by state.
    pub steps_done: i64,
    /// Journal steps skipped (nothing to do, or changed since planned).
    pub steps_skipped: i64,
    /// Journal steps not yet taken.
    pub steps_pending: i64,
}

/// Everything the state database remembers.
#[derive(Clone, Debug, Serialize)]
pub struct History {
    /// Every plan, oldest first.
    pub plans: Vec<PlanEntry>,
    /// Every run, oldest first.
    pub runs: Vec<RunEntry>,
    /// The run a plain `rollback` undoes now, if any.
    pub rollback_would_undo: Option<i64>,
    /// The plan a plain `apply` carries out now: the latest complete plan, when no run of it is
    /// applied (or all its runs are rolled back), or when it is partly applied (stages pending).
    pub apply_would_carry_out: Option<i64>,
}

fn has_column(state: &State, table: &str, column: &str) -> Result<bool> {
    let mut st = state.conn.prepare(&format!(
        "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"
    ))?;
    Ok(st.exists([column])?)
}

/// Reads the history.
pub fn history(state: &State) -> Result<History> {
    let plan_status = if has_column(state, "plans", "status")? {
        "status"
    } else {
        "'complete'"
    };
    let mut st = state.conn.prepare(&format!(
        "SELECT p.id, p.created_at, {plan_status}, p.store_path,
                (SELECT COUNT(*) FROM plan_resources r WHERE r.plan_id = p.id),
                (SELECT COUNT(*) FROM plan_homes h WHERE h.plan_id = p.id AND h.new_guid IS NOT NULL
                   AND (h.outcome = 'moved' OR h.layout != 'hashed'))
         FROM plans p ORDER BY p.id"
    ))?;
    let plans = st
        .query_map([], |r| {
            Ok(PlanEntry {
                id: r.get(0)?,
                created_at: r.get(1)?,
                status: r.get(2)?,
                store_path: r.get(3)?,
                resources_changed: r.get(4)?,
                homes_moved: r.get(5)?,
                progress: None,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut plans = plans;
    let run_state = if has_column(state, "runs", "state")? {
        "state"
    } else {
        "NULL"
    };
    let mut st = state.conn.prepare(&format!(
        "SELECT id, kind, plan_id, undoes_run, started_at, finished_at, status, {run_state},
                {}, {}, {}
         FROM runs ORDER BY id",
        crate::store::pg::runs::steps_sql(&state.conn, "done"),
        crate::store::pg::runs::steps_sql(&state.conn, "skipped"),
        crate::store::pg::runs::steps_sql(&state.conn, "pending")
    ))?;
    let runs = st
        .query_map([], |r| {
            Ok(RunEntry {
                id: r.get(0)?,
                kind: r.get(1)?,
                plan_id: r.get(2)?,
                undoes_run: r.get(3)?,
                started_at: r.get(4)?,
                finished_at: r.get(5)?,
                status: r.get(6)?,
                state: r.get(7)?,
                steps_done: r.get(8)?,
                steps_skipped: r.get(9)?,
                steps_pending: r.get(10)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let undoable = |r: &&RunEntry| {
        matches!(r.kind.as_str(), "apply" | "provision")
            && match r.state.as_deref() {
                Some(s) => s != "rolled-back",
                // Before run states were stored: undone when a finished rollback names it.
                None => !runs.iter().any(|b| {
                    b.kind == "rollback" && b.undoes_run == Some(r.id) && b.status == "done"
                }),
            }
    };
    let rollback_would_undo = runs.iter().rev().find(undoable).map(|r| r.id);
    for p in plans.iter_mut() {
        let in_force = runs
            .iter()
            .any(|r| r.kind == "apply" && r.plan_id == Some(p.id) && undoable(&r));
        if in_force {
            // A database store's plan has no homes or resources here (its objects are pg_*
            // rows): no line for it.
            p.progress = Some(crate::stage::progress(state, p.id)?)
                .filter(|g| g.homes > 0 || g.resources > 0);
        }
    }
    // A plain `apply` takes the latest complete plan: pending when no run of it is in force, or
    // when its runs in force carried out only part of it (a staged migration).
    let apply_would_carry_out = plans
        .iter()
        .rev()
        .find(|p| p.status == "complete")
        .filter(|p| {
            let in_force = runs
                .iter()
                .any(|r| r.kind == "apply" && r.plan_id == Some(p.id) && undoable(&r));
            !in_force || p.progress.as_ref().is_some_and(|g| !g.complete())
        })
        .map(|p| p.id);
    Ok(History {
        plans,
        runs,
        rollback_would_undo,
        apply_would_carry_out,
    })
}
