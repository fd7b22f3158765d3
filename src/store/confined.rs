//! Confined file-system access: every write, owner change and attribute change in the store goes
//! through an open folder descriptor reached from the store root one component at a time with
//! `O_NOFOLLOW`, so a folder or file replaced by a symbolic link (between plan and apply, or by
//! anyone able to write in the store) is refused instead of written through, and `..` never
//! appears. A descriptor keeps naming the folder it was opened on even if the path is swapped
//! afterwards.
//!
//! The store root itself is opened as configured (links in the configured path are the
//! administrator's choice); everything below it is confined.

use crate::store::Xattr;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// An open folder (a descriptor) and the path it was reached by (for messages).
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl AsRawFd for Dir {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl xattr::FileExt for Dir {}

fn cstr(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("file name with a NUL byte: {name:?}"),
        )
    })
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `lstat`-like facts about an entry of a folder.
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    /// `st_mode`: file type and permission bits.
    pub mode: u32,
    /// `st_uid`: owner uid.
    pub uid: u32,
    /// `st_gid`: owner gid.
    pub gid: u32,
    /// `st_nlink`: hard link count.
    pub nlink: u64,
    /// `st_dev`: the device holding it.
    pub dev: u64,
    /// `st_ino`: its inode number.
    pub ino: u64,
}

// The field types of `struct stat` differ between platforms: the casts are needed elsewhere.
#[allow(clippy::unnecessary_cast)]
impl Stat {
    fn from(st: &libc::stat) -> Stat {
        Stat {
            mode: st.st_mode as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            nlink: st.st_nlink as u64,
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
        }
    }
    /// True for a folder.
    pub fn is_dir(&self) -> bool {
        self.mode & (libc::S_IFMT as u32) == libc::S_IFDIR as u32
    }
    /// True for a regular file.
    pub fn is_file(&self) -> bool {
        self.mode & (libc::S_IFMT as u32) == libc::S_IFREG as u32
    }
    /// True for a symbolic link (never followed).
    pub fn is_symlink(&self) -> bool {
        self.mode & (libc::S_IFMT as u32) == libc::S_IFLNK as u32
    }
    /// Permission bits.
    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }
}

/// `fstat` of an open descriptor.
pub fn fstat(fd: &impl AsRawFd) -> io::Result<Stat> {
    // SAFETY: fstat writes into the zeroed struct; the descriptor is open for the call.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(Stat::from(&st))
}

/// Why a component could not be opened, in words (a link is never followed).
fn refused(path: &Path, e: io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::EMLINK) => io::Error::new(
            e.kind(),
            format!(
                "{} is a symbolic link; not followed (it could lead outside the store), nothing written through it",
                path.display()
            ),
        ),
        Some(libc::ENOTDIR) => io::Error::new(
            e.kind(),
            format!("{} is not a folder; nothing written", path.display()),
        ),
        _ => io::Error::new(e.kind(), format!("{}: {e}", path.display())),
    }
}

/// One path component: a plain name (no `/`, not empty, not `.` or `..`).
fn component<'a>(base: &Path, name: &'a str) -> io::Result<&'a str> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{}: `{name}` would leave the store; refused",
                base.display()
            ),
        ));
    }
    Ok(name)
}

