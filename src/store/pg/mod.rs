//! CalendarServer 3–9 on PostgreSQL (`[store] kind = "calendarserver-pg"`).
//!
//! The same migration as the file store, on CalendarServer's database: homes keyed by
//! `OWNER_UID`, ORGANIZER/ATTENDEE inside `CALENDAR_OBJECT.ICALENDAR_TEXT`, and the uid-keyed
//! tables of each schema version. Submodules: [`connect`] (DSN, password, TLS), [`schema`] (the
//! version and what it keeps where), [`read`] (server-side cursors, home by home), [`edits`]
//! (journaled row edits), [`scan`] and [`prune`] (its rows in the state folder's upkeep).
//! This is the backend: reading and writing the database. The workflow on it — plan, apply,
//! rollback, verify and rehearse — is [`crate::db`], each part in the layer of its kind; the
//! commands dispatch there when the store kind is `calendarserver-pg`.
//! Nothing of the tool's own is kept in CalendarServer's database: plans, journals and the old
//! rows live in the state database under `[state] path`.

pub mod connect;
pub mod edits;
pub mod prune;
pub mod read;
pub mod scan;
pub mod schema;

use crate::config::Config;
use crate::error::Result;

pub use connect::Target;
pub use schema::Schema;

/// An open connection to a CalendarServer database whose schema version was checked.
pub struct Db {
    /// The open PostgreSQL connection.
    pub client: postgres::Client,
    /// What the database's schema version keeps where.
    pub schema: Schema,
    /// The database connected to (its libpq configuration and label).
    pub target: Target,
}

impl Db {
    /// Connects as `[store]` says and checks the schema version before anything else is read.
    pub fn open(cfg: &Config) -> Result<Db> {
        let target = Target::from_config(&cfg.store)?;
        Db::open_target(target)
    }

    /// Connects to `target` and checks the schema version before anything else is read.
    pub fn open_target(target: Target) -> Result<Db> {
        let mut client = target.connect()?;
        let schema = schema::detect(&mut client, &target.label)?;
        Ok(Db {
            client,
            schema,
            target,
        })
    }

    /// Starts a read-only, repeatable-read transaction: one consistent snapshot of the database
    /// for a whole read (plan, scan, verify); nothing in it can write.
    pub fn snapshot(&mut self) -> std::result::Result<postgres::Transaction<'_>, postgres::Error> {
        self.client
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
    }

    /// A database error during `what`, naming the server.
    pub fn err(&self, what: &str, e: &postgres::Error) -> crate::error::Error {
        crate::error::Error::runtime(format!(
            "{} ({what}): {}",
            self.target.label,
            connect::describe(e)
        ))
    }
}

/// Maps a postgres error inside a closure that has no [`Db`] at hand.
pub(crate) fn pg_err(what: &str) -> impl Fn(postgres::Error) -> crate::error::Error + '_ {
    move |e| crate::error::Error::runtime(format!("{what}: {}", connect::describe(&e)))
}
