//! The parallel, bounded-memory walk over a store.
//!
//! One walker thread lists folders (never following a symlink) and feeds resource paths into a
//! bounded channel; worker threads (one per core) open, read, hash and call `map`; their results go
//! through a second bounded channel to `sink` on the calling thread. At most a few thousand items
//! are in flight whatever the store's size.

use super::{xattrs, Home, HomeLayout, Item, Resource};
use crate::config::{StoreConfig, StoreKind};
use crate::error::{Error, Result};
use crate::finding::Finding;
use crossbeam_channel::{bounded, Receiver, Sender};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

/// Jobs and results travel in batches (fewer wake-ups); at most QUEUE batches wait in each channel.
const BATCH: usize = 64;
const QUEUE: usize = 16;

struct Job {
    path: PathBuf,
    rel: String,
    home: Option<Home>,
    collection: String,
}

/// Where the homes of a CalendarServer store live: `<root>/calendars`, or `<root>` itself when the
/// configured path already is the `calendars` folder.
pub fn calendars_dir(root: &Path) -> Option<PathBuf> {
    let c = root.join("calendars");
    if is_real_dir(&c) {
        return Some(c);
    }
    if is_real_dir(&root.join("__uids__")) || is_real_dir(&root.join("users")) {
        return Some(root.to_path_buf());
    }
    None
}

fn is_real_dir(p: &Path) -> bool {
    fs::symlink_metadata(p).map(|m| m.is_dir()).unwrap_or(false)
}

/// Checks that the store root exists and has the expected shape.
pub fn check_root(cfg: &StoreConfig) -> Result<()> {
    let root = &cfg.path;
    match fs::symlink_metadata(root) {
        Ok(m) if m.is_dir() => {}
        Ok(m) if m.file_type().is_symlink() => {
            // The root itself may be a symlink the admin made; that is fine if it leads to a folder.
            if !root.is_dir() {
                return Err(Error::usage(format!(
                    "[store] path {} is a symlink that does not lead to a folder",
                    root.display()
                )));
            }
        }
        Ok(_) => {
            return Err(Error::usage(format!(
                "[store] path {} is not a folder",
                root.display()
            )))
        }
        Err(e) => {
            return Err(Error::usage(format!(
                "[store] path {}: {e}",
                root.display()
            )))
        }
    }
    if cfg.kind == StoreKind::CalendarserverFs && calendars_dir(root).is_none() {
        let cal = root.join("calendars");
        if let Ok(target) = fs::read_link(&cal) {
            return Err(Error::usage(format!(
                "{} is a symbolic link to {}; symlinks are never followed: give the folder that \
                 holds the real calendars/ as [store] path",
                cal.display(),
                target.display()
            )));
        }
        return Err(Error::usage(format!(
            "[store] path {} does not look like a CalendarServer 2.x data root: it has no calendars/ \
             folder (nor __uids__/ or users/); give the Documents folder, or set kind = \"ics-dir\"",
            root.display()
        )));
    }
    if cfg.kind == StoreKind::CalendarserverPg {
        return Err(Error::usage(
            "[store] kind = \"calendarserver-pg\" is not read by the file-store walker".to_string(),
        ));
    }
    Ok(())
}

/// `/`-separated path of `p` relative to `root`.
pub fn rel_path(root: &Path, p: &Path) -> String {
    let r = p.strip_prefix(root).unwrap_or(p);
    let mut s = String::new();
    for c in r.components() {
        if !s.is_empty() {
            s.push('/');
        }
        s.push_str(&c.as_os_str().to_string_lossy());
    }
    s
}

/// Lexically normalised absolute path (no file-system access).
fn normalise(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// The problem to report for a symlink found at `path`.
pub fn symlink_problem(root: &Path, path: &Path) -> Finding {
    let target = fs::read_link(path)
        .map(|t| t.display().to_string())
        .unwrap_or_else(|_| "?".into());
    let abs = match fs::read_link(path) {
        Ok(t) if t.is_absolute() => normalise(&t),
        Ok(t) => normalise(&path.parent().unwrap_or(Path::new("/")).join(t)),
        Err(_) => PathBuf::new(),
    };
    let root_abs = fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let inside = abs.starts_with(&root_abs) || abs.starts_with(root);
    Finding::symlink(
        rel_path(root, path),
        format!(
            "symbolic link to {target} ({}); not followed",
            if inside {
                "inside the store"
            } else {
                "outside the store"
            }
        ),
    )
}

struct Walker<'a, T> {
    root: PathBuf,
    /// Which entries of a home's collections are resources (`.ics`, or `.vcf` in address books).
    resource: fn(&str) -> bool,
    jobs: &'a Sender<Vec<Job>>,
    pending: std::cell::RefCell<Vec<Job>>,
    results: &'a Sender<Vec<Item<T>>>,
}

