//! `man`: prints the manual page (roff).

use super::{Cli, Outcome};
use crate::error::{Error, Result};

/// The manual page, as roff text and as `{"man": …}`.
pub fn run() -> Result<Outcome> {
    let mut out = Vec::new();
    clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
        .render(&mut out)
        .map_err(|e| Error::runtime(format!("cannot render the manual page: {e}")))?;
    let text = String::from_utf8_lossy(&out).into_owned();
    Ok(Outcome::ok(
        text.clone(),
        serde_json::json!({ "man": text }),
    ))
}
