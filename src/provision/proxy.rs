//! Delegates and auto-accept in CalendarServer 2.x's side databases, moved to the new GUIDs.
//!
//! - `calendaruserproxy.sqlite`: `GROUPS(GROUPNAME text, MEMBER text)`; GROUPNAME is
//!   `<GUID>#calendar-proxy-write` or `<GUID>#calendar-proxy-read`, MEMBER a GUID.
//! - `resourceinfo.sqlite`: `RESOURCEINFO(GUID text, AUTOSCHEDULE integer)`.
//!
//! [`plan_db_rewrite`] lists every row change without writing; [`apply_db_rewrite`] carries the
//! plan out in one transaction, checking that each row still holds what the plan saw. Rows whose
//! GUIDs match nobody are kept as they are and reported; a rewrite that would duplicate a row
//! already present drops the duplicate and reports it.

use crate::address::Guid;
use crate::error::{Error, Result};
use rusqlite::{params, Connection, OpenFlags};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Which database a file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DbKind {
    /// `calendaruserproxy.sqlite` (table GROUPS).
    Proxy,
    /// `resourceinfo.sqlite` (table RESOURCEINFO).
    ResourceInfo,
}

/// One row's values.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum DbRow {
    /// A `GROUPS` row of `calendaruserproxy.sqlite`.
    Proxy {
        /// GROUPNAME: `<GUID>#calendar-proxy-write` or `<GUID>#calendar-proxy-read`.
        group_name: String,
        /// MEMBER: the delegate's GUID.
        member: String,
    },
    /// A `RESOURCEINFO` row of `resourceinfo.sqlite`.
    ResourceInfo {
        /// GUID: the location or resource.
        guid: String,
        /// AUTOSCHEDULE: 1 to accept invitations automatically, 0 not; None when the column is NULL.
        auto_schedule: Option<i64>,
    },
}

impl DbRow {
    /// The identity used for duplicate detection: a proxy row is its two columns, a
    /// resourceinfo row its GUID (the server reads one AUTOSCHEDULE per GUID).
    fn key(&self) -> String {
        match self {
            DbRow::Proxy { group_name, member } => format!("{group_name}\u{0}{member}"),
            DbRow::ResourceInfo { guid, .. } => guid.clone(),
        }
    }
}

impl std::fmt::Display for DbRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbRow::Proxy { group_name, member } => write!(f, "({group_name}, {member})"),
            DbRow::ResourceInfo {
                guid,
                auto_schedule,
            } => match auto_schedule {
                Some(a) => write!(f, "({guid}, {a})"),
                None => write!(f, "({guid}, NULL)"),
            },
        }
    }
}

/// A row rewritten to new GUIDs.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct RowChange {
    /// SQLite rowid of the row.
    pub rowid: i64,
    /// The row as it is now.
    pub old: DbRow,
    /// The row with its GUIDs rewritten.
    pub new: DbRow,
}

/// A GUID that matched nobody: the row is kept as it is.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct UnmatchedRow {
    /// SQLite rowid of the row.
    pub rowid: i64,
    /// The row, kept as it is.
    pub row: DbRow,
    /// `GROUPNAME`, `MEMBER` or `GUID` (reports only; not kept in a stored plan).
    #[serde(skip_deserializing)]
    pub column: &'static str,
    /// The value that matched nobody (or is not a GUID).
    pub value: String,
    /// Why the value matched nobody, in words.
    pub reason: String,
}

/// A row the rewrite would have duplicated: it is deleted.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct DroppedRow {
    /// SQLite rowid of the row deleted.
    pub rowid: i64,
    /// The row as it is now.
    pub row: DbRow,
    /// What it would have become.
    pub would_be: DbRow,
    /// The row that stays (already holding `would_be`, or rewritten to it).
    pub kept_rowid: i64,
    /// The kept row's values.
    pub kept: DbRow,
}

/// Every row change one database needs.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct DbPlan {
    /// Path of the database file.
    pub path: PathBuf,
    /// Which database it is.
    pub kind: DbKind,
    /// Rows read from it.
    pub rows: usize,
    /// Rows rewritten to new GUIDs.
    pub changes: Vec<RowChange>,
    /// GUID values that matched nobody (their rows kept).
    pub unmatched: Vec<UnmatchedRow>,
    /// Duplicate rows to delete.
    pub dropped: Vec<DroppedRow>,
}

impl DbPlan {
    /// True when applying the plan would change nothing.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.dropped.is_empty()
    }
}

