//! Replacing one resource safely, and restoring a saved one.
//!
//! Every write goes to `.<name>.principal-reconciler.tmp` in the same folder (a dot-name: the walker
//! never takes it for a resource, the doctor recognises it as a leftover), is synced, gets the
//! original's owner, group, mode and extended attributes, and is renamed over the original; then the
//! folder is synced. The tool may run as root: nothing it writes stays owned by root.

use super::confined::{fstat, Dir};
use super::{xattrs, Xattr};
use crate::error::{Error, Result};
use md5::Md5;
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Suffix of the temporary files of a write in progress.
pub const TMP_SUFFIX: &str = ".principal-reconciler.tmp";

/// The temporary file a write of `path` uses.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}{TMP_SUFFIX}"))
}

/// The temporary file name a write of the file `name` uses (same folder).
pub fn temp_name(name: &str) -> String {
    format!(".{name}{TMP_SUFFIX}")
}

/// Whether a folder entry name is the leftover of an interrupted write.
pub fn is_leftover_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(TMP_SUFFIX)
}

/// Owner, group, mode and every extended attribute of a file: what a write keeps and a rollback
/// puts back.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileMeta {
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Attribute name and raw value, sorted by name.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl FileMeta {
    /// Snapshot of a regular file (a symlink is refused, never followed).
    pub fn of(path: &Path) -> Result<FileMeta> {
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => {
                    Error::runtime(format!("{} is not a regular file", path.display()))
                }
                _ => Error::io("cannot stat", path, e),
            })?;
        FileMeta::of_file(&f, path)
    }

    /// Snapshot of an open regular file (`shown` names it in messages).
    pub fn of_file(f: &File, shown: &Path) -> Result<FileMeta> {
        let st = fstat(f).map_err(|e| Error::io("cannot stat", shown, e))?;
        if !st.is_file() {
            return Err(Error::runtime(format!(
                "{} is not a regular file",
                shown.display()
            )));
        }
        let mut attrs = xattrs::read_all_fd(f)
            .map_err(|e| Error::io("cannot read extended attributes of", shown, e))?;
        attrs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(FileMeta {
            uid: st.uid,
            gid: st.gid,
            mode: st.perm(),
            xattrs: attrs.into_iter().map(|x| (x.name, x.value)).collect(),
        })
    }

    /// Snapshot of the regular file `name` in a confined folder.
    pub fn of_at(dir: &Dir, name: &str) -> Result<FileMeta> {
        let shown = dir.child(name);
        let f = dir
            .open_file(name)
            .map_err(|e| Error::io("cannot open", &shown, e))?;
        FileMeta::of_file(&f, &shown)
    }

    /// The attributes as [`Xattr`]s.
    pub fn xattr_list(&self) -> Vec<Xattr> {
        self.xattrs
            .iter()
            .map(|(n, v)| Xattr {
                name: n.clone(),
                value: v.clone(),
            })
            .collect()
    }

    /// Sets `property` to `value` in every attribute that holds it (any prefix, long or short
    /// name: 2.x reads the one, 3.x the other), or adds it under `prefix` (long name) when none does.
    fn set_property(&mut self, property: &str, value: &[u8], prefix: &str) {
        let mut found = false;
        for (n, v) in self.xattrs.iter_mut() {
            if xattrs::decode_name(n).map(|(_, p)| p).as_deref() == Some(property) {
                *v = value.to_vec();
                found = true;
            }
        }
        if !found {
            self.xattrs
                .push((xattrs::attr_name(prefix, property), value.to_vec()));
        }
    }
}

/// Why [`write_resource`] did not write.
#[derive(Debug)]
pub enum WriteError {
    /// The resource no longer has the bytes the plan was made from; nothing was written.
    Changed {
        /// The resource's path.
        path: PathBuf,
        /// What the plan expected: the SHA-256 (hex), or another description of the resource.
        expected: String,
        /// What was found instead, in the same terms.
        found: String,
    },
    /// The write failed (the original is untouched unless the message says otherwise).
    Failed(Error),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Changed { path, expected, found } if expected.len() == 64 => write!(
                f,
                "changed since it was planned: {} (sha256 was {expected}, is now {found}); not written — re-run plan",
                path.display()
            ),
            WriteError::Changed { path, expected, found } => write!(
                f,
                "changed since it was planned: {} ({expected} expected, found {found}); not written — re-run plan",
                path.display()
            ),
            WriteError::Failed(e) => write!(f, "{e}"),
        }
    }
}

