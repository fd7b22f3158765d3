//! `runs`: every plan and every run the state database remembers, with what `rollback` would
//! undo and `apply` would carry out now ([`crate::history`] gathers them; this draws the table).

use super::{Context, Outcome};
use crate::error::Result;
use crate::history::History;
use crate::state::State;

/// Reads the history and renders it.
pub fn run(ctx: &Context) -> Result<Outcome> {
    let state = State::open_existing(&ctx.config.state.path)?;
    let h = crate::history::history(&state)?;
    Ok(Outcome::ok(human(&h), serde_json::json!({ "history": h })))
}

/// The history as a table for a terminal.
fn human(h: &History) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if h.plans.is_empty() && h.runs.is_empty() {
        return "No plans or runs yet: run `principal-reconciler plan`.\n".to_string();
    }
    let _ = writeln!(out, "Plans:");
    for p in &h.plans {
        let _ = writeln!(
            out,
            "  plan {:<4} {}  {:<8}  {} resources, {} homes to move",
            p.id, p.created_at, p.status, p.resources_changed, p.homes_moved
        );
        if let Some(g) = &p.progress {
            let _ = writeln!(out, "             {}", g.line());
        }
    }
    if !h.runs.is_empty() {
        let _ = writeln!(out, "Runs:");
    }
    for r in &h.runs {
        let what = match (r.kind.as_str(), r.plan_id, r.undoes_run) {
            ("rollback", _, Some(u)) => format!("rollback of run {u}"),
            (k, Some(p), _) => format!("{k} of plan {p}"),
            (k, None, _) => k.to_string(),
        };
        let state = r.state.as_deref().unwrap_or(&r.status);
        let _ = writeln!(
            out,
            "  run {:<5} {:<22} {}  {:<12}  {} done, {} skipped{}",
            r.id,
            what,
            r.started_at,
            state,
            r.steps_done,
            r.steps_skipped,
            if r.steps_pending > 0 {
                format!(", {} pending", r.steps_pending)
            } else {
                String::new()
            }
        );
    }
    match h.rollback_would_undo {
        Some(id) => {
            let _ = writeln!(out, "`rollback` would undo run {id} now.");
        }
        None => {
            let _ = writeln!(out, "Nothing for `rollback` to undo.");
        }
    }
    if let Some(p) = h.apply_would_carry_out {
        let partial = h
            .plans
            .iter()
            .any(|x| x.id == p && x.progress.as_ref().is_some_and(|g| g.partial()));
        if partial {
            let _ = writeln!(
                out,
                "`apply` would carry out what is pending of plan {p} (`apply --home USER` or `--limit N`: the next stage)."
            );
        } else {
            let _ = writeln!(out, "`apply` would carry out plan {p}.");
        }
    }
    out
}
