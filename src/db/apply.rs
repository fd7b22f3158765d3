//! `apply` on the database: the plan's rewrites in batches, each batch one transaction.
//!
//! For a batch of objects: the rows are read `FOR UPDATE`; a row still as planned (md5 of the text
//! and the MD5 column) is rewritten again with the plan's own resolver and must give exactly the
//! planned text; its old columns are saved in the state database (`pg_journal`, durable) before the
//! database is written; the update itself checks the planned MD5 once more, renews MODIFIED and the
//! object's revision (so sync clients fetch it again) and the collection's MODIFIED where the server
//! keeps one. A row changed since the plan is skipped and reported, never overwritten. Then the
//! uid and address columns, then the homes (renamed, or merged into the home the server made for
//! the new uid), then the delegate database of 3.x–5.x (`proxies.sqlite`).
//!
//! `kill -9` at any instant: a batch's transaction either committed (its rows hold the new text:
//! the pending journal steps are marked done) or did not (they hold the old text: done again).

use crate::address::Principal;
use crate::config::Config;
use crate::db::rewrite::{rewrite_card, rewrite_object};
use crate::error::{Error, Result};
use crate::ical::{self, RewriteOptions};
use crate::journal::RunSummary;
use crate::progress::Progress;
use crate::state::pg_rows::{
    self, Mark, PlannedObject, PlannedValue, RunOf, RunRow, WrittenObject,
};
use crate::state::{RunEvent, RunState, RunStatus, State, StepState};
use crate::store::pg::edits::{self, RowEdit};
use crate::store::pg::read::{self, ObjectRow};
use crate::store::pg::schema::{md5_hex, Schema};
use crate::store::pg::Db;
use serde_json::{json, Value};
use std::collections::HashMap;

/// Objects per transaction.
const BATCH: usize = 2000;

fn err(what: &str) -> impl Fn(postgres::Error) -> Error + '_ {
    crate::store::pg::pg_err(what)
}

/// The run to carry on with: the unfinished one of the same kind and target, or a new one; `None`
/// (with `already_done`) when that run finished.
pub(super) fn start_or_resume(
    state: &State,
    s: &mut RunSummary,
    label: &str,
) -> Result<Option<i64>> {
    let of = match s.undoes_run {
        Some(r) => RunOf::Undoes(r),
        None => RunOf::Plan(s.plan_id.unwrap_or_default()),
    };
    let last = pg_rows::latest_run(&state.conn, s.kind, of);
    // A plan whose run was rolled back is applied again by a new run.
    let rolled_back = |id: i64| -> Result<bool> {
        Ok(s.undoes_run.is_none() && state.run_state(id)? == RunState::RolledBack)
    };
    let id = match last {
        Some(r) if r.status == RunStatus::Done && !rolled_back(r.id)? => {
            s.run_id = r.id;
            s.already_done = true;
            return Ok(None);
        }
        Some(r) if r.status == RunStatus::Done => {
            pg_rows::insert_run(&state.conn, s.kind, of, label)?
        }
        Some(RunRow { id, .. }) => {
            s.resumed = true;
            s.notes.push(match pg_rows::stopped_by(&state.conn, id) {
                Some(sig) => format!("run {id} was stopped by {sig}; resuming it"),
                None => format!("run {id} did not finish (its process ended without finishing: a crash or kill); resuming it"),
            });
            pg_rows::resume_run(&state.conn, id)?;
            id
        }
        None => pg_rows::insert_run(&state.conn, s.kind, of, label)?,
    };
    s.run_id = id;
    Ok(Some(id))
}

/// After SIGINT/SIGTERM, between two transactions: the run is recorded as interrupted
/// (resumable) with what its journal holds so far; `true` when the caller must stop.
pub(super) fn stop_if_signalled(state: &State, s: &mut RunSummary) -> Result<bool> {
    let Some(sig) = crate::interrupt::pending() else {
        return Ok(false);
    };
    let name = crate::interrupt::name(sig);
    pg_rows::interrupt_run(&state.conn, s.run_id, &name)?;
    s.interrupted = Some(name);
    if s.kind == "apply" {
        journal_totals(state, s)?;
    }
    Ok(true)
}

/// The counts of a run, from its journal (the whole run's, across resumed processes).
pub(super) fn journal_totals(state: &State, s: &mut RunSummary) -> Result<()> {
    let counts = pg_rows::apply_counts(&state.conn, s.run_id)?;
    s.written = counts.written;
    s.unchanged = counts.unchanged;
    s.homes_adopted = counts.homes_adopted;
    s.skipped = pg_rows::skipped_steps(&state.conn, s.run_id)?;
    Ok(())
}

/// The run's process finished.
pub(super) fn finish_run(state: &State, run_id: i64) -> Result<()> {
    pg_rows::finish_run(&state.conn, run_id)
}

/// The old columns of an object, as saved before it is written.
pub(super) struct SavedObject {
    pub text: String,
    pub md5: String,
    pub organizer: Option<String>,
}

/// zlib of: MD5 (32 bytes), the ORGANIZER column's length (4 bytes, big-endian; all ones for
/// NULL) and bytes, then the text.
pub(super) fn pack_saved(s: &SavedObject) -> Result<Vec<u8>> {
    let mut raw = Vec::with_capacity(s.text.len() + 128);
    let mut md5 = [b' '; 32];
    let m = s.md5.as_bytes();
    md5[..m.len().min(32)].copy_from_slice(&m[..m.len().min(32)]);
    raw.extend_from_slice(&md5);
    match &s.organizer {
        None => raw.extend_from_slice(&u32::MAX.to_be_bytes()),
        Some(o) => {
            raw.extend_from_slice(&(o.len() as u32).to_be_bytes());
            raw.extend_from_slice(o.as_bytes());
        }
    }
    raw.extend_from_slice(s.text.as_bytes());
    Ok(zlib(&raw))
}

/// zlib of `bytes`, fast (as the plans store theirs).
fn zlib(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::ZlibEncoder::new(
        Vec::with_capacity(bytes.len() / 2),
        flate2::Compression::fast(),
    );
    let _ = z.write_all(bytes);
    z.finish().unwrap_or_default()
}

