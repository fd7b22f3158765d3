//! Home steps (moves, folders, attributes) journaled one at a time, and the adoption of homes.

use super::summary::RunSummary;
use crate::error::Result;
use crate::homes::{self, HomeStep};
use crate::interrupt;
use crate::state::journal_rows::{self as rows, HomeToAdopt, NewHomeStep};
use crate::state::State;
use crate::store::addressbook;
use crate::store::seam::Store;

/// Records a step as pending (durably), takes it, marks it done. `home` names the home it adopts
/// (counted in the run's summary).
pub(super) fn journaled_home_step(
    state: &mut State,
    run_id: i64,
    store: &dyn Store,
    step: &HomeStep,
    home: &str,
) -> Result<()> {
    let (rel, target, meta) = step.to_row();
    let row = NewHomeStep {
        action: step.action(),
        rel: &rel,
        target: target.as_deref(),
        meta: Some(&meta),
        detail: &format!("home:{home}"),
    };
    let seq = rows::insert_home_step(&state.conn, run_id, &row)?;
    store.home_step(step, false)?;
    rows::mark_done(&state.conn, run_id, seq)
}

/// Moves every home kept under an old id to its current GUID's hashed path (see [`crate::homes`]).
/// `false` when a signal stopped it between two homes.
pub(super) fn adopt_homes(
    state: &mut State,
    run_id: i64,
    plan_id: i64,
    dirs: &dyn Store,
    take: &dyn Fn(&str) -> bool,
    summary: &mut RunSummary,
) -> Result<bool> {
    let store = dirs.roots().store.as_path();
    // Home steps left pending by a crash: each is idempotent, finish it.
    for p in rows::pending_home_steps(&state.conn, run_id)? {
        dirs.home_step(
            &HomeStep::from_row(&p.action, p.rel, p.target, &p.meta)?,
            false,
        )?;
        rows::mark_done(&state.conn, run_id, p.seq)?;
    }
    let todo = rows::homes_to_adopt(&state.conn, plan_id)?;
    for home in todo.into_iter().filter(|h| take(&h.old_rel)) {
        let HomeToAdopt {
            old_rel,
            layout,
            old_id,
            new_guid,
        } = home;
        if interrupt::pending().is_some() {
            return Ok(false);
        }
        let steps = homes::plan_adoption(store, &old_rel, &new_guid, &mut summary.notes)?;
        for step in &steps {
            journaled_home_step(state, run_id, dirs, step, &old_rel)?;
        }
        let hrefs = homes::old_hrefs(&layout, &old_id);
        for step in
            homes::plan_href_updates(store, &homes::hashed_home(&new_guid), &hrefs, &new_guid)?
        {
            journaled_home_step(state, run_id, dirs, &step, &old_rel)?;
        }
    }
    if interrupt::pending().is_some() {
        return Ok(false);
    }
    adopt_addressbook_homes(state, run_id, plan_id, dirs, take, summary)?;
    Ok(true)
}

/// Adopts the address-book homes a plan found under old GUIDs (after the calendar homes; the
/// steps are journaled like theirs, with paths relative to the address-book root).
fn adopt_addressbook_homes(
    state: &mut State,
    run_id: i64,
    plan_id: i64,
    dirs: &dyn Store,
    take: &dyn Fn(&str) -> bool,
    summary: &mut RunSummary,
) -> Result<()> {
    let Some(root) = dirs.roots().addressbooks.as_deref() else {
        return Ok(());
    };
    let todo = rows::addressbook_homes_to_adopt(&state.conn, plan_id)?;
    // A staged apply takes only its homes (`take`).
    for (old_rel, new_guid) in todo.into_iter().filter(|(rel, _)| take(rel)) {
        let steps = homes::plan_adoption_in(
            root,
            addressbook::DIR,
            &old_rel,
            &new_guid,
            &mut summary.notes,
        )?;
        for step in &steps {
            journaled_home_step(state, run_id, dirs, step, &old_rel)?;
        }
        if !steps.is_empty() {
            summary.homes_adopted += 1;
        }
    }
    Ok(())
}
