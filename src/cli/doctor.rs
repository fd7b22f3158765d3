//! `doctor [--fix]`: the store's ownership, permissions and caches ([`crate::store::doctor`] for
//! a file store, [`crate::db::verify`] for a database), rendered.

use super::{Context, Outcome};
use crate::config::StoreKind;
use crate::error::{Error, ExitStatus, Result};
use crate::finding::Finding;
use crate::store::doctor::{DoctorOptions, DoctorReport};
use clap::Args;
use std::fmt::Write as _;

#[derive(Args, Debug, Clone, Default)]
/// Options of `doctor`.
pub struct DoctorArgs {
    /// Repair ownership, MD5 attributes and leftovers of interrupted writes
    #[arg(long)]
    pub fix: bool,
}

/// `doctor`: exit 1 while findings remain (after `--fix`, those it could not repair).
pub fn run(ctx: &Context, args: &DoctorArgs) -> Result<Outcome> {
    if ctx.config.store.kind == StoreKind::CalendarserverPg {
        return database(ctx, args);
    }
    let opts = DoctorOptions { fix: args.fix };
    let report = crate::store::doctor::run(&ctx.config.store, &opts, ctx)?;
    let status = if report.remaining > 0 {
        ExitStatus::Problems
    } else {
        ExitStatus::Ok
    };
    let json = serde_json::to_value(&report).unwrap_or_default();
    Ok(Outcome {
        status,
        human: render(&report),
        json,
    })
}

/// `doctor` on a database store: it reports; `--fix` is refused (nothing is written there).
fn database(ctx: &Context, args: &DoctorArgs) -> Result<Outcome> {
    if args.fix {
        return Err(Error::usage(
            "doctor --fix does not write to a CalendarServer database; the problems listed by `doctor` are repaired by CalendarServer itself (MD5, ORGANIZER on the next write) or through plan and apply",
        ));
    }
    let f = crate::db::verify::doctor(&ctx.config)?;
    let problems = &f.report.problems;
    let status = if problems.is_empty() {
        ExitStatus::Ok
    } else {
        ExitStatus::Problems
    };
    let mut human = format!(
        "Doctor on {} (schema {}, {}): {} objects, ",
        f.label, f.version, f.release, f.report.resources
    );
    if problems.is_empty() {
        human.push_str("no problems.\n");
    } else {
        let _ = writeln!(human, "{} problems.", problems.len());
        for p in problems.iter().take(20) {
            let _ = writeln!(human, "  {}  {}  {}", p.kind, p.path, p.detail);
        }
    }
    Ok(Outcome {
        status,
        human,
        json: serde_json::json!({ "doctor": f.report }),
    })
}

/// The human summary of a doctor report.
pub fn render(r: &DoctorReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Store {}", r.store);
    let _ = writeln!(
        s,
        "Expected owner {} ({})",
        r.expected_owner, r.owner_source
    );
    let _ = writeln!(
        s,
        "Checked {} files and folders, {} resources",
        r.entries_checked, r.resources_checked
    );
    if r.found.is_empty() {
        let _ = writeln!(s, "No problems found.");
        return s;
    }
    for (kind, n) in &r.found {
        let fixed = r.fixed.get(kind).copied().unwrap_or(0);
        if r.fix {
            let _ = writeln!(s, "  {kind:<12} {n:>8} found {fixed:>8} fixed");
        } else {
            let _ = writeln!(s, "  {kind:<12} {n:>8} found");
        }
    }
    // Up to EXAMPLES findings of each kind; --json lists them all (up to MAX_LISTED).
    const EXAMPLES: usize = 10;
    for kind in r.found.keys() {
        let of_kind: Vec<&Finding> = r.findings.iter().filter(|f| &f.kind == kind).collect();
        let _ = writeln!(s, "{kind}:");
        for f in of_kind.iter().take(EXAMPLES) {
            match &f.fixed {
                Some(what) => {
                    let _ = writeln!(s, "  {}: {} — fixed: {what}", f.path, f.detail);
                }
                None => {
                    let _ = writeln!(s, "  {}: {}", f.path, f.detail);
                }
            }
        }
        let n = r.found[kind];
        if n > EXAMPLES as u64 {
            let _ = writeln!(
                s,
                "  … and {} more (--json lists them)",
                n - EXAMPLES as u64
            );
        }
    }
    if r.resources_checked > 0 && r.resources_without_xattrs == r.resources_checked {
        let _ = writeln!(
            s,
            "Note: no resource has any extended attribute. If this is a copy, it was made without them \
             (cp/rsync/tar without -X/--xattrs): the server's properties (ETags, ctags, resource types) \
             are lost; copy the store again keeping attributes."
        );
    }
    if r.remaining == 0 {
        let _ = writeln!(s, "All problems fixed.");
    } else if r.fix {
        let _ = writeln!(s, "{} problem(s) remain.", r.remaining);
    } else {
        let _ = writeln!(
            s,
            "{} problem(s). `doctor --fix` repairs ownership, MD5 attributes and leftovers.",
            r.remaining
        );
    }
    s
}