impl From<WriteError> for Error {
    fn from(e: WriteError) -> Error {
        match e {
            WriteError::Failed(e) => e,
            changed => Error::runtime(changed.to_string()),
        }
    }
}

impl From<Error> for WriteError {
    fn from(e: Error) -> WriteError {
        WriteError::Failed(e)
    }
}

/// Options of a write.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    /// `[store] xattr_prefix`; detected from the resource's (or its folder's) attributes when `None`.
    pub xattr_prefix: Option<String>,
    /// A plain folder of .ics files (`ics-dir`): no CalendarServer properties are added or changed
    /// (no `getcontentmd5`, no `getctag`); the file's own attributes are still kept.
    pub plain_files: bool,
}

/// What a write did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Written {
    /// The resource written.
    pub path: PathBuf,
    /// SHA-256 (hex) of the bytes replaced.
    pub old_sha256: String,
    /// SHA-256 (hex) of the bytes written.
    pub new_sha256: String,
    /// MD5 (hex) of the bytes written, for the `getcontentmd5` property.
    pub new_md5: String,
    /// The collection's new `getctag` value.
    pub ctag: String,
    /// The prefix used for the attributes written.
    pub xattr_prefix: String,
}

fn sha256_reader(mut f: File, shown: &Path) -> Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io("cannot read", shown, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// SHA-256 of the regular file `name` in a confined folder; `None` when there is no such entry.
pub fn sha256_at(dir: &Dir, name: &str) -> Result<Option<String>> {
    match dir.open_file(name) {
        Ok(f) => sha256_reader(f, &dir.child(name)).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("cannot open", &dir.child(name), e)),
    }
}

/// Gives a path (not following a symlink) an owner and group; without the right to give files
/// away (not root), the path keeps its current owner.
pub fn set_owner(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).or_else(|e| {
        if e.raw_os_error() == Some(libc::EPERM) {
            Ok(())
        } else {
            Err(Error::io("cannot set owner of", path, e))
        }
    })
}

/// SHA-256 hex of bytes, lower case (how plans and the journal name contents).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// MD5 hex of bytes, lower case (what `getcontentmd5` holds).
pub fn md5_hex(bytes: &[u8]) -> String {
    hex::encode(Md5::digest(bytes))
}

/// The prefix to write attributes with: configured, else the one the resource or its folder uses,
/// else the platform's.
pub fn choose_prefix(configured: Option<&str>, own: &[Xattr], folder: Option<&Path>) -> String {
    let folder_attrs = folder.and_then(|dir| xattrs::read_all(dir).ok());
    pick_prefix(configured, own, folder_attrs.as_deref())
}

/// [`choose_prefix`] with the folder open.
pub fn choose_prefix_dir(configured: Option<&str>, own: &[Xattr], folder: &Dir) -> String {
    let folder_attrs = folder.xattrs().ok();
    pick_prefix(configured, own, folder_attrs.as_deref())
}