pub(super) fn unpack_saved(blob: &[u8]) -> Result<SavedObject> {
    use std::io::Read;
    let damaged =
        |why: &str| Error::runtime(format!("state database: a saved row is damaged: {why}"));
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(blob)
        .read_to_end(&mut raw)
        .map_err(|e| damaged(&e.to_string()))?;
    if raw.len() < 36 {
        return Err(damaged("too short"));
    }
    let md5 = String::from_utf8_lossy(&raw[..32]).trim().to_string();
    let n = u32::from_be_bytes([raw[32], raw[33], raw[34], raw[35]]);
    let (organizer, rest) = if n == u32::MAX {
        (None, &raw[36..])
    } else {
        let end = 36 + n as usize;
        if raw.len() < end {
            return Err(damaged("truncated"));
        }
        (
            Some(String::from_utf8(raw[36..end].to_vec()).map_err(|_| damaged("not UTF-8"))?),
            &raw[end..],
        )
    };
    Ok(SavedObject {
        text: String::from_utf8(rest.to_vec()).map_err(|_| damaged("not UTF-8"))?,
        md5,
        organizer,
    })
}

/// An object write: the row's new columns and the planned values it must still hold.
#[derive(Clone)]
pub(super) struct ObjectWrite {
    pub seq: i64,
    pub id: i64,
    pub text: String,
    pub md5: String,
    pub organizer: Option<String>,
    pub expect_md5: String,
    pub expect_text_md5: String,
}

/// Writes calendar objects (or cards) in one statement, renews their revisions and their
/// collections' MODIFIED; returns the ids written.
pub(super) fn write_objects(
    tx: &mut postgres::Transaction<'_>,
    schema: &Schema,
    kind: &str,
    writes: &[ObjectWrite],
) -> Result<Vec<i64>> {
    if writes.is_empty() {
        return Ok(Vec::new());
    }
    if kind == "calendar" {
        write_calendar_objects(tx, schema, writes)
    } else {
        write_cards(tx, schema, writes)
    }
}

/// `, MODIFIED = now` where the schema's revision rows keep one.
fn revision_modified(schema: &Schema) -> String {
    if schema.revisions_modified {
        format!(", MODIFIED = {NOW}")
    } else {
        String::new()
    }
}

/// The server's clock, as CalendarServer writes MODIFIED.
const NOW: &str = "timezone('UTC', CURRENT_TIMESTAMP)";

/// Calendar objects: one statement for the batch, then their revisions and collections.
fn write_calendar_objects(
    tx: &mut postgres::Transaction<'_>,
    schema: &Schema,
    writes: &[ObjectWrite],
) -> Result<Vec<i64>> {
    let ids: Vec<i64> = writes.iter().map(|w| w.id).collect();
    let texts: Vec<&str> = writes.iter().map(|w| w.text.as_str()).collect();
    let md5s: Vec<&str> = writes.iter().map(|w| w.md5.as_str()).collect();
    let orgs: Vec<Option<&str>> = writes.iter().map(|w| w.organizer.as_deref()).collect();
    let exp_md5: Vec<&str> = writes.iter().map(|w| w.expect_md5.as_str()).collect();
    let exp_text: Vec<&str> = writes.iter().map(|w| w.expect_text_md5.as_str()).collect();
    let now = NOW;
    let rows = tx
        .query(
            &format!(
                "UPDATE CALENDAR_OBJECT o SET ICALENDAR_TEXT = v.t, MD5 = v.m, ORGANIZER = v.g, MODIFIED = {now}
                 FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) AS v(id, t, m, g, om, ot)
                 WHERE o.RESOURCE_ID = v.id AND o.MD5 = v.om AND md5(o.ICALENDAR_TEXT) = v.ot
                 RETURNING o.RESOURCE_ID::bigint, o.CALENDAR_RESOURCE_ID::bigint, o.RESOURCE_NAME"
            ),
            &[&ids, &texts, &md5s, &orgs, &exp_md5, &exp_text],
        )
        .map_err(err("CALENDAR_OBJECT"))?;
    let done: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    let cals: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
    let names: Vec<String> = rows.iter().map(|r| r.get(2)).collect();
    renew_calendar_revisions(tx, schema, done.len(), &cals, &names)?;
    if schema.version >= 28 {
        let mut distinct = cals.clone();
        distinct.sort_unstable();
        distinct.dedup();
        tx.execute(
            &format!(
                "UPDATE {} SET MODIFIED = {now} WHERE RESOURCE_ID = ANY($1::bigint[])",
                schema.calendar_meta_table
            ),
            &[&distinct],
        )
        .map_err(err(schema.calendar_meta_table))?;
    }
    Ok(done)
}

/// The server's "update" revision of `written` objects (collection ids and names): renews each
/// object's row, or adds one where it is missing.
fn renew_calendar_revisions(
    tx: &mut postgres::Transaction<'_>,
    schema: &Schema,
    written: usize,
    cals: &[i64],
    names: &[String],
) -> Result<()> {
    let rev_modified = revision_modified(schema);
    let bumped = tx
        .query(
            &format!(
                "UPDATE CALENDAR_OBJECT_REVISIONS r SET REVISION = nextval('REVISION_SEQ'){rev_modified}
                 FROM unnest($1::bigint[], $2::text[]) AS v(c, n)
                 WHERE r.CALENDAR_RESOURCE_ID = v.c AND r.RESOURCE_NAME = v.n
                 RETURNING r.CALENDAR_RESOURCE_ID::bigint, r.RESOURCE_NAME"
            ),
            &[&cals, &names],
        )
        .map_err(err("CALENDAR_OBJECT_REVISIONS"))?;
    if bumped.len() < written {
        tx.execute(
            "INSERT INTO CALENDAR_OBJECT_REVISIONS (CALENDAR_HOME_RESOURCE_ID, CALENDAR_RESOURCE_ID, RESOURCE_NAME, REVISION, DELETED)
             SELECT b.CALENDAR_HOME_RESOURCE_ID, v.c, v.n, nextval('REVISION_SEQ'), false
             FROM unnest($1::bigint[], $2::text[]) AS v(c, n)
             JOIN CALENDAR_BIND b ON b.CALENDAR_RESOURCE_ID = v.c AND b.BIND_MODE = 0
             WHERE NOT EXISTS (SELECT 1 FROM CALENDAR_OBJECT_REVISIONS r WHERE r.CALENDAR_RESOURCE_ID = v.c AND r.RESOURCE_NAME = v.n)",
            &[&cals, &names],
        )
        .map_err(err("CALENDAR_OBJECT_REVISIONS"))?;
    }
    Ok(())
}

