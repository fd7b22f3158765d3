//! The saved owner, mode and attributes of a step (its original bytes are in
//! [`crate::store::seam::Backups`]).

use crate::error::{Error, Result};
use crate::store::write::FileMeta;
use base64::Engine as _;

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
