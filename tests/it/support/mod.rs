//! Shared test support: a throwaway slapd, generated migration worlds, processes paused at an
//! exact instant.
pub mod child;
pub mod slapd;
pub mod world;
