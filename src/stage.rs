//! Staged migration: `apply --home GUID` and `apply --limit N` carry out part of a plan, a later
//! `apply` the rest, each stage a run of its own (so `rollback` undoes one stage).
//!
//! The unit of a stage is a user's homes: the calendar home and the address-book home of one
//! owner (the new GUID, or the old id when the home names nobody), with every resource of the plan
//! inside them. A home moves with the stage that takes it, together with its resources.
//! What belongs to no home — the delegate and auto-accept databases, resources outside every home —
//! is carried out by the stage that completes the plan (the one after which no home is pending),
//! so a stage touches only the homes it names.
//!
//! Each run records what it takes (`runs.stage_json`); a run without one (a whole-plan apply, or
//! one made before stages existed) takes everything. What is pending is what no run in force
//! (applying or applied, not rolled back) has taken.

use crate::error::{Error, Result};
use crate::state::State;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};

/// One owner's homes in a plan.
#[derive(Clone, Debug)]
pub struct Unit {
    /// The new GUID, or the old id when the home names no current record.
    pub key: String,
    /// For messages: the short name, or the key when the home names nobody.
    pub label: String,
    /// What `--home` accepts for it: old ids, the new GUID, the short name (compared without case).
    pub names: Vec<String>,
    /// Calendar homes (`plan_homes`) and address-book homes, by their path when planned.
    pub homes: Vec<String>,
    /// The owner's address-book homes (`plan_addressbook_homes`), moved with the calendar homes.
    pub addressbook_homes: Vec<String>,
    /// Resources of the plan inside them.
    pub resources: u64,
}

/// A plan's homes and what lies outside them.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    /// Units with something to do (a resource to rewrite or a home to move), in path order.
    pub units: Vec<Unit>,
    /// Home path (calendar or address-book) -> index in `units`.
    by_home: HashMap<String, usize>,
    /// Resources of the plan inside all units.
    pub resources: u64,
    /// Resources outside every home, and databases to rewrite.
    pub rest_resources: u64,
    /// Delegate / auto-accept databases the plan rewrites (carried out with the rest).
    pub rest_databases: u64,
}

/// What one run takes.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Selection {
    /// Unit keys.
    pub homes: BTreeSet<String>,
    /// Also what belongs to no home (databases, resources outside homes).
    pub rest: bool,
}

/// What an admin asked `apply` for.
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// `--home`: old GUID, new GUID or short name, each.
    pub homes: Vec<String>,
    /// `--limit`: at most this many resources (whole homes).
    pub limit: Option<u64>,
}

impl Request {
    /// Neither `--home` nor `--limit`: the whole plan (what is still pending of it).
    pub fn is_whole(&self) -> bool {
        self.homes.is_empty() && self.limit.is_none()
    }
}

/// How far a plan is carried out, for `apply`, `runs` and `verify`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Tally {
    /// The plan concerned.
    pub plan_id: i64,
    /// Units (owners' homes) the plan has something to do in.
    pub homes: u64,
    /// Of those, the units carried out by runs in force.
    pub homes_applied: u64,
    /// Resources the plan rewrites inside homes.
    pub resources: u64,
    /// Of those, the ones carried out by runs in force.
    pub resources_applied: u64,
    /// The databases and resources outside homes are carried out (or there are none).
    pub rest_applied: bool,
    /// The homes still pending (labels), in path order.
    pub pending_homes: Vec<String>,
    /// Resources still pending.
    pub resources_pending: u64,
    /// The runs in force that carried out part of it.
    pub runs: Vec<i64>,
}

impl Tally {
    /// Every unit and the rest are carried out: the plan is wholly applied.
    pub fn complete(&self) -> bool {
        self.homes_applied == self.homes && self.rest_applied
    }
    /// Some of it is carried out, not all.
    pub fn partial(&self) -> bool {
        !self.runs.is_empty() && !self.complete()
    }
    /// `applied: 3 of 11 homes, 120 of 900 resources; pending: bob, carol, …`
    pub fn line(&self) -> String {
        let mut s = format!(
            "applied: {} of {} homes, {} of {} resources",
            self.homes_applied, self.homes, self.resources_applied, self.resources
        );
        if !self.rest_applied {
            s.push_str("; the databases and resources outside homes are pending (the stage that completes the plan takes them)");
        }
        if !self.pending_homes.is_empty() {
            s.push_str(&format!(
                "; pending: {} home(s), {} resources ({})",
                self.pending_homes.len(),
                self.resources_pending,
                list(&self.pending_homes, 6)
            ));
        }
        s
    }
}