/// Stops the walk (the receiving side went away).
struct Stop;

impl<T> Walker<'_, T> {
    fn send_item(&self, item: Item<T>) -> Result<(), Stop> {
        self.results.send(vec![item]).map_err(|_| Stop)
    }

    fn problem(&self, path: &Path, kind: &str, detail: String) -> Result<(), Stop> {
        self.send_item(Item::Problem(Finding::new(
            rel_path(&self.root, path),
            kind,
            detail,
        )))
    }

    /// Lists a folder; reports it unreadable (and returns `None`) when it cannot be listed.
    fn list(&self, dir: &Path) -> Result<Option<fs::ReadDir>, Stop> {
        match fs::read_dir(dir) {
            Ok(rd) => Ok(Some(rd)),
            Err(e) => {
                self.problem(dir, "unreadable", format!("cannot list folder: {e}"))?;
                Ok(None)
            }
        }
    }

    /// Entries of a folder with their (not followed) file types; symlinks are reported and skipped.
    fn entries(
        &self,
        dir: &Path,
        mut f: impl FnMut(&Self, PathBuf, String, bool) -> Result<(), Stop>,
    ) -> Result<(), Stop> {
        let Some(rd) = self.list(dir)? else {
            return Ok(());
        };
        for entry in rd {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    self.problem(dir, "unreadable", format!("cannot list folder: {e}"))?;
                    return Ok(());
                }
            };
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let ft = match entry.file_type() {
                Ok(t) => t,
                Err(e) => {
                    self.problem(&path, "unreadable", format!("cannot stat: {e}"))?;
                    continue;
                }
            };
            if ft.is_symlink() {
                self.send_item(Item::Problem(symlink_problem(&self.root, &path)))?;
                continue;
            }
            f(self, path, name, ft.is_dir())?;
        }
        Ok(())
    }

    fn calendarserver(&self, calendars: &Path) -> Result<(), Stop> {
        let uids = calendars.join("__uids__");
        if is_real_dir(&uids) {
            self.entries(&uids, |w, p1, n1, d1| {
                if !d1 {
                    return Ok(());
                }
                if n1.len() == 2 {
                    w.entries(&p1, |w, p2, n2, d2| {
                        if !d2 || n2.len() != 2 {
                            return Ok(());
                        }
                        w.entries(&p2, |w, p3, n3, d3| {
                            if d3 && !n3.starts_with('.') {
                                let fits = n3.get(0..2).is_some_and(|x| x.eq_ignore_ascii_case(&n1))
                                    && n3.get(2..4).is_some_and(|x| x.eq_ignore_ascii_case(&n2));
                                if !fits {
                                    let want = format!(
                                        "{}/{}",
                                        n3.get(0..2).unwrap_or("?"),
                                        n3.get(2..4).unwrap_or("?")
                                    );
                                    w.problem(
                                        &p3,
                                        "misplaced-home",
                                        format!(
                                            "home {n3} is under {n1}/{n2}/ but the server looks for it under {want}/; its resources are read all the same"
                                        ),
                                    )?;
                                }
                                w.home(HomeLayout::Hashed, n3, &p3)?;
                            }
                            Ok(())
                        })
                    })
                } else if !n1.starts_with('.') {
                    w.home(HomeLayout::FlatUids, n1, &p1)
                } else {
                    Ok(())
                }
            })?;
        } else if calendars.join("__uids__").exists() {
            self.send_item(Item::Problem(symlink_problem(&self.root, &uids)))?;
        }
        // 1.x: calendars/users/<short>/ (and the other record types beside it).
        for kind in ["users", "groups", "locations", "resources"] {
            let dir = calendars.join(kind);
            if let Ok(m) = fs::symlink_metadata(&dir) {
                if m.file_type().is_symlink() {
                    self.send_item(Item::Problem(symlink_problem(&self.root, &dir)))?;
                } else if m.is_dir() {
                    self.entries(&dir, |w, p, n, d| {
                        if d && !n.starts_with('.') {
                            w.home(HomeLayout::Users, n, &p)?;
                        }
                        Ok(())
                    })?;
                }
            }
        }
        Ok(())
    }

    fn home(&self, layout: HomeLayout, id: String, dir: &Path) -> Result<(), Stop> {
        let home = Home {
            layout,
            id,
            rel_path: rel_path(&self.root, dir),
        };
        self.send_item(Item::Home(home.clone()))?;
        self.entries(dir, |w, p, n, d| {
            if d && !n.starts_with('.') {
                w.collection(&home, &n, &p)?;
            }
            Ok(())
        })
    }

    fn collection(&self, home: &Home, name: &str, dir: &Path) -> Result<(), Stop> {
        self.entries(dir, |w, p, n, _is_dir| {
            if (self.resource)(&n) {
                // A folder named x.ics is queued too: the worker reports it as unreadable.
                w.job(p, Some(home.clone()), name.to_string())?;
            }
            Ok(())
        })
    }

    fn ics_dir(&self, dir: &Path, collection: &str) -> Result<(), Stop> {
        self.entries(dir, |w, p, n, d| {
            if n.starts_with('.') {
                return Ok(());
            }
            if d {
                w.ics_dir(&p, &n)
            } else if is_resource_name(&n) {
                w.job(p, None, collection.to_string())
            } else {
                Ok(())
            }
        })
    }

    fn job(&self, path: PathBuf, home: Option<Home>, collection: String) -> Result<(), Stop> {
        let rel = rel_path(&self.root, &path);
        let full = {
            let mut pending = self.pending.borrow_mut();
            pending.push(Job {
                path,
                rel,
                home,
                collection,
            });
            pending.len() >= BATCH
        };
        if full {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), Stop> {
        let batch = std::mem::take(&mut *self.pending.borrow_mut());
        if batch.is_empty() {
            return Ok(());
        }
        self.jobs.send(batch).map_err(|_| Stop)
    }
}

