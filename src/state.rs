//! The state database (SQLite): plans, and later the journal of runs. Schema in `migrations/`.

use crate::error::{Error, Result};
use rusqlite::Connection;
use std::path::{Path, PathBuf};

/// Schema migrations, applied in order, each once.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_plans.sql")),
    (2, include_str!("../migrations/0002_journal.sql")),
    (3, include_str!("../migrations/0003_databases.sql")),
    (4, include_str!("../migrations/0004_addressbooks.sql")),
    (5, include_str!("../migrations/0005_attr_edits.sql")),
    (6, include_str!("../migrations/0006_pg_store.sql")),
];

pub const DB_FILE: &str = "state.sqlite";

/// An open state database in the state folder.
pub struct State {
    pub conn: Connection,
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
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
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
            Some(id) => Ok(id),
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
    fn rfc3339_shape() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 20);
        assert!(t.starts_with("20"));
        assert!(t.ends_with('Z'));
    }
}
