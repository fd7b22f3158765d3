//! The write-ahead journal: `apply` carries out a stored plan, `rollback` undoes a run.
//!
//! Before a resource is replaced, its original bytes are saved in the state folder
//! (`backups/`, content-addressed, files 0600 in folders 0700) and the step is recorded as
//! `pending` with the original owner, mode and extended attributes; the record is durable before the
//! store is touched. After the write the step is marked `done`. Steps are made durable in batches,
//! so the cost of syncing stays bounded, and no batch is written before it is durable. Rollback
//! works the same way, in batches, newest step first.
//!
//! After a crash (`kill -9` at any instant) the next `apply` finds the run still `applying` and
//! resumes it: a pending step whose file already holds the new bytes is done, one that still holds
//! the old bytes is redone, anything else is someone else's change and is skipped. Every
//! collection of a step not known to be finished gets a new `getctag`, so clients re-fetch. The
//! store ends byte for byte as an uninterrupted run leaves it.
//!
//! Every file and folder in the store is reached from the store root one component at a time,
//! never through a symbolic link ([`crate::store::confined`]).
//!
//! A run's lifecycle ([`RunState`]): applying → applied → rolling back → rolled back; a plan whose
//! run was rolled back is applied again by a new run. SIGINT / SIGTERM stop a run after its current
//! batch ([`crate::interrupt`]).

use crate::config::Config;
use crate::error::{Error, Result};
use crate::homes::{self, HomeStep};
use crate::interrupt;
use crate::progress::Progress;
use crate::stage::{self, Layout, Request};
use crate::state::{
    create_private_dir, now_rfc3339, Action, RunEvent, RunKind, RunState, RunStatus, State,
    StepState,
};
use crate::store::addressbook::{is_addressbook_path, Roots};
use crate::store::confined::{split_rel, Dir, DirCache};
use crate::store::props::{edits_from_json, AttrEdit};
use crate::store::write::{
    bump_ctag_dir, choose_prefix_dir, is_leftover_name, prepare_restore, prepare_write_at,
    renews_ctag, restore, sha256_at, sha256_hex, sync_filesystem, FileMeta, PreparedWrite,
    WriteError, WriteOptions,
};
use base64::Engine as _;
use rusqlite::OptionalExtension;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Steps made durable together.
const BATCH: usize = 1024;
/// Folders one batch may hold open (each is a descriptor until the batch ends).
const BATCH_FOLDERS: usize = 256;

/// Content-addressed copies of original files, in `<state>/backups/<aa>/<sha256>`.
pub struct Backups {
    dir: PathBuf,
}

impl Backups {
    /// Opens (creating it, mode 0700) the backup folder under the state folder.
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
        if sha.len() < 2 {
            return Err(Error::runtime("the journal names no backup for this file"));
        }
        let path = self.path(sha);
        let bytes = std::fs::read(&path).map_err(|e| {
            Error::runtime(format!("its backup {} cannot be read: {e}", path.display()))
        })?;
        if sha256_hex(&bytes) != sha {
            return Err(Error::runtime(format!(
                "its backup {} is damaged (its bytes no longer match their SHA-256)",
                path.display()
            )));
        }
        Ok(bytes)
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

/// What a check of the store against a finished run found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Checked {
    /// Files the run's steps name.
    pub files: u64,
    /// How many hold what they should (the run's bytes after an apply, the originals after a
    /// rollback).
    pub holding: u64,
    /// The others: path and what is there instead (`{"path", "why"}` objects in JSON).
    #[serde(serialize_with = "path_why_objects")]
    pub differing: Vec<(String, String)>,
}

/// `(path, why)` pairs as `{"path": …, "why": …}` objects in `--json` output (not `[path, why]`
/// arrays, which a reader has to know the order of).
fn path_why_objects<S: serde::Serializer>(
    pairs: &[(String, String)],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    #[derive(serde::Serialize)]
    struct PathWhy<'a> {
        path: &'a str,
        why: &'a str,
    }
    let mut seq = s.serialize_seq(Some(pairs.len()))?;
    for (path, why) in pairs {
        seq.serialize_element(&PathWhy { path, why })?;
    }
    seq.end()
}

/// How a run ended (the counts are the whole run's, however many invocations it took).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RunSummary {
    /// The run (`runs.id`).
    pub run_id: i64,
    /// `apply` or `rollback` (the stored `runs.kind`).
    pub kind: &'static str,
    /// The plan an apply carries out (a rollback: the plan of the run it undoes).
    pub plan_id: Option<i64>,
    /// A rollback: the apply run it undoes.
    pub undoes_run: Option<i64>,
    /// The lifecycle state of the apply run concerned, after this command.
    pub state: Option<RunState>,
    /// This invocation continued a run an earlier one left unfinished (crash, kill, signal).
    pub resumed: bool,
    /// Nothing was left to do: the run had finished before (see `checked`).
    pub already_done: bool,
    /// When the run finished (for `already_done`).
    pub finished_at: Option<String>,
    /// `already_done`: the store checked against what the run left.
    pub checked: Option<Checked>,
    /// The signal that stopped this invocation after a whole batch (resumable).
    pub interrupted: Option<String>,
    /// Resources written (an apply) or restored (a rollback).
    pub written: u64,
    /// Resources that already held what the step would write (a resumed or repeated run).
    pub unchanged: u64,
    /// Steps not taken: path and why (`{"path", "why"}` objects in JSON).
    #[serde(serialize_with = "path_why_objects")]
    pub skipped: Vec<(String, String)>,
    /// Homes moved to (or merged into) their new GUID's place, or moved back by a rollback.
    pub homes_adopted: u64,
    /// Delegate / auto-accept databases rewritten.
    pub databases: u64,
    /// Things a human should know (merged homes, renamed collections, resumed runs).
    pub notes: Vec<String>,
    /// A staged apply (`--home`, `--limit`, or a run after a stage): how far the plan is now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<crate::stage::Tally>,
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

fn same_filesystem(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev(),
        _ => false,
    }
}

fn store_path_of(cfg: &Config) -> PathBuf {
    cfg.store
        .path
        .canonicalize()
        .unwrap_or_else(|_| cfg.store.path.clone())
}

/// The roots of a run opened for confined access: the calendar store and, when there is one,
/// the address-book root (paths beginning with `addressbooks/` are relative to it).
struct RootDirs {
    roots: Roots,
    store: Dir,
    addressbooks: Option<Dir>,
}

impl RootDirs {
    fn open(roots: Roots) -> Result<RootDirs> {
        let open = |p: &Path| Dir::open(p).map_err(|e| Error::io("cannot open the store", p, e));
        let store = open(&roots.store)?;
        let addressbooks = match &roots.addressbooks {
            Some(p) => Some(open(p)?),
            None => None,
        };
        Ok(RootDirs {
            roots,
            store,
            addressbooks,
        })
    }

    /// The root `rel` is relative to (as [`Roots::root_for`]).
    fn for_rel(&self, rel: &str) -> &Dir {
        match &self.addressbooks {
            Some(ab) if is_addressbook_path(rel) => ab,
            _ => &self.store,
        }
    }

    /// Makes everything written under every root durable.
    fn sync(&self) -> Result<()> {
        for root in self.roots.all() {
            sync_filesystem(root)?;
        }
        Ok(())
    }
}

/// One batch's open folders under each root.
struct Caches {
    store: DirCache,
    addressbooks: Option<DirCache>,
}

impl Caches {
    fn new(dirs: &RootDirs) -> Result<Caches> {
        let cache = |d: &Dir| DirCache::new(d).map_err(|e| Error::io("cannot open", d.path(), e));
        Ok(Caches {
            store: cache(&dirs.store)?,
            addressbooks: match &dirs.addressbooks {
                Some(d) => Some(cache(d)?),
                None => None,
            },
        })
    }

    fn parent<'a>(&self, rel: &'a str) -> std::io::Result<(Arc<Dir>, &'a str)> {
        match &self.addressbooks {
            Some(ab) if is_addressbook_path(rel) => ab.parent(rel),
            _ => self.store.parent(rel),
        }
    }
}

