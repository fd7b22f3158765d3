//! `doctor [--fix]`: ownership, permissions, `getcontentmd5` and `scheduling-match-etags`
//! attributes, leftovers of interrupted writes, symlinks and unreadable resources.

use super::confined::{fchown_tolerant, fstat, Dir, Stat};
use super::write::{
    bump_ctag_dir, choose_prefix_dir, is_leftover_name, md5_hex, set_match_etags_attr_file,
    set_md5_attr_file,
};
use super::{xattrs, Item};
use crate::config::{StoreConfig, StoreKind};
use crate::error::{Error, Result};
use crate::finding::Finding;
use crate::progress::{Bar, Progress};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// How many findings a report keeps in detail (all are counted).
pub const MAX_LISTED: usize = 10_000;

/// One finding as `doctor --json` lists it: `fixed` always there (`null` when nothing was fixed).
#[derive(Serialize)]
struct Listed<'a> {
    path: &'a str,
    kind: &'a str,
    detail: &'a str,
    fixed: &'a Option<String>,
}

fn listed<S: serde::Serializer>(
    findings: &[Finding],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(findings.iter().map(|f| Listed {
        path: &f.path,
        kind: &f.kind,
        detail: &f.detail,
        fixed: &f.fixed,
    }))
}

#[derive(Clone, Debug, Default, Serialize)]
/// What `doctor` found (and, with `--fix`, repaired).
pub struct DoctorReport {
    /// The store's data root checked.
    pub store: String,
    /// `uid:gid` every file and folder must have.
    pub expected_owner: String,
    /// Where the expectation came from (`[store] owner`, or the store folder's own owner).
    pub owner_source: String,
    /// `--fix` was given: repairs were attempted.
    pub fix: bool,
    /// Files and folders checked.
    pub entries_checked: u64,
    /// Resources (`.ics` files) checked.
    pub resources_checked: u64,
    /// Resources with no extended attribute at all (a copy that lost them?).
    pub resources_without_xattrs: u64,
    /// Findings per kind.
    pub found: BTreeMap<String, u64>,
    /// Findings repaired per kind (empty without `--fix`).
    pub fixed: BTreeMap<String, u64>,
    /// Problems left after fixing.
    pub remaining: u64,
    /// Every finding, in the order found (paths relative to the store root). Kinds: `owner`,
    /// `mode`, `md5-stale`, `md5-missing`, `match-etags-stale`, `leftover`, `symlink`,
    /// `unreadable`, `hardlink` (a file --fix leaves alone: another name for it may be outside
    /// the store); `fixed` says what `--fix` did about it, if anything.
    #[serde(serialize_with = "listed")]
    pub findings: Vec<Finding>,
}

impl DoctorReport {
    fn add(&mut self, f: Finding) {
        *self.found.entry(f.kind.clone()).or_insert(0) += 1;
        if f.fixed.is_some() {
            *self.fixed.entry(f.kind.clone()).or_insert(0) += 1;
        } else {
            self.remaining += 1;
        }
        if self.findings.len() < MAX_LISTED {
            self.findings.push(f);
        }
    }
}

/// Resolves `user:group` (names or numbers) to `(uid, gid)`.
pub fn resolve_owner(spec: &str) -> Result<(u32, u32)> {
    let (u, g) = spec
        .split_once(':')
        .ok_or_else(|| Error::usage(format!("[store] owner `{spec}` must be `user:group`")))?;
    let uid = match u.parse::<u32>() {
        Ok(n) => n,
        Err(_) => {
            let c = CString::new(u)
                .map_err(|_| Error::usage(format!("[store] owner: bad user name `{u}`")))?;
            // SAFETY: getpwnam returns NULL or a pointer to static storage we read at once; we call it
            // from one thread only (the command's).
            let pw = unsafe { libc::getpwnam(c.as_ptr()) };
            if pw.is_null() {
                return Err(Error::usage(format!(
                    "[store] owner: no user `{u}` on this system"
                )));
            }
            unsafe { (*pw).pw_uid }
        }
    };
    let gid = match g.parse::<u32>() {
        Ok(n) => n,
        Err(_) => {
            let c = CString::new(g)
                .map_err(|_| Error::usage(format!("[store] owner: bad group name `{g}`")))?;
            // SAFETY: as above, for getgrnam.
            let gr = unsafe { libc::getgrnam(c.as_ptr()) };
            if gr.is_null() {
                return Err(Error::usage(format!(
                    "[store] owner: no group `{g}` on this system"
                )));
            }
            unsafe { (*gr).gr_gid }
        }
    };
    Ok((uid, gid))
}

