//! What the reports, `runs` and `diff` read of the state database: typed reads of the plan rows
//! (mappings, homes, changes, resources), the plans and the runs. Nothing here writes.

use crate::error::Result;
use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;

/// Outcome order in every report: what needs a human first.
const OUTCOME_ORDER: &str =
    "CASE outcome WHEN 'ambiguous' THEN 0 WHEN 'unmatched' THEN 1 WHEN 'mapped' THEN 2 WHEN 'unchanged' THEN 3 WHEN 'acknowledged' THEN 5 ELSE 4 END";

/// One row of mapping.csv.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MappingRow {
    /// Normalised key of the old address ([`crate::address::CalAddress::key`]).
    pub old_value: String,
    /// Its address form word (`mailto`, `urn:uuid`, ...).
    pub form: String,
    /// Outcome word (`mapped`, `ambiguous`, ...).
    pub outcome: String,
    /// Rule word that decided it (`same-guid`, `override`, ...).
    pub rule: String,
    /// Evidence for the decision, in words.
    pub evidence: String,
    /// GUID of the current record it maps to; empty when none.
    pub new_guid: String,
    /// That record's first short name; empty when none.
    pub new_short_name: String,
    /// That record's full name; empty when none.
    pub new_full_name: String,
    /// That record's type word (`user`, `location`, ...); empty when none.
    pub record_type: String,
    /// The value written in its place; empty when not rewritten.
    pub new_value: String,
    /// Resources that mention it.
    pub resources: i64,
    /// Ambiguous: the candidate records, `GUID (short name)` joined by `; `; else empty.
    pub candidates: String,
}

