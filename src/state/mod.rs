//! The state database (SQLite): plans and the journal of runs. Schema in `migrations/`.
//!
//! The words stored in it (run kinds, run states, step states, actions, plan statuses) are Rust
//! enums here; their stored strings are fixed (old databases keep reading the same).

pub mod pg_rows;
pub mod plan_rows;
pub mod report_rows;

use crate::error::{Error, Result};
use rusqlite::Connection;
use std::path::{Path, PathBuf};

pub mod journal_rows;
pub mod verify_rows;

/// Schema migrations, applied in order, each once.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/0001_plans.sql")),
    (2, include_str!("../../migrations/0002_journal.sql")),
    (3, include_str!("../../migrations/0003_databases.sql")),
    (4, include_str!("../../migrations/0004_addressbooks.sql")),
    (5, include_str!("../../migrations/0005_attr_edits.sql")),
    (6, include_str!("../../migrations/0006_lifecycle.sql")),
    (7, include_str!("../../migrations/0007_prune.sql")),
    (8, include_str!("../../migrations/0008_pg_store.sql")),
    (9, include_str!("../../migrations/0009_stages.sql")),
    (10, include_str!("../../migrations/0010_compact_plans.sql")),
    (11, include_str!("../../migrations/0011_packed_plans.sql")),
];

/// File name of the state database inside the state folder.
pub const DB_FILE: &str = "state.sqlite";

/// An open state database in the state folder.
pub struct State {
    /// The open SQLite connection to `state.sqlite`.
    pub conn: Connection,
    /// The state folder (`[state] path`).
    pub dir: PathBuf,
}

impl State {
    /// Opens (creating when needed) the state folder with mode 0700 and its database.
    pub fn open(dir: &Path) -> Result<State> {
        create_private_dir(dir)?;
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path).map_err(|e| {
            Error::runtime(format!(
                "cannot open state database {}: {e}",
                path.display()
            ))
        })?;
        // It holds calendar data: readable by its owner only (SQLite gives -wal/-shm the same mode).
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::io("cannot restrict state database", &path, e))?;
        }
        conn.execute_batch(
            // journal_size_limit: the write-ahead log of one large transaction (a plan) does not
            // stay on disk at its largest once checkpointed.
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000; PRAGMA journal_size_limit = 8388608;",
        )?;
        let mut state = State {
            conn,
            dir: dir.to_path_buf(),
        };
        state.migrate()?;
        Ok(state)
    }

    /// Opens the database only if it exists (commands that read a plan need one).
    pub fn open_existing(dir: &Path) -> Result<State> {
        if !dir.join(DB_FILE).exists() {
            return Err(Error::usage(format!(
                "no state database in {} — run `principal-reconciler plan` first",
                dir.display()
            )));
        }
        State::open(dir)
    }

    fn migrate(&mut self) -> Result<()> {
        self.conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)",
        )?;
        let current: i64 = self.conn.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )?;
        if let Some(&(newest, _)) = MIGRATIONS.last() {
            if current > newest {
                return Err(Error::usage(format!(
                    "state database in {} has schema version {current}, newer than this program knows ({newest}); use a newer principal-reconciler",
                    self.dir.display()
                )));
            }
        }
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                rusqlite::params![version, now_rfc3339()],
            )?;
            tx.commit()?;
        }
        Ok(())
    }

    /// The newest plan's id.
    pub fn latest_plan(&self) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row("SELECT MAX(id) FROM plans", [], |r| r.get(0))?)
    }

    /// The plan asked for, or the newest; a usage error when there is none.
    pub fn plan_or_latest(&self, plan: Option<i64>) -> Result<i64> {
        match plan {
            Some(id) => {
                if let Ok((PlanStatus::Pruned, detail)) = self.plan_status(id) {
                    return Err(Error::usage(format!(
                        "plan {id} was pruned ({detail}): its changes are no longer stored"
                    )));
                }
                Ok(id)
            }
            None => self
                .latest_plan()?
                .ok_or_else(|| Error::usage("no plan yet — run `principal-reconciler plan` first")),
        }
    }

    /// One text column of a plan's row; a usage error naming the plan when it does not exist.
    pub fn plan_text(&self, plan_id: i64, column: &str) -> Result<String> {
        self.conn
            .query_row(
                &format!("SELECT {column} FROM plans WHERE id = ?1"),
                [plan_id],
                |r| r.get(0),
            )
            .map_err(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => {
                    Error::usage(format!("there is no plan {plan_id}"))
                }
                e => e.into(),
            })
    }
}

