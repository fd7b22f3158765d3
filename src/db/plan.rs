//! Planning on the database: one read-only snapshot, home by home through server-side cursors;
//! every calendar object rewritten in memory with the pure iCalendar layer and the same mapping as
//! the file store; only hashes and edits stored (the state database under `[state] path`). Nothing
//! in the database changes.
//!
//! What a plan holds, beside the common tables the reports read (plan_mappings, plan_changes,
//! plan_homes, plan_problems): `pg_plan_objects` (per changed object: md5 of the old and new text,
//! old and new MD5 and ORGANIZER columns), `pg_plan_principals` (the resolver, so apply replays the
//! exact rewrite), `pg_plan_homes` (rename or merge), `pg_plan_values` (uid and address columns).

use super::rewrite::{
    href_of, member_address, new_uid, notification_filter, notification_text, rewrite_card,
    rewrite_object, uid_address, Planned, APN_COUNT,
};
use crate::address::CalAddress;
use crate::config::Config;
use crate::directory::Directory;
use crate::error::{Error, Result};
use crate::ical::{self, Resolve, RewriteOptions};
use crate::mapping::{self, Mapper, Mapping, Observed};
use crate::plan::{Finding, LazyResolver, PlanSummary};
use crate::progress::Progress;
use crate::state::{now_rfc3339, State};
use crate::store::pg::read::{self, CardRow, HomeRow, ObjectRow};
use crate::store::pg::schema::{md5_hex, Schema, ValueKind};
use crate::store::pg::Db;
use crate::vcard;
use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// How many changed objects keep their whole old and new lines (report diffs).
const EXAMPLE_LINES: u64 = 50;

struct Acc<'t> {
    plan_id: i64,
    ins_obj: rusqlite::Statement<'t>,
    ins_chg: rusqlite::Statement<'t>,
    changed: u64,
    props: u64,
}

impl Acc<'_> {
    #[allow(clippy::too_many_arguments)]
    fn insert(
        &mut self,
        kind: &str,
        id: i64,
        label: &str,
        old_text_md5: &str,
        old_md5: &str,
        old_org: Option<&str>,
        p: &Planned,
        keep_lines: bool,
    ) -> Result<()> {
        self.changed += 1;
        self.props += p.changes.len() as u64;
        self.ins_obj.execute(rusqlite::params![
            self.plan_id,
            kind,
            id,
            label,
            old_text_md5,
            p.new_text_md5,
            old_md5,
            p.new_md5,
            old_org,
            p.new_organizer,
            p.changes.len() as i64
        ])?;
        for c in &p.changes {
            self.ins_chg.execute(rusqlite::params![
                self.plan_id,
                label,
                c.line as i64,
                c.property,
                c.old_value,
                c.new_value,
                if keep_lines { c.old_line.as_str() } else { "" },
                if keep_lines { c.new_line.as_str() } else { "" }
            ])?;
        }
        Ok(())
    }
}

/// The result of the parallel part of one object's planning.
type Scanned = std::result::Result<(ical::CalendarInfo, Option<Planned>, String), ical::IcalError>;

