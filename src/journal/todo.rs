//! The plan's resources a run has not journaled yet, read a page at a time.

use super::PAGE;
use crate::error::Result;
use crate::state::State;

/// The resources of a plan that a run has not journaled yet, read in path order a page at a
/// time (keyset pagination on the plan's primary key; journaled ones are found through
/// `journal_by_path`).
pub(super) struct TodoPages {
    pub(super) plan_id: i64,
    pub(super) run_id: i64,
    pub(super) last: Option<String>,
    pub(super) page: std::collections::VecDeque<(String, String, String)>,
    pub(super) exhausted: bool,
}

impl TodoPages {
    pub(super) fn new(plan_id: i64, run_id: i64) -> TodoPages {
        TodoPages {
            plan_id,
            run_id,
            last: None,
            page: Default::default(),
            exhausted: false,
        }
    }

    pub(super) fn sql(first: bool, columns: &str) -> String {
        format!(
            "SELECT {columns} FROM plan_resources p
             WHERE p.plan_id = ?1 AND p.rel_path {} ?3
               AND NOT EXISTS (SELECT 1 FROM journal j WHERE j.run_id = ?2 AND j.rel_path = p.rel_path)
             ORDER BY p.rel_path LIMIT ?4",
            if first { ">=" } else { ">" }
        )
    }

    /// How many there are that `takes` keeps (the paths only, a page at a time).
    pub(super) fn count(&self, state: &State, takes: &dyn Fn(&str) -> bool) -> Result<u64> {
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
    pub(super) fn next(
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