/// A closed set of words stored in the database, as an enum: `as_str` gives the stored string,
/// `parse` reads one back.
macro_rules! stored_words {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
        pub enum $name { $($(#[$vm])* #[serde(rename = $s)] $var),+ }
        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$var),+];
            /// The string stored in the database.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $s),+ }
            }
            /// The value a stored string names.
            pub fn parse(s: &str) -> Option<$name> {
                match s { $($s => Some($name::$var),)+ _ => None }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl rusqlite::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }
        impl rusqlite::types::FromSql for $name {
            fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                let s = v.as_str()?;
                $name::parse(s).ok_or_else(|| {
                    rusqlite::types::FromSqlError::Other(
                        format!("unknown {} `{s}` in the state database", stringify!($name)).into(),
                    )
                })
            }
        }
    };
}

stored_words! {
    /// What a run does (`runs.kind`).
    RunKind {
        /// `apply`: carries a plan out on the store.
        Apply = "apply",
        /// `rollback`: undoes an earlier run.
        Rollback = "rollback",
        /// `provision --apply`: changes to the access group and augments.xml.
        Provision = "provision",
    }
}

stored_words! {
    /// Whether a run's process finished (`runs.status`). A crash (kill -9) leaves `running`; the
    /// lock tells a crashed run from a live one.
    RunStatus {
        /// `running`: started and not finished (live, or crashed).
        Running = "running",
        /// `interrupted`: stopped early by a signal; resumable.
        Interrupted = "interrupted",
        /// `done`: the process finished.
        Done = "done",
    }
}

stored_words! {
    /// The lifecycle of an apply or provision run (`runs.state`): planned → applying → applied →
    /// rolling back → rolled back. `planned` is never stored on a run: it is the state of a plan
    /// that no run has started on (or whose runs are all rolled back).
    RunState {
        /// `planned`: no run has started on the plan (or all were rolled back).
        Planned = "planned",
        /// `applying`: an apply started and has not finished.
        Applying = "applying",
        /// `applied`: the apply run finished.
        Applied = "applied",
        /// `rolling-back`: a rollback started and has not finished.
        RollingBack = "rolling-back",
        /// `rolled-back`: the run's changes were undone.
        RolledBack = "rolled-back",
    }
}

/// What happens to a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEvent {
    /// An apply starts (or resumes).
    StartApply,
    /// An apply finishes.
    FinishApply,
    /// A rollback starts (or resumes).
    StartRollback,
    /// A rollback finishes.
    FinishRollback,
}

impl RunState {
    /// The state after `event`, or `None` when the event cannot happen in this state.
    pub fn next(self, event: RunEvent) -> Option<RunState> {
        use RunEvent::*;
        use RunState::*;
        match (self, event) {
            // A rolled-back plan is applied again by a new run.
            (Planned | RolledBack, StartApply) => Some(Applying),
            (Applying, StartApply) => Some(Applying), // resumed
            (Applying, FinishApply) => Some(Applied),
            (Applying | Applied | RollingBack, StartRollback) => Some(RollingBack),
            (RollingBack, FinishRollback) => Some(RolledBack),
            _ => None,
        }
    }
}

stored_words! {
    /// A journal step's state (`journal.state`).
    StepState {
        /// `pending`: recorded, not yet taken.
        Pending = "pending",
        /// `done`: taken.
        Done = "done",
        /// `skipped`: not taken, with the reason in `journal.detail`.
        Skipped = "skipped",
    }
}