/// Builds a plan of the database (nothing in it changes).
pub fn plan(
    progress: &dyn Progress,
    cfg: &Config,
    current: &Directory,
    old: &Directory,
) -> Result<PlanSummary> {
    let started = std::time::Instant::now();
    let mut db = Db::open(cfg)?;
    let schema = db.schema.clone();
    let label = db.target.label.clone();
    let mapper = Mapper::new(cfg, current, old)?;
    let opts = RewriteOptions {
        form: cfg.rewrite.address_form,
    };
    let lazy = LazyResolver::new(&mapper, current);

    let mut state = State::open(&cfg.state.path)?;
    let created_at = now_rfc3339();
    let stx = state.conn.transaction()?;
    stx.execute(
        "INSERT INTO plans (created_at, store_kind, store_path, address_form, directory, status) VALUES (?1, 'calendarserver-pg', ?2, ?3, ?4, 'building')",
        rusqlite::params![
            created_at,
            label,
            serde_json::to_value(cfg.rewrite.address_form)?.as_str().unwrap_or_default(),
            current.origin,
        ],
    )?;
    let plan_id = stx.last_insert_rowid();
    stx.execute(
        "INSERT INTO pg_plans (plan_id, schema_version, database) VALUES (?1, ?2, ?3)",
        rusqlite::params![plan_id, schema.version, label],
    )?;

    let mut observed: BTreeMap<String, (CalAddress, Observed)> = BTreeMap::new();
    let mut problems: Vec<Finding> = Vec::new();
    let mut scanned = 0u64;
    // Objects naming a GUID the walk left unresolved: planned again once the mapping is known.
    let mut recheck: Vec<(i64, BTreeSet<String>)> = Vec::new();
    let mut homes: Vec<HomeRow> = Vec::new();
    let mut value_counts: Vec<(usize, String, i64)> = Vec::new();
    let mut card_ids: Vec<i64> = Vec::new();
    let mut warnings = current.warnings.clone();
    warnings.extend(old.warnings.iter().cloned());

    let mut tx = db.snapshot().map_err(|e| {
        Error::runtime(format!(
            "{label}: {}",
            crate::store::pg::connect::describe(&e)
        ))
    })?;

    let mapping;
    let mut acc = Acc {
        plan_id,
        ins_obj: stx.prepare(
            "INSERT OR REPLACE INTO pg_plan_objects (plan_id, kind, resource_id, label, old_text_md5, new_text_md5, old_md5, new_md5, old_organizer, new_organizer, changes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?,
        ins_chg: stx.prepare(
            "INSERT INTO plan_changes (plan_id, rel_path, line, property, old_value, new_value, old_line, new_line) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?,
        changed: 0,
        props: 0,
    };
    {
        for table in read::HOME_TABLES {
            homes.extend(read::homes(&mut tx, &schema, table)?);
        }
        let bar = progress.start("planning", None);
        let cal_homes: Vec<i64> = homes
            .iter()
            .filter(|h| h.table == "CALENDAR_HOME")
            .map(|h| h.id)
            .collect();
        // The rewrite of one fetched batch, on every core (a pure function of the rows).
        let scan = |batch: Vec<ObjectRow>| -> Vec<(ObjectRow, Scanned)> {
            batch
                .into_par_iter()
                .map(|row| {
                    let r = ical::scan_and_rewrite(row.text.as_bytes(), &lazy, &opts).map(
                        |(info, rw)| {
                            let p = rewrite_object(&schema, &row, &info, rw, &lazy, &opts);
                            (info, p, row.text_md5.clone())
                        },
                    );
                    (row, r)
                })
                .collect()
        };
        let mut sink = |results: Vec<(ObjectRow, Scanned)>| -> Result<()> {
            for (row, r) in results {
                bar.inc(1);
                let label = row.label();
                match r {
                    Err(e) => problems.push(Finding {
                        path: label,
                        kind: "malformed".into(),
                        detail: e.to_string(),
                    }),
                    Ok((info, planned, old_text_md5)) => {
                        scanned += 1;
                        if row.owner.is_none() {
                            problems.push(Finding {
                                path: label.clone(),
                                kind: "orphan-object".into(),
                                detail: format!(
                                    "calendar {} is owned by no home; planned like the others",
                                    row.calendar_id
                                ),
                            });
                        }
                        let keys = crate::plan::observe(&mut observed, &info);
                        let open: BTreeSet<String> = keys
                            .into_iter()
                            .filter(|k| observed[k].0.guid().is_some() && lazy.unresolved(k))
                            .collect();
                        if !open.is_empty() {
                            recheck.push((row.resource_id, open));
                        }
                        if let Some(p) = planned {
                            let keep = acc.changed < EXAMPLE_LINES;
                            acc.insert(
                                "calendar",
                                row.resource_id,
                                &label,
                                &old_text_md5,
                                &row.md5,
                                row.organizer.as_deref(),
                                &p,
                                keep,
                            )?;
                        }
                    }
                }
            }
            Ok(())
        };
        // Three stages, each on its own thread: the reader fetches the next batches while the
        // scanner rewrites one (on every core) and this thread stores the edits of the last in
        // the state database (SQLite inserts are serial; they no longer hold the rewrite up).
        {
            let txr = &mut tx;
            std::thread::scope(|scope| -> Result<()> {
                let (send, recv) = crossbeam_channel::bounded::<Vec<ObjectRow>>(4);
                let (send_done, recv_done) =
                    crossbeam_channel::bounded::<Vec<(ObjectRow, Scanned)>>(2);
                let scan = &scan;
                let scanner = scope.spawn(move || {
                    for batch in recv.iter() {
                        if send_done.send(scan(batch)).is_err() {
                            break;
                        }
                    }
                });
                let reader = scope.spawn(move || -> Result<()> {
                    let mut forward = |b: Vec<ObjectRow>| -> Result<()> {
                        send.send(b).map_err(|_| Error::runtime("planning stopped"))
                    };
                    for id in cal_homes {
                        read::home_objects(txr, id, &mut forward)?;
                    }
                    read::orphan_objects(txr, &mut forward)
                });
                let result = recv_done.iter().try_for_each(&mut sink);
                drop(recv_done);
                if scanner.join().is_err() {
                    return Err(Error::runtime("the rewrite of a batch failed"));
                }
                let read = reader
                    .join()
                    .unwrap_or_else(|_| Err(Error::runtime("the database reader failed")));
                result.and(read)
            })?;
        }
        bar.finish();
        tracing::info!(
            "objects: {scanned} read, {} to change, at {:.2?}",
            acc.changed,
            started.elapsed()
        );

        // Address-book group members that name principals (not cards of the same book).
        for h in homes.iter().filter(|h| h.table == "ADDRESSBOOK_HOME") {
            let mut cards: Vec<CardRow> = Vec::new();
            read::home_cards(&mut tx, &schema, h.id, |b| {
                cards.extend(b);
                Ok(())
            })?;
            let local: HashSet<String> = cards
                .iter()
                .filter_map(|c| vcard::scan(c.text.as_bytes()).ok()?.uid)
                .collect();
            for c in &cards {
                match vcard::scan(c.text.as_bytes()) {
                    Err(e) => problems.push(Finding {
                        path: c.label(),
                        kind: "malformed".into(),
                        detail: e.to_string(),
                    }),
                    Ok(info) => {
                        let mut foreign = false;
                        for m in &info.members {
                            if let Some(addr) = member_address(&m.value, &local) {
                                let e = observed
                                    .entry(addr.key())
                                    .or_insert_with(|| (addr, Observed::default()));
                                e.1.resources += 1;
                                foreign = true;
                            }
                        }
                        if foreign {
                            card_ids.push(c.resource_id);
                        }
                    }
                }
            }
        }

        // Uid and address columns: distinct values and how many rows hold each.
        for (i, vc) in schema.values.iter().enumerate() {
            let rows = tx
                .query(
                    &format!(
                        "SELECT {c}, COUNT(*) FROM {t} WHERE {c} IS NOT NULL AND {c} <> '' GROUP BY {c} ORDER BY {c}",
                        c = vc.column,
                        t = vc.table
                    ),
                    &[],
                )
                .map_err(|e| db_err(&label, vc.table, &e))?;
            for r in rows {
                let v: String = r.get(0);
                let n: i64 = r.get(1);
                let addr = match vc.kind {
                    ValueKind::Uid => uid_address(&v),
                    ValueKind::Address => mapping::parse_found(&v),
                };
                observed
                    .entry(addr.key())
                    .or_insert_with(|| (addr, Observed::default()));
                value_counts.push((i, v, n));
            }
        }
        for h in &homes {
            let addr = uid_address(&h.owner_uid);
            observed
                .entry(addr.key())
                .or_insert_with(|| (addr, Observed::default()));
        }
        mapping = Mapping::build(&mapper, &observed);
        let resolver = mapping.resolver();

        // Rule 6 (store evidence) may have resolved GUIDs the walk could not: plan those again.
        let late: HashSet<&String> = resolver.keys().filter(|k| lazy.unresolved(k)).collect();
        let again: Vec<i64> = recheck
            .iter()
            .filter(|(_, open)| open.iter().any(|k| late.contains(k)))
            .map(|(id, _)| *id)
            .collect();
        for chunk in again.chunks(read::BATCH as usize) {
            for row in read::objects_by_id(&mut tx, chunk, false)? {
                let (info, rw) = ical::scan_and_rewrite(row.text.as_bytes(), &resolver, &opts)
                    .map_err(|e| Error::runtime(format!("{}: {e}", row.label())))?;
                let label = row.label();
                let before: i64 = stx.query_row(
                    "SELECT COUNT(*) FROM plan_changes WHERE plan_id = ?1 AND rel_path = ?2",
                    rusqlite::params![plan_id, label],
                    |r| r.get(0),
                )?;
                if before > 0 {
                    acc.changed -= 1;
                    acc.props -= before as u64;
                }
                stx.execute(
                    "DELETE FROM plan_changes WHERE plan_id = ?1 AND rel_path = ?2",
                    rusqlite::params![plan_id, label],
                )?;
                stx.execute(
                    "DELETE FROM pg_plan_objects WHERE plan_id = ?1 AND kind = 'calendar' AND resource_id = ?2",
                    rusqlite::params![plan_id, row.resource_id],
                )?;
                if let Some(p) = rewrite_object(&schema, &row, &info, rw, &resolver, &opts) {
                    acc.insert(
                        "calendar",
                        row.resource_id,
                        &label,
                        &row.text_md5,
                        &row.md5,
                        row.organizer.as_deref(),
                        &p,
                        false,
                    )?;
                }
            }
        }

        // Cards, with the final mapping.
        for chunk in card_ids.chunks(read::BATCH as usize) {
            let cards = read::cards_by_id(&mut tx, &schema, chunk, false)?;
            for c in cards {
                if let Some((new, changes)) = rewrite_card(&mut tx, &schema, &c, &resolver)? {
                    let m = md5_hex(&new);
                    let p = Planned {
                        new_md5: m.clone(),
                        new_text_md5: m,
                        new_text: new,
                        changes,
                        new_organizer: None,
                    };
                    acc.insert(
                        "vcard",
                        c.resource_id,
                        &c.label(),
                        &md5_hex(c.text.as_bytes()),
                        &c.md5,
                        None,
                        &p,
                        false,
                    )?;
                }
            }
        }

        // Uid and address columns.
        let mut ins = stx.prepare(
            "INSERT INTO pg_plan_values (plan_id, table_name, column_name, old_value, new_value, rows) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for (i, v, n) in &value_counts {
            let vc = &schema.values[*i];
            let new = match vc.kind {
                ValueKind::Uid => new_uid(&resolver, v),
                ValueKind::Address => {
                    let addr = mapping::parse_found(v);
                    resolver
                        .resolve(&addr)
                        .map(|p| p.canonical_address(opts.form, &addr))
                        .filter(|n| n != v)
                }
            };
            if let Some(new) = new {
                ins.execute(rusqlite::params![plan_id, vc.table, vc.column, v, new, n])?;
            }
        }
    }
    let resolver = mapping.resolver();

    // Homes: rename to the new uid, or merge into the home the server already made for it.
    let mut homes_count: BTreeMap<String, usize> = BTreeMap::new();
    let mut hrefs: Vec<(String, String)> = Vec::new();
    let mut moved: BTreeSet<(String, String)> = BTreeSet::new();
    {
        let mut ins = stx.prepare(
            "INSERT INTO plan_homes (plan_id, rel_path, layout, old_id, outcome, new_guid) VALUES (?1, ?2, 'sql', ?3, ?4, ?5)",
        )?;
        let mut ins_pg = stx.prepare(
            "INSERT INTO pg_plan_homes (plan_id, home_table, resource_id, old_uid, new_uid, action, target_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for h in &homes {
            let key = uid_address(&h.owner_uid).key();
            let res = mapping.entries.get(&key);
            let (outcome, new) = match res.map(|r| (r.outcome, r.target.as_ref())) {
                Some((_, Some(p))) if p.guid.as_str().eq_ignore_ascii_case(&h.owner_uid) => {
                    ("current", Some(p.guid.to_string()))
                }
                Some((mapping::Verdict::Mapped | mapping::Verdict::Unchanged, Some(p))) => {
                    ("moved", Some(p.guid.to_string()))
                }
                Some((mapping::Verdict::Ambiguous, _)) => ("ambiguous", None),
                _ => ("unmatched", None),
            };
            *homes_count.entry(outcome.to_string()).or_default() += 1;
            ins.execute(rusqlite::params![
                plan_id,
                format!("{}/{}", h.table.to_ascii_lowercase(), h.owner_uid),
                h.owner_uid,
                outcome,
                new
            ])?;
            if outcome == "moved" {
                let new = new.unwrap_or_default();
                moved.insert((h.owner_uid.clone(), new.clone()));
                if h.table == "CALENDAR_HOME" {
                    hrefs.push((h.owner_uid.clone(), new.clone()));
                }
                let target = homes
                    .iter()
                    .find(|t| t.table == h.table && t.owner_uid == new && t.status == h.status);
                let action = if target.is_some() { "merge" } else { "rename" };
                ins_pg.execute(rusqlite::params![
                    plan_id,
                    h.table,
                    h.id,
                    h.owner_uid,
                    new,
                    action,
                    target.map(|t| t.id)
                ])?;
            }
        }
    }
    // Properties holding hrefs into a moved home (the inbox's calendar-free-busy-set, ...).
    {
        let mut ins = stx.prepare(
            "INSERT INTO pg_plan_values (plan_id, table_name, column_name, old_value, new_value, rows) VALUES (?1, 'RESOURCE_PROPERTY', 'VALUE', ?2, ?3, ?4)",
        )?;
        for (old_uid, new_uid) in &hrefs {
            let n: i64 = tx
                .query_one(
                    "SELECT COUNT(*) FROM RESOURCE_PROPERTY WHERE strpos(VALUE, $1) > 0",
                    &[&href_of(old_uid)],
                )
                .map_err(|e| db_err(&label, "RESOURCE_PROPERTY", &e))?
                .get(0);
            if n > 0 {
                ins.execute(rusqlite::params![plan_id, old_uid, new_uid, n])?;
            }
        }
    }
    // Push subscriptions keyed by the home's push key (`/CalDAV/<host>/<uid>/...`,
    // `/CardDAV/<host>/<uid>/...`): the key follows the adopted home.
    {
        let mut ins = stx.prepare(
            "INSERT INTO pg_plan_values (plan_id, table_name, column_name, old_value, new_value, rows) VALUES (?1, 'APN_SUBSCRIPTIONS', 'RESOURCE_KEY', ?2, ?3, ?4)",
        )?;
        for (old_uid, new_uid) in &moved {
            let n: i64 = tx
                .query_one(APN_COUNT, &[old_uid])
                .map_err(|e| db_err(&label, "APN_SUBSCRIPTIONS", &e))?
                .get(0);
            if n > 0 {
                ins.execute(rusqlite::params![plan_id, old_uid, new_uid, n])?;
            }
        }
    }
    // Sharing notifications naming an adopted home's owner (invites and replies: `urn:uuid:`,
    // `urn:x-uid:` and `/__uids__/` hrefs in the XML of 3.x-5.x, the owner and sharee uids in the
    // JSON of 9.x): rewritten row by row at apply, MD5 with them.
    {
        let data = schema.notification_data;
        let mut ins = stx.prepare(
            "INSERT INTO pg_plan_values (plan_id, table_name, column_name, old_value, new_value, rows) VALUES (?1, 'NOTIFICATION', ?2, ?3, ?4, ?5)",
        )?;
        for (old_uid, new_uid) in &moved {
            let rows = tx
                .query(
                    &format!(
                        "SELECT t.{data} FROM NOTIFICATION t WHERE {}",
                        notification_filter(data)
                    ),
                    &[old_uid],
                )
                .map_err(|e| db_err(&label, "NOTIFICATION", &e))?;
            let n = rows
                .iter()
                .filter(|r| notification_text(r.get(0), old_uid, new_uid).is_some())
                .count() as i64;
            if n > 0 {
                ins.execute(rusqlite::params![plan_id, data, old_uid, new_uid, n])?;
            }
        }
    }
    // The resolver, for apply to replay the rewrites exactly.
    {
        let mut ins = stx.prepare(
            "INSERT INTO pg_plan_principals (plan_id, key, principal_json) VALUES (?1, ?2, ?3)",
        )?;
        for (k, p) in &resolver {
            ins.execute(rusqlite::params![plan_id, k, serde_json::to_string(p)?])?;
        }
    }
    crate::plan::insert_mappings(&stx, plan_id, &mapping)?;
    let databases = crate::plan::plan_databases(&stx, plan_id, cfg, &mapper)?;
    let provision = crate::plan::plan_provision(&stx, plan_id, cfg, current, old)?;
    problems.sort_by(|a, b| a.path.cmp(&b.path));
    {
        let mut ins = stx.prepare(
            "INSERT INTO plan_problems (plan_id, path, kind, detail) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for p in &problems {
            ins.execute(rusqlite::params![plan_id, p.path, p.kind, p.detail])?;
        }
    }
    let queued = queued_work(&mut tx, &schema)?;
    if queued > 0 {
        warnings.push(format!(
            "{queued} queued work item(s) in the database (scheduling, iMIP, push); let CalendarServer finish them before migrating — they may name old principals"
        ));
    }
    tx.commit().map_err(|e| {
        Error::runtime(format!(
            "{label}: {}",
            crate::store::pg::connect::describe(&e)
        ))
    })?;

    let mut directory_counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in &current.records {
        *directory_counts
            .entry(r.kind.as_str().to_string())
            .or_default() += 1;
    }
    let summary = PlanSummary {
        plan_id,
        created_at,
        store_kind: "calendarserver-pg".into(),
        store_path: label,
        directory_origin: current.origin.clone(),
        directory_counts,
        old_records: old.records.len(),
        warnings,
        resources_scanned: scanned,
        resources_changed: acc.changed,
        properties_changed: acc.props,
        by_outcome: mapping
            .counts_by_outcome()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        by_rule: mapping
            .counts_by_rule()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        ambiguous: mapping
            .with_outcome(mapping::Verdict::Ambiguous)
            .into_iter()
            .map(String::from)
            .collect(),
        unmatched: mapping
            .with_outcome(mapping::Verdict::Unmatched)
            .into_iter()
            .map(String::from)
            .collect(),
        homes: homes_count,
        problems,
        databases,
        provision,
        // Cards of the database's address books are counted with the objects.
        addressbooks: None,
    };
    drop(acc);
    stx.execute(
        "UPDATE plans SET summary_json = ?1 WHERE id = ?2",
        rusqlite::params![serde_json::to_string(&summary)?, plan_id],
    )?;
    stx.commit()?;
    tracing::info!("plan {plan_id} stored at {:.2?}", started.elapsed());
    Ok(summary)
}

fn db_err(label: &str, table: &str, e: &postgres::Error) -> Error {
    Error::runtime(format!(
        "{label} ({table}): {}",
        crate::store::pg::connect::describe(e)
    ))
}

/// Queued work items (JOB, or the 5.x work tables) that may still name old principals.
fn queued_work(tx: &mut postgres::Transaction<'_>, schema: &Schema) -> Result<i64> {
    let tables: &[&str] = if schema.version >= 66 {
        &["JOB"]
    } else if schema.version >= 28 {
        &[
            "IMIP_INVITATION_WORK",
            "IMIP_REPLY_WORK",
            "PUSH_NOTIFICATION_WORK",
        ]
    } else {
        &[]
    };
    let mut n = 0;
    for t in tables {
        n += tx
            .query_one(&format!("SELECT COUNT(*) FROM {t}"), &[])
            .map(|r| r.get::<_, i64>(0))
            .map_err(crate::store::pg::pg_err(t))?;
    }
    Ok(n)
}
