//! Content-addressed backups of original files and the saved owner, mode and attributes of a step.

use crate::error::{Error, Result};
use crate::state::create_private_dir;
use crate::store::write::{sha256_hex, sync_filesystem, FileMeta};
use base64::Engine as _;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Content-addressed copies of original files, in `<state>/backups/<aa>/<sha256>`.
pub struct Backups {
    dir: PathBuf,
}

impl Backups {
    /// Opens (creating it, mode 0700) the backup folder under the state folder.
    pub fn open(state_dir: &Path) -> Result<Backups> {
        let dir = state_dir.join("backups");
        create_private_dir(&dir)?;
        Ok(Backups { dir })
    }

    pub(super) fn path(&self, sha: &str) -> PathBuf {
        self.dir.join(&sha[..2]).join(sha)
    }

    /// Saves bytes (mode 0600) and returns their SHA-256. The caller makes them durable with
    /// [`Backups::sync`] before relying on them.
    pub fn put(&self, bytes: &[u8]) -> Result<String> {
        let sha = sha256_hex(bytes);
        let path = self.path(&sha);
        let sub = path.parent().unwrap_or(&self.dir);
        create_private_dir(sub)?;
        // A backup already there is kept when it is whole (it may be referenced by an earlier step:
        // never truncate it). One left partial by a crash was never referenced (steps refer to
        // backups only after `sync`) and is written again, in place.
        if std::fs::read(&path).is_ok_and(|b| sha256_hex(&b) == sha) {
            return Ok(sha);
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io("cannot write backup", &path, e))?;
        f.write_all(bytes)
            .map_err(|e| Error::io("cannot write backup", &path, e))?;
        Ok(sha)
    }

    /// Makes every backup written so far durable, files and folders (one `syncfs` per batch).
    pub fn sync(&self) -> Result<()> {
        sync_filesystem(&self.dir)
    }

    /// Reads a backup back, checking its hash.
    pub fn get(&self, sha: &str) -> Result<Vec<u8>> {
        if sha.len() < 2 {
            return Err(Error::runtime("the journal names no backup for this file"));
        }
        let path = self.path(sha);
        let bytes = std::fs::read(&path).map_err(|e| {
            Error::runtime(format!("its backup {} cannot be read: {e}", path.display()))
        })?;
        if sha256_hex(&bytes) != sha {
            return Err(Error::runtime(format!(
                "its backup {} is damaged (its bytes no longer match their SHA-256)",
                path.display()
            )));
        }
        Ok(bytes)
    }
}

/// Original owner, group, mode and attributes, as stored in the journal.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct SavedMeta {
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) mode: u32,
    /// Attribute name and base64 value.
    pub(super) xattrs: Vec<(String, String)>,
}

impl SavedMeta {
    pub(super) fn from_meta(m: &FileMeta) -> SavedMeta {
        let b64 = base64::engine::general_purpose::STANDARD;
        SavedMeta {
            uid: m.uid,
            gid: m.gid,
            mode: m.mode,
            xattrs: m
                .xattrs
                .iter()
                .map(|(n, v)| (n.clone(), b64.encode(v)))
                .collect(),
        }
    }

    pub(super) fn to_meta(&self) -> Result<FileMeta> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut xattrs = Vec::new();
        for (n, v) in &self.xattrs {
            xattrs.push((
                n.clone(),
                b64.decode(v)
                    .map_err(|e| Error::runtime(format!("journal: bad attribute {n}: {e}")))?,
            ));
        }
        Ok(FileMeta {
            uid: self.uid,
            gid: self.gid,
            mode: self.mode,
            xattrs,
        })
    }
}