stored_words! {
    /// What a journal step does (`journal.action`).
    Action {
        /// `rewrite`: replaces one store resource with its rewritten bytes (original backed up).
        Rewrite = "rewrite",
        /// `restore`: puts a backed-up original back.
        Restore = "restore",
        /// `mkdir`: a home adoption step creating a folder ([`crate::homes::HomeStep::Mkdir`]).
        Mkdir = "mkdir",
        /// `move`: a home adoption step renaming a folder.
        Move = "move",
        /// `xattr`: a home adoption step replacing one extended attribute.
        Xattr = "xattr",
        /// `rmdir`: a home adoption step removing a folder left empty.
        Rmdir = "rmdir",
        /// `undo`: a rollback step undoing the step named by `journal.undoes_seq`.
        Undo = "undo",
        /// `database`: replaces a delegate or auto-accept SQLite database whole.
        Database = "database",
        /// `file`: replaces one whole file outside the store (augments.xml).
        File = "file",
    }
}

impl Action {
    /// Steps that replace a whole file from a backup when undone.
    pub fn is_file(self) -> bool {
        matches!(self, Action::Rewrite | Action::Database | Action::File)
    }
}

stored_words! {
    /// Whether a plan finished (`plans.status`): only a complete plan may be applied.
    PlanStatus {
        /// `building`: `plan` is still writing it (or crashed doing so).
        Building = "building",
        /// `complete`: fully written; may be applied.
        Complete = "complete",
        /// `failed`: `plan` stopped with an error.
        Failed = "failed",
        /// `pruned`: its planned changes were dropped (`[state] keep_plans`, `state prune`); the plan row stays.
        Pruned = "pruned",
    }
}

impl State {
    /// A plan's status and, when it failed, why.
    pub fn plan_status(&self, plan_id: i64) -> Result<(PlanStatus, String)> {
        self.conn
            .query_row(
                "SELECT status, status_detail FROM plans WHERE id = ?1",
                [plan_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => {
                    Error::usage(format!("there is no plan {plan_id}"))
                }
                e => e.into(),
            })
    }

