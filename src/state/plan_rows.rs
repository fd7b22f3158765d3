//! The rows a plan writes and what `apply` (and `diff`) read back of them: every SQL statement
//! of `plan` behind typed functions, so the plan's storage can change in one place.
//!
//! A plan is written in one transaction: [`begin_plan`] opens its `plans` row, [`PlanRows`]
//! stores its changed resources and their properties, the other functions its findings.

use super::State;
use crate::error::Result;
use rusqlite::{Connection, OptionalExtension};
use std::collections::HashMap;

/// What a new plan's row records of the store and the directory it is made from.
pub struct NewPlan<'a> {
    /// RFC 3339, UTC.
    pub created_at: &'a str,
    /// `[store] kind` word.
    pub store_kind: &'a str,
    /// The store's data root as planned (absolute).
    pub store_path: &'a str,
    /// The address form word the rewrite writes.
    pub address_form: &'a str,
    /// Where the current directory came from.
    pub directory: &'a str,
}

/// Inserts a plan's row (status `building`); returns its id.
pub fn begin_plan(tx: &Connection, p: &NewPlan<'_>) -> Result<i64> {
    tx.execute(
        "INSERT INTO plans (created_at, store_kind, store_path, address_form, directory, status) VALUES (?1, ?2, ?3, ?4, ?5, 'building')",
        rusqlite::params![p.created_at, p.store_kind, p.store_path, p.address_form, p.directory],
    )?;
    Ok(tx.last_insert_rowid())
}

/// Stores the plan's summary (JSON) in its row.
pub fn set_summary(tx: &Connection, plan_id: i64, summary_json: &str) -> Result<()> {
    tx.execute(
        "UPDATE plans SET summary_json = ?1 WHERE id = ?2",
        rusqlite::params![summary_json, plan_id],
    )?;
    Ok(())
}

/// Stores the plan's provisioning findings (JSON) in its row.
pub fn set_provision(tx: &Connection, plan_id: i64, findings_json: &str) -> Result<()> {
    tx.execute(
        "UPDATE plans SET provision_json = ?1 WHERE id = ?2",
        rusqlite::params![findings_json, plan_id],
    )?;
    Ok(())
}

/// Stores the address-book root a plan read.
pub fn set_addressbook_path(tx: &Connection, plan_id: i64, root: &str) -> Result<()> {
    tx.execute(
        "UPDATE plans SET addressbook_path = ?1 WHERE id = ?2",
        rusqlite::params![root, plan_id],
    )?;
    Ok(())
}

/// Gives back the write-ahead log of a finished plan (one transaction as large as the plan).
pub fn checkpoint(state: &State) {
    let _ = state.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
}

/// The planned bytes as stored (zlib: calendar text packs three to four times smaller).
pub fn pack(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::ZlibEncoder::new(
        Vec::with_capacity(bytes.len() / 2),
        flate2::Compression::fast(),
    );
    let _ = z.write_all(bytes);
    z.finish().unwrap_or_default()
}

/// One changed resource as stored.
pub struct ResourceRow<'a> {
    /// Path relative to the store root (`addressbooks/...` for address-book cards).
    pub rel_path: &'a str,
    /// SHA-256 (hex) of the bytes the plan was made from.
    pub old_sha256: &'a str,
    /// SHA-256 (hex) of the planned bytes.
    pub new_sha256: &'a str,
    /// The planned bytes (zlib, see [`pack`]) when they are kept; `None` when `apply` recomputes
    /// them with pass `rewrite_pass` of the plan's resolver.
    pub new_bytes: Option<&'a [u8]>,
    /// The pass of the plan's resolver that recomputes the bytes (with `new_bytes` None).
    pub rewrite_pass: Option<i64>,
    /// Attribute edits (JSON), when the plan changes some.
    pub attr_edits: Option<&'a str>,
}

/// One changed property of a resource.
pub struct ChangeRow<'a> {
    /// Line of the property in the old bytes.
    pub line: i64,
    /// Property name (ORGANIZER, ATTENDEE, ...).
    pub property: &'a str,
    /// Old value.
    pub old_value: &'a str,
    /// New value.
    pub new_value: &'a str,
    /// Whole old logical line (kept for the report's example diffs only, else empty).
    pub old_line: &'a str,
    /// Whole new logical line (same).
    pub new_line: &'a str,
}

