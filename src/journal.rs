//! The write-ahead journal: `apply` carries out a stored plan, `rollback` undoes a run.
//!
//! Before a resource is replaced, its original bytes are saved in the state folder
//! (`backups/`, content-addressed, files 0600 in folders 0700) and the step is recorded as
//! `pending` with the original owner, mode and extended attributes; the record is durable before the
//! store is touched. After the write the step is marked `done`. Steps are made durable in batches,
//! so the cost of syncing stays bounded, and no batch is written before it is durable.
//!
//! After a crash (`kill -9` at any instant) the next `apply` finds the run still `running` and
//! resumes it: a pending step whose file already holds the new bytes is done, one that still holds
//! the old bytes is redone, anything else is someone else's change and is skipped. The store ends
//! byte for byte as an uninterrupted run leaves it.

use crate::cli::{ApplyArgs, Context, Outcome, RollbackArgs};
use crate::config::Config;
use crate::error::{Error, ExitStatus, Result};
use crate::homes::{self, HomeStep};
use crate::state::{create_private_dir, now_rfc3339, State};
use crate::store::props::{edits_done, edits_from_json, AttrEdit};
use crate::store::write::{
    bump_ctag, prepare_write_with, restore, sha256_hex, sync_filesystem, write_resource_with,
    FileMeta, PreparedWrite, WriteError, WriteOptions,
};
use base64::Engine as _;
use serde_json::json;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Steps made durable together.
const BATCH: usize = 1024;

/// Content-addressed copies of original files, in `<state>/backups/<aa>/<sha256>`.
pub struct Backups {
    dir: PathBuf,
}

impl Backups {
    pub fn open(state_dir: &Path) -> Result<Backups> {
        let dir = state_dir.join("backups");
        create_private_dir(&dir)?;
        Ok(Backups { dir })
    }

    fn path(&self, sha: &str) -> PathBuf {
        self.dir.join(&sha[..2]).join(sha)
    }

    /// Saves bytes (mode 0600) and returns their SHA-256. The caller makes them durable with
    /// [`Backups::sync`] before relying on them.
    pub fn put(&self, bytes: &[u8]) -> Result<String> {
        let sha = sha256_hex(bytes);
        let path = self.path(&sha);
        let sub = path.parent().unwrap_or(&self.dir);
        create_private_dir(sub)?;
        // A backup already there is kept when it is whole (it may be referenced by an earlier step:
        // never truncate it). One left partial by a crash was never referenced (steps refer to
        // backups only after `sync`) and is written again, in place.
        if std::fs::read(&path).is_ok_and(|b| sha256_hex(&b) == sha) {
            return Ok(sha);
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io("cannot write backup", &path, e))?;
        f.write_all(bytes)
            .map_err(|e| Error::io("cannot write backup", &path, e))?;
        Ok(sha)
    }

    /// Makes every backup written so far durable, files and folders (one `syncfs` per batch).
    pub fn sync(&self) -> Result<()> {
        sync_filesystem(&self.dir)
    }

    /// Reads a backup back, checking its hash.
    pub fn get(&self, sha: &str) -> Result<Vec<u8>> {
        let path = self.path(sha);
        let bytes = std::fs::read(&path).map_err(|e| Error::io("cannot read backup", &path, e))?;
        if sha256_hex(&bytes) != sha {
            return Err(Error::runtime(format!(
                "backup {} is damaged (hash mismatch)",
                path.display()
            )));
        }
        Ok(bytes)
    }
}

/// One resource step of a batch, before it is recorded.
#[derive(Default)]
struct Step {
    seq: i64,
    rel: String,
    old_sha: String,
    new_sha: String,
    backup: Option<String>,
    meta: Option<String>,
    state: &'static str,
    detail: String,
    prepared: Option<PreparedWrite>,
}

impl Step {
    fn skip(&mut self, why: String) {
        self.state = "skipped";
        self.detail = why;
    }
}

fn same_filesystem(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev(),
        _ => false,
    }
}

