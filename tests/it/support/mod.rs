//! Shared test support: a throwaway slapd, a throwaway PostgreSQL and generated migration worlds.
pub mod appledouble;
pub mod corpus;
pub mod postgres;
pub mod slapd;
pub mod world;
