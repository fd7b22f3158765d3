//! The store seam: everything `apply`, `rollback` and their checks (`crate::journal`) need of a
//! store's files, so the journal makes no file-system call of its own.
//!
//! - [`Store`]: a run's roots (the calendar store — `calendarserver-fs` or `ics-dir` — and the
//!   address-book root): a batch's open folders ([`Store::open_batch`]), a file's hash, the
//!   temporary files an interrupted run left, home steps, durability. [`StoreRoots`] implements it
//!   for every file store; a path beginning with `addressbooks/` is routed to the address-book
//!   root inside the implementation.
//! - [`Batch`]: one batch's open folders. A [`StoreFile`] reached through them reads, hashes and
//!   stages a write with the concurrency check (the file must still hash as planned, now and at
//!   the commit) or a restore from a backup; the [`Staged`] write is committed after the batch's
//!   steps are durable.
//! - [`Collection`]: a collection whose `getctag` a batch renews, once, after its renames.
//! - [`Backups`]: the content-addressed copies of original files in the state folder.
//! - [`SideFile`]: a file outside the store a run rewrites or restores (a delegate database,
//!   `augments.xml`), named by its absolute path.

use crate::error::{Error, Result};
use crate::state::create_private_dir;
use crate::store::addressbook::{is_addressbook_path, Roots};
use crate::store::confined::{Dir, DirCache};
use crate::store::homes::{self, HomeStep};
use crate::store::props::AttrEdit;
use crate::store::write::{
    bump_ctag_dir, choose_prefix_dir, is_leftover_name, prepare_restore, prepare_write_at,
    renews_ctag, restore, sha256_at, sha256_hex, sync_filesystem, FileMeta, PreparedWrite,
    WriteError, WriteOptions,
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

    /// The resource at `rel`, reached through the batch's open folders.
    fn file<'a>(&self, rel: &'a str) -> std::io::Result<StoreFile<'a>> {
        let (dir, name) = self.parent(rel)?;
        Ok(StoreFile { dir, name })
    }
}

/// A resource of the store, in a folder a batch holds open.
pub struct StoreFile<'a> {
    dir: Arc<Dir>,
    name: &'a str,
}

impl StoreFile<'_> {
    /// Its bytes.
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        self.dir.read(self.name)
    }

    /// The SHA-256 of its bytes (`None`: it does not exist).
    pub fn hash(&self) -> Result<Option<String>> {
        sha256_at(&self.dir, self.name)
    }

    /// Its owner, group, mode and attributes.
    pub fn meta(&self) -> Result<FileMeta> {
        FileMeta::of_at(&self.dir, self.name)
    }

    /// Its collection, with the attribute prefix a write of it uses (`configured`, else the one
    /// its own attributes or its folder's have).
    pub fn collection(&self, configured: Option<&str>) -> Result<CtagRenewal> {
        let own = self.meta()?.xattr_list();
        let prefix = choose_prefix_dir(configured, &own, &self.dir);
        Ok(CtagRenewal {
            dir: self.dir.clone(),
            prefix,
        })
    }

    /// Its collection when putting the file back must renew its `getctag` (a calendar resource
    /// or a card in a collection that has one).
    pub fn restored_collection(&self) -> Option<CtagRenewal> {
        renews_ctag(&self.dir, self.name).then(|| CtagRenewal {
            dir: self.dir.clone(),
            prefix: choose_prefix_dir(None, &[], &self.dir),
        })
    }

    /// Stages new bytes in a temporary file beside it, with the concurrency check: the file must
    /// hash to `checked_sha256` now and again at the commit.
    pub fn stage_write(
        &self,
        checked_sha256: &str,
        new_bytes: &[u8],
        opts: &WriteOptions,
        edits: &[AttrEdit],
    ) -> std::result::Result<Staged, WriteError> {
        prepare_write_at(
            self.dir.clone(),
            self.name,
            checked_sha256,
            new_bytes,
            opts,
            edits,
            false,
        )
        .map(Staged)
    }

    /// Stages its original bytes and metadata (from a backup) beside it; `current` is what it
    /// holds now (`None`: absent), which the commit checks is still so.
    pub fn stage_restore(
        self,
        current: Option<String>,
        bytes: &[u8],
        meta: &FileMeta,
    ) -> Result<Staged> {
        prepare_restore(self.dir, self.name, current, bytes, meta, false).map(Staged)
    }
}

/// A write staged beside its file, not yet renamed over it.
pub struct Staged(PreparedWrite);

impl Staged {
    /// The collection the file is in (renewed after the batch's renames).
    pub fn collection(&self) -> CtagRenewal {
        CtagRenewal {
            dir: self.0.dir().clone(),
            prefix: self.0.prefix.clone(),
        }
    }

    /// A last look (a change made meanwhile wins: [`WriteError::Changed`]), then the rename.
    pub fn commit(self) -> std::result::Result<(), WriteError> {
        self.0.commit().map(|_| ())
    }
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

impl CtagRenewal {
    /// Whether putting back the file `name` of this collection must renew its `getctag`.
    pub fn renewed_by(&self, name: &str) -> bool {
        renews_ctag(&self.dir, name)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_reads_back_and_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let backups = Backups::open(dir.path()).unwrap();
        let sha = backups.put(b"BEGIN:VCALENDAR").unwrap();
        backups.sync().unwrap();
        assert_eq!(backups.get(&sha).unwrap(), b"BEGIN:VCALENDAR");
        // Put again: the whole backup is kept as it is.
        assert_eq!(backups.put(b"BEGIN:VCALENDAR").unwrap(), sha);
        std::fs::write(backups.path(&sha), b"other").unwrap();
        assert!(backups.get(&sha).unwrap_err().message.contains("damaged"));
        assert!(backups.get("").is_err());
    }

    #[test]
    fn address_book_paths_are_routed_to_their_own_root() {
        let store = tempfile::tempdir().unwrap();
        let ab = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(store.path().join("calendars")).unwrap();
        std::fs::write(store.path().join("calendars/a.ics"), b"cal").unwrap();
        std::fs::create_dir_all(ab.path().join("addressbooks")).unwrap();
        std::fs::write(ab.path().join("addressbooks/b.vcf"), b"card").unwrap();
        let roots = StoreRoots::open(Roots {
            store: store.path().to_path_buf(),
            addressbooks: Some(ab.path().to_path_buf()),
        })
        .unwrap();
        assert_eq!(roots.hash_of("calendars/a.ics"), Some(sha256_hex(b"cal")));
        assert_eq!(
            roots.hash_of("addressbooks/b.vcf"),
            Some(sha256_hex(b"card"))
        );
        assert_eq!(roots.hash_of("addressbooks/missing.vcf"), None);
        let batch = roots.open_batch().unwrap();
        let file = batch.file("addressbooks/b.vcf").unwrap();
        assert_eq!(file.read().unwrap(), b"card");
    }

    #[test]
    fn a_database_with_a_journal_beside_it_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("proxies.sqlite");
        std::fs::write(&db, b"db").unwrap();
        let file = SideFile(&db);
        assert_eq!(file.sqlite_side_file(), None);
        assert_eq!(file.hash(), Some(sha256_hex(b"db")));
        std::fs::write(dir.path().join("proxies.sqlite-wal"), b"").unwrap();
        assert_eq!(
            file.sqlite_side_file(),
            Some(dir.path().join("proxies.sqlite-wal"))
        );
    }
}