/// The whole run's counts, from its journal.
fn totals(state: &State, summary: &mut RunSummary) -> Result<()> {
    let run_id = summary.run_id;
    let count = |sql: &str| -> Result<u64> {
        Ok(state
            .conn
            .query_row(sql, [run_id], |r| r.get::<_, i64>(0))? as u64)
    };
    summary.skipped = {
        let mut st = state.conn.prepare(
            "SELECT rel_path, detail FROM journal WHERE run_id = ?1 AND state = 'skipped' ORDER BY seq",
        )?;
        let rows = st.query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    if summary.kind == "rollback" {
        summary.written = count(
            "SELECT COUNT(*) FROM journal u JOIN runs r ON r.id = u.run_id
               JOIN journal j ON j.run_id = r.undoes_run AND j.seq = u.undoes_seq
              WHERE u.run_id = ?1 AND u.state = 'done' AND u.detail = ''
                AND j.action IN ('rewrite', 'database', 'file')",
        )?;
        summary.unchanged = count(
            "SELECT COUNT(*) FROM journal WHERE run_id = ?1 AND state = 'done' AND detail = 'already restored'",
        )?;
        summary.homes_adopted = count(
            "SELECT COUNT(*) FROM journal u JOIN runs r ON r.id = u.run_id
               JOIN journal j ON j.run_id = r.undoes_run AND j.seq = u.undoes_seq
              WHERE u.run_id = ?1 AND u.state = 'done' AND j.action = 'move'",
        )?;
    } else {
        summary.written = count(
            "SELECT COUNT(*) FROM journal WHERE run_id = ?1 AND action = 'rewrite' AND state = 'done' AND backup_sha256 IS NOT NULL",
        )?;
        summary.unchanged = count(
            "SELECT COUNT(*) FROM journal WHERE run_id = ?1 AND action = 'rewrite' AND state = 'done' AND backup_sha256 IS NULL",
        )?;
        summary.homes_adopted = count(
            "SELECT COUNT(DISTINCT detail) FROM journal WHERE run_id = ?1 AND action = 'move' AND state = 'done' AND detail LIKE 'home:%'",
        )?;
        summary.databases = count(
            "SELECT COUNT(*) FROM journal WHERE run_id = ?1 AND action = 'database' AND state = 'done'",
        )?;
    }
    Ok(())
}

/// Where a path of the store is after the run's home moves (`from` → `to`, in order).
fn moved(rel: &str, moves: &[(String, String)]) -> String {
    let mut p = rel.to_string();
    for (from, to) in moves {
        if p == *from {
            p = to.clone();
        } else if let Some(rest) = p.strip_prefix(&format!("{from}/")) {
            p = format!("{to}/{rest}");
        }
    }
    p
}

/// What a file holds now, in words for a report (`missing`, or its hash).
fn describe_found(found: &Option<String>) -> String {
    match found {
        None => "missing".to_string(),
        Some(s) => format!("holds other bytes (sha256 {s})"),
    }
}

/// Checks the files a finished run's rewrite steps name: after an apply they must hold what it
/// wrote (at their place after its home moves), after a rollback their original bytes.
fn check_run(
    state: &State,
    dirs: Option<&RootDirs>,
    run_id: i64,
    originals: bool,
) -> Result<Checked> {
    let moves: Vec<(String, String)> = if originals {
        Vec::new()
    } else {
        let mut st = state.conn.prepare(
            "SELECT rel_path, target_path FROM journal WHERE run_id = ?1 AND action = 'move' AND state = 'done' ORDER BY seq",
        )?;
        let rows = st.query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let steps: Vec<(Action, String, String, String)> = {
        let mut st = state.conn.prepare(
            "SELECT action, rel_path, before_sha256, after_sha256 FROM journal
              WHERE run_id = ?1 AND action IN ('rewrite', 'database', 'file') AND state = 'done'
                AND backup_sha256 IS NOT NULL ORDER BY seq",
        )?;
        let rows = st.query_map([run_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let mut out = Checked::default();
    for (action, rel, before, after) in steps {
        out.files += 1;
        let want = if originals { before } else { after };
        let (at, found) = if action == Action::Rewrite {
            let at = moved(&rel, &moves);
            let found = match dirs.map(|d| d.for_rel(&at).split(&at)) {
                Some(Ok((dir, name))) => sha256_at(&dir, name).unwrap_or(None),
                _ => None,
            };
            (at, found)
        } else {
            // A delegate database or augments.xml: outside the store, named by its path.
            let found = std::fs::read(&rel).ok().map(|b| sha256_hex(&b));
            (rel, found)
        };
        if found.as_deref() == Some(want.as_str()) {
            out.holding += 1;
        } else {
            out.differing.push((at, describe_found(&found)));
        }
    }
    Ok(out)
}

/// Before a plan whose run was rolled back is applied again: the store must hold what the plan
/// was made from (or, for a resource, what it would write).
/// Only what `sel` takes is checked (the other stages' homes may have moved).
fn check_store_matches_plan(
    state: &State,
    dirs: &RootDirs,
    plan_id: i64,
    layout: &Layout,
    sel: &stage::Selection,
) -> Result<()> {
    let rows: Vec<(String, String, String)> = {
        let mut st = state.conn.prepare(
            "SELECT rel_path, old_sha256, new_sha256 FROM plan_resources WHERE plan_id = ?1 ORDER BY rel_path",
        )?;
        let rows = st.query_map([plan_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|(rel, ..)| layout.takes(Some(sel), rel))
        .collect();
    let total = rows.len();
    let mut differing = Vec::new();
    for (rel, old, new) in rows {
        let found = match dirs.for_rel(&rel).split(&rel) {
            Ok((dir, name)) => sha256_at(&dir, name).unwrap_or(None),
            Err(_) => None,
        };
        if found.as_deref() != Some(old.as_str()) && found.as_deref() != Some(new.as_str()) {
            differing.push(format!("{rel} ({})", describe_found(&found)));
        }
    }
    let dbs: Vec<(String, String)> = {
        let mut st = state.conn.prepare(
            "SELECT path, old_sha256 FROM plan_databases WHERE plan_id = ?1 AND changes + dropped > 0",
        )?;
        let rows = st.query_map([plan_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
    for (path, old) in dbs.into_iter().filter(|_| sel.rest) {
        let found = std::fs::read(&path).ok().map(|b| sha256_hex(&b));
        if found.as_deref() != Some(old.as_str()) {
            differing.push(format!("{path} ({})", describe_found(&found)));
        }
    }
    if differing.is_empty() {
        return Ok(());
    }
    let n = differing.len();
    differing.truncate(5);
    Err(Error::usage(format!(
        "plan {plan_id} cannot be applied again: {n} of the {total} resources it changes no longer hold what it was made from (first: {}). Run `principal-reconciler plan` for a plan of the store as it is, review the reports, then `apply` it",
        differing.join("; ")
    )))
}

/// Rows read from the state database at a time where a whole run or plan would not fit in
/// memory (keyset pagination: peak memory stays flat however large the plan).
const PAGE: i64 = 2000;

/// Removes the temporary files (`.NAME.principal-reconciler.tmp`) that an interrupted run left in
/// the folders of the plan's resources; returns how many. The paths are read a page at a time,
/// in path order, so a folder's resources come together: each folder is listed once (a folder
/// whose resources are interleaved with a subfolder's may be listed again, which finds nothing).
fn remove_leftovers(state: &State, dirs: &RootDirs, plan_id: i64) -> Result<u64> {
    let mut removed = 0;
    let mut last: Option<String> = None;
    let mut previous_folder: Option<String> = None;
    loop {
        let page: Vec<String> = {
            // The first page from '' on (every path), the next ones after the last path read.
            let mut st = state.conn.prepare_cached(if last.is_none() {
                "SELECT rel_path FROM plan_resources WHERE plan_id = ?1 AND rel_path >= ?2
                 ORDER BY rel_path LIMIT ?3"
            } else {
                "SELECT rel_path FROM plan_resources WHERE plan_id = ?1 AND rel_path > ?2
                 ORDER BY rel_path LIMIT ?3"
            })?;
            let after = last.as_deref().unwrap_or("");
            let rows = st.query_map(rusqlite::params![plan_id, after, PAGE], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let Some(tail) = page.last() else { break };
        last = Some(tail.clone());
        for rel in &page {
            let folder = split_rel(rel).0;
            if previous_folder.as_deref() == Some(folder) {
                continue;
            }
            removed += remove_leftovers_in(dirs, folder)?;
            previous_folder = Some(folder.to_string());
        }
        if (page.len() as i64) < PAGE {
            break;
        }
    }
    Ok(removed)
}

/// Removes our temporary files from one folder of the store; returns how many.
fn remove_leftovers_in(dirs: &RootDirs, folder: &str) -> Result<u64> {
    let Ok(dir) = dirs.for_rel(folder).walk(folder) else {
        return Ok(0); // gone, moved, or a link: nothing of ours in it
    };
    let Ok(names) = dir.names() else { return Ok(0) };
    let mut removed = 0;
    for name in names.into_iter().filter(|n| is_leftover_name(n)) {
        if dir.stat(&name).is_ok_and(|s| s.is_file()) {
            dir.unlink(&name)
                .map_err(|e| Error::io("cannot remove the leftover", &dir.child(&name), e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Splits work into batches of at most [`BATCH`] steps and [`BATCH_FOLDERS`] folders.
fn batches<T>(items: Vec<T>, rel: impl Fn(&T) -> &str) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut cur: Vec<T> = Vec::new();
    let mut folders: std::collections::HashSet<String> = Default::default();
    for it in items {
        let folder = split_rel(rel(&it)).0.to_string();
        if cur.len() >= BATCH || (!folders.contains(&folder) && folders.len() >= BATCH_FOLDERS) {
            out.push(std::mem::take(&mut cur));
            folders.clear();
        }
        folders.insert(folder);
        cur.push(it);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// One resource of the plan to carry out (`resumed`: its step is already journaled as pending).
struct Item {
    seq: i64,
    rel: String,
    old_sha: String,
    new_sha: String,
    /// Where its new bytes come from (recomputed from the file, or stored by an older plan).
    blob: crate::plan::NewBytes,
    /// Planned attribute edits (server properties that change besides the bytes).
    edits: Vec<AttrEdit>,
    resumed: bool,
}

/// Whether a file's attributes hold every planned edit.
fn edits_hold(attrs: &[(String, Vec<u8>)], edits: &[AttrEdit]) -> Result<bool> {
    for e in edits {
        let new = e.new_value()?;
        if !attrs.iter().any(|(n, v)| *n == e.name && *v == new) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether a file's attributes are those saved in a step (a step that changed only attributes
/// is undone when they differ, though its bytes are the original ones).
fn attrs_as_saved(now: &FileMeta, meta_json: Option<&str>) -> Result<bool> {
    let Some(json) = meta_json else {
        return Ok(false);
    };
    let saved: SavedMeta = serde_json::from_str(json)?;
    let mut now = now.xattrs.clone();
    let mut want = saved.to_meta()?.xattrs;
    now.sort();
    want.sort();
    Ok(now == want)
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
    state: Option<StepState>,
    detail: String,
    resumed: bool,
    prepared: Option<PreparedWrite>,
    /// A collection whose ctag must be renewed although nothing is renamed now (a step of an
    /// interrupted batch whose file already holds the new bytes).
    renew: Option<(String, Arc<Dir>, String)>,
}

impl Step {
    fn skip(&mut self, why: String) {
        self.state = Some(StepState::Skipped);
        self.detail = why;
    }
}

fn prepare_step(
    cache: &Caches,
    backups: &Backups,
    opts: &WriteOptions,
    rewrites: &crate::plan::PlannedRewrites,
    it: Item,
) -> Result<Step> {
    let mut step = Step {
        seq: it.seq,
        rel: it.rel.clone(),
        old_sha: it.old_sha.clone(),
        new_sha: it.new_sha.clone(),
        resumed: it.resumed,
        ..Default::default()
    };
    let (dir, name) = match cache.parent(&it.rel) {
        Ok(x) => x,
        Err(e) => {
            step.skip(format!("not written: {e}"));
            return Ok(step);
        }
    };
    let bytes = match dir.read(name) {
        Err(e) => {
            step.skip(format!("cannot read: {e}"));
            return Ok(step);
        }
        Ok(b) => b,
    };
    let sha = sha256_hex(&bytes);
    // (A resource whose only change is an attribute keeps its bytes.)
    let done = sha == it.new_sha
        && (it.edits.is_empty() || edits_hold(&FileMeta::of_at(&dir, name)?.xattrs, &it.edits)?);
    if done {
        step.state = Some(StepState::Done);
        if it.resumed {
            // Renamed before the interruption; its ctag may not have been renewed.
            let own = FileMeta::of_at(&dir, name)?.xattr_list();
            let prefix = choose_prefix_dir(opts.xattr_prefix.as_deref(), &own, &dir);
            step.renew = Some((split_rel(&it.rel).0.to_string(), dir, prefix));
        } else {
            step.detail = "already rewritten".into();
        }
    } else if sha != it.old_sha {
        step.skip(if it.resumed {
            "changed since plan (found after an interrupted run)".into()
        } else {
            "changed since plan".into()
        });
    } else {
        // The plan keeps hashes: its rewrite is done again on the file as it is now, and only
        // bytes that hash to what was planned are written.
        let new_bytes = rewrites.new_bytes(&it.blob, &bytes, &it.new_sha)?;
        if sha256_hex(&new_bytes) != it.new_sha {
            step.skip(
                "changed since plan (its planned rewrite no longer gives the planned bytes)".into(),
            );
            return Ok(step);
        }
        if !it.resumed {
            step.backup = Some(backups.put(&bytes)?);
            step.meta = Some(serde_json::to_string(&SavedMeta::from_meta(
                &FileMeta::of_at(&dir, name)?,
            ))?);
        }
        match prepare_write_at(
            dir.clone(),
            name,
            &it.old_sha,
            &new_bytes,
            opts,
            &it.edits,
            false,
        ) {
            Ok(p) => {
                step.state = Some(StepState::Pending);
                step.prepared = Some(p);
            }
            Err(WriteError::Changed { .. }) => step.skip("changed since plan".into()),
            Err(WriteError::Failed(e)) => return Err(e),
        }
    }
    Ok(step)
}

/// Everything a batch needs besides its items.
struct Batch<'a> {
    run_id: i64,
    dirs: &'a RootDirs,
    state_dir: &'a Path,
    backups: &'a Backups,
    opts: &'a WriteOptions,
    /// The plan's rewrites, replayed on each file.
    rewrites: &'a crate::plan::PlannedRewrites,
}

/// One batch: (a) originals saved and new bytes in temporary files beside them, in parallel;
/// (b) backups and temporary files durable, then the steps recorded durably; (c) the renames,
/// one new ctag per collection (every collection of the batch, including those of steps an
/// interruption left pending), made durable together, then marked done.
fn apply_batch(state: &mut State, b: &Batch<'_>, items: Vec<Item>) -> Result<()> {
    use rayon::prelude::*;
    let cache = Caches::new(b.dirs)?;
    let steps: Vec<Step> = items
        .into_par_iter()
        .map(|it| prepare_step(&cache, b.backups, b.opts, b.rewrites, it))
        .collect::<Result<_>>()?;
    interrupt::test_pause("apply-prepared");
    b.backups.sync()?;
    for root in b.dirs.roots.all() {
        if !same_filesystem(root, b.state_dir) {
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
            for s in steps.iter().filter(|s| !s.resumed) {
                ins.execute(rusqlite::params![
                    b.run_id, s.seq, s.rel, s.old_sha, s.new_sha, s.backup, s.meta, s.state,
                    s.detail
                ])?;
            }
        }
        tx.commit()?;
    }
    let mut collections: BTreeMap<String, (Arc<Dir>, String)> = BTreeMap::new();
    let mut prepared = Vec::new();
    let mut results: Vec<(i64, StepState, String)> = Vec::new();
    for s in steps {
        if let Some((folder, dir, prefix)) = s.renew {
            collections.entry(folder).or_insert((dir, prefix));
        }
        match s.prepared {
            Some(p) => {
                let folder = split_rel(&s.rel).0.to_string();
                collections
                    .entry(folder)
                    .or_insert_with(|| (p.dir().clone(), p.prefix.clone()));
                prepared.push((s.seq, p));
            }
            None if s.resumed => {
                results.push((s.seq, s.state.unwrap_or(StepState::Skipped), s.detail));
            }
            None => {}
        }
    }
    let committed: Vec<(i64, std::result::Result<(), WriteError>)> = prepared
        .into_par_iter()
        .map(|(seq, p)| (seq, p.commit().map(|_| ())))
        .collect();
    interrupt::test_pause("apply-rename");
    for (seq, r) in committed {
        match r {
            Ok(()) => results.push((seq, StepState::Done, String::new())),
            Err(WriteError::Changed { .. }) => {
                results.push((seq, StepState::Skipped, "changed since plan".to_string()))
            }
            Err(WriteError::Failed(e)) => return Err(e),
        }
    }
    if !b.opts.plain_files {
        for (i, (dir, prefix)) in collections.values().enumerate() {
            bump_ctag_dir(dir, prefix)?;
            if i == 0 {
                interrupt::test_pause("apply-ctag");
            }
        }
    }
    if !results.is_empty() {
        b.dirs.sync()?;
    }
    let tx = state.conn.transaction()?;
    for (seq, st, detail) in results {
        tx.execute(
            "UPDATE journal SET state = ?1, detail = ?2 WHERE run_id = ?3 AND seq = ?4",
            rusqlite::params![st, detail, b.run_id, seq],
        )?;
    }
    tx.commit()?;
    interrupt::test_pause("apply-batch");
    Ok(())
}

/// Marks a run interrupted by a signal (resumable) and says so in the summary.
/// The resources of a plan that a run has not journaled yet, read in path order a page at a
/// time (keyset pagination on the plan's primary key; journaled ones are found through
/// `journal_by_path`).
struct TodoPages {
    plan_id: i64,
    run_id: i64,
    last: Option<String>,
    page: std::collections::VecDeque<(String, String, String)>,
    exhausted: bool,
}

impl TodoPages {
    fn new(plan_id: i64, run_id: i64) -> TodoPages {
        TodoPages {
            plan_id,
            run_id,
            last: None,
            page: Default::default(),
            exhausted: false,
        }
    }

    fn sql(first: bool, columns: &str) -> String {
        format!(
            "SELECT {columns} FROM plan_resources p
             WHERE p.plan_id = ?1 AND p.rel_path {} ?3
               AND NOT EXISTS (SELECT 1 FROM journal j WHERE j.run_id = ?2 AND j.rel_path = p.rel_path)
             ORDER BY p.rel_path LIMIT ?4",
            if first { ">=" } else { ">" }
        )
    }

    /// How many there are that `takes` keeps (the paths only, a page at a time).
    fn count(&self, state: &State, takes: &dyn Fn(&str) -> bool) -> Result<u64> {
        let mut n = 0;
        let mut last: Option<String> = None;
        loop {
            let mut page: Vec<String> = {
                let mut st = state
                    .conn
                    .prepare_cached(&Self::sql(last.is_none(), "p.rel_path"))?;
                let after = last.as_deref().unwrap_or("");
                let rows = st.query_map(
                    rusqlite::params![self.plan_id, self.run_id, after, PAGE],
                    |r| r.get(0),
                )?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            n += page.iter().filter(|rel| takes(rel)).count() as u64;
            if (page.len() as i64) < PAGE {
                return Ok(n);
            }
            last = page.pop();
        }
    }

    /// The next one that `takes` keeps.
    fn next(
        &mut self,
        state: &State,
        takes: &dyn Fn(&str) -> bool,
    ) -> Result<Option<(String, String, String)>> {
        loop {
            if let Some(t) = self.page.pop_front() {
                if takes(&t.0) {
                    return Ok(Some(t));
                }
                continue;
            }
            if self.exhausted {
                return Ok(None);
            }
            let page: Vec<(String, String, String)> = {
                let mut st = state.conn.prepare_cached(&Self::sql(
                    self.last.is_none(),
                    "p.rel_path, p.old_sha256, p.new_sha256",
                ))?;
                let after = self.last.as_deref().unwrap_or("");
                let rows = st.query_map(
                    rusqlite::params![self.plan_id, self.run_id, after, PAGE],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            self.exhausted = (page.len() as i64) < PAGE;
            if let Some(t) = page.last() {
                self.last = Some(t.0.clone());
            }
            self.page.extend(page);
        }
    }
}

fn interrupted(state: &State, summary: &mut RunSummary, sig: i32) -> Result<()> {
    let name = interrupt::name(sig);
    state.conn.execute(
        "UPDATE runs SET status = ?1, stopped_by = ?2 WHERE id = ?3",
        rusqlite::params![RunStatus::Interrupted, name, summary.run_id],
    )?;
    summary.interrupted = Some(name);
    totals(state, summary)
}

/// A run as `apply` looks at it: id, lifecycle state, process status, the signal that stopped it,
/// when it finished.
type RunRow = (i64, RunState, RunStatus, Option<String>, Option<String>);

/// The latest apply run of a plan.
fn latest_apply_run(state: &State, plan_id: i64) -> Result<Option<RunRow>> {
    let row = state.conn.query_row(
        "SELECT id, COALESCE(state, 'applying'), status, stopped_by, finished_at FROM runs
          WHERE kind = 'apply' AND plan_id = ?1 ORDER BY id DESC LIMIT 1",
        [plan_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
    );
    match row {
        Ok(r) => Ok(Some(r)),
        Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn new_run(
    state: &State,
    kind: RunKind,
    plan_id: Option<i64>,
    undoes: Option<i64>,
    store: &Path,
) -> Result<i64> {
    let run_state = (kind != RunKind::Rollback).then_some(RunState::Applying);
    state.conn.execute(
        "INSERT INTO runs (kind, plan_id, undoes_run, store_path, started_at, status, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        rusqlite::params![
            kind,
            plan_id,
            undoes,
            store.to_string_lossy(),
            now_rfc3339(),
            RunStatus::Running,
            run_state
        ],
    )?;
    Ok(state.conn.last_insert_rowid())
}

/// What `apply` is asked for.
#[derive(Clone, Debug, Default)]
pub struct ApplyOptions {
    /// The plan to apply (`None`: the latest complete one).
    pub plan: Option<i64>,
    /// Run even though the calendar server seems to be running on the store.
    pub force: bool,
    /// The store is a rehearsal copy (not the store the plan was made for).
    pub rehearsal: bool,
    /// The stage asked for (`--home`, `--limit`); the default is all that is pending.
    pub request: Request,
}

impl ApplyOptions {
    /// The whole of a plan (what is pending of it), on the store it was made for.
    pub fn whole(plan: i64, force: bool) -> ApplyOptions {
        ApplyOptions {
            plan: Some(plan),
            force,
            ..Default::default()
        }
    }
}

/// What `rollback` is asked for.
#[derive(Clone, Copy, Debug, Default)]
pub struct RollbackOptions {
    /// The run to undo (`None`: the latest not yet undone).
    pub run: Option<i64>,
    /// Restore files even when they changed after the run.
    pub force: bool,
}

/// Carries out a stored plan, or a stage of it: the homes `opts.request` names (or the next ones
/// up to its limit), or all that is pending (see [`crate::stage`]).
pub fn apply(progress: &dyn Progress, cfg: &Config, opts: &ApplyOptions) -> Result<RunSummary> {
    let (plan, force, rehearsal, req) = (opts.plan, opts.force, opts.rehearsal, &opts.request);
    if cfg.store.kind == crate::config::StoreKind::CalendarserverPg {
        if !req.is_whole() {
            return Err(Error::usage(
                "apply --home / --limit (a staged migration) is not yet on a database store (`[store] kind = \"calendarserver-pg\"`): apply the whole plan",
            ));
        }
        return crate::db::apply::apply(progress, cfg, plan, force, rehearsal);
    }
    let mut state = State::open_existing(&cfg.state.path)?;
    let (plan_id, passed_over) = state.plan_to_apply(plan)?;
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
    let dirs = RootDirs::open(roots.clone())?;
    let mut summary = RunSummary {
        kind: "apply",
        plan_id: Some(plan_id),
        ..Default::default()
    };
    summary.notes.extend(passed_over);
    let layout = Layout::load(&state, plan_id)?;
    let latest = latest_apply_run(&state, plan_id)?;
    let (run_id, selection) = match latest {
        Some((id, RunState::Applying | RunState::Planned, status, stopped, _)) => {
            summary.resumed = true;
            summary.notes.push(match (status, stopped) {
                (RunStatus::Interrupted, Some(sig)) => {
                    format!("run {id} was stopped by {sig}; resuming it")
                }
                _ => format!("run {id} did not finish (its process ended without finishing: a crash or kill); resuming it"),
            });
            let selection = stage::run_selection(&state, id)?;
            if !req.is_whole() {
                summary.notes.push(format!(
                    "--home / --limit are not used while run {id} is unfinished: it is resumed with the homes it took; run `apply` again for the next stage"
                ));
            }
            state.conn.execute(
                "UPDATE runs SET status = 'running', stopped_by = NULL, state = 'applying' WHERE id = ?1",
                [id],
            )?;
            (id, selection)
        }
        Some((id, RunState::RollingBack, ..)) => {
            return Err(Error::usage(format!(
                "plan {plan_id} cannot be applied now: its run {id} is partly rolled back (the rollback was interrupted). Finish the rollback with `principal-reconciler rollback --run {id}`; then `apply` applies plan {plan_id} again"
            )))
        }
        _ => {
            let sel = stage::choose(&state, plan_id, &layout, req, &mut summary.notes)?;
            if sel.homes.is_empty() && !sel.rest {
                if let Some((id, _, _, _, finished)) = latest {
                    // Nothing pending: every stage is applied.
                    summary.run_id = id;
                    summary.already_done = true;
                    summary.state = Some(RunState::Applied);
                    summary.finished_at = finished;
                    let mut checked = Checked::default();
                    let progress = stage::progress(&state, plan_id)?;
                    for &run in &progress.runs {
                        let c = check_run(&state, Some(&dirs), run, false)?;
                        checked.files += c.files;
                        checked.holding += c.holding;
                        checked.differing.extend(c.differing);
                    }
                    summary.checked = Some(checked);
                    if progress.runs.len() > 1 {
                        summary.stage = Some(progress);
                    }
                    totals(&state, &mut summary)?;
                    return Ok(summary);
                }
            }
            let whole = sel.rest && sel.homes.len() == layout.units.len();
            if let Some((id, RunState::RolledBack, ..)) = latest {
                check_store_matches_plan(&state, &dirs, plan_id, &layout, &sel)?;
                summary.notes.push(format!(
                    "plan {plan_id} was applied by run {id} and rolled back; the store holds what the plan was made from again, so it is applied again by a new run"
                ));
            } else if latest.is_some() {
                summary.notes.push(format!(
                    "plan {plan_id} is partly applied; this run carries out {}",
                    if whole || stage::progress(&state, plan_id)?.pending_homes.len() == sel.homes.len() { "the rest".to_string() } else { "the next stage".to_string() }
                ));
            }
            let id = new_run(&state, RunKind::Apply, Some(plan_id), None, &store)?;
            // A whole plan in one run (nothing of it in force) keeps no selection, as before
            // stages existed.
            let selection = if whole {
                None
            } else {
                stage::record(&state, id, &sel)?;
                Some(sel)
            };
            (id, selection)
        }
    };
    summary.run_id = run_id;
    state.advance_run(run_id, RunEvent::StartApply)?;
    crate::addressbooks::record_run_root(&state, run_id, &roots)?;
    let _signals = interrupt::install();
    let removed = remove_leftovers(&state, &dirs, plan_id)?;
    if removed > 0 {
        summary.notes.push(format!(
            "removed {removed} temporary file(s) an interrupted run had left in the store"
        ));
    }
    let opts = WriteOptions {
        xattr_prefix: cfg.store.xattr_prefix.clone(),
        plain_files: cfg.store.kind == crate::config::StoreKind::IcsDir,
    };
    let rewrites = crate::plan::PlannedRewrites::load(&state, plan_id)?;
    let batch = Batch {
        run_id,
        dirs: &dirs,
        state_dir: &cfg.state.path,
        backups: &backups,
        opts: &opts,
        rewrites: &rewrites,
    };
    let blob_of = |state: &State, rel: &str| -> Result<(crate::plan::NewBytes, Vec<AttrEdit>)> {
        let (blob, edits) =
            crate::plan::planned_resource(state, plan_id, rel)?.ok_or_else(|| {
                Error::runtime(format!(
                    "state database: plan {plan_id} no longer holds {rel}"
                ))
            })?;
        Ok((blob, edits_from_json(edits.as_deref())?))
    };

    // 1. Steps an interruption left pending (the last batch), then 2. the plan's resources not
    //    yet journaled, in batches.
    let pending: Vec<(i64, String, String, String)> = {
        let mut st = state.conn.prepare(
            "SELECT seq, rel_path, before_sha256, after_sha256 FROM journal WHERE run_id = ?1 AND state = 'pending' AND action = 'rewrite' ORDER BY seq",
        )?;
        let rows = st.query_map([run_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let mut resumed_items = Vec::with_capacity(pending.len());
    for (seq, rel, old_sha, new_sha) in pending {
        let (blob, edits) = blob_of(&state, &rel)?;
        resumed_items.push(Item {
            edits,
            seq,
            rel,
            old_sha,
            new_sha,
            blob,
            resumed: true,
        });
    }
    for items in batches(resumed_items, |i| &i.rel) {
        apply_batch(&mut state, &batch, items)?;
    }
    let mut seq: i64 = state.conn.query_row(
        "SELECT COALESCE(MAX(seq), 0) FROM journal WHERE run_id = ?1",
        [run_id],
        |r| r.get(0),
    )?;
    // The plan's resources not yet journaled in this run, that this run takes, in path order, a
    // page at a time (a to-do list of the whole plan would grow with it: about 300 B a resource).
    let takes = |rel: &str| layout.takes(selection.as_ref(), rel);
    let mut todo = TodoPages::new(plan_id, run_id);
    let total = todo.count(&state, &takes)?;
    let bar = progress.start("applying", Some(total));
    // The same batches as [`batches`] makes of the whole list: one resource may wait for the next.
    let mut carried: Option<(String, String, String)> = None;
    loop {
        let mut chunk = Vec::new();
        let mut folders: std::collections::HashSet<String> = Default::default();
        loop {
            let next = match carried.take() {
                Some(t) => t,
                None => match todo.next(&state, &takes)? {
                    Some(t) => t,
                    None => break,
                },
            };
            let folder = split_rel(&next.0).0;
            if chunk.len() >= BATCH || (!folders.contains(folder) && folders.len() >= BATCH_FOLDERS)
            {
                carried = Some(next);
                break;
            }
            folders.insert(folder.to_string());
            chunk.push(next);
        }
        if chunk.is_empty() {
            break;
        }
        if let Some(sig) = interrupt::pending() {
            bar.finish();
            interrupted(&state, &mut summary, sig)?;
            return Ok(summary);
        }
        let n = chunk.len() as u64;
        let mut items = Vec::with_capacity(chunk.len());
        for (rel, old_sha, new_sha) in chunk {
            seq += 1;
            let (blob, edits) = blob_of(&state, &rel)?;
            items.push(Item {
                edits,
                seq,
                rel,
                old_sha,
                new_sha,
                blob,
                resumed: false,
            });
        }
        apply_batch(&mut state, &batch, items)?;
        bar.inc(n);
    }
    bar.finish();
    tracing::info!("resources: done at {:.2?}", started.elapsed());
    if let Some(sig) = interrupt::pending() {
        interrupted(&state, &mut summary, sig)?;
        return Ok(summary);
    }
    if selection.as_ref().is_none_or(|s| s.rest) {
        apply_databases(&mut state, run_id, plan_id, &backups, &mut summary)?;
    }
    let take = |home: &str| layout.takes_home(selection.as_ref(), home);
    if !adopt_homes(&mut state, run_id, plan_id, &dirs, &take, &mut summary)? {
        let sig = interrupt::pending().unwrap_or(libc::SIGINT);
        interrupted(&state, &mut summary, sig)?;
        return Ok(summary);
    }
    tracing::info!("homes adopted, run finished at {:.2?}", started.elapsed());
    state.conn.execute(
        "UPDATE runs SET status = 'done', finished_at = ?1 WHERE id = ?2",
        rusqlite::params![now_rfc3339(), run_id],
    )?;
    summary.state = Some(state.advance_run(run_id, RunEvent::FinishApply)?);
    totals(&state, &mut summary)?;
    if selection.is_some() {
        let p = stage::progress(&state, plan_id)?;
        if !p.complete() && summary.homes_adopted > 0 {
            summary.notes.push(
                "dropbox and attachment links (X-APPLE-DROPBOX, ATTACH) in the homes not yet applied that point into the homes this stage moved stay stale until the stage of their own home rewrites them".to_string(),
            );
        }
        summary.stage = Some(p);
    }
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

/// Records a step as pending (durably), takes it, marks it done. `home` names the home it adopts
/// (counted in the run's summary).
pub(crate) fn journaled_home_step(
    state: &mut State,
    run_id: i64,
    root: &Path,
    step: &HomeStep,
    home: &str,
) -> Result<()> {
    let dir = Dir::open(root).map_err(|e| Error::io("cannot open", root, e))?;
    journaled_home_step_at(state, run_id, &dir, step, home)
}

fn journaled_home_step_at(
    state: &mut State,
    run_id: i64,
    root: &Dir,
    step: &HomeStep,
    home: &str,
) -> Result<()> {
    let seq: i64 = state.conn.query_row(
        "SELECT COALESCE(MAX(seq), 0) + 1 FROM journal WHERE run_id = ?1",
        [run_id],
        |r| r.get(0),
    )?;
    let (rel, target, meta) = step.to_row();
    state.conn.execute(
        "INSERT INTO journal (run_id, seq, action, rel_path, target_path, meta_json, state, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7)",
        rusqlite::params![run_id, seq, step.action(), rel, target, meta, format!("home:{home}")],
    )?;
    homes::execute(root, step)?;
    state.conn.execute(
        "UPDATE journal SET state = 'done' WHERE run_id = ?1 AND seq = ?2",
        rusqlite::params![run_id, seq],
    )?;
    Ok(())
}

/// Moves every home kept under an old id to its current GUID's hashed path (see [`crate::homes`]).
/// `false` when a signal stopped it between two homes.
fn adopt_homes(
    state: &mut State,
    run_id: i64,
    plan_id: i64,
    dirs: &RootDirs,
    take: &dyn Fn(&str) -> bool,
    summary: &mut RunSummary,
) -> Result<bool> {
    let (root, store) = (&dirs.store, dirs.roots.store.as_path());
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
        let root = dirs.for_rel(&rel);
        homes::execute(root, &HomeStep::from_row(&action, rel, target, &meta)?)?;
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
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
    let todo = todo.into_iter().filter(|t| take(&t.0));
    for (old_rel, layout, old_id, new_guid) in todo {
        if interrupt::pending().is_some() {
            return Ok(false);
        }
        let steps = homes::plan_adoption(store, &old_rel, &new_guid, &mut summary.notes)?;
        for step in &steps {
            journaled_home_step_at(state, run_id, root, step, &old_rel)?;
        }
        let hrefs = homes::old_hrefs(&layout, &old_id);
        for step in
            homes::plan_href_updates(store, &homes::hashed_home(&new_guid), &hrefs, &new_guid)?
        {
            journaled_home_step_at(state, run_id, root, &step, &old_rel)?;
        }
    }
    if interrupt::pending().is_some() {
        return Ok(false);
    }
    crate::addressbooks::adopt_homes(
        state,
        run_id,
        plan_id,
        &dirs.roots,
        take,
        &mut summary.homes_adopted,
        &mut summary.notes,
    )?;
    Ok(true)
}

/// A step of the undone run, as rollback reads it.
struct UndoItem {
    undone: i64,
    action: Action,
    rel: String,
    target: Option<String>,
    original_sha: String,
    applied_sha: String,
    backup: Option<String>,
    meta: Option<String>,
    /// This rollback's own step for it, when an interruption left one pending.
    existing: Option<i64>,
    /// The seq of this rollback's step.
    seq: i64,
}

/// Decision about one file of a rollback batch.
struct Undo {
    item: UndoItem,
    state: StepState,
    detail: String,
    prepared: Option<PreparedWrite>,
    renew: Option<(String, Arc<Dir>, String)>,
}

fn undo_detail_missing() -> String {
    "missing: deleted or moved after the run; `--force` restores it from its backup".into()
}

fn undo_detail_changed() -> String {
    "changed after the run (it no longer holds what the run wrote); `--force` restores the original anyway, replacing that change".into()
}

/// The bytes of a backup, or why not (a damaged or missing backup).
fn backup_bytes(backups: &Backups, item: &UndoItem) -> Result<Vec<u8>> {
    backups.get(item.backup.as_deref().unwrap_or_default())
}

fn prepare_undo(cache: &Caches, backups: &Backups, force: bool, item: UndoItem) -> Result<Undo> {
    let mut u = Undo {
        item,
        state: StepState::Done,
        detail: String::new(),
        prepared: None,
        renew: None,
    };
    let (dir, name) = match cache.parent(&u.item.rel) {
        Ok(x) => x,
        Err(e) => {
            u.state = StepState::Skipped;
            u.detail = format!("not restored: {e}");
            return Ok(u);
        }
    };
    let current = sha256_at(&dir, name)?;
    // A step that changed only attributes left the bytes as they were: it is undone unless the
    // attributes are back too.
    let restored = current.as_deref() == Some(u.item.original_sha.as_str())
        && (u.item.original_sha != u.item.applied_sha
            || attrs_as_saved(&FileMeta::of_at(&dir, name)?, u.item.meta.as_deref())?);
    if restored {
        u.detail = "already restored".into();
        if u.item.existing.is_some() && renews_ctag(&dir, name) {
            let prefix = choose_prefix_dir(None, &[], &dir);
            u.renew = Some((split_rel(&u.item.rel).0.to_string(), dir, prefix));
        }
        return Ok(u);
    }
    if !force {
        if current.is_none() {
            u.state = StepState::Skipped;
            u.detail = undo_detail_missing();
            return Ok(u);
        }
        if current.as_deref() != Some(u.item.applied_sha.as_str()) {
            u.state = StepState::Skipped;
            u.detail = undo_detail_changed();
            return Ok(u);
        }
    }
    let bytes = match backup_bytes(backups, &u.item) {
        Ok(b) => b,
        Err(e) if force => {
            u.state = StepState::Skipped;
            u.detail = e.message;
            return Ok(u);
        }
        Err(e) => {
            return Err(Error::runtime(format!(
                "{}: {}; nothing of this batch was restored. `rollback --force` skips this file (reporting it) and restores the rest",
                u.item.rel, e.message
            )))
        }
    };
    let meta: SavedMeta = serde_json::from_str(u.item.meta.as_deref().unwrap_or("{}"))?;
    let meta = meta.to_meta()?;
    let prepared = prepare_restore(dir, name, current, &bytes, &meta, false)?;
    u.state = StepState::Pending;
    u.prepared = Some(prepared);
    Ok(u)
}

/// Undoes a batch of rewrite steps: backups read and the originals put in temporary files (in
/// parallel), made durable; the undo steps recorded durably; then the renames, a new ctag for
/// every collection touched, made durable; then marked done.
fn undo_batch(
    state: &mut State,
    rb: i64,
    dirs: &RootDirs,
    backups: &Backups,
    force: bool,
    items: Vec<UndoItem>,
) -> Result<()> {
    use rayon::prelude::*;
    let cache = Caches::new(dirs)?;
    let undos: Vec<Undo> = items
        .into_par_iter()
        .map(|it| prepare_undo(&cache, backups, force, it))
        .collect::<Result<_>>()?;
    if undos.iter().any(|u| u.prepared.is_some()) {
        dirs.sync()?;
    }
    {
        let tx = state.conn.transaction()?;
        for u in &undos {
            match u.item.existing {
                Some(seq) => {
                    tx.execute(
                        "UPDATE journal SET state = ?1, detail = ?2 WHERE run_id = ?3 AND seq = ?4",
                        rusqlite::params![u.state, u.detail, rb, seq],
                    )?;
                }
                None => {
                    tx.execute(
                        "INSERT INTO journal (run_id, seq, action, rel_path, target_path, undoes_seq, state, detail) VALUES (?1, ?2, 'undo', ?3, ?4, ?5, ?6, ?7)",
                        rusqlite::params![rb, u.item.seq, u.item.rel, u.item.target, u.item.undone, u.state, u.detail],
                    )?;
                }
            }
        }
        tx.commit()?;
    }
    let mut collections: BTreeMap<String, (Arc<Dir>, String)> = BTreeMap::new();
    let mut prepared = Vec::new();
    for u in undos {
        if let Some((folder, dir, prefix)) = u.renew {
            collections.entry(folder).or_insert((dir, prefix));
        }
        if let Some(p) = u.prepared {
            let seq = u.item.existing.unwrap_or(u.item.seq);
            prepared.push((seq, u.item.rel, p));
        }
    }
    // (seq, file, its folder, attribute prefix, how the rename went)
    type Committed = (
        i64,
        String,
        Arc<Dir>,
        String,
        std::result::Result<(), WriteError>,
    );
    let committed: Vec<Committed> = prepared
        .into_par_iter()
        .map(|(seq, rel, p)| {
            let dir = p.dir().clone();
            let prefix = p.prefix.clone();
            (seq, rel, dir, prefix, p.commit().map(|_| ()))
        })
        .collect();
    interrupt::test_pause("rollback-rename");
    let mut results = Vec::with_capacity(committed.len());
    for (seq, rel, dir, prefix, r) in committed {
        match r {
            Ok(()) => {
                let (folder, name) = split_rel(&rel);
                if renews_ctag(&dir, name) {
                    collections
                        .entry(folder.to_string())
                        .or_insert((dir, prefix));
                }
                results.push((seq, StepState::Done, String::new()));
            }
            Err(WriteError::Changed { .. }) => {
                results.push((seq, StepState::Skipped, undo_detail_changed()))
            }
            Err(WriteError::Failed(e)) => return Err(e),
        }
    }
    for (dir, prefix) in collections.values() {
        bump_ctag_dir(dir, prefix)?;
    }
    if !results.is_empty() {
        dirs.sync()?;
    }
    let tx = state.conn.transaction()?;
    for (seq, st, detail) in results {
        tx.execute(
            "UPDATE journal SET state = ?1, detail = ?2 WHERE run_id = ?3 AND seq = ?4",
            rusqlite::params![st, detail, rb, seq],
        )?;
    }
    tx.commit()?;
    interrupt::test_pause("rollback-batch");
    Ok(())
}

/// Undoes one step that is not a store resource (a home step, a delegate database, a whole file
/// such as augments.xml), journaled on its own.
fn undo_single(
    state: &mut State,
    rb: i64,
    dirs: Option<&RootDirs>,
    backups: &Backups,
    force: bool,
    item: UndoItem,
) -> Result<()> {
    let seq = match item.existing {
        Some(seq) => seq,
        None => {
            state.conn.execute(
                "INSERT INTO journal (run_id, seq, action, rel_path, target_path, undoes_seq, state) VALUES (?1, ?2, 'undo', ?3, ?4, ?5, 'pending')",
                rusqlite::params![rb, item.seq, item.rel, item.target, item.undone],
            )?;
            item.seq
        }
    };
    let (st, detail) = if item.action.is_file() {
        // Outside the store: the path is absolute.
        let path = PathBuf::from(&item.rel);
        let current = std::fs::read(&path).ok().map(|b| sha256_hex(&b));
        if current.as_deref() == Some(item.original_sha.as_str()) {
            (StepState::Done, "already restored".to_string())
        } else if !force && current.is_none() {
            (StepState::Skipped, undo_detail_missing())
        } else if !force && current.as_deref() != Some(item.applied_sha.as_str()) {
            (StepState::Skipped, undo_detail_changed())
        } else {
            match backup_bytes(backups, &item) {
                Err(e) if force => (StepState::Skipped, e.message),
                Err(e) => {
                    return Err(Error::runtime(format!(
                    "{}: {}; `rollback --force` skips this file (reporting it) and restores the rest",
                    item.rel, e.message
                )))
                }
                Ok(bytes) => {
                    let meta: SavedMeta =
                        serde_json::from_str(item.meta.as_deref().unwrap_or("{}"))?;
                    restore(&path, &bytes, &meta.to_meta()?)?;
                    (StepState::Done, String::new())
                }
            }
        }
    } else {
        let root = dirs
            .ok_or_else(|| Error::runtime("the store of this run cannot be opened"))?
            .for_rel(&item.rel);
        let step = HomeStep::from_row(
            item.action.as_str(),
            item.rel.clone(),
            item.target.clone(),
            item.meta.as_deref().unwrap_or("{}"),
        )?;
        homes::undo(root, &step)?;
        (StepState::Done, String::new())
    };
    state.conn.execute(
        "UPDATE journal SET state = ?1, detail = ?2 WHERE run_id = ?3 AND seq = ?4",
        rusqlite::params![st, detail, rb, seq],
    )?;
    Ok(())
}

/// The run `rollback` undoes when none is named: the newest apply or provision run not yet
/// rolled back, else the newest one (to report that it was rolled back).
fn default_rollback_target(state: &State) -> Result<i64> {
    let open: Option<i64> = state.conn.query_row(
        "SELECT MAX(id) FROM runs WHERE kind IN ('apply', 'provision') AND COALESCE(state, '') != 'rolled-back'",
        [],
        |r| r.get(0),
    )?;
    if let Some(id) = open {
        return Ok(id);
    }
    state
        .conn
        .query_row(
            "SELECT MAX(id) FROM runs WHERE kind IN ('apply', 'provision')",
            [],
            |r| r.get::<_, Option<i64>>(0),
        )?
        .ok_or_else(|| Error::usage("no applied run to roll back"))
}

/// Undoes an apply or provision run (the latest not yet undone when `run` is `None`), newest step
/// first. Apply runs made later on the same store and not rolled back are undone first (newest
/// first), so every run's state stays true. One summary per run undone.
pub fn rollback(
    progress: &dyn Progress,
    cfg: &Config,
    opts: &RollbackOptions,
) -> Result<Vec<RunSummary>> {
    let (run, force) = (opts.run, opts.force);
    let mut state = State::open_existing(&cfg.state.path)?;
    if cfg.store.kind == crate::config::StoreKind::CalendarserverPg {
        return Ok(vec![crate::db::rollback::rollback(
            progress, cfg, run, force,
        )?]);
    }
    let target = match run {
        Some(id) => id,
        None => default_rollback_target(&state)?,
    };
    let (kind, store_path, undoes): (RunKind, String, Option<i64>) = state
        .conn
        .query_row(
            "SELECT kind, store_path, undoes_run FROM runs WHERE id = ?1",
            [target],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => {
                Error::usage(format!("there is no run {target}"))
            }
            e => e.into(),
        })?;
    if kind == RunKind::Rollback {
        return Err(Error::usage(format!(
            "run {target} is a rollback (of run {}), not an apply or provision run; to redo what it undid, run `principal-reconciler apply` again",
            undoes.unwrap_or_default()
        )));
    }
    let store = PathBuf::from(&store_path);
    refuse_pruned(&state, target)?;
    let roots = crate::addressbooks::run_roots(&state, target, store)?;
    for root in roots.all() {
        refuse_while_server_runs(root, force)?;
    }
    let mut order: Vec<i64> = Vec::new();
    if kind == RunKind::Apply {
        let mut st = state.conn.prepare(
            "SELECT id FROM runs WHERE kind = 'apply' AND store_path = ?1 AND id > ?2
               AND COALESCE(state, 'applying') != 'rolled-back' ORDER BY id DESC",
        )?;
        let rows = st.query_map(rusqlite::params![store_path, target], |r| r.get(0))?;
        order = rows.collect::<rusqlite::Result<_>>()?;
    }
    for &id in &order {
        refuse_pruned(&state, id).map_err(|e| {
            e.context(format!(
                "run {id} was applied on the same store after run {target} and must be undone first"
            ))
        })?;
    }
    order.push(target);
    let backups = Backups::open(&cfg.state.path)?;
    let _signals = interrupt::install();
    let mut out = Vec::new();
    for id in order {
        let mut s = rollback_one(progress, &mut state, &backups, id, force)?;
        if id != target {
            s.notes.push(format!(
                "run {id} was applied on the same store after run {target}: undone first, so run {target} can be undone"
            ));
        }
        let stop = s.interrupted.is_some();
        out.push(s);
        if stop {
            break;
        }
    }
    Ok(out)
}

/// A run whose journal and backups `state prune` dropped cannot be rolled back.
fn refuse_pruned(state: &State, run: i64) -> Result<()> {
    let pruned: Option<String> =
        state
            .conn
            .query_row("SELECT pruned_at FROM runs WHERE id = ?1", [run], |r| {
                r.get(0)
            })?;
    match pruned {
        Some(at) => Err(Error::usage(format!(
            "run {run} can no longer be rolled back: its journal and backups were dropped by `principal-reconciler state prune` ({at})"
        ))),
        None => Ok(()),
    }
}

fn rollback_one(
    progress: &dyn Progress,
    state: &mut State,
    backups: &Backups,
    target: i64,
    force: bool,
) -> Result<RunSummary> {
    let (store_path, plan_id, finished): (String, Option<i64>, Option<String>) =
        state.conn.query_row(
            "SELECT store_path, plan_id, finished_at FROM runs WHERE id = ?1",
            [target],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
    let store = PathBuf::from(&store_path);
    let dirs = RootDirs::open(crate::addressbooks::run_roots(
        state,
        target,
        store.clone(),
    )?)
    .ok();
    let mut summary = RunSummary {
        kind: "rollback",
        undoes_run: Some(target),
        plan_id,
        ..Default::default()
    };
    let current = state.run_state(target)?;
    let previous: Option<(i64, Option<String>)> = state
        .conn
        .query_row(
            "SELECT id, finished_at FROM runs WHERE kind = 'rollback' AND undoes_run = ?1 ORDER BY id DESC LIMIT 1",
            [target],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ok();
    if current == RunState::RolledBack {
        let checked = check_run(state, dirs.as_ref(), target, true)?;
        if checked.differing.is_empty() || !force {
            let (rb, at) = previous.unwrap_or((0, finished));
            summary.run_id = rb;
            summary.already_done = true;
            summary.finished_at = at;
            summary.state = Some(RunState::RolledBack);
            summary.checked = Some(checked);
            totals(state, &mut summary)?;
            return Ok(summary);
        }
        summary.notes.push(format!(
            "run {target} was rolled back before, but {} of its files no longer hold their original bytes: restoring them again (--force)",
            checked.differing.len()
        ));
    }
    let rb = match previous {
        Some((id, _)) if current == RunState::RollingBack => {
            let unfinished: bool = state.conn.query_row(
                "SELECT status != 'done' FROM runs WHERE id = ?1",
                [id],
                |r| r.get(0),
            )?;
            if unfinished {
                summary.resumed = true;
                summary
                    .notes
                    .push(format!("rollback run {id} did not finish; resuming it"));
                state.conn.execute(
                    "UPDATE runs SET status = 'running', stopped_by = NULL WHERE id = ?1",
                    [id],
                )?;
                id
            } else {
                new_run(state, RunKind::Rollback, plan_id, Some(target), &store)?
            }
        }
        _ => new_run(state, RunKind::Rollback, plan_id, Some(target), &store)?,
    };
    summary.run_id = rb;
    if current == RunState::RolledBack {
        // A forced second rollback: the state machine goes through rolling back again.
        state.conn.execute(
            "UPDATE runs SET state = 'rolling-back' WHERE id = ?1",
            [target],
        )?;
    } else {
        state.advance_run(target, RunEvent::StartRollback)?;
    }
    // Temporary files an interrupted apply (or rollback) left beside the resources.
    if let (Some(r), Some(p)) = (&dirs, plan_id) {
        let removed = remove_leftovers(state, r, p)?;
        if removed > 0 {
            summary.notes.push(format!(
                "removed {removed} temporary file(s) an interrupted run had left in the store"
            ));
        }
    }
    let mut next_seq: i64 = state.conn.query_row(
        "SELECT COALESCE(MAX(seq), 0) FROM journal WHERE run_id = ?1",
        [rb],
        |r| r.get(0),
    )?;
    type Row = (
        i64,
        Action,
        String,
        Option<String>,
        String,
        String,
        Option<String>,
        Option<String>,
    );
    // The run's steps are read in reverse order a page at a time (keyset pagination on the
    // journal's primary key): a list of them all, with their saved attributes, would grow with
    // the run (199 MB at 100,000 resources).
    let page_of = |state: &State, before: i64| -> Result<Vec<Row>> {
        let mut st = state.conn.prepare_cached(
            "SELECT seq, action, rel_path, target_path, before_sha256, after_sha256, backup_sha256, meta_json FROM journal
             WHERE run_id = ?1 AND seq < ?2 AND state IN ('done', 'pending') ORDER BY seq DESC LIMIT ?3",
        )?;
        let rows = st.query_map(rusqlite::params![target, before, PAGE], |r| {
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
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    };
    // The undo step a resumed rollback already journaled for a step, found through
    // `journal_by_undone`.
    let undone = |state: &State, undone_seq: i64| -> Result<Option<(i64, StepState)>> {
        let mut st = state.conn.prepare_cached(
            "SELECT seq, state FROM journal INDEXED BY journal_by_undone
             WHERE run_id = ?1 AND undoes_seq = ?2 AND action = 'undo'
             ORDER BY seq DESC LIMIT 1",
        )?;
        Ok(st
            .query_row(rusqlite::params![rb, undone_seq], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?)
    };
    let total: u64 = state.conn.query_row(
        "SELECT COUNT(*) FROM journal WHERE run_id = ?1 AND state IN ('done', 'pending')",
        [target],
        |r| r.get(0),
    )?;
    let bar = progress.start("restoring", Some(total));
    let mut batch: Vec<UndoItem> = Vec::new();
    let flush = |state: &mut State, batch: &mut Vec<UndoItem>| -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let items = std::mem::take(batch);
        let dirs = dirs
            .as_ref()
            .ok_or_else(|| Error::runtime(format!("cannot open the store {}", store.display())))?;
        for part in batches(items, |i| &i.rel) {
            undo_batch(state, rb, dirs, backups, force, part)?;
        }
        Ok(())
    };
    // A forced second rollback of a rolled-back run puts back files only: its home steps were
    // undone by the first rollback.
    let files_only = current == RunState::RolledBack;
    let mut before = i64::MAX;
    loop {
        let page = page_of(state, before)?;
        let Some(tail) = page.last() else { break };
        before = tail.0;
        for (undone_seq, action, rel, target_path, original_sha, applied_sha, backup, meta) in page
        {
            bar.inc(1);
            if action == Action::Rewrite && backup.is_none() {
                continue; // the file already held the new bytes: nothing of ours to undo
            }
            if files_only && !action.is_file() {
                continue;
            }
            let existing = match undone(state, undone_seq)? {
                Some((_, StepState::Done | StepState::Skipped)) => continue,
                Some((seq, StepState::Pending)) => Some(seq),
                None => None,
            };
            let seq = match existing {
                Some(s) => s,
                None => {
                    next_seq += 1;
                    next_seq
                }
            };
            let item = UndoItem {
                undone: undone_seq,
                action,
                rel,
                target: target_path,
                original_sha,
                applied_sha,
                backup,
                meta,
                existing,
                seq,
            };
            if action == Action::Rewrite {
                batch.push(item);
                if batch.len() >= BATCH {
                    flush(state, &mut batch)?;
                }
            } else {
                flush(state, &mut batch)?;
                undo_single(state, rb, dirs.as_ref(), backups, force, item)?;
            }
            if batch.is_empty() {
                if let Some(sig) = interrupt::pending() {
                    bar.finish();
                    interrupted(state, &mut summary, sig)?;
                    summary.state = Some(RunState::RollingBack);
                    return Ok(summary);
                }
            }
        }
    }
    flush(state, &mut batch)?;
    bar.finish();
    state.conn.execute(
        "UPDATE runs SET status = 'done', finished_at = ?1 WHERE id = ?2",
        rusqlite::params![now_rfc3339(), rb],
    )?;
    summary.state = Some(state.advance_run(target, RunEvent::FinishRollback)?);
    totals(state, &mut summary)?;
    Ok(summary)
}