/// Original owner, group, mode and attributes, as stored in the journal.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedMeta {
    uid: u32,
    gid: u32,
    mode: u32,
    /// Attribute name and base64 value.
    xattrs: Vec<(String, String)>,
}

impl SavedMeta {
    fn from_meta(m: &FileMeta) -> SavedMeta {
        let b64 = base64::engine::general_purpose::STANDARD;
        SavedMeta {
            uid: m.uid,
            gid: m.gid,
            mode: m.mode,
            xattrs: m
                .xattrs
                .iter()
                .map(|(n, v)| (n.clone(), b64.encode(v)))
                .collect(),
        }
    }

    fn to_meta(&self) -> Result<FileMeta> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut xattrs = Vec::new();
        for (n, v) in &self.xattrs {
            xattrs.push((
                n.clone(),
                b64.decode(v)
                    .map_err(|e| Error::runtime(format!("journal: bad attribute {n}: {e}")))?,
            ));
        }
        Ok(FileMeta {
            uid: self.uid,
            gid: self.gid,
            mode: self.mode,
            xattrs,
        })
    }
}

/// How a run ended.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RunSummary {
    pub run_id: i64,
    pub kind: &'static str,
    pub plan_id: Option<i64>,
    pub undoes_run: Option<i64>,
    pub resumed: bool,
    pub already_done: bool,
    pub written: u64,
    pub unchanged: u64,
    pub skipped: Vec<(String, String)>,
    pub homes_adopted: u64,
    /// Delegate / auto-accept databases rewritten.
    pub databases: u64,
    /// Things a human should know (merged homes, renamed collections).
    pub notes: Vec<String>,
}

/// Looks for a running CalendarServer on the store: a pid file whose process is alive.
pub fn server_running(store: &Path) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    for dir in [Some(store), store.parent()].into_iter().flatten() {
        for name in [
            "caldavd.pid",
            "Data/caldavd.pid",
            "Run/caldavd.pid",
            "caldavd.lock",
        ] {
            candidates.push(dir.join(name));
        }
    }
    candidates.push(PathBuf::from("/var/run/caldavd/caldavd.pid"));
    candidates.push(PathBuf::from("/var/run/caldavd.pid"));
    for p in candidates {
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        let Ok(pid) = text.trim().parse::<i32>() else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks that the process exists.
        if pid > 0 && unsafe { libc::kill(pid, 0) } == 0 {
            return Some(p);
        }
    }
    None
}

/// Refuses to touch a store the calendar server is running on (it caches properties and would
/// overwrite the changes), unless forced.
fn refuse_while_server_runs(store: &Path, force: bool) -> Result<()> {
    if force {
        return Ok(());
    }
    match server_running(store) {
        Some(pid) => Err(Error::usage(format!(
            "the calendar server seems to be running ({} names a live process); stop it first — it caches properties and would overwrite the changes — or pass --force",
            pid.display()
        ))),
        None => Ok(()),
    }
}

