//! The store seam: everything `apply`, `rollback` and their checks (`crate::journal`) need of a
//! store's files, so the journal makes no file-system call of its own.
//!
//! - [`Store`]: a run's roots (the calendar store — `calendarserver-fs` or `ics-dir` — and the
//!   address-book root): a batch's open folders ([`Store::open_batch`]), a file's hash, the
//!   temporary files an interrupted run left, home steps, durability. [`StoreRoots`] implements it
//!   for every file store; a path beginning with `addressbooks/` is routed to the address-book
//!   root inside the implementation.
//! - [`Batch`]: one batch's open folders, where a write is staged with the concurrency check
//!   ([`crate::store::write::prepare_write_at`]: the file must still hash as planned) and committed.
//! - [`Collection`]: a collection whose `getctag` a batch renews, once, after its renames.
//! - [`Backups`]: the content-addressed copies of original files in the state folder.
//! - [`SideFile`]: a file outside the store a run rewrites or restores (a delegate database,
//!   `augments.xml`), named by its absolute path.

use crate::error::{Error, Result};
use crate::state::create_private_dir;
use crate::store::addressbook::{is_addressbook_path, Roots};
use crate::store::confined::{Dir, DirCache};
use crate::store::homes::{self, HomeStep};
use crate::store::write::{
    bump_ctag_dir, is_leftover_name, restore, sha256_at, sha256_hex, sync_filesystem, FileMeta,
};
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a run needs of the store it writes.
pub trait Store: Sync {
    /// Opens one batch's folders (each stays open until the batch is dropped).
    fn open_batch(&self) -> Result<Box<dyn Batch + '_>>;
    /// The SHA-256 of the resource at `rel`; `None` when it is missing or cannot be reached.
    fn hash_of(&self, rel: &str) -> Option<String>;
    /// Removes our temporary files from one folder; returns how many.
    fn remove_leftovers_in(&self, folder: &str) -> Result<u64>;
    /// Carries out a home step (`undo`: reverses it) at the root its path is relative to.
    fn home_step(&self, step: &HomeStep, undo: bool) -> Result<()>;
    /// Makes everything written under every root durable.
    fn sync(&self) -> Result<()>;
    /// Makes durable the roots that are not on the file system of `dir` (whose own sync covers
    /// the others).
    fn sync_apart_from(&self, dir: &Path) -> Result<()>;
    /// The roots, as paths.
    fn roots(&self) -> &Roots;
}

/// One batch's open folders.
pub trait Batch: Sync {
    /// The folder holding `rel` (opened once a batch) and the file's name in it.
    fn parent<'a>(&self, rel: &'a str) -> std::io::Result<(Arc<Dir>, &'a str)>;
}

/// A collection whose `getctag` is renewed (clients then re-fetch it).
pub trait Collection {
    /// Gives the collection a new `getctag`.
    fn renew(&self) -> Result<()>;
}

/// A collection folder and the attribute prefix its properties are stored under.
#[derive(Clone)]
pub struct CtagRenewal {
    /// The collection's folder.
    pub dir: Arc<Dir>,
    /// The attribute prefix of its properties.
    pub prefix: String,
}

impl Collection for CtagRenewal {
    fn renew(&self) -> Result<()> {
        bump_ctag_dir(&self.dir, &self.prefix).map(|_| ())
    }
}

/// The roots of a run opened for confined access: the calendar store and, when there is one,
/// the address-book root (paths beginning with `addressbooks/` are relative to it).
pub struct StoreRoots {
    roots: Roots,
    store: Dir,
    addressbooks: Option<Dir>,
}

impl StoreRoots {
    /// Opens every root (reached one component at a time, never through a symbolic link).
    pub fn open(roots: Roots) -> Result<StoreRoots> {
        let open = |p: &Path| Dir::open(p).map_err(|e| Error::io("cannot open the store", p, e));
        let store = open(&roots.store)?;
        let addressbooks = match &roots.addressbooks {
            Some(p) => Some(open(p)?),
            None => None,
        };
        Ok(StoreRoots {
            roots,
            store,
            addressbooks,
        })
    }

    /// The root `rel` is relative to (as [`Roots::root_for`]).
    fn for_rel(&self, rel: &str) -> &Dir {
        match &self.addressbooks {
            Some(ab) if is_addressbook_path(rel) => ab,
            _ => &self.store,
        }
    }
}

impl Store for StoreRoots {
    fn open_batch(&self) -> Result<Box<dyn Batch + '_>> {
        let cache = |d: &Dir| DirCache::new(d).map_err(|e| Error::io("cannot open", d.path(), e));
        Ok(Box::new(BatchDirs {
            store: cache(&self.store)?,
            addressbooks: match &self.addressbooks {
                Some(d) => Some(cache(d)?),
                None => None,
            },
        }))
    }

    fn hash_of(&self, rel: &str) -> Option<String> {
        match self.for_rel(rel).split(rel) {
            Ok((dir, name)) => sha256_at(&dir, name).unwrap_or(None),
            Err(_) => None,
        }
    }

    fn remove_leftovers_in(&self, folder: &str) -> Result<u64> {
        let Ok(dir) = self.for_rel(folder).walk(folder) else {
            return Ok(0); // gone, moved, or a link: nothing of ours in it
        };
        let Ok(names) = dir.names() else { return Ok(0) };
        let mut removed = 0;
        for name in names.into_iter().filter(|n| is_leftover_name(n)) {
            if dir.stat(&name).is_ok_and(|s| s.is_file()) {
                dir.unlink(&name)
                    .map_err(|e| Error::io("cannot remove the leftover", &dir.child(&name), e))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn home_step(&self, step: &HomeStep, undo: bool) -> Result<()> {
        let root = self.for_rel(step.rel());
        if undo {
            homes::undo(root, step)
        } else {
            homes::execute(root, step)
        }
    }

    fn sync(&self) -> Result<()> {
        for root in self.roots.all() {
            sync_filesystem(root)?;
        }
        Ok(())
    }

    fn sync_apart_from(&self, dir: &Path) -> Result<()> {
        for root in self.roots.all() {
            if !same_filesystem(root, dir) {
                sync_filesystem(root)?;
            }
        }
        Ok(())
    }

    fn roots(&self) -> &Roots {
        &self.roots
    }
}

/// One batch's open folders under each root.
struct BatchDirs {
    store: DirCache,
    addressbooks: Option<DirCache>,
}

impl Batch for BatchDirs {
    fn parent<'a>(&self, rel: &'a str) -> std::io::Result<(Arc<Dir>, &'a str)> {
        match &self.addressbooks {
            Some(ab) if is_addressbook_path(rel) => ab.parent(rel),
            _ => self.store.parent(rel),
        }
    }
}

fn same_filesystem(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev(),
        _ => false,
    }
}

