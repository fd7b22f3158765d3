//! What `runs` counts of the database store's runs: their steps live in `pg_journal` (the file
//! store's in `journal`). `crate::history` asks here for the SQL that counts both.

use rusqlite::Connection;

/// An SQL expression counting the steps in state `st` of the run `runs.id`, in the file journal
/// and, where the state database has one, the database store's journal.
pub fn steps_sql(conn: &Connection, st: &str) -> String {
    let file =
        format!("(SELECT COUNT(*) FROM journal j WHERE j.run_id = runs.id AND j.state = '{st}')");
    let has_pg: bool = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'pg_journal'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .unwrap_or(false);
    if has_pg {
        format!("({file} + (SELECT COUNT(*) FROM pg_journal p WHERE p.run_id = runs.id AND p.state = '{st}'))")
    } else {
        file
    }
}
