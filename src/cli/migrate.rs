//! `migrate`: pull, scan, plan, apply, verify and report in one go, on the store or a rehearsal
//! copy; a real migrate asks first on a terminal (`--yes` for scripts).

use super::{Context, MigrateArgs, Outcome};
use crate::config::Config;
use crate::directory::Directory;
use crate::error::{Error, ExitStatus, Result};
use crate::journal::{ApplyOptions, RunSummary};
use crate::plan::PlanSummary;
use crate::state::State;
use crate::verify::VerifyReport;
use serde_json::json;
use std::path::PathBuf;

/// `migrate`: pull, plan, report, apply (asking first on a terminal), provision, verify.
pub fn run(ctx: &Context, args: &MigrateArgs) -> Result<Outcome> {
    let mut cfg = ctx.config.clone();
    let mut steps = Vec::new();
    let planned = plan(ctx, args, &mut cfg, &mut steps)?;
    let summary = &planned.summary;
    let declined = !args.dry_run && args.rehearse.is_none() && !args.yes && !ask(&cfg, summary)?;
    let mut run = None;
    let stop = if args.dry_run {
        "dry run: stopped after plan; nothing in the store changed.".to_string()
    } else if declined {
        format!(
            "not applied: nothing in the store changed. Plan {} is kept: review its reports, then `principal-reconciler apply --plan {}`.",
            summary.plan_id, summary.plan_id
        )
    } else {
        let r =
            crate::journal::apply(ctx, &cfg, &ApplyOptions::whole(summary.plan_id, args.force))?;
        if let Some(sig) = &r.interrupted {
            return Ok(Outcome {
                status: ExitStatus::Interrupted,
                human: format!(
                    "migrate stopped by {sig} during apply run {}: {} resources written so far. Nothing is half-written: `principal-reconciler apply` resumes it, `rollback --run {}` undoes it.\n",
                    r.run_id, r.written, r.run_id
                ),
                json: json!({ "steps": steps, "plan": summary, "run": r }),
            });
        }
        let msg = applied(ctx, &cfg, &planned, &r, &mut steps);
        run = Some(r);
        msg
    };
    if cfg.provision.enabled {
        provision(args, &cfg, &planned, &mut steps)?;
    }
    let mut verified = None;
    if !args.dry_run && !declined {
        let report = crate::verify::verify(ctx, &cfg, &planned.current)?;
        let csv = crate::verify::write_csv(&report, &cfg.report)?;
        steps.push(format!(
            "verify: {} problems (listed in {})",
            report.problems.len(),
            csv.display()
        ));
        verified = Some(report);
    }
    let human = human(args, &cfg, &steps, summary, &stop, verified.as_ref());
    let skipped = declined || run.as_ref().is_some_and(|r| !r.skipped.is_empty());
    let unverified = verified.as_ref().is_some_and(|v| !v.problems.is_empty());
    let status =
        if summary.ambiguous.is_empty() && summary.problems.is_empty() && !skipped && !unverified {
            ExitStatus::Ok
        } else {
            ExitStatus::Problems
        };
    Ok(Outcome {
        status,
        human,
        json: json!({ "steps": steps, "plan": summary, "run": run, "verify": verified, "result": stop, "store": cfg.store.path, "reports": cfg.report.dir, "rehearsal_config": planned.rehearsal_config }),
    })
}

/// What the plan stage made: the directories it read, the plan, and a rehearsal's own
/// configuration file.
struct Planned {
    current: Directory,
    old: Directory,
    rehearsal_config: Option<PathBuf>,
    summary: PlanSummary,
}

/// Copies the store for a rehearsal, pulls the directories, plans, writes the reports and drops
/// older plans; each step noted in `steps`.
fn plan(
    ctx: &Context,
    args: &MigrateArgs,
    cfg: &mut Config,
    steps: &mut Vec<String>,
) -> Result<Planned> {
    if let Some(dir) = &args.rehearse {
        let copy = crate::rehearse::prepare(cfg, dir)?;
        steps.push(format!("rehearsal: store copied to {}", copy.display()));
    }
    let (current, old) = crate::plan::load_directories(cfg)?;
    let rehearsal_config = match &args.rehearse {
        Some(dir) => Some(crate::rehearse::write_config(cfg, dir, &current)?),
        None => None,
    };
    steps.push(format!(
        "pull: {} current records from {}, {} old records",
        current.records.len(),
        current.origin,
        old.records.len()
    ));
    let findings = super::plan::provision_findings(cfg, &current, &old)?;
    let summary = crate::plan::build(ctx, cfg, &current, &old, findings.as_ref())?;
    steps.push(format!(
        "plan {}: {} resources to change",
        summary.plan_id, summary.resources_changed
    ));
    let mut state = State::open(&cfg.state.path)?;
    crate::report::finish_plan(&state, summary.plan_id, &cfg.report)?;
    steps.push(format!("report: {}", cfg.report.dir.display()));
    let pruned = crate::plan::prune_after_plan(&mut state, cfg.state.keep_plans)?;
    if !pruned.is_empty() {
        let ids: Vec<String> = pruned.iter().map(i64::to_string).collect();
        steps.push(format!("older plans dropped: {}", ids.join(", ")));
    }
    Ok(Planned {
        current,
        old,
        rehearsal_config,
        summary,
    })
}

