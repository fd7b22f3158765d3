//! The rows `verify` reads: which plan the runs in force carried out.

use super::State;
use crate::error::Result;
use rusqlite::OptionalExtension;

impl State {
    /// The plan of the latest apply run that is not rolled back (a run still applying counts);
    /// `None` when there is none.
    pub fn plan_in_force(&self) -> Result<Option<i64>> {
        let plan: Option<Option<i64>> = self
            .conn
            .query_row(
                "SELECT plan_id FROM runs WHERE kind = 'apply' AND plan_id IS NOT NULL
                AND COALESCE(state, 'applying') != 'rolled-back' ORDER BY id DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(plan.flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_in_force_is_the_latest_apply_not_rolled_back() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path()).unwrap();
        assert_eq!(state.plan_in_force().unwrap(), None);
        for id in 1..=3 {
            state
                .conn
                .execute(
                    "INSERT INTO plans (id, created_at, store_kind, store_path, address_form, directory)
                     VALUES (?1, 'now', 'ics-dir', '/s', 'mailto', 'test')",
                    [id],
                )
                .unwrap();
        }
        let run = |kind: &str, plan: Option<i64>, st: Option<&str>| {
            state
                .conn
                .execute(
                    "INSERT INTO runs (kind, plan_id, state, store_path, started_at, status)
                     VALUES (?1, ?2, ?3, '/s', 'now', 'done')",
                    rusqlite::params![kind, plan, st],
                )
                .unwrap();
        };
        run("apply", Some(1), Some("applied"));
        assert_eq!(state.plan_in_force().unwrap(), Some(1));
        run("apply", Some(2), None);
        assert_eq!(state.plan_in_force().unwrap(), Some(2));
        run("rollback", Some(2), None);
        run("apply", Some(3), Some("rolled-back"));
        run("apply", None, Some("applied"));
        assert_eq!(state.plan_in_force().unwrap(), Some(2));
    }
}
