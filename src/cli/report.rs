//! `report [--plan ID]`: writes the reports of a plan again.

use super::{Context, Outcome};
use crate::error::Result;
use crate::state::State;
use clap::Args;

#[derive(Args, Debug, Clone, Default)]
/// Options of `report`.
pub struct ReportArgs {
    /// Report on this plan (default: the latest)
    #[arg(long, value_name = "ID")]
    pub plan: Option<i64>,
}

/// Writes the reports of the plan (default: the latest) and lists them.
pub fn run(ctx: &Context, args: &ReportArgs) -> Result<Outcome> {
    let cfg = &ctx.config;
    let state = State::open_existing(&cfg.state.path)?;
    let plan_id = state.plan_or_latest(args.plan)?;
    let written = crate::report::write_reports(&state, plan_id, &cfg.report)?;
    let mut human = format!("Reports of plan {plan_id}:\n");
    for p in &written {
        human.push_str(&format!("  {}\n", p.display()));
    }
    Ok(Outcome::ok(
        human,
        serde_json::json!({ "plan_id": plan_id, "reports": written }),
    ))
}