/// Address-book cards (few): one by one, each with its revision.
fn write_cards(
    tx: &mut postgres::Transaction<'_>,
    schema: &Schema,
    writes: &[ObjectWrite],
) -> Result<Vec<i64>> {
    let now = NOW;
    let rev_modified = revision_modified(schema);
    let (parent, rev_parent) = if schema.addressbook_bind {
        ("ADDRESSBOOK_RESOURCE_ID", "ADDRESSBOOK_RESOURCE_ID")
    } else {
        ("ADDRESSBOOK_HOME_RESOURCE_ID", "OWNER_HOME_RESOURCE_ID")
    };
    let mut done = Vec::new();
    for w in writes {
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE ADDRESSBOOK_OBJECT SET VCARD_TEXT = $2, MD5 = $3, MODIFIED = {now}
                     WHERE RESOURCE_ID = $1::bigint AND MD5 = $4 AND md5(VCARD_TEXT) = $5
                     RETURNING {parent}::bigint, RESOURCE_NAME"
                ),
                &[&w.id, &w.text, &w.md5, &w.expect_md5, &w.expect_text_md5],
            )
            .map_err(err("ADDRESSBOOK_OBJECT"))?;
        if let Some(r) = row {
            let p: i64 = r.get(0);
            let name: String = r.get(1);
            tx.execute(
                &format!(
                    "UPDATE ADDRESSBOOK_OBJECT_REVISIONS SET REVISION = nextval('REVISION_SEQ'){rev_modified}
                     WHERE {rev_parent} = $1::bigint AND RESOURCE_NAME = $2"
                ),
                &[&p, &name],
            )
            .map_err(err("ADDRESSBOOK_OBJECT_REVISIONS"))?;
            done.push(w.id);
        }
    }
    Ok(done)
}

/// Reads objects of a kind by id, locked, as (id → row with text, md5, organizer, tag, label).
pub(super) fn locked_objects(
    tx: &mut postgres::Transaction<'_>,
    schema: &Schema,
    kind: &str,
    ids: &[i64],
) -> Result<HashMap<i64, ObjectRow>> {
    if kind == "calendar" {
        return Ok(read::objects_by_id(tx, ids, true)?
            .into_iter()
            .map(|r| (r.resource_id, r))
            .collect());
    }
    Ok(read::cards_by_id(tx, schema, ids, true)?
        .into_iter()
        .map(|c| {
            (
                c.resource_id,
                ObjectRow {
                    resource_id: c.resource_id,
                    calendar_id: 0,
                    owner: Some(c.owner),
                    collection: "addressbook".into(),
                    name: c.name,
                    md5: c.md5,
                    organizer: None,
                    schedule_tag: None,
                    text_md5: md5_hex(c.text.as_bytes()),
                    text: c.text,
                },
            )
        })
        .collect())
}

/// Carries out a stored plan (the latest when `plan` is `None`) on the database.
pub fn apply(
    progress: &dyn Progress,
    cfg: &Config,
    plan: Option<i64>,
    force: bool,
    rehearsal: bool,
) -> Result<RunSummary> {
    let started = std::time::Instant::now();
    let mut state = State::open_existing(&cfg.state.path)?;
    let (plan_id, passed_over) = state.plan_to_apply(plan)?;
    let mut db = open_planned(&state, cfg, plan_id, rehearsal)?;
    let label = db.target.label.clone();
    crate::store::pg::connect::refuse_while_connected(&mut db.client, &label, force)?;
    let mut summary = RunSummary {
        kind: "apply",
        plan_id: Some(plan_id),
        ..Default::default()
    };
    if let Some(why) = passed_over {
        summary.notes.push(why);
    }
    let Some(run_id) = start_or_resume(&state, &mut summary, &label)? else {
        check_finished(&mut db, &state, &mut summary)?;
        return Ok(summary);
    };
    state.advance_run(run_id, RunEvent::StartApply)?;
    // SIGINT/SIGTERM: the batch in hand is finished, then the run stops, resumable.
    let _signals = crate::interrupt::install();
    // Journal steps are made durable once per database transaction ([`durable`]).
    state.conn.execute_batch("PRAGMA synchronous = NORMAL")?;

    // 1. Objects: calendar texts, then cards; a page of the plan at a time (bounded memory).
    let run = Run { run_id, plan_id };
    if !apply_objects(progress, &mut db, &mut state, run, &mut summary)? {
        return Ok(summary);
    }
    tracing::info!(
        "objects: {} written, {} already as planned, {} skipped, at {:.2?}",
        summary.written,
        summary.unchanged,
        summary.skipped.len(),
        started.elapsed()
    );

    // 2. Row steps a crash left pending, then the uid and address columns, then the homes.
    {
        let mut tx = db.client.transaction().map_err(err("begin"))?;
        let marks = edits::finish_pending(&mut tx, &state, run_id)?;
        tx.commit().map_err(err("commit"))?;
        edits::mark(&mut state, run_id, &marks)?;
    }
    if stop_if_signalled(&state, &mut summary)? {
        return Ok(summary);
    }
    apply_values(&mut db, &mut state, run, &mut summary)?;
    if stop_if_signalled(&state, &mut summary)? {
        return Ok(summary);
    }
    apply_homes(&mut db, &mut state, run, &mut summary)?;
    if stop_if_signalled(&state, &mut summary)? {
        return Ok(summary);
    }

    // 3. The delegate database of 3.x–5.x in the data root (the file journal: every step durable).
    state.conn.execute_batch("PRAGMA synchronous = FULL")?;
    let backups = crate::journal::Backups::open(&cfg.state.path)?;
    crate::journal::apply_databases(&mut state, run_id, plan_id, &backups, &mut summary)?;
    finish_run(&state, run_id)?;
    state.advance_run(run_id, RunEvent::FinishApply)?;
    tracing::info!("apply run {run_id} finished at {:.2?}", started.elapsed());
    Ok(summary)
}

