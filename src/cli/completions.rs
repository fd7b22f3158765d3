//! `completions SHELL`: prints a shell completion script.

use super::{Cli, Outcome};

/// The completion script for `shell`, as text and as `{"completions": …}`.
pub fn run(shell: clap_complete::Shell) -> Outcome {
    let mut out = Vec::new();
    clap_complete::generate(
        shell,
        &mut <Cli as clap::CommandFactory>::command(),
        "principal-reconciler",
        &mut out,
    );
    let text = String::from_utf8_lossy(&out).into_owned();
    Outcome::ok(text.clone(), serde_json::json!({ "completions": text }))
}
