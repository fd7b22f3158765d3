//! Provisioning: directory records the calendar server will not give a principal.

use crate::cli::{Context, Outcome, ProvisionArgs};
use crate::error::{Error, Result};

pub fn command_provision(ctx: &Context, args: &ProvisionArgs) -> Result<Outcome> {
    let _ = (ctx, args);
    Err(Error::not_built("provision"))
}
