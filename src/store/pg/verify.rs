//! (being built)
pub fn verify() {}