/// A plan's mapping rows, ordered by outcome (what needs a human first) then old value.
pub fn mapping_rows(conn: &Connection, plan_id: i64) -> Result<Vec<MappingRow>> {
    let mut st = conn.prepare(&format!(
        "SELECT old_value, form, outcome, rule, evidence, COALESCE(new_guid,''), COALESCE(new_short,''), COALESCE(new_full_name,''),
                COALESCE(record_type,''), COALESCE(new_value,''), resources, candidates
         FROM plan_mappings WHERE plan_id = ?1 ORDER BY {OUTCOME_ORDER}, old_value"
    ))?;
    let rows = st.query_map([plan_id], |r| {
        Ok(MappingRow {
            old_value: r.get(0)?,
            form: r.get(1)?,
            outcome: r.get(2)?,
            rule: r.get(3)?,
            evidence: r.get(4)?,
            new_guid: r.get(5)?,
            new_short_name: r.get(6)?,
            new_full_name: r.get(7)?,
            record_type: r.get(8)?,
            new_value: r.get(9)?,
            resources: r.get(10)?,
            candidates: r.get(11)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A home a plan adopts: its folder now and the GUID of the owner it moves to.
#[derive(Debug, Clone)]
pub struct HomeMove {
    /// The home folder as planned (relative to its root).
    pub rel_path: String,
    /// The current owner's GUID.
    pub new_guid: String,
}

/// The homes of `table` (`plan_homes` or `plan_addressbook_homes`) a plan moves or re-lays out.
pub fn home_moves(conn: &Connection, table: HomeTable, plan_id: i64) -> Result<Vec<HomeMove>> {
    let mut st = conn.prepare(&format!(
        "SELECT rel_path, new_guid FROM {}
         WHERE plan_id = ?1 AND new_guid IS NOT NULL AND (outcome = 'moved' OR layout != 'hashed')",
        table.name()
    ))?;
    let rows = st.query_map([plan_id], |r| {
        Ok(HomeMove {
            rel_path: r.get(0)?,
            new_guid: r.get(1)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Which homes table.
#[derive(Debug, Clone, Copy)]
pub enum HomeTable {
    /// Calendar homes (`plan_homes`).
    Calendar,
    /// Address-book homes (`plan_addressbook_homes`).
    AddressBook,
}

impl HomeTable {
    fn name(self) -> &'static str {
        match self {
            HomeTable::Calendar => "plan_homes",
            HomeTable::AddressBook => "plan_addressbook_homes",
        }
    }
}

/// A calendar home as the HTML report lists it.
#[derive(Debug, Clone)]
pub struct HomeRow {
    /// The home folder.
    pub rel_path: String,
    /// Its layout word (`hashed`, `flat`, `users`, `sql`).
    pub layout: String,
    /// The home outcome word.
    pub outcome: String,
    /// The current owner's GUID; empty when none.
    pub new_guid: String,
}

/// A plan's calendar homes: ambiguous, unmatched, moved, then the rest, each by path.
pub fn home_rows(conn: &Connection, plan_id: i64) -> Result<Vec<HomeRow>> {
    let mut st = conn.prepare(
        "SELECT rel_path, layout, outcome, COALESCE(new_guid,'') FROM plan_homes WHERE plan_id = ?1
         ORDER BY CASE outcome WHEN 'ambiguous' THEN 0 WHEN 'unmatched' THEN 1 WHEN 'moved' THEN 2 ELSE 3 END, rel_path",
    )?;
    let rows = st.query_map([plan_id], |r| {
        Ok(HomeRow {
            rel_path: r.get(0)?,
            layout: r.get(1)?,
            outcome: r.get(2)?,
            new_guid: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// One planned property change.
#[derive(Debug, Clone)]
pub struct ChangeRow {
    /// The resource (relative to its root).
    pub rel_path: String,
    /// The physical line the property starts on.
    pub line: i64,
    /// The property name.
    pub property: String,
    /// The value before.
    pub old_value: String,
    /// The value after.
    pub new_value: String,
}

/// Calls `each` for every planned property change of a plan, by resource then line, one row at a
/// time (a large store has millions).
pub fn for_each_change(
    conn: &Connection,
    plan_id: i64,
    mut each: impl FnMut(ChangeRow) -> Result<()>,
) -> Result<()> {
    let mut st = conn.prepare(
        "SELECT rel_path, line, property, old_value, new_value FROM plan_changes WHERE plan_id = ?1 ORDER BY rel_path, line",
    )?;
    let mut rows = st.query([plan_id])?;
    while let Some(r) = rows.next()? {
        each(ChangeRow {
            rel_path: r.get(0)?,
            line: r.get(1)?,
            property: r.get(2)?,
            old_value: r.get(3)?,
            new_value: r.get(4)?,
        })?;
    }
    Ok(())
}

/// The planned X-APPLE-DROPBOX / ATTACH changes: how many, and the first `limit` (by resource,
/// line).
pub fn link_changes(conn: &Connection, plan_id: i64, limit: i64) -> Result<(i64, Vec<ChangeRow>)> {
    let total: i64 = conn.query_row(
        "SELECT COUNT(*) FROM plan_changes WHERE plan_id = ?1 AND property IN ('X-APPLE-DROPBOX', 'ATTACH')",
        [plan_id],
        |r| r.get(0),
    )?;
    let mut st = conn.prepare(
        "SELECT rel_path, line, property, old_value, new_value FROM plan_changes
         WHERE plan_id = ?1 AND property IN ('X-APPLE-DROPBOX', 'ATTACH') ORDER BY rel_path, line LIMIT ?2",
    )?;
    let rows = st.query_map(rusqlite::params![plan_id, limit], |r| {
        Ok(ChangeRow {
            rel_path: r.get(0)?,
            line: r.get(1)?,
            property: r.get(2)?,
            old_value: r.get(3)?,
            new_value: r.get(4)?,
        })
    })?;
    Ok((total, rows.collect::<rusqlite::Result<_>>()?))
}

/// One changed line of a resource as a diff shows it.
#[derive(Debug, Clone)]
pub struct LineChange {
    /// The physical line.
    pub line: i64,
    /// The logical line before.
    pub old_line: String,
    /// The logical line after.
    pub new_line: String,
}

/// The first `limit` changed resources that kept whole lines, with their changed lines.
pub fn example_diffs(
    conn: &Connection,
    plan_id: i64,
    limit: i64,
) -> Result<Vec<(String, Vec<LineChange>)>> {
    let mut st = conn.prepare(
        "SELECT DISTINCT rel_path FROM plan_changes WHERE plan_id = ?1 AND old_line != '' ORDER BY rel_path LIMIT ?2",
    )?;
    let paths: Vec<String> = st
        .query_map(rusqlite::params![plan_id, limit], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut ch = conn.prepare(
        "SELECT line, old_line, new_line FROM plan_changes WHERE plan_id = ?1 AND rel_path = ?2 ORDER BY line",
    )?;
    let mut out = Vec::new();
    for p in paths {
        let lines: Vec<LineChange> = ch
            .query_map(rusqlite::params![plan_id, p], |r| {
                Ok(LineChange {
                    line: r.get(0)?,
                    old_line: r.get(1)?,
                    new_line: r.get(2)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        out.push((p, lines));
    }
    Ok(out)
}

/// The provisioning findings a plan stored (JSON), if any.
pub fn provision_json(conn: &Connection, plan_id: i64) -> Result<Option<String>> {
    Ok(conn.query_row(
        "SELECT provision_json FROM plans WHERE id = ?1",
        [plan_id],
        |r| r.get(0),
    )?)
}

/// A planned resource's old and new SHA-256 (hex).
#[derive(Debug, Clone)]
pub struct ResourceHashes {
    /// Before the rewrite.
    pub old_sha256: String,
    /// After it.
    pub new_sha256: String,
}

/// The hashes a plan stored for the resource at `rel_path`, if the plan changes it.
pub fn resource_hashes(
    conn: &Connection,
    plan_id: i64,
    rel_path: &str,
) -> Result<Option<ResourceHashes>> {
    Ok(conn
        .query_row(
            "SELECT old_sha256, new_sha256 FROM plan_resources WHERE plan_id = ?1 AND rel_path = ?2",
            rusqlite::params![plan_id, rel_path],
            |r| {
                Ok(ResourceHashes {
                    old_sha256: r.get(0)?,
                    new_sha256: r.get(1)?,
                })
            },
        )
        .optional()?)
}

fn has_column(conn: &Connection, table: &str, column: &str) -> Result<bool> {
    let mut st = conn.prepare(&format!(
        "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"
    ))?;
    Ok(st.exists([column])?)
}

/// A plan as `runs` lists it.
#[derive(Clone, Debug)]
pub struct PlanRow {
    /// Plan id.
    pub id: i64,
    /// When the plan was made (RFC 3339).
    pub created_at: String,
    /// building | complete | failed (`complete` before plans had a status).
    pub status: String,
    /// The store's data root the plan was made for.
    pub store_path: String,
    /// Resources the plan rewrites.
    pub resources_changed: i64,
    /// Homes the plan moves to a new GUID or lays out anew.
    pub homes_moved: i64,
}

/// Every plan, oldest first.
pub fn plans(conn: &Connection) -> Result<Vec<PlanRow>> {
    let plan_status = if has_column(conn, "plans", "status")? {
        "status"
    } else {
        "'complete'"
    };
    let mut st = conn.prepare(&format!(
        "SELECT p.id, p.created_at, {plan_status}, p.store_path,
                (SELECT COUNT(*) FROM plan_resources r WHERE r.plan_id = p.id),
                (SELECT COUNT(*) FROM plan_homes h WHERE h.plan_id = p.id AND h.new_guid IS NOT NULL
                   AND (h.outcome = 'moved' OR h.layout != 'hashed'))
         FROM plans p ORDER BY p.id"
    ))?;
    let rows = st.query_map([], |r| {
        Ok(PlanRow {
            id: r.get(0)?,
            created_at: r.get(1)?,
            status: r.get(2)?,
            store_path: r.get(3)?,
            resources_changed: r.get(4)?,
            homes_moved: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// One run of apply, rollback or provision.
#[derive(Clone, Debug, Serialize)]
pub struct RunEntry {
    /// Run id (`rollback --run N`).
    pub id: i64,
    /// apply | rollback | provision
    pub kind: String,
    /// The plan it carries out; None for a run without one (e.g. provision).
    pub plan_id: Option<i64>,
    /// A rollback: the run it undoes.
    pub undoes_run: Option<i64>,
    /// When the run started (RFC 3339).
    pub started_at: String,
    /// When it finished; None while running or after a crash.
    pub finished_at: Option<String>,
    /// The process: running | interrupted | done.
    pub status: String,
    /// An apply or provision run's lifecycle: applying | applied | rolling-back | rolled-back.
    pub state: Option<String>,
    /// Journal steps by state.
    pub steps_done: i64,
    /// Journal steps skipped (nothing to do, or changed since planned).
    pub steps_skipped: i64,
    /// Journal steps not yet taken.
    pub steps_pending: i64,
}

/// Every run, oldest first, with its journal steps (file and database journals) by state.
pub fn runs(conn: &Connection) -> Result<Vec<RunEntry>> {
    let run_state = if has_column(conn, "runs", "state")? {
        "state"
    } else {
        "NULL"
    };
    let mut st = conn.prepare(&format!(
        "SELECT id, kind, plan_id, undoes_run, started_at, finished_at, status, {run_state},
                {}, {}, {}
         FROM runs ORDER BY id",
        super::pg_rows::steps_sql(conn, "done"),
        super::pg_rows::steps_sql(conn, "skipped"),
        super::pg_rows::steps_sql(conn, "pending")
    ))?;
    let rows = st.query_map([], |r| {
        Ok(RunEntry {
            id: r.get(0)?,
            kind: r.get(1)?,
            plan_id: r.get(2)?,
            undoes_run: r.get(3)?,
            started_at: r.get(4)?,
            finished_at: r.get(5)?,
            status: r.get(6)?,
            state: r.get(7)?,
            steps_done: r.get(8)?,
            steps_skipped: r.get(9)?,
            steps_pending: r.get(10)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