impl Dir {
    /// Opens a folder by path (the store root; links in this path are followed).
    pub fn open(path: &Path) -> io::Result<Dir> {
        let c = cstr(&path.to_string_lossy())?;
        // SAFETY: a valid C string; the returned descriptor is owned below.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(refused(path, io::Error::last_os_error()));
        }
        Ok(Dir {
            // SAFETY: fd was just opened and is owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path: path.to_path_buf(),
        })
    }

    /// The path this folder was reached by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of an entry, for messages.
    pub fn child(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn openat(&self, name: &str, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
        let c = cstr(component(&self.path, name)?)?;
        // SAFETY: valid descriptor and C string; the result is owned below.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                libc::c_uint::from(mode),
            )
        };
        if fd < 0 {
            let mut e = io::Error::last_os_error();
            // O_DIRECTORY | O_NOFOLLOW on a link says ENOTDIR on Linux: tell the two apart.
            if e.raw_os_error() == Some(libc::ENOTDIR)
                && self.stat(name).is_ok_and(|s| s.is_symlink())
            {
                e = io::Error::from_raw_os_error(libc::ELOOP);
            }
            return Err(refused(&self.child(name), e));
        }
        // SAFETY: fd was just opened.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// A sub-folder (never through a link).
    pub fn sub(&self, name: &str) -> io::Result<Dir> {
        let fd = self.openat(name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        Ok(Dir {
            fd,
            path: self.child(name),
        })
    }

    /// A folder below this one, by a `/`-separated relative path, one component at a time.
    pub fn walk(&self, rel: &str) -> io::Result<Dir> {
        let mut dir = self.dup()?;
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            dir = dir.sub(part)?;
        }
        Ok(dir)
    }

    /// The folder holding `rel` and the last component's name.
    pub fn split<'a>(&self, rel: &'a str) -> io::Result<(Dir, &'a str)> {
        let rel = rel.trim_end_matches('/');
        let (parent, name) = match rel.rsplit_once('/') {
            Some((p, n)) => (p, n),
            None => ("", rel),
        };
        let dir = self.walk(parent)?;
        let name = component(dir.path(), name)?;
        Ok((dir, name))
    }

    /// Another descriptor on the same folder.
    pub fn dup(&self) -> io::Result<Dir> {
        // SAFETY: valid descriptor; the result is owned below.
        let fd = unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Dir {
            // SAFETY: fd was just created.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path: self.path.clone(),
        })
    }

    /// Facts about an entry (a link's own, never its target's).
    pub fn stat(&self, name: &str) -> io::Result<Stat> {
        let c = cstr(component(&self.path, name)?)?;
        // SAFETY: valid descriptor, C string and output struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        check(unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        Ok(Stat::from(&st))
    }

    /// Facts about this folder itself.
    pub fn stat_self(&self) -> io::Result<Stat> {
        fstat(self)
    }

    /// Whether an entry exists (a dangling link counts).
    pub fn exists(&self, name: &str) -> bool {
        self.stat(name).is_ok()
    }

    /// Opens a regular file for reading (a link, folder or device is refused).
    pub fn open_file(&self, name: &str) -> io::Result<File> {
        let fd = self.openat(name, libc::O_RDONLY | libc::O_NONBLOCK, 0)?;
        let f = File::from(fd);
        if !fstat(&f)?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", self.child(name).display()),
            ));
        }
        Ok(f)
    }

    /// A regular file's bytes.
    pub fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        let mut f = self.open_file(name)?;
        let mut out = Vec::new();
        f.read_to_end(&mut out).map_err(|e| {
            io::Error::new(e.kind(), format!("{}: {e}", self.child(name).display()))
        })?;
        Ok(out)
    }

    /// Creates a new file (it must not exist; never through a link).
    pub fn create_new(&self, name: &str, mode: u32) -> io::Result<File> {
        let fd = self.openat(
            name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            mode as libc::mode_t,
        )?;
        Ok(File::from(fd))
    }

    /// Renames an entry of this folder to `to` in `to_dir` (both confined).
    pub fn rename(&self, from: &str, to_dir: &Dir, to: &str) -> io::Result<()> {
        let (f, t) = (
            cstr(component(&self.path, from)?)?,
            cstr(component(&to_dir.path, to)?)?,
        );
        // SAFETY: valid descriptors and C strings.
        check(unsafe {
            libc::renameat(
                self.fd.as_raw_fd(),
                f.as_ptr(),
                to_dir.fd.as_raw_fd(),
                t.as_ptr(),
            )
        })
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot rename {} to {}: {e}",
                    self.child(from).display(),
                    to_dir.child(to).display()
                ),
            )
        })
    }

    /// Removes a file (or a link itself) from this folder.
    pub fn unlink(&self, name: &str) -> io::Result<()> {
        let c = cstr(component(&self.path, name)?)?;
        // SAFETY: valid descriptor and C string.
        check(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) })
    }

    /// Removes an empty sub-folder.
    pub fn rmdir(&self, name: &str) -> io::Result<()> {
        let c = cstr(component(&self.path, name)?)?;
        // SAFETY: valid descriptor and C string.
        check(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) })
    }

    /// Creates a sub-folder.
    pub fn mkdir(&self, name: &str, mode: u32) -> io::Result<()> {
        let c = cstr(component(&self.path, name)?)?;
        // SAFETY: valid descriptor and C string.
        check(unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), mode as libc::mode_t) })
    }

    /// Makes the folder's entries durable.
    pub fn sync(&self) -> io::Result<()> {
        // SAFETY: valid descriptor.
        check(unsafe { libc::fsync(self.fd.as_raw_fd()) })
    }

    /// Every extended attribute of the folder.
    pub fn xattrs(&self) -> io::Result<Vec<Xattr>> {
        super::xattrs::read_all_fd(self)
    }

    /// Sets one extended attribute of the folder.
    pub fn set_xattr(&self, name: &str, value: &[u8]) -> io::Result<()> {
        use xattr::FileExt;
        FileExt::set_xattr(self, name, value)
    }

    /// Removes one extended attribute of the folder (absent is fine).
    pub fn remove_xattr(&self, name: &str) -> io::Result<()> {
        use xattr::FileExt;
        match FileExt::remove_xattr(self, name) {
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(()),
            #[cfg(target_os = "macos")]
            Err(e) if e.raw_os_error() == Some(libc::ENOATTR) => Ok(()),
            r => r,
        }
    }

    /// The names in this folder (without `.` and `..`), unsorted.
    pub fn names(&self) -> io::Result<Vec<String>> {
        // A separate descriptor so the read position is our own.
        // SAFETY: valid descriptor; openat of "." on it yields a fresh one owned below.
        let fresh = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c".".as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fresh < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fdopendir takes ownership of `fresh` (closed by closedir).
        let dirp = unsafe { libc::fdopendir(fresh) };
        if dirp.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: fdopendir failed, so `fresh` is still ours to close.
            unsafe { libc::close(fresh) };
            return Err(e);
        }
        let mut names = Vec::new();
        loop {
            // SAFETY: dirp is a valid open directory stream.
            let ent = unsafe { libc::readdir(dirp) };
            if ent.is_null() {
                break;
            }
            // SAFETY: d_name is a NUL-terminated name inside the entry readdir returned.
            let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
            let name = name.to_string_lossy().into_owned();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        // SAFETY: dirp is valid and closed once.
        unsafe { libc::closedir(dirp) };
        Ok(names)
    }

    /// The names in this folder (without `.` and `..`), sorted, with their type from `lstat`.
    pub fn entries(&self) -> io::Result<Vec<(String, Stat)>> {
        let mut names = self.names()?;
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            match self.stat(&n) {
                Ok(st) => out.push((n, st)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Gives the folder an owner; without the right to give files away (not root) it keeps its
    /// owner.
    pub fn chown(&self, uid: u32, gid: u32) -> io::Result<()> {
        fchown_tolerant(self, uid, gid)
    }

    /// Sets the folder's permission bits.
    pub fn chmod(&self, mode: u32) -> io::Result<()> {
        // SAFETY: valid descriptor.
        check(unsafe { libc::fchmod(self.fd.as_raw_fd(), mode as libc::mode_t) })
    }
}

/// `fchown`, where EPERM (not root) leaves the owner as it is.
pub fn fchown_tolerant(fd: &impl AsRawFd, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: valid descriptor.
    match check(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) }) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(()),
        r => r,
    }
}

