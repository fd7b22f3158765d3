//! `verify`: checks the store against the current directory, writes verify.csv and says what is
//! still wrong (exit 1 while problems remain), and whether a staged migration is part-applied.

use super::{Context, Outcome};
use crate::directory;
use crate::error::{ExitStatus, Result};
use crate::stage::Tally;
use serde_json::json;

/// Runs the check and renders its report.
pub fn run(ctx: &Context) -> Result<Outcome> {
    let cfg = &ctx.config;
    let current = directory::load_current(&cfg.directory)?;
    let report = crate::verify::verify(ctx, cfg, &current)?;
    let csv = crate::verify::write_csv(&report, &cfg.report)?;
    let status = if report.problems.is_empty() {
        ExitStatus::Ok
    } else {
        ExitStatus::Problems
    };
    let mut human = crate::verify::human(&report);
    let stage = crate::verify::staged(cfg)?;
    if let Some(p) = &stage {
        human.push_str(&partly_applied(p));
    }
    human.push_str(&format!("List: {}\n", csv.display()));
    let mut json = json!({ "verify": report, "csv": csv });
    if let Some(p) = stage {
        json["partly_applied"] = json!(p);
    }
    Ok(Outcome {
        status,
        human,
        json,
    })
}

/// The note on a plan only partly carried out (a staged migration).
fn partly_applied(p: &Tally) -> String {
    format!(
        "Plan {} is partly applied (a staged migration, {} {}): {}. {} resources are pending; the problems above include those of the homes not yet applied: `principal-reconciler apply` carries them out.\n",
        p.plan_id,
        if p.runs.len() == 1 { "run" } else { "runs" },
        p.runs.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", "),
        p.line(),
        p.resources_pending
    )
}
