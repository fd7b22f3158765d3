//! Files outside the store a run rewrites: the delegate and auto-accept databases, a whole file
//! such as augments.xml.

use super::saved::{Backups, SavedMeta};
use super::summary::RunSummary;
use crate::error::{Error, Result};
use crate::state::{now_rfc3339, State};
use crate::store::write::{restore, sha256_hex, FileMeta};
use std::path::{Path, PathBuf};

/// Rewrites the delegate and auto-accept databases as planned, each a journaled step with a
/// backup of the whole file.
pub(crate) fn apply_databases(
    state: &mut State,
    run_id: i64,
    plan_id: i64,
    backups: &Backups,
    summary: &mut RunSummary,
) -> Result<()> {
    // A database step left pending: SQLite commits atomically, so the file either still has its
    // planned bytes (redo) or holds our committed change (done).
    let pending: Vec<(i64, String, String)> = {
        let mut st = state.conn.prepare(
            "SELECT seq, rel_path, before_sha256 FROM journal WHERE run_id = ?1 AND state = 'pending' AND action = 'database'",
        )?;
        let rows = st.query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for (seq, path, before) in pending {
        let current = std::fs::read(&path)
            .map(|b| sha256_hex(&b))
            .unwrap_or_default();
        if current == before {
            let json: String = state.conn.query_row(
                "SELECT plan_json FROM plan_databases WHERE plan_id = ?1 AND path = ?2",
                rusqlite::params![plan_id, path],
                |r| r.get(0),
            )?;
            let plan: crate::provision::proxy::DbPlan = serde_json::from_str(&json)?;
            crate::provision::proxy::apply_db_rewrite(Path::new(&path), &plan)?;
        }
        let after = std::fs::read(&path)
            .map(|b| sha256_hex(&b))
            .unwrap_or_default();
        state.conn.execute(
            "UPDATE journal SET state = 'done', after_sha256 = ?1 WHERE run_id = ?2 AND seq = ?3",
            rusqlite::params![after, run_id, seq],
        )?;
    }
    let todo: Vec<(String, String, String)> = {
        let mut st = state.conn.prepare(
            "SELECT d.path, d.old_sha256, d.plan_json FROM plan_databases d
             WHERE d.plan_id = ?1 AND d.changes + d.dropped > 0
               AND NOT EXISTS (SELECT 1 FROM journal j WHERE j.run_id = ?2 AND j.rel_path = d.path)
             ORDER BY d.path",
        )?;
        let rows = st.query_map(rusqlite::params![plan_id, run_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for (path, old_sha, json) in todo {
        let p = Path::new(&path);
        for suffix in ["-wal", "-journal"] {
            let side = PathBuf::from(format!("{path}{suffix}"));
            if side.exists() {
                return Err(Error::usage(format!(
                    "{} exists: the database is in use or was not closed cleanly; stop the calendar server first",
                    side.display()
                )));
            }
        }
        let seq: i64 = state.conn.query_row(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM journal WHERE run_id = ?1",
            [run_id],
            |r| r.get(0),
        )?;
        let bytes = std::fs::read(p).map_err(|e| Error::io("cannot read", p, e))?;
        if sha256_hex(&bytes) != old_sha {
            state.conn.execute(
                "INSERT INTO journal (run_id, seq, action, rel_path, before_sha256, state, detail) VALUES (?1, ?2, 'database', ?3, ?4, 'skipped', 'changed since plan')",
                rusqlite::params![run_id, seq, path, old_sha],
            )?;
            summary.skipped.push((path, "changed since plan".into()));
            continue;
        }
        let backup = backups.put(&bytes)?;
        backups.sync()?;
        let meta = serde_json::to_string(&SavedMeta::from_meta(&FileMeta::of(p)?))?;
        state.conn.execute(
            "INSERT INTO journal (run_id, seq, action, rel_path, before_sha256, backup_sha256, meta_json, state) VALUES (?1, ?2, 'database', ?3, ?4, ?5, ?6, 'pending')",
            rusqlite::params![run_id, seq, path, old_sha, backup, meta],
        )?;
        let plan: crate::provision::proxy::DbPlan = serde_json::from_str(&json)?;
        crate::provision::proxy::apply_db_rewrite(p, &plan)?;
        let after = std::fs::read(p)
            .map(|b| sha256_hex(&b))
            .map_err(|e| Error::io("cannot read", p, e))?;
        state.conn.execute(
            "UPDATE journal SET state = 'done', after_sha256 = ?1 WHERE run_id = ?2 AND seq = ?3",
            rusqlite::params![after, run_id, seq],
        )?;
        summary.databases += 1;
    }
    Ok(())
}

/// Replaces a whole file (e.g. `augments.xml`) as a journaled run of its own, so `rollback --run N`
/// restores it: the original saved in backups/, the step durable before the write, owner, mode and
/// attributes kept. Returns the run id and the backup's SHA-256.
pub fn journaled_file_write(
    state_dir: &Path,
    kind: &'static str,
    path: &Path,
    new_bytes: &[u8],
) -> Result<(i64, String)> {
    let mut state = State::open(state_dir)?;
    let backups = Backups::open(state_dir)?;
    let old = std::fs::read(path).map_err(|e| Error::io("cannot read", path, e))?;
    let backup = backups.put(&old)?;
    backups.sync()?;
    let meta = FileMeta::of(path)?;
    let tx = state.conn.transaction()?;
    tx.execute(
        "INSERT INTO runs (kind, store_path, started_at, status, state) VALUES (?1, ?2, ?3, 'running', 'applying')",
        rusqlite::params![
            kind,
            path.parent().unwrap_or(Path::new("/")).to_string_lossy(),
            now_rfc3339()
        ],
    )?;
    let run_id = tx.last_insert_rowid();
    tx.execute(
        "INSERT INTO journal (run_id, seq, action, rel_path, before_sha256, after_sha256, backup_sha256, meta_json, state)
         VALUES (?1, 1, 'file', ?2, ?3, ?4, ?5, ?6, 'pending')",
        rusqlite::params![
            run_id,
            path.to_string_lossy(),
            backup,
            sha256_hex(new_bytes),
            backup,
            serde_json::to_string(&SavedMeta::from_meta(&meta))?
        ],
    )?;
    tx.commit()?;
    restore(path, new_bytes, &meta)?;
    state.conn.execute(
        "UPDATE journal SET state = 'done' WHERE run_id = ?1 AND seq = 1",
        [run_id],
    )?;
    state.conn.execute(
        "UPDATE runs SET status = 'done', state = 'applied', finished_at = ?1 WHERE id = ?2",
        rusqlite::params![now_rfc3339(), run_id],
    )?;
    Ok((run_id, backup))
}
