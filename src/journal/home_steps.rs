//! Home steps (moves, folders, attributes) journaled one at a time, and the adoption of homes.

use super::roots::RootDirs;
use super::summary::RunSummary;
use crate::error::{Error, Result};
use crate::homes::{self, HomeStep};
use crate::interrupt;
use crate::state::State;
use crate::store::confined::Dir;
use std::path::Path;

/// Records a step as pending (durably), takes it, marks it done. `home` names the home it adopts
/// (counted in the run's summary).
pub(crate) fn journaled_home_step(
    state: &mut State,
    run_id: i64,
    root: &Path,
    step: &HomeStep,
    home: &str,
) -> Result<()> {
    let dir = Dir::open(root).map_err(|e| Error::io("cannot open", root, e))?;
    journaled_home_step_at(state, run_id, &dir, step, home)
}

pub(super) fn journaled_home_step_at(
    state: &mut State,
    run_id: i64,
    root: &Dir,
    step: &HomeStep,
    home: &str,
) -> Result<()> {
    let seq: i64 = state.conn.query_row(
        "SELECT COALESCE(MAX(seq), 0) + 1 FROM journal WHERE run_id = ?1",
        [run_id],
        |r| r.get(0),
    )?;
    let (rel, target, meta) = step.to_row();
    state.conn.execute(
        "INSERT INTO journal (run_id, seq, action, rel_path, target_path, meta_json, state, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7)",
        rusqlite::params![run_id, seq, step.action(), rel, target, meta, format!("home:{home}")],
    )?;
    homes::execute(root, step)?;
    state.conn.execute(
        "UPDATE journal SET state = 'done' WHERE run_id = ?1 AND seq = ?2",
        rusqlite::params![run_id, seq],
    )?;
    Ok(())
}

/// Moves every home kept under an old id to its current GUID's hashed path (see [`crate::homes`]).
/// `false` when a signal stopped it between two homes.
pub(super) fn adopt_homes(
    state: &mut State,
    run_id: i64,
    plan_id: i64,
    dirs: &RootDirs,
    take: &dyn Fn(&str) -> bool,
    summary: &mut RunSummary,
) -> Result<bool> {
    let (root, store) = (&dirs.store, dirs.roots.store.as_path());
    // Home steps left pending by a crash: each is idempotent, finish it.
    let pending: Vec<(i64, String, String, Option<String>, String)> = {
        let mut st = state.conn.prepare(
            "SELECT seq, action, rel_path, target_path, COALESCE(meta_json, '{}') FROM journal
             WHERE run_id = ?1 AND state = 'pending' AND action IN ('mkdir', 'move', 'xattr', 'rmdir') ORDER BY seq",
        )?;
        let rows = st.query_map([run_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for (seq, action, rel, target, meta) in pending {
        let root = dirs.for_rel(&rel);
        homes::execute(root, &HomeStep::from_row(&action, rel, target, &meta)?)?;
        state.conn.execute(
            "UPDATE journal SET state = 'done' WHERE run_id = ?1 AND seq = ?2",
            rusqlite::params![run_id, seq],
        )?;
    }
    let todo: Vec<(String, String, String, String)> = {
        let mut st = state.conn.prepare(
            "SELECT rel_path, layout, old_id, new_guid FROM plan_homes
             WHERE plan_id = ?1 AND new_guid IS NOT NULL AND (outcome = 'moved' OR layout != 'hashed') ORDER BY rel_path",
        )?;
        let rows = st.query_map([plan_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
    let todo = todo.into_iter().filter(|t| take(&t.0));
    for (old_rel, layout, old_id, new_guid) in todo {
        if interrupt::pending().is_some() {
            return Ok(false);
        }
        let steps = homes::plan_adoption(store, &old_rel, &new_guid, &mut summary.notes)?;
        for step in &steps {
            journaled_home_step_at(state, run_id, root, step, &old_rel)?;
        }
        let hrefs = homes::old_hrefs(&layout, &old_id);
        for step in
            homes::plan_href_updates(store, &homes::hashed_home(&new_guid), &hrefs, &new_guid)?
        {
            journaled_home_step_at(state, run_id, root, &step, &old_rel)?;
        }
    }
    if interrupt::pending().is_some() {
        return Ok(false);
    }
    crate::addressbooks::adopt_homes(
        state,
        run_id,
        plan_id,
        &dirs.roots,
        take,
        &mut summary.homes_adopted,
        &mut summary.notes,
    )?;
    Ok(true)
}
