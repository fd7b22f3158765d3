//! Address books on disk: where they are, and the walk over their cards.
//!
//! Mac OS X Server 10.6 runs an Address Book Server beside CalendarServer with its own document
//! root (`/Library/AddressBookServer/Documents`); from CalendarServer 3.x address books share the
//! calendar store's root. Either way the homes are `addressbooks/__uids__/XX/YY/<GUID>/`, each
//! holding address-book collections (`addressbook/`) of `.vcf` cards, with the same extended
//! attribute conventions as calendars (`getcontentmd5` per card, `getctag` per collection).
//!
//! Paths of address-book files are kept relative to the address-book root, so they always begin
//! with `addressbooks/`; [`Roots`] tells which root a relative path belongs to.

use super::walk::{walk_tree, Top, WalkOptions};
use super::{Home, Item, Resource};
use crate::config::{StoreConfig, StoreKind};
use crate::error::{Error, Result};
use crate::finding::Finding;
use crate::progress::{Bar, NoBar};
use crate::vcard::{self, Member};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The folder of address-book homes inside an address-book root.
pub const DIR: &str = "addressbooks";

/// Whether a folder entry's name makes it a card (`*.vcf`, not a dot-name).
pub fn is_card_name(name: &str) -> bool {
    !name.starts_with('.')
        && name.len() > 4
        && name
            .get(name.len() - 4..)
            .is_some_and(|e| e.eq_ignore_ascii_case(".vcf"))
}

/// Whether a path relative to a root lies in the address books.
pub fn is_addressbook_path(rel: &str) -> bool {
    rel == DIR || rel.starts_with("addressbooks/")
}

fn is_real_dir(p: &Path) -> bool {
    fs::symlink_metadata(p).map(|m| m.is_dir()).unwrap_or(false)
}

/// The address-book root of a store, if it has address books: `[store] addressbook_root` (the
/// folder holding `addressbooks/`, or that folder itself), else `[store] path` when
/// `addressbooks/` is in it (3.x). Only CalendarServer file stores have address books.
pub fn locate(cfg: &StoreConfig) -> Result<Option<PathBuf>> {
    let Some(given) = &cfg.addressbook_root else {
        if cfg.kind == StoreKind::CalendarserverFs && is_real_dir(&cfg.path.join(DIR)) {
            return Ok(Some(cfg.path.clone()));
        }
        return Ok(None);
    };
    if cfg.kind != StoreKind::CalendarserverFs {
        return Err(Error::usage(
            "[store] addressbook_root is only read for kind = \"calendarserver-fs\"".to_string(),
        ));
    }
    let inner = given.join(DIR);
    if is_real_dir(&inner) {
        return Ok(Some(given.clone()));
    }
    if let Ok(target) = fs::read_link(&inner) {
        return Err(Error::usage(format!(
            "{} is a symbolic link to {}; symlinks are never followed: give the folder that holds \
             the real addressbooks/ as [store] addressbook_root",
            inner.display(),
            target.display()
        )));
    }
    if given.file_name().is_some_and(|n| n == DIR) && is_real_dir(given) {
        if let Some(parent) = given.parent() {
            return Ok(Some(parent.to_path_buf()));
        }
    }
    if !given.exists() {
        return Err(Error::usage(format!(
            "[store] addressbook_root {} does not exist",
            given.display()
        )));
    }
    Err(Error::usage(format!(
        "[store] addressbook_root {} has no addressbooks/ folder; give the Address Book Server's \
         Documents folder (10.6: /Library/AddressBookServer/Documents)",
        given.display()
    )))
}

/// The roots a plan's relative paths are read against: the calendar store, and the address-book
/// root when there is one (the same folder for a 3.x store).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Roots {
    /// The calendar store's data root (`[store] path`), canonicalised.
    pub store: PathBuf,
    /// The address-book root, canonicalised; None when the store has no address books.
    pub addressbooks: Option<PathBuf>,
}

fn canonical(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
}

impl Roots {
    /// The roots of a configured store (absolute, symlinks of the roots themselves resolved).
    pub fn of(cfg: &StoreConfig) -> Result<Roots> {
        Ok(Roots {
            store: canonical(&cfg.path),
            addressbooks: locate(cfg)?.map(|p| canonical(&p)),
        })
    }

