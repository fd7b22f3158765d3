//! One error type for the whole tool, carrying the exit code it should end the process with.
//!
//! Exit codes (documented in the README): 0 ok, 1 problems found, 2 usage / configuration / input
//! error, 3 runtime failure (unreachable server, I/O failure, ...), 130 interrupted by a signal
//! (apply and rollback stop after a whole batch and resume later).

use std::fmt;

/// How a run ended, as the process exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExitStatus {
    /// 0: everything done, nothing left to look at.
    Ok = 0,
    /// 1: the run worked and found problems a human must look at.
    Problems = 1,
    /// 2: bad command line, configuration or input file; nothing was changed.
    Usage = 2,
    /// 3: the run could not be carried out (server unreachable, I/O failure); nothing half-written.
    Runtime = 3,
    /// 130: stopped by SIGINT / SIGTERM after a whole batch; the run resumes where it stopped.
    Interrupted = 130,
}

impl ExitStatus {
    /// The numeric process exit code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// Which exit code an error maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Command line, configuration or input data the user supplied (exit 2).
    Usage,
    /// The environment failed us: network, server, file system (exit 3).
    Runtime,
}

#[derive(Debug)]
/// An error to report on stderr and exit with: its kind picks the exit code.
pub struct Error {
    /// Usage (exit 2) or runtime (exit 3).
    pub kind: ErrorKind,
    /// The message shown to the user, with its context prefixes.
    pub message: String,
}

/// The crate's result type, with [`Error`] by default.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error in what the user supplied (exit 2).
    pub fn usage(message: impl Into<String>) -> Error {
        Error {
            kind: ErrorKind::Usage,
            message: message.into(),
        }
    }

    /// A failure of the environment: network, server, file system (exit 3).
    pub fn runtime(message: impl Into<String>) -> Error {
        Error {
            kind: ErrorKind::Runtime,
            message: message.into(),
        }
    }

    /// An I/O error on `path` while doing `what` (runtime failure).
    pub fn io(what: &str, path: &std::path::Path, err: std::io::Error) -> Error {
        Error::runtime(format!("{what} {}: {err}", path.display()))
    }

    /// Prefixes the message with more context (`context: message`).
    pub fn context(mut self, ctx: impl fmt::Display) -> Error {
        self.message = format!("{ctx}: {}", self.message);
        self
    }

    /// The exit status this error ends the process with.
    pub fn exit_status(&self) -> ExitStatus {
        match self.kind {
            ErrorKind::Usage => ExitStatus::Usage,
            ErrorKind::Runtime => ExitStatus::Runtime,
        }
    }

    /// The "not yet built" error of a command a later release fills in (exit 2).
    pub fn not_built(command: &str) -> Error {
        Error::usage(format!(
            "`{command}` is not yet built in this version of principal-reconciler"
        ))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Error {
        Error::runtime(format!("state database: {e}"))
    }
}
