//! The workflow of the database store (CalendarServer 3–9 on PostgreSQL, `[store] kind =
//! "calendarserver-pg"`): what `plan`, `apply`, `rollback`, `verify`, `doctor` and `--rehearse`
//! do on the database, over the backend in [`crate::store::pg`] (connect, read, edit).
//!
//! Each part sits in the layer of its kind, as the file store's do: [`rewrite`] (the rewrite of
//! rows that planning and applying share) with `mapping`, [`rehearse`] beside `rehearse`,
//! [`apply`] and [`rollback`] with `journal`, [`plan`] with `plan`, [`verify`] with `verify`.
//! Plan and apply meet only through the plan rows in the state database
//! ([`crate::state::pg_rows`]), as `plan` and `journal` do.

pub mod apply;
pub mod plan;
pub mod rehearse;
pub mod rewrite;
pub mod rollback;
pub mod verify;
