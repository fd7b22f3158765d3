//! Checks of the store against a finished run or against a plan about to be applied again.

use super::summary::Checked;
use super::PAGE;
use crate::error::{Error, Result};
use crate::stage::{self, Layout};
use crate::state::journal_rows::{self as rows, PlannedHashes, WrittenFile};
use crate::state::{Action, State};
use crate::store::seam::{SideFile, Store};
use std::path::Path;

/// Where a path of the store is after the run's home moves (`from` → `to`, in order).
pub(super) fn moved(rel: &str, moves: &[(String, String)]) -> String {
    let mut p = rel.to_string();
    for (from, to) in moves {
        if p == *from {
            p = to.clone();
        } else if let Some(rest) = p.strip_prefix(&format!("{from}/")) {
            p = format!("{to}/{rest}");
        }
    }
    p
}

/// What a file holds now, in words for a report (`missing`, or its hash).
pub(super) fn describe_found(found: &Option<String>) -> String {
    match found {
        None => "missing".to_string(),
        Some(s) => format!("holds other bytes (sha256 {s})"),
    }
}

/// Checks the files a finished run's rewrite steps name: after an apply they must hold what it
/// wrote (at their place after its home moves), after a rollback their original bytes.
pub(super) fn check_run(
    state: &State,
    dirs: Option<&dyn Store>,
    run_id: i64,
    originals: bool,
) -> Result<Checked> {
    let moves = if originals {
        Vec::new()
    } else {
        rows::done_moves(&state.conn, run_id)?
    };
    let steps = rows::written_files(&state.conn, run_id)?;
    let mut out = Checked::default();
    for WrittenFile {
        action,
        rel,
        before,
        after,
    } in steps
    {
        out.files += 1;
        let want = if originals { before } else { after };
        let (at, found) = if action == Action::Rewrite {
            let at = moved(&rel, &moves);
            let found = dirs.and_then(|d| d.hash_of(&at));
            (at, found)
        } else {
            // A delegate database or augments.xml: outside the store, named by its path.
            let found = SideFile(Path::new(&rel)).hash();
            (rel, found)
        };
        if found.as_deref() == Some(want.as_str()) {
            out.holding += 1;
        } else {
            out.differing.push((at, describe_found(&found)));
        }
    }
    Ok(out)
}

/// Before a plan whose run was rolled back is applied again: the store must hold what the plan
/// was made from (or, for a resource, what it would write).
/// Only what `sel` takes is checked (the other stages' homes may have moved).
pub(super) fn check_store_matches_plan(
    state: &State,
    dirs: &dyn Store,
    plan_id: i64,
    layout: &Layout,
    sel: &stage::Selection,
) -> Result<()> {
    // A page at a time: the plan may hold a million resources. The first few differing are named.
    let (mut total, mut n, mut differing) = (0, 0, Vec::new());
    let mut after: Option<String> = None;
    loop {
        let page = rows::planned_hashes_page(&state.conn, plan_id, after.as_deref(), PAGE)?;
        let full = page.len() as i64 == PAGE;
        after = page.last().map(|p| p.rel.clone());
        for PlannedHashes {
            rel,
            old_sha: old,
            new_sha: new,
        } in page.into_iter().filter(|p| layout.takes(Some(sel), &p.rel))
        {
            total += 1;
            let found = dirs.hash_of(&rel);
            if found.as_deref() != Some(old.as_str()) && found.as_deref() != Some(new.as_str()) {
                n += 1;
                if differing.len() < 5 {
                    differing.push(format!("{rel} ({})", describe_found(&found)));
                }
            }
        }
        if !full {
            break;
        }
    }
    let dbs = rows::changed_databases(&state.conn, plan_id)?;
    for (path, old) in dbs.into_iter().filter(|_| sel.rest) {
        let found = SideFile(Path::new(&path)).hash();
        if found.as_deref() != Some(old.as_str()) {
            n += 1;
            if differing.len() < 5 {
                differing.push(format!("{path} ({})", describe_found(&found)));
            }
        }
    }
    if n == 0 {
        return Ok(());
    }
    Err(Error::usage(format!(
        "plan {plan_id} cannot be applied again: {n} of the {total} resources it changes no longer hold what it was made from (first: {}). Run `principal-reconciler plan` for a plan of the store as it is, review the reports, then `apply` it",
        differing.join("; ")
    )))
}
