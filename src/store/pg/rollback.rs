//! (being built)
pub fn rollback() {}
