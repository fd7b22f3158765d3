//! (being built)
use crate::config::Config;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

pub fn prepare(_cfg: &mut Config, _dir: &Path) -> Result<PathBuf> {
    Err(Error::not_built("--rehearse on calendarserver-pg"))
}
