//! (being built)
pub fn plan() {}
