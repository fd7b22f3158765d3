//! The directory: current records from live LDAP or an LDIF snapshot, old records from exports.
//!
//! PLACEHOLDER: the interface below is the contract; the implementation is being written.

use crate::address::{Guid, Principal, RecordType};
use crate::cli::{Context, Outcome};
use crate::config::DirectoryConfig;
use crate::error::{Error, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// One user, group, place or resource, wherever it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DirectoryRecord {
    pub kind: RecordType,
    pub guid: Guid,
    /// Short names; the first is the login.
    pub short_names: Vec<String>,
    pub full_name: Option<String>,
    /// E-mail addresses, lower-cased, first = primary.
    pub emails: Vec<String>,
    /// Groups: member GUIDs (apple-group-memberguid / GroupMembers).
    pub member_guids: Vec<Guid>,
    /// Groups: member short names (memberUid / GroupMembership).
    pub member_names: Vec<String>,
    /// Groups: nested group GUIDs.
    pub nested_guids: Vec<Guid>,
    /// Where it came from: a DN, or `file:line` of an export.
    pub source: String,
}

impl DirectoryRecord {
    /// The record as the rewriter needs it.
    pub fn principal(&self) -> Principal {
        Principal {
            guid: self.guid.clone(),
            kind: self.kind,
            short_name: self.short_names.first().cloned().unwrap_or_default(),
            full_name: self.full_name.clone(),
            emails: self.emails.clone(),
        }
    }
}

/// All records from one source.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Directory {
    pub records: Vec<DirectoryRecord>,
    /// Where the records came from (server URL, LDIF path, export files).
    pub origin: String,
    /// Things a human should know (partial results, skipped entries, ...).
    pub warnings: Vec<String>,
}

/// Reads the current directory as configured (`url` or `ldif`).
pub fn load_current(cfg: &DirectoryConfig) -> Result<Directory> {
    let _ = cfg;
    Err(Error::not_built("directory"))
}

/// Reads the old directory's export files (dsexport / Workgroup Manager / LDIF, detected).
pub fn load_old(files: &[PathBuf]) -> Result<Directory> {
    let _ = files;
    Ok(Directory::default())
}

pub fn command_pull(ctx: &Context) -> Result<Outcome> {
    let _ = ctx;
    Err(Error::not_built("directory pull"))
}

pub fn command_export(ctx: &Context, ldif: &Path) -> Result<Outcome> {
    let _ = (ctx, ldif);
    Err(Error::not_built("directory export"))
}
