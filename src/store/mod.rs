//! The calendar store: CalendarServer 2.x file store and plain .ics folders — reading, safe writing,
//! and the doctor.
//!
//! Submodules: [`walk`](mod@walk) (the parallel reader), [`xattrs`] (WebDAV properties in extended
//! attributes), [`props`] (the properties a rewrite changes besides the bytes), [`write`](mod@write)
//! (safe replacement of one resource, snapshots and restores for rollback), [`doctor`], [`scan`]
//! (the inventory command) and [`generate`] (realistic test stores); [`addressbook`] and
//! [`generate_addressbooks`]: the same for address books.

pub mod addressbook;
pub mod confined;
pub mod doctor;
pub mod generate;
pub mod generate_addressbooks;
pub mod homes;
pub mod pg;
pub mod props;
pub mod scan;
pub mod seam;
pub mod walk;
pub mod write;
pub mod xattrs;

use crate::config::StoreConfig;
use crate::error::Result;
use crate::finding::Finding;
use serde::Serialize;
use std::path::{Path, PathBuf};

pub use self::walk::{
    calendars_dir, check_root, is_resource_name, rel_path, walk_with, WalkOptions,
};
pub use write::{
    bump_ctag, md5_hex, restore, write_resource, FileMeta, WriteError, WriteOptions, Written,
};

/// Which layout a calendar home was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HomeLayout {
    /// `calendars/__uids__/XX/YY/<GUID>/` (2.x)
    Hashed,
    /// `calendars/__uids__/<GUID>/` (1.x)
    FlatUids,
    /// `calendars/users/<short>/` (1.x; also `groups`, `locations`, `resources` beside `users`)
    Users,
}

/// A calendar home.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Home {
    /// Which folder layout the home is in.
    pub layout: HomeLayout,
    /// The GUID (hashed / flat layouts, as written in the folder name) or short name (users layout).
    pub id: String,
    /// Path relative to the store root.
    pub rel_path: String,
}

/// One extended attribute, raw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Xattr {
    /// Full attribute name as read, prefix included (`user.` / `WebDAV:`).
    pub name: String,
    #[serde(skip)]
    /// The raw value bytes (not serialised into reports).
    pub value: Vec<u8>,
}

/// One calendar resource (an .ics file).
#[derive(Clone, Debug, Serialize)]
pub struct Resource {
    /// Full path of the file.
    pub path: PathBuf,
    /// Path relative to the store root, `/`-separated.
    pub rel_path: String,
    /// The calendar home holding it; None for a resource outside any home (e.g. an ics-dir store).
    pub home: Option<Home>,
    /// Collection folder name (`calendar`, `inbox`, ...).
    pub collection: String,
    /// File size in bytes.
    pub size: u64,
    /// SHA-256 of the bytes, lower-case hex.
    pub sha256: String,
    /// Owner uid of the file.
    pub uid: u32,
    /// Owner gid of the file.
    pub gid: u32,
    /// Permission bits of the file (`st_mode & 0o7777`).
    pub mode: u32,
    /// Extended attributes of the file (WebDAV properties).
    pub xattrs: Vec<Xattr>,
}

/// What the walk yields. Items of different folders interleave; every home, resource and problem
/// is delivered exactly once.
pub enum Item<T> {
    /// A calendar home found.
    Home(Home),
    /// A resource, with what the caller's `map` made of it.
    Resource(Resource, T),
    /// An entry that could not be read as a resource.
    Problem(Finding),
}

/// Walks the store in parallel with bounded memory. `map` runs on worker threads with each
/// resource's bytes (read once); `sink` runs on the calling thread for every item. The progress
/// bar advances once per resource (read or not). Symlinks are never followed (each is reported
/// as a `symlink` problem); resources that cannot be read are `unreadable` problems. When `sink`
/// returns an error the walk stops and returns it.
pub fn walk<T, M, S>(
    cfg: &StoreConfig,
    progress: &dyn crate::progress::Bar,
    map: M,
    sink: S,
) -> Result<()>
where
    T: Send,
    M: Fn(&Resource, &[u8]) -> T + Sync,
    S: FnMut(Item<T>) -> Result<()>,
{
    self::walk::walk(cfg, progress, map, sink)
}

/// Replaces one resource safely (temp file, fsync, owner/mode/xattrs kept, MD5 attribute, rename,
/// folder fsync) if it still has `expected_sha256`; then changes the collection's ctag.
/// [`write_resource`] does the same and tells a concurrent change apart ([`WriteError::Changed`]).
pub fn safe_write(path: &Path, expected_sha256: &str, new_bytes: &[u8]) -> Result<()> {
    write_resource(path, expected_sha256, new_bytes, &WriteOptions::default())?;
    Ok(())
}
