//! Shared test support: a throwaway slapd, a throwaway PostgreSQL, generated migration worlds,
//! the shared corpora, AppleDouble members, processes paused at an exact instant.
pub mod appledouble;
pub mod child;
pub mod corpus;
pub mod postgres;
pub mod slapd;
pub mod world;