/// The run to carry on with: the unfinished one of the same kind and target, or a new one.
/// `None` (with `summary.already_done`) when that run already finished.
fn start_or_resume(state: &State, summary: &mut RunSummary, store: &Path) -> Result<Option<i64>> {
    let (target_col, target) = match summary.undoes_run {
        Some(run) => ("undoes_run", run),
        None => ("plan_id", summary.plan_id.unwrap_or_default()),
    };
    let last: Option<(i64, String)> = state
        .conn
        .query_row(
            &format!("SELECT id, status FROM runs WHERE kind = ?1 AND {target_col} = ?2 ORDER BY id DESC LIMIT 1"),
            rusqlite::params![summary.kind, target],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ok();
    let id = match last {
        Some((id, status)) if status == "done" => {
            summary.run_id = id;
            summary.already_done = true;
            return Ok(None);
        }
        Some((id, _)) => {
            summary.resumed = true;
            id
        }
        None => {
            state.conn.execute(
                &format!("INSERT INTO runs (kind, {target_col}, store_path, started_at, status) VALUES (?1, ?2, ?3, ?4, 'running')"),
                rusqlite::params![summary.kind, target, store.to_string_lossy(), now_rfc3339()],
            )?;
            state.conn.last_insert_rowid()
        }
    };
    summary.run_id = id;
    Ok(Some(id))
}

fn store_path_of(cfg: &Config) -> PathBuf {
    cfg.store
        .path
        .canonicalize()
        .unwrap_or_else(|_| cfg.store.path.clone())
}

/// Carries out a stored plan (the latest when `plan` is `None`).
pub fn apply(
    ctx: &Context,
    cfg: &Config,
    plan: Option<i64>,
    force: bool,
    rehearsal: bool,
) -> Result<RunSummary> {
    if cfg.store.kind == crate::config::StoreKind::CalendarserverPg {
        return crate::store::pg::apply(ctx, cfg, plan, force, rehearsal);
    }
    let mut state = State::open_existing(&cfg.state.path)?;
    let plan_id = state.plan_or_latest(plan)?;
    let planned_store = state.plan_text(plan_id, "store_path")?;
    let store = store_path_of(cfg);
    if !rehearsal && Path::new(&planned_store) != store {
        return Err(Error::usage(format!(
            "plan {plan_id} was made for the store {planned_store}, not {}; plan again for this store",
            store.display()
        )));
    }
    let roots = crate::addressbooks::apply_roots(&state, plan_id, cfg, rehearsal)?;
    for root in roots.all() {
        refuse_while_server_runs(root, force)?;
    }
    let started = std::time::Instant::now();
    let backups = Backups::open(&cfg.state.path)?;
    let mut summary = RunSummary {
        kind: "apply",
        plan_id: Some(plan_id),
        ..Default::default()
    };
    let Some(run_id) = start_or_resume(&state, &mut summary, &store)? else {
        return Ok(summary);
    };
    crate::addressbooks::record_run_root(&state, run_id, &roots)?;
    let opts = WriteOptions {
        xattr_prefix: cfg.store.xattr_prefix.clone(),
        plain_files: cfg.store.kind == crate::config::StoreKind::IcsDir,
    };

    // 1. Steps left pending by a crash.
    let pending: Vec<(i64, String, String, String)> = {
        let mut st = state.conn.prepare(
            "SELECT seq, rel_path, before_sha256, after_sha256 FROM journal WHERE run_id = ?1 AND state = 'pending' AND action = 'rewrite' ORDER BY seq",
        )?;
        let rows = st.query_map([run_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for (seq, rel, before, after) in pending {
        let path = roots.join(&rel);
        let current = std::fs::read(&path)
            .map(|b| sha256_hex(&b))
            .unwrap_or_default();
        let edits = planned_edits(&state, plan_id, &rel)?;
        let (st, detail) = if current == after && edits_done(&path, &edits)? {
            summary.written += 1;
            ("done", String::new())
        } else if current == before {
            let blob: Vec<u8> = state.conn.query_row(
                "SELECT new_bytes FROM plan_resources WHERE plan_id = ?1 AND rel_path = ?2",
                rusqlite::params![plan_id, rel],
                |r| r.get(0),
            )?;
            let bytes = crate::plan::unpack(&blob, &after)?;
            match write_resource_with(&path, &before, &bytes, &opts, &edits) {
                Ok(_) => {
                    summary.written += 1;
                    ("done", String::new())
                }
                Err(WriteError::Changed { .. }) => ("skipped", "changed since plan".to_string()),
                Err(WriteError::Failed(e)) => return Err(e),
            }
        } else {
            (
                "skipped",
                "changed since plan (found after an interrupted run)".to_string(),
            )
        };
        if st == "skipped" {
            summary.skipped.push((rel.clone(), detail.clone()));
        }
        state.conn.execute(
            "UPDATE journal SET state = ?1, detail = ?2 WHERE run_id = ?3 AND seq = ?4",
            rusqlite::params![st, detail, run_id, seq],
        )?;
    }

    // 2. The plan's resources not yet journaled, in batches.
    let next_seq: i64 = state.conn.query_row(
        "SELECT COALESCE(MAX(seq), 0) FROM journal WHERE run_id = ?1",
        [run_id],
        |r| r.get(0),
    )?;
    let todo: Vec<(String, String, String)> = {
        let mut st = state.conn.prepare(
            "SELECT p.rel_path, p.old_sha256, p.new_sha256 FROM plan_resources p
             WHERE p.plan_id = ?1 AND NOT EXISTS (SELECT 1 FROM journal j WHERE j.run_id = ?2 AND j.rel_path = p.rel_path)
             ORDER BY p.rel_path",
        )?;
        let rows = st.query_map(rusqlite::params![plan_id, run_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let bar = crate::cli::progress_bar(ctx, Some(todo.len() as u64), "applying");
    let mut seq = next_seq;
    for chunk in todo.chunks(BATCH) {
        // a. Save each original (bytes in backups/, metadata for the journal) and write the new
        //    bytes to a temporary file beside it. Nothing in the store is replaced yet.
        // The planned bytes come from the database on this thread; the file work runs on every
        // core (it is mostly system calls).
        let mut work = Vec::with_capacity(chunk.len());
        for (rel, old_sha, new_sha) in chunk {
            seq += 1;
            let (blob, edits): (Vec<u8>, Option<String>) = state.conn.query_row(
                "SELECT new_bytes, attr_edits FROM plan_resources WHERE plan_id = ?1 AND rel_path = ?2",
                rusqlite::params![plan_id, rel],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let edits = edits_from_json(edits.as_deref())?;
            work.push((seq, rel, old_sha, new_sha, (blob, edits)));
        }
        use rayon::prelude::*;
        let steps: Vec<Step> = work
            .into_par_iter()
            .map(|(seq, rel, old_sha, new_sha, planned)| -> Result<Step> {
                let (blob, edits) = planned;
                let mut step = Step {
                    seq,
                    rel: rel.clone(),
                    old_sha: old_sha.clone(),
                    new_sha: new_sha.clone(),
                    ..Default::default()
                };
                let path = roots.join(rel);
                let bytes = match std::fs::read(&path) {
                    Err(e) => {
                        step.skip(format!("cannot read: {e}"));
                        return Ok(step);
                    }
                    Ok(b) => b,
                };
                let sha = sha256_hex(&bytes);
                // (A resource whose only change is an attribute keeps its bytes.)
                if sha == *new_sha && edits_done(&path, &edits)? {
                    step.state = "done";
                    step.detail = "already rewritten".into();
                } else if sha != *old_sha {
                    step.skip("changed since plan".into());
                } else {
                    step.backup = Some(backups.put(&bytes)?);
                    step.meta = Some(serde_json::to_string(&SavedMeta::from_meta(
                        &FileMeta::of(&path)?,
                    ))?);
                    let new_bytes = crate::plan::unpack(&blob, new_sha)?;
                    match prepare_write_with(&path, old_sha, &new_bytes, &opts, &edits, false) {
                        Ok(p) => {
                            step.state = "pending";
                            step.prepared = Some(p);
                        }
                        Err(WriteError::Changed { .. }) => step.skip("changed since plan".into()),
                        Err(WriteError::Failed(e)) => return Err(e),
                    }
                }
                Ok(step)
            })
            .collect::<Result<_>>()?;
        summary.unchanged += steps.iter().filter(|s| s.state == "done").count() as u64;
        // b. Backups and temporary files durable (one syncfs per file system), then the steps
        //    recorded durably: only now may an original be replaced.
        backups.sync()?;
        for root in roots.all() {
            if !same_filesystem(root, &cfg.state.path) {
                sync_filesystem(root)?;
            }
        }
        {
            let tx = state.conn.transaction()?;
            {
                let mut ins = tx.prepare(
                    "INSERT INTO journal (run_id, seq, action, rel_path, before_sha256, after_sha256, backup_sha256, meta_json, state, detail)
                     VALUES (?1, ?2, 'rewrite', ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?;
                for s in &steps {
                    ins.execute(rusqlite::params![
                        run_id, s.seq, s.rel, s.old_sha, s.new_sha, s.backup, s.meta, s.state,
                        s.detail
                    ])?;
                }
            }
            tx.commit()?;
        }
        // c. The renames, one new ctag per collection, made durable together; then marked done.
        let mut collections = std::collections::BTreeMap::new();
        let mut prepared = Vec::new();
        for s in steps {
            if s.state == "skipped" {
                summary.skipped.push((s.rel.clone(), s.detail.clone()));
            }
            if let Some(p) = s.prepared {
                collections.insert(p.folder.clone(), p.prefix.clone());
                prepared.push((s.seq, s.rel, p));
            }
        }
        bar.inc(chunk.len() as u64);
        let committed: Vec<(i64, String, std::result::Result<(), WriteError>)> = prepared
            .into_par_iter()
            .map(|(seq, rel, p)| (seq, rel, p.commit().map(|_| ())))
            .collect();
        let mut results = Vec::with_capacity(committed.len());
        for (seq, rel, r) in committed {
            match r {
                Ok(()) => {
                    summary.written += 1;
                    results.push((seq, "done", String::new()));
                }
                Err(WriteError::Changed { .. }) => {
                    summary.skipped.push((rel, "changed since plan".into()));
                    results.push((seq, "skipped", "changed since plan".to_string()));
                }
                Err(WriteError::Failed(e)) => return Err(e),
            }
        }
        if !opts.plain_files {
            for (folder, prefix) in &collections {
                bump_ctag(folder, prefix)?;
            }
        }
        if !results.is_empty() {
            for root in roots.all() {
                sync_filesystem(root)?;
            }
        }
        let tx = state.conn.transaction()?;
        for (seq, st, detail) in results {
            tx.execute(
                "UPDATE journal SET state = ?1, detail = ?2 WHERE run_id = ?3 AND seq = ?4",
                rusqlite::params![st, detail, run_id, seq],
            )?;
        }
        tx.commit()?;
    }
    bar.finish_and_clear();
    tracing::info!(
        "resources: {} written in {:.2?}",
        summary.written,
        started.elapsed()
    );
    apply_databases(&mut state, run_id, plan_id, &backups, &mut summary)?;
    adopt_homes(&mut state, run_id, plan_id, &roots, &mut summary)?;
    crate::addressbooks::adopt_homes(
        &mut state,
        run_id,
        plan_id,
        &roots,
        &mut summary.homes_adopted,
        &mut summary.notes,
    )?;
    tracing::info!(
        "homes: {} adopted, run finished at {:.2?}",
        summary.homes_adopted,
        started.elapsed()
    );
    state.conn.execute(
        "UPDATE runs SET status = 'done', finished_at = ?1 WHERE id = ?2",
        rusqlite::params![now_rfc3339(), run_id],
    )?;
    Ok(summary)
}

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
        "INSERT INTO runs (kind, store_path, started_at, status) VALUES (?1, ?2, ?3, 'running')",
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
        "UPDATE runs SET status = 'done', finished_at = ?1 WHERE id = ?2",
        rusqlite::params![now_rfc3339(), run_id],
    )?;
    Ok((run_id, backup))
}

/// Records a step as pending (durably), takes it, marks it done.
pub(crate) fn journaled_home_step(
    state: &mut State,
    run_id: i64,
    store: &Path,
    step: &HomeStep,
) -> Result<()> {
    let seq: i64 = state.conn.query_row(
        "SELECT COALESCE(MAX(seq), 0) + 1 FROM journal WHERE run_id = ?1",
        [run_id],
        |r| r.get(0),
    )?;
    let (rel, target, meta) = step.to_row();
    state.conn.execute(
        "INSERT INTO journal (run_id, seq, action, rel_path, target_path, meta_json, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending')",
        rusqlite::params![run_id, seq, step.action(), rel, target, meta],
    )?;
    homes::execute(store, step)?;
    state.conn.execute(
        "UPDATE journal SET state = 'done' WHERE run_id = ?1 AND seq = ?2",
        rusqlite::params![run_id, seq],
    )?;
    Ok(())
}

/// Moves every home kept under an old id to its current GUID's hashed path (see [`crate::homes`]).
fn adopt_homes(
    state: &mut State,
    run_id: i64,
    plan_id: i64,
    roots: &crate::store::addressbook::Roots,
    summary: &mut RunSummary,
) -> Result<()> {
    let store = roots.store.as_path();
    // Home steps left pending by a crash: each is idempotent, finish it.
    let pending: Vec<(i64, String, String, Option<String>, String)> = {
        let mut st = state.conn.prepare(
            "SELECT seq, action, rel_path, target_path, COALESCE(meta_json, '{}') FROM journal
             WHERE run_id = ?1 AND state = 'pending' AND action IN ('mkdir', 'move', 'xattr', 'rmdir') ORDER BY seq",
        )?;
        let rows = st.query_map([run_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for (seq, action, rel, target, meta) in pending {
        let root = roots.root_for(&rel).to_path_buf();
        homes::execute(&root, &HomeStep::from_row(&action, rel, target, &meta)?)?;
        state.conn.execute(
            "UPDATE journal SET state = 'done' WHERE run_id = ?1 AND seq = ?2",
            rusqlite::params![run_id, seq],
        )?;
    }
    let todo: Vec<(String, String, String, String)> = {
        let mut st = state.conn.prepare(
            "SELECT rel_path, layout, old_id, new_guid FROM plan_homes
             WHERE plan_id = ?1 AND new_guid IS NOT NULL AND (outcome = 'moved' OR layout != 'hashed') ORDER BY rel_path",
        )?;
        let rows = st.query_map([plan_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for (old_rel, layout, old_id, new_guid) in todo {
        let steps = homes::plan_adoption(store, &old_rel, &new_guid, &mut summary.notes)?;
        let moved = !steps.is_empty();
        for step in &steps {
            journaled_home_step(state, run_id, store, step)?;
        }
        let hrefs = homes::old_hrefs(&layout, &old_id);
        for step in
            homes::plan_href_updates(store, &homes::hashed_home(&new_guid), &hrefs, &new_guid)?
        {
            journaled_home_step(state, run_id, store, &step)?;
        }
        if moved {
            summary.homes_adopted += 1;
        }
    }
    Ok(())
}

/// The attribute edits the plan holds for a resource (none for most).
fn planned_edits(state: &State, plan_id: i64, rel: &str) -> Result<Vec<AttrEdit>> {
    let json: Option<String> = state
        .conn
        .query_row(
            "SELECT attr_edits FROM plan_resources WHERE plan_id = ?1 AND rel_path = ?2",
            rusqlite::params![plan_id, rel],
            |r| r.get(0),
        )
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })?;
    edits_from_json(json.as_deref())
}

/// Whether a file's attributes are those saved in a step (a step that changed only attributes
/// is undone when they differ, though its bytes are the original ones).
fn attrs_as_saved(path: &Path, meta_json: Option<&str>) -> Result<bool> {
    let Some(json) = meta_json else {
        return Ok(false);
    };
    let saved: SavedMeta = serde_json::from_str(json)?;
    let mut now = FileMeta::of(path)?.xattrs;
    let mut want = saved.to_meta()?.xattrs;
    now.sort();
    want.sort();
    Ok(now == want)
}

/// Undoes an apply run (the latest when `run` is `None`), newest step first.
pub fn rollback(ctx: &Context, cfg: &Config, run: Option<i64>, force: bool) -> Result<RunSummary> {
    if cfg.store.kind == crate::config::StoreKind::CalendarserverPg {
        return crate::store::pg::rollback(ctx, cfg, run, force);
    }
    let state = State::open_existing(&cfg.state.path)?;
    let target = match run {
        Some(id) => id,
        None => state
            .conn
            .query_row(
                "SELECT MAX(id) FROM runs WHERE kind IN ('apply', 'provision')",
                [],
                |r| r.get::<_, Option<i64>>(0),
            )?
            .ok_or_else(|| Error::usage("no applied run to roll back"))?,
    };
    let (kind, store_path): (String, String) = state
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
    if kind != "apply" && kind != "provision" {
        return Err(Error::usage(format!(
            "run {target} is a {kind}, not an apply or provision run"
        )));
    }
    let store = PathBuf::from(store_path);
    let roots = crate::addressbooks::run_roots(&state, target, store.clone())?;
    for root in roots.all() {
        refuse_while_server_runs(root, force)?;
    }
    let backups = Backups::open(&cfg.state.path)?;
    let mut summary = RunSummary {
        kind: "rollback",
        undoes_run: Some(target),
        ..Default::default()
    };
    let Some(run_id) = start_or_resume(&state, &mut summary, &store)? else {
        return Ok(summary);
    };
    type Row = (
        i64,
        String,
        String,
        Option<String>,
        String,
        String,
        Option<String>,
        Option<String>,
    );
    let steps: Vec<Row> = {
        let mut st = state.conn.prepare(
            "SELECT seq, action, rel_path, target_path, before_sha256, after_sha256, backup_sha256, meta_json FROM journal
             WHERE run_id = ?1 AND state IN ('done', 'pending') ORDER BY seq DESC",
        )?;
        let rows = st.query_map([target], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
            ))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let bar = crate::cli::progress_bar(ctx, Some(steps.len() as u64), "restoring");
    for (undone, action, rel, target_path, original_sha, applied_sha, backup, meta_json) in steps {
        bar.inc(1);
        if action == "rewrite" && backup.is_none() {
            continue; // the file already held the new bytes: nothing of ours to undo
        }
        let finished: bool = state.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM journal WHERE run_id = ?1 AND undoes_seq = ?2 AND state != 'pending')",
            rusqlite::params![run_id, undone],
            |r| r.get(0),
        )?;
        if finished {
            continue;
        }
        let seq: i64 = state.conn.query_row(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM journal WHERE run_id = ?1",
            [run_id],
            |r| r.get(0),
        )?;
        state.conn.execute(
            "INSERT INTO journal (run_id, seq, action, rel_path, target_path, undoes_seq, state) VALUES (?1, ?2, 'undo', ?3, ?4, ?5, 'pending')",
            rusqlite::params![run_id, seq, rel, target_path, undone],
        )?;
        let (st, detail) = if matches!(action.as_str(), "rewrite" | "database" | "file") {
            let path = roots.join(&rel);
            let current = std::fs::read(&path)
                .map(|b| sha256_hex(&b))
                .unwrap_or_default();
            if current == original_sha
                && (current != applied_sha || attrs_as_saved(&path, meta_json.as_deref())?)
            {
                ("done", "already restored".to_string())
            } else if current != applied_sha && !force {
                (
                    "skipped",
                    format!(
                        "changed after the run (sha256 {current}); use --force to restore anyway"
                    ),
                )
            } else {
                let bytes = backups.get(backup.as_deref().unwrap_or_default())?;
                let meta: SavedMeta = serde_json::from_str(meta_json.as_deref().unwrap_or("{}"))?;
                restore(&path, &bytes, &meta.to_meta()?)?;
                summary.written += 1;
                ("done", String::new())
            }
        } else {
            let step = HomeStep::from_row(
                &action,
                rel.clone(),
                target_path,
                meta_json.as_deref().unwrap_or("{}"),
            )?;
            homes::undo(roots.root_for(&rel), &step)?;
            if matches!(step, HomeStep::Move { .. }) {
                summary.homes_adopted += 1;
            }
            ("done", String::new())
        };
        if st == "skipped" {
            summary.skipped.push((rel.clone(), detail.clone()));
        }
        state.conn.execute(
            "UPDATE journal SET state = ?1, detail = ?2 WHERE run_id = ?3 AND seq = ?4",
            rusqlite::params![st, detail, run_id, seq],
        )?;
    }
    bar.finish_and_clear();
    // Temporary files an interrupted apply left beside the resources it was about to replace.
    let plan_id: Option<i64> =
        state
            .conn
            .query_row("SELECT plan_id FROM runs WHERE id = ?1", [target], |r| {
                r.get(0)
            })?;
    let rels: Vec<String> = {
        let mut st = state
            .conn
            .prepare("SELECT rel_path FROM plan_resources WHERE plan_id = ?1")?;
        let rows = st.query_map([plan_id], |r| r.get(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for rel in rels {
        let tmp = crate::store::write::temp_path(&roots.join(&rel));
        if tmp.exists() {
            std::fs::remove_file(&tmp)
                .map_err(|e| Error::io("cannot remove the leftover", &tmp, e))?;
        }
    }
    state.conn.execute(
        "UPDATE runs SET status = 'done', finished_at = ?1 WHERE id = ?2",
        rusqlite::params![now_rfc3339(), run_id],
    )?;
    Ok(summary)
}

fn outcome_of(s: RunSummary, what: &str) -> Outcome {
    let mut human = if s.already_done {
        format!(
            "{what}: run {} already finished; nothing to do.\n",
            s.run_id
        )
    } else {
        format!(
            "{what} run {}{}: {} resources written, {} already as planned, {} skipped, {} home moves.\n",
            s.run_id,
            if s.resumed {
                " (resumed after an interruption)"
            } else {
                ""
            },
            s.written,
            s.unchanged,
            s.skipped.len(),
            s.homes_adopted
        )
    };
    for n in &s.notes {
        human.push_str(&format!("  note: {n}\n"));
    }
    for (p, why) in s.skipped.iter().take(20) {
        human.push_str(&format!("  skipped {p}: {why}\n"));
    }
    let status = if s.skipped.is_empty() {
        ExitStatus::Ok
    } else {
        ExitStatus::Problems
    };
    if !s.skipped.is_empty() {
        human.push_str("Some resources were skipped: run `principal-reconciler plan` again, review, then apply the new plan.\n");
    }
    Outcome {
        status,
        human,
        json: json!({ "run": s }),
    }
}

pub fn command_apply(ctx: &Context, args: &ApplyArgs) -> Result<Outcome> {
    let mut cfg = ctx.config.clone();
    let rehearsal = args.rehearse.is_some();
    if let Some(dir) = &args.rehearse {
        let state_from = cfg.state.path.clone();
        crate::rehearse::prepare(&mut cfg, dir)?;
        crate::rehearse::copy_tree(&state_from, &cfg.state.path)
            .map_err(|e| e.context("cannot copy the state database into the rehearsal"))?;
        let current = crate::directory::load_current(&cfg.directory)?;
        let file = crate::rehearse::write_config(&cfg, dir, &current)?;
        let s = apply(ctx, &cfg, args.plan, args.force, rehearsal)?;
        let mut out = outcome_of(s, "apply");
        out.human.push_str(&format!(
            "Rehearsal in {}: the real store was not touched. Inspect it with `principal-reconciler --config {} verify` (or doctor, report, rollback).\n",
            dir.display(),
            file.display()
        ));
        return Ok(out);
    }
    let s = apply(ctx, &cfg, args.plan, args.force, rehearsal)?;
    Ok(outcome_of(s, "apply"))
}

pub fn command_rollback(ctx: &Context, args: &RollbackArgs) -> Result<Outcome> {
    let s = rollback(ctx, &ctx.config, args.run, args.force)?;
    Ok(outcome_of(s, "rollback"))
}
