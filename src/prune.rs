//! Keeps the state folder bounded: old plans are dropped after each successful `plan`
//! (`[state] keep_plans`), and `state prune` drops them on demand, and — only when asked — the
//! journal and backups of runs the admin no longer wants to undo.
//!
//! What is never dropped: the newest `keep_plans` plans, the newest complete plan (the one `apply`
//! takes), a plan a run still needs (a run that is applying, applied or rolling back, unless its
//! journal was dropped), the journal of a run that is applying or rolling back, and a backup that
//! the journal of a run not being dropped still refers to (backups are content-addressed: two runs
//! may share one file).

use crate::config::Config;
use crate::error::{Error, Result};
use crate::state::{now_rfc3339, State, DB_FILE};
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::Path;

/// What one plan held that pruning drops.
#[derive(Debug, Serialize)]
pub struct PlanFreed {
    /// The plan's id.
    pub plan_id: i64,
    /// Resources the plan rewrites (rows of `plan_items`).
    pub resources: i64,
    /// Changed properties the plan holds.
    pub changes: i64,
    /// Bytes of planned data (new bytes, changed lines), before SQLite's own overhead.
    pub bytes: i64,
}

/// What one run's journal held that pruning drops.
#[derive(Debug, Serialize)]
pub struct RunFreed {
    /// The run's id.
    pub run_id: i64,
    /// Its lifecycle state word (`applied`, `rolled-back`, ...).
    pub state: String,
    /// Journal steps, its rollbacks' steps included.
    pub steps: i64,
}

#[derive(Debug, Default, Serialize)]
/// What `prune` dropped (or, with `--dry-run`, would drop) and how much it freed.
pub struct PruneReport {
    /// `--dry-run`: nothing was dropped; the figures say what would be.
    pub dry_run: bool,
    /// Plans dropped.
    pub plans: Vec<PlanFreed>,
    /// Runs whose journal and backups were dropped.
    pub runs: Vec<RunFreed>,
    /// Backup files dropped (or that would be), and their bytes.
    pub backups: usize,
    /// Bytes of the backup files dropped.
    pub backup_bytes: u64,
    /// Backups of the dropped runs kept because another run's journal refers to them.
    pub backups_shared: usize,
    /// The state database's size (with its write-ahead log) before and after.
    pub database_bytes_before: u64,
    /// The state database's size in bytes after pruning and compacting.
    pub database_bytes_after: u64,
}

