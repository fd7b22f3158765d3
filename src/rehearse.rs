//! Rehearsals: a copy of the store (owners, modes, extended attributes kept) to migrate instead of
//! the real one, with the state and reports of the rehearsal beside it.

use crate::config::Config;
use crate::error::{Error, Result};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Marker file that says a folder holds a rehearsal (and may be replaced by the next one).
pub const MARKER: &str = ".principal-reconciler-rehearsal";

/// Prepares `dir` for a rehearsal: copies the configured store to `dir/store` (the delegate
/// databases to `dir/Data`, a separate address-book root to `dir/AddressBook`) and points the
/// configuration's store, address-book root, data root, state and report folders into `dir`. A
/// previous rehearsal in `dir` is replaced; any other non-empty folder is refused.
pub fn prepare(cfg: &mut Config, dir: &Path) -> Result<PathBuf> {
    if cfg.store.kind == crate::config::StoreKind::CalendarserverPg {
        return crate::db::rehearse::prepare(cfg, dir);
    }
    if dir.exists() {
        let non_empty = std::fs::read_dir(dir)
            .map_err(|e| Error::io("cannot read rehearsal folder", dir, e))?
            .next()
            .is_some();
        if non_empty && !dir.join(MARKER).exists() {
            return Err(Error::usage(format!(
                "rehearsal folder {} is not empty and holds no earlier rehearsal; give an empty or new folder",
                dir.display()
            )));
        }
        for sub in ["store", "state", "reports", "Data", "AddressBook"] {
            let p = dir.join(sub);
            if p.exists() {
                std::fs::remove_dir_all(&p)
                    .map_err(|e| Error::io("cannot clear old rehearsal", &p, e))?;
            }
        }
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io("cannot create rehearsal folder", dir, e))?;
    std::fs::write(
        dir.join(MARKER),
        "This folder holds a principal-reconciler rehearsal; the next rehearsal here replaces it.\n",
    )
    .map_err(|e| Error::io("cannot write", &dir.join(MARKER), e))?;
    let copy = dir.join("store");
    // The delegate and auto-accept databases are rehearsed on copies too: a rehearsal must never
    // write to the real server's files.
    let databases = cfg.principal_databases();
    let addressbooks = crate::store::addressbook::Roots::of(&cfg.store)?;
    copy_tree(&cfg.store.path, &copy)?;
    cfg.store.path = copy.clone();
    // Address books under the store (3.x) came with it; a separate root (10.6) is copied too.
    cfg.store.addressbook_root = None;
    if let Some(ab) = addressbooks
        .addressbooks
        .filter(|ab| *ab != addressbooks.store)
    {
        let ab_copy = dir.join("AddressBook");
        copy_tree(&ab, &ab_copy)?;
        cfg.store.addressbook_root = Some(ab_copy);
    }
    let data = dir.join("Data");
    std::fs::create_dir_all(&data).map_err(|e| Error::io("cannot create", &data, e))?;
    for db in databases {
        let name = db.file_name().map(PathBuf::from).unwrap_or_default();
        let meta = std::fs::symlink_metadata(&db).map_err(|e| Error::io("cannot read", &db, e))?;
        copy_entry(&db, &data.join(name), &meta)?;
    }
    cfg.store.data_root = Some(data);
    cfg.state.path = dir.join("state");
    cfg.report.dir = dir.join("reports");
    Ok(copy)
}

/// Copies a tree: files, folders and symlinks (as links), with owner, group, mode, modification
/// time and every extended attribute.
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let meta =
        std::fs::symlink_metadata(from).map_err(|e| Error::io("cannot read store", from, e))?;
    if !meta.is_dir() {
        return Err(Error::usage(format!(
            "store path {} is not a folder",
            from.display()
        )));
    }
    copy_entry(from, to, &meta)
}

fn copy_entry(from: &Path, to: &Path, meta: &std::fs::Metadata) -> Result<()> {
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target =
            std::fs::read_link(from).map_err(|e| Error::io("cannot read link", from, e))?;
        std::os::unix::fs::symlink(&target, to)
            .map_err(|e| Error::io("cannot create link", to, e))?;
        crate::store::write::set_owner(to, meta.uid(), meta.gid())?;
        return Ok(());
    }
    if ft.is_dir() {
        std::fs::create_dir(to).map_err(|e| Error::io("cannot create folder", to, e))?;
        let mut entries: Vec<_> = std::fs::read_dir(from)
            .map_err(|e| Error::io("cannot read folder", from, e))?
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error::io("cannot read folder", from, e))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let m = std::fs::symlink_metadata(e.path())
                .map_err(|err| Error::io("cannot read", &e.path(), err))?;
            copy_entry(&e.path(), &to.join(e.file_name()), &m)?;
        }
    } else if ft.is_file() {
        std::fs::copy(from, to).map_err(|e| Error::io("cannot copy", from, e))?;
    } else {
        return Ok(()); // sockets, fifos: not part of a calendar store
    }
    copy_xattrs(from, to)?;
    crate::store::write::set_owner(to, meta.uid(), meta.gid())?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(|e| Error::io("cannot set mode of", to, e))?;
    let mtime = std::time::UNIX_EPOCH
        + std::time::Duration::new(meta.mtime() as u64, meta.mtime_nsec() as u32);
    if let Ok(f) = std::fs::File::options().read(true).open(to) {
        let _ = f.set_modified(mtime);
    }
    Ok(())
}

