//! `--rehearse DIR` on a database: a copy of it on the same server (`CREATE DATABASE <db>_rehearsal
//! TEMPLATE <db>`), which the rehearsal plans, applies and verifies instead of the real one; the
//! rehearsal's state and reports live in `DIR` (and copies of the delegate databases in `DIR/Data`).
//! The real database is only read (as the template). A later rehearsal replaces the copy — only a
//! database this tool made as a rehearsal (its comment says so) is ever dropped.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::store::pg::connect::Target;
use std::path::{Path, PathBuf};

const COMMENT: &str = "principal-reconciler rehearsal copy";

/// The DSN with another database name (later keys win in both libpq forms).
pub fn dsn_with_dbname(dsn: &str, db: &str) -> String {
    let t = dsn.trim();
    if t.starts_with("postgres://") || t.starts_with("postgresql://") {
        let sep = if t.contains('?') { '&' } else { '?' };
        format!("{t}{sep}dbname={db}")
    } else {
        format!("{t} dbname='{db}'")
    }
}

fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Copies the configured database into `<db>_rehearsal` and points the configuration at it.
pub fn prepare(cfg: &mut Config, dir: &Path) -> Result<PathBuf> {
    let target = Target::from_config(&cfg.store)?;
    let source = target.dbname().to_string();
    let copy = format!("{source}_rehearsal");
    // The folder: like a file-store rehearsal (state, reports, Data), minus the store copy.
    if dir.exists() {
        let non_empty = std::fs::read_dir(dir)
            .map_err(|e| Error::io("cannot read rehearsal folder", dir, e))?
            .next()
            .is_some();
        if non_empty && !dir.join(crate::rehearse::MARKER).exists() {
            return Err(Error::usage(format!(
                "rehearsal folder {} is not empty and holds no earlier rehearsal; give an empty or new folder",
                dir.display()
            )));
        }
        for sub in ["state", "reports", "Data"] {
            let p = dir.join(sub);
            if p.exists() {
                std::fs::remove_dir_all(&p)
                    .map_err(|e| Error::io("cannot clear old rehearsal", &p, e))?;
            }
        }
    }
    std::fs::create_dir_all(dir.join("Data"))
        .map_err(|e| Error::io("cannot create rehearsal folder", dir, e))?;
    std::fs::write(
        dir.join(crate::rehearse::MARKER),
        format!("This folder holds a principal-reconciler rehearsal of {} (database {copy}); the next rehearsal here replaces it.\n", target.label),
    )
    .map_err(|e| Error::io("cannot write", &dir.join(crate::rehearse::MARKER), e))?;
    let databases = cfg.principal_databases();
    for db in databases {
        let name = db.file_name().map(PathBuf::from).unwrap_or_default();
        std::fs::copy(&db, dir.join("Data").join(name))
            .map_err(|e| Error::io("cannot copy", &db, e))?;
    }

    // The copy, made from a maintenance database on the same server.
    let admin = target.with_dbname("postgres");
    let mut c = admin.connect()?;
    let existing: Option<Option<String>> = c
        .query_opt(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
            &[&copy],
        )
        .map_err(|e| admin.error("cannot look for", &e))?
        .map(|r| r.get(0));
    match existing {
        Some(Some(ref c0)) if c0.starts_with(COMMENT) => {
            c.batch_execute(&format!("DROP DATABASE {}", ident(&copy)))
                .map_err(|e| admin.error("cannot drop the previous rehearsal copy on", &e))?;
        }
        Some(_) => {
            return Err(Error::usage(format!(
                "a database named {copy} exists on {} and is not a rehearsal copy made by this tool; drop or rename it first",
                admin.label
            )))
        }
        None => {}
    }
    c.batch_execute(&format!(
        "CREATE DATABASE {} TEMPLATE {}",
        ident(&copy),
        ident(&source)
    ))
    .map_err(|e| {
        let mut err = admin.error(&format!("cannot copy {source} into {copy} on"), &e);
        if e.code().map(|c| c.code()) == Some("55006") {
            err.message
                .push_str(" — the database is in use: stop CalendarServer for the copy");
        }
        err
    })?;
    c.batch_execute(&format!(
        "COMMENT ON DATABASE {} IS '{COMMENT} of {}'",
        ident(&copy),
        source.replace('\'', "''")
    ))
    .map_err(|e| admin.error("cannot label the rehearsal copy on", &e))?;
    let dsn = cfg.store.dsn.clone().unwrap_or_default();
    cfg.store.dsn = Some(dsn_with_dbname(&dsn, &copy));
    cfg.store.data_root = Some(dir.join("Data"));
    cfg.state.path = dir.join("state");
    cfg.report.dir = dir.join("reports");
    Ok(PathBuf::from(Target::from_config(&cfg.store)?.label))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dbname_is_overridden_in_both_forms() {
        let t: postgres::Config = dsn_with_dbname("postgresql://u@h:1/caldav", "x")
            .parse()
            .unwrap();
        assert_eq!(t.get_dbname(), Some("x"));
        let t: postgres::Config = dsn_with_dbname("postgresql://u@h:1/caldav?sslmode=disable", "x")
            .parse()
            .unwrap();
        assert_eq!(t.get_dbname(), Some("x"));
        let t: postgres::Config = dsn_with_dbname("host=/tmp dbname=caldav", "x")
            .parse()
            .unwrap();
        assert_eq!(t.get_dbname(), Some("x"));
    }
}