/// The run being carried out and the plan it carries out.
#[derive(Clone, Copy)]
struct Run {
    run_id: i64,
    plan_id: i64,
}

/// Opens the database a plan was made for, refusing a plan of another store, database (unless
/// rehearsing, on a copy) or schema version.
fn open_planned(state: &State, cfg: &Config, plan_id: i64, rehearsal: bool) -> Result<Db> {
    let kind = state.plan_text(plan_id, "store_kind")?;
    if kind != "calendarserver-pg" {
        return Err(Error::usage(format!(
            "plan {plan_id} was made for a {kind} store, not this database; plan again"
        )));
    }
    let planned = pg_rows::plan_target(&state.conn, plan_id)?;
    let (planned_db, version) = (planned.database, planned.schema_version);
    let db = Db::open(cfg)?;
    let label = db.target.label.clone();
    if !rehearsal && planned_db != label {
        return Err(Error::usage(format!(
            "plan {plan_id} was made for the database {planned_db}, not {label}; plan again for this database"
        )));
    }
    if db.schema.version != version {
        return Err(Error::usage(format!(
            "plan {plan_id} was made on schema version {version}; {label} is now at {}: plan again",
            db.schema.version
        )));
    }
    Ok(db)
}

/// What every batch of objects needs: the schema, the plan's resolver and address form, and the
/// steps an interrupted process left pending (RESOURCE_ID → seq).
struct Batch<'a> {
    run_id: i64,
    schema: &'a Schema,
    resolver: &'a HashMap<String, Principal>,
    opts: &'a RewriteOptions,
    pending: &'a HashMap<i64, i64>,
}

/// The objects of the plan, calendar texts then cards, a page at a time; `false` when a signal
/// stopped the run (recorded interrupted).
fn apply_objects(
    progress: &dyn Progress,
    db: &mut Db,
    state: &mut State,
    run: Run,
    summary: &mut RunSummary,
) -> Result<bool> {
    let resolver = pg_rows::plan_principals(&state.conn, run.plan_id)?;
    let address_form: String = state.plan_text(run.plan_id, "address_form")?;
    let opts = RewriteOptions {
        form: serde_json::from_value(Value::String(address_form))?,
    };
    let schema = db.schema.clone();
    let total = pg_rows::plan_objects(&state.conn, run.plan_id)?;
    let bar = progress.start("applying", Some(total as u64));
    for kind in ["calendar", "vcard"] {
        let mut after_id = i64::MIN;
        // Journal steps an interrupted process left pending: seq by id. Read once: the steps this
        // process journals are marked at the end of their own batch.
        let pending = pg_rows::pending_objects(&state.conn, run.run_id, kind)?;
        let batch = Batch {
            run_id: run.run_id,
            schema: &schema,
            resolver: &resolver,
            opts: &opts,
            pending: &pending,
        };
        loop {
            let page = pg_rows::objects_to_apply(
                &state.conn,
                run.plan_id,
                kind,
                after_id,
                run.run_id,
                BATCH,
            )?;
            let Some(last) = page.last() else { break };
            after_id = last.id;
            object_batch(db, state, &batch, &page, summary)?;
            bar.inc(page.len() as u64);
            crate::interrupt::test_pause("pg-apply-batch");
            if stop_if_signalled(state, summary)? {
                bar.finish();
                return Ok(false);
            }
        }
    }
    bar.finish();
    Ok(true)
}

/// For a run that already finished: what it did (from its journal) and whether the objects it
/// wrote still hold what it wrote.
pub(super) fn check_finished(db: &mut Db, state: &State, s: &mut RunSummary) -> Result<()> {
    let run = s.run_id;
    s.finished_at = state.run_finished_at(run);
    s.state = Some(state.run_state(run)?);
    journal_totals(state, s)?;
    let written = pg_rows::objects_written(&state.conn, run)?;
    s.checked = Some(check_hashes(db, &written)?);
    Ok(())
}

/// Whether objects hold the text of the md5 expected.
pub(super) fn check_hashes(
    db: &mut Db,
    written: &[WrittenObject],
) -> Result<crate::journal::Checked> {
    let mut checked = crate::journal::Checked {
        files: written.len() as u64,
        ..Default::default()
    };
    for kind in ["calendar", "vcard"] {
        let (table, column) = if kind == "calendar" {
            ("CALENDAR_OBJECT", "ICALENDAR_TEXT")
        } else {
            ("ADDRESSBOOK_OBJECT", "VCARD_TEXT")
        };
        for chunk in written
            .iter()
            .filter(|w| w.kind == kind)
            .collect::<Vec<_>>()
            .chunks(BATCH)
        {
            let ids: Vec<i64> = chunk.iter().map(|w| w.id).collect();
            let now: HashMap<i64, String> = db
                .client
                .query(
                    &format!("SELECT RESOURCE_ID::bigint, md5({column}) FROM {table} WHERE RESOURCE_ID = ANY($1::bigint[])"),
                    &[&ids],
                )
                .map_err(err(table))?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            for w in chunk {
                match now.get(&w.id) {
                    Some(m) if *m == w.md5 => checked.holding += 1,
                    Some(_) => checked
                        .differing
                        .push((w.label.clone(), "changed since".into())),
                    None => checked
                        .differing
                        .push((w.label.clone(), "deleted since".into())),
                }
            }
        }
    }
    Ok(checked)
}

/// A planned object settled without a write: done (already as planned) or skipped, with why;
/// `seq` is its pending step's, 0 when it has none yet.
struct Settled<'p> {
    seq: i64,
    planned: &'p PlannedObject,
    state: StepState,
    detail: String,
}

/// A planned object to write: the write, and its old columns saved (zlib) for rollback.
struct ToWrite<'p> {
    planned: &'p PlannedObject,
    write: ObjectWrite,
    saved: Vec<u8>,
}

