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
use super::{Item, Resource};
use crate::config::{StoreConfig, StoreKind};
use crate::error::{Error, Result};
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
    pub store: PathBuf,
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
    progress: &indicatif::ProgressBar,
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
