//! `verify` and `doctor` on the database — calverify's checks for a migration, never deleting or
//! changing anything: every calendar object's addresses against the current directory (as for
//! the file store: not canonical, dark organizer, unresolved, ambiguous, organizer copies that
//! disagree), its ORGANIZER column and MD5 against its text, objects that do not parse, homes
//! whose owner is in no directory (or still under an old uid), group-card members and uid
//! columns still naming old principals.

use crate::address::CalAddress;
use crate::config::Config;
use crate::directory::Directory;
use crate::error::Result;
use crate::ical;
use crate::mapping::{self, Mapper, Observed, Verdict};
use crate::progress::Progress;
use crate::store::pg::read::{self, HomeRow, ObjectRow};
use crate::store::pg::schema::{md5_hex, ValueKind};
use crate::store::pg::{Db, Schema};
use crate::verify::{check_resource, Organizers, VerifyReport};
use std::collections::{HashMap, HashSet};

/// The integrity of one object's columns: ORGANIZER and MD5 as CalendarServer computes them.
fn check_columns(
    report: &mut VerifyReport,
    schema: &crate::store::pg::Schema,
    row: &ObjectRow,
    info: &ical::CalendarInfo,
) {
    let label = row.label();
    let md5 = schema.calendar_md5(row.text.as_bytes(), row.schedule_tag.as_deref());
    if md5 != row.md5 {
        report.add(
            "md5-stale",
            &label,
            format!(
                "MD5 column {} but the text gives {md5}: clients see a wrong ETag",
                row.md5
            ),
        );
    }
    let col = row.organizer.clone().unwrap_or_default();
    let text = info.organizer.clone().unwrap_or_default();
    if col != text {
        report.add(
            "organizer-column",
            &label,
            format!("ORGANIZER column `{col}` but the text says `{text}`"),
        );
    }
}

/// Reads every object (home by home) and calls `each`; malformed ones are reported.
fn walk_objects(
    db: &mut Db,
    report: &mut VerifyReport,
    mut each: impl FnMut(&mut VerifyReport, &ObjectRow, &ical::CalendarInfo),
) -> Result<Vec<read::HomeRow>> {
    let schema = db.schema.clone();
    let mut tx = db.snapshot().map_err(crate::store::pg::pg_err("begin"))?;
    let mut homes = Vec::new();
    for t in read::HOME_TABLES {
        homes.extend(read::homes(&mut tx, &schema, t)?);
    }
    let cal: Vec<i64> = homes
        .iter()
        .filter(|h| h.table == "CALENDAR_HOME")
        .map(|h| h.id)
        .collect();
    let mut sink = |batch: Vec<ObjectRow>| -> Result<()> {
        for row in batch {
            match ical::scan(row.text.as_bytes()) {
                Err(e) => report.add("malformed", &row.label(), e.to_string()),
                Ok(info) => {
                    report.resources += 1;
                    if row.owner.is_none() {
                        report.add(
                            "orphan-object",
                            &row.label(),
                            format!("calendar {} is owned by no home", row.calendar_id),
                        );
                    }
                    each(report, &row, &info);
                }
            }
        }
        Ok(())
    };
    for id in cal {
        read::home_objects(&mut tx, id, &mut sink)?;
    }
    read::orphan_objects(&mut tx, &mut sink)?;
    tx.commit().map_err(crate::store::pg::pg_err("commit"))?;
    Ok(homes)
}

/// A memo of the mapper's verdicts, by address key.
type Resolve<'r> = dyn FnMut(&CalAddress) -> (Verdict, Option<String>) + 'r;

/// Checks the database against the current directory.
pub fn verify(progress: &dyn Progress, cfg: &Config, current: &Directory) -> Result<VerifyReport> {
    let old = Directory::default();
    let mapper = Mapper::new(cfg, current, &old)?;
    let mut resolve = crate::verify::memo_resolver(&mapper);
    let mut db = Db::open(cfg)?;
    let schema = db.schema.clone();
    let mut report = VerifyReport::default();
    let mut organizers: Organizers = HashMap::new();
    let bar = progress.start("verifying", None);
    let homes = walk_objects(&mut db, &mut report, |report, row, info| {
        bar.inc(1);
        check_resource(
            report,
            &mapper,
            &mut resolve,
            &mut organizers,
            &row.label(),
            info,
        );
        check_columns(report, &schema, row, info);
    })?;
    bar.finish();
    check_homes(&mut report, &mapper, &homes);
    // Group members and uid columns still naming old principals.
    let mut tx = db
        .client
        .transaction()
        .map_err(crate::store::pg::pg_err("begin"))?;
    check_cards(&mut tx, &schema, &mapper, &homes, &mut report)?;
    check_values(&mut tx, &schema, &mapper, &mut resolve, &mut report)?;
    tx.commit().map_err(crate::store::pg::pg_err("commit"))?;
    report
        .problems
        .sort_by(|a, b| (&a.kind, &a.path).cmp(&(&b.kind, &b.path)));
    Ok(report)
}

