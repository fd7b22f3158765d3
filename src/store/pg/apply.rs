//! (being built)
pub fn apply() {}
