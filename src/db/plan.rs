//! Planning on the database: one read-only snapshot, home by home through server-side cursors;
//! every calendar object rewritten in memory with the pure iCalendar layer and the same mapping as
//! the file store; only hashes and edits stored (the state database under `[state] path`). Nothing
//! in the database changes.
//!
//! What a plan holds, beside the common tables the reports read (plan_mappings, plan_changes,
//! plan_homes, plan_problems): `pg_plan_objects` (per changed object: md5 of the old and new text,
//! old and new MD5 and ORGANIZER columns), `pg_plan_principals` (the resolver, so apply replays the
//! exact rewrite), `pg_plan_homes` (rename or merge), `pg_plan_values` (uid and address columns).

use crate::address::CalAddress;
use crate::address::Principal;
use crate::config::Config;
use crate::db::rewrite::{
    href_of, member_address, new_uid, notification_filter, notification_text, rewrite_card,
    rewrite_object, uid_address, Planned, APN_COUNT,
};
use crate::directory::Directory;
use crate::error::{Error, Result};
use crate::ical::{self, Resolve, RewriteOptions};
use crate::mapping::{self, Mapper, Mapping, Observed};
use crate::plan::{Finding, LazyResolver, PlanSummary};
use crate::progress::{Bar, Progress};
use crate::state::pg_rows;
use crate::state::{now_rfc3339, State};
use crate::store::pg::read::{self, CardRow, HomeRow, ObjectRow};
use crate::store::pg::schema::{md5_hex, Schema, ValueKind};
use crate::store::pg::Db;
use crate::vcard;
use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// How many changed objects keep their whole old and new lines (report diffs).
const EXAMPLE_LINES: u64 = 50;

/// The plan's rows of changed objects, and their count.
struct Acc<'t> {
    plan_id: i64,
    ins_obj: pg_rows::ObjectInserter<'t>,
    ins_chg: rusqlite::Statement<'t>,
    changed: u64,
    props: u64,
}

/// What a planned object was: its kind, id, label, text md5, MD5 and ORGANIZER columns.
struct Was<'a> {
    kind: &'a str,
    id: i64,
    label: &'a str,
    text_md5: &'a str,
    md5: &'a str,
    organizer: Option<&'a str>,
}