struct Doctor<'a> {
    cfg: &'a StoreConfig,
    root: PathBuf,
    owner: (u32, u32),
    fix: bool,
    report: DoctorReport,
}

impl Doctor<'_> {
    fn rel(&self, p: &Path) -> String {
        let r = super::rel_path(&self.root, p);
        if r.is_empty() {
            ".".into()
        } else {
            r
        }
    }

    fn finding(&mut self, p: &Path, kind: &str, detail: String, fixed: Option<String>) {
        let path = self.rel(p);
        self.report.add(Finding {
            path,
            kind: kind.into(),
            detail,
            fixed,
        });
    }

    /// Pass 1: every file and folder's metadata, without following any symlink: folders are
    /// opened one component at a time from the root (never through a link) and every change is
    /// made through an open descriptor, so nothing outside the store is ever changed.
    fn metadata_pass(&mut self, root: &Path) {
        match Dir::open(root) {
            Ok(dir) => self.visit_dir(&dir, root),
            Err(e) => self.finding(root, "unreadable", format!("cannot open: {e}"), None),
        }
    }

    fn visit_dir(&mut self, dir: &Dir, path: &Path) {
        self.report.entries_checked += 1;
        match dir.stat_self() {
            Ok(st) => self.check_owner_mode(path, st, |uid, gid| dir.chown(uid, gid)),
            Err(e) => {
                self.finding(path, "unreadable", format!("cannot stat: {e}"), None);
                return;
            }
        }
        let entries = match dir.entries() {
            Ok(e) => e,
            Err(e) => {
                self.finding(path, "unreadable", format!("cannot list folder: {e}"), None);
                return;
            }
        };
        for (name, st) in entries {
            let p = path.join(&name);
            if st.is_symlink() {
                self.report.entries_checked += 1;
                let problem = super::walk::symlink_problem(&self.root, &p);
                self.finding(&p, "symlink", problem.detail, None);
            } else if st.is_dir() {
                match dir.sub(&name) {
                    Ok(sub) => self.visit_dir(&sub, &p),
                    Err(e) => {
                        self.report.entries_checked += 1;
                        self.finding(&p, "unreadable", format!("cannot open folder: {e}"), None);
                    }
                }
            } else {
                self.report.entries_checked += 1;
                self.visit_file(dir, &name, &p, st);
            }
        }
    }

    fn visit_file(&mut self, dir: &Dir, name: &str, path: &Path, st: Stat) {
        if st.is_file() && is_leftover_name(name) {
            let fixed = if self.fix {
                match dir.unlink(name) {
                    Ok(()) => Some("removed".to_string()),
                    Err(e) => {
                        self.finding(path, "leftover", format!("could not remove it: {e}"), None);
                        return;
                    }
                }
            } else {
                None
            };
            self.finding(
                path,
                "leftover",
                "temporary file of an interrupted write".into(),
                fixed,
            );
            return;
        }
        if !st.is_file() {
            // Sockets, fifos, devices: reported, never changed.
            self.check_owner_mode(path, st, |_, _| {
                Err(std::io::Error::other("not a regular file"))
            });
            return;
        }
        self.check_owner_mode(path, st, |uid, gid| {
            // The file itself, opened without following a link, checked to be the one seen.
            let f = dir.open_file(name)?;
            let now = fstat(&f)?;
            if now.ino != st.ino || now.dev != st.dev || now.nlink > 1 {
                return Err(std::io::Error::other(
                    "it changed while the doctor looked at it",
                ));
            }
            fchown_tolerant(&f, uid, gid)
        });
    }

    /// Owner and mode of one entry; `chown` changes the owner (through a descriptor) with --fix.
    /// A file with more than one hard link is never changed: another name for it may be outside
    /// the store.
    fn check_owner_mode(
        &mut self,
        path: &Path,
        st: Stat,
        chown: impl FnOnce(u32, u32) -> std::io::Result<()>,
    ) {
        let (uid, gid) = (st.uid, st.gid);
        if (uid, gid) != self.owner {
            let detail = format!(
                "owned by {uid}:{gid}, expected {}:{}",
                self.owner.0, self.owner.1
            );
            if self.fix && st.is_file() && st.nlink > 1 {
                self.hard_linked(path, st.nlink);
                self.finding(
                    path,
                    "owner",
                    format!("{detail}; not changed: hard-linked"),
                    None,
                );
            } else if self.fix {
                match chown(self.owner.0, self.owner.1) {
                    Ok(()) => {
                        let done = format!("now owned by {}:{}", self.owner.0, self.owner.1);
                        self.finding(path, "owner", detail, Some(done));
                    }
                    Err(e) => self.finding(
                        path,
                        "owner",
                        format!("{detail}; could not change it: {e}"),
                        None,
                    ),
                }
            } else {
                self.finding(path, "owner", detail, None);
            }
        }
        let mode = st.perm();
        if mode & 0o022 != 0 {
            let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
                (true, true) => "group- and world-writable",
                (true, false) => "group-writable",
                _ => "world-writable",
            };
            self.finding(
                path,
                "mode",
                format!("mode {mode:04o} is {who}; not changed by --fix, check by hand"),
                None,
            );
        }
    }

    /// Reports (once) a file --fix leaves alone because it has several hard links.
    fn hard_linked(&mut self, path: &Path, links: u64) {
        let rel = self.rel(path);
        if self
            .report
            .findings
            .iter()
            .any(|f| f.kind == "hardlink" && f.path == rel)
        {
            return;
        }
        self.finding(
            path,
            "hardlink",
            format!("has {links} hard links: another name for it may be outside the store, so --fix does not change it; check by hand"),
            None,
        );
    }

    /// Pass 2: every resource (or, with `cards`, every card of that address-book root) read
    /// through the walker: unreadable ones, and `getcontentmd5`.
    fn resource_pass(&mut self, progress: &Walked, cards: Option<&Path>) -> Result<()> {
        let check_md5 = self.cfg.kind == StoreKind::CalendarserverFs;
        let md5_prop = xattrs::getcontentmd5();
        let mut bump: BTreeSet<PathBuf> = BTreeSet::new();
        let cfg = self.cfg;
        // Fixes open files and folders from this root, one component at a time, never through a
        // link.
        let base = cards.unwrap_or(&self.root).to_path_buf();
        walk_resources(
            cfg,
            cards,
            progress,
            |_, bytes| {
                if check_md5 {
                    md5_hex(bytes)
                } else {
                    String::new()
                }
            },
            |item| {
                match item {
                    Item::Home(_) => {}
                    // Symlinks were reported by the metadata pass.
                    Item::Problem(p) if p.kind == "symlink" => {}
                    Item::Problem(p) => {
                        let path = self.root.join(&p.path);
                        self.finding(&path, &p.kind, p.detail, None);
                    }
                    Item::Resource(res, md5) => {
                        self.report.resources_checked += 1;
                        if res.xattrs.is_empty() {
                            self.report.resources_without_xattrs += 1;
                        }
                        if !check_md5 {
                            return Ok(());
                        }
                        self.check_md5(&base, &res, &md5, &md5_prop, &mut bump);
                        self.check_match_etags(&base, &res, &md5, &mut bump);
                    }
                }
                Ok(())
            },
        )?;
        self.bump_ctags(&base, bump);
        Ok(())
    }

    /// `getcontentmd5` of one resource against the MD5 of its bytes (`md5`); with `--fix`, set
    /// (its folder noted in `bump`).
    fn check_md5(
        &mut self,
        base: &Path,
        res: &super::Resource,
        md5: &str,
        md5_prop: &str,
        bump: &mut BTreeSet<PathBuf>,
    ) {
        let folder = res.path.parent().map(Path::to_path_buf).unwrap_or_default();
        let Some((kind, detail)) = md5_finding(&res.xattrs, md5_prop, md5) else {
            return;
        };
        let fixed = if self.fix {
            match open_for_fix(base, &res.path) {
                Ok(Ok((dir, f))) => {
                    let prefix =
                        choose_prefix_dir(self.cfg.xattr_prefix.as_deref(), &res.xattrs, &dir);
                    set_md5_attr_file(&f, &res.path, md5, &prefix).map(|()| {
                        bump.insert(folder.clone());
                        Some(format!("getcontentmd5 set to {md5}"))
                    })
                }
                Ok(Err(links)) => {
                    self.hard_linked(&res.path, links);
                    Err(Error::runtime("not changed: hard-linked"))
                }
                Err(e) => Err(e),
            }
        } else {
            Ok(None)
        };
        match fixed {
            Ok(fixed) => self.finding(&res.path, kind, detail, fixed),
            Err(e) => self.finding(
                &res.path,
                kind,
                format!("{detail}; could not fix: {e}"),
                None,
            ),
        }
    }

    /// The ETag list of the schedule-tag compatibility mode must name the current ETag (the
    /// bytes' MD5), or 2.5 refuses every edit with 412; with `--fix`, set.
    fn check_match_etags(
        &mut self,
        base: &Path,
        res: &super::Resource,
        md5: &str,
        bump: &mut BTreeSet<PathBuf>,
    ) {
        let Some(detail) = super::props::stale_match_etags(&res.xattrs, md5) else {
            return;
        };
        let path = res.path.clone();
        if !self.fix {
            self.finding(&path, "match-etags-stale", detail, None);
            return;
        }
        let set = match open_for_fix(base, &res.path) {
            Ok(Ok((_, f))) => set_match_etags_attr_file(&f, &res.path, md5),
            Ok(Err(links)) => {
                self.hard_linked(&path, links);
                Err(Error::runtime("not changed: hard-linked"))
            }
            Err(e) => Err(e),
        };
        match set {
            Ok(()) => {
                bump.insert(res.path.parent().map(Path::to_path_buf).unwrap_or_default());
                self.finding(
                    &path,
                    "match-etags-stale",
                    detail,
                    Some(format!("scheduling-match-etags set to {md5}")),
                );
            }
            Err(e) => self.finding(
                &path,
                "match-etags-stale",
                format!("{detail}; could not fix: {e}"),
                None,
            ),
        }
    }

    /// Clients learn of a new ETag through the collection's ctag: every folder in `bump` gets one.
    fn bump_ctags(&mut self, base: &Path, bump: BTreeSet<PathBuf>) {
        for folder in bump {
            let done = open_confined(base, &folder).and_then(|dir| {
                let prefix = choose_prefix_dir(self.cfg.xattr_prefix.as_deref(), &[], &dir);
                bump_ctag_dir(&dir, &prefix)
            });
            if let Err(e) = done {
                self.finding(
                    &folder,
                    "ctag",
                    format!("could not give the collection a new getctag: {e}"),
                    None,
                );
            }
        }
    }
}