/// What one planned object comes to, found locked in the database.
enum Decision<'p> {
    Settled(Settled<'p>),
    Write(ToWrite<'p>),
}

/// The plan's rewrite replayed on the row: the new text and columns.
struct Replayed {
    text: Vec<u8>,
    md5: String,
    organizer: Option<String>,
    text_md5: String,
}

/// The replays and saved rows of the calendar objects still as planned, on every core.
type Replays = HashMap<i64, (Option<Replayed>, Result<Vec<u8>>)>;

/// One page of planned objects in one database transaction: the rows locked, each decided, the
/// old rows journaled (durable) before the writes, the writes marked after the commit.
fn object_batch(
    db: &mut Db,
    state: &mut State,
    batch: &Batch<'_>,
    page: &[PlannedObject],
    summary: &mut RunSummary,
) -> Result<()> {
    let kind = page[0].kind.clone();
    let ids: Vec<i64> = page.iter().map(|p| p.id).collect();
    let mut tx = db.client.transaction().map_err(err("begin"))?;
    let rows = locked_objects(&mut tx, batch.schema, &kind, &ids)?;
    // Decide each object; rewrite the ones still as planned.
    let mut pre = if kind == "calendar" {
        replay_calendar(batch, page, &rows)
    } else {
        HashMap::new()
    };
    let mut writes: Vec<ToWrite> = Vec::new();
    let mut settled: Vec<Settled> = Vec::new();
    for p in page {
        match decide(&mut tx, batch, &kind, p, &rows, &mut pre)? {
            Decision::Settled(s) => settled.push(s),
            Decision::Write(w) => writes.push(w),
        }
    }
    // The old rows, durable in the state database, before the database is written.
    journal_batch(state, batch.run_id, &kind, &mut writes, &settled)?;
    durable(state, batch.run_id)?;
    for s in &settled {
        match s.state {
            StepState::Done if s.seq > 0 => summary.written += 1,
            StepState::Done => summary.unchanged += 1,
            _ => summary
                .skipped
                .push((s.planned.label.clone(), s.detail.clone())),
        }
    }
    if writes.is_empty() {
        tx.commit().map_err(err("commit"))?;
        return Ok(());
    }
    let ws: Vec<ObjectWrite> = writes.iter().map(|w| w.write.clone()).collect();
    let done = write_objects(&mut tx, batch.schema, &kind, &ws)?;
    tx.commit().map_err(err("commit"))?;
    let done: std::collections::HashSet<i64> = done.into_iter().collect();
    let mut marks = Vec::new();
    for w in &writes {
        if done.contains(&w.write.id) {
            summary.written += 1;
            marks.push(Mark::done(w.write.seq));
        } else {
            summary
                .skipped
                .push((w.planned.label.clone(), "changed since plan".into()));
            marks.push(Mark::skipped(w.write.seq, "changed since plan"));
        }
    }
    edits::mark(state, batch.run_id, &marks)?;
    Ok(())
}

/// The old columns of a row, saved (zlib) for rollback.
fn save_row(row: &ObjectRow) -> Result<Vec<u8>> {
    pack_saved(&SavedObject {
        text: row.text.clone(),
        md5: row.md5.clone(),
        organizer: row.organizer.clone(),
    })
}

/// The calendar objects of a page still as planned: the plan's rewrite replayed and the old
/// row saved, on every core.
fn replay_calendar(
    batch: &Batch<'_>,
    page: &[PlannedObject],
    rows: &HashMap<i64, ObjectRow>,
) -> Replays {
    use rayon::prelude::*;
    page.par_iter()
        .filter_map(|p| {
            let row = rows.get(&p.id)?;
            if row.text_md5 != p.old_text_md5 || row.md5 != p.old_md5 {
                return None;
            }
            let replayed = ical::scan_and_rewrite(row.text.as_bytes(), batch.resolver, batch.opts)
                .ok()
                .and_then(|(info, rw)| {
                    rewrite_object(batch.schema, row, &info, rw, batch.resolver, batch.opts)
                })
                .map(|pl| Replayed {
                    text: pl.new_text,
                    md5: pl.new_md5,
                    organizer: pl.new_organizer,
                    text_md5: pl.new_text_md5,
                });
            Some((p.id, (replayed, save_row(row))))
        })
        .collect()
}

/// Decides one planned object: deleted, already as planned, changed since, or to write (its
/// rewrite replayed and checked against the plan's hashes).
fn decide<'p>(
    tx: &mut postgres::Transaction<'_>,
    batch: &Batch<'_>,
    kind: &str,
    p: &'p PlannedObject,
    rows: &HashMap<i64, ObjectRow>,
    pre: &mut Replays,
) -> Result<Decision<'p>> {
    let seq = batch.pending.get(&p.id).copied().unwrap_or(0);
    let settle = |state: StepState, why: &str| {
        Ok(Decision::Settled(Settled {
            seq,
            planned: p,
            state,
            detail: why.to_string(),
        }))
    };
    let Some(row) = rows.get(&p.id) else {
        return settle(StepState::Skipped, "deleted since plan");
    };
    if row.text_md5 == p.new_text_md5 && row.md5 == p.new_md5 {
        let why = if seq > 0 { "" } else { "already as planned" };
        return settle(StepState::Done, why);
    }
    if row.text_md5 != p.old_text_md5 || row.md5 != p.old_md5 {
        let why = if seq > 0 {
            "changed since plan (found after an interrupted run)"
        } else {
            "changed since plan"
        };
        return settle(StepState::Skipped, why);
    }
    let (replayed, saved) = if kind == "calendar" {
        let (r, s) = pre.remove(&p.id).unwrap_or((None, Ok(Vec::new())));
        (r, s?)
    } else {
        (replay_card(tx, batch, row)?, save_row(row)?)
    };
    let Some(r) = replayed else {
        return settle(
            StepState::Skipped,
            "the plan's rewrite no longer applies; plan again",
        );
    };
    if r.text_md5 != p.new_text_md5 || r.md5 != p.new_md5 {
        return settle(
            StepState::Skipped,
            "the rewrite differs from the plan; plan again",
        );
    }
    let Ok(text) = String::from_utf8(r.text) else {
        return settle(StepState::Skipped, "the rewritten text is not UTF-8");
    };
    Ok(Decision::Write(ToWrite {
        planned: p,
        write: ObjectWrite {
            seq,
            id: p.id,
            text,
            md5: r.md5,
            organizer: if kind == "calendar" {
                r.organizer
            } else {
                None
            },
            expect_md5: p.old_md5.clone(),
            expect_text_md5: p.old_text_md5.clone(),
        },
        saved,
    }))
}