fn copy_xattrs(from: &Path, to: &Path) -> Result<()> {
    let names = match xattr::list(from) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(()),
        Err(e) => return Err(Error::io("cannot list extended attributes of", from, e)),
    };
    for name in names {
        if let Some(value) =
            xattr::get(from, &name).map_err(|e| Error::io("cannot read attribute of", from, e))?
        {
            xattr::set(to, &name, &value).map_err(|e| {
                Error::io(
                    &format!("cannot copy attribute {} to", name.to_string_lossy()),
                    to,
                    e,
                )
            })?;
        }
    }
    Ok(())
}

/// Writes `dir/principal-reconciler.toml`: a configuration for the rehearsal in `dir` (its store
/// copy, database copies, state and reports), so that `verify`, `doctor`, `report`, `rollback`
/// and every other command can be run on it. The current directory is frozen as
/// `dir/directory.ldif` and provisioning writes only into `dir` (a dsimport file, a copy of the
/// augments file): nothing run with this file reaches the real server or directory. Returns its
/// path.
pub fn write_config(
    cfg: &Config,
    dir: &Path,
    current: &crate::directory::Directory,
) -> Result<PathBuf> {
    let mut r = cfg.clone();
    let ldif = dir.join("directory.ldif");
    let mapping = crate::directory::presets::Schema::from_config(&cfg.directory);
    crate::directory::write_snapshot(&ldif, current, &mapping, cfg.directory.base.as_deref())?;
    r.directory.url = None;
    r.directory.ldif = Some(ldif);
    r.directory.bind_dn = None;
    r.directory.password_file = None;
    r.directory.starttls = false;
    r.directory.tls_ca_file = None;
    if let Some(aug) = &cfg.provision.augments_file {
        let copy = dir.join("augments.xml");
        if aug.exists() {
            std::fs::copy(aug, &copy).map_err(|e| Error::io("cannot copy", aug, e))?;
        }
        r.provision.augments_file = Some(copy);
    }
    r.provision.output = Some(dir.join("provision.dsimport.txt"));
    // Relative paths were read from the working folder: the file in `dir` names them whole.
    let whole = |p: &mut PathBuf| {
        if let Ok(a) = std::path::absolute(&*p) {
            *p = a;
        }
    };
    for p in r.old_directory.files.iter_mut() {
        whole(p);
    }
    for p in [
        r.directory.ldif.as_mut(),
        Some(&mut r.store.path),
        r.store.data_root.as_mut(),
        r.store.addressbook_root.as_mut(),
        r.rewrite.mapping_file.as_mut(),
        Some(&mut r.state.path),
        Some(&mut r.report.dir),
        r.provision.augments_file.as_mut(),
        r.provision.output.as_mut(),
    ]
    .into_iter()
    .flatten()
    {
        whole(p);
    }
    let body = toml::to_string_pretty(&r)
        .map_err(|e| Error::runtime(format!("cannot write the rehearsal configuration: {e}")))?;
    let text = format!(
        "# The rehearsal in this folder, as a configuration: run any command on it with\n#   principal-reconciler --config {} COMMAND\n# It names the copy of the store, its state and reports, and a snapshot of the directory\n# (directory.ldif); provisioning writes only into this folder. Written by the rehearsal; the\n# next rehearsal here replaces it. Made from {}.\n\n{body}",
        std::path::absolute(dir.join(CONFIG_FILE)).unwrap_or_else(|_| dir.join(CONFIG_FILE)).display(),
        std::path::absolute(&cfg.source).unwrap_or_else(|_| cfg.source.clone()).display()
    );
    let path = dir.join(CONFIG_FILE);
    crate::fsutil::write_atomic(&path, text.as_bytes())?;
    Ok(path)
}

/// The configuration file a rehearsal writes into its folder.
pub const CONFIG_FILE: &str = "principal-reconciler.toml";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_modes_links_and_attributes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("a/b")).unwrap();
        std::fs::write(src.join("a/b/x.ics"), b"BEGIN:VCALENDAR\r\n").unwrap();
        std::fs::set_permissions(
            src.join("a/b/x.ics"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("a/link.ics")).unwrap();
        let has_xattr = xattr::set(src.join("a/b/x.ics"), "user.test", b"v").is_ok();
        let dst = dir.path().join("dst");
        copy_tree(&src, &dst).unwrap();
        assert_eq!(
            std::fs::read(dst.join("a/b/x.ics")).unwrap(),
            b"BEGIN:VCALENDAR\r\n"
        );
        let m = std::fs::metadata(dst.join("a/b/x.ics")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o640);
        assert_eq!(
            std::fs::read_link(dst.join("a/link.ics")).unwrap(),
            Path::new("/etc/passwd")
        );
        if has_xattr {
            assert_eq!(
                xattr::get(dst.join("a/b/x.ics"), "user.test")
                    .unwrap()
                    .unwrap(),
                b"v"
            );
        } else {
            eprintln!("NOTE: this file system has no user.* extended attributes; attribute copy not tested");
        }
    }
}