/// Open folders of one batch, shared by the threads that work on it: each folder is reached
/// from the root once.
pub struct DirCache {
    root: Dir,
    dirs: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<Dir>>>,
}

impl DirCache {
    /// A cache whose folders are opened from (a duplicate of) `root`.
    pub fn new(root: &Dir) -> io::Result<DirCache> {
        Ok(DirCache {
            root: root.dup()?,
            dirs: Default::default(),
        })
    }

    /// The folder at `rel` (relative to the root), opened once.
    pub fn get(&self, rel: &str) -> io::Result<std::sync::Arc<Dir>> {
        if let Some(d) = self.dirs.lock().ok().and_then(|m| m.get(rel).cloned()) {
            return Ok(d);
        }
        let d = std::sync::Arc::new(self.root.walk(rel)?);
        if let Ok(mut m) = self.dirs.lock() {
            m.insert(rel.to_string(), d.clone());
        }
        Ok(d)
    }

    /// The folder holding `rel` and the file name.
    pub fn parent<'a>(&self, rel: &'a str) -> io::Result<(std::sync::Arc<Dir>, &'a str)> {
        let (folder, name) = split_rel(rel);
        let dir = self.get(folder)?;
        let name = component(dir.path(), name)?;
        Ok((dir, name))
    }
}

/// `a/b/c.ics` → (`a/b`, `c.ics`).
pub fn split_rel(rel: &str) -> (&str, &str) {
    match rel.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => ("", rel),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_inside_and_refuses_links_and_dotdot() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("store");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/x.ics"), b"x").unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("x.ics"), b"secret").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a/link")).unwrap();
        std::os::unix::fs::symlink(outside.join("x.ics"), root.join("a/b/l.ics")).unwrap();
        let r = Dir::open(&root).unwrap();
        assert_eq!(r.walk("a/b").unwrap().read("x.ics").unwrap(), b"x");
        let e = r.walk("a/link").unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let e = r.walk("a/../..").unwrap_err();
        assert!(e.to_string().contains("leave the store"), "{e}");
        let (d, n) = r.split("a/b/l.ics").unwrap();
        assert!(d.read(n).is_err(), "a linked file is not read");
        assert!(d.create_new(n, 0o600).is_err(), "nor written through");
        assert_eq!(std::fs::read(outside.join("x.ics")).unwrap(), b"secret");
        let names: Vec<String> = r
            .walk("a")
            .unwrap()
            .entries()
            .unwrap()
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(names, ["b", "link"]);
    }
}