/// The folder `path` (below `base`), opened from `base` one component at a time without following
/// a link.
fn open_confined(base: &Path, path: &Path) -> Result<Dir> {
    let rel = path
        .strip_prefix(base)
        .map_err(|_| Error::runtime(format!("{} is outside {}", path.display(), base.display())))?;
    Dir::open(base)
        .and_then(|root| root.walk(&rel.to_string_lossy()))
        .map_err(|e| Error::io("cannot open", path, e))
}

/// A resource opened for a fix, with its folder: never through a link, and `Ok(Err(links))` for
/// a file with more than one hard link (another name for it may be outside the store: never
/// changed).
fn open_for_fix(base: &Path, file: &Path) -> Result<std::result::Result<(Dir, File), u64>> {
    let folder = file.parent().unwrap_or(base);
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = open_confined(base, folder)?;
    let f = dir
        .open_file(&name)
        .map_err(|e| Error::io("cannot open", file, e))?;
    let st = fstat(&f).map_err(|e| Error::io("cannot stat", file, e))?;
    if st.nlink > 1 {
        return Ok(Err(st.nlink));
    }
    Ok(Ok((dir, f)))
}

/// What is wrong with a resource's `getcontentmd5` given its bytes' MD5, judged on every attribute
/// that holds it (2.x reads the long name, 3.x the short one): `md5-stale` or `md5-missing`.
fn md5_finding(
    attrs: &[super::Xattr],
    md5_prop: &str,
    md5: &str,
) -> Option<(&'static str, String)> {
    let mut any = false;
    for a in xattrs::holding(attrs, md5_prop) {
        any = true;
        match xattrs::text_of(&a.decoded_value()) {
            Some(v) if v.eq_ignore_ascii_case(md5) => {}
            Some(v) => return Some(("md5-stale", format!("getcontentmd5 ({}) says {v}, the bytes' MD5 is {md5} (clients see a stale ETag)", a.name))),
            None => return Some(("md5-stale", format!("getcontentmd5 ({}) is not a readable XML value; the bytes' MD5 is {md5}", a.name))),
        }
    }
    (!any).then(|| {
        (
            "md5-missing",
            format!("no getcontentmd5 attribute; the bytes' MD5 is {md5}"),
        )
    })
}