/// A card's planned rewrite replayed (its address book read again, in the transaction).
fn replay_card(
    tx: &mut postgres::Transaction<'_>,
    batch: &Batch<'_>,
    row: &ObjectRow,
) -> Result<Option<Replayed>> {
    let card = read::CardRow {
        resource_id: row.resource_id,
        owner: row.owner.clone().unwrap_or_default(),
        name: row.name.clone(),
        text: row.text.clone(),
        md5: row.md5.clone(),
    };
    Ok(
        rewrite_card(tx, batch.schema, &card, batch.resolver)?.map(|(t, _)| {
            let m = md5_hex(&t);
            Replayed {
                text: t,
                md5: m.clone(),
                organizer: None,
                text_md5: m,
            }
        }),
    )
}

/// The journal step of a planned object (label, saved row and state to fill in).
fn object_step<'a>(kind: &'a str, p: &'a PlannedObject) -> pg_rows::NewStep<'a> {
    pg_rows::NewStep {
        kind: "object",
        table: kind,
        key: p.id.to_string(),
        label: &p.label,
        before_hash: &p.old_text_md5,
        after_hash: &p.new_text_md5,
        ..Default::default()
    }
}

/// Journals a batch in one state transaction: the writes as pending steps (with their saved old
/// rows; their seqs set), then the settled objects (their pending steps marked, or new steps).
fn journal_batch(
    state: &mut State,
    run_id: i64,
    kind: &str,
    writes: &mut [ToWrite<'_>],
    settled: &[Settled<'_>],
) -> Result<()> {
    let stx = state.conn.transaction()?;
    let mut marks = Vec::new();
    {
        let mut steps = pg_rows::StepAppender::new(&stx, run_id)?;
        for w in writes.iter_mut() {
            if w.write.seq == 0 {
                w.write.seq = steps.append(&pg_rows::NewStep {
                    old_row: Some(&w.saved),
                    ..object_step(kind, w.planned)
                })?;
            }
        }
        for s in settled {
            if s.seq > 0 {
                marks.push(Mark {
                    seq: s.seq,
                    state: s.state,
                    detail: s.detail.clone(),
                });
            } else {
                steps.append(&pg_rows::NewStep {
                    state: Some(s.state),
                    detail: &s.detail,
                    ..object_step(kind, s.planned)
                })?;
            }
        }
    }
    pg_rows::mark_steps(&stx, run_id, &marks)?;
    stx.commit()?;
    Ok(())
}

/// The uid and address columns: per planned value, every row holding it, in one transaction.
fn apply_values(db: &mut Db, state: &mut State, run: Run, summary: &mut RunSummary) -> Result<()> {
    let todo = pg_rows::plan_values(&state.conn, run.plan_id)?;
    if todo.is_empty() {
        return Ok(());
    }
    // One database transaction for every value: their journal steps are made durable once,
    // before it commits.
    let mut tx = db.client.transaction().map_err(err("begin"))?;
    for v in todo {
        let edits = value_edits(&mut tx, &v)?;
        if edits.is_empty() {
            continue;
        }
        run_edits(
            &mut tx,
            state,
            run.run_id,
            &edits,
            &format!(
                "{}.{} {} -> {}",
                v.table, v.column, v.old_value, v.new_value
            ),
            summary,
        )?;
    }
    durable(state, run.run_id)?;
    tx.commit().map_err(err("commit"))?;
    pg_rows::mark_row_steps_done(&state.conn, run.run_id)?;
    Ok(())
}

/// The row edits of one planned value: property values holding hrefs into a moved home change
/// inside, push keys and notification data where they name the old uid, other columns whole.
fn value_edits(tx: &mut postgres::Transaction<'_>, v: &PlannedValue) -> Result<Vec<RowEdit>> {
    let (table, column, old, new) = (&v.table, &v.column, &v.old_value, &v.new_value);
    let href = column == "VALUE";
    let push = table == "APN_SUBSCRIPTIONS" && column == "RESOURCE_KEY";
    let note = table == "NOTIFICATION";
    let rows = if href {
        let h = crate::db::rewrite::href_of(old);
        edits::select_rows(tx, table, "strpos(t.VALUE, $1) > 0", &[&h])?
    } else if push {
        edits::select_rows(tx, table, crate::db::rewrite::APN_FILTER, &[old])?
    } else if note {
        let f = crate::db::rewrite::notification_filter(column);
        edits::select_rows(tx, table, &f, &[old])?
    } else {
        edits::select_rows(tx, table, &format!("t.{column} = $1"), &[old])?
    };
    let edit = |ctid, before, set| RowEdit {
        table: table.clone(),
        ctid,
        before,
        set,
        delete: false,
    };
    Ok(rows
        .into_iter()
        .filter_map(|(ctid, before)| {
            if note {
                // The data and its MD5, where the text names the old uid as a principal.
                let v = edits::field(&before, column)
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let text = crate::db::rewrite::notification_text(v, old, new)?;
                let md5 = md5_hex(text.as_bytes());
                let mut set = edits::set1(column, json!(text));
                set.extend(edits::set1("md5", json!(md5)));
                return Some(edit(ctid, before, set));
            }
            let value = if href {
                let v = edits::field(&before, "value")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                json!(v.replace(
                    &crate::db::rewrite::href_of(old),
                    &crate::db::rewrite::href_of(new)
                ))
            } else if push {
                let k = edits::field(&before, "resource_key")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                json!(crate::db::rewrite::push_key(k, old, new).unwrap_or_else(|| k.to_string()))
            } else {
                json!(new)
            };
            Some(edit(ctid, before, edits::set1(column, value)))
        })
        .collect())
}

/// Makes every journal step written so far durable (one fsync of the state database's WAL):
/// the steps of a database transaction are written without waiting for the disk, then this runs
/// once before the transaction commits. Marks written after a commit need no fsync of their own:
/// a step left pending is settled by looking at its row.
pub(super) fn durable(state: &State, run_id: i64) -> Result<()> {
    state.conn.execute_batch("PRAGMA synchronous = FULL")?;
    pg_rows::touch_run(&state.conn, run_id)?;
    state.conn.execute_batch("PRAGMA synchronous = NORMAL")?;
    Ok(())
}

/// Journals edits (pending), writes them in `tx`; marks skipped ones at once. The caller commits
/// `tx`, then [`mark_done_after_commit`] marks the written ones done.
fn run_edits(
    tx: &mut postgres::Transaction<'_>,
    state: &mut State,
    run_id: i64,
    edits: &[RowEdit],
    label: &str,
    summary: &mut RunSummary,
) -> Result<Vec<bool>> {
    let seqs = edits::journal_pending(state, run_id, "row", edits, &[], label)?;
    let mut marks = Vec::new();
    let mut out = Vec::new();
    // Many rows getting the same new value (a uid column): one statement, unless it clashes.
    let same = edits.len() > 1
        && edits.iter().all(|e| {
            !e.delete && !e.ctid.is_empty() && e.table == edits[0].table && e.set == edits[0].set
        });
    if same {
        if let Some(n) = edits::write_same(tx, edits)? {
            if n as usize == edits.len() {
                return Ok(vec![true; edits.len()]);
            }
            return Err(Error::runtime(format!(
                "{label}: {n} of {} locked rows written; nothing committed",
                edits.len()
            )));
        }
    }
    for (e, seq) in edits.iter().zip(&seqs) {
        let ok = edits::write(tx, e)?;
        if !ok {
            marks.push(Mark::skipped(
                *seq,
                "a row with the new value exists already; both kept",
            ));
            summary.notes.push(format!(
                "{}: a row with the new value exists already; the old row {} was kept as it is",
                e.table, e.before
            ));
        }
        out.push(ok);
    }
    edits::mark(state, run_id, &marks)?;
    Ok(out)
}

/// Foreign-key columns pointing at a home table: (table, column).
fn home_references(
    tx: &mut postgres::Transaction<'_>,
    home_table: &str,
) -> Result<Vec<(String, String)>> {
    let rows = tx
        .query(
            "SELECT upper(c.conrelid::regclass::text), upper(a.attname::text)
             FROM pg_constraint c
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)
             WHERE c.contype = 'f' AND c.confrelid = to_regclass(lower($1))
             ORDER BY 1, 2",
            &[&home_table],
        )
        .map_err(err(home_table))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The collection-name column of a bind table (renamed `-migrated` on a clash), and the
/// revision table's name column for the same collection.
fn bind_name_column(table: &str) -> Option<&'static str> {
    match table {
        "CALENDAR_BIND" => Some("calendar_resource_name"),
        "ADDRESSBOOK_BIND" => Some("addressbook_resource_name"),
        "SHARED_ADDRESSBOOK_BIND" => Some("addressbook_resource_name"),
        "SHARED_GROUP_BIND" => Some("group_addressbook_name"),
        _ => None,
    }
}

/// Homes kept under an old uid: renamed to the new uid, or — when the server already made a home
/// for the new uid after the rebuild — merged into it: every row pointing at the old home moves
/// to the new one (clashing collection names become `<name>-migrated`), then the emptied old home
/// is removed. Each home is one transaction.
fn apply_homes(db: &mut Db, state: &mut State, run: Run, summary: &mut RunSummary) -> Result<()> {
    let status = if db.schema.home_status { "STATUS" } else { "0" };
    let homes = pg_rows::plan_homes(&state.conn, run.plan_id)?;
    if homes.is_empty() {
        return Ok(());
    }
    // One database transaction for every home (durable journal once, before it commits).
    let mut tx = db.client.transaction().map_err(err("begin"))?;
    for h in homes {
        let (table, id, old, new) = (&h.table, h.resource_id, &h.old_uid, &h.new_uid);
        let rows = edits::select_rows(
            &mut tx,
            table,
            "t.RESOURCE_ID = $1::bigint AND t.OWNER_UID = $2",
            &[&id, old],
        )?;
        let Some((ctid, before)) = rows.into_iter().next() else {
            continue; // already adopted (or changed by someone else): nothing of ours to do
        };
        let my_status = edits::field(&before, "status")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let target: Option<i64> = tx
            .query_opt(
                &format!("SELECT RESOURCE_ID::bigint FROM {table} WHERE OWNER_UID = $1 AND {status}::bigint = $2::bigint FOR UPDATE"),
                &[new, &my_status],
            )
            .map_err(err(table))?
            .map(|r| r.get(0));
        match target {
            None => {
                let e = RowEdit {
                    table: table.clone(),
                    ctid,
                    before,
                    set: edits::set1("owner_uid", json!(new)),
                    delete: false,
                };
                run_edits(
                    &mut tx,
                    state,
                    run.run_id,
                    &[e],
                    &format!("{table} {old} -> {new}"),
                    summary,
                )?;
                summary.homes_adopted += 1;
            }
            Some(target) => {
                let merge = Merge {
                    run_id: run.run_id,
                    table,
                    old_id: id,
                    target,
                    old,
                    new,
                };
                merge_home(&mut tx, state, &merge, (ctid, before), summary)?;
            }
        }
    }
    durable(state, run.run_id)?;
    tx.commit().map_err(err("commit"))?;
    pg_rows::mark_row_steps_done(&state.conn, run.run_id)?;
    Ok(())
}

/// One home merged into the home the server made for its new uid.
struct Merge<'a> {
    run_id: i64,
    /// The home table.
    table: &'a str,
    /// The old home's RESOURCE_ID.
    old_id: i64,
    /// The home that stays.
    target: i64,
    old: &'a str,
    new: &'a str,
}