fn list(items: &[String], n: usize) -> String {
    let mut s = items.iter().take(n).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > n {
        s.push_str(&format!(", … {} more", items.len() - n));
    }
    s
}

/// A plan's homes gathered into units (one a user), as [`Layout::load`] reads them.
#[derive(Default)]
struct Gathered {
    units: Vec<Unit>,
    by_key: HashMap<String, usize>,
    by_home: HashMap<String, usize>,
    /// Per unit: whether a home of it moves.
    moves: Vec<bool>,
}

impl Gathered {
    /// Reads the homes of one table (`plan_homes` or `plan_addressbook_homes`) into units.
    fn read(
        &mut self,
        state: &State,
        plan_id: i64,
        table: &str,
        addressbook: bool,
        shorts: &HashMap<String, String>,
    ) -> Result<()> {
        let mut st = state.conn.prepare(&format!(
            "SELECT rel_path, layout, old_id, outcome, new_guid FROM {table} WHERE plan_id = ?1 ORDER BY rel_path"
        ))?;
        let rows = st.query_map([plan_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
            ))
        })?;
        for row in rows {
            let (rel, layout, old_id, outcome, new_guid) = row?;
            let i = self.unit_for(&old_id, new_guid.as_deref(), shorts);
            let u = &mut self.units[i];
            if !u.names.iter().any(|n| n.eq_ignore_ascii_case(&old_id)) {
                u.names.push(old_id);
            }
            if addressbook {
                u.addressbook_homes.push(rel.clone());
            } else {
                u.homes.push(rel.clone());
            }
            self.moves[i] |= new_guid.is_some() && (outcome == "moved" || layout != "hashed");
            self.by_home.insert(rel, i);
        }
        Ok(())
    }

    /// The unit of a home (keyed by its new GUID, else its old id), made when it is the first.
    fn unit_for(
        &mut self,
        old_id: &str,
        new_guid: Option<&str>,
        shorts: &HashMap<String, String>,
    ) -> usize {
        let key = new_guid.unwrap_or(old_id).to_string();
        let (units, moves) = (&mut self.units, &mut self.moves);
        *self.by_key.entry(key.clone()).or_insert_with(|| {
            let short = new_guid.and_then(|g| shorts.get(g));
            units.push(Unit {
                label: short.cloned().unwrap_or_else(|| key.clone()),
                names: [Some(key.clone()), short.cloned()]
                    .into_iter()
                    .flatten()
                    .collect(),
                key: key.clone(),
                homes: Vec::new(),
                addressbook_homes: Vec::new(),
                resources: 0,
            });
            moves.push(false);
            units.len() - 1
        })
    }
}

/// The units with something to do (a home that moves, or resources), in the order of their
/// first home's path.
fn units_with_work(units: Vec<Unit>, moves: Vec<bool>) -> Vec<Unit> {
    let mut keep: Vec<(String, Unit)> = units
        .into_iter()
        .zip(moves)
        .filter(|(u, moves)| *moves || u.resources > 0)
        .map(|(u, _)| {
            let first = u
                .homes
                .first()
                .or(u.addressbook_homes.first())
                .cloned()
                .unwrap_or_default();
            (first, u)
        })
        .collect();
    keep.sort_by(|a, b| a.0.cmp(&b.0));
    keep.into_iter().map(|(_, u)| u).collect()
}

fn has_column(state: &State, table: &str, column: &str) -> Result<bool> {
    let mut st = state.conn.prepare(&format!(
        "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"
    ))?;
    Ok(st.exists([column])?)
}