/// The walk of the resource pass: the store's calendars, or the cards of an address-book root.
fn walk_resources<M, S>(
    cfg: &StoreConfig,
    cards: Option<&Path>,
    progress: &Walked,
    map: M,
    mut sink: S,
) -> Result<()>
where
    M: Fn(&super::Resource, &[u8]) -> String + Sync,
    S: FnMut(Item<String>) -> Result<()>,
{
    let sink = |item: Item<String>| {
        if !matches!(item, Item::Home(_)) {
            progress.bar.inc(1);
        }
        sink(item)
    };
    match cards {
        None => super::walk(cfg, progress.walker, map, sink),
        Some(root) => {
            super::addressbook::walk(root, Default::default(), progress.walker, map, sink)
        }
    }
}

/// Where the resource pass reports: `walker` gets the walker's own count (homes included), `bar`
/// the resources the walk delivers.
struct Walked<'a> {
    walker: &'a dyn crate::progress::Bar,
    bar: &'a dyn Bar,
}

/// What `doctor` is asked to do.
#[derive(Clone, Copy, Debug, Default)]
pub struct DoctorOptions {
    /// Repair what can be repaired (ownership, MD5 attributes, leftovers of interrupted writes).
    pub fix: bool,
}

/// Runs the doctor over a store, its address books included, reporting to `progress`.
pub fn run(
    cfg: &StoreConfig,
    opts: &DoctorOptions,
    progress: &dyn Progress,
) -> Result<DoctorReport> {
    let bar = progress.start("doctor", None);
    let walker = crate::progress::NoBar;
    let r = doctor_with(
        cfg,
        opts.fix,
        &Walked {
            walker: &walker,
            bar: &*bar,
        },
    );
    bar.finish();
    r
}