/// What a merge tells of itself: collection names kept under a new name (old → new), notes.
#[derive(Default)]
struct Merged {
    renamed: HashMap<String, String>,
    notes: Vec<String>,
}

fn merge_home(
    tx: &mut postgres::Transaction<'_>,
    state: &mut State,
    m: &Merge<'_>,
    (home_ctid, home_row): (String, Value),
    summary: &mut RunSummary,
) -> Result<()> {
    let refs = home_references(tx, m.table)?;
    let meta = format!("{}_METADATA", m.table);
    // Group the referencing columns by table: a row may point at the home twice.
    let mut by_table: Vec<(String, Vec<String>)> = Vec::new();
    for (t, c) in &refs {
        if *t == meta {
            continue;
        }
        match by_table.iter_mut().find(|(x, _)| x == t) {
            Some((_, cols)) => cols.push(c.clone()),
            None => by_table.push((t.clone(), vec![c.clone()])),
        }
    }
    // Bind tables first (their renames decide the revision rows' collection names).
    by_table.sort_by_key(|(t, _)| (bind_name_column(t).is_none(), t.clone()));
    let mut merged = Merged::default();
    for (t, cols) in &by_table {
        move_rows(tx, state, m, t, cols, &mut merged, summary)?;
    }
    // The emptied old home goes (with its metadata row), unless something still points at it.
    let mut still = 0i64;
    for (t, c) in &refs {
        if *t == meta {
            continue;
        }
        still += tx
            .query_one(
                &format!("SELECT COUNT(*) FROM {t} WHERE {c} = $1::bigint"),
                &[&m.old_id],
            )
            .map_err(err(t))?
            .get::<_, i64>(0);
    }
    if still == 0 {
        let mut dels = Vec::new();
        if refs.iter().any(|(t, _)| *t == meta) {
            for (ctid, before) in
                edits::select_rows(tx, &meta, "t.RESOURCE_ID = $1::bigint", &[&m.old_id])?
            {
                dels.push(RowEdit {
                    table: meta.clone(),
                    ctid,
                    before,
                    set: Vec::new(),
                    delete: true,
                });
            }
        }
        dels.push(RowEdit {
            table: m.table.to_string(),
            ctid: home_ctid,
            before: home_row,
            set: Vec::new(),
            delete: true,
        });
        run_edits(
            tx,
            state,
            m.run_id,
            &dels,
            &format!("merge {} into {}: old home removed", m.old, m.new),
            summary,
        )?;
    } else {
        merged.notes.push(format!(
            "{}: the old home stays ({still} rows still point at it)",
            m.old
        ));
    }
    summary.homes_adopted += 1;
    summary.notes.extend(merged.notes);
    Ok(())
}

