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

use super::rewrite::{rewrite_card, rewrite_object};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::ical::{self, RewriteOptions};
use crate::journal::RunSummary;
use crate::progress::Progress;
use crate::state::{now_rfc3339, RunEvent, RunState, State};
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
    let (col, target) = match s.undoes_run {
        Some(r) => ("undoes_run", r),
        None => ("plan_id", s.plan_id.unwrap_or_default()),
    };
    let last: Option<(i64, String)> = state
        .conn
        .query_row(
            &format!("SELECT id, status FROM runs WHERE kind = ?1 AND {col} = ?2 ORDER BY id DESC LIMIT 1"),
            rusqlite::params![s.kind, target],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ok();
    // A plan whose run was rolled back is applied again by a new run.
    let rolled_back = |id: i64| -> Result<bool> {
        Ok(s.undoes_run.is_none() && state.run_state(id)? == RunState::RolledBack)
    };
    let id = match last {
        Some((id, st)) if st == "done" && !rolled_back(id)? => {
            s.run_id = id;
            s.already_done = true;
            return Ok(None);
        }
        Some((_, st)) if st == "done" => {
            state.conn.execute(
                &format!("INSERT INTO runs (kind, {col}, store_path, started_at, status) VALUES (?1, ?2, ?3, ?4, 'running')"),
                rusqlite::params![s.kind, target, label, now_rfc3339()],
            )?;
            state.conn.last_insert_rowid()
        }
        Some((id, _)) => {
            s.resumed = true;
            let stopped: Option<String> = state
                .conn
                .query_row("SELECT stopped_by FROM runs WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .ok()
                .flatten();
            s.notes.push(match stopped {
                Some(sig) => format!("run {id} was stopped by {sig}; resuming it"),
                None => format!("run {id} did not finish (its process ended without finishing: a crash or kill); resuming it"),
            });
            state.conn.execute(
                "UPDATE runs SET status = 'running', stopped_by = NULL WHERE id = ?1",
                [id],
            )?;
            id
        }
        None => {
            state.conn.execute(
                &format!("INSERT INTO runs (kind, {col}, store_path, started_at, status) VALUES (?1, ?2, ?3, ?4, 'running')"),
                rusqlite::params![s.kind, target, label, now_rfc3339()],
            )?;
            state.conn.last_insert_rowid()
        }
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
    state.conn.execute(
        "UPDATE runs SET status = 'interrupted', stopped_by = ?1 WHERE id = ?2",
        rusqlite::params![name, s.run_id],
    )?;
    s.interrupted = Some(name);
    if s.kind == "apply" {
        journal_totals(state, s)?;
    }
    Ok(true)
}

/// The counts of a run, from its journal (the whole run's, across resumed processes).
pub(super) fn journal_totals(state: &State, s: &mut RunSummary) -> Result<()> {
    let run = s.run_id;
    let count = |sql: &str| -> Result<u64> {
        Ok(state.conn.query_row(sql, [run], |r| r.get::<_, i64>(0))? as u64)
    };
    s.written = count("SELECT COUNT(*) FROM pg_journal WHERE run_id = ?1 AND kind = 'object' AND state = 'done' AND old_row IS NOT NULL")?;
    s.unchanged = count("SELECT COUNT(*) FROM pg_journal WHERE run_id = ?1 AND kind = 'object' AND state = 'done' AND old_row IS NULL")?;
    s.homes_adopted = count("SELECT COUNT(*) FROM pg_journal WHERE run_id = ?1 AND kind = 'row' AND state = 'done' AND table_name IN ('CALENDAR_HOME', 'ADDRESSBOOK_HOME', 'NOTIFICATION_HOME')")?;
    let mut st = state.conn.prepare(
        "SELECT label, detail FROM pg_journal WHERE run_id = ?1 AND state = 'skipped' ORDER BY seq",
    )?;
    let rows = st.query_map([run], |r| Ok((r.get(0)?, r.get(1)?)))?;
    s.skipped = rows.collect::<rusqlite::Result<_>>()?;
    Ok(())
}

pub(super) fn finish_run(state: &State, run_id: i64) -> Result<()> {
    state.conn.execute(
        "UPDATE runs SET status = 'done', finished_at = ?1 WHERE id = ?2",
        rusqlite::params![now_rfc3339(), run_id],
    )?;
    Ok(())
}

/// One planned object, as stored.
#[derive(Clone, Debug)]
pub(super) struct PlannedObject {
    pub kind: String,
    pub id: i64,
    pub label: String,
    pub old_text_md5: String,
    pub new_text_md5: String,
    pub old_md5: String,
    pub new_md5: String,
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
    let ids: Vec<i64> = writes.iter().map(|w| w.id).collect();
    let texts: Vec<&str> = writes.iter().map(|w| w.text.as_str()).collect();
    let md5s: Vec<&str> = writes.iter().map(|w| w.md5.as_str()).collect();
    let orgs: Vec<Option<&str>> = writes.iter().map(|w| w.organizer.as_deref()).collect();
    let exp_md5: Vec<&str> = writes.iter().map(|w| w.expect_md5.as_str()).collect();
    let exp_text: Vec<&str> = writes.iter().map(|w| w.expect_text_md5.as_str()).collect();
    let now = "timezone('UTC', CURRENT_TIMESTAMP)";
    let rev_modified = if schema.revisions_modified {
        format!(", MODIFIED = {now}")
    } else {
        String::new()
    };
    if kind == "calendar" {
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
        // The server's "update" revision: renew the object's row, or add one where it is missing.
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
        if bumped.len() < done.len() {
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
        return Ok(done);
    }
    // Address-book cards (few): one by one.
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
    let kind = state.plan_text(plan_id, "store_kind")?;
    if kind != "calendarserver-pg" {
        return Err(Error::usage(format!(
            "plan {plan_id} was made for a {kind} store, not this database; plan again"
        )));
    }
    let (planned_db, version): (String, u32) = state.conn.query_row(
        "SELECT database, schema_version FROM pg_plans WHERE plan_id = ?1",
        [plan_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut db = Db::open(cfg)?;
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
    let resolver = crate::state::pg_rows::plan_principals(&state.conn, plan_id)?;
    let address_form: String = state.plan_text(plan_id, "address_form")?;
    let opts = RewriteOptions {
        form: serde_json::from_value(Value::String(address_form))?,
    };
    let schema = db.schema.clone();
    let total: i64 = state.conn.query_row(
        "SELECT COUNT(*) FROM pg_plan_objects WHERE plan_id = ?1",
        [plan_id],
        |r| r.get(0),
    )?;
    let bar = progress.start("applying", Some(total as u64));

    // 1. Objects: calendar texts, then cards; a page of the plan at a time (bounded memory).
    for kind in ["calendar", "vcard"] {
        let mut after_id = i64::MIN;
        // Journal steps an interrupted process left pending: seq by id. Read once: the steps this
        // process journals are marked at the end of their own batch.
        let pending = pending_steps(&state, run_id, kind)?;
        loop {
            let page: Vec<PlannedObject> = {
                let mut st = state.conn.prepare(
                    "SELECT kind, resource_id, label, old_text_md5, new_text_md5, old_md5, new_md5 FROM pg_plan_objects p
                     WHERE plan_id = ?1 AND kind = ?2 AND resource_id > ?3
                       AND NOT EXISTS (SELECT 1 FROM pg_journal j WHERE j.run_id = ?4 AND j.kind = 'object' AND j.table_name = p.kind
                                       AND j.key = CAST(p.resource_id AS TEXT) AND j.state != 'pending')
                     ORDER BY resource_id LIMIT ?5",
                )?;
                let rows = st.query_map(
                    rusqlite::params![plan_id, kind, after_id, run_id, BATCH as i64],
                    |r| {
                        Ok(PlannedObject {
                            kind: r.get(0)?,
                            id: r.get(1)?,
                            label: r.get(2)?,
                            old_text_md5: r.get(3)?,
                            new_text_md5: r.get(4)?,
                            old_md5: r.get(5)?,
                            new_md5: r.get(6)?,
                        })
                    },
                )?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let Some(last) = page.last() else { break };
            after_id = last.id;
            object_batch(
                &mut db,
                &mut state,
                run_id,
                &schema,
                &resolver,
                &opts,
                &page,
                &pending,
                &mut summary,
            )?;
            bar.inc(page.len() as u64);
            crate::interrupt::test_pause("pg-apply-batch");
            if stop_if_signalled(&state, &mut summary)? {
                bar.finish();
                return Ok(summary);
            }
        }
    }
    bar.finish();
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
        let marks: Vec<(i64, &str, String)> = marks.into_iter().collect();
        edits::mark(&mut state, run_id, &marks)?;
    }
    if stop_if_signalled(&state, &mut summary)? {
        return Ok(summary);
    }
    apply_values(&mut db, &mut state, run_id, plan_id, &mut summary)?;
    if stop_if_signalled(&state, &mut summary)? {
        return Ok(summary);
    }
    apply_homes(&mut db, &mut state, run_id, plan_id, &mut summary)?;
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

/// For a run that already finished: what it did (from its journal) and whether the objects it
/// wrote still hold what it wrote.
pub(super) fn check_finished(db: &mut Db, state: &State, s: &mut RunSummary) -> Result<()> {
    let run = s.run_id;
    s.finished_at = state.run_finished_at(run);
    s.state = Some(state.run_state(run)?);
    journal_totals(state, s)?;
    let written: Vec<(String, i64, String, String)> = {
        let mut st = state.conn.prepare(
            "SELECT table_name, CAST(key AS INTEGER), label, after_hash FROM pg_journal
             WHERE run_id = ?1 AND kind = 'object' AND state = 'done' AND old_row IS NOT NULL ORDER BY seq",
        )?;
        let rows = st.query_map([run], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    s.checked = Some(check_hashes(db, &written)?);
    Ok(())
}

/// Whether objects hold the text of the md5 expected: (kind, RESOURCE_ID, label, md5).
pub(super) fn check_hashes(
    db: &mut Db,
    written: &[(String, i64, String, String)],
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
            .filter(|w| w.0 == kind)
            .collect::<Vec<_>>()
            .chunks(BATCH)
        {
            let ids: Vec<i64> = chunk.iter().map(|w| w.1).collect();
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
            for (_, id, label, after) in chunk {
                match now.get(id) {
                    Some(m) if m == after => checked.holding += 1,
                    Some(_) => checked
                        .differing
                        .push((label.clone(), "changed since".into())),
                    None => checked
                        .differing
                        .push((label.clone(), "deleted since".into())),
                }
            }
        }
    }
    Ok(checked)
}

/// Object steps of a run still pending (their transaction may or may not have committed).
fn pending_steps(state: &State, run_id: i64, kind: &str) -> Result<HashMap<i64, i64>> {
    let mut pending = HashMap::new();
    let mut st = state.conn.prepare(
        "SELECT key, seq FROM pg_journal WHERE run_id = ?1 AND kind = 'object' AND table_name = ?2 AND state = 'pending'",
    )?;
    let rows = st.query_map(rusqlite::params![run_id, kind], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })?;
    for r in rows {
        let (k, s) = r?;
        if let Ok(id) = k.parse() {
            pending.insert(id, s);
        }
    }
    Ok(pending)
}

#[allow(clippy::too_many_arguments)]
fn object_batch(
    db: &mut Db,
    state: &mut State,
    run_id: i64,
    schema: &Schema,
    resolver: &HashMap<String, crate::address::Principal>,
    opts: &RewriteOptions,
    page: &[PlannedObject],
    pending: &HashMap<i64, i64>,
    summary: &mut RunSummary,
) -> Result<()> {
    let kind = page[0].kind.clone();
    let ids: Vec<i64> = page.iter().map(|p| p.id).collect();
    let mut tx = db.client.transaction().map_err(err("begin"))?;
    let rows = locked_objects(&mut tx, schema, &kind, &ids)?;
    // Decide each object; rewrite the ones still as planned.
    let mut writes: Vec<(PlannedObject, ObjectWrite, Vec<u8>)> = Vec::new();
    let mut final_marks: Vec<(i64, &PlannedObject, &'static str, String)> = Vec::new();
    // The replays and saved rows of the calendar objects still as planned, on every core.
    type Replayed = (Vec<u8>, String, Option<String>, String);
    let mut pre: HashMap<i64, (Option<Replayed>, Result<Vec<u8>>)> = if kind == "calendar" {
        use rayon::prelude::*;
        page.par_iter()
            .filter_map(|p| {
                let row = rows.get(&p.id)?;
                if row.text_md5 != p.old_text_md5 || row.md5 != p.old_md5 {
                    return None;
                }
                let replayed = ical::scan_and_rewrite(row.text.as_bytes(), resolver, opts)
                    .ok()
                    .and_then(|(info, rw)| rewrite_object(schema, row, &info, rw, resolver, opts))
                    .map(|pl| (pl.new_text, pl.new_md5, pl.new_organizer, pl.new_text_md5));
                let saved = pack_saved(&SavedObject {
                    text: row.text.clone(),
                    md5: row.md5.clone(),
                    organizer: row.organizer.clone(),
                });
                Some((p.id, (replayed, saved)))
            })
            .collect()
    } else {
        HashMap::new()
    };
    for p in page {
        let seq = pending.get(&p.id).copied().unwrap_or(0);
        let Some(row) = rows.get(&p.id) else {
            final_marks.push((seq, p, "skipped", "deleted since plan".into()));
            continue;
        };
        let text_md5 = row.text_md5.clone();
        if text_md5 == p.new_text_md5 && row.md5 == p.new_md5 {
            let why = if seq > 0 { "" } else { "already as planned" };
            final_marks.push((seq, p, "done", why.into()));
            continue;
        }
        if text_md5 != p.old_text_md5 || row.md5 != p.old_md5 {
            let why = if seq > 0 {
                "changed since plan (found after an interrupted run)"
            } else {
                "changed since plan"
            };
            final_marks.push((seq, p, "skipped", why.into()));
            continue;
        }
        let mut saved = None;
        let replayed = if kind == "calendar" {
            let (r, s) = pre.remove(&p.id).unwrap_or((None, Ok(Vec::new())));
            saved = Some(s?);
            r
        } else {
            let card = read::CardRow {
                resource_id: row.resource_id,
                owner: row.owner.clone().unwrap_or_default(),
                name: row.name.clone(),
                text: row.text.clone(),
                md5: row.md5.clone(),
            };
            rewrite_card(&mut tx, schema, &card, resolver)?.map(|(t, _)| {
                let m = md5_hex(&t);
                (t, m.clone(), None, m)
            })
        };
        let Some((new_text, new_md5, new_org, new_text_md5)) = replayed else {
            final_marks.push((
                seq,
                p,
                "skipped",
                "the plan's rewrite no longer applies; plan again".into(),
            ));
            continue;
        };
        if new_text_md5 != p.new_text_md5 || new_md5 != p.new_md5 {
            final_marks.push((
                seq,
                p,
                "skipped",
                "the rewrite differs from the plan; plan again".into(),
            ));
            continue;
        }
        let Ok(text) = String::from_utf8(new_text) else {
            final_marks.push((seq, p, "skipped", "the rewritten text is not UTF-8".into()));
            continue;
        };
        let saved = match saved {
            Some(s) => s,
            None => pack_saved(&SavedObject {
                text: row.text.clone(),
                md5: row.md5.clone(),
                organizer: row.organizer.clone(),
            })?,
        };
        writes.push((
            p.clone(),
            ObjectWrite {
                seq,
                id: p.id,
                text,
                md5: new_md5,
                organizer: if kind == "calendar" { new_org } else { None },
                expect_md5: p.old_md5.clone(),
                expect_text_md5: p.old_text_md5.clone(),
            },
            saved,
        ));
    }
    // The old rows, durable in the state database, before the database is written.
    {
        let stx = state.conn.transaction()?;
        let mut seq: i64 = stx.query_row(
            "SELECT COALESCE(MAX(seq), 0) FROM pg_journal WHERE run_id = ?1",
            [run_id],
            |r| r.get(0),
        )?;
        {
            let mut ins = stx.prepare(
                "INSERT INTO pg_journal (run_id, seq, kind, table_name, key, label, before_hash, after_hash, old_row, state, detail)
                 VALUES (?1, ?2, 'object', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            let mut up = stx.prepare(
                "UPDATE pg_journal SET state = ?1, detail = ?2 WHERE run_id = ?3 AND seq = ?4",
            )?;
            for (p, w, saved) in writes.iter_mut() {
                if w.seq == 0 {
                    seq += 1;
                    w.seq = seq;
                    ins.execute(rusqlite::params![
                        run_id,
                        seq,
                        kind,
                        p.id.to_string(),
                        p.label,
                        p.old_text_md5,
                        p.new_text_md5,
                        &saved[..],
                        "pending",
                        ""
                    ])?;
                }
            }
            for (s, p, st, detail) in &final_marks {
                if *s > 0 {
                    up.execute(rusqlite::params![st, detail, run_id, s])?;
                } else {
                    seq += 1;
                    ins.execute(rusqlite::params![
                        run_id,
                        seq,
                        kind,
                        p.id.to_string(),
                        p.label,
                        p.old_text_md5,
                        p.new_text_md5,
                        Option::<Vec<u8>>::None,
                        st,
                        detail
                    ])?;
                }
            }
        }
        stx.commit()?;
    }
    durable(state, run_id)?;
    for (s, p, st, detail) in &final_marks {
        match *st {
            "done" if *s > 0 => summary.written += 1,
            "done" => summary.unchanged += 1,
            _ => summary.skipped.push((p.label.clone(), detail.clone())),
        }
    }
    if writes.is_empty() {
        tx.commit().map_err(err("commit"))?;
        return Ok(());
    }
    let ws: Vec<ObjectWrite> = writes
        .iter()
        .map(|(_, w, _)| ObjectWrite {
            seq: w.seq,
            id: w.id,
            text: w.text.clone(),
            md5: w.md5.clone(),
            organizer: w.organizer.clone(),
            expect_md5: w.expect_md5.clone(),
            expect_text_md5: w.expect_text_md5.clone(),
        })
        .collect();
    let done = write_objects(&mut tx, schema, &kind, &ws)?;
    tx.commit().map_err(err("commit"))?;
    let done: std::collections::HashSet<i64> = done.into_iter().collect();
    let mut marks = Vec::new();
    for (p, w, _) in &writes {
        if done.contains(&w.id) {
            summary.written += 1;
            marks.push((w.seq, "done", String::new()));
        } else {
            summary
                .skipped
                .push((p.label.clone(), "changed since plan".into()));
            marks.push((w.seq, "skipped", "changed since plan".to_string()));
        }
    }
    edits::mark(state, run_id, &marks)?;
    Ok(())
}

/// The uid and address columns: per planned value, every row holding it, in one transaction.
fn apply_values(
    db: &mut Db,
    state: &mut State,
    run_id: i64,
    plan_id: i64,
    summary: &mut RunSummary,
) -> Result<()> {
    let todo: Vec<(String, String, String, String)> = {
        let mut st = state.conn.prepare(
            "SELECT table_name, column_name, old_value, new_value FROM pg_plan_values WHERE plan_id = ?1 ORDER BY table_name, column_name, old_value",
        )?;
        let rows = st.query_map([plan_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    if todo.is_empty() {
        return Ok(());
    }
    // One database transaction for every value: their journal steps are made durable once,
    // before it commits.
    let mut tx = db.client.transaction().map_err(err("begin"))?;
    for (table, column, old, new) in todo {
        // Property values holding hrefs into a moved home change inside; other columns whole.
        let href = column == "VALUE";
        let push = table == "APN_SUBSCRIPTIONS" && column == "RESOURCE_KEY";
        let note = table == "NOTIFICATION";
        let rows = if href {
            let h = super::rewrite::href_of(&old);
            edits::select_rows(&mut tx, &table, "strpos(t.VALUE, $1) > 0", &[&h])?
        } else if push {
            edits::select_rows(&mut tx, &table, super::rewrite::APN_FILTER, &[&old])?
        } else if note {
            let f = super::rewrite::notification_filter(&column);
            edits::select_rows(&mut tx, &table, &f, &[&old])?
        } else {
            edits::select_rows(&mut tx, &table, &format!("t.{column} = $1"), &[&old])?
        };
        if rows.is_empty() {
            continue;
        }
        let edits: Vec<RowEdit> = rows
            .into_iter()
            .filter_map(|(ctid, before)| {
                if note {
                    // The data and its MD5, where the text names the old uid as a principal.
                    let v = edits::field(&before, &column)
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let text = super::rewrite::notification_text(v, &old, &new)?;
                    let md5 = md5_hex(text.as_bytes());
                    let mut set = edits::set1(&column, json!(text));
                    set.extend(edits::set1("md5", json!(md5)));
                    return Some(RowEdit {
                        table: table.clone(),
                        ctid,
                        before,
                        set,
                        delete: false,
                    });
                }
                let value = if href {
                    let v = edits::field(&before, "value")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    json!(v.replace(
                        &super::rewrite::href_of(&old),
                        &super::rewrite::href_of(&new)
                    ))
                } else if push {
                    let k = edits::field(&before, "resource_key")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    json!(super::rewrite::push_key(k, &old, &new).unwrap_or_else(|| k.to_string()))
                } else {
                    json!(new)
                };
                Some(RowEdit {
                    table: table.clone(),
                    ctid,
                    before,
                    set: edits::set1(&column, value),
                    delete: false,
                })
            })
            .collect();
        if edits.is_empty() {
            continue;
        }
        run_edits(
            &mut tx,
            state,
            run_id,
            &edits,
            &format!("{table}.{column} {old} -> {new}"),
            summary,
        )?;
    }
    durable(state, run_id)?;
    tx.commit().map_err(err("commit"))?;
    mark_done_after_commit(state, run_id)?;
    Ok(())
}

/// Makes every journal step written so far durable (one fsync of the state database's WAL):
/// the steps of a database transaction are written without waiting for the disk, then this runs
/// once before the transaction commits. Marks written after a commit need no fsync of their own:
/// a step left pending is settled by looking at its row.
pub(super) fn durable(state: &State, run_id: i64) -> Result<()> {
    state.conn.execute_batch("PRAGMA synchronous = FULL")?;
    state
        .conn
        .execute("UPDATE runs SET status = status WHERE id = ?1", [run_id])?;
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
            marks.push((
                *seq,
                "skipped",
                "a row with the new value exists already; both kept".to_string(),
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

/// After a commit: every row step still pending in this run is done (its transaction committed).
fn mark_done_after_commit(state: &mut State, run_id: i64) -> Result<()> {
    state.conn.execute(
        "UPDATE pg_journal SET state = 'done' WHERE run_id = ?1 AND kind IN ('row', 'delete') AND state = 'pending'",
        [run_id],
    )?;
    Ok(())
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

fn homes_plan(state: &State, plan_id: i64) -> Result<Vec<(String, i64, String, String)>> {
    let mut st = state.conn.prepare(
        "SELECT home_table, resource_id, old_uid, new_uid FROM pg_plan_homes WHERE plan_id = ?1 ORDER BY home_table, resource_id",
    )?;
    let rows = st.query_map([plan_id], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Homes kept under an old uid: renamed to the new uid, or — when the server already made a home
/// for the new uid after the rebuild — merged into it: every row pointing at the old home moves
/// to the new one (clashing collection names become `<name>-migrated`), then the emptied old home
/// is removed. Each home is one transaction.
fn apply_homes(
    db: &mut Db,
    state: &mut State,
    run_id: i64,
    plan_id: i64,
    summary: &mut RunSummary,
) -> Result<()> {
    let status = if db.schema.home_status { "STATUS" } else { "0" };
    let homes = homes_plan(state, plan_id)?;
    if homes.is_empty() {
        return Ok(());
    }
    // One database transaction for every home (durable journal once, before it commits).
    let mut tx = db.client.transaction().map_err(err("begin"))?;
    for (table, id, old, new) in homes {
        let rows = edits::select_rows(
            &mut tx,
            &table,
            "t.RESOURCE_ID = $1::bigint AND t.OWNER_UID = $2",
            &[&id, &old],
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
                &[&new, &my_status],
            )
            .map_err(err(&table))?
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
                    run_id,
                    &[e],
                    &format!("{table} {old} -> {new}"),
                    summary,
                )?;
                summary.homes_adopted += 1;
            }
            Some(target) => {
                merge_home(
                    &mut tx,
                    state,
                    run_id,
                    &table,
                    id,
                    target,
                    (&old, &new),
                    (ctid, before),
                    summary,
                )?;
            }
        }
    }
    durable(state, run_id)?;
    tx.commit().map_err(err("commit"))?;
    mark_done_after_commit(state, run_id)?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn merge_home(
    tx: &mut postgres::Transaction<'_>,
    state: &mut State,
    run_id: i64,
    table: &str,
    old_id: i64,
    target: i64,
    (old, new): (&str, &str),
    (home_ctid, home_row): (String, Value),
    summary: &mut RunSummary,
) -> Result<()> {
    let refs = home_references(tx, table)?;
    let meta = format!("{table}_METADATA");
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
    let mut renamed: HashMap<String, String> = HashMap::new();
    let mut notes = Vec::new();
    for (t, cols) in &by_table {
        let filter = cols
            .iter()
            .map(|c| format!("t.{c} = $1::bigint"))
            .collect::<Vec<_>>()
            .join(" OR ");
        let rows = edits::select_rows(tx, t, &filter, &[&old_id])?;
        if rows.is_empty() {
            continue;
        }
        let name_col = bind_name_column(t);
        let mut taken: std::collections::HashSet<String> = std::collections::HashSet::new();
        if let Some(nc) = name_col {
            let home_col = &cols[0];
            for r in tx
                .query(
                    &format!(
                        "SELECT {nc} FROM {t} WHERE {home_col} = $1::bigint AND {nc} IS NOT NULL"
                    ),
                    &[&target],
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
                .filter(|c| edits::field(&before, c).and_then(Value::as_i64) == Some(old_id))
                .map(|c| (c.to_ascii_lowercase(), json!(target)))
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
                        notes.push(format!(
                            "{old} merged into the home the server made for {new}: `{name}` kept as {n} (name clash)"
                        ));
                        renamed.insert(name.to_string(), n.clone());
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
                        if let Some(n) = renamed.get(name) {
                            set.push((nc.to_string(), json!(n)));
                        }
                    }
                }
            }
            list.push(RowEdit {
                table: t.clone(),
                ctid,
                before,
                set,
                delete: false,
            });
        }
        let written = run_edits(
            tx,
            state,
            run_id,
            &list,
            &format!("merge {old} into {new}"),
            summary,
        )?;
        if written.iter().any(|w| !w) {
            notes.push(format!(
                "{old}: some rows of {t} clash with the home of {new} and stayed with the old home"
            ));
        }
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
                &[&old_id],
            )
            .map_err(err(t))?
            .get::<_, i64>(0);
    }
    if still == 0 {
        let mut dels = Vec::new();
        if refs.iter().any(|(t, _)| *t == meta) {
            for (ctid, before) in
                edits::select_rows(tx, &meta, "t.RESOURCE_ID = $1::bigint", &[&old_id])?
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
            table: table.to_string(),
            ctid: home_ctid,
            before: home_row,
            set: Vec::new(),
            delete: true,
        });
        run_edits(
            tx,
            state,
            run_id,
            &dels,
            &format!("merge {old} into {new}: old home removed"),
            summary,
        )?;
    } else {
        notes.push(format!(
            "{old}: the old home stays ({still} rows still point at it)"
        ));
    }
    summary.homes_adopted += 1;
    summary.notes.extend(notes);
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