/// Whether a folder entry's name makes it a calendar resource.
pub fn is_resource_name(name: &str) -> bool {
    !name.starts_with('.')
        && name.len() > 4
        && name
            .get(name.len() - 4..)
            .is_some_and(|e| e.eq_ignore_ascii_case(".ics"))
}

/// Reads one resource: opens without following symlinks (and without blocking on a FIFO), checks it
/// is a regular file, reads it whole, hashes it and reads its attributes.
fn read_resource(
    job: Job,
    buf: &mut Vec<u8>,
    with_xattrs: bool,
) -> std::result::Result<Resource, Finding> {
    let unreadable = |detail: String| Finding::unreadable(job.rel.clone(), detail);
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&job.path)
        .map_err(|e| unreadable(format!("cannot open: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| unreadable(format!("cannot stat: {e}")))?;
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "a folder"
        } else {
            "not a regular file"
        };
        return Err(unreadable(format!("named like a resource but is {what}")));
    }
    read_whole(&mut file, meta.len() as usize, buf)
        .map_err(|e| unreadable(format!("cannot read: {e}")))?;
    let sha256 = hex::encode(Sha256::digest(&buf[..]));
    let xattrs = if with_xattrs {
        xattrs::read_all_fd(&file)
            .map_err(|e| unreadable(format!("cannot read extended attributes: {e}")))?
    } else {
        Vec::new()
    };
    Ok(Resource {
        path: job.path,
        rel_path: job.rel,
        home: job.home,
        collection: job.collection,
        size: buf.len() as u64,
        sha256,
        uid: meta.uid(),
        gid: meta.gid(),
        mode: meta.mode() & 0o7777,
        xattrs,
    })
}

/// Reads a file whose size `fstat` gave as `hint` (it may have changed since) into `buf`.
fn read_whole(file: &mut fs::File, hint: usize, buf: &mut Vec<u8>) -> std::io::Result<()> {
    buf.clear();
    buf.resize(hint + 1, 0);
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            buf.resize(buf.len() * 2 + 4096, 0);
        }
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(())
}

fn worker<T, M>(
    jobs: Receiver<Vec<Job>>,
    results: Sender<Vec<Item<T>>>,
    map: &M,
    progress: &dyn crate::progress::Bar,
    with_xattrs: bool,
) where
    M: Fn(&Resource, &[u8]) -> T,
{
    let mut buf = Vec::with_capacity(64 * 1024);
    for batch in jobs {
        let mut out = Vec::with_capacity(batch.len());
        for job in batch {
            out.push(match read_resource(job, &mut buf, with_xattrs) {
                Ok(res) => {
                    let t = map(&res, &buf);
                    Item::Resource(res, t)
                }
                Err(p) => Item::Problem(p),
            });
            if buf.capacity() > 16 * 1024 * 1024 {
                buf = Vec::with_capacity(64 * 1024);
            }
        }
        progress.inc(out.len() as u64);
        if results.send(out).is_err() {
            return;
        }
    }
}