impl<'t> Acc<'t> {
    fn new(stx: &'t rusqlite::Connection, plan_id: i64) -> Result<Acc<'t>> {
        Ok(Acc {
            plan_id,
            ins_obj: pg_rows::ObjectInserter::new(stx, plan_id)?,
            ins_chg: stx.prepare(
                "INSERT INTO plan_changes (plan_id, rel_path, line, property, old_value, new_value, old_line, new_line) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?,
            changed: 0,
            props: 0,
        })
    }

    /// Stores one object's planned rewrite: its row and its changes (whole lines when kept).
    fn insert(&mut self, was: Was<'_>, p: &Planned, keep_lines: bool) -> Result<()> {
        let label = was.label;
        self.changed += 1;
        self.props += p.changes.len() as u64;
        self.ins_obj.insert(&pg_rows::NewObject {
            kind: was.kind,
            id: was.id,
            label,
            old_text_md5: was.text_md5,
            new_text_md5: &p.new_text_md5,
            old_md5: was.md5,
            new_md5: &p.new_md5,
            old_organizer: was.organizer,
            new_organizer: p.new_organizer.as_deref(),
            changes: p.changes.len() as i64,
        })?;
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

/// What planning needs throughout: the database's schema and label, the address form, and the
/// walk's resolver (the directory alone, before the store's evidence is in).
struct Planner<'a> {
    schema: &'a Schema,
    label: &'a str,
    opts: &'a RewriteOptions,
    lazy: &'a LazyResolver<'a, 'a>,
}

/// What the reads of the database found, before the mapping is built.
#[derive(Default)]
struct Survey {
    observed: BTreeMap<String, (CalAddress, Observed)>,
    problems: Vec<Finding>,
    scanned: u64,
    /// Objects naming a GUID the walk left unresolved: planned again once the mapping is known.
    recheck: Vec<(i64, BTreeSet<String>)>,
    homes: Vec<HomeRow>,
    /// Uid and address columns: each distinct value and how many rows hold it.
    value_counts: Vec<ValueCount>,
    /// Group cards naming principals.
    card_ids: Vec<i64>,
}

/// A distinct value of a uid or address column.
struct ValueCount {
    /// Its column: an index in `schema.values`.
    column: usize,
    value: String,
    /// Rows holding it.
    rows: i64,
}

/// What the parallel part of one object's planning found: its addresses, its planned rewrite
/// (`None` when the text does not change), the md5 of its text.
struct Rewritten {
    info: ical::CalendarInfo,
    planned: Option<Planned>,
    text_md5: String,
}

/// The result of the parallel part of one object's planning.
type Scanned = std::result::Result<Rewritten, ical::IcalError>;

/// Builds a plan of the database (nothing in it changes).
pub fn plan(
    progress: &dyn Progress,
    cfg: &Config,
    current: &Directory,
    old: &Directory,
    provision: Option<&crate::plan::ProvisionFindings>,
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
    let planner = Planner {
        schema: &schema,
        label: &label,
        opts: &opts,
        lazy: &lazy,
    };

    let mut state = State::open(&cfg.state.path)?;
    let created_at = now_rfc3339();
    let stx = state.conn.transaction()?;
    let plan_id = begin_plan(&stx, cfg, current, &planner, &created_at)?;
    let mut warnings = current.warnings.clone();
    warnings.extend(old.warnings.iter().cloned());
    let mut tx = db.snapshot().map_err(|e| label_err(&label, &e))?;

    let mut acc = Acc::new(&stx, plan_id)?;
    let mut survey = survey(progress, &mut tx, &planner, &mut acc, started)?;
    let mapping = Mapping::build(&mapper, &survey.observed);
    let homes = plan_with_mapping(&mut tx, &stx, &planner, &survey, &mapping, &mut acc)?;
    crate::plan::insert_mappings(&stx, plan_id, &mapping)?;
    let databases = crate::plan::plan_databases(&stx, plan_id, cfg, &mapper)?;
    let provision = crate::plan::plan_provision(&stx, plan_id, provision)?;
    let mut problems = std::mem::take(&mut survey.problems);
    problems.sort_by(|a, b| a.path.cmp(&b.path));
    crate::plan::store_problems(&stx, plan_id, &problems)?;
    let queued = queued_work(&mut tx, &schema)?;
    if queued > 0 {
        warnings.push(format!(
            "{queued} queued work item(s) in the database (scheduling, iMIP, push); let CalendarServer finish them before migrating — they may name old principals"
        ));
    }
    tx.commit().map_err(|e| label_err(&label, &e))?;

    let counts = crate::plan::MappingCounts::of(&mapping);
    let summary = PlanSummary {
        plan_id,
        created_at,
        store_kind: "calendarserver-pg".into(),
        store_path: label,
        directory_origin: current.origin.clone(),
        directory_counts: crate::plan::directory_counts(current),
        old_records: old.records.len(),
        warnings,
        resources_scanned: survey.scanned,
        resources_changed: acc.changed,
        properties_changed: acc.props,
        homes: homes.count,
        problems,
        databases,
        provision,
        // Cards of the database's address books are counted with the objects.
        addressbooks: None,
        by_outcome: counts.by_outcome,
        by_rule: counts.by_rule,
        ambiguous: counts.ambiguous,
        unmatched: counts.unmatched,
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

/// `{label}: why`, for the snapshot's begin and commit.
fn label_err(label: &str, e: &postgres::Error) -> Error {
    Error::runtime(format!(
        "{label}: {}",
        crate::store::pg::connect::describe(e)
    ))
}

/// The reads of the database: its homes, every calendar object (planned with the walk's
/// resolver as it is read), the group cards naming principals, the uid and address columns.
fn survey(
    progress: &dyn Progress,
    tx: &mut postgres::Transaction<'_>,
    p: &Planner<'_>,
    acc: &mut Acc<'_>,
    started: std::time::Instant,
) -> Result<Survey> {
    let mut survey = Survey::default();
    for table in read::HOME_TABLES {
        survey.homes.extend(read::homes(tx, p.schema, table)?);
    }
    plan_calendar_objects(progress, tx, p, acc, &mut survey)?;
    tracing::info!(
        "objects: {} read, {} to change, at {:.2?}",
        survey.scanned,
        acc.changed,
        started.elapsed()
    );
    survey_cards(tx, p.schema, &mut survey)?;
    survey_values(tx, p, &mut survey)?;
    Ok(survey)
}

/// What is planned once the mapping is known: the objects the walk could not resolve, the
/// cards, the uid and address columns, the homes and the values that follow them, and the
/// resolver itself (for apply to replay the rewrites exactly).
fn plan_with_mapping(
    tx: &mut postgres::Transaction<'_>,
    stx: &rusqlite::Connection,
    p: &Planner<'_>,
    survey: &Survey,
    mapping: &Mapping,
    acc: &mut Acc<'_>,
) -> Result<HomesPlanned> {
    let plan_id = acc.plan_id;
    let resolver = mapping.resolver();
    replan_late(tx, stx, p, &resolver, &survey.recheck, acc)?;
    plan_cards(tx, p.schema, &resolver, &survey.card_ids, acc)?;
    plan_values(stx, plan_id, p, &resolver, &survey.value_counts)?;
    let homes = plan_homes(stx, plan_id, &survey.homes, mapping)?;
    plan_home_values(tx, stx, plan_id, p, &homes)?;
    pg_rows::insert_principals(stx, plan_id, &resolver)?;
    Ok(homes)
}

/// A problem planning found (one row of `plan_problems`).
fn finding(path: String, kind: &str, detail: String) -> Finding {
    Finding {
        path,
        kind: kind.to_string(),
        detail,
        fixed: None,
    }
}

/// The plan's rows in `plans` (building) and `pg_plans`; returns its id.
fn begin_plan(
    stx: &rusqlite::Connection,
    cfg: &Config,
    current: &Directory,
    p: &Planner<'_>,
    created_at: &str,
) -> Result<i64> {
    stx.execute(
        "INSERT INTO plans (created_at, store_kind, store_path, address_form, directory, status) VALUES (?1, 'calendarserver-pg', ?2, ?3, ?4, 'building')",
        rusqlite::params![
            created_at,
            p.label,
            serde_json::to_value(cfg.rewrite.address_form)?.as_str().unwrap_or_default(),
            current.origin,
        ],
    )?;
    let plan_id = stx.last_insert_rowid();
    pg_rows::insert_plan(
        stx,
        plan_id,
        &pg_rows::PlanTarget {
            database: p.label.to_string(),
            schema_version: p.schema.version,
        },
    )?;
    Ok(plan_id)
}

/// Every calendar object, planned in three stages, each on its own thread: the reader fetches
/// the next batches while the scanner rewrites one (on every core) and this thread stores the
/// edits of the last in the state database (SQLite inserts are serial; they no longer hold the
/// rewrite up).
fn plan_calendar_objects(
    progress: &dyn Progress,
    tx: &mut postgres::Transaction<'_>,
    p: &Planner<'_>,
    acc: &mut Acc<'_>,
    survey: &mut Survey,
) -> Result<()> {
    let bar = progress.start("planning", None);
    let cal_homes: Vec<i64> = survey
        .homes
        .iter()
        .filter(|h| h.table == "CALENDAR_HOME")
        .map(|h| h.id)
        .collect();
    std::thread::scope(|scope| -> Result<()> {
        let (send, recv) = crossbeam_channel::bounded::<Vec<ObjectRow>>(4);
        let (send_done, recv_done) = crossbeam_channel::bounded::<Vec<(ObjectRow, Scanned)>>(2);
        let scanner = scope.spawn(move || {
            for batch in recv.iter() {
                if send_done.send(scan_batch(p, batch)).is_err() {
                    break;
                }
            }
        });
        let reader = scope.spawn(move || read_calendar_objects(tx, cal_homes, send));
        let result = recv_done
            .iter()
            .try_for_each(|results| store_scanned(p, results, acc, survey, &*bar));
        drop(recv_done);
        if scanner.join().is_err() {
            return Err(Error::runtime("the rewrite of a batch failed"));
        }
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(Error::runtime("the database reader failed")));
        result.and(read)
    })?;
    bar.finish();
    Ok(())
}

/// Stage 1, the reader: the objects of every calendar home, then those of no home, in batches.
fn read_calendar_objects(
    tx: &mut postgres::Transaction<'_>,
    cal_homes: Vec<i64>,
    send: crossbeam_channel::Sender<Vec<ObjectRow>>,
) -> Result<()> {
    let mut forward = |b: Vec<ObjectRow>| -> Result<()> {
        send.send(b).map_err(|_| Error::runtime("planning stopped"))
    };
    for id in cal_homes {
        read::home_objects(tx, id, &mut forward)?;
    }
    read::orphan_objects(tx, &mut forward)
}

/// Stage 2, the scanner: the rewrite of one fetched batch, on every core (a pure function of
/// the rows).
fn scan_batch(p: &Planner<'_>, batch: Vec<ObjectRow>) -> Vec<(ObjectRow, Scanned)> {
    batch
        .into_par_iter()
        .map(|row| {
            let r =
                ical::scan_and_rewrite(row.text.as_bytes(), p.lazy, p.opts).map(|(info, rw)| {
                    let planned = rewrite_object(p.schema, &row, &info, rw, p.lazy, p.opts);
                    Rewritten {
                        info,
                        planned,
                        text_md5: row.text_md5.clone(),
                    }
                });
            (row, r)
        })
        .collect()
}

/// Stage 3, the writer: one scanned batch into the survey (addresses seen, problems, objects
/// to plan again) and the plan rows.
fn store_scanned(
    p: &Planner<'_>,
    results: Vec<(ObjectRow, Scanned)>,
    acc: &mut Acc<'_>,
    survey: &mut Survey,
    bar: &dyn Bar,
) -> Result<()> {
    for (row, r) in results {
        bar.inc(1);
        let label = row.label();
        let Rewritten {
            info,
            planned,
            text_md5: old_text_md5,
        } = match r {
            Err(e) => {
                survey
                    .problems
                    .push(finding(label, "malformed", e.to_string()));
                continue;
            }
            Ok(ok) => ok,
        };
        survey.scanned += 1;
        if row.owner.is_none() {
            survey.problems.push(finding(
                label.clone(),
                "orphan-object",
                format!(
                    "calendar {} is owned by no home; planned like the others",
                    row.calendar_id
                ),
            ));
        }
        let keys = crate::plan::observe(&mut survey.observed, &info);
        let open: BTreeSet<String> = keys
            .into_iter()
            .filter(|k| survey.observed[k].0.guid().is_some() && p.lazy.unresolved(k))
            .collect();
        if !open.is_empty() {
            survey.recheck.push((row.resource_id, open));
        }
        if let Some(planned) = planned {
            let keep = acc.changed < EXAMPLE_LINES;
            let was = Was {
                kind: "calendar",
                id: row.resource_id,
                label: &label,
                text_md5: &old_text_md5,
                md5: &row.md5,
                organizer: row.organizer.as_deref(),
            };
            acc.insert(was, &planned, keep)?;
        }
    }
    Ok(())
}

/// Address-book group members that name principals (not cards of the same book).
fn survey_cards(
    tx: &mut postgres::Transaction<'_>,
    schema: &Schema,
    survey: &mut Survey,
) -> Result<()> {
    let books: Vec<i64> = survey
        .homes
        .iter()
        .filter(|h| h.table == "ADDRESSBOOK_HOME")
        .map(|h| h.id)
        .collect();
    for id in books {
        let mut cards: Vec<CardRow> = Vec::new();
        read::home_cards(tx, schema, id, |b| {
            cards.extend(b);
            Ok(())
        })?;
        let local: HashSet<String> = cards
            .iter()
            .filter_map(|c| vcard::scan(c.text.as_bytes()).ok()?.uid)
            .collect();
        for c in &cards {
            match vcard::scan(c.text.as_bytes()) {
                Err(e) => survey
                    .problems
                    .push(finding(c.label(), "malformed", e.to_string())),
                Ok(info) => {
                    let mut foreign = false;
                    for m in &info.members {
                        if let Some(addr) = member_address(&m.value, &local) {
                            let e = survey
                                .observed
                                .entry(addr.key())
                                .or_insert_with(|| (addr, Observed::default()));
                            e.1.resources += 1;
                            foreign = true;
                        }
                    }
                    if foreign {
                        survey.card_ids.push(c.resource_id);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Uid and address columns: distinct values and how many rows hold each; and the homes' uids.
fn survey_values(
    tx: &mut postgres::Transaction<'_>,
    p: &Planner<'_>,
    survey: &mut Survey,
) -> Result<()> {
    for (i, vc) in p.schema.values.iter().enumerate() {
        let rows = crate::store::pg::read::value_counts(tx, vc.table, vc.column)
            .map_err(|e| db_err(p.label, vc.table, &e))?;
        for crate::store::pg::read::ValueRows { value: v, rows: n } in rows {
            let addr = match vc.kind {
                ValueKind::Uid => uid_address(&v),
                ValueKind::Address => mapping::parse_found(&v),
            };
            survey
                .observed
                .entry(addr.key())
                .or_insert_with(|| (addr, Observed::default()));
            survey.value_counts.push(ValueCount {
                column: i,
                value: v,
                rows: n,
            });
        }
    }
    for h in &survey.homes {
        let addr = uid_address(&h.owner_uid);
        survey
            .observed
            .entry(addr.key())
            .or_insert_with(|| (addr, Observed::default()));
    }
    Ok(())
}

/// Rule 6 (store evidence) may have resolved GUIDs the walk could not: plan those again.
fn replan_late(
    tx: &mut postgres::Transaction<'_>,
    stx: &rusqlite::Connection,
    p: &Planner<'_>,
    resolver: &HashMap<String, Principal>,
    recheck: &[(i64, BTreeSet<String>)],
    acc: &mut Acc<'_>,
) -> Result<()> {
    let (schema, opts, plan_id) = (p.schema, p.opts, acc.plan_id);
    let late: HashSet<&String> = resolver.keys().filter(|k| p.lazy.unresolved(k)).collect();
    let again: Vec<i64> = recheck
        .iter()
        .filter(|(_, open)| open.iter().any(|k| late.contains(k)))
        .map(|(id, _)| *id)
        .collect();
    for chunk in again.chunks(read::BATCH as usize) {
        for row in read::objects_by_id(tx, chunk, false)? {
            let (info, rw) = ical::scan_and_rewrite(row.text.as_bytes(), resolver, opts)
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
            pg_rows::delete_calendar_object(stx, plan_id, row.resource_id)?;
            if let Some(planned) = rewrite_object(schema, &row, &info, rw, resolver, opts) {
                let was = Was {
                    kind: "calendar",
                    id: row.resource_id,
                    label: &label,
                    text_md5: &row.text_md5,
                    md5: &row.md5,
                    organizer: row.organizer.as_deref(),
                };
                acc.insert(was, &planned, false)?;
            }
        }
    }
    Ok(())
}

/// Cards, with the final mapping.
fn plan_cards(
    tx: &mut postgres::Transaction<'_>,
    schema: &Schema,
    resolver: &HashMap<String, Principal>,
    card_ids: &[i64],
    acc: &mut Acc<'_>,
) -> Result<()> {
    for chunk in card_ids.chunks(read::BATCH as usize) {
        let cards = read::cards_by_id(tx, schema, chunk, false)?;
        for c in cards {
            if let Some((new, changes)) = rewrite_card(tx, schema, &c, resolver)? {
                let m = md5_hex(&new);
                let planned = Planned {
                    new_md5: m.clone(),
                    new_text_md5: m,
                    new_text: new,
                    changes,
                    new_organizer: None,
                };
                let (label, text_md5) = (c.label(), md5_hex(c.text.as_bytes()));
                let was = Was {
                    kind: "vcard",
                    id: c.resource_id,
                    label: &label,
                    text_md5: &text_md5,
                    md5: &c.md5,
                    organizer: None,
                };
                acc.insert(was, &planned, false)?;
            }
        }
    }
    Ok(())
}

/// Uid and address columns: the new value of each value the mapping changes.
fn plan_values(
    stx: &rusqlite::Connection,
    plan_id: i64,
    p: &Planner<'_>,
    resolver: &HashMap<String, Principal>,
    value_counts: &[ValueCount],
) -> Result<()> {
    for c in value_counts {
        let (vc, v, n) = (&p.schema.values[c.column], &c.value, &c.rows);
        let new = match vc.kind {
            ValueKind::Uid => new_uid(resolver, v),
            ValueKind::Address => {
                let addr = mapping::parse_found(v);
                resolver
                    .resolve(&addr)
                    .map(|pr| pr.canonical_address(p.opts.form, &addr))
                    .filter(|n| n != v)
            }
        };
        if let Some(new) = new {
            let value = pg_rows::PlannedValue {
                table: vc.table.to_string(),
                column: vc.column.to_string(),
                old_value: v.clone(),
                new_value: new,
                rows: *n,
            };
            pg_rows::insert_value(stx, plan_id, &value)?;
        }
    }
    Ok(())
}

/// The homes' fates, counted by outcome, and the moved ones (old uid, new uid): every moved
/// home, and the calendar homes (whose hrefs move with them).
struct HomesPlanned {
    count: BTreeMap<String, usize>,
    hrefs: Vec<(String, String)>,
    moved: BTreeSet<(String, String)>,
}

/// Homes: rename to the new uid, or merge into the home the server already made for it.
fn plan_homes(
    stx: &rusqlite::Connection,
    plan_id: i64,
    homes: &[HomeRow],
    mapping: &Mapping,
) -> Result<HomesPlanned> {
    let mut out = HomesPlanned {
        count: BTreeMap::new(),
        hrefs: Vec::new(),
        moved: BTreeSet::new(),
    };
    let mut ins = stx.prepare(
        "INSERT INTO plan_homes (plan_id, rel_path, layout, old_id, outcome, new_guid) VALUES (?1, ?2, 'sql', ?3, ?4, ?5)",
    )?;
    for h in homes {
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
        *out.count.entry(outcome.to_string()).or_default() += 1;
        ins.execute(rusqlite::params![
            plan_id,
            format!("{}/{}", h.table.to_ascii_lowercase(), h.owner_uid),
            h.owner_uid,
            outcome,
            new
        ])?;
        if outcome == "moved" {
            let new = new.unwrap_or_default();
            out.moved.insert((h.owner_uid.clone(), new.clone()));
            if h.table == "CALENDAR_HOME" {
                out.hrefs.push((h.owner_uid.clone(), new.clone()));
            }
            let target = homes
                .iter()
                .find(|t| t.table == h.table && t.owner_uid == new && t.status == h.status);
            let home = pg_rows::PlannedHome {
                table: h.table.to_string(),
                resource_id: h.id,
                old_uid: h.owner_uid.clone(),
                new_uid: new,
                action: if target.is_some() { "merge" } else { "rename" }.to_string(),
                target_id: target.map(|t| t.id),
            };
            pg_rows::insert_home(stx, plan_id, &home)?;
        }
    }
    Ok(out)
}

/// The values that follow a moved home: properties holding hrefs into it (the inbox's
/// calendar-free-busy-set, ...), push subscriptions keyed by its push key
/// (`/CalDAV/<host>/<uid>/...`, `/CardDAV/<host>/<uid>/...`), and sharing notifications naming
/// its owner (invites and replies: `urn:uuid:`, `urn:x-uid:` and `/__uids__/` hrefs in the XML
/// of 3.x-5.x, the owner and sharee uids in the JSON of 9.x), rewritten row by row at apply,
/// MD5 with them.
fn plan_home_values(
    tx: &mut postgres::Transaction<'_>,
    stx: &rusqlite::Connection,
    plan_id: i64,
    p: &Planner<'_>,
    homes: &HomesPlanned,
) -> Result<()> {
    let insert = |table: &str, column: &str, old: &str, new: &str, rows: i64| {
        if rows == 0 {
            return Ok(());
        }
        let value = pg_rows::PlannedValue {
            table: table.to_string(),
            column: column.to_string(),
            old_value: old.to_string(),
            new_value: new.to_string(),
            rows,
        };
        pg_rows::insert_value(stx, plan_id, &value)
    };
    for (old_uid, new_uid) in &homes.hrefs {
        let n: i64 = tx
            .query_one(
                "SELECT COUNT(*) FROM RESOURCE_PROPERTY WHERE strpos(VALUE, $1) > 0",
                &[&href_of(old_uid)],
            )
            .map_err(|e| db_err(p.label, "RESOURCE_PROPERTY", &e))?
            .get(0);
        insert("RESOURCE_PROPERTY", "VALUE", old_uid, new_uid, n)?;
    }
    for (old_uid, new_uid) in &homes.moved {
        let n: i64 = tx
            .query_one(APN_COUNT, &[old_uid])
            .map_err(|e| db_err(p.label, "APN_SUBSCRIPTIONS", &e))?
            .get(0);
        insert("APN_SUBSCRIPTIONS", "RESOURCE_KEY", old_uid, new_uid, n)?;
    }
    let data = p.schema.notification_data;
    for (old_uid, new_uid) in &homes.moved {
        let rows = tx
            .query(
                &format!(
                    "SELECT t.{data} FROM NOTIFICATION t WHERE {}",
                    notification_filter(data)
                ),
                &[old_uid],
            )
            .map_err(|e| db_err(p.label, "NOTIFICATION", &e))?;
        let n = rows
            .iter()
            .filter(|r| notification_text(r.get(0), old_uid, new_uid).is_some())
            .count() as i64;
        insert("NOTIFICATION", data, old_uid, new_uid, n)?;
    }
    Ok(())
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
