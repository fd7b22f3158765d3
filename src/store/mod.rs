//! The calendar store: CalendarServer 2.x file store and plain .ics folders — reading, safe writing,
//! and the doctor.
//!
//! PLACEHOLDER: the interface below is the contract; the implementation is being written.

use crate::cli::{Context, DoctorArgs, Outcome};
use crate::config::StoreConfig;
use crate::error::{Error, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Which layout a calendar home was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HomeLayout {
    /// `calendars/__uids__/XX/YY/<GUID>/` (2.x)
    Hashed,
    /// `calendars/__uids__/<GUID>/` (1.x)
    FlatUids,
    /// `calendars/users/<short>/` (1.x)
    Users,
}

/// A calendar home.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Home {
    pub layout: HomeLayout,
    /// The GUID (hashed / flat layouts, as written in the folder name) or short name (users layout).
    pub id: String,
    /// Path relative to the store root.
    pub rel_path: String,
}

/// One extended attribute, raw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Xattr {
    pub name: String,
    #[serde(skip)]
    pub value: Vec<u8>,
}

/// One calendar resource (an .ics file).
#[derive(Clone, Debug, Serialize)]
pub struct Resource {
    pub path: PathBuf,
    /// Path relative to the store root, `/`-separated.
    pub rel_path: String,
    pub home: Option<Home>,
    /// Collection folder name (`calendar`, `inbox`, ...).
    pub collection: String,
    pub size: u64,
    /// SHA-256 of the bytes, lower-case hex.
    pub sha256: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub xattrs: Vec<Xattr>,
}

/// Something wrong found while walking the store.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    pub path: String,
    /// Short machine-readable kind: `unreadable`, `malformed`, `symlink`, ...
    pub kind: String,
    pub detail: String,
}

/// What the walk yields, in a deterministic order per folder.
pub enum Item<T> {
    Home(Home),
    Resource(Resource, T),
    Problem(Problem),
}

/// Walks the store in parallel with bounded memory. `map` runs on worker threads with each
/// resource's bytes (read once); `sink` runs on the calling thread for every item.
pub fn walk<T, M, S>(
    cfg: &StoreConfig,
    progress: &indicatif::ProgressBar,
    map: M,
    sink: S,
) -> Result<()>
where
    T: Send,
    M: Fn(&Resource, &[u8]) -> T + Sync,
    S: FnMut(Item<T>) -> Result<()>,
{
    let _ = (cfg, progress, map, sink);
    Err(Error::not_built("store walk"))
}

/// Replaces one resource safely (temp file, fsync, owner/mode/xattrs kept, MD5 attribute, rename,
/// folder fsync) if it still has `expected_sha256`; then changes the collection's ctag.
pub fn safe_write(path: &Path, expected_sha256: &str, new_bytes: &[u8]) -> Result<()> {
    let _ = (path, expected_sha256, new_bytes);
    Err(Error::not_built("store write"))
}

pub fn command_scan(ctx: &Context) -> Result<Outcome> {
    let _ = ctx;
    Err(Error::not_built("scan"))
}

pub fn command_doctor(ctx: &Context, args: &DoctorArgs) -> Result<Outcome> {
    let _ = (ctx, args);
    Err(Error::not_built("doctor"))
}