fn database_bytes(dir: &Path) -> u64 {
    ["", "-wal"]
        .iter()
        .map(|suffix| {
            std::fs::metadata(dir.join(format!("{DB_FILE}{suffix}")))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum()
}

/// Plans that may be dropped when `keep` are kept (`dropping`: runs whose journal is being
/// dropped too, as a comma-separated list, or empty).
fn prunable_plans(state: &State, keep: usize, dropping: &str) -> Result<Vec<i64>> {
    let also = if dropping.is_empty() {
        String::new()
    } else {
        format!(" AND r.id NOT IN ({dropping})")
    };
    let mut st = state.conn.prepare(&format!(
        "SELECT p.id FROM plans p
          WHERE p.status != 'pruned'
            AND p.id NOT IN (SELECT id FROM plans ORDER BY id DESC LIMIT ?1)
            AND p.id != COALESCE((SELECT MAX(id) FROM plans WHERE status = 'complete'), -1)
            AND NOT EXISTS (
                SELECT 1 FROM runs r
                 WHERE r.plan_id = p.id AND r.kind != 'rollback' AND r.pruned_at IS NULL
                   AND COALESCE(r.state, 'applying') != 'rolled-back'{also})
          ORDER BY p.id"
    ))?;
    let rows = st.query_map([keep as i64], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn plan_freed(state: &State, plan_id: i64) -> Result<PlanFreed> {
    let (resources, item_changes, rb): (i64, i64, i64) = state.conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(changes), 0),
                COALESCE(SUM(COALESCE(length(new_bytes), 0) + length(name) + 64 + COALESCE(length(attr_edits), 0) + COALESCE(length(packed), 0)), 0)
           FROM plan_items WHERE plan_id = ?1",
        [plan_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    // Changes kept whole are rows of string ids (about 8 bytes) and each distinct text once.
    let cb: i64 = state.conn.query_row(
        "SELECT COALESCE(SUM(8 + length(old_line) + length(new_line)), 0)
           FROM (SELECT old_line, new_line FROM plan_change_rows WHERE plan_id = ?1
                 UNION ALL SELECT old_line, new_line FROM plan_item_changes WHERE plan_id = ?1)",
        [plan_id],
        |r| r.get(0),
    )?;
    // Items' changes are counted with them; the other rows are the database store's paths.
    let changes = item_changes
        + state.conn.query_row(
            "SELECT COUNT(*) FROM plan_change_rows WHERE plan_id = ?1",
            [plan_id],
            |r| r.get::<_, i64>(0),
        )?;
    let sb: i64 = state.conn.query_row(
        "SELECT COALESCE(SUM(length(text)), 0) FROM plan_strings WHERE plan_id = ?1",
        [plan_id],
        |r| r.get(0),
    )?;
    let wb: i64 = state.conn.query_row(
        "SELECT COALESCE(SUM(length(key) + length(value)), 0) FROM plan_rewrites WHERE plan_id = ?1",
        [plan_id],
        |r| r.get(0),
    )?;
    Ok(PlanFreed {
        plan_id,
        resources: resources + crate::store::pg::prune::plan_objects(&state.conn, plan_id)?,
        changes,
        bytes: rb + cb + sb + wb,
    })
}

const PLAN_TABLES: [&str; 12] = [
    "plan_mappings",
    "plan_items",
    "plan_item_changes",
    "plan_folders",
    "plan_pairs",
    "plan_change_rows",
    "plan_strings",
    "plan_rewrites",
    "plan_homes",
    "plan_problems",
    "plan_databases",
    "plan_addressbook_homes",
];

/// Drops the planned changes of old plans (their rows stay, marked pruned: runs refer to them).
/// Returns what was dropped.
pub fn prune_plans(state: &mut State, keep: usize, dry_run: bool) -> Result<Vec<PlanFreed>> {
    let ids = prunable_plans(state, keep, "")?;
    drop_plans(state, ids, dry_run)
}

fn drop_plans(state: &mut State, ids: Vec<i64>, dry_run: bool) -> Result<Vec<PlanFreed>> {
    let freed = ids
        .iter()
        .map(|&id| plan_freed(state, id))
        .collect::<Result<Vec<_>>>()?;
    if dry_run || ids.is_empty() {
        return Ok(freed);
    }
    let tx = state.conn.transaction()?;
    let detail = format!("pruned {}", now_rfc3339());
    for id in &ids {
        for t in PLAN_TABLES {
            tx.execute(&format!("DELETE FROM {t} WHERE plan_id = ?1"), [id])?;
        }
        crate::store::pg::prune::drop_plan(&tx, *id)?;
        tx.execute(
            "UPDATE plans SET status = 'pruned', status_detail = ?1 WHERE id = ?2",
            rusqlite::params![detail, id],
        )?;
    }
    tx.commit()?;
    Ok(freed)
}

/// Which runs' journals to drop.
#[derive(Clone, Debug, Default)]
pub enum RunsToDrop {
    /// None: only plans are pruned.
    #[default]
    None,
    /// These runs.
    These(Vec<i64>),
    /// Every run that is applied or rolled back.
    All,
}

fn runs_to_drop(state: &State, which: &RunsToDrop) -> Result<Vec<(i64, String)>> {
    let eligible = |id: i64| -> Result<(i64, String)> {
        let row: Option<(String, Option<String>, Option<String>, String)> = state
            .conn
            .query_row(
                "SELECT kind, state, pruned_at, status FROM runs WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .ok();
        let Some((kind, st, pruned, status)) = row else {
            return Err(Error::usage(format!("there is no run {id}")));
        };
        if kind == "rollback" {
            return Err(Error::usage(format!(
                "run {id} is a rollback; name the apply run it undid (its journal goes with it)"
            )));
        }
        if let Some(at) = pruned {
            return Err(Error::usage(format!(
                "the journal and backups of run {id} were already dropped ({at})"
            )));
        }
        let st = st.unwrap_or_else(|| "applying".into());
        let finished = (st == "applied" && status == "done") || st == "rolled-back";
        if !finished {
            return Err(Error::usage(format!(
                "run {id} is {st} ({status}): finish it first (`principal-reconciler apply` or `rollback --run {id}`); its journal is what resuming needs"
            )));
        }
        Ok((id, st))
    };
    match which {
        RunsToDrop::None => Ok(Vec::new()),
        RunsToDrop::These(ids) => ids.iter().map(|&id| eligible(id)).collect(),
        RunsToDrop::All => {
            let mut st = state.conn.prepare(
                "SELECT id, state FROM runs WHERE kind != 'rollback' AND pruned_at IS NULL
                   AND ((state = 'applied' AND status = 'done') OR state = 'rolled-back') ORDER BY id",
            )?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        }
    }
}

/// The journals `prune` drops: the runs asked for and the rollbacks that undid them.
struct Journals {
    runs: BTreeSet<i64>,
    /// `runs` as an SQL list (`1,2,3`).
    list: String,
}

impl Journals {
    fn of(state: &State, runs: &[(i64, String)]) -> Result<Journals> {
        let ids: BTreeSet<i64> = runs.iter().map(|r| r.0).collect();
        // The dropped runs' rollbacks go with them.
        let mut journal_runs: BTreeSet<i64> = ids.clone();
        for &id in &ids {
            let mut st = state
                .conn
                .prepare("SELECT id FROM runs WHERE kind = 'rollback' AND undoes_run = ?1")?;
            for r in st.query_map([id], |r| r.get::<_, i64>(0))? {
                journal_runs.insert(r?);
            }
        }
        let list = journal_runs
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        Ok(Journals {
            runs: journal_runs,
            list,
        })
    }

    /// The backups these journals name: all of them, and those another run's journal names too.
    fn backups(&self, state: &State) -> Result<(BTreeSet<String>, BTreeSet<String>)> {
        let mut candidates: BTreeSet<String> = BTreeSet::new();
        let mut shared: BTreeSet<String> = BTreeSet::new();
        if self.runs.is_empty() {
            return Ok((candidates, shared));
        }
        let list = &self.list;
        let mut st = state.conn.prepare(&format!(
            "SELECT DISTINCT backup_sha256 FROM journal WHERE run_id IN ({list}) AND backup_sha256 IS NOT NULL"
        ))?;
        for r in st.query_map([], |r| r.get::<_, String>(0))? {
            candidates.insert(r?);
        }
        let mut st = state.conn.prepare(&format!(
            "SELECT 1 FROM journal WHERE backup_sha256 = ?1 AND run_id NOT IN ({list}) LIMIT 1"
        ))?;
        for sha in &candidates {
            if st.exists([sha])? {
                shared.insert(sha.clone());
            }
        }
        Ok((candidates, shared))
    }

    /// What dropping each run frees: its steps and those of its rollbacks.
    fn freed(&self, state: &State, runs: &[(i64, String)]) -> Result<Vec<RunFreed>> {
        let mut out = Vec::new();
        for (id, st) in runs {
            let mut steps: i64 = 0;
            for j in &self.runs {
                let undoes: Option<i64> = state.conn.query_row(
                    "SELECT undoes_run FROM runs WHERE id = ?1",
                    [j],
                    |r| r.get(0),
                )?;
                if *j == *id || undoes == Some(*id) {
                    steps += state.conn.query_row(
                        "SELECT COUNT(*) FROM journal WHERE run_id = ?1",
                        [j],
                        |r| r.get::<_, i64>(0),
                    )? + crate::store::pg::prune::journal_steps(&state.conn, *j)?;
                }
            }
            out.push(RunFreed {
                run_id: *id,
                state: st.clone(),
                steps,
            });
        }
        Ok(out)
    }

    /// Drops the journals (durably) and marks their runs pruned.
    fn drop(&self, state: &mut State) -> Result<()> {
        if self.runs.is_empty() {
            return Ok(());
        }
        let tx = state.conn.transaction()?;
        tx.execute(
            &format!("DELETE FROM journal WHERE run_id IN ({})", self.list),
            [],
        )?;
        let ids: Vec<i64> = self.runs.iter().copied().collect();
        crate::store::pg::prune::drop_journals(&tx, &ids)?;
        let now = now_rfc3339();
        for id in &self.runs {
            tx.execute(
                "UPDATE runs SET pruned_at = ?1 WHERE id = ?2",
                rusqlite::params![now, id],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}

/// The backup files only the dropped journals name (the others stay).
fn backup_files(
    state: &State,
    candidates: &BTreeSet<String>,
    shared: &BTreeSet<String>,
) -> Vec<std::path::PathBuf> {
    let backups_dir = state.dir.join("backups");
    candidates
        .iter()
        .filter(|s| !shared.contains(*s) && s.len() > 2)
        .map(|s| backups_dir.join(&s[..2]).join(s))
        .filter(|p| p.is_file())
        .collect()
}

/// The plan data, journals and backups dropped (or, with `dry_run`, that would be), then the
/// database compacted so the file shrinks.
pub fn prune(
    state: &mut State,
    keep: usize,
    which: &RunsToDrop,
    dry_run: bool,
) -> Result<PruneReport> {
    let mut report = PruneReport {
        dry_run,
        database_bytes_before: database_bytes(&state.dir),
        ..Default::default()
    };
    let runs = runs_to_drop(state, which)?;
    let journals = Journals::of(state, &runs)?;
    let (candidates, shared) = journals.backups(state)?;
    report.runs = journals.freed(state, &runs)?;
    let files = backup_files(state, &candidates, &shared);
    report.backups = files.len();
    report.backup_bytes = files
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    report.backups_shared = shared.len();
    // Plans only the dropped runs still needed go too.
    let plan_ids = prunable_plans(state, keep, &journals.list)?;
    report.plans = drop_plans(state, plan_ids.clone(), true)?;
    if dry_run {
        report.database_bytes_after = report.database_bytes_before;
        return Ok(report);
    }
    // The journal first (durably), then the files: a crash in between leaves only unreferenced
    // backups, never a journal naming a missing one.
    journals.drop(state)?;
    for p in &files {
        std::fs::remove_file(p).map_err(|e| Error::io("cannot remove backup", p, e))?;
    }
    drop_plans(state, plan_ids, false)?;
    if !report.plans.is_empty() || !journals.runs.is_empty() {
        // Gives the freed pages back to the file system.
        state
            .conn
            .execute_batch("VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")?;
    }
    report.database_bytes_after = database_bytes(&state.dir);
    Ok(report)
}

/// What `state prune` is asked to do (its command-line flags, resolved by the commands layer).
#[derive(Clone, Debug, Default)]
pub struct PruneOptions {
    /// Only say what would be dropped.
    pub dry_run: bool,
    /// Plans to keep (default: `[state] keep_plans`).
    pub keep_plans: Option<usize>,
    /// The runs whose journal and backups go too.
    pub runs: RunsToDrop,
}

/// `state prune`: opens the state folder of `cfg` and prunes it as `opts` asks.
pub fn run(cfg: &Config, opts: &PruneOptions) -> Result<PruneReport> {
    let mut state = State::open_existing(&cfg.state.path)?;
    let keep = opts.keep_plans.unwrap_or(cfg.state.keep_plans);
    if keep == 0 {
        return Err(Error::usage(
            "--keep-plans must be at least 1 (the plan `apply` carries out is always kept)",
        ));
    }
    prune(&mut state, keep, &opts.runs, opts.dry_run)
}