fn pick_prefix(configured: Option<&str>, own: &[Xattr], folder: Option<&[Xattr]>) -> String {
    if let Some(p) = configured {
        return p.to_string();
    }
    if let Some(p) = xattrs::prefix_in(own) {
        return p.to_string();
    }
    if let Some(p) = folder.and_then(xattrs::prefix_in) {
        return p.to_string();
    }
    xattrs::platform_prefix().to_string()
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The folder holding `path` (opened by path) and the file name.
fn open_parent(path: &Path) -> Result<(Arc<Dir>, String)> {
    let folder = parent_of(path);
    let dir = Dir::open(&folder).map_err(|e| Error::io("cannot open folder", &folder, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::runtime(format!("{} names no file", path.display())))?;
    Ok((Arc::new(dir), name))
}

/// Writes `bytes` with `meta` to the temporary file of `name` in `dir`; returns the temporary
/// file's name. The temporary file is removed on any failure.
fn write_temp_at(
    dir: &Dir,
    name: &str,
    bytes: &[u8],
    meta: &FileMeta,
    sync: bool,
) -> Result<String> {
    let tmp = temp_name(name);
    let shown = dir.child(&tmp);
    // A leftover of ours from an interrupted run: ours to remove.
    match dir.unlink(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Error::io(
                "cannot remove the leftover temporary file",
                &shown,
                e,
            ))
        }
    }
    let result = (|| -> Result<()> {
        let mut f = dir
            .create_new(&tmp, 0o600)
            .map_err(|e| Error::io("cannot create", &shown, e))?;
        f.write_all(bytes)
            .map_err(|e| Error::io("cannot write", &shown, e))?;
        use xattr::FileExt;
        for (name, value) in &meta.xattrs {
            f.set_xattr(name, value).map_err(|e| {
                Error::io(
                    &format!("cannot set extended attribute {name} on"),
                    &shown,
                    e,
                )
            })?;
        }
        std::os::unix::fs::fchown(&f, Some(meta.uid), Some(meta.gid)).map_err(|e| {
            Error::io(
                &format!("cannot give {}:{} ownership of", meta.uid, meta.gid),
                &shown,
                e,
            )
        })?;
        // After chown (which clears set-id bits).
        f.set_permissions(fs::Permissions::from_mode(meta.mode))
            .map_err(|e| Error::io("cannot set the mode of", &shown, e))?;
        if sync {
            f.sync_all()
                .map_err(|e| Error::io("cannot sync", &shown, e))?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = dir.unlink(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

/// Puts `bytes` and `meta` at `path` atomically (temp file, sync, rename, folder sync), whether or
/// not `path` exists now. Used by rollback. When `path` is a calendar resource or a card (`*.ics`,
/// `*.vcf`, not a dot-name), its collection also gets a new `getctag`, so clients that synced the replaced bytes
/// fetch the restored ones (the restored `getcontentmd5` is the one saved with the bytes).
pub fn restore(path: &Path, bytes: &[u8], meta: &FileMeta) -> Result<()> {
    let (dir, name) = open_parent(path)?;
    restore_at(&dir, &name, bytes, meta)
}

/// [`restore`] of the file `name` in a confined folder.
pub fn restore_at(dir: &Arc<Dir>, name: &str, bytes: &[u8], meta: &FileMeta) -> Result<()> {
    let current = sha256_at(dir, name)?;
    let prepared = prepare_restore(dir.clone(), name, current, bytes, meta, true)?;
    prepared.commit()?;
    dir.sync()
        .map_err(|e| Error::io("cannot sync folder", dir.path(), e))?;
    if renews_ctag(dir, name) {
        let prefix = choose_prefix_dir(None, &meta.xattr_list(), dir);
        bump_ctag_dir(dir, &prefix)
            .map_err(|e| e.context(format!("{} was restored but", dir.child(name).display())))?;
    }
    Ok(())
}

/// Whether putting back `name` must give its folder a new `getctag`: a calendar resource or a
/// card in a CalendarServer collection (one that has a ctag), so clients re-sync.
pub fn renews_ctag(dir: &Dir, name: &str) -> bool {
    (super::is_resource_name(name) || super::addressbook::is_card_name(name))
        && dir
            .xattrs()
            .map(|a| {
                a.iter()
                    .any(|x| x.property().as_deref() == Some(xattrs::getctag().as_str()))
            })
            .unwrap_or(false)
}

/// First half of a restore: the saved bytes and metadata in the temporary file beside `name`.
/// `current` is what the file holds now (`None`: absent); the commit checks it is still so.
pub fn prepare_restore(
    dir: Arc<Dir>,
    name: &str,
    current: Option<String>,
    bytes: &[u8],
    meta: &FileMeta,
    sync: bool,
) -> Result<PreparedWrite> {
    if let Ok(st) = dir.stat(name) {
        if !st.is_file() {
            return Err(Error::runtime(format!(
                "{} is no longer a regular file; not replaced",
                dir.child(name).display()
            )));
        }
    }
    let tmp = write_temp_at(&dir, name, bytes, meta, sync)?;
    Ok(PreparedWrite {
        path: dir.child(name),
        folder: dir.path().to_path_buf(),
        prefix: choose_prefix_dir(None, &meta.xattr_list(), &dir),
        name: name.to_string(),
        tmp,
        expected_sha256: current.unwrap_or_default(),
        new_sha256: sha256_hex(bytes),
        new_md5: md5_hex(bytes),
        dir,
    })
}

static CTAG_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A new, unique `getctag` value.
pub fn new_ctag() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}.{:09}-{}-{}",
        now.as_secs(),
        now.subsec_nanos(),
        std::process::id(),
        CTAG_COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Gives a collection folder a new `getctag`; returns the value.
pub fn bump_ctag(collection: &Path, prefix: &str) -> Result<String> {
    let dir = Dir::open(collection).map_err(|e| Error::io("cannot open", collection, e))?;
    bump_ctag_dir(&dir, prefix)
}

/// [`bump_ctag`] of an open (confined) folder.
pub fn bump_ctag_dir(collection: &Dir, prefix: &str) -> Result<String> {
    let ctag = new_ctag();
    let prop = xattrs::getctag();
    let value = xattrs::text_property_value(&prop, &ctag);
    let shown = collection.path();
    // Replace it under every name it already has (any prefix, long or short), else add it under
    // `prefix`.
    let mut names: Vec<String> = collection
        .xattrs()
        .map_err(|e| Error::io("cannot read extended attributes of", shown, e))?
        .into_iter()
        .filter(|a| a.property().as_deref() == Some(prop.as_str()))
        .map(|a| a.name)
        .collect();
    if names.is_empty() {
        names.push(xattrs::attr_name(prefix, &prop));
    }
    for name in names {
        collection
            .set_xattr(&name, &value)
            .map_err(|e| Error::io(&format!("cannot set {name} on"), shown, e))?;
    }
    // Make the new ctag as durable as the rename before it.
    collection
        .sync()
        .map_err(|e| Error::io("cannot sync folder", shown, e))?;
    Ok(ctag)
}

fn open_nofollow(path: &Path) -> Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::io("cannot open", path, e))
}

/// Sets a resource's `getcontentmd5` attribute to `md5` (under every name it already has, else
/// under `prefix`).
pub fn set_md5_attr(path: &Path, md5: &str, prefix: &str) -> Result<()> {
    set_md5_attr_file(&open_nofollow(path)?, path, md5, prefix)
}

/// [`set_md5_attr`] on an open file (`shown` names it in messages).
pub fn set_md5_attr_file(f: &File, shown: &Path, md5: &str, prefix: &str) -> Result<()> {
    let prop = xattrs::getcontentmd5();
    set_attrs_file(
        f,
        shown,
        &prop,
        &xattrs::text_property_value(&prop, md5),
        prefix,
    )
}

/// Sets `property` to `value` on an open file in every attribute that holds it, else under
/// `prefix`.
fn set_attrs_file(
    f: &File,
    shown: &Path,
    property: &str,
    value: &[u8],
    prefix: &str,
) -> Result<()> {
    use xattr::FileExt;
    let mut names: Vec<String> = xattrs::read_all_fd(f)
        .map_err(|e| Error::io("cannot read extended attributes of", shown, e))?
        .into_iter()
        .filter(|a| a.property().as_deref() == Some(property))
        .map(|a| a.name)
        .collect();
    if names.is_empty() {
        names.push(xattrs::attr_name(prefix, property));
    }
    for name in names {
        f.set_xattr(&name, value)
            .map_err(|e| Error::io(&format!("cannot set {name} on"), shown, e))?;
    }
    Ok(())
}

/// Gives a resource's `scheduling-match-etags` (when it has one) the single entry `etag`.
pub fn set_match_etags_attr(path: &Path, etag: &str) -> Result<()> {
    set_match_etags_attr_file(&open_nofollow(path)?, path, etag)
}

/// [`set_match_etags_attr`] on an open file (`shown` names it in messages).
pub fn set_match_etags_attr_file(f: &File, shown: &Path, etag: &str) -> Result<()> {
    use xattr::FileExt;
    let mut attrs: Vec<(String, Vec<u8>)> = xattrs::read_all_fd(f)
        .map_err(|e| Error::io("cannot read extended attributes of", shown, e))?
        .into_iter()
        .map(|a| (a.name, a.value))
        .collect();
    let before = attrs.clone();
    super::props::refresh_match_etags(&mut attrs, etag);
    for ((name, new), (_, old)) in attrs.iter().zip(&before) {
        if new != old {
            f.set_xattr(name, new)
                .map_err(|e| Error::io(&format!("cannot set {name} on"), shown, e))?;
        }
    }
    Ok(())
}

/// Replaces one resource with `new_bytes` if it still has `expected_sha256`; keeps owner, group,
/// mode and every attribute, writes the new `getcontentmd5` and `scheduling-match-etags` (see
/// [`super::props`]), and gives the collection a new `getctag`. `scheduling-object-resource` and
/// `schedule-tag` are kept. The `.db.sqlite` index is left as it is.
pub fn write_resource(
    path: &Path,
    expected_sha256: &str,
    new_bytes: &[u8],
    opts: &WriteOptions,
) -> std::result::Result<Written, WriteError> {
    write_resource_with(path, expected_sha256, new_bytes, opts, &[])
}

/// [`write_resource`] that also makes the planned attribute `edits` (a resource may have only
/// those: its bytes stay). An attribute that no longer holds its planned value is a
/// [`WriteError::Changed`].
pub fn write_resource_with(
    path: &Path,
    expected_sha256: &str,
    new_bytes: &[u8],
    opts: &WriteOptions,
    edits: &[super::props::AttrEdit],
) -> std::result::Result<Written, WriteError> {
    let (dir, name) = open_parent(path)?;
    write_resource_at(dir, &name, expected_sha256, new_bytes, opts, edits)
}

/// [`write_resource_with`] of the file `name` in a confined folder.
pub fn write_resource_at(
    dir: Arc<Dir>,
    name: &str,
    expected_sha256: &str,
    new_bytes: &[u8],
    opts: &WriteOptions,
    edits: &[super::props::AttrEdit],
) -> std::result::Result<Written, WriteError> {
    let found = current_sha(&dir, name)?;
    if !found.eq_ignore_ascii_case(expected_sha256) {
        return Err(WriteError::Changed {
            path: dir.child(name),
            expected: expected_sha256.to_string(),
            found,
        });
    }
    let prepared = prepare_write_at(dir.clone(), name, &found, new_bytes, opts, edits, true)?;
    let prefix = prepared.prefix.clone();
    let mut written = prepared.commit()?;
    dir.sync()
        .map_err(|e| Error::io("cannot sync folder", dir.path(), e))?;
    if !opts.plain_files {
        written.ctag = bump_ctag_dir(&dir, &prefix)
            .map_err(|e| e.context(format!("{} was written but", dir.child(name).display())))?;
    }
    Ok(written)
}

/// The hash of an existing resource (its absence is an error).
fn current_sha(dir: &Dir, name: &str) -> Result<String> {
    sha256_at(dir, name)?.ok_or_else(|| {
        Error::io(
            "cannot open",
            &dir.child(name),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        )
    })
}

/// A write whose temporary file is in place, not yet renamed over the original.
#[derive(Debug)]
pub struct PreparedWrite {
    /// The resource the temporary file will replace.
    pub path: PathBuf,
    /// The folder (collection) holding it.
    pub folder: PathBuf,
    /// The extended attribute prefix to write with (`user.` or `WebDAV:`).
    pub prefix: String,
    dir: Arc<Dir>,
    name: String,
    tmp: String,
    /// What the file must still hold at the rename (empty: it must not exist).
    expected_sha256: String,
    new_sha256: String,
    new_md5: String,
}

/// First half of a write: checks the resource still has `expected_sha256` and writes the new
/// bytes with the original's owner, mode and attributes (new `getcontentmd5` and
/// `scheduling-match-etags` when the bytes change) to the temporary file. With `sync` false the
/// caller makes the temporary files durable in one go ([`sync_filesystem`]) before committing them.
pub fn prepare_write(
    path: &Path,
    expected_sha256: &str,
    new_bytes: &[u8],
    opts: &WriteOptions,
    sync: bool,
) -> std::result::Result<PreparedWrite, WriteError> {
    let (dir, name) = open_parent(path)?;
    let found = current_sha(&dir, &name)?;
    if !found.eq_ignore_ascii_case(expected_sha256) {
        return Err(WriteError::Changed {
            path: path.to_path_buf(),
            expected: expected_sha256.to_string(),
            found,
        });
    }
    prepare_write_at(dir, &name, &found, new_bytes, opts, &[], sync)
}

/// [`prepare_write`] for a caller that has just read the resource and checked its hash itself
/// (the commit still takes its last look before the rename).
pub fn prepare_write_checked(
    path: &Path,
    checked_sha256: &str,
    new_bytes: &[u8],
    opts: &WriteOptions,
    sync: bool,
) -> std::result::Result<PreparedWrite, WriteError> {
    let (dir, name) = open_parent(path)?;
    prepare_write_at(dir, &name, checked_sha256, new_bytes, opts, &[], sync)
}

/// [`prepare_write_checked`] with the planned attribute `edits`.
pub fn prepare_write_with(
    path: &Path,
    checked_sha256: &str,
    new_bytes: &[u8],
    opts: &WriteOptions,
    edits: &[super::props::AttrEdit],
    sync: bool,
) -> std::result::Result<PreparedWrite, WriteError> {
    let (dir, name) = open_parent(path)?;
    prepare_write_at(dir, &name, checked_sha256, new_bytes, opts, edits, sync)
}

/// [`prepare_write_with`] of the file `name` in a confined folder.
pub fn prepare_write_at(
    dir: Arc<Dir>,
    name: &str,
    checked_sha256: &str,
    new_bytes: &[u8],
    opts: &WriteOptions,
    edits: &[super::props::AttrEdit],
    sync: bool,
) -> std::result::Result<PreparedWrite, WriteError> {
    let mut meta = FileMeta::of_at(&dir, name)?;
    if let Err(which) = super::props::apply_edits(&mut meta.xattrs, edits) {
        return Err(WriteError::Changed {
            path: dir.child(name),
            expected: "its planned attributes".to_string(),
            found: which,
        });
    }
    let prefix = choose_prefix_dir(opts.xattr_prefix.as_deref(), &meta.xattr_list(), &dir);
    let md5 = md5_hex(new_bytes);
    let new_sha256 = hex::encode(Sha256::digest(new_bytes));
    // The ETag follows the bytes: getcontentmd5 (every name it has) and the ETag list. A resource
    // whose only change is an attribute keeps both as they are.
    if !opts.plain_files && !new_sha256.eq_ignore_ascii_case(checked_sha256) {
        let md5_prop = xattrs::getcontentmd5();
        meta.set_property(
            &md5_prop,
            &xattrs::text_property_value(&md5_prop, &md5),
            &prefix,
        );
        super::props::refresh_match_etags(&mut meta.xattrs, &md5);
    }
    let tmp = write_temp_at(&dir, name, new_bytes, &meta, sync)?;
    Ok(PreparedWrite {
        path: dir.child(name),
        folder: dir.path().to_path_buf(),
        prefix,
        name: name.to_string(),
        tmp,
        expected_sha256: checked_sha256.to_string(),
        new_sha256,
        new_md5: md5,
        dir,
    })
}

impl PreparedWrite {
    /// The folder the write happens in.
    pub fn dir(&self) -> &Arc<Dir> {
        &self.dir
    }

    /// Second half: a last look (a change made meanwhile wins), then the rename. The caller
    /// syncs the folder and gives the collection a new ctag.
    pub fn commit(self) -> std::result::Result<Written, WriteError> {
        let again = match sha256_at(&self.dir, &self.name) {
            Ok(s) => s.unwrap_or_default(),
            Err(e) => {
                let _ = self.dir.unlink(&self.tmp);
                return Err(e.into());
            }
        };
        if !again.eq_ignore_ascii_case(&self.expected_sha256) {
            let _ = self.dir.unlink(&self.tmp);
            return Err(WriteError::Changed {
                path: self.path.clone(),
                expected: self.expected_sha256.clone(),
                found: again,
            });
        }
        if let Err(e) = self.dir.rename(&self.tmp, &self.dir, &self.name) {
            let _ = self.dir.unlink(&self.tmp);
            return Err(Error::io("cannot rename the temporary file over", &self.path, e).into());
        }
        Ok(Written {
            path: self.path,
            old_sha256: again,
            new_sha256: self.new_sha256,
            new_md5: self.new_md5,
            ctag: String::new(),
            xattr_prefix: self.prefix,
        })
    }

    /// Gives up a prepared write, removing its temporary file.
    pub fn abandon(self) {
        let _ = self.dir.unlink(&self.tmp);
    }
}

/// Makes everything written to the file system holding `path` durable (`syncfs`): one call for a
/// whole batch of writes instead of one `fsync` each.
pub fn sync_filesystem(path: &Path) -> Result<()> {
    let f = File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
    use std::os::unix::io::AsRawFd;
    // SAFETY: a valid open file descriptor for the duration of the call.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(Error::io(
            "cannot sync the file system of",
            path,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}
