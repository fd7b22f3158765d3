//! The write-ahead journal: apply and rollback.

use crate::cli::{ApplyArgs, Context, Outcome, RollbackArgs};
use crate::error::{Error, Result};

pub fn command_apply(ctx: &Context, args: &ApplyArgs) -> Result<Outcome> {
    let _ = (ctx, args);
    Err(Error::not_built("apply"))
}

pub fn command_rollback(ctx: &Context, args: &RollbackArgs) -> Result<Outcome> {
    let _ = (ctx, args);
    Err(Error::not_built("rollback"))
}
