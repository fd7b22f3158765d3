//! Command-line interface: parses arguments, sets up logging, runs a command, prints its outcome.

use crate::config::{Config, DEFAULT_CONFIG_FILE};
use crate::error::{ExitStatus, Result};
use clap::{Args, Parser, Subcommand};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

mod apply;
mod completions;
mod config;
mod directory;
mod doctor;
mod man;
mod migrate;
mod plan;
mod progress;
mod provision;
mod report;
mod rollback;
mod runs;
mod scan;
mod state;
mod verify;

pub use self::directory::DirectoryCommand;
pub use self::doctor::DoctorArgs;
pub use self::progress::progress_bar;
pub use self::provision::ProvisionArgs;
pub use self::report::ReportArgs;
pub use self::state::{PruneArgs, StateCommand};

const AFTER_HELP: &str = "\
A typical migration after an Open Directory rebuild:
  principal-reconciler config > principal-reconciler.toml   # then edit it
  principal-reconciler directory pull       # can we read the new directory?
  principal-reconciler scan                 # what addresses do stored events use?
  principal-reconciler plan                 # mapping + change plan + reports; changes nothing
  principal-reconciler apply                # journaled, resumable; `rollback` undoes it
  principal-reconciler verify               # exit 1 while problems remain
Or all in one go, on a scratch copy first:
  principal-reconciler migrate --rehearse /tmp/rehearsal

Exit codes: 0 ok, 1 problems found, 2 usage/configuration/input error, 3 runtime failure
(unreachable server, I/O error, another run holds the lock), 130 apply/rollback interrupted by
Ctrl-C (run it again to resume). Logs go to stderr; --json prints one JSON document on stdout.";

#[derive(Parser, Debug)]
#[command(
    name = "principal-reconciler",
    version,
    about = "Repairs CalDAV calendar stores after a directory migration",
    long_about = "Repairs Apple CalendarServer stores after an Open Directory / LDAP rebuild: matches the \
old GUIDs, addresses and principal URLs found in stored events to the new directory's records, \
rewrites ORGANIZER/ATTENDEE (and every other place a principal id lives) losslessly, and provisions \
users that have no calendar principal yet. Every write is journaled and reversible.",
    after_help = AFTER_HELP
)]
/// The command line: global options and one subcommand.
pub struct Cli {
    /// Configuration file
    #[arg(long, short = 'c', global = true, value_name = "FILE", default_value = DEFAULT_CONFIG_FILE)]
    pub config: PathBuf,
    /// Print one JSON document on stdout instead of the human summary
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output on stderr (-v info, -vv debug, -vvv trace)
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Only errors on stderr
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
    /// No progress bars (they are also off when stderr is not a terminal)
    #[arg(long, global = true)]
    pub no_progress: bool,
    #[command(subcommand)]
    /// The subcommand to run.
    pub command: Command,
}

#[derive(Subcommand, Debug)]
/// The subcommands, one per variant.
pub enum Command {
    /// List every calendar user address in the store, counted by form
    Scan,
    /// Build the mapping and the change plan, write reports; changes nothing in the store
    Plan,
    /// Carry out a plan (journaled, resumable after a crash)
    Apply(ApplyArgs),
    /// Undo an applied run (default: the latest), byte for byte
    Rollback(RollbackArgs),
    /// Check the store against the directory; exit 1 when problems remain
    Verify,
    /// Enable calendaring for directory users that have no principal yet
    Provision(ProvisionArgs),
    /// Check store ownership, permissions and caches; --fix repairs them
    Doctor(DoctorArgs),
    /// Write the reports of a plan or run again
    Report(ReportArgs),
    /// Show one resource's planned change as a unified diff
    Diff(DiffArgs),
    /// List every plan and run: id, time, state, counts, and what `rollback` would undo now
    Runs,
    /// Pull, scan, plan, apply, verify and report in one go
    Migrate(MigrateArgs),
    /// Read the directory: `pull` shows what it holds, `export --ldif FILE` snapshots it
    #[command(subcommand)]
    Directory(DirectoryCommand),
    /// Look after the state folder: `prune` drops old plans and, on request, old runs' backups
    #[command(subcommand)]
    State(StateCommand),
    /// Print a commented example configuration
    Config,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    #[command(
        after_help = "Install, e.g. for bash:\n  principal-reconciler completions bash > /etc/bash_completion.d/principal-reconciler"
    )]
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `principal-reconciler man | man -l -`
    Man,
}

