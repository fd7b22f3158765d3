//! Shared test support: a throwaway slapd, generated migration worlds, the shared corpora,
//! processes paused at an exact instant.
pub mod child;
pub mod corpus;
pub mod slapd;
pub mod world;
