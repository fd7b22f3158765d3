//! `rollback` on the database: every row an apply run changed gets its old contents back, newest
//! step first — homes and rows from their journaled JSON, objects from their saved columns (text,
//! MD5, ORGANIZER) with a new revision so clients fetch the old text again. Only bookkeeping
//! (MODIFIED, revision numbers) is left newer. A row changed after the run is skipped unless
//! `--force`. Journaled and resumable like apply.

use super::apply::{finish_run, start_or_resume, unpack_saved, ObjectWrite};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::journal::RunSummary;
use crate::progress::Progress;
use crate::state::{RunEvent, State};
use crate::store::pg::edits;
use crate::store::pg::schema::md5_hex;
use crate::store::pg::Db;

const BATCH: i64 = 500;

fn err(what: &str) -> impl Fn(postgres::Error) -> Error + '_ {
    crate::store::pg::pg_err(what)
}

/// Undoes an apply run on the database (the latest when `run` is `None`).
pub fn rollback(
    progress: &dyn Progress,
    cfg: &Config,
    run: Option<i64>,
    force: bool,
) -> Result<RunSummary> {
    let mut state = State::open_existing(&cfg.state.path)?;
    let target = match run {
        Some(id) => id,
        None => state
            .conn
            .query_row(
                "SELECT COALESCE(MAX(CASE WHEN COALESCE(state, '') != 'rolled-back' THEN id END), MAX(id)) FROM runs WHERE kind = 'apply'",
                [],
                |r| r.get::<_, Option<i64>>(0),
            )?
            .ok_or_else(|| Error::usage("no applied run to roll back"))?,
    };
    let (kind, store): (String, String) = state
        .conn
        .query_row(
            "SELECT kind, store_path FROM runs WHERE id = ?1",
            [target],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => {
                Error::usage(format!("there is no run {target}"))
            }
            e => e.into(),
        })?;
    if kind != "apply" {
        return Err(Error::usage(format!(
            "run {target} is a {kind}, not an apply run"
        )));
    }
    let mut db = Db::open(cfg)?;
    let label = db.target.label.clone();
    if store != label {
        return Err(Error::usage(format!(
            "run {target} changed {store}, not {label}; point [store] dsn at that database"
        )));
    }
    crate::store::pg::connect::refuse_while_connected(&mut db.client, &label, force)?;
    let mut summary = RunSummary {
        kind: "rollback",
        undoes_run: Some(target),
        ..Default::default()
    };
    let Some(run_id) = start_or_resume(&state, &mut summary, &label)? else {
        finished_counts(&mut db, &state, &mut summary, target)?;
        return Ok(summary);
    };
    state.advance_run(target, RunEvent::StartRollback)?;
    let _signals = crate::interrupt::install();
    let schema = db.schema.clone();

    // 1. Row steps (homes, uid columns), newest first, each with its undo journaled.
    let undone: std::collections::HashSet<i64> = {
        let mut st = state.conn.prepare(
            "SELECT undoes_seq FROM pg_journal WHERE run_id = ?1 AND undoes_seq IS NOT NULL AND state != 'pending'",
        )?;
        let rows = st.query_map([run_id], |r| r.get::<_, i64>(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    // Pending steps too: an interrupted apply may have committed them before marking them.
    let steps = edits::steps(&state, target, "'done', 'pending'", true)?;
    let bar = progress.start("restoring", None);
    for step in steps.into_iter().filter(|s| !undone.contains(&s.seq)) {
        let mut tx = db.client.transaction().map_err(err("begin"))?;
        let pk = edits::primary_key(&mut tx, &step.table)?;
        let here = if step.kind == "delete" {
            match edits::find_row(&mut tx, &step.table, &pk, &step.before)? {
                Some(_) => None,
                None => Some(String::new()),
            }
        } else {
            edits::find_row(&mut tx, &step.table, &pk, &step.after)?
        };
        let undo = match here {
            Some(ctid) => edits::undo_of(&step, ctid),
            None => {
                // Not as the run left it: already restored, or someone else's change.
                let restored = edits::find_row(&mut tx, &step.table, &pk, &step.before)?.is_some();
                let detail = if restored {
                    "already restored".to_string()
                } else {
                    "changed after the run; left as it is".to_string()
                };
                if !restored {
                    summary
                        .skipped
                        .push((format!("{} {}", step.table, step.before), detail.clone()));
                }
                // Record that this step was looked at (no undo to do).
                let seqs = edits::journal_pending(
                    &mut state,
                    run_id,
                    "undo",
                    &[edits::undo_of(&step, String::new())],
                    &[Some(step.seq)],
                    &step.label,
                )?;
                edits::mark(
                    &mut state,
                    run_id,
                    &[(seqs[0], if restored { "done" } else { "skipped" }, detail)],
                )?;
                tx.commit().map_err(err("commit"))?;
                continue;
            }
        };
        let seqs = edits::journal_pending(
            &mut state,
            run_id,
            "undo",
            std::slice::from_ref(&undo),
            &[Some(step.seq)],
            &step.label,
        )?;
        let ok = edits::write(&mut tx, &undo)?;
        tx.commit().map_err(err("commit"))?;
        let (st, detail) = if ok {
            if step.table.ends_with("_HOME") {
                summary.homes_adopted += 1;
            }
            ("done", String::new())
        } else {
            summary.skipped.push((
                format!("{} {}", step.table, step.before),
                "a row with the old value exists again".into(),
            ));
            (
                "skipped",
                "a row with the old value exists again".to_string(),
            )
        };
        edits::mark(&mut state, run_id, &[(seqs[0], st, detail)])?;
        bar.inc(1);
    }

    // 2. Objects: the saved columns back, a batch at a time, newest first.
    let mut before_seq = i64::MAX;
    loop {
        type Row = (i64, String, String, String, String, String, Vec<u8>);
        let page: Vec<Row> = {
            let mut st = state.conn.prepare(
                "SELECT j.seq, j.table_name, j.key, j.label, j.before_hash, j.after_hash, j.old_row FROM pg_journal j
                 WHERE j.run_id = ?1 AND j.kind = 'object' AND j.state IN ('done', 'pending') AND j.old_row IS NOT NULL AND j.seq < ?2
                   AND NOT EXISTS (SELECT 1 FROM pg_journal u WHERE u.run_id = ?3 AND u.undoes_seq = j.seq AND u.state != 'pending')
                 ORDER BY j.seq DESC LIMIT ?4",
            )?;
            let rows = st.query_map(rusqlite::params![target, before_seq, run_id, BATCH], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let Some(last) = page.last() else { break };
        before_seq = last.0;
        for kind in ["calendar", "vcard"] {
            let items: Vec<&Row> = page.iter().filter(|r| r.1 == kind).collect();
            if items.is_empty() {
                continue;
            }
            let ids: Vec<i64> = items.iter().filter_map(|r| r.2.parse().ok()).collect();
            let mut tx = db.client.transaction().map_err(err("begin"))?;
            let rows = super::apply::locked_objects(&mut tx, &schema, kind, &ids)?;
            let mut writes = Vec::new();
            let mut undo_rows = Vec::new();
            for (seq, _, key, label, before, after, blob) in items {
                let id: i64 = key.parse().unwrap_or_default();
                let Some(row) = rows.get(&id) else {
                    summary
                        .skipped
                        .push((label.clone(), "deleted after the run".into()));
                    undo_rows.push((
                        *seq,
                        label.clone(),
                        "skipped",
                        "deleted after the run".to_string(),
                        None,
                    ));
                    continue;
                };
                let cur = row.text_md5.clone();
                if cur == *before {
                    undo_rows.push((
                        *seq,
                        label.clone(),
                        "done",
                        "already restored".to_string(),
                        None,
                    ));
                    continue;
                }
                if cur != *after && !force {
                    let why =
                        format!("changed after the run (md5 {cur}); use --force to restore anyway");
                    summary.skipped.push((label.clone(), why.clone()));
                    undo_rows.push((*seq, label.clone(), "skipped", why, None));
                    continue;
                }
                let saved = unpack_saved(blob)?;
                if md5_hex(saved.text.as_bytes()) != *before {
                    return Err(Error::runtime(format!(
                        "state database: the saved text of {label} does not match its hash"
                    )));
                }
                writes.push(ObjectWrite {
                    seq: 0,
                    id,
                    text: saved.text,
                    md5: saved.md5,
                    organizer: saved.organizer,
                    expect_md5: row.md5.clone(),
                    expect_text_md5: cur,
                });
                undo_rows.push((*seq, label.clone(), "pending", String::new(), Some(id)));
            }
            // Journal the undo steps (pending) before writing.
            let stx = state.conn.transaction()?;
            let mut seq: i64 = stx.query_row(
                "SELECT COALESCE(MAX(seq), 0) FROM pg_journal WHERE run_id = ?1",
                [run_id],
                |r| r.get(0),
            )?;
            let mut pending_seqs = Vec::new();
            {
                let mut ins = stx.prepare(
                    "INSERT INTO pg_journal (run_id, seq, kind, table_name, key, label, undoes_seq, state, detail) VALUES (?1, ?2, 'undo', ?3, ?4, ?5, ?6, ?7, ?8)",
                )?;
                for (undoes, label, st, detail, id) in &undo_rows {
                    seq += 1;
                    ins.execute(rusqlite::params![
                        run_id,
                        seq,
                        kind,
                        id.map(|i| i.to_string()).unwrap_or_default(),
                        label,
                        undoes,
                        st,
                        detail
                    ])?;
                    if let Some(id) = id {
                        pending_seqs.push((seq, *id));
                    }
                }
            }
            stx.commit()?;
            let done = super::apply::write_objects(&mut tx, &schema, kind, &writes)?;
            tx.commit().map_err(err("commit"))?;
            let done: std::collections::HashSet<i64> = done.into_iter().collect();
            let mut marks = Vec::new();
            for (seq, id) in pending_seqs {
                if done.contains(&id) {
                    summary.written += 1;
                    marks.push((seq, "done", String::new()));
                } else {
                    marks.push((seq, "skipped", "changed while restoring".to_string()));
                }
            }
            edits::mark(&mut state, run_id, &marks)?;
            bar.inc(writes.len() as u64);
        }
        if super::apply::stop_if_signalled(&state, &mut summary)? {
            bar.finish();
            return Ok(summary);
        }
    }
    bar.finish();
    // Undo steps an interrupted rollback left pending were looked at again above (pending undos
    // do not count as undone: their row showed whether the transaction committed); drop them.
    state.conn.execute(
        "DELETE FROM pg_journal WHERE run_id = ?1 AND kind = 'undo' AND state = 'pending'",
        [run_id],
    )?;

    // 3. The delegate database files (journaled by the file journal as 'database' steps).
    restore_databases(&state, target, cfg, force, &mut summary)?;
    finish_run(&state, run_id)?;
    state.advance_run(target, RunEvent::FinishRollback)?;
    Ok(summary)
}

/// For a rollback that already finished: what it did, counted from its journal (objects and
/// homes restored, steps skipped), as the run itself reported it.
fn finished_counts(db: &mut Db, state: &State, s: &mut RunSummary, target: i64) -> Result<()> {
    let run = s.run_id;
    s.finished_at = state.run_finished_at(run);
    let count = |sql: &str| -> Result<u64> {
        Ok(state.conn.query_row(sql, [run], |r| r.get::<_, i64>(0))? as u64)
    };
    s.written = count(
        "SELECT COUNT(*) FROM pg_journal WHERE run_id = ?1 AND kind = 'undo' AND table_name IN ('calendar', 'vcard') AND state = 'done' AND detail = ''",
    )?;
    s.homes_adopted = count(
        "SELECT COUNT(*) FROM pg_journal WHERE run_id = ?1 AND kind = 'undo' AND table_name IN ('CALENDAR_HOME', 'ADDRESSBOOK_HOME', 'NOTIFICATION_HOME') AND state = 'done' AND detail = ''",
    )?;
    let mut st = state.conn.prepare(
        "SELECT label, detail FROM pg_journal WHERE run_id = ?1 AND state = 'skipped' ORDER BY seq",
    )?;
    let rows = st.query_map([run], |r| Ok((r.get(0)?, r.get(1)?)))?;
    s.skipped = rows.collect::<rusqlite::Result<_>>()?;
    // The objects it restored, checked against the text they had before the apply run.
    let restored: Vec<(String, i64, String, String)> = {
        let mut st = state.conn.prepare(
            "SELECT u.table_name, CAST(u.key AS INTEGER), u.label, a.before_hash FROM pg_journal u
             JOIN pg_journal a ON a.run_id = ?2 AND a.seq = u.undoes_seq
             WHERE u.run_id = ?1 AND u.kind = 'undo' AND u.table_name IN ('calendar', 'vcard') AND u.state = 'done' AND u.detail = ''
             ORDER BY u.seq",
        )?;
        let rows = st.query_map([run, target], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    s.checked = Some(super::apply::check_hashes(db, &restored)?);
    Ok(())
}

/// Restores the delegate databases an apply run rewrote (3.x–5.x `proxies.sqlite`).
fn restore_databases(
    state: &State,
    target: i64,
    cfg: &Config,
    force: bool,
    summary: &mut RunSummary,
) -> Result<()> {
    let backups = crate::journal::Backups::open(&cfg.state.path)?;
    let mut st = state.conn.prepare(
        "SELECT rel_path, before_sha256, after_sha256, backup_sha256, meta_json FROM journal
         WHERE run_id = ?1 AND action = 'database' AND state = 'done' AND backup_sha256 IS NOT NULL ORDER BY seq DESC",
    )?;
    let rows = st.query_map([target], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Option<String>>(4)?,
        ))
    })?;
    for r in rows {
        let (path, before, after, backup, meta) = r?;
        let p = std::path::Path::new(&path);
        let cur = std::fs::read(p)
            .map(|b| crate::store::write::sha256_hex(&b))
            .unwrap_or_default();
        if cur == before {
            continue;
        }
        if cur != after && !force {
            summary.skipped.push((
                path.clone(),
                "changed after the run; use --force to restore anyway".into(),
            ));
            continue;
        }
        let bytes = backups.get(&backup)?;
        let meta = match meta {
            Some(m) => {
                let v: serde_json::Value = serde_json::from_str(&m)?;
                crate::store::write::FileMeta {
                    uid: v["uid"].as_u64().unwrap_or(0) as u32,
                    gid: v["gid"].as_u64().unwrap_or(0) as u32,
                    mode: v["mode"].as_u64().unwrap_or(0o600) as u32,
                    xattrs: Vec::new(),
                }
            }
            None => crate::store::write::FileMeta::of(p)?,
        };
        crate::store::write::restore(p, &bytes, &meta)?;
        summary.databases += 1;
    }
    Ok(())
}
