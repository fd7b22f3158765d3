//! What `state prune` (and `[state] keep_plans`) drops of the database store's own tables: the
//! planned objects, resolver, homes and values of a pruned plan (`pg_plan_*`; the `pg_plans` row
//! stays, small, like the `plans` row), and the `pg_journal` steps of the runs whose journals go.
//! Called from `crate::prune` inside its own transactions, so both stores' rows go together.

use rusqlite::Connection;

/// The database store's plan tables, keyed by `plan_id`.
const PLAN_TABLES: [&str; 4] = [
    "pg_plan_objects",
    "pg_plan_principals",
    "pg_plan_homes",
    "pg_plan_values",
];

/// Drops the database store's data of one plan.
pub fn drop_plan(conn: &Connection, plan_id: i64) -> rusqlite::Result<()> {
    for t in PLAN_TABLES {
        conn.execute(&format!("DELETE FROM {t} WHERE plan_id = ?1"), [plan_id])?;
    }
    Ok(())
}

/// Planned objects of a plan (what pruning it frees, beside `plan_changes`).
pub fn plan_objects(conn: &Connection, plan_id: i64) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT COUNT(*) FROM pg_plan_objects WHERE plan_id = ?1",
        [plan_id],
        |r| r.get(0),
    )
}

/// Journal steps of one run in `pg_journal`.
pub fn journal_steps(conn: &Connection, run_id: i64) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT COUNT(*) FROM pg_journal WHERE run_id = ?1",
        [run_id],
        |r| r.get(0),
    )
}

/// Drops the `pg_journal` steps of the runs in `ids`.
pub fn drop_journals(conn: &Connection, ids: &[i64]) -> rusqlite::Result<()> {
    let mut st = conn.prepare("DELETE FROM pg_journal WHERE run_id = ?1")?;
    for id in ids {
        st.execute([id])?;
    }
    Ok(())
}