/// What a walk reads besides each resource's bytes.
#[derive(Clone, Copy, Debug)]
pub struct WalkOptions {
    /// Read every resource's extended attributes into [`Resource::xattrs`] (left empty when
    /// false: callers that need no attributes save a few system calls per resource).
    pub xattrs: bool,
}

impl Default for WalkOptions {
    fn default() -> Self {
        WalkOptions { xattrs: true }
    }
}

/// See [`super::walk()`].
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
    walk_with(cfg, WalkOptions::default(), progress, map, sink)
}

/// [`walk`] with options.
pub fn walk_with<T, M, S>(
    cfg: &StoreConfig,
    opts: WalkOptions,
    progress: &dyn crate::progress::Bar,
    map: M,
    sink: S,
) -> Result<()>
where
    T: Send,
    M: Fn(&Resource, &[u8]) -> T + Sync,
    S: FnMut(Item<T>) -> Result<()>,
{
    check_root(cfg)?;
    let top = match cfg.kind {
        StoreKind::IcsDir => Top::IcsDir,
        _ => Top::Homes {
            dir: calendars_dir(&cfg.path),
            resource: is_resource_name,
        },
    };
    walk_tree(&cfg.path, top, opts, progress, map, sink)
}

/// What [`walk_tree`] descends into below its root.
#[derive(Clone, Debug)]
pub enum Top {
    /// Every folder, every `.ics` file (a plain folder tree).
    IcsDir,
    /// CalendarServer homes in `dir` (`calendars/` or `addressbooks/`: `__uids__/XX/YY/<GUID>/`,
    /// `__uids__/<GUID>/`, `users/<short>/`); the entries of their collections that `resource`
    /// accepts. Nothing when `dir` is `None`.
    Homes {
        /// The folder holding the homes (`calendars/` or `addressbooks/`); None walks nothing.
        dir: Option<PathBuf>,
        /// Which entry names of a collection are resources (e.g. ends in `.ics`).
        resource: fn(&str) -> bool,
    },
}

/// The walk of [`walk_with`] over any tree: paths are relative to `root`.
pub fn walk_tree<T, M, S>(
    root: &Path,
    top: Top,
    opts: WalkOptions,
    progress: &dyn crate::progress::Bar,
    map: M,
    mut sink: S,
) -> Result<()>
where
    T: Send,
    M: Fn(&Resource, &[u8]) -> T + Sync,
    S: FnMut(Item<T>) -> Result<()>,
{
    let root = root.to_path_buf();
    let resource = match &top {
        Top::Homes { resource, .. } => *resource,
        Top::IcsDir => is_resource_name,
    };
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 16);
    let (job_tx, job_rx) = bounded::<Vec<Job>>(QUEUE);
    let (res_tx, res_rx) = bounded::<Vec<Item<T>>>(QUEUE);
    let map = &map;
    std::thread::scope(move |scope| -> Result<()> {
        {
            let res_tx = res_tx.clone();
            let root = root.clone();
            std::thread::Builder::new()
                .name("store-walker".into())
                .spawn_scoped(scope, move || {
                    let w = Walker {
                        root: root.clone(),
                        resource,
                        jobs: &job_tx,
                        pending: Default::default(),
                        results: &res_tx,
                    };
                    let _ = match &top {
                        Top::IcsDir => {
                            let name = root
                                .file_name()
                                .map(|n| n.to_string_lossy().into_owned())
                                .unwrap_or_default();
                            w.ics_dir(&root, &name)
                        }
                        Top::Homes { dir: Some(c), .. } => w.calendarserver(c),
                        Top::Homes { dir: None, .. } => Ok(()),
                    }
                    .and_then(|()| w.flush());
                })
                .map_err(|e| {
                    Error::runtime(format!("cannot start the store walker thread: {e}"))
                })?;
        }
        for i in 0..workers {
            let jobs = job_rx.clone();
            let results = res_tx.clone();
            std::thread::Builder::new()
                .name(format!("store-reader-{i}"))
                .spawn_scoped(scope, move || {
                    worker(jobs, results, map, progress, opts.xattrs)
                })
                .map_err(|e| Error::runtime(format!("cannot start a store reader thread: {e}")))?;
        }
        drop(job_rx);
        drop(res_tx);
        while let Ok(batch) = res_rx.recv() {
            for item in batch {
                if let Err(e) = sink(item) {
                    // Dropping the receiver makes every thread stop at its next send.
                    drop(res_rx);
                    return Err(e);
                }
            }
        }
        Ok(())
    })
}
