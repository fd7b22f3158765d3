//! principal-reconciler: repairs CalDAV calendar stores after a directory migration.
//!
//! Stages, each a module: [`directory`] reads the new directory and the old exports, [`store`]
//! walks the calendar store, [`ical`] reads and losslessly rewrites calendar objects, [`mapping`]
//! resolves old addresses to new records, [`plan`] computes every change, [`journal`] applies and
//! rolls back ([`prune`] keeps the state folder bounded), [`provision`] enables missing principals, [`report`] writes what a human checks.
//! Address books: [`vcard`] reads and rewrites cards, [`addressbooks`] plans, adopts and verifies
//! them ([`store::addressbook`] finds and walks them). The layers and their rule: README,
//! "Architecture".

#![warn(missing_docs)]

pub mod address;
pub mod addressbooks;
pub mod cli;
pub mod config;
pub mod db;
pub mod diff;
pub mod directory;
pub mod error;
pub mod finding;
pub mod fsutil;
pub mod history;
// Home adoption is file work of the store (`store::homes`); `crate::homes` is kept as its path.
pub use store::homes;
pub mod ical;
pub mod interrupt;
pub mod journal;
pub mod lock;
pub mod mapping;
pub mod mapping_file;
pub mod plan;
pub mod precount;
pub mod progress;
pub mod provision;
pub mod prune;
pub mod rehearse;
pub mod replay;
pub mod report;
pub mod stage;
pub mod state;
pub mod store;
pub mod vcard;
pub mod verify;
