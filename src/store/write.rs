//! Replacing one resource safely, and restoring a saved one.
//!
//! Every write goes to `.<name>.principal-reconciler.tmp` in the same folder (a dot-name: the walker
//! never takes it for a resource, the doctor recognises it as a leftover), is synced, gets the
//! original's owner, group, mode and extended attributes, and is renamed over the original; then the
//! folder is synced. The tool may run as root: nothing it writes stays owned by root.

use super::{xattrs, Xattr};
use crate::error::{Error, Result};
use md5::Md5;
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

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

/// Whether a folder entry name is the leftover of an interrupted write.
pub fn is_leftover_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(TMP_SUFFIX)
}

/// Owner, group, mode and every extended attribute of a file: what a write keeps and a rollback
/// puts back.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileMeta {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Attribute name and raw value, sorted by name.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl FileMeta {
    /// Snapshot of a regular file (a symlink is refused, never followed).
    pub fn of(path: &Path) -> Result<FileMeta> {
        let m = fs::symlink_metadata(path).map_err(|e| Error::io("cannot stat", path, e))?;
        if !m.is_file() {
            return Err(Error::runtime(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        let mut attrs = xattrs::read_all(path)
            .map_err(|e| Error::io("cannot read extended attributes of", path, e))?;
        attrs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(FileMeta {
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode() & 0o7777,
            xattrs: attrs.into_iter().map(|x| (x.name, x.value)).collect(),
        })
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
        path: PathBuf,
        expected: String,
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
    pub path: PathBuf,
    pub old_sha256: String,
    pub new_sha256: String,
    pub new_md5: String,
    /// The collection's new `getctag` value.
    pub ctag: String,
    /// The prefix used for the attributes written.
    pub xattr_prefix: String,
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::io("cannot open", path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io("cannot read", path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
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
    if let Some(p) = configured {
        return p.to_string();
    }
    if let Some(p) = xattrs::prefix_in(own) {
        return p.to_string();
    }
    if let Some(dir) = folder {
        if let Ok(attrs) = xattrs::read_all(dir) {
            if let Some(p) = xattrs::prefix_in(&attrs) {
                return p.to_string();
            }
        }
    }
    xattrs::platform_prefix().to_string()
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("cannot sync folder", dir, e))
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes `bytes` with `meta` to the temporary file of `path`; returns the temp path. The temp
/// file is removed on any failure.
fn write_temp(path: &Path, bytes: &[u8], meta: &FileMeta, sync: bool) -> Result<PathBuf> {
    let tmp = temp_path(path);
    // A leftover of ours from an interrupted run: ours to remove.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Error::io(
                "cannot remove the leftover temporary file",
                &tmp,
                e,
            ))
        }
    }
    let result = (|| -> Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|e| Error::io("cannot create", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| Error::io("cannot write", &tmp, e))?;
        use xattr::FileExt;
        for (name, value) in &meta.xattrs {
            f.set_xattr(name, value).map_err(|e| {
                Error::io(&format!("cannot set extended attribute {name} on"), &tmp, e)
            })?;
        }
        std::os::unix::fs::fchown(&f, Some(meta.uid), Some(meta.gid)).map_err(|e| {
            Error::io(
                &format!("cannot give {}:{} ownership of", meta.uid, meta.gid),
                &tmp,
                e,
            )
        })?;
        // After chown (which clears set-id bits).
        f.set_permissions(fs::Permissions::from_mode(meta.mode))
            .map_err(|e| Error::io("cannot set the mode of", &tmp, e))?;
        if sync {
            f.sync_all()
                .map_err(|e| Error::io("cannot sync", &tmp, e))?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

/// Puts `bytes` and `meta` at `path` atomically (temp file, sync, rename, folder sync), whether or
/// not `path` exists now. Used by rollback. When `path` is a calendar resource or a card (`*.ics`,
/// `*.vcf`, not a dot-name), its collection also gets a new `getctag`, so clients that synced the replaced bytes
/// fetch the restored ones (the restored `getcontentmd5` is the one saved with the bytes).
pub fn restore(path: &Path, bytes: &[u8], meta: &FileMeta) -> Result<()> {
    if let Ok(m) = fs::symlink_metadata(path) {
        if !m.is_file() {
            return Err(Error::runtime(format!(
                "{} is no longer a regular file; not replaced",
                path.display()
            )));
        }
    }
    let tmp = write_temp(path, bytes, meta, true)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io("cannot rename the temporary file over", path, e));
    }
    let folder = parent_of(path);
    fsync_dir(&folder)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A CalendarServer collection (one that has a ctag) gets a new one, so clients re-sync.
    let has_ctag = xattrs::read_all(&folder)
        .map(|a| {
            a.iter()
                .any(|x| x.property().as_deref() == Some(xattrs::getctag().as_str()))
        })
        .unwrap_or(false);
    if (super::is_resource_name(&name) || super::addressbook::is_card_name(&name)) && has_ctag {
        let prefix = choose_prefix(None, &meta.xattr_list(), Some(&folder));
        bump_ctag(&folder, &prefix)
            .map_err(|e| e.context(format!("{} was restored but", path.display())))?;
    }
    Ok(())
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
    let ctag = new_ctag();
    let prop = xattrs::getctag();
    let value = xattrs::text_property_value(&prop, &ctag);
    // Replace it under every name it already has (any prefix, long or short), else add it under
    // `prefix`.
    let mut names: Vec<String> = xattrs::read_all(collection)
        .map_err(|e| Error::io("cannot read extended attributes of", collection, e))?
        .into_iter()
        .filter(|a| a.property().as_deref() == Some(prop.as_str()))
        .map(|a| a.name)
        .collect();
    if names.is_empty() {
        names.push(xattrs::attr_name(prefix, &prop));
    }
    for name in names {
        xattr::set(collection, &name, &value)
            .map_err(|e| Error::io(&format!("cannot set {name} on"), collection, e))?;
    }
    // Make the new ctag as durable as the rename before it.
    fsync_dir(collection)?;
    Ok(ctag)
}

/// Sets a resource's `getcontentmd5` attribute to `md5` (under every name it already has, else
/// under `prefix`).
pub fn set_md5_attr(path: &Path, md5: &str, prefix: &str) -> Result<()> {
    let prop = xattrs::getcontentmd5();
    set_attrs(
        path,
        &prop,
        &xattrs::text_property_value(&prop, md5),
        prefix,
    )
}

/// Sets `property` to `value` on a file in every attribute that holds it, else under `prefix`.
fn set_attrs(path: &Path, property: &str, value: &[u8], prefix: &str) -> Result<()> {
    let mut names: Vec<String> = xattrs::read_all(path)
        .map_err(|e| Error::io("cannot read extended attributes of", path, e))?
        .into_iter()
        .filter(|a| a.property().as_deref() == Some(property))
        .map(|a| a.name)
        .collect();
    if names.is_empty() {
        names.push(xattrs::attr_name(prefix, property));
    }
    for name in names {
        xattr::set(path, &name, value)
            .map_err(|e| Error::io(&format!("cannot set {name} on"), path, e))?;
    }
    Ok(())
}

/// Gives a resource's `scheduling-match-etags` (when it has one) the single entry `etag`.
pub fn set_match_etags_attr(path: &Path, etag: &str) -> Result<()> {
    let mut attrs: Vec<(String, Vec<u8>)> = xattrs::read_all(path)
        .map_err(|e| Error::io("cannot read extended attributes of", path, e))?
        .into_iter()
        .map(|a| (a.name, a.value))
        .collect();
    let before = attrs.clone();
    super::props::refresh_match_etags(&mut attrs, etag);
    for ((name, new), (_, old)) in attrs.iter().zip(&before) {
        if new != old {
            xattr::set(path, name, new)
                .map_err(|e| Error::io(&format!("cannot set {name} on"), path, e))?;
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
    let found = sha256_file(path)?;
    if !found.eq_ignore_ascii_case(expected_sha256) {
        return Err(WriteError::Changed {
            path: path.to_path_buf(),
            expected: expected_sha256.to_string(),
            found,
        });
    }
    let prepared = prepare_checked(path, found, new_bytes, opts, edits, true)?;
    let folder = prepared.folder.clone();
    let prefix = prepared.prefix.clone();
    let mut written = prepared.commit()?;
    fsync_dir(&folder)?;
    if !opts.plain_files {
        written.ctag = bump_ctag(&folder, &prefix)
            .map_err(|e| e.context(format!("{} was written but", path.display())))?;
    }
    Ok(written)
}

/// A write whose temporary file is in place, not yet renamed over the original.
#[derive(Debug)]
pub struct PreparedWrite {
    pub path: PathBuf,
    pub folder: PathBuf,
    pub prefix: String,
    tmp: PathBuf,
    expected_sha256: String,
    new_sha256: String,
    new_md5: String,
}

/// First half of a write: checks the resource still has `expected_sha256` and writes the new
/// bytes with the original's owner, mode and attributes (new `getcontentmd5` and
/// `scheduling-match-etags` when the bytes change) to the temporary file. With `sync` false the caller makes the
/// temporary files durable in one go ([`sync_filesystem`]) before committing them.
pub fn prepare_write(
    path: &Path,
    expected_sha256: &str,
    new_bytes: &[u8],
    opts: &WriteOptions,
    sync: bool,
) -> std::result::Result<PreparedWrite, WriteError> {
    let found = sha256_file(path)?;
    if !found.eq_ignore_ascii_case(expected_sha256) {
        return Err(WriteError::Changed {
            path: path.to_path_buf(),
            expected: expected_sha256.to_string(),
            found,
        });
    }
    prepare_checked(path, found, new_bytes, opts, &[], sync)
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
    prepare_checked(path, checked_sha256.to_string(), new_bytes, opts, &[], sync)
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
    prepare_checked(
        path,
        checked_sha256.to_string(),
        new_bytes,
        opts,
        edits,
        sync,
    )
}

fn prepare_checked(
    path: &Path,
    found: String,
    new_bytes: &[u8],
    opts: &WriteOptions,
    edits: &[super::props::AttrEdit],
    sync: bool,
) -> std::result::Result<PreparedWrite, WriteError> {
    let mut meta = FileMeta::of(path)?;
    if let Err(which) = super::props::apply_edits(&mut meta.xattrs, edits) {
        return Err(WriteError::Changed {
            path: path.to_path_buf(),
            expected: "its planned attributes".to_string(),
            found: which,
        });
    }
    let folder = parent_of(path);
    let prefix = choose_prefix(
        opts.xattr_prefix.as_deref(),
        &meta.xattr_list(),
        Some(&folder),
    );
    let md5 = md5_hex(new_bytes);
    let new_sha256 = hex::encode(Sha256::digest(new_bytes));
    // The ETag follows the bytes: getcontentmd5 (every name it has) and the ETag list. A resource
    // whose only change is an attribute keeps both as they are.
    if !opts.plain_files && !new_sha256.eq_ignore_ascii_case(&found) {
        let md5_prop = xattrs::getcontentmd5();
        meta.set_property(
            &md5_prop,
            &xattrs::text_property_value(&md5_prop, &md5),
            &prefix,
        );
        super::props::refresh_match_etags(&mut meta.xattrs, &md5);
    }
    let tmp = write_temp(path, new_bytes, &meta, sync)?;
    Ok(PreparedWrite {
        path: path.to_path_buf(),
        folder,
        prefix,
        tmp,
        expected_sha256: found,
        new_sha256,
        new_md5: md5,
    })
}

impl PreparedWrite {
    /// Second half: a last look (a change made meanwhile wins), then the rename. The caller
    /// syncs the folder and gives the collection a new ctag.
    pub fn commit(self) -> std::result::Result<Written, WriteError> {
        let again = match sha256_file(&self.path) {
            Ok(s) => s,
            Err(e) => {
                let _ = fs::remove_file(&self.tmp);
                return Err(e.into());
            }
        };
        if !again.eq_ignore_ascii_case(&self.expected_sha256) {
            let _ = fs::remove_file(&self.tmp);
            return Err(WriteError::Changed {
                path: self.path.clone(),
                expected: self.expected_sha256.clone(),
                found: again,
            });
        }
        if let Err(e) = fs::rename(&self.tmp, &self.path) {
            let _ = fs::remove_file(&self.tmp);
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
        let _ = fs::remove_file(&self.tmp);
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
