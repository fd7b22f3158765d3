//! `plan`: builds the mapping and the change plan ([`crate::plan`]), writes the reports, prunes
//! old plans, and renders the summary.

use super::{Context, Outcome};
use crate::config::Config;
use crate::directory::Directory;
use crate::error::{ExitStatus, Result};
use crate::plan::{PlanSummary, ProvisionFindings};
use crate::state::State;
use serde_json::json;
use std::collections::BTreeMap;

/// `plan`: exit 1 while ambiguous addresses or problems remain.
pub fn run(ctx: &Context) -> Result<Outcome> {
    let cfg = &ctx.config;
    let (current, old) = crate::plan::load_directories(cfg)?;
    let findings = provision_findings(cfg, &current, &old)?;
    let summary = crate::plan::build(ctx, cfg, &current, &old, findings.as_ref())?;
    let mut state = State::open(&cfg.state.path)?;
    crate::report::finish_plan(&state, summary.plan_id, &cfg.report)?;
    let pruned = crate::plan::prune_after_plan(&mut state, cfg.state.keep_plans)?;
    let status = if summary.problems.is_empty() && summary.ambiguous.is_empty() {
        ExitStatus::Ok
    } else {
        ExitStatus::Problems
    };
    let mut human = human_summary(&summary, &cfg.report.dir, true);
    if !pruned.is_empty() {
        human.push_str(&format!(
            "Older plans dropped ([state] keep_plans = {}): {}.\n",
            cfg.state.keep_plans,
            pruned
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(Outcome {
        status,
        human,
        json: json!({ "plan": summary, "reports": cfg.report.dir, "pruned_plans": pruned }),
    })
}

/// The provisioning findings a plan keeps, when `[provision]` names an access group or an
/// augments file.
pub fn provision_findings(
    cfg: &Config,
    current: &Directory,
    old: &Directory,
) -> Result<Option<ProvisionFindings>> {
    if cfg.provision.access_group.is_none() && cfg.provision.augments_file.is_none() {
        return Ok(None);
    }
    let report = crate::provision::analyse(cfg, current, old)?;
    let mut counts = BTreeMap::new();
    for f in &report.findings {
        *counts.entry(f.problem.to_string()).or_default() += 1;
    }
    Ok(Some(ProvisionFindings {
        json: serde_json::to_string(&report.findings)?,
        counts,
    }))
}

/// The short terminal summary of a plan.
pub fn human_summary(s: &PlanSummary, report_dir: &std::path::Path, next_step: bool) -> String {
    let o = |k: &str| s.by_outcome.get(k).copied().unwrap_or(0);
    let mut out = String::new();
    out.push_str(&format!(
        "Plan {} — {} resources scanned, {} to change ({} properties).\n",
        s.plan_id, s.resources_scanned, s.resources_changed, s.properties_changed
    ));
    out.push_str(&format!(
        "Addresses: {} mapped, {} unchanged, {} ambiguous, {} unmatched, {} external{}.\n",
        o("mapped"),
        o("unchanged"),
        o("ambiguous"),
        o("unmatched"),
        o("external"),
        match o("acknowledged") {
            0 => String::new(),
            n => format!(", {n} acknowledged (people who left)"),
        }
    ));
    if !s.homes.is_empty() {
        let h: Vec<String> = s.homes.iter().map(|(k, v)| format!("{v} {k}")).collect();
        out.push_str(&format!("Homes: {}.\n", h.join(", ")));
    }
    if let Some(ab) = &s.addressbooks {
        let h: Vec<String> = ab.homes.iter().map(|(k, v)| format!("{v} {k}")).collect();
        out.push_str(&format!(
            "Address books: {} cards in {} homes ({}); {} group members of {} name directory records, {} to rewrite in {} cards.\n",
            ab.cards,
            ab.homes.values().sum::<usize>(),
            if h.is_empty() { "none".to_string() } else { h.join(", ") },
            ab.principal_members,
            ab.members,
            ab.members_changed,
            ab.cards_changed
        ));
    }
    if !s.problems.is_empty() {
        out.push_str(&format!("Problems: {} resources could not be read as calendar objects (listed in the report).\n", s.problems.len()));
    }
    for w in &s.warnings {
        out.push_str(&format!("Warning: {w}\n"));
    }
    out.push_str(&format!(
        "Reports: {}/report.html (and mapping.csv, changes.csv, summary.json, mapping-todo.csv).\n",
        report_dir.display()
    ));
    if next_step && o("ambiguous") > 0 {
        out.push_str("Next: decide the ambiguous addresses: copy mapping-todo.csv, fill in its last column, name the copy in [rewrite] mapping_file, then plan again; or run `principal-reconciler apply` to apply this plan.\n");
    } else if next_step {
        out.push_str("Next: review the report, then run `principal-reconciler apply` (journaled; `rollback` undoes it).\n");
    }
    out
}