/// A bare uid: current (its record has that GUID: `Ok`), moved (an old GUID of someone: the
/// new one), or orphan (`Err(None)`).
fn uid_state(mapper: &Mapper<'_>, uid: &str) -> std::result::Result<(), Option<String>> {
    let r = mapper.resolve(&crate::db::rewrite::uid_address(uid), &Observed::default());
    match (r.outcome, r.target) {
        (Verdict::Acknowledged, _) => Ok(()),
        (Verdict::Mapped | Verdict::Unchanged, Some(p)) => {
            if p.guid.as_str().eq_ignore_ascii_case(uid) {
                Ok(())
            } else {
                Err(Some(p.guid.to_string()))
            }
        }
        _ => Err(None),
    }
}

/// Homes still under an old uid, or whose owner is in no directory.
fn check_homes(report: &mut VerifyReport, mapper: &Mapper<'_>, homes: &[HomeRow]) {
    for h in homes {
        report.homes += 1;
        let at = format!("{}/{}", h.table.to_ascii_lowercase(), h.owner_uid);
        match uid_state(mapper, &h.owner_uid) {
            Ok(()) => {}
            Err(Some(v)) => report.add(
                "home-not-adopted",
                &at,
                format!("belongs to {v}; `apply` moves it to that uid"),
            ),
            Err(None) => report.add(
                "orphan-home",
                &at,
                format!("{} names no current directory record", h.owner_uid),
            ),
        }
    }
}

/// Cards that do not parse or whose MD5 is stale, group members still naming old principals.
fn check_cards(
    tx: &mut postgres::Transaction<'_>,
    schema: &Schema,
    mapper: &Mapper<'_>,
    homes: &[HomeRow],
    report: &mut VerifyReport,
) -> Result<()> {
    for h in homes.iter().filter(|h| h.table == "ADDRESSBOOK_HOME") {
        let mut cards = Vec::new();
        read::home_cards(tx, schema, h.id, |b| {
            cards.extend(b);
            Ok(())
        })?;
        let local: HashSet<String> = cards
            .iter()
            .filter_map(|c| crate::vcard::scan(c.text.as_bytes()).ok()?.uid)
            .collect();
        for c in &cards {
            match crate::vcard::scan(c.text.as_bytes()) {
                Err(e) => report.add("malformed", &c.label(), e.to_string()),
                Ok(info) => {
                    if md5_hex(c.text.as_bytes()) != c.md5 {
                        report.add(
                            "md5-stale",
                            &c.label(),
                            format!("MD5 column {} does not match the card", c.md5),
                        );
                    }
                    for crate::vcard::Member { line, value: m } in &info.members {
                        let uid = match crate::db::rewrite::member_address(m, &local) {
                            Some(CalAddress::UrnUuid(g)) => Some(g.to_string()),
                            Some(CalAddress::UrnXUid(u)) => Some(u),
                            _ => None,
                        };
                        if let Some(uid) = uid {
                            if let Err(Some(v)) = uid_state(mapper, &uid) {
                                report.add(
                                    "not-canonical",
                                    &format!("{}:{line}", c.label()),
                                    format!("group member {m} is now {v}"),
                                );
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Uid and address columns still holding old principals' values.
fn check_values(
    tx: &mut postgres::Transaction<'_>,
    schema: &Schema,
    mapper: &Mapper<'_>,
    resolve: &mut Resolve<'_>,
    report: &mut VerifyReport,
) -> Result<()> {
    for vc in &schema.values {
        let rows = crate::store::pg::read::value_counts(tx, vc.table, vc.column)
            .map_err(crate::store::pg::pg_err(vc.table))?;
        for crate::store::pg::read::ValueRows { value: v, rows: n } in rows {
            let stale = match vc.kind {
                ValueKind::Uid => match uid_state(mapper, &v) {
                    Err(Some(new)) => Some(new),
                    _ => None,
                },
                ValueKind::Address => match resolve(&mapping::parse_found(&v)) {
                    (Verdict::Mapped, Some(new)) => Some(new),
                    _ => None,
                },
            };
            if let Some(new) = stale {
                report.add(
                    "uid-not-adopted",
                    &format!("{}.{}", vc.table, vc.column),
                    format!("{n} row(s) still hold {v} (now {new})"),
                );
            }
        }
    }
    Ok(())
}

/// What `doctor` found on a database, with the database it looked at.
#[derive(Debug)]
pub struct DoctorFindings {
    /// The database as the configuration names it (no password).
    pub label: String,
    /// The `CALENDARSERVER` table's `VERSION`.
    pub version: u32,
    /// The CalendarServer release of that schema version.
    pub release: &'static str,
    /// The objects read and the problems found.
    pub report: VerifyReport,
}

/// `doctor` on the database: the integrity checks that need no directory (MD5 and ORGANIZER
/// columns against the text, objects that do not parse). It only reads: a database is repaired
/// by CalendarServer itself or through plan and apply, journaled.
pub fn doctor(cfg: &Config) -> Result<DoctorFindings> {
    let mut db = Db::open(cfg)?;
    let schema = db.schema.clone();
    let mut report = VerifyReport::default();
    walk_objects(&mut db, &mut report, |report, row, info| {
        check_columns(report, &schema, row, info)
    })?;
    Ok(DoctorFindings {
        label: db.target.label.clone(),
        version: schema.version,
        release: schema.release,
        report,
    })
}
