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

/// A SHA-256 as stored: 32 bytes for its hex, the text itself if it is none.
fn sha_value(hex_sha: &str) -> rusqlite::types::Value {
    match hex::decode(hex_sha) {
        Ok(b) if !hex_sha.is_empty() => rusqlite::types::Value::Blob(b),
        _ => rusqlite::types::Value::Text(hex_sha.to_string()),
    }
}

/// A path relative to the store root split into its folder (with its `/`) and file name.
pub fn split_path(rel: &str) -> (&str, &str) {
    match rel.rfind('/') {
        Some(i) => rel.split_at(i + 1),
        None => ("", rel),
    }
}

/// Writes a plan's changed resources and properties (`plan_items`, one row each, its changes
/// packed into it; texts once in `plan_strings`, folders once in `plan_folders`); readers see
/// them through the `plan_resources` and `plan_changes` views.
///
/// The items are gathered in a temporary table and written to `plan_items` in key order by
/// [`PlanRows::finish`]: the walk meets a folder's files in no order, and inserted as met they
/// leave the table's pages half empty (about 280 bytes a resource where 160 are data).
pub struct PlanRows<'c> {
    plan_id: i64,
    tx: &'c Connection,
    ins_item: rusqlite::Statement<'c>,
    ins_whole: rusqlite::Statement<'c>,
    ins_folder: rusqlite::Statement<'c>,
    sel_folder: rusqlite::Statement<'c>,
    ins_str: rusqlite::Statement<'c>,
    sel_str: rusqlite::Statement<'c>,
    ins_pair: rusqlite::Statement<'c>,
    sel_pair: rusqlite::Statement<'c>,
    sel_item: rusqlite::Statement<'c>,
    del_whole: rusqlite::Statement<'c>,
    del_item: rusqlite::Statement<'c>,
    ids: HashMap<String, i64>,
    folders: HashMap<String, i64>,
    pairs: HashMap<[i64; 3], i64>,
}

/// Entries a writer's caches hold at most (memory stays flat on stores with many distinct
/// values, dropbox links).
const CACHE: usize = 100_000;

