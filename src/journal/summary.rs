//! How a run ended: its summary, the whole run's counts from the journal, a check's findings.

use crate::error::Result;
use crate::interrupt;
use crate::state::journal_rows as rows;
use crate::state::{RunState, State};

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
pub(super) fn path_why_objects<S: serde::Serializer>(
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

/// The whole run's counts, from its journal.
pub(super) fn totals(state: &State, summary: &mut RunSummary) -> Result<()> {
    let run_id = summary.run_id;
    summary.skipped = rows::skipped_steps(&state.conn, run_id)?;
    let t = rows::totals(&state.conn, run_id, summary.kind == "rollback")?;
    summary.written = t.written;
    summary.unchanged = t.unchanged;
    summary.homes_adopted = t.homes_adopted;
    if summary.kind != "rollback" {
        summary.databases = t.databases;
    }
    Ok(())
}

/// Marks a run interrupted by a signal (resumable) and says so in the summary.
pub(super) fn interrupted(state: &State, summary: &mut RunSummary, sig: i32) -> Result<()> {
    let name = interrupt::name(sig);
    rows::interrupt_run(&state.conn, summary.run_id, &name)?;
    summary.interrupted = Some(name);
    totals(state, summary)
}