#[derive(Args, Debug, Clone, Default)]
/// Options of `apply`.
pub struct ApplyArgs {
    /// The plan to apply (default: the latest)
    #[arg(long, value_name = "ID")]
    pub plan: Option<i64>,
    /// Copy the store to DIR first (owners, modes, attributes kept) and work on the copy
    #[arg(long, value_name = "DIR")]
    pub rehearse: Option<PathBuf>,
    /// Run even though the calendar server seems to be running on the store
    #[arg(long)]
    pub force: bool,
    /// Staged migration: carry out only this user's homes (calendar and address-book home, with
    /// their resources; the home moves with them). USER is the home's old GUID, its new GUID or
    /// the user's short name; repeat for several. The rest of the plan stays pending: a later
    /// `apply` carries it out by a new run, `runs` and `verify` say what is pending, `rollback`
    /// undoes one stage. What belongs to no home (delegate and auto-accept databases, resources
    /// outside homes) is carried out by the stage that leaves no home pending. Until then, dropbox
    /// and attachment links from homes not yet applied into a moved home are stale. Not yet on a
    /// database store
    #[arg(long = "home", value_name = "USER", conflicts_with = "limit")]
    pub homes: Vec<String>,
    /// Staged migration: carry out the next pending homes, whole, with at most N resources between
    /// them (a home with more than N resources is taken alone, so each stage makes progress); see
    /// --home for what stays pending
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
}

#[derive(Args, Debug, Clone, Default)]
/// Options of `rollback`.
pub struct RollbackArgs {
    /// The run to undo (default: the latest)
    #[arg(long, value_name = "ID")]
    pub run: Option<i64>,
    /// Restore resources even when they changed after the run
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug, Clone, Default)]
/// Options of `diff`.
pub struct DiffArgs {
    /// The resource: a path in the store (whole, or relative to the store as in changes.csv)
    #[arg(value_name = "RESOURCE")]
    pub resource: PathBuf,
    /// The plan (default: the latest)
    #[arg(long, value_name = "ID")]
    pub plan: Option<i64>,
}

#[derive(Args, Debug, Clone, Default)]
/// Options of `migrate`.
pub struct MigrateArgs {
    /// Stop after plan: change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Copy the store to DIR first and migrate the copy (a rehearsal); DIR/principal-reconciler.toml
    /// then runs any command on it
    #[arg(long, value_name = "DIR")]
    pub rehearse: Option<PathBuf>,
    /// Run even though the calendar server seems to be running on the store
    #[arg(long)]
    pub force: bool,
    /// Apply without asking (a real migrate asks on a terminal, and refuses without one)
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// What every command sees: the configuration and the output settings.
pub struct Context {
    /// The configuration read from `--config`.
    pub config: Config,
    /// `--json`: print one JSON document on stdout instead of the human summary.
    pub json: bool,
    /// Show progress bars (a terminal on stderr, no --no-progress, no --quiet).
    pub progress: bool,
}

/// The result of a command: its exit status, a short human summary and the JSON document.
pub struct Outcome {
    /// The process exit status (0 ok, 1 problems, ...).
    pub status: ExitStatus,
    /// The summary printed on stdout without `--json`.
    pub human: String,
    /// The document printed on stdout with `--json`.
    pub json: serde_json::Value,
}

impl Outcome {
    /// A successful outcome (exit 0) with this summary and document.
    pub fn ok(human: impl Into<String>, json: serde_json::Value) -> Outcome {
        Outcome {
            status: ExitStatus::Ok,
            human: human.into(),
            json,
        }
    }
}

fn init_logging(cli: &Cli) {
    let level = if cli.quiet {
        "error"
    } else {
        match cli.verbose {
            0 => "warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PRINCIPAL_RECONCILER_LOG")
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(format!("principal_reconciler={level},warn"))
        });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && !no_color())
        .with_target(false)
        .without_time()
        .try_init();
}

/// Version of the `--json` documents' shape: raised when a field changes meaning or goes away
/// (new fields may appear without it).
pub const JSON_SCHEMA_VERSION: u32 = 1;

