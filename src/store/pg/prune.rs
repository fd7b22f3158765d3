//! What `state prune` (and `[state] keep_plans`) drops of the database store's own tables: the
//! planned objects, resolver, homes and values of a pruned plan (`pg_plan_*`; the `pg_plans` row
//! stays, small, like the `plans` row), and the `pg_journal` steps of the runs whose journals go.
//! Called from `crate::prune` inside its own transactions, so both stores' rows go together; the
//! statements are the state layer's ([`crate::state::pg_rows`]).

pub use crate::state::pg_rows::{drop_journals, drop_plan, journal_steps, plan_objects};