impl<'c> PlanRows<'c> {
    /// The writer of plan `plan_id`'s rows, in the plan's transaction `tx`.
    pub fn new(tx: &'c Connection, plan_id: i64) -> Result<Self> {
        tx.execute_batch(
            "DROP TABLE IF EXISTS temp.plan_items_new;
             CREATE TEMP TABLE plan_items_new AS SELECT * FROM main.plan_items WHERE 0;
             CREATE UNIQUE INDEX temp.plan_items_new_key ON plan_items_new (plan_id, folder_id, name);",
        )?;
        Ok(PlanRows {
            plan_id,
            tx,
            ins_item: tx.prepare(
                "INSERT INTO temp.plan_items_new (plan_id, folder_id, name, old_sha, new_sha, changes, rewrite_pass, attr_edits, new_bytes, packed) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?,
            ins_whole: tx.prepare(
                "INSERT INTO plan_item_changes (plan_id, folder_id, name, seq, line, property_id, old_id, new_id, old_line, new_line) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?,
            ins_folder: tx.prepare("INSERT OR IGNORE INTO plan_folders (plan_id, path) VALUES (?1, ?2)")?,
            sel_folder: tx.prepare("SELECT id FROM plan_folders WHERE plan_id = ?1 AND path = ?2")?,
            ins_str: tx.prepare("INSERT OR IGNORE INTO plan_strings (plan_id, text) VALUES (?1, ?2)")?,
            sel_str: tx.prepare("SELECT id FROM plan_strings WHERE plan_id = ?1 AND text = ?2")?,
            ins_pair: tx.prepare(
                "INSERT OR IGNORE INTO plan_pairs (plan_id, property_id, old_id, new_id) VALUES (?1, ?2, ?3, ?4)",
            )?,
            sel_pair: tx.prepare(
                "SELECT id FROM plan_pairs WHERE plan_id = ?1 AND property_id = ?2 AND old_id = ?3 AND new_id = ?4",
            )?,
            sel_item: tx.prepare(
                "SELECT changes FROM temp.plan_items_new WHERE plan_id = ?1 AND folder_id = ?2 AND name = ?3",
            )?,
            del_whole: tx.prepare(
                "DELETE FROM plan_item_changes WHERE plan_id = ?1 AND folder_id = ?2 AND name = ?3",
            )?,
            del_item: tx.prepare(
                "DELETE FROM temp.plan_items_new WHERE plan_id = ?1 AND folder_id = ?2 AND name = ?3",
            )?,
            ids: HashMap::new(),
            folders: HashMap::new(),
            pairs: HashMap::new(),
        })
    }

    /// Stores one changed resource and its changed properties: packed into its row, or kept
    /// whole when they carry their lines (the report's examples).
    pub fn insert(&mut self, r: &ResourceRow<'_>, changes: &[ChangeRow<'_>]) -> Result<()> {
        let (folder, name) = split_path(r.rel_path);
        let folder = self.folder(folder)?;
        let whole = changes
            .iter()
            .any(|c| !c.old_line.is_empty() || !c.new_line.is_empty());
        let packed = if whole {
            None
        } else {
            let mut out = String::with_capacity(changes.len() * 8 + 2);
            out.push('[');
            for (i, c) in changes.iter().enumerate() {
                let pair = self.pair(c)?;
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&format!("{},{pair}", c.line));
            }
            out.push(']');
            Some(out)
        };
        self.ins_item.execute(rusqlite::params![
            self.plan_id,
            folder,
            name,
            sha_value(r.old_sha256),
            sha_value(r.new_sha256),
            changes.len() as i64,
            r.rewrite_pass,
            r.attr_edits,
            r.new_bytes,
            packed
        ])?;
        if whole {
            for (seq, c) in changes.iter().enumerate() {
                let (k, o, n) = (
                    self.id(c.property)?,
                    self.id(c.old_value)?,
                    self.id(c.new_value)?,
                );
                self.ins_whole.execute(rusqlite::params![
                    self.plan_id,
                    folder,
                    name,
                    seq as i64 + 1,
                    c.line,
                    k,
                    o,
                    n,
                    c.old_line,
                    c.new_line
                ])?;
            }
        }
        Ok(())
    }

