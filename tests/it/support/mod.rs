//! Shared test support: a throwaway slapd and generated migration worlds.
pub mod corpus;
pub mod slapd;
pub mod world;