/// Moves the rows of table `t` that point at the old home (through `cols`) to the home that
/// stays; a bind row whose collection name is taken there is kept as `<name>-migrated`, and a
/// revision row follows its collection's new name.
fn move_rows(
    tx: &mut postgres::Transaction<'_>,
    state: &mut State,
    m: &Merge<'_>,
    t: &str,
    cols: &[String],
    merged: &mut Merged,
    summary: &mut RunSummary,
) -> Result<()> {
    let (old, new) = (m.old, m.new);
    let filter = cols
        .iter()
        .map(|c| format!("t.{c} = $1::bigint"))
        .collect::<Vec<_>>()
        .join(" OR ");
    let rows = edits::select_rows(tx, t, &filter, &[&m.old_id])?;
    if rows.is_empty() {
        return Ok(());
    }
    let name_col = bind_name_column(t);
    let mut taken: std::collections::HashSet<String> = std::collections::HashSet::new();
    if let Some(nc) = name_col {
        let home_col = &cols[0];
        for r in tx
            .query(
                &format!("SELECT {nc} FROM {t} WHERE {home_col} = $1::bigint AND {nc} IS NOT NULL"),
                &[&m.target],
            )
            .map_err(err(t))?
        {
            taken.insert(r.get(0));
        }
    }
    let mut list = Vec::new();
    for (ctid, before) in rows {
        let mut set: Vec<(String, Value)> = cols
            .iter()
            .filter(|c| edits::field(&before, c).and_then(Value::as_i64) == Some(m.old_id))
            .map(|c| (c.to_ascii_lowercase(), json!(m.target)))
            .collect();
        if let Some(nc) = name_col {
            if let Some(name) = edits::field(&before, nc).and_then(Value::as_str) {
                if taken.contains(name) {
                    let mut n = format!("{name}-migrated");
                    let mut k = 2;
                    while taken.contains(&n) {
                        n = format!("{name}-migrated-{k}");
                        k += 1;
                    }
                    merged.notes.push(format!(
                        "{old} merged into the home the server made for {new}: `{name}` kept as {n} (name clash)"
                    ));
                    merged.renamed.insert(name.to_string(), n.clone());
                    taken.insert(n.clone());
                    set.push((nc.to_string(), json!(n)));
                } else {
                    taken.insert(name.to_string());
                }
            }
        } else if t.ends_with("_REVISIONS") {
            // A collection's own revision row carries its name: it follows a rename.
            for nc in ["calendar_name", "addressbook_name"] {
                if let Some(name) = edits::field(&before, nc).and_then(Value::as_str) {
                    if let Some(n) = merged.renamed.get(name) {
                        set.push((nc.to_string(), json!(n)));
                    }
                }
            }
        }
        list.push(RowEdit {
            table: t.to_string(),
            ctid,
            before,
            set,
            delete: false,
        });
    }
    let written = run_edits(
        tx,
        state,
        m.run_id,
        &list,
        &format!("merge {old} into {new}"),
        summary,
    )?;
    if written.iter().any(|w| !w) {
        merged.notes.push(format!(
            "{old}: some rows of {t} clash with the home of {new} and stayed with the old home"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_rows_round_trip() {
        for organizer in [None, Some(String::new()), Some("urn:x-uid:ABC".to_string())] {
            let s = SavedObject {
                text: "BEGIN:VCALENDAR\r\nSUMMARY:é\r\nEND:VCALENDAR\r\n".into(),
                md5: "0123456789abcdef0123456789abcdef".into(),
                organizer: organizer.clone(),
            };
            let back = unpack_saved(&pack_saved(&s).unwrap()).unwrap();
            assert_eq!(
                (back.text, back.md5, back.organizer),
                (s.text, s.md5, organizer)
            );
        }
        assert!(unpack_saved(b"not zlib").is_err());
    }
}
