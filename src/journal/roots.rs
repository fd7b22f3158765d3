//! The roots of a run (the calendar store and the address-book root), opened for confined access.

use crate::error::{Error, Result};
use crate::store::addressbook::{is_addressbook_path, Roots};
use crate::store::confined::{Dir, DirCache};
use crate::store::write::sync_filesystem;
use std::path::Path;
use std::sync::Arc;

/// The roots of a run opened for confined access: the calendar store and, when there is one,
/// the address-book root (paths beginning with `addressbooks/` are relative to it).
pub(super) struct RootDirs {
    pub(super) roots: Roots,
    pub(super) store: Dir,
    pub(super) addressbooks: Option<Dir>,
}

impl RootDirs {
    pub(super) fn open(roots: Roots) -> Result<RootDirs> {
        let open = |p: &Path| Dir::open(p).map_err(|e| Error::io("cannot open the store", p, e));
        let store = open(&roots.store)?;
        let addressbooks = match &roots.addressbooks {
            Some(p) => Some(open(p)?),
            None => None,
        };
        Ok(RootDirs {
            roots,
            store,
            addressbooks,
        })
    }

    /// The root `rel` is relative to (as [`Roots::root_for`]).
    pub(super) fn for_rel(&self, rel: &str) -> &Dir {
        match &self.addressbooks {
            Some(ab) if is_addressbook_path(rel) => ab,
            _ => &self.store,
        }
    }

    /// Makes everything written under every root durable.
    pub(super) fn sync(&self) -> Result<()> {
        for root in self.roots.all() {
            sync_filesystem(root)?;
        }
        Ok(())
    }
}

/// One batch's open folders under each root.
pub(super) struct Caches {
    pub(super) store: DirCache,
    pub(super) addressbooks: Option<DirCache>,
}

impl Caches {
    pub(super) fn new(dirs: &RootDirs) -> Result<Caches> {
        let cache = |d: &Dir| DirCache::new(d).map_err(|e| Error::io("cannot open", d.path(), e));
        Ok(Caches {
            store: cache(&dirs.store)?,
            addressbooks: match &dirs.addressbooks {
                Some(d) => Some(cache(d)?),
                None => None,
            },
        })
    }

    pub(super) fn parent<'a>(&self, rel: &'a str) -> std::io::Result<(Arc<Dir>, &'a str)> {
        match &self.addressbooks {
            Some(ab) if is_addressbook_path(rel) => ab.parent(rel),
            _ => self.store.parent(rel),
        }
    }
}