/// Asks whether to apply the plan now: true for yes.
fn ask(cfg: &Config, summary: &PlanSummary) -> Result<bool> {
    let question = format!(
        "{}Apply plan {} to {} now ({} resources)? It is journaled and `rollback` undoes it. [y/N] ",
        super::plan::human_summary(summary, &cfg.report.dir, false),
        summary.plan_id,
        cfg.store.path.display(),
        summary.resources_changed
    );
    confirm(&question).map_err(|e| {
        e.context(format!(
            "plan {} is recorded and its reports are in {}",
            summary.plan_id,
            cfg.report.dir.display()
        ))
    })
}

/// Notes the apply run in `steps`; returns the result line (how to inspect or undo it).
fn applied(
    ctx: &Context,
    cfg: &Config,
    planned: &Planned,
    r: &RunSummary,
    steps: &mut Vec<String>,
) -> String {
    steps.push(format!(
        "apply run {}: {} resources written, {} skipped",
        r.run_id,
        r.written,
        r.skipped.len()
    ));
    match &planned.rehearsal_config {
        Some(file) => format!(
            "rehearsal applied to {}; the real store was not touched. Inspect it with `principal-reconciler --config {} verify` (or doctor, report, rollback), then migrate for real.",
            cfg.store.path.display(),
            file.display()
        ),
        None => format!(
            "applied; undo with `principal-reconciler --config {} rollback --run {}`.",
            ctx.config.source.display(),
            r.run_id
        ),
    }
}

/// Provisioning: analyses, writes provision.csv and (not in a dry run or rehearsal) applies it.
fn provision(
    args: &MigrateArgs,
    cfg: &Config,
    planned: &Planned,
    steps: &mut Vec<String>,
) -> Result<()> {
    let report = crate::provision::analyse(cfg, &planned.current, &planned.old)?;
    let csv = crate::provision::write_csv(&report, &cfg.report)?;
    let needs = report
        .findings
        .iter()
        .filter(|f| f.severity.needs_doing())
        .count();
    if args.rehearse.is_some() && needs > 0 {
        // A rehearsal never touches the real directory or augments file.
        steps.push(format!(
            "provision: {needs} findings need action (listed in {}); not applied in a rehearsal",
            csv.display()
        ));
    } else if args.dry_run || needs == 0 {
        steps.push(format!(
            "provision: {needs} records need provisioning (listed in {})",
            csv.display()
        ));
    } else {
        let applied = crate::provision::apply(cfg, &report)?;
        let how = match &applied.dsimport {
            Some(f) => format!(
                "the access group's new members are in {} — import it with dsimport",
                f.display()
            ),
            None => "fixed in the directory / augments".to_string(),
        };
        steps.push(format!(
            "provision: {needs} findings need action ({}); {how}",
            csv.display()
        ));
    }
    Ok(())
}

/// The terminal text: the steps, the plan's summary, the result line and verify's summary.
fn human(
    args: &MigrateArgs,
    cfg: &Config,
    steps: &[String],
    summary: &PlanSummary,
    stop: &str,
    verified: Option<&VerifyReport>,
) -> String {
    let mut human = String::new();
    for s in steps {
        human.push_str(&format!("• {s}\n"));
    }
    human.push_str(&super::plan::human_summary(
        summary,
        &cfg.report.dir,
        args.dry_run,
    ));
    human.push_str(stop);
    human.push('\n');
    if let Some(v) = verified {
        human.push_str(&crate::verify::human(v));
    }
    human
}

/// Asks a yes/no question on the terminal (the question on stderr, the answer from stdin).
/// Without a terminal nothing can be asked: an error that names `--yes`.
fn confirm(question: &str) -> Result<bool> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    if !std::io::stdin().is_terminal() {
        return Err(Error::usage(
            "migrate changes the real store with a plan nobody reviewed: pass --yes to do so without a terminal, or review the plan and run `principal-reconciler apply`",
        ));
    }
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "{question}");
    let _ = err.flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Error::runtime(format!("cannot read the answer: {e}")))?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}