    /// Records a plan's status, with `detail` saying why (e.g. the error of a failed plan).
    pub fn set_plan_status(&self, plan_id: i64, status: PlanStatus, detail: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE plans SET status = ?1, status_detail = ?2 WHERE id = ?3",
            rusqlite::params![status, detail, plan_id],
        )?;
        Ok(())
    }

    /// The plan `apply` carries out: the one asked for (which must be complete), else the newest
    /// complete one. The second value says why a newer plan was passed over.
    pub fn plan_to_apply(&self, plan: Option<i64>) -> Result<(i64, Option<String>)> {
        if let Some(id) = plan {
            let (status, detail) = self.plan_status(id)?;
            return match status {
                PlanStatus::Complete => Ok((id, None)),
                PlanStatus::Pruned => Err(Error::usage(format!(
                    "plan {id} was pruned ({detail}): its changes are no longer stored — run `principal-reconciler plan` again"
                ))),
                _ => Err(Error::usage(format!(
                    "plan {id} did not finish ({}{}); it can never be applied — run `principal-reconciler plan` again",
                    status.as_str(),
                    if detail.is_empty() { String::new() } else { format!(": {detail}") }
                ))),
            };
        }
        let complete: Option<i64> = self.conn.query_row(
            "SELECT MAX(id) FROM plans WHERE status = 'complete'",
            [],
            |r| r.get(0),
        )?;
        let newer: Vec<(i64, PlanStatus, String)> = {
            let mut st = self.conn.prepare(
                "SELECT id, status, status_detail FROM plans WHERE status != 'complete' AND id > ?1 ORDER BY id",
            )?;
            let rows = st.query_map([complete.unwrap_or(0)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let passed_over = |ids: &[(i64, PlanStatus, String)]| {
            ids.iter()
                .map(|(id, st, d)| {
                    if d.is_empty() {
                        format!("plan {id} did not finish ({st})")
                    } else {
                        format!("plan {id} did not finish ({st}: {d})")
                    }
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        match complete {
            Some(id) => Ok((
                id,
                (!newer.is_empty()).then(|| {
                    format!(
                        "{}, so it is not applied; plan {id} is the latest complete plan",
                        passed_over(&newer)
                    )
                }),
            )),
            None if newer.is_empty() => Err(Error::usage(
                "no plan yet — run `principal-reconciler plan` first",
            )),
            None => Err(Error::usage(format!(
                "no complete plan to apply: {}; run `principal-reconciler plan` again",
                passed_over(&newer)
            ))),
        }
    }

    /// The lifecycle of a run of kind apply or provision.
    pub fn run_state(&self, run_id: i64) -> Result<RunState> {
        let st: Option<RunState> =
            self.conn
                .query_row("SELECT state FROM runs WHERE id = ?1", [run_id], |r| {
                    r.get(0)
                })?;
        Ok(st.unwrap_or(RunState::Planned))
    }

    /// When a run finished (`runs.finished_at`, RFC 3339); `None` while it has not, or for no
    /// such run.
    pub fn run_finished_at(&self, run_id: i64) -> Option<String> {
        self.conn
            .query_row(
                "SELECT finished_at FROM runs WHERE id = ?1",
                [run_id],
                |r| r.get(0),
            )
            .ok()
            .flatten()
    }

    /// Moves a run along its lifecycle; refuses a transition the state machine does not allow.
    pub fn advance_run(&self, run_id: i64, event: RunEvent) -> Result<RunState> {
        let from = self.run_state(run_id)?;
        let to = from.next(event).ok_or_else(|| {
            Error::runtime(format!(
                "run {run_id} is {from}: it cannot {}",
                match event {
                    RunEvent::StartApply => "be applied",
                    RunEvent::FinishApply => "finish applying",
                    RunEvent::StartRollback => "be rolled back",
                    RunEvent::FinishRollback => "finish rolling back",
                }
            ))
        })?;
        self.conn.execute(
            "UPDATE runs SET state = ?1 WHERE id = ?2",
            rusqlite::params![to, run_id],
        )?;
        Ok(to)
    }
}

/// Creates a folder (and parents) readable by its owner only.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io("cannot create state folder", dir, e))?;
    }
    let meta = std::fs::metadata(dir).map_err(|e| Error::io("cannot read state folder", dir, e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io("cannot restrict state folder", dir, e))?;
    }
    Ok(())
}

/// Current UTC time as RFC 3339 (seconds).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (proleptic Gregorian), after Howard Hinnant's published algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_migrates_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let sdir = dir.path().join("state");
        {
            let st = State::open(&sdir).unwrap();
            assert_eq!(st.latest_plan().unwrap(), None);
            st.conn
                .execute(
                    "INSERT INTO plans (created_at, store_kind, store_path, address_form, directory) VALUES ('t','k','p','f','d')",
                    [],
                )
                .unwrap();
        }
        let st = State::open(&sdir).unwrap();
        assert_eq!(st.latest_plan().unwrap(), Some(1));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&sdir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn refuses_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let st = State::open(dir.path()).unwrap();
        st.conn
            .execute("INSERT INTO schema_migrations VALUES (999, 'x')", [])
            .unwrap();
        drop(st);
        let err = State::open(dir.path()).err().unwrap();
        assert!(err.message.contains("newer"), "{}", err.message);
    }

    #[test]
    fn stored_words_keep_their_strings() {
        // These strings are in every state database written so far: they never change.
        let kinds: Vec<&str> = RunKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(kinds, ["apply", "rollback", "provision"]);
        let status: Vec<&str> = RunStatus::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(status, ["running", "interrupted", "done"]);
        let steps: Vec<&str> = StepState::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(steps, ["pending", "done", "skipped"]);
        let actions: Vec<&str> = Action::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            actions,
            ["rewrite", "restore", "mkdir", "move", "xattr", "rmdir", "undo", "database", "file"]
        );
        let states: Vec<&str> = RunState::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            states,
            [
                "planned",
                "applying",
                "applied",
                "rolling-back",
                "rolled-back"
            ]
        );
        let plans: Vec<&str> = PlanStatus::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(plans, ["building", "complete", "failed", "pruned"]);
        for a in Action::ALL {
            assert_eq!(Action::parse(a.as_str()), Some(*a));
        }
        assert_eq!(RunState::parse("applied"), Some(RunState::Applied));
        assert_eq!(RunState::parse("nonsense"), None);
    }

    #[test]
    fn the_lifecycle_allows_only_its_transitions() {
        use RunEvent::*;
        use RunState::*;
        assert_eq!(Planned.next(StartApply), Some(Applying));
        assert_eq!(Applying.next(FinishApply), Some(Applied));
        assert_eq!(Applied.next(StartRollback), Some(RollingBack));
        assert_eq!(Applying.next(StartRollback), Some(RollingBack));
        assert_eq!(RollingBack.next(FinishRollback), Some(RolledBack));
        assert_eq!(RolledBack.next(StartApply), Some(Applying));
        assert_eq!(
            Applied.next(StartApply),
            None,
            "an applied run is never applied again"
        );
        assert_eq!(RollingBack.next(StartApply), None, "nor a half-undone one");
        assert_eq!(Planned.next(StartRollback), None);
        assert_eq!(Applied.next(FinishRollback), None);
    }

    #[test]
    fn an_old_database_is_migrated_with_its_runs_lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        {
            // A state database as versions with schema 3 wrote it.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL);",
            )
            .unwrap();
            for (v, sql) in &MIGRATIONS[..3] {
                conn.execute_batch(sql).unwrap();
                conn.execute("INSERT INTO schema_migrations VALUES (?1, 't')", [v])
                    .unwrap();
            }
            conn.execute_batch(
                "INSERT INTO plans (id, created_at, store_kind, store_path, address_form, directory) VALUES (1,'t','k','/s','f','d');
                 INSERT INTO runs (id, kind, plan_id, store_path, started_at, status) VALUES (1, 'apply', 1, '/s', 't', 'done');
                 INSERT INTO runs (id, kind, undoes_run, store_path, started_at, status) VALUES (2, 'rollback', 1, '/s', 't', 'done');
                 INSERT INTO runs (id, kind, plan_id, store_path, started_at, status) VALUES (3, 'apply', 1, '/s', 't', 'done');
                 INSERT INTO runs (id, kind, undoes_run, store_path, started_at, status) VALUES (4, 'rollback', 3, '/s', 't', 'running');
                 INSERT INTO runs (id, kind, plan_id, store_path, started_at, status) VALUES (5, 'apply', 1, '/s', 't', 'running');
                 INSERT INTO runs (id, kind, store_path, started_at, status) VALUES (6, 'provision', '/a', 't', 'done');",
            )
            .unwrap();
        }
        let st = State::open(dir.path()).unwrap();
        let states: Vec<RunState> = (1..=6).map(|id| st.run_state(id).unwrap()).collect();
        assert_eq!(
            states,
            [
                RunState::RolledBack,
                RunState::Planned, // a rollback run has no lifecycle of its own
                RunState::RollingBack,
                RunState::Planned,
                RunState::Applying,
                RunState::Applied
            ]
        );
        assert_eq!(st.plan_status(1).unwrap().0, PlanStatus::Complete);
        assert_eq!(st.plan_to_apply(None).unwrap(), (1, None));
    }

    #[test]
    fn a_schema_8_plan_keeps_its_changes_and_stored_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL);",
            )
            .unwrap();
            for (v, sql) in &MIGRATIONS[..8] {
                conn.execute_batch(sql).unwrap();
                conn.execute("INSERT INTO schema_migrations VALUES (?1, 't')", [v])
                    .unwrap();
            }
            let bytes = b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n";
            let sha = crate::store::write::sha256_hex(bytes);
            conn.execute(
                "INSERT INTO plans (id, created_at, store_kind, store_path, address_form, directory) VALUES (1,'t','calendarserver-fs','/s','keep','d')",
                [],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO plan_resources (plan_id, rel_path, old_sha256, new_sha256, new_bytes, changes) VALUES (1, 'a/b.ics', 'x', ?1, ?2, 2)",
                rusqlite::params![sha, crate::plan::pack(bytes)],
            )
            .unwrap();
            conn.execute_batch(
                "INSERT INTO plan_changes VALUES (1, 'a/b.ics', 3, 'ORGANIZER', 'mailto:a@x', 'urn:uuid:A', 'ORGANIZER:mailto:a@x', 'ORGANIZER:urn:uuid:A');
                 INSERT INTO plan_changes VALUES (1, 'a/b.ics', 5, 'ATTENDEE', 'mailto:a@x', 'urn:uuid:A', '', '');",
            )
            .unwrap();
        }
        let st = State::open(dir.path()).unwrap();
        let rows: Vec<(String, i64, String, String, String, String)> = st
            .conn
            .prepare("SELECT rel_path, line, property, old_value, new_value, old_line FROM plan_changes ORDER BY rel_path, line")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].0, "a/b.ics");
        assert_eq!((rows[0].1, rows[0].2.as_str()), (3, "ORGANIZER"));
        assert_eq!(rows[0].5, "ORGANIZER:mailto:a@x");
        assert_eq!(
            (rows[1].1, rows[1].3.as_str(), rows[1].4.as_str()),
            (5, "mailto:a@x", "urn:uuid:A")
        );
        // The old plan's stored bytes are still what apply writes.
        let (how, _) = crate::replay::planned_resource(&st, 1, "a/b.ics")
            .unwrap()
            .unwrap();
        assert!(matches!(how, crate::replay::NewBytes::Stored(_)));
        let rw = crate::replay::PlannedRewrites::load(&st, 1).unwrap();
        let sha = crate::store::write::sha256_hex(b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n");
        let got = rw.new_bytes(&how, b"", &sha).unwrap();
        assert_eq!(got, b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n");
        // Writers of plan_changes (address-book cards, the PostgreSQL store) still insert and delete.
        st.conn
            .execute(
                "INSERT INTO plan_changes (plan_id, rel_path, line, property, old_value, new_value, old_line, new_line) VALUES (1, 'c.vcf', 1, 'X', 'o', 'n', '', '')",
                [],
            )
            .unwrap();
        let n: i64 = st
            .conn
            .query_row(
                "SELECT COUNT(*) FROM plan_changes WHERE plan_id = 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 3);
        st.conn
            .execute(
                "DELETE FROM plan_changes WHERE plan_id = 1 AND rel_path = 'a/b.ics'",
                [],
            )
            .unwrap();
        let n: i64 = st
            .conn
            .query_row("SELECT COUNT(*) FROM plan_change_rows", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn only_a_complete_plan_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let st = State::open(dir.path()).unwrap();
        assert!(st
            .plan_to_apply(None)
            .unwrap_err()
            .message
            .contains("no plan yet"));
        for (id, status) in [(1, "complete"), (2, "failed"), (3, "building")] {
            st.conn
                .execute(
                    "INSERT INTO plans (id, created_at, store_kind, store_path, address_form, directory, status, status_detail) VALUES (?1,'t','k','p','f','d',?2,'disk full')",
                    rusqlite::params![id, status],
                )
                .unwrap();
        }
        let (id, note) = st.plan_to_apply(None).unwrap();
        assert_eq!(id, 1);
        let note = note.unwrap();
        assert!(
            note.contains("plan 2 did not finish (failed: disk full)"),
            "{note}"
        );
        assert!(note.contains("plan 3 did not finish (building"), "{note}");
        let e = st.plan_to_apply(Some(2)).unwrap_err();
        assert_eq!(e.exit_status(), crate::error::ExitStatus::Usage);
        assert!(e.message.contains("can never be applied"), "{}", e.message);
    }

    #[test]
    fn rfc3339_shape() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 20);
        assert!(t.starts_with("20"));
        assert!(t.ends_with('Z'));
    }
}
