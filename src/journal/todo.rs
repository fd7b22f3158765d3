//! The plan's resources a run has not journaled yet, read a page at a time.

use super::PAGE;
use crate::error::Result;
use crate::state::journal_rows::{self as rows, PlannedHashes, TodoPage};
use crate::state::State;
use std::collections::VecDeque;

/// The resources of a plan that a run has not journaled yet, read in (folder, name) order a page at a
/// time (keyset pagination on the plan's primary key; journaled ones are found through
/// `journal_by_path`).
pub(super) struct TodoPages {
    plan_id: i64,
    run_id: i64,
    last: Option<String>,
    page: VecDeque<PlannedHashes>,
    exhausted: bool,
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

    fn page<'a>(&self, after: Option<&'a str>) -> TodoPage<'a> {
        TodoPage {
            plan_id: self.plan_id,
            run_id: self.run_id,
            after,
            limit: PAGE,
        }
    }

    /// How many there are that `takes` keeps (the paths only, a page at a time).
    pub(super) fn count(&self, state: &State, takes: &dyn Fn(&str) -> bool) -> Result<u64> {
        let mut n = 0;
        let mut last: Option<String> = None;
        loop {
            let mut page = rows::todo_paths(&state.conn, &self.page(last.as_deref()))?;
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
    ) -> Result<Option<PlannedHashes>> {
        loop {
            if let Some(t) = self.page.pop_front() {
                if takes(&t.rel) {
                    return Ok(Some(t));
                }
                continue;
            }
            if self.exhausted {
                return Ok(None);
            }
            let page = rows::todo_resources(&state.conn, &self.page(self.last.as_deref()))?;
            self.exhausted = (page.len() as i64) < PAGE;
            if let Some(t) = page.last() {
                self.last = Some(t.rel.clone());
            }
            self.page.extend(page);
        }
    }
}
