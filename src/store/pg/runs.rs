//! What `runs` counts of the database store's runs: their steps live in `pg_journal` (the file
//! store's in `journal`). `crate::history` asks here for the SQL that counts both (the state
//! layer's, [`crate::state::pg_rows::steps_sql`]).

pub use crate::state::pg_rows::steps_sql;