/// `NO_COLOR` set to anything but the empty string turns colours off (no-color.org).
pub fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// Runs the tool with the process arguments and returns the exit code.
pub fn main() -> u8 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => ExitStatus::Usage.code(),
            };
        }
    };
    init_logging(&cli);
    let json = cli.json;
    match run(cli) {
        Ok(outcome) => {
            let mut out = std::io::stdout().lock();
            if json {
                let mut doc = outcome.json;
                if let serde_json::Value::Object(map) = &mut doc {
                    map.insert("exit_code".into(), outcome.status.code().into());
                    map.insert("schema_version".into(), JSON_SCHEMA_VERSION.into());
                }
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&doc).unwrap_or_default()
                );
            } else if !outcome.human.is_empty() {
                let _ = write!(out, "{}", outcome.human);
                if !outcome.human.ends_with('\n') {
                    let _ = writeln!(out);
                }
            }
            outcome.status.code()
        }
        Err(err) => {
            let status = err.exit_status();
            if json {
                let doc = serde_json::json!({ "error": err.message, "exit_code": status.code(), "schema_version": JSON_SCHEMA_VERSION });
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            }
            eprintln!("error: {}", err.message);
            status.code()
        }
    }
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> Result<Outcome> {
    match &cli.command {
        Command::Config => return Ok(config::run()),
        Command::Completions { shell } => return Ok(completions::run(*shell)),
        Command::Man => return man::run(),
        _ => {}
    }
    let config = Config::load(&cli.config)?;
    crate::store::pg::connect::check_dsn(&config.store, &config.source.display().to_string())?;
    // Held until the command ends (dropped after the match below).
    let _lock = take_locks(&cli.command, &config)?;
    let ctx = Context {
        config,
        json: cli.json,
        progress: !cli.no_progress && !cli.quiet && std::io::stderr().is_terminal(),
    };
    match cli.command {
        Command::Config | Command::Completions { .. } | Command::Man => {
            unreachable!("handled above")
        }
        Command::Scan => scan::run(&ctx),
        Command::Plan => plan::run(&ctx),
        Command::Apply(args) => apply::run(&ctx, &args),
        Command::Rollback(args) => rollback::run(&ctx, &args),
        Command::Verify => verify::run(&ctx),
        Command::Provision(args) => provision::run(&ctx, &args),
        Command::Doctor(args) => doctor::run(&ctx, &args),
        Command::Report(args) => report::run(&ctx, &args),
        Command::Migrate(args) => migrate::run(&ctx, &args),
        Command::Diff(args) => command_diff(&ctx, &args),
        Command::State(StateCommand::Prune(args)) => state::prune(&ctx, &args),
        Command::Runs => runs::run(&ctx),
        Command::Directory(cmd) => directory::run(&ctx, &cmd),
    }
}

/// The locks a command holds for its whole run ([`crate::lock`]): every command that writes the
/// store, the state folder, the reports, the directory or the server's databases. A second such
/// command is refused at once (exit 3), naming the holder.
fn take_locks(command: &Command, cfg: &Config) -> Result<crate::lock::RunLock> {
    let mut lock = crate::lock::RunLock::default();
    // (locks the state folder, creates it when missing, locks the store, rehearsal folder)
    let (state, creates_state, store, rehearsal) = match command {
        Command::Config
        | Command::Completions { .. }
        | Command::Man
        | Command::Scan
        | Command::Diff(_)
        | Command::Runs
        | Command::Directory(_) => (false, false, false, None),
        Command::Doctor(a) => (a.fix, false, a.fix, None),
        Command::Report(_) | Command::State(_) => (true, false, false, None),
        Command::Verify => (true, false, true, None),
        Command::Provision(a) => (true, a.apply, false, None),
        Command::Plan => (true, true, true, None),
        Command::Apply(a) => (true, false, true, a.rehearse.as_ref()),
        Command::Rollback(_) => (true, false, true, None),
        Command::Migrate(a) => (true, a.rehearse.is_none(), true, a.rehearse.as_ref()),
    };
    if state && (creates_state || cfg.state.path.is_dir()) {
        lock.state(&cfg.state.path)?;
    }
    // A database store has no folder; two runs on it are kept apart by the state folder's lock,
    // and apply refuses while other sessions use the database.
    if store && cfg.store.kind != crate::config::StoreKind::CalendarserverPg {
        lock.folder(&cfg.store.path, "the store")?;
        // A separate address-book root (10.6's Address Book Server) is written too.
        if let Some(ab) = &cfg.store.addressbook_root {
            let same = |a: &std::path::Path, b: &std::path::Path| {
                a.canonicalize()
                    .ok()
                    .is_some_and(|x| b.canonicalize().ok() == Some(x))
            };
            if !same(ab, &cfg.store.path) {
                lock.folder(ab, "the address-book root")?;
            }
        }
    }
    if let Some(dir) = rehearsal {
        std::fs::create_dir_all(dir)
            .map_err(|e| crate::error::Error::io("cannot create rehearsal folder", dir, e))?;
        lock.folder(dir, "the rehearsal folder")?;
    }
    Ok(lock)
}

/// `diff RESOURCE`: exit 0 when the resource still matches its plan or holds the planned bytes,
/// 1 when it changed since (apply would skip it).
fn command_diff(ctx: &Context, args: &DiffArgs) -> Result<Outcome> {
    use crate::diff::Standing;
    let cfg = &ctx.config;
    let d =
        crate::diff::resource_diff(&cfg.state.path, &cfg.store.path, args.plan, &args.resource)?;
    let note = match d.standing {
        Standing::Planned => String::new(),
        Standing::Applied => format!("# plan {} is applied: {} holds these new bytes\n", d.plan_id, d.resource),
        Standing::ChangedSincePlan => format!(
            "# {} changed since plan {} (apply skips it; plan again): the diff is from its bytes now to the planned ones\n",
            d.resource, d.plan_id
        ),
    };
    Ok(Outcome {
        status: if d.standing == Standing::ChangedSincePlan {
            ExitStatus::Problems
        } else {
            ExitStatus::Ok
        },
        human: format!("{note}{}", d.diff),
        json: serde_json::json!({ "diff": d }),
    })
}
