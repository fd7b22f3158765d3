//! The change plan: for every resource the exact new bytes, stored in the state database.

use crate::cli::{Context, MigrateArgs, Outcome};
use crate::error::{Error, Result};

pub fn command_plan(ctx: &Context) -> Result<Outcome> {
    let _ = ctx;
    Err(Error::not_built("plan"))
}

pub fn command_verify(ctx: &Context) -> Result<Outcome> {
    let _ = ctx;
    Err(Error::not_built("verify"))
}

pub fn command_migrate(ctx: &Context, args: &MigrateArgs) -> Result<Outcome> {
    let _ = (ctx, args);
    Err(Error::not_built("migrate"))
}
