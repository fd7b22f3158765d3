//! History (`runs`): every plan and every run in the state database, with what `rollback` would
//! undo now — the `git log` of a migration.

use crate::error::Result;
use crate::state::report_rows;
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

pub use crate::state::report_rows::RunEntry;

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

/// Reads the history.
pub fn history(state: &State) -> Result<History> {
    let mut plans: Vec<PlanEntry> = report_rows::plans(&state.conn)?
        .into_iter()
        .map(|p| PlanEntry {
            id: p.id,
            created_at: p.created_at,
            status: p.status,
            store_path: p.store_path,
            resources_changed: p.resources_changed,
            homes_moved: p.homes_moved,
            progress: None,
        })
        .collect();
    let runs = report_rows::runs(&state.conn)?;
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