    /// The root `rel` is relative to.
    pub fn root_for(&self, rel: &str) -> &Path {
        match &self.addressbooks {
            Some(ab) if is_addressbook_path(rel) => ab,
            _ => &self.store,
        }
    }

    /// The file a plan's relative path names.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.root_for(rel).join(rel)
    }

    /// Each distinct root once.
    pub fn all(&self) -> Vec<&Path> {
        let mut v = vec![self.store.as_path()];
        if let Some(ab) = &self.addressbooks {
            if *ab != self.store {
                v.push(ab);
            }
        }
        v
    }
}

/// Walks the cards of the address-book root `root` (homes, collections, `.vcf` files) exactly as
/// [`super::walk_with`] walks calendars: in parallel, bounded memory, symlinks reported and never
/// followed. Paths are relative to `root` (`addressbooks/...`).
pub fn walk<T, M, S>(
    root: &Path,
    opts: WalkOptions,
    progress: &dyn Bar,
    map: M,
    sink: S,
) -> Result<()>
where
    T: Send,
    M: Fn(&Resource, &[u8]) -> T + Sync,
    S: FnMut(Item<T>) -> Result<()>,
{
    let dir = root.join(DIR);
    if !is_real_dir(&dir) {
        return Err(Error::usage(format!(
            "address-book root {} has no addressbooks/ folder",
            root.display()
        )));
    }
    walk_tree(
        root,
        Top::Homes {
            dir: Some(dir),
            resource: is_card_name,
        },
        opts,
        progress,
        map,
        sink,
    )
}

/// A card that names members.
#[derive(Clone, Debug)]
pub struct GroupCard {
    /// Full path of the card file.
    pub path: PathBuf,
    /// Relative to the address-book root.
    pub rel_path: String,
    /// SHA-256 of the card's bytes as read (hex).
    pub sha256: String,
    /// The address book (folder) it is in, relative to the root.
    pub collection: String,
    /// The members it names (`X-ADDRESSBOOKSERVER-MEMBER` / `MEMBER` values), in order.
    pub members: Vec<Member>,
    /// Per member: it names a card of the same address book.
    pub is_card: Vec<bool>,
}

impl GroupCard {
    /// The member uids that name cards of the same address book, upper-cased.
    pub fn card_uids(&self) -> HashSet<String> {
        self.members
            .iter()
            .zip(&self.is_card)
            .filter(|(_, c)| **c)
            .filter_map(|(m, _)| m.uid().map(str::to_ascii_uppercase))
            .collect()
    }
}

/// What one walk over an address-book root found.
#[derive(Clone, Debug, Default)]
pub struct Survey {
    /// The address-book root walked.
    pub root: PathBuf,
    /// Address-book homes found.
    pub homes: Vec<Home>,
    /// Files that could not be read or parsed.
    pub problems: Vec<Finding>,
    /// Card files read.
    pub cards: u64,
    /// Bytes of card files read.
    pub bytes: u64,
    /// Folders holding at least one card.
    pub collections: usize,
    /// Cards that name members (group cards).
    pub groups: Vec<GroupCard>,
}

impl Survey {
    /// Members named by all group cards.
    pub fn members(&self) -> u64 {
        self.groups.iter().map(|g| g.members.len() as u64).sum()
    }
}

fn folder_of(rel: &str) -> &str {
    rel.rsplit_once('/').map_or("", |(d, _)| d)
}

/// Walks the address books under `root`: homes, cards (checked to be one vCard each), and the
/// group cards with their members; then tells, for every member, whether it is a card of its
/// address book. Memory grows with homes, collections and group memberships, not with cards:
/// only the address books that hold a group card are read a second time (for their UIDs).
pub fn survey(root: &Path, progress: &dyn Bar) -> Result<Survey> {
    survey_walk(root, progress, &NoBar)
}

/// [`survey`], reporting every card read (or refused) to `bar`.
pub fn survey_reporting(root: &Path, bar: &dyn Bar) -> Result<Survey> {
    survey_walk(root, &NoBar, bar)
}