fn doctor_with(cfg: &StoreConfig, fix: bool, progress: &Walked) -> Result<DoctorReport> {
    super::check_root(cfg)?;
    let root = cfg.path.clone();
    let (owner, owner_source) = match &cfg.owner {
        Some(spec) => (resolve_owner(spec)?, format!("[store] owner = \"{spec}\"")),
        None => {
            let top = match cfg.kind {
                StoreKind::CalendarserverFs => {
                    super::calendars_dir(&root).unwrap_or_else(|| root.clone())
                }
                _ => root.clone(),
            };
            let m = fs::metadata(&top).map_err(|e| Error::io("cannot stat", &top, e))?;
            (
                (m.uid(), m.gid()),
                format!("owner of {} ([store] owner is not set)", top.display()),
            )
        }
    };
    let mut d = Doctor {
        cfg,
        root: root.clone(),
        owner,
        fix,
        report: DoctorReport {
            store: root.display().to_string(),
            expected_owner: format!("{}:{}", owner.0, owner.1),
            owner_source,
            fix,
            ..Default::default()
        },
    };
    d.metadata_pass(&root);
    d.resource_pass(progress, None)?;
    if let Some(ab) = super::addressbook::locate(cfg)? {
        // A separate root (10.6): its own files, owned like its addressbooks/ folder unless
        // [store] owner says otherwise; paths relative to it (addressbooks/...).
        if ab != root {
            if cfg.owner.is_none() {
                let top = ab.join(super::addressbook::DIR);
                let m = fs::metadata(&top).map_err(|e| Error::io("cannot stat", &top, e))?;
                d.owner = (m.uid(), m.gid());
            }
            d.root = ab.clone();
            d.metadata_pass(&ab);
        }
        d.root = ab.clone();
        d.resource_pass(progress, Some(&ab))?;
    }
    d.report
        .findings
        .sort_by(|a, b| a.kind.cmp(&b.kind).then_with(|| a.path.cmp(&b.path)));
    Ok(d.report)
}