    /// The id of a plan_strings / plan_folders / plan_pairs row, inserting it when new.
    fn intern(
        ins: &mut rusqlite::Statement<'_>,
        sel: &mut rusqlite::Statement<'_>,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<i64> {
        match ins.insert(params) {
            Ok(id) => Ok(id),
            // Stored already (by an earlier writer, or the `plan_changes` view's trigger).
            Err(rusqlite::Error::StatementChangedRows(0)) => {
                Ok(sel.query_row(params, |r| r.get(0))?)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn id(&mut self, text: &str) -> Result<i64> {
        if let Some(&id) = self.ids.get(text) {
            return Ok(id);
        }
        if self.ids.len() >= CACHE {
            self.ids.clear();
        }
        let id = Self::intern(
            &mut self.ins_str,
            &mut self.sel_str,
            rusqlite::params![self.plan_id, text],
        )?;
        self.ids.insert(text.to_string(), id);
        Ok(id)
    }

    fn folder(&mut self, path: &str) -> Result<i64> {
        if let Some(&id) = self.folders.get(path) {
            return Ok(id);
        }
        if self.folders.len() >= CACHE {
            self.folders.clear();
        }
        let id = Self::intern(
            &mut self.ins_folder,
            &mut self.sel_folder,
            rusqlite::params![self.plan_id, path],
        )?;
        self.folders.insert(path.to_string(), id);
        Ok(id)
    }

    fn pair(&mut self, c: &ChangeRow<'_>) -> Result<i64> {
        let key = [
            self.id(c.property)?,
            self.id(c.old_value)?,
            self.id(c.new_value)?,
        ];
        if let Some(&id) = self.pairs.get(&key) {
            return Ok(id);
        }
        if self.pairs.len() >= CACHE {
            self.pairs.clear();
        }
        let params = rusqlite::params![self.plan_id, key[0], key[1], key[2]];
        let id = Self::intern(&mut self.ins_pair, &mut self.sel_pair, params)?;
        self.pairs.insert(key, id);
        Ok(id)
    }

    /// Writes the gathered items to `plan_items`, in key order (before the plan's transaction
    /// commits; without it the plan holds no items).
    pub fn finish(self) -> Result<()> {
        self.tx.execute_batch(
            "INSERT INTO main.plan_items SELECT * FROM temp.plan_items_new ORDER BY plan_id, folder_id, name;
             DROP TABLE temp.plan_items_new;",
        )?;
        Ok(())
    }

    /// Drops the resource `rel` and its changes (to plan it again); returns how many changes
    /// it had.
    pub fn remove(&mut self, rel: &str) -> Result<u64> {
        let (folder, name) = split_path(rel);
        let folder = self.folder(folder)?;
        let params = rusqlite::params![self.plan_id, folder, name];
        let Some(n) = self
            .sel_item
            .query_row(params, |r| r.get::<_, i64>(0))
            .optional()?
        else {
            return Ok(0);
        };
        self.del_whole.execute(params)?;
        self.del_item.execute(params)?;
        Ok(n as u64)
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
    let (folder, name) = split_path(rel);
    Ok(state
        .conn
        .prepare_cached(
            "SELECT i.new_bytes, i.rewrite_pass, i.attr_edits
               FROM plan_folders f JOIN plan_items i ON i.plan_id = f.plan_id AND i.folder_id = f.id
              WHERE f.plan_id = ?1 AND f.path = ?2 AND i.name = ?3",
        )?
        .query_row(rusqlite::params![plan_id, folder, name], |r| {
            Ok(PlannedRow {
                new_bytes: r.get::<_, Option<Vec<u8>>>(0)?.unwrap_or_default(),
                rewrite_pass: r.get(1)?,
                attr_edits: r.get(2)?,
            })
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_come_back_in_pages_by_folder_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::open(dir.path()).unwrap();
        let tx = state.conn.transaction().unwrap();
        let plan_id = begin_plan(
            &tx,
            &NewPlan {
                created_at: "t",
                store_kind: "ics-dir",
                store_path: "/s",
                address_form: "keep",
                directory: "d",
            },
        )
        .unwrap();
        let sha = "ab".repeat(32);
        {
            let mut rows = PlanRows::new(&tx, plan_id).unwrap();
            for rel in ["b/x.ics", "a/z.ics", "top.ics", "a/y.ics", "a/c/w.ics"] {
                let change = ChangeRow {
                    line: 3,
                    property: "ORGANIZER",
                    old_value: "mailto:a@x",
                    new_value: "urn:uuid:A",
                    old_line: "",
                    new_line: "",
                };
                let row = ResourceRow {
                    rel_path: rel,
                    old_sha256: &sha,
                    new_sha256: "not hex",
                    new_bytes: None,
                    rewrite_pass: Some(0),
                    attr_edits: None,
                };
                rows.insert(&row, &[change]).unwrap();
            }
            assert_eq!(rows.remove("a/y.ics").unwrap(), 1);
            assert_eq!(rows.remove("a/nothing.ics").unwrap(), 0);
            rows.finish().unwrap();
        }
        tx.commit().unwrap();
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = crate::state::journal_rows::planned_hashes_page(
                &state.conn,
                plan_id,
                after.as_deref(),
                2,
            )
            .unwrap();
            let Some(last) = page.last() else { break };
            after = Some(last.rel.clone());
            assert!(page
                .iter()
                .all(|p| p.old_sha == sha && p.new_sha == "not hex"));
            seen.extend(page.into_iter().map(|p| p.rel));
        }
        assert_eq!(seen, ["top.ics", "a/z.ics", "a/c/w.ics", "b/x.ics"]);
        let changes: i64 = state
            .conn
            .query_row(
                "SELECT COUNT(*) FROM plan_changes WHERE property = 'ORGANIZER' AND line = 3",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(changes, 4);
    }
}