/// The walk of [`survey`]: `walk_bar` gets the walker's own count (homes included), `bar` the
/// cards the walk delivers.
fn survey_walk(root: &Path, walk_bar: &dyn Bar, bar: &dyn Bar) -> Result<Survey> {
    let mut s = Survey {
        root: root.to_path_buf(),
        ..Default::default()
    };
    let mut folders: HashSet<String> = HashSet::new();
    walk(
        root,
        WalkOptions { xattrs: false },
        walk_bar,
        |_, bytes| vcard::scan(bytes).map(|info| info.members),
        |item| {
            if !matches!(item, Item::Home(_)) {
                bar.inc(1);
            }
            match item {
                Item::Home(h) => s.homes.push(h),
                Item::Problem(p) => s.problems.push(p),
                Item::Resource(res, Err(e)) => {
                    s.problems.push(Finding::malformed(res.rel_path, &e))
                }
                Item::Resource(res, Ok(members)) => {
                    s.cards += 1;
                    s.bytes += res.size;
                    let folder = folder_of(&res.rel_path);
                    if !folders.contains(folder) {
                        folders.insert(folder.to_string());
                    }
                    if !members.is_empty() {
                        s.groups.push(GroupCard {
                            collection: folder.to_string(),
                            is_card: vec![false; members.len()],
                            path: res.path,
                            rel_path: res.rel_path,
                            sha256: res.sha256,
                            members,
                        });
                    }
                }
            }
            Ok(())
        },
    )?;
    s.collections = folders.len();
    mark_card_members(&mut s)?;
    s.homes.sort_by(|a, b| a.rel_path.cmp(&b.rel_path));
    s.groups.sort_by(|a, b| a.rel_path.cmp(&b.rel_path));
    s.problems.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(s)
}

/// Sets [`GroupCard::is_card`]: reads the UIDs of the cards of every address book holding a group.
fn mark_card_members(s: &mut Survey) -> Result<()> {
    let mut wanted: BTreeMap<&str, HashSet<String>> = BTreeMap::new();
    for g in &s.groups {
        let set = wanted.entry(g.collection.as_str()).or_default();
        set.extend(
            g.members
                .iter()
                .filter_map(|m| m.uid().map(str::to_ascii_uppercase)),
        );
    }
    // (address book, uid) of every card a member names, one address book at a time (memory
    // bounded by the largest one). Unreadable or malformed cards were reported by the walk and
    // name nothing; symlinks are never followed.
    let mut found: HashSet<(String, String)> = HashSet::new();
    for (folder, uids) in &wanted {
        let dir = s.root.join(folder);
        let rd = std::fs::read_dir(&dir).map_err(|e| Error::io("cannot list", &dir, e))?;
        let files: Vec<PathBuf> = rd
            .flatten()
            .filter(|e| {
                is_card_name(&e.file_name().to_string_lossy())
                    && e.file_type().is_ok_and(|t| t.is_file())
            })
            .map(|e| e.path())
            .collect();
        let here: Vec<String> = files
            .par_iter()
            .filter_map(|path| {
                use std::io::Read as _;
                use std::os::unix::fs::OpenOptionsExt as _;
                let mut f = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(path)
                    .ok()?;
                let mut bytes = Vec::new();
                f.read_to_end(&mut bytes).ok()?;
                let uid = vcard::scan(&bytes).ok()?.uid?.to_ascii_uppercase();
                uids.contains(&uid).then_some(uid)
            })
            .collect();
        found.extend(here.into_iter().map(|u| (folder.to_string(), u)));
    }
    for g in &mut s.groups {
        for (i, m) in g.members.iter().enumerate() {
            if let Some(uid) = m.uid() {
                g.is_card[i] = found.contains(&(g.collection.clone(), uid.to_ascii_uppercase()));
            }
        }
    }
    Ok(())
}

