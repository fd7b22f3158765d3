//! (being built)
use crate::cli::Context;
use crate::config::Config;
use crate::directory::Directory;
use crate::error::{Error, Result};
use crate::verify::VerifyReport;

pub fn verify(_ctx: &Context, _cfg: &Config, _current: &Directory) -> Result<VerifyReport> {
    Err(Error::not_built("verify on calendarserver-pg"))
}