/// A path made absolute and free of links (as given when that fails).
pub fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

/// Looks for a running CalendarServer on the store: a pid file whose process is alive.
pub fn server_running(store: &Path) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    for dir in [Some(store), store.parent()].into_iter().flatten() {
        for name in [
            "caldavd.pid",
            "Data/caldavd.pid",
            "Run/caldavd.pid",
            "caldavd.lock",
        ] {
            candidates.push(dir.join(name));
        }
    }
    candidates.push(PathBuf::from("/var/run/caldavd/caldavd.pid"));
    candidates.push(PathBuf::from("/var/run/caldavd.pid"));
    for p in candidates {
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        let Ok(pid) = text.trim().parse::<i32>() else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks that the process exists.
        if pid > 0 && unsafe { libc::kill(pid, 0) } == 0 {
            return Some(p);
        }
    }
    None
}

/// A file outside the store (a delegate or auto-accept database, `augments.xml`), named by its
/// absolute path.
#[derive(Clone, Copy, Debug)]
pub struct SideFile<'a>(pub &'a Path);

impl SideFile<'_> {
    /// Its bytes.
    pub fn read(&self) -> Result<Vec<u8>> {
        std::fs::read(self.0).map_err(|e| Error::io("cannot read", self.0, e))
    }

    /// The SHA-256 of its bytes; `None` when it cannot be read.
    pub fn hash(&self) -> Option<String> {
        std::fs::read(self.0).ok().map(|b| sha256_hex(&b))
    }

    /// A SQLite database's rollback journal or write-ahead log beside it, when there is one (the
    /// database is in use or was not closed cleanly).
    pub fn sqlite_side_file(&self) -> Option<PathBuf> {
        ["-wal", "-journal"]
            .into_iter()
            .map(|suffix| PathBuf::from(format!("{}{suffix}", self.0.display())))
            .find(|side| side.exists())
    }

    /// Its owner, group, mode and attributes.
    pub fn meta(&self) -> Result<FileMeta> {
        FileMeta::of(self.0)
    }

    /// Replaces it with `bytes`, with the owner, mode and attributes of `meta`.
    pub fn restore(&self, bytes: &[u8], meta: &FileMeta) -> Result<()> {
        restore(self.0, bytes, meta)
    }
}

/// Content-addressed copies of original files, in `<state>/backups/<aa>/<sha256>`.
pub struct Backups {
    dir: PathBuf,
}

impl Backups {
    /// Opens (creating it, mode 0700) the backup folder under the state folder.
    pub fn open(state_dir: &Path) -> Result<Backups> {
        let dir = state_dir.join("backups");
        create_private_dir(&dir)?;
        Ok(Backups { dir })
    }

    fn path(&self, sha: &str) -> PathBuf {
        self.dir.join(&sha[..2]).join(sha)
    }

    /// Saves bytes (mode 0600) and returns their SHA-256. The caller makes them durable with
    /// [`Backups::sync`] before relying on them.
    pub fn put(&self, bytes: &[u8]) -> Result<String> {
        let sha = sha256_hex(bytes);
        let path = self.path(&sha);
        let sub = path.parent().unwrap_or(&self.dir);
        create_private_dir(sub)?;
        // A backup already there is kept when it is whole (it may be referenced by an earlier step:
        // never truncate it). One left partial by a crash was never referenced (steps refer to
        // backups only after `sync`) and is written again, in place.
        if std::fs::read(&path).is_ok_and(|b| sha256_hex(&b) == sha) {
            return Ok(sha);
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io("cannot write backup", &path, e))?;
        f.write_all(bytes)
            .map_err(|e| Error::io("cannot write backup", &path, e))?;
        Ok(sha)
    }

    /// Makes every backup written so far durable, files and folders (one `syncfs` per batch).
    pub fn sync(&self) -> Result<()> {
        sync_filesystem(&self.dir)
    }

    /// Reads a backup back, checking its hash.
    pub fn get(&self, sha: &str) -> Result<Vec<u8>> {
        if sha.len() < 2 {
            return Err(Error::runtime("the journal names no backup for this file"));
        }
        let path = self.path(sha);
        let bytes = std::fs::read(&path).map_err(|e| {
            Error::runtime(format!("its backup {} cannot be read: {e}", path.display()))
        })?;
        if sha256_hex(&bytes) != sha {
            return Err(Error::runtime(format!(
                "its backup {} is damaged (its bytes no longer match their SHA-256)",
                path.display()
            )));
        }
        Ok(bytes)
    }
}
