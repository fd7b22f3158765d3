//! `config`: prints the commented example configuration.

use super::Outcome;

/// The example configuration, as text and as `{"config": …}`.
pub fn run() -> Outcome {
    Outcome::ok(
        crate::config::EXAMPLE,
        serde_json::json!({ "config": crate::config::EXAMPLE }),
    )
}