/// What `scan` lists of the address books.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Inventory {
    /// The address-book root, as configured.
    pub root: String,
    /// Homes per layout (`hashed`, `flat-uids`, `users`).
    pub homes: BTreeMap<String, usize>,
    /// Folders holding at least one card.
    pub collections: usize,
    /// Card files.
    pub cards: u64,
    /// Bytes of card files.
    pub bytes: u64,
    /// Group cards (cards that name members).
    pub groups: u64,
    /// Members named by all group cards.
    pub members: u64,
    /// Members naming cards of their own address book.
    pub card_members: u64,
    /// Members naming something else (a directory GUID, or a card that is gone), by form.
    pub other_members: u64,
}

/// The address-book part of `scan`, with the problems found (paths relative to its root).
pub fn inventory(cfg: &StoreConfig, bar: &dyn Bar) -> Result<Option<(Inventory, Vec<Finding>)>> {
    let Some(root) = locate(cfg)? else {
        return Ok(None);
    };
    let s = survey_reporting(&root, bar)?;
    let mut inv = Inventory {
        root: root.display().to_string(),
        collections: s.collections,
        cards: s.cards,
        bytes: s.bytes,
        groups: s.groups.len() as u64,
        members: s.members(),
        ..Default::default()
    };
    for h in &s.homes {
        let l = serde_json::to_value(h.layout)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        *inv.homes.entry(l).or_default() += 1;
    }
    for g in &s.groups {
        let cards = g.is_card.iter().filter(|c| **c).count() as u64;
        inv.card_members += cards;
        inv.other_members += g.members.len() as u64 - cards;
    }
    Ok(Some((inv, s.problems)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(path: &Path, ab: Option<&Path>) -> StoreConfig {
        StoreConfig {
            kind: StoreKind::CalendarserverFs,
            path: path.to_path_buf(),
            owner: None,
            xattr_prefix: None,
            data_root: None,
            addressbook_root: ab.map(Path::to_path_buf),
            ..Default::default()
        }
    }

    #[test]
    fn card_names() {
        assert!(is_card_name("A.vcf"));
        assert!(is_card_name("b.VCF"));
        assert!(!is_card_name(".vcf"));
        assert!(!is_card_name(".x.vcf"));
        assert!(!is_card_name("x.ics"));
        assert!(is_addressbook_path("addressbooks/__uids__/x"));
        assert!(!is_addressbook_path("addressbooksX/y"));
        assert!(!is_addressbook_path("calendars/__uids__/x"));
    }

    #[test]
    fn locates_the_root_of_both_layouts() {
        let dir = tempfile::tempdir().unwrap();
        let cal = dir.path().join("CalendarServer/Documents");
        let ab = dir.path().join("AddressBookServer/Documents");
        fs::create_dir_all(cal.join("calendars")).unwrap();
        fs::create_dir_all(ab.join("addressbooks")).unwrap();
        // No address books anywhere.
        assert_eq!(locate(&cfg(&cal, None)).unwrap(), None);
        // 10.6: a separate root, given as the Documents folder or as addressbooks/ itself.
        assert_eq!(locate(&cfg(&cal, Some(&ab))).unwrap(), Some(ab.clone()));
        assert_eq!(
            locate(&cfg(&cal, Some(&ab.join("addressbooks")))).unwrap(),
            Some(ab.clone())
        );
        // 3.x: found by itself under the store.
        fs::create_dir_all(cal.join("addressbooks")).unwrap();
        assert_eq!(locate(&cfg(&cal, None)).unwrap(), Some(cal.clone()));
        let e = locate(&cfg(&cal, Some(&dir.path().join("nowhere")))).unwrap_err();
        assert!(e.message.contains("does not exist"), "{}", e.message);
        let e = locate(&cfg(&cal, Some(dir.path()))).unwrap_err();
        assert!(e.message.contains("has no addressbooks/"), "{}", e.message);
        let roots = Roots::of(&cfg(&cal, Some(&ab))).unwrap();
        assert_eq!(
            roots.join("addressbooks/__uids__/x.vcf"),
            ab.canonicalize()
                .unwrap()
                .join("addressbooks/__uids__/x.vcf")
        );
        assert_eq!(
            roots.join("calendars/__uids__/x.ics"),
            cal.canonicalize().unwrap().join("calendars/__uids__/x.ics")
        );
        assert_eq!(roots.all().len(), 2);
    }
}