/// Writes a plan's changed resources and properties: calendar resources compactly
/// (`plan_change_rows`, texts once in `plan_strings`), address-book cards with their bytes
/// through the `plan_changes` view; readers see them all through `plan_resources` and
/// `plan_changes`.
pub struct PlanRows<'c> {
    plan_id: i64,
    ins_res: rusqlite::Statement<'c>,
    ins_cal: rusqlite::Statement<'c>,
    ins_chg: rusqlite::Statement<'c>,
    ins_str: rusqlite::Statement<'c>,
    sel_str: rusqlite::Statement<'c>,
    ins_row: rusqlite::Statement<'c>,
    del_rows: rusqlite::Statement<'c>,
    del_res: rusqlite::Statement<'c>,
    ids: HashMap<String, i64>,
}

impl<'c> PlanRows<'c> {
    /// The writer of plan `plan_id`'s rows, in the plan's transaction `tx`.
    pub fn new(tx: &'c Connection, plan_id: i64) -> Result<Self> {
        Ok(PlanRows {
            plan_id,
            ins_res: tx.prepare(
                "INSERT INTO plan_resources (plan_id, rel_path, old_sha256, new_sha256, new_bytes, changes, attr_edits) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?,
            ins_cal: tx.prepare(
                "INSERT INTO plan_resources (plan_id, rel_path, old_sha256, new_sha256, new_bytes, changes, attr_edits, rewrite_pass) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?,
            ins_chg: tx.prepare(
                "INSERT INTO plan_changes (plan_id, rel_path, line, property, old_value, new_value, old_line, new_line) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?,
            ins_str: tx.prepare("INSERT OR IGNORE INTO plan_strings (plan_id, text) VALUES (?1, ?2)")?,
            sel_str: tx.prepare("SELECT id FROM plan_strings WHERE plan_id = ?1 AND text = ?2")?,
            ins_row: tx.prepare(
                "INSERT INTO plan_change_rows (plan_id, res_id, path_id, seq, line, property_id, old_id, new_id, old_line, new_line) VALUES (?1, ?2, 0, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?,
            del_rows: tx.prepare(
                "DELETE FROM plan_change_rows WHERE plan_id = ?1 AND path_id = 0 AND res_id = (SELECT rowid FROM plan_resources WHERE plan_id = ?1 AND rel_path = ?2)",
            )?,
            del_res: tx.prepare("DELETE FROM plan_resources WHERE plan_id = ?1 AND rel_path = ?2")?,
            ids: HashMap::new(),
        })
    }

    /// Stores one changed resource and its changed properties.
    pub fn insert(&mut self, r: &ResourceRow<'_>, changes: &[ChangeRow<'_>]) -> Result<()> {
        match r.new_bytes {
            // Kept bytes (address-book cards): changes through the view, as before.
            Some(bytes) => {
                self.ins_res.execute(rusqlite::params![
                    self.plan_id,
                    r.rel_path,
                    r.old_sha256,
                    r.new_sha256,
                    bytes,
                    changes.len() as i64,
                    r.attr_edits
                ])?;
                for c in changes {
                    self.ins_chg.execute(rusqlite::params![
                        self.plan_id,
                        r.rel_path,
                        c.line,
                        c.property,
                        c.old_value,
                        c.new_value,
                        c.old_line,
                        c.new_line
                    ])?;
                }
            }
            None => {
                let res = self.ins_cal.insert(rusqlite::params![
                    self.plan_id,
                    r.rel_path,
                    r.old_sha256,
                    r.new_sha256,
                    &[] as &[u8],
                    changes.len() as i64,
                    r.attr_edits,
                    r.rewrite_pass
                ])?;
                self.insert_changes(res, changes)?;
            }
        }
        Ok(())
    }

    fn id(&mut self, text: &str) -> Result<i64> {
        if let Some(&id) = self.ids.get(text) {
            return Ok(id);
        }
        if self.ids.len() >= 100_000 {
            // Memory stays flat on stores with many distinct values (dropbox links).
            self.ids.clear();
        }
        let id = match self.ins_str.insert(rusqlite::params![self.plan_id, text]) {
            Ok(id) => id,
            // Stored already (by the `plan_changes` view's trigger).
            Err(rusqlite::Error::StatementChangedRows(0)) => self
                .sel_str
                .query_row(rusqlite::params![self.plan_id, text], |r| r.get(0))?,
            Err(e) => return Err(e.into()),
        };
        self.ids.insert(text.to_string(), id);
        Ok(id)
    }

    /// Stores the changes of the plan_resources row `res`.
    fn insert_changes(&mut self, res: i64, changes: &[ChangeRow<'_>]) -> Result<()> {
        for (seq, c) in changes.iter().enumerate() {
            let (k, o, n) = (
                self.id(c.property)?,
                self.id(c.old_value)?,
                self.id(c.new_value)?,
            );
            self.ins_row.execute(rusqlite::params![
                self.plan_id,
                res,
                seq as i64 + 1,
                c.line,
                k,
                o,
                n,
                c.old_line,
                c.new_line
            ])?;
        }
        Ok(())
    }

    /// Drops the resource `rel` and its changes (to plan it again); returns how many changes
    /// it had.
    pub fn remove(&mut self, rel: &str) -> Result<u64> {
        let n = self
            .del_rows
            .execute(rusqlite::params![self.plan_id, rel])? as u64;
        self.del_res.execute(rusqlite::params![self.plan_id, rel])?;
        Ok(n)
    }
}

/// Which answers of the plan's resolver a `plan_rewrites` row keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RewriteKind {
    /// An address key → the principal it resolved to (JSON).
    Address,
    /// A calendar home (its URL) → the GUID it moves to.
    Home,
}

impl RewriteKind {
    fn as_str(self) -> &'static str {
        match self {
            RewriteKind::Address => "address",
            RewriteKind::Home => "home",
        }
    }
}

/// One stored answer of the plan's resolver.
pub struct RewriteRow {
    /// The pass of the plan that asked (0 the walk, 1 the second reading).
    pub pass: i64,
    /// What was asked.
    pub kind: RewriteKind,
    /// The address key or the home URL.
    pub key: String,
    /// The principal (JSON) or the GUID.
    pub value: String,
}

/// Stores answers of the plan's resolver.
pub fn insert_rewrites<'r>(
    tx: &Connection,
    plan_id: i64,
    rows: impl IntoIterator<Item = &'r RewriteRow>,
) -> Result<()> {
    let mut ins = tx.prepare_cached(
        "INSERT OR REPLACE INTO plan_rewrites (plan_id, pass, kind, key, value) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for r in rows {
        ins.execute(rusqlite::params![
            plan_id,
            r.pass,
            r.kind.as_str(),
            r.key,
            r.value
        ])?;
    }
    Ok(())
}

/// Every stored answer of plan `plan_id`'s resolver.
pub fn rewrites(state: &State, plan_id: i64) -> Result<Vec<RewriteRow>> {
    let mut st = state
        .conn
        .prepare("SELECT pass, kind, key, value FROM plan_rewrites WHERE plan_id = ?1")?;
    let rows = st.query_map([plan_id], |r| {
        let kind: String = r.get(1)?;
        Ok(RewriteRow {
            pass: r.get(0)?,
            kind: if kind == "home" {
                RewriteKind::Home
            } else {
                RewriteKind::Address
            },
            key: r.get(2)?,
            value: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// What a plan keeps of one changed resource for `apply`.
pub struct PlannedRow {
    /// The stored bytes (zlib), empty when recomputed.
    pub new_bytes: Vec<u8>,
    /// The pass of the plan's resolver that recomputes them; `None`: `new_bytes` holds them.
    pub rewrite_pass: Option<i64>,
    /// Attribute edits (JSON).
    pub attr_edits: Option<String>,
}

/// Plan `plan_id`'s row of `rel`; `None` when the plan does not change it.
pub fn planned_row(state: &State, plan_id: i64, rel: &str) -> Result<Option<PlannedRow>> {
    Ok(state
        .conn
        .query_row(
            "SELECT new_bytes, rewrite_pass, attr_edits FROM plan_resources WHERE plan_id = ?1 AND rel_path = ?2",
            rusqlite::params![plan_id, rel],
            |r| {
                Ok(PlannedRow {
                    new_bytes: r.get(0)?,
                    rewrite_pass: r.get(1)?,
                    attr_edits: r.get(2)?,
                })
            },
        )
        .optional()?)
}

/// A home and what the plan found about its owner (`plan_homes`, `plan_addressbook_homes`).
pub struct HomeRow<'a> {
    /// Path of the home relative to its root.
    pub rel_path: &'a str,
    /// Layout word (`uids`, `hashed`, `users`, ...).
    pub layout: &'a str,
    /// The id the home's folder is named by.
    pub old_id: &'a str,
    /// `current`, `moved`, `unmatched` or `ambiguous`.
    pub outcome: &'a str,
    /// The owner's current GUID, when known.
    pub new_guid: Option<&'a str>,
}

/// Which table of homes.
#[derive(Clone, Copy, Debug)]
pub enum HomeTable {
    /// Calendar homes (`plan_homes`).
    Calendar,
    /// Address-book homes (`plan_addressbook_homes`).
    AddressBook,
}

/// Stores the plan's homes.
pub fn insert_homes<'h>(
    tx: &Connection,
    plan_id: i64,
    table: HomeTable,
    homes: impl IntoIterator<Item = HomeRow<'h>>,
) -> Result<()> {
    let mut ins = tx.prepare(match table {
        HomeTable::Calendar => "INSERT OR REPLACE INTO plan_homes (plan_id, rel_path, layout, old_id, outcome, new_guid) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        HomeTable::AddressBook => "INSERT OR REPLACE INTO plan_addressbook_homes (plan_id, rel_path, layout, old_id, outcome, new_guid) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    })?;
    for h in homes {
        ins.execute(rusqlite::params![
            plan_id, h.rel_path, h.layout, h.old_id, h.outcome, h.new_guid
        ])?;
    }
    Ok(())
}

/// One problem of the plan (`plan_problems`).
pub struct ProblemRow<'a> {
    /// The resource or file.
    pub path: &'a str,
    /// Kind word (`malformed`, `unreadable`, ...).
    pub kind: &'a str,
    /// What was found.
    pub detail: &'a str,
}

/// Stores the plan's problems.
pub fn insert_problems<'p>(
    tx: &Connection,
    plan_id: i64,
    problems: impl IntoIterator<Item = ProblemRow<'p>>,
) -> Result<()> {
    let mut ins = tx.prepare(
        "INSERT INTO plan_problems (plan_id, path, kind, detail) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for p in problems {
        ins.execute(rusqlite::params![plan_id, p.path, p.kind, p.detail])?;
    }
    Ok(())
}

/// How one address resolved (`plan_mappings`, the report's mapping table).
pub struct MappingRow<'a> {
    /// Normalised key of the address.
    pub old_value: &'a str,
    /// Form word (`mailto`, `urn:uuid`, ...).
    pub form: &'a str,
    /// Outcome word.
    pub outcome: &'a str,
    /// Rule word.
    pub rule: &'a str,
    /// The evidence the rule saw.
    pub evidence: &'a str,
    /// The target's GUID.
    pub new_guid: Option<String>,
    /// The target's short name.
    pub new_short: Option<&'a str>,
    /// The target's full name.
    pub new_full_name: Option<&'a str>,
    /// The target's record type word.
    pub record_type: Option<&'a str>,
    /// The canonical address written for it.
    pub new_value: Option<&'a str>,
    /// Resources that mention it.
    pub resources: i64,
    /// Ambiguous: the candidates, `; `-separated.
    pub candidates: String,
}

/// Stores how the plan's addresses resolved.
pub fn insert_mappings<'m>(
    tx: &Connection,
    plan_id: i64,
    rows: impl IntoIterator<Item = MappingRow<'m>>,
) -> Result<()> {
    let mut ins = tx.prepare(
        "INSERT INTO plan_mappings (plan_id, old_value, form, outcome, rule, evidence, new_guid, new_short, new_full_name, record_type, new_value, resources, candidates)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?;
    for r in rows {
        ins.execute(rusqlite::params![
            plan_id,
            r.old_value,
            r.form,
            r.outcome,
            r.rule,
            r.evidence,
            r.new_guid,
            r.new_short,
            r.new_full_name,
            r.record_type,
            r.new_value,
            r.resources,
            r.candidates,
        ])?;
    }
    Ok(())
}

/// What the plan changes in one principal database (`plan_databases`).
pub struct DatabaseRow<'a> {
    /// Path of the SQLite database.
    pub path: &'a str,
    /// `proxy` or `resourceinfo`.
    pub kind: &'a str,
    /// SHA-256 (hex) of the database as planned.
    pub old_sha256: &'a str,
    /// Rows rewritten.
    pub changes: i64,
    /// GUIDs that match no current record.
    pub unmatched: i64,
    /// Rows dropped as duplicates.
    pub dropped: i64,
    /// The rewrite plan (JSON).
    pub plan_json: &'a str,
}

/// Stores what the plan changes in a principal database.
pub fn insert_database(tx: &Connection, plan_id: i64, d: &DatabaseRow<'_>) -> Result<()> {
    tx.execute(
        "INSERT INTO plan_databases (plan_id, path, kind, old_sha256, changes, unmatched, dropped, plan_json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        rusqlite::params![
            plan_id,
            d.path,
            d.kind,
            d.old_sha256,
            d.changes,
            d.unmatched,
            d.dropped,
            d.plan_json
        ],
    )?;
    Ok(())
}
