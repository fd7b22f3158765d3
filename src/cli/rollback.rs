//! `rollback`: undoes an apply run through [`crate::journal`] and renders what each undone run
//! did as text or JSON.

use super::apply::push_listed;
use super::{Context, Outcome, RollbackArgs};
use crate::error::{ExitStatus, Result};
use crate::journal::{self, RollbackOptions, RunSummary};
use serde_json::json;

/// `rollback [--run ID] [--force]`: undoes an apply run (default: the latest), renders the result.
pub fn run(ctx: &Context, args: &RollbackArgs) -> Result<Outcome> {
    let opts = RollbackOptions {
        run: args.run,
        force: args.force,
    };
    let runs = journal::rollback(ctx, &ctx.config, &opts)?;
    Ok(rollback_outcome(runs))
}

/// The text and JSON of the runs a rollback undid, and the exit status.
fn rollback_outcome(runs: Vec<RunSummary>) -> Outcome {
    let mut human = String::new();
    let mut status = ExitStatus::Ok;
    for s in &runs {
        let target = s.undoes_run.unwrap_or_default();
        for n in &s.notes {
            human.push_str(&format!("note: {n}\n"));
        }
        if s.already_done {
            let checked = s.checked.clone().unwrap_or_default();
            human.push_str(&format!(
                "rollback: run {target} was already rolled back by run {}{}.\n",
                s.run_id,
                s.finished_at
                    .as_deref()
                    .map(|t| format!(" (finished {t})"))
                    .unwrap_or_default()
            ));
            if checked.differing.is_empty() {
                human.push_str(&format!(
                    "Checked now: all {} files it had rewritten hold their original bytes. Nothing is left to undo.\n",
                    checked.files
                ));
            } else {
                status = status.max(ExitStatus::Problems);
                human.push_str(&format!(
                    "Checked now: {} of the {} files it had rewritten no longer hold their original bytes:\n",
                    checked.differing.len(),
                    checked.files
                ));
                push_listed(&mut human, "changed", &checked.differing);
                human.push_str(&format!(
                    "`principal-reconciler rollback --run {target} --force` puts their original bytes back, replacing what is there now.\n"
                ));
            }
            continue;
        }
        if let Some(sig) = &s.interrupted {
            status = ExitStatus::Interrupted;
            human.push_str(&format!(
                "rollback run {} (of run {target}) stopped by {sig} after a whole batch: {} files restored so far. Nothing is half-written: `principal-reconciler rollback --run {target}` resumes it.\n",
                s.run_id, s.written
            ));
            continue;
        }
        human.push_str(&format!(
            "rollback run {} of run {target}{}: {} files restored, {} already as before, {} skipped, {} home move(s) undone.\n",
            s.run_id,
            if s.resumed { " (resumed; counts are the whole run's)" } else { "" },
            s.written,
            s.unchanged,
            s.skipped.len(),
            s.homes_adopted
        ));
        push_listed(&mut human, "not restored", &s.skipped);
        if !s.skipped.is_empty() {
            status = status.max(ExitStatus::Problems);
            let damaged = s
                .skipped
                .iter()
                .filter(|(_, d)| d.starts_with("its backup"))
                .count();
            if damaged > 0 {
                human.push_str(&format!(
                    "{damaged} file(s) could not be restored because their backup in the state folder is damaged or missing; restore them from another copy.\n"
                ));
            }
            if s.skipped.len() > damaged {
                human.push_str(&format!(
                    "Some files were not restored because they changed after the run or are missing: check them; `principal-reconciler rollback --run {target} --force` restores them anyway, replacing the later changes.\n"
                ));
            }
        }
    }
    let json = json!({ "run": runs.last(), "runs": runs });
    Outcome {
        status,
        human,
        json,
    }
}
