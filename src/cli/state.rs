//! `state prune`: keeps the state folder bounded ([`crate::prune`]) and says what it freed.

use super::{Context, Outcome};
use crate::error::Result;
use crate::prune::{PruneOptions, PruneReport, RunsToDrop};
use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
/// The `state` subcommands.
pub enum StateCommand {
    /// Drop old plans (all but the newest `[state] keep_plans`, never one a run still needs) and,
    /// when asked, the journal and backups of finished runs; prints what it frees, then compacts
    /// the state database
    Prune(PruneArgs),
}

/// Options of `state prune`.
#[derive(Args, Debug, Clone, Default)]
pub struct PruneArgs {
    /// Only say what would be dropped and how much it frees; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Plans to keep (default: `[state] keep_plans`)
    #[arg(long, value_name = "N")]
    pub keep_plans: Option<usize>,
    /// Also drop the journal and backups of this applied or rolled-back run (repeatable); it can
    /// then never be rolled back. A backup another run still refers to is kept
    #[arg(long, value_name = "RUN")]
    pub backups_of_run: Vec<i64>,
    /// Also drop the journal and backups of every applied or rolled-back run
    #[arg(long, conflicts_with = "backups_of_run")]
    pub all_backups: bool,
}

/// `state prune`: the flags become [`PruneOptions`]; the report is rendered here.
pub fn prune(ctx: &Context, args: &PruneArgs) -> Result<Outcome> {
    let runs = if args.all_backups {
        RunsToDrop::All
    } else if !args.backups_of_run.is_empty() {
        RunsToDrop::These(args.backups_of_run.clone())
    } else {
        RunsToDrop::None
    };
    let opts = PruneOptions {
        dry_run: args.dry_run,
        keep_plans: args.keep_plans,
        runs,
    };
    let report = crate::prune::run(&ctx.config, &opts)?;
    Ok(Outcome::ok(
        describe(&report),
        serde_json::json!({ "prune": report }),
    ))
}

fn mb(b: u64) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}

/// The human lines of a prune report.
pub fn describe(r: &PruneReport) -> String {
    let verb = if r.dry_run { "would drop" } else { "dropped" };
    let mut out = String::new();
    if r.plans.is_empty() {
        out.push_str("Plans: none to drop.\n");
    } else {
        let ids: Vec<String> = r.plans.iter().map(|p| p.plan_id.to_string()).collect();
        out.push_str(&format!(
            "Plans: {verb} {} ({}): {} planned resources, {} changes, {} of plan data.\n",
            r.plans.len(),
            ids.join(", "),
            r.plans.iter().map(|p| p.resources).sum::<i64>(),
            r.plans.iter().map(|p| p.changes).sum::<i64>(),
            mb(r.plans.iter().map(|p| p.bytes.max(0) as u64).sum())
        ));
    }
    if !r.runs.is_empty() {
        let ids: Vec<String> = r
            .runs
            .iter()
            .map(|x| format!("{} ({})", x.run_id, x.state))
            .collect();
        out.push_str(&format!(
            "Runs: {verb} the journal of {} ({}): {} steps; {} backup files, {}{}. {} no longer be rolled back.\n",
            r.runs.len(),
            ids.join(", "),
            r.runs.iter().map(|x| x.steps).sum::<i64>(),
            r.backups,
            mb(r.backup_bytes),
            match r.backups_shared {
                0 => String::new(),
                n => format!(" ({n} kept: another run's journal refers to them)"),
            },
            if r.dry_run { "They would" } else { "They can" }
        ));
    }
    if r.dry_run {
        out.push_str(&format!(
            "State database: {} now. Nothing was changed (--dry-run).\n",
            mb(r.database_bytes_before)
        ));
    } else {
        out.push_str(&format!(
            "State database: {} before, {} after.\n",
            mb(r.database_bytes_before),
            mb(r.database_bytes_after)
        ));
    }
    out
}
