//! `directory pull` and `directory export --ldif FILE`: read the directory, show or snapshot it.

use super::{Context, Outcome};
use crate::directory::presets::Schema;
use crate::directory::Directory;
use crate::error::Result;
use clap::Subcommand;
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
/// The `directory` subcommands.
pub enum DirectoryCommand {
    /// Read the current directory (and the old exports) and show counts per record type
    Pull,
    /// Write what a pull of the current directory sees as an LDIF snapshot
    Export {
        /// Where to write the LDIF
        #[arg(long, value_name = "FILE")]
        ldif: PathBuf,
    },
}

/// Runs `directory pull` or `directory export`.
pub fn run(ctx: &Context, cmd: &DirectoryCommand) -> Result<Outcome> {
    match cmd {
        DirectoryCommand::Pull => pull(ctx),
        DirectoryCommand::Export { ldif } => export(ctx, ldif),
    }
}

fn summary_json(d: &Directory) -> serde_json::Value {
    let counts: serde_json::Map<String, serde_json::Value> = d
        .counts()
        .into_iter()
        .map(|(k, n)| (k.as_str().to_string(), n.into()))
        .collect();
    serde_json::json!({ "origin": d.origin, "counts": counts, "records": d.records.len(), "warnings": d.warnings })
}

fn summary_human(title: &str, d: &Directory, out: &mut String) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "{title}: {}", d.origin);
    for (k, n) in d.counts() {
        let _ = writeln!(out, "  {:<10} {n:>7}", k.collection());
    }
    let _ = writeln!(out, "  {:<10} {:>7}", "total", d.records.len());
    if !d.warnings.is_empty() {
        let _ = writeln!(out, "  {} warning(s):", d.warnings.len());
        for w in d.warnings.iter().take(20) {
            let _ = writeln!(out, "    {w}");
        }
        if d.warnings.len() > 20 {
            let _ = writeln!(
                out,
                "    ... and {} more (see --json)",
                d.warnings.len() - 20
            );
        }
    }
}

/// `directory pull`: counts per record type of the current directory and the old exports.
fn pull(ctx: &Context) -> Result<Outcome> {
    let current = crate::directory::pull(&ctx.config.directory, ctx)?;
    let old = if ctx.config.old_directory.files.is_empty() {
        None
    } else {
        Some(crate::directory::load_old(&ctx.config.old_directory.files)?)
    };
    let mut human = String::new();
    summary_human("current directory", &current, &mut human);
    if let Some(o) = &old {
        human.push('\n');
        summary_human("old directory", o, &mut human);
    }
    let json = serde_json::json!({
        "current": summary_json(&current),
        "old": old.as_ref().map(summary_json),
    });
    Ok(Outcome::ok(human, json))
}

/// `directory export --ldif FILE`: writes what a pull sees as an LDIF snapshot.
fn export(ctx: &Context, ldif: &Path) -> Result<Outcome> {
    let cfg = &ctx.config.directory;
    let current = crate::directory::pull(cfg, ctx)?;
    let mapping = Schema::from_config(cfg);
    crate::directory::write_snapshot(ldif, &current, &mapping, cfg.base.as_deref())?;
    let counts: Vec<String> = current
        .counts()
        .iter()
        .map(|(k, n)| format!("{n} {}", k.collection()))
        .collect();
    let human = format!(
        "wrote {} records ({}) from {} to {}\n{}",
        current.records.len(),
        counts.join(", "),
        current.origin,
        ldif.display(),
        current
            .warnings
            .iter()
            .map(|w| format!("warning: {w}\n"))
            .collect::<String>()
    );
    let json = serde_json::json!({
        "ldif": ldif.display().to_string(),
        "current": summary_json(&current),
    });
    Ok(Outcome::ok(human, json))
}
