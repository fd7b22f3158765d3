//! Reports a human checks: mapping.csv, changes.csv, summary.json, report.html.

use crate::cli::{Context, Outcome, ReportArgs};
use crate::error::{Error, Result};

pub fn command_report(ctx: &Context, args: &ReportArgs) -> Result<Outcome> {
    let _ = (ctx, args);
    Err(Error::not_built("report"))
}
