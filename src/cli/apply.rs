//! `apply`: carries out a stored plan (or the next stage of it) through [`crate::journal`] and
//! renders the run's summary as text or JSON.

use super::{ApplyArgs, Context, Outcome};
use crate::error::{ExitStatus, Result};
use crate::journal::{self, ApplyOptions, RunSummary};
use crate::stage::Request;
use serde_json::json;

/// `apply [--plan ID] [--home USER…] [--limit N] [--rehearse DIR]`: carries out a plan (or the
/// next stage of it), renders the run's summary.
pub fn run(ctx: &Context, args: &ApplyArgs) -> Result<Outcome> {
    let mut cfg = ctx.config.clone();
    let rehearsal = args.rehearse.is_some();
    if let Some(dir) = &args.rehearse {
        let state_from = cfg.state.path.clone();
        crate::rehearse::prepare(&mut cfg, dir)?;
        crate::rehearse::copy_tree(&state_from, &cfg.state.path)
            .map_err(|e| e.context("cannot copy the state database into the rehearsal"))?;
        let current = crate::directory::load_current(&cfg.directory)?;
        let file = crate::rehearse::write_config(&cfg, dir, &current)?;
        let s = journal::apply(ctx, &cfg, &options(args, rehearsal))?;
        let mut out = apply_outcome(s);
        out.human.push_str(&format!(
            "Rehearsal in {}: the real store was not touched. Inspect it with `principal-reconciler --config {} verify` (or doctor, report, rollback).\n",
            dir.display(),
            file.display()
        ));
        return Ok(out);
    }
    let s = journal::apply(ctx, &cfg, &options(args, rehearsal))?;
    Ok(apply_outcome(s))
}

/// The library's options for what `args` asks.
fn options(args: &ApplyArgs, rehearsal: bool) -> ApplyOptions {
    ApplyOptions {
        plan: args.plan,
        force: args.force,
        rehearsal,
        request: Request {
            homes: args.homes.clone(),
            limit: args.limit,
        },
    }
}

/// Lists up to 20 `(path, why)` pairs, one a line, then how many more there are.
pub(super) fn push_listed(human: &mut String, verb: &str, list: &[(String, String)]) {
    for (p, why) in list.iter().take(20) {
        human.push_str(&format!("  {verb} {p}: {why}\n"));
    }
    if list.len() > 20 {
        human.push_str(&format!(
            "  … and {} more (--json lists them all)\n",
            list.len() - 20
        ));
    }
}

/// The text and JSON of an apply run's summary, and its exit status.
fn apply_outcome(s: RunSummary) -> Outcome {
    let mut human = String::new();
    let mut status = ExitStatus::Ok;
    for n in &s.notes {
        human.push_str(&format!("note: {n}\n"));
    }
    if s.already_done {
        let checked = s.checked.clone().unwrap_or_default();
        let by = match &s.stage {
            Some(p) => format!(
                "in {} stages, by runs {}; the latest, run {}",
                p.runs.len(),
                p.runs
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                s.run_id
            ),
            None => format!("by run {}", s.run_id),
        };
        human.push_str(&format!(
            "apply: plan {} was applied {by}{}: {} resources written, {} already as planned, {} skipped, {} home(s) moved.\n",
            s.plan_id.unwrap_or_default(),
            s.finished_at.as_deref().map(|t| format!(" (finished {t})")).unwrap_or_default(),
            s.written,
            s.unchanged,
            s.skipped.len(),
            s.homes_adopted
        ));
        if checked.differing.is_empty() {
            human.push_str(&format!(
                "Checked now: all {} resources {} wrote still hold what {} wrote. Nothing is left to apply.\n",
                checked.files,
                if s.stage.is_some() { "its runs" } else { "it" },
                if s.stage.is_some() { "they" } else { "it" },
            ));
        } else {
            status = ExitStatus::Problems;
            human.push_str(&format!(
                "Checked now: {} of the {} resources it wrote no longer hold what it wrote (changed since, by the server or by hand):\n",
                checked.differing.len(),
                checked.files
            ));
            push_listed(&mut human, "changed", &checked.differing);
            human.push_str("This plan has nothing left to apply. To migrate what changed, run `principal-reconciler plan`, review, then `apply` the new plan.\n");
        }
        return Outcome {
            status,
            human,
            json: json!({ "run": s }),
        };
    }
    if let Some(sig) = &s.interrupted {
        human.push_str(&format!(
            "apply run {} stopped by {sig} after a whole batch: {} resources written so far, {} already as planned, {} skipped. Nothing is half-written: `principal-reconciler apply` resumes it, `principal-reconciler rollback --run {}` undoes it.\n",
            s.run_id, s.written, s.unchanged, s.skipped.len(), s.run_id
        ));
        return Outcome {
            status: ExitStatus::Interrupted,
            human,
            json: json!({ "run": s }),
        };
    }
    human.push_str(&format!(
        "apply run {}{}: {} resources written, {} already as planned, {} skipped, {} home(s) moved{}.\n",
        s.run_id,
        if s.resumed { " (resumed; counts are the whole run's)" } else { "" },
        s.written,
        s.unchanged,
        s.skipped.len(),
        s.homes_adopted,
        if s.databases > 0 { format!(", {} database(s) rewritten", s.databases) } else { String::new() }
    ));
    push_listed(&mut human, "skipped", &s.skipped);
    if !s.skipped.is_empty() {
        status = ExitStatus::Problems;
        human.push_str("Some resources were skipped: run `principal-reconciler plan` again, review, then apply the new plan.\n");
    }
    if let Some(p) = &s.stage {
        human.push_str(&format!("Plan {}: {}.\n", p.plan_id, p.line()));
        if !p.complete() {
            human.push_str("Next: `principal-reconciler apply` carries out what is pending (or `apply --home USER` / `--limit N` the next stage); `principal-reconciler rollback` undoes this stage.\n");
        }
    }
    Outcome {
        status,
        human,
        json: json!({ "run": s }),
    }
}
