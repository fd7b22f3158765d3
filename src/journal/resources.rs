//! The plan's resources carried out in batches: prepared in parallel, journaled durably, renamed,
//! marked done.

use super::marks::{self, Mark};
use super::saved::SavedMeta;
use super::{BATCH, BATCH_FOLDERS};
use crate::error::Result;
use crate::interrupt;
use crate::state::journal_rows::{self as rows, NewRewrite};
use crate::state::{State, StepState};
use crate::store::confined::split_rel;
use crate::store::props::AttrEdit;
use crate::store::seam::{self, Backups, Collection, CtagRenewal, Staged, Store};
use crate::store::write::{sha256_hex, WriteError, WriteOptions};
use std::collections::BTreeMap;
use std::path::Path;

/// Splits work into batches of at most [`BATCH`] steps and [`BATCH_FOLDERS`] folders.
pub(super) fn batches<T>(items: Vec<T>, rel: impl Fn(&T) -> &str) -> Vec<Vec<T>> {
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
pub(super) struct Item {
    pub(super) seq: i64,
    pub(super) rel: String,
    pub(super) old_sha: String,
    pub(super) new_sha: String,
    /// Where its new bytes come from (recomputed from the file, or stored by an older plan).
    pub(super) blob: crate::replay::NewBytes,
    /// Planned attribute edits (server properties that change besides the bytes).
    pub(super) edits: Vec<AttrEdit>,
    pub(super) resumed: bool,
}

/// Whether a file's attributes hold every planned edit.
pub(super) fn edits_hold(attrs: &[(String, Vec<u8>)], edits: &[AttrEdit]) -> Result<bool> {
    for e in edits {
        let new = e.new_value()?;
        if !attrs.iter().any(|(n, v)| *n == e.name && *v == new) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// One resource step of a batch, before it is recorded.
#[derive(Default)]
pub(super) struct Step {
    pub(super) seq: i64,
    pub(super) rel: String,
    pub(super) old_sha: String,
    pub(super) new_sha: String,
    pub(super) backup: Option<String>,
    pub(super) meta: Option<String>,
    pub(super) state: Option<StepState>,
    pub(super) detail: String,
    pub(super) resumed: bool,
    pub(super) prepared: Option<Staged>,
    /// A collection whose ctag must be renewed although nothing is renamed now (a step of an
    /// interrupted batch whose file already holds the new bytes).
    pub(super) renew: Option<(String, CtagRenewal)>,
}

impl Step {
    pub(super) fn skip(&mut self, why: String) {
        self.state = Some(StepState::Skipped);
        self.detail = why;
    }
}

pub(super) fn prepare_step(
    cache: &dyn seam::Batch,
    backups: &Backups,
    opts: &WriteOptions,
    rewrites: &crate::replay::PlannedRewrites,
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
    let file = match cache.file(&it.rel) {
        Ok(f) => f,
        Err(e) => {
            step.skip(format!("not written: {e}"));
            return Ok(step);
        }
    };
    let bytes = match file.read() {
        Err(e) => {
            step.skip(format!("cannot read: {e}"));
            return Ok(step);
        }
        Ok(b) => b,
    };
    let sha = sha256_hex(&bytes);
    // (A resource whose only change is an attribute keeps its bytes.)
    let done =
        sha == it.new_sha && (it.edits.is_empty() || edits_hold(&file.meta()?.xattrs, &it.edits)?);
    if done {
        step.state = Some(StepState::Done);
        if it.resumed {
            // Renamed before the interruption; its ctag may not have been renewed.
            let collection = file.collection(opts.xattr_prefix.as_deref())?;
            step.renew = Some((split_rel(&it.rel).0.to_string(), collection));
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
            step.meta = Some(serde_json::to_string(&SavedMeta::from_meta(&file.meta()?))?);
        }
        match file.stage_write(&it.old_sha, &new_bytes, opts, &it.edits) {
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
pub(super) struct Batch<'a> {
    pub(super) run_id: i64,
    pub(super) dirs: &'a dyn Store,
    pub(super) state_dir: &'a Path,
    pub(super) backups: &'a Backups,
    pub(super) opts: &'a WriteOptions,
    /// The plan's rewrites, replayed on each file.
    pub(super) rewrites: &'a crate::replay::PlannedRewrites,
}

/// One batch: (a) originals saved and new bytes in temporary files beside them, in parallel;
/// (b) backups and temporary files durable, then the steps recorded durably; (c) the renames,
/// one new ctag per collection (every collection of the batch, including those of steps an
/// interruption left pending), made durable together, then marked done.
pub(super) fn apply_batch(state: &mut State, b: &Batch<'_>, items: Vec<Item>) -> Result<()> {
    use rayon::prelude::*;
    let cache = b.dirs.open_batch()?;
    let steps: Vec<Step> = items
        .into_par_iter()
        .map(|it| prepare_step(&*cache, b.backups, b.opts, b.rewrites, it))
        .collect::<Result<_>>()?;
    interrupt::test_pause("apply-prepared");
    b.backups.sync()?;
    b.dirs.sync_apart_from(b.state_dir)?;
    {
        let tx = state.conn.transaction()?;
        for s in steps.iter().filter(|s| !s.resumed) {
            let step = NewRewrite {
                seq: s.seq,
                rel: &s.rel,
                old_sha: &s.old_sha,
                new_sha: &s.new_sha,
                backup: s.backup.as_deref(),
                meta: s.meta.as_deref(),
                state: s.state,
                detail: &s.detail,
            };
            rows::insert_rewrite(&tx, b.run_id, &step)?;
        }
        tx.commit()?;
    }
    let mut collections: BTreeMap<String, CtagRenewal> = BTreeMap::new();
    let mut prepared = Vec::new();
    let mut results: Vec<Mark> = Vec::new();
    for s in steps {
        if let Some((folder, c)) = s.renew {
            collections.entry(folder).or_insert(c);
        }
        match s.prepared {
            Some(p) => {
                let folder = split_rel(&s.rel).0.to_string();
                collections.entry(folder).or_insert_with(|| p.collection());
                prepared.push((s.seq, p));
            }
            None if s.resumed => {
                results.push(Mark::new(
                    s.seq,
                    s.state.unwrap_or(StepState::Skipped),
                    s.detail,
                ));
            }
            None => {}
        }
    }
    let committed: Vec<(i64, std::result::Result<(), WriteError>)> = prepared
        .into_par_iter()
        .map(|(seq, p)| (seq, p.commit()))
        .collect();
    interrupt::test_pause("apply-rename");
    for (seq, r) in committed {
        match r {
            Ok(()) => results.push(Mark::new(seq, StepState::Done, "")),
            Err(WriteError::Changed { .. }) => {
                results.push(Mark::new(seq, StepState::Skipped, "changed since plan"))
            }
            Err(WriteError::Failed(e)) => return Err(e),
        }
    }
    if !b.opts.plain_files {
        for (i, c) in collections.values().enumerate() {
            c.renew()?;
            if i == 0 {
                interrupt::test_pause("apply-ctag");
            }
        }
    }
    if !results.is_empty() {
        b.dirs.sync()?;
    }
    marks::record(state, b.run_id, results)?;
    interrupt::test_pause("apply-batch");
    Ok(())
}
