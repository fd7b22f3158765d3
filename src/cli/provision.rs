//! `provision [--apply]`: directory records that get no calendar principal ([`crate::provision`]),
//! rendered; with `--apply`, the changes made.

use super::{Context, Outcome};
use crate::error::{ExitStatus, Result};
use crate::provision::{ProvisionReport, RecordProblem, Severity};
use clap::Args;
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Args, Debug, Clone, Default)]
/// Options of `provision`.
pub struct ProvisionArgs {
    /// Make the changes (without it, only report)
    #[arg(long)]
    pub apply: bool,
}

/// `provision`: exit 1 while something needs doing (without `--apply`), or after `--apply` when
/// errors remain or a dsimport file waits to be imported by hand.
pub fn run(ctx: &Context, args: &ProvisionArgs) -> Result<Outcome> {
    let cfg = &ctx.config;
    let report = crate::provision::findings(cfg)?;
    let csv = crate::provision::write_csv(&report, &cfg.report)?;
    let mut human = human_summary(&report);
    let mut doc = report_json(&report);
    doc["report"] = json!(csv);
    let _ = writeln!(human, "Report: {}", csv.display());
    if !args.apply {
        let status = if report.needs_doing() {
            if report.findings.iter().any(|f| f.severity == Severity::Fix) {
                human.push_str(
                    "Next: review it, then run `principal-reconciler provision --apply`.\n",
                );
            }
            ExitStatus::Problems
        } else {
            ExitStatus::Ok
        };
        return Ok(Outcome {
            status,
            human,
            json: doc,
        });
    }
    let done = crate::provision::apply(cfg, &report)?;
    if let Some(l) = &done.ldap {
        let _ = writeln!(
            human,
            "Applied: group {} on {}: {} GUID/name value(s) added, {} removed in {} request(s).",
            l.dn, l.server, l.values_added, l.values_removed, l.requests
        );
    }
    if let Some(p) = &done.dsimport {
        let _ = writeln!(
            human,
            "Wrote {}: the access group's complete member lists; import it on the server with dsimport (overwrite mode) into the node holding the group.",
            p.display()
        );
    }
    if let (Some(p), Some(sha)) = (&done.augments_file, &done.augments_backup) {
        let _ = writeln!(
            human,
            "Applied: {}: {} record(s) added, {} uid(s) rewritten; the original is saved as {}/backups/{}/{sha} (undo with `rollback --run {}`).",
            p.display(),
            done.augments_added,
            done.augments_rewritten,
            cfg.state.path.display(),
            &sha[..2],
            done.augments_run.unwrap_or_default()
        );
    }
    doc["applied"] = json!(done);
    let errors = report
        .findings
        .iter()
        .any(|f| f.severity == Severity::Error);
    let status = if errors || done.dsimport.is_some() {
        ExitStatus::Problems
    } else {
        ExitStatus::Ok
    };
    Ok(Outcome {
        status,
        human,
        json: doc,
    })
}

/// The human summary of a report.
pub fn human_summary(report: &ProvisionReport) -> String {
    let mut out = String::new();
    let c = report.counts();
    let _ = writeln!(
        out,
        "Provision: {} users, places and resources checked in {}.",
        report.checked, report.directory
    );
    if report.findings.is_empty() {
        out.push_str("Nothing to do: every record gets a calendar principal.\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{} to fix with --apply, {} error(s) to fix in the directory, {} warning(s), {} note(s).",
        c["fix"], c["error"], c["warning"], c["note"]
    );
    if !report.needs_doing() {
        out.push_str("Nothing needs doing.\n");
    }
    let mut by_problem: BTreeMap<(Severity, &str), Vec<&RecordProblem>> = BTreeMap::new();
    for f in &report.findings {
        by_problem
            .entry((f.severity, f.problem))
            .or_default()
            .push(f);
    }
    for ((sev, p), list) in &by_problem {
        let names: Vec<String> = list
            .iter()
            .take(8)
            .map(|f| {
                if f.short_name.is_empty() {
                    f.guid.clone()
                } else {
                    f.short_name.clone()
                }
            })
            .collect();
        let more = if list.len() > 8 {
            format!(", and {} more", list.len() - 8)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "  {:<8} {p}: {} ({}{more})",
            sev.as_str(),
            list.len(),
            names.join(", ")
        );
    }
    out
}

/// The `--json` document of a report.
fn report_json(report: &ProvisionReport) -> serde_json::Value {
    json!({
        "directory": report.directory,
        "checked": report.checked,
        "counts": report.counts(),
        "needs_doing": report.needs_doing(),
        "findings": report.findings,
        "access_group": report.access,
        "augments": report.augments,
        "warnings": report.warnings,
    })
}
