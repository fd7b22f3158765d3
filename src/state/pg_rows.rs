//! The database store's rows in the state database (migration 0008): the plan tables
//! `pg_plans`, `pg_plan_principals`, `pg_plan_objects`, `pg_plan_homes`, `pg_plan_values`, and
//! the run journal `pg_journal`, behind typed functions. Each takes the connection (or an open
//! transaction of it), so a caller's transaction holds its statements together.

use crate::address::Principal;
use crate::error::Result;
use rusqlite::Connection;
use std::collections::HashMap;

/// The resolver a plan's rewrites used (`pg_plan_principals`), keyed by normalised address.
pub fn plan_principals(conn: &Connection, plan_id: i64) -> Result<HashMap<String, Principal>> {
    let mut st =
        conn.prepare("SELECT key, principal_json FROM pg_plan_principals WHERE plan_id = ?1")?;
    let rows = st.query_map([plan_id], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = HashMap::new();
    for r in rows {
        let (k, j) = r?;
        out.insert(k, serde_json::from_str(&j)?);
    }
    Ok(out)
}