impl Layout {
    /// Reads a plan's homes and resources.
    pub fn load(state: &State, plan_id: i64) -> Result<Layout> {
        let shorts: HashMap<String, String> = {
            let mut st = state.conn.prepare(
                "SELECT new_guid, MAX(new_short) FROM plan_mappings
                  WHERE plan_id = ?1 AND new_guid IS NOT NULL AND new_short IS NOT NULL GROUP BY new_guid",
            )?;
            let rows = st.query_map([plan_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut homes = Gathered::default();
        homes.read(state, plan_id, "plan_homes", false, &shorts)?;
        homes.read(state, plan_id, "plan_addressbook_homes", true, &shorts)?;
        let Gathered {
            mut units,
            by_home,
            moves,
            ..
        } = homes;
        let mut layout = Layout {
            by_home,
            ..Default::default()
        };
        let rels: Vec<String> = {
            let mut st = state
                .conn
                .prepare("SELECT rel_path FROM plan_resources WHERE plan_id = ?1")?;
            let rows = st.query_map([plan_id], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for rel in &rels {
            layout.resources += 1;
            match layout.unit_index(rel) {
                Some(i) => units[i].resources += 1,
                None => layout.rest_resources += 1,
            }
        }
        layout.rest_databases = state.conn.query_row(
            "SELECT COUNT(*) FROM plan_databases WHERE plan_id = ?1 AND changes + dropped > 0",
            [plan_id],
            |r| r.get::<_, i64>(0),
        )? as u64;
        layout.units = units_with_work(units, moves);
        layout.by_home.clear();
        for (i, u) in layout.units.iter().enumerate() {
            for h in u.homes.iter().chain(&u.addressbook_homes) {
                layout.by_home.insert(h.clone(), i);
            }
        }
        Ok(layout)
    }

    /// The unit whose home holds this path (the nearest home folder above it).
    fn unit_index(&self, rel: &str) -> Option<usize> {
        let mut p = rel;
        while let Some((parent, _)) = p.rsplit_once('/') {
            if let Some(&i) = self.by_home.get(parent) {
                return Some(i);
            }
            p = parent;
        }
        None
    }

    /// The key of the unit whose home holds this path (`None`: outside every home with work).
    pub fn unit_of(&self, rel: &str) -> Option<&str> {
        self.unit_index(rel).map(|i| self.units[i].key.as_str())
    }

    /// Whether a selection (`None`: the whole plan) takes this resource.
    pub fn takes(&self, sel: Option<&Selection>, rel: &str) -> bool {
        match (sel, self.unit_of(rel)) {
            (None, _) => true,
            (Some(s), Some(k)) => s.homes.contains(k),
            (Some(s), None) => s.rest,
        }
    }

    /// Whether a selection takes this home (calendar or address-book home path).
    pub fn takes_home(&self, sel: Option<&Selection>, home: &str) -> bool {
        match (sel, self.by_home.get(home)) {
            (None, _) => true,
            (Some(s), Some(&i)) => s.homes.contains(&self.units[i].key),
            // A home with nothing to do: nothing to take.
            (Some(_), None) => false,
        }
    }

    fn find(&self, name: &str) -> Option<&Unit> {
        self.units
            .iter()
            .find(|u| u.names.iter().any(|n| n.eq_ignore_ascii_case(name)))
    }

    /// The label of a unit key.
    pub fn label(&self, key: &str) -> String {
        self.units
            .iter()
            .find(|u| u.key == key)
            .map(|u| u.label.clone())
            .unwrap_or_else(|| key.to_string())
    }
}

/// What a run takes (`None`: everything — a whole-plan run).
pub fn run_selection(state: &State, run_id: i64) -> Result<Option<Selection>> {
    if !has_column(state, "runs", "stage_json")? {
        return Ok(None);
    }
    let json: Option<String> =
        state
            .conn
            .query_row("SELECT stage_json FROM runs WHERE id = ?1", [run_id], |r| {
                r.get(0)
            })?;
    Ok(match json {
        Some(j) => Some(serde_json::from_str(&j)?),
        None => None,
    })
}

/// Records what a new run takes.
pub fn record(state: &State, run_id: i64, sel: &Selection) -> Result<()> {
    state.conn.execute(
        "UPDATE runs SET stage_json = ?1 WHERE id = ?2",
        rusqlite::params![serde_json::to_string(sel)?, run_id],
    )?;
    Ok(())
}

/// What the runs in force of a plan have taken: unit key -> run, and whether the rest is taken.
struct Taken {
    homes: HashMap<String, i64>,
    rest: bool,
    runs: Vec<i64>,
}

fn taken(state: &State, plan_id: i64, layout: &Layout) -> Result<Taken> {
    let runs: Vec<i64> = {
        let mut st = state.conn.prepare(
            "SELECT id FROM runs WHERE kind = 'apply' AND plan_id = ?1
               AND COALESCE(state, 'applying') NOT IN ('rolled-back') ORDER BY id",
        )?;
        let rows = st.query_map([plan_id], |r| r.get(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let mut t = Taken {
        homes: HashMap::new(),
        rest: false,
        runs: runs.clone(),
    };
    for id in runs {
        match run_selection(state, id)? {
            None => {
                for u in &layout.units {
                    t.homes.entry(u.key.clone()).or_insert(id);
                }
                t.rest = true;
            }
            Some(s) => {
                for k in s.homes {
                    t.homes.entry(k).or_insert(id);
                }
                t.rest |= s.rest;
            }
        }
    }
    Ok(t)
}

/// How far a plan is carried out.
pub fn progress(state: &State, plan_id: i64) -> Result<Tally> {
    let layout = Layout::load(state, plan_id)?;
    progress_of(state, plan_id, &layout)
}

fn progress_of(state: &State, plan_id: i64, layout: &Layout) -> Result<Tally> {
    let t = taken(state, plan_id, layout)?;
    let mut p = Tally {
        plan_id,
        homes: layout.units.len() as u64,
        resources: layout.resources,
        rest_applied: t.rest || (layout.rest_resources == 0 && layout.rest_databases == 0),
        runs: t.runs,
        ..Default::default()
    };
    if t.rest {
        p.resources_applied += layout.rest_resources;
    }
    for u in &layout.units {
        if t.homes.contains_key(&u.key) {
            p.homes_applied += 1;
            p.resources_applied += u.resources;
        } else {
            p.pending_homes.push(u.label.clone());
            p.resources_pending += u.resources;
        }
    }
    Ok(p)
}

/// What a new run of the plan takes for this request, with notes for the admin. An empty
/// selection: nothing is pending.
pub fn choose(
    state: &State,
    plan_id: i64,
    layout: &Layout,
    req: &Request,
    notes: &mut Vec<String>,
) -> Result<Selection> {
    let t = taken(state, plan_id, layout)?;
    let pending: Vec<&Unit> = layout
        .units
        .iter()
        .filter(|u| !t.homes.contains_key(&u.key))
        .collect();
    let rest_pending = !t.rest;
    let mut sel = Selection::default();
    if req.is_whole() {
        sel.homes = pending.iter().map(|u| u.key.clone()).collect();
        sel.rest = rest_pending;
        return Ok(sel);
    }
    for name in &req.homes {
        let Some(u) = layout.find(name) else {
            return Err(Error::usage(format!(
                "--home {name}: no home of plan {plan_id} with something to do belongs to it (give the home's old GUID, its new GUID or the short name; `principal-reconciler runs` lists the pending homes)"
            )));
        };
        match t.homes.get(&u.key) {
            Some(run) => notes.push(format!(
                "--home {name}: {} was already applied by run {run}",
                u.label
            )),
            None => {
                sel.homes.insert(u.key.clone());
            }
        }
    }
    if let Some(limit) = req.limit {
        let mut total = 0u64;
        let named = sel.homes.clone();
        for u in pending.iter().filter(|u| !named.contains(&u.key)) {
            if total + u.resources > limit {
                if sel.homes.len() == named.len() {
                    notes.push(format!(
                        "--limit {limit}: the next home, {}, has {} resources; a stage takes whole homes, so this one takes it alone",
                        u.label, u.resources
                    ));
                    sel.homes.insert(u.key.clone());
                }
                break;
            }
            total += u.resources;
            sel.homes.insert(u.key.clone());
        }
    }
    if !req.homes.is_empty() && sel.homes.is_empty() {
        return Err(Error::usage(format!(
            "nothing to apply: {} (plan {plan_id}: {}); `principal-reconciler rollback` undoes the latest stage",
            notes.join("; "),
            progress_of(state, plan_id, layout)?.line()
        )));
    }
    // The stage that leaves no home pending also takes what belongs to no home.
    let left = pending
        .iter()
        .filter(|u| !sel.homes.contains(&u.key))
        .count();
    sel.rest = rest_pending && left == 0;
    Ok(sel)
}
