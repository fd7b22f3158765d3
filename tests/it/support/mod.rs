//! Shared test support: a throwaway slapd, generated migration worlds, the shared corpora,
//! AppleDouble members, processes paused at an exact instant.
pub mod appledouble;
pub mod child;
pub mod corpus;
pub mod slapd;
pub mod world;
