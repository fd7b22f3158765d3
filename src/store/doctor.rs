//! `doctor [--fix]`: ownership, permissions, `getcontentmd5` and `scheduling-match-etags`
//! attributes, leftovers of interrupted writes, symlinks and unreadable resources.

use super::write::{
    bump_ctag, choose_prefix, is_leftover_name, md5_hex, set_match_etags_attr, set_md5_attr,
};
use super::{xattrs, Item};
use crate::cli::{progress_bar, Context, DoctorArgs, Outcome};
use crate::config::{StoreConfig, StoreKind};
use crate::error::{Error, ExitStatus, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// How many findings a report keeps in detail (all are counted).
pub const MAX_LISTED: usize = 10_000;

/// One thing the doctor found.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// Relative to the store root.
    pub path: String,
    /// `owner`, `mode`, `md5-stale`, `md5-missing`, `match-etags-stale`, `leftover`, `symlink`,
    /// `unreadable`.
    pub kind: String,
    pub detail: String,
    /// What `--fix` did about it, if anything.
    pub fixed: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct DoctorReport {
    pub store: String,
    /// `uid:gid` every file and folder must have.
    pub expected_owner: String,
    /// Where the expectation came from (`[store] owner`, or the store folder's own owner).
    pub owner_source: String,
    pub fix: bool,
    pub entries_checked: u64,
    pub resources_checked: u64,
    /// Resources with no extended attribute at all (a copy that lost them?).
    pub resources_without_xattrs: u64,
    pub found: BTreeMap<String, u64>,
    pub fixed: BTreeMap<String, u64>,
    /// Problems left after fixing.
    pub remaining: u64,
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

    /// Pass 1: every file and folder's metadata, without following any symlink.
    fn metadata_pass(&mut self, path: &Path) {
        let m = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) => {
                self.finding(path, "unreadable", format!("cannot stat: {e}"), None);
                return;
            }
        };
        self.report.entries_checked += 1;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if m.file_type().is_symlink() {
            let p = super::walk::symlink_problem(&self.root, path);
            self.finding(path, "symlink", p.detail, None);
            return;
        }
        if path != self.root && m.is_file() && is_leftover_name(&name) {
            let fixed = if self.fix {
                match fs::remove_file(path) {
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
        let (uid, gid) = (m.uid(), m.gid());
        if (uid, gid) != self.owner {
            let detail = format!(
                "owned by {uid}:{gid}, expected {}:{}",
                self.owner.0, self.owner.1
            );
            if self.fix {
                match std::os::unix::fs::lchown(path, Some(self.owner.0), Some(self.owner.1)) {
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
        let mode = m.mode() & 0o7777;
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
        if m.is_dir() {
            match fs::read_dir(path) {
                Ok(rd) => {
                    let mut children: Vec<PathBuf> = Vec::new();
                    for e in rd {
                        match e {
                            Ok(e) => children.push(e.path()),
                            Err(e) => {
                                self.finding(
                                    path,
                                    "unreadable",
                                    format!("cannot list folder: {e}"),
                                    None,
                                );
                                break;
                            }
                        }
                    }
                    children.sort();
                    for c in children {
                        self.metadata_pass(&c);
                    }
                }
                Err(e) => {
                    self.finding(path, "unreadable", format!("cannot list folder: {e}"), None)
                }
            }
        }
    }

    /// Pass 2: every resource (or, with `cards`, every card of that address-book root) read
    /// through the walker: unreadable ones, and `getcontentmd5`.
    fn resource_pass(
        &mut self,
        progress: &indicatif::ProgressBar,
        cards: Option<&Path>,
    ) -> Result<()> {
        let check_md5 = self.cfg.kind == StoreKind::CalendarserverFs;
        let md5_prop = xattrs::getcontentmd5();
        let mut bump: BTreeSet<PathBuf> = BTreeSet::new();
        let cfg = self.cfg;
        let prefix_cfg = cfg.xattr_prefix.clone();
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
                        let folder = res.path.parent().map(Path::to_path_buf).unwrap_or_default();
                        if let Some((kind, detail)) = md5_finding(&res.xattrs, &md5_prop, &md5) {
                            let fixed = if self.fix {
                                let prefix = choose_prefix(
                                    prefix_cfg.as_deref(),
                                    &res.xattrs,
                                    Some(&folder),
                                );
                                match set_md5_attr(&res.path, &md5, &prefix) {
                                    Ok(()) => {
                                        bump.insert(folder.clone());
                                        Ok(format!("getcontentmd5 set to {md5}"))
                                    }
                                    Err(e) => Err(e),
                                }
                                .map(Some)
                            } else {
                                Ok(None)
                            };
                            let path = res.path.clone();
                            match fixed {
                                Ok(fixed) => self.finding(&path, kind, detail, fixed),
                                Err(e) => self.finding(
                                    &path,
                                    kind,
                                    format!("{detail}; could not fix: {e}"),
                                    None,
                                ),
                            }
                        }
                        // The ETag list of the schedule-tag compatibility mode must name the
                        // current ETag (the bytes' MD5), or 2.5 refuses every edit with 412.
                        if let Some(detail) = super::props::stale_match_etags(&res.xattrs, &md5) {
                            let path = res.path.clone();
                            if self.fix {
                                match set_match_etags_attr(&res.path, &md5) {
                                    Ok(()) => {
                                        bump.insert(folder);
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
                            } else {
                                self.finding(&path, "match-etags-stale", detail, None);
                            }
                        }
                    }
                }
                Ok(())
            },
        )?;
        // Clients learn of a new ETag through the collection's ctag.
        for folder in bump {
            let prefix = choose_prefix(self.cfg.xattr_prefix.as_deref(), &[], Some(&folder));
            if let Err(e) = bump_ctag(&folder, &prefix) {
                self.finding(
                    &folder,
                    "ctag",
                    format!("could not give the collection a new getctag: {e}"),
                    None,
                );
            }
        }
        Ok(())
    }
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
    progress: &indicatif::ProgressBar,
    map: M,
    sink: S,
) -> Result<()>
where
    M: Fn(&super::Resource, &[u8]) -> String + Sync,
    S: FnMut(Item<String>) -> Result<()>,
{
    match cards {
        None => super::walk(cfg, progress, map, sink),
        Some(root) => super::addressbook::walk(root, Default::default(), progress, map, sink),
    }
}

/// Runs the doctor over a store (`fix`: repair what can be repaired), its address books included.
pub fn doctor(
    cfg: &StoreConfig,
    fix: bool,
    progress: &indicatif::ProgressBar,
) -> Result<DoctorReport> {
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

/// The human summary of a doctor report.
pub fn render(r: &DoctorReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Store {}", r.store);
    let _ = writeln!(
        s,
        "Expected owner {} ({})",
        r.expected_owner, r.owner_source
    );
    let _ = writeln!(
        s,
        "Checked {} files and folders, {} resources",
        r.entries_checked, r.resources_checked
    );
    if r.found.is_empty() {
        let _ = writeln!(s, "No problems found.");
        return s;
    }
    for (kind, n) in &r.found {
        let fixed = r.fixed.get(kind).copied().unwrap_or(0);
        if r.fix {
            let _ = writeln!(s, "  {kind:<12} {n:>8} found {fixed:>8} fixed");
        } else {
            let _ = writeln!(s, "  {kind:<12} {n:>8} found");
        }
    }
    // Up to EXAMPLES findings of each kind; --json lists them all (up to MAX_LISTED).
    const EXAMPLES: usize = 10;
    for kind in r.found.keys() {
        let of_kind: Vec<&Finding> = r.findings.iter().filter(|f| &f.kind == kind).collect();
        let _ = writeln!(s, "{kind}:");
        for f in of_kind.iter().take(EXAMPLES) {
            match &f.fixed {
                Some(what) => {
                    let _ = writeln!(s, "  {}: {} — fixed: {what}", f.path, f.detail);
                }
                None => {
                    let _ = writeln!(s, "  {}: {}", f.path, f.detail);
                }
            }
        }
        let n = r.found[kind];
        if n > EXAMPLES as u64 {
            let _ = writeln!(
                s,
                "  … and {} more (--json lists them)",
                n - EXAMPLES as u64
            );
        }
    }
    if r.resources_checked > 0 && r.resources_without_xattrs == r.resources_checked {
        let _ = writeln!(
            s,
            "Note: no resource has any extended attribute. If this is a copy, it was made without them \
             (cp/rsync/tar without -X/--xattrs): the server's properties (ETags, ctags, resource types) \
             are lost; copy the store again keeping attributes."
        );
    }
    if r.remaining == 0 {
        let _ = writeln!(s, "All problems fixed.");
    } else if r.fix {
        let _ = writeln!(s, "{} problem(s) remain.", r.remaining);
    } else {
        let _ = writeln!(
            s,
            "{} problem(s). `doctor --fix` repairs ownership, MD5 attributes and leftovers.",
            r.remaining
        );
    }
    s
}

pub fn command_doctor(ctx: &Context, args: &DoctorArgs) -> Result<Outcome> {
    let bar = progress_bar(ctx, None, "doctor");
    let report = doctor(&ctx.config.store, args.fix, &bar)?;
    bar.finish_and_clear();
    let status = if report.remaining > 0 {
        ExitStatus::Problems
    } else {
        ExitStatus::Ok
    };
    let json = serde_json::to_value(&report).unwrap_or_default();
    Ok(Outcome {
        status,
        human: render(&report),
        json,
    })
}