fn open(path: &Path, write: bool) -> Result<Connection> {
    if !path.is_file() {
        return Err(Error::usage(format!("{}: file not found", path.display())));
    }
    let flags = if write {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| Error::runtime(format!("{}: cannot open: {e}", path.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| Error::runtime(format!("{}: {e}", path.display())))?;
    Ok(conn)
}

fn db_err(path: &Path, e: rusqlite::Error) -> Error {
    Error::runtime(format!("{}: {e}", path.display()))
}

fn detect(conn: &Connection, path: &Path) -> Result<DbKind> {
    let has = |t: &str| -> Result<bool> {
        conn.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
            [t],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .map_err(|e| db_err(path, e))
    };
    if has("GROUPS")? {
        Ok(DbKind::Proxy)
    } else if has("RESOURCEINFO")? {
        Ok(DbKind::ResourceInfo)
    } else {
        Err(Error::usage(format!(
            "{}: neither a calendaruserproxy database (table GROUPS) nor a resourceinfo database (table RESOURCEINFO)",
            path.display()
        )))
    }
}

fn read_rows(conn: &Connection, kind: DbKind, path: &Path) -> Result<Vec<(i64, DbRow)>> {
    let sql = match kind {
        DbKind::Proxy => "SELECT rowid, GROUPNAME, MEMBER FROM GROUPS ORDER BY rowid",
        DbKind::ResourceInfo => "SELECT rowid, GUID, AUTOSCHEDULE FROM RESOURCEINFO ORDER BY rowid",
    };
    let mut st = conn.prepare(sql).map_err(|e| db_err(path, e))?;
    let rows = st
        .query_map([], |r| {
            let id: i64 = r.get(0)?;
            let text = |i: usize| -> rusqlite::Result<String> {
                Ok(r.get::<_, Option<String>>(i)?.unwrap_or_default())
            };
            Ok((
                id,
                match kind {
                    DbKind::Proxy => DbRow::Proxy {
                        group_name: text(1)?,
                        member: text(2)?,
                    },
                    DbKind::ResourceInfo => DbRow::ResourceInfo {
                        guid: text(1)?,
                        auto_schedule: r.get(2)?,
                    },
                },
            ))
        })
        .map_err(|e| db_err(path, e))?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(|e| db_err(path, e))
}

/// Maps one GUID value: `Ok(Some(new))` to change it, `Ok(None)` to keep it, `Err(reason)` when
/// it matches nobody.
fn map_value(
    value: &str,
    resolve: &dyn Fn(&Guid) -> Option<Guid>,
) -> std::result::Result<Option<String>, String> {
    let Some(g) = Guid::parse(value) else {
        return Err("not a GUID".to_string());
    };
    match resolve(&g) {
        Some(n) if n == g => Ok(None),
        Some(n) => Ok(Some(n.as_str().to_string())),
        None => Err("matches no current directory record".to_string()),
    }
}

/// Lists the changes a database needs: old GUIDs → new GUIDs in every GUID column.
///
/// `resolve` gives the current GUID for a GUID: the new one for an old GUID, the same one for a
/// GUID that is still current (e.g. `Mapper::resolve` on `urn:uuid:` with the `same-guid` rule),
/// `None` when it matches nobody — those values are kept and reported as unmatched.
pub fn plan_db_rewrite(path: &Path, resolve: &dyn Fn(&Guid) -> Option<Guid>) -> Result<DbPlan> {
    let conn = open(path, false)?;
    let kind = detect(&conn, path)?;
    let rows = read_rows(&conn, kind, path)?;
    let mut plan = DbPlan {
        path: path.to_path_buf(),
        kind,
        rows: rows.len(),
        changes: Vec::new(),
        unmatched: Vec::new(),
        dropped: Vec::new(),
    };
    // Each row's value after the rewrite.
    let mut finals: Vec<(i64, DbRow, DbRow)> = Vec::with_capacity(rows.len());
    for (rowid, row) in rows {
        let new = rewrite_row(rowid, &row, resolve, &mut plan.unmatched);
        finals.push((rowid, row, new));
    }
    settle_duplicates(&mut plan, &finals);
    Ok(plan)
}

/// One row with every GUID column mapped; a value that maps to nobody is kept and noted in
/// `unmatched_rows`.
fn rewrite_row(
    rowid: i64,
    row: &DbRow,
    resolve: &dyn Fn(&Guid) -> Option<Guid>,
    unmatched_rows: &mut Vec<UnmatchedRow>,
) -> DbRow {
    let mut unmatched = |column: &'static str, value: &str, reason: String| {
        unmatched_rows.push(UnmatchedRow {
            rowid,
            row: row.clone(),
            column,
            value: value.to_string(),
            reason,
        })
    };
    match row {
        DbRow::Proxy { group_name, member } => {
            let (owner, suffix) = match group_name.split_once('#') {
                Some((o, s)) => (o, Some(s)),
                None => (group_name.as_str(), None),
            };
            let new_owner = match map_value(owner, resolve) {
                Ok(n) => n,
                Err(why) => {
                    unmatched("GROUPNAME", owner, why);
                    None
                }
            };
            let new_member = match map_value(member, resolve) {
                Ok(n) => n,
                Err(why) => {
                    unmatched("MEMBER", member, why);
                    None
                }
            };
            DbRow::Proxy {
                group_name: match (new_owner, suffix) {
                    (Some(o), Some(s)) => format!("{o}#{s}"),
                    (Some(o), None) => o,
                    (None, _) => group_name.clone(),
                },
                member: new_member.unwrap_or_else(|| member.clone()),
            }
        }
        DbRow::ResourceInfo {
            guid,
            auto_schedule,
        } => {
            let new_guid = match map_value(guid, resolve) {
                Ok(n) => n,
                Err(why) => {
                    unmatched("GUID", guid, why);
                    None
                }
            };
            DbRow::ResourceInfo {
                guid: new_guid.unwrap_or_else(|| guid.clone()),
                auto_schedule: *auto_schedule,
            }
        }
    }
}

/// The changes of `finals` (rowid, old, new), with a rewrite that would duplicate a row that
/// stays (or an earlier rewrite) dropped instead: rows that keep their value win over rewritten
/// ones, then the lowest rowid.
fn settle_duplicates(plan: &mut DbPlan, finals: &[(i64, DbRow, DbRow)]) {
    let mut keeper: HashMap<String, (i64, DbRow)> = HashMap::new();
    for (rowid, old, new) in finals.iter().filter(|(_, o, n)| o == n) {
        keeper
            .entry(new.key())
            .or_insert_with(|| (*rowid, old.clone()));
    }
    for (rowid, old, new) in finals {
        if old == new {
            // Unchanged (an exact duplicate that was already there is not ours to remove).
            continue;
        }
        match keeper.get(&new.key()) {
            Some((kept_rowid, kept)) => plan.dropped.push(DroppedRow {
                rowid: *rowid,
                row: old.clone(),
                would_be: new.clone(),
                kept_rowid: *kept_rowid,
                kept: kept.clone(),
            }),
            None => {
                keeper.insert(new.key(), (*rowid, new.clone()));
                plan.changes.push(RowChange {
                    rowid: *rowid,
                    old: old.clone(),
                    new: new.clone(),
                });
            }
        }
    }
}

/// Applies a plan in one transaction. Every row must still hold what the plan saw; otherwise
/// nothing is changed and the error names the row.
pub fn apply_db_rewrite(path: &Path, plan: &DbPlan) -> Result<()> {
    if plan.is_empty() {
        return Ok(());
    }
    let mut conn = open(path, true)?;
    let kind = detect(&conn, path)?;
    if kind != plan.kind {
        return Err(Error::runtime(format!(
            "{}: the plan is for a {:?} database, the file is a {kind:?} database",
            path.display(),
            plan.kind
        )));
    }
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| db_err(path, e))?;
    let changed_since = |rowid: i64, row: &DbRow| {
        Error::runtime(format!(
            "{}: row {rowid} {row} changed since the plan was made; nothing was written (plan again)",
            path.display()
        ))
    };
    for d in &plan.dropped {
        let n = match &d.row {
            DbRow::Proxy { group_name, member } => tx.execute(
                "DELETE FROM GROUPS WHERE rowid = ?1 AND GROUPNAME IS ?2 AND MEMBER IS ?3",
                params![d.rowid, group_name, member],
            ),
            DbRow::ResourceInfo {
                guid,
                auto_schedule,
            } => tx.execute(
                "DELETE FROM RESOURCEINFO WHERE rowid = ?1 AND GUID IS ?2 AND AUTOSCHEDULE IS ?3",
                params![d.rowid, guid, auto_schedule],
            ),
        }
        .map_err(|e| db_err(path, e))?;
        if n != 1 {
            return Err(changed_since(d.rowid, &d.row));
        }
    }
    for c in &plan.changes {
        let n = match (&c.old, &c.new) {
            (
                DbRow::Proxy { group_name, member },
                DbRow::Proxy {
                    group_name: ng,
                    member: nm,
                },
            ) => tx.execute(
                "UPDATE GROUPS SET GROUPNAME = ?4, MEMBER = ?5 WHERE rowid = ?1 AND GROUPNAME IS ?2 AND MEMBER IS ?3",
                params![c.rowid, group_name, member, ng, nm],
            ),
            (
                DbRow::ResourceInfo {
                    guid,
                    auto_schedule,
                },
                DbRow::ResourceInfo { guid: ng, .. },
            ) => tx.execute(
                "UPDATE RESOURCEINFO SET GUID = ?4 WHERE rowid = ?1 AND GUID IS ?2 AND AUTOSCHEDULE IS ?3",
                params![c.rowid, guid, auto_schedule, ng],
            ),
            _ => {
                return Err(Error::runtime(format!(
                    "{}: plan row {} mixes table kinds",
                    path.display(),
                    c.rowid
                )))
            }
        }
        .map_err(|e| db_err(path, e))?;
        if n != 1 {
            return Err(changed_since(c.rowid, &c.old));
        }
    }
    tx.commit().map_err(|e| db_err(path, e))
}
