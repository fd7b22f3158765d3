//! Calendar-home adoption: a home kept under an old GUID (or an old 1.x layout) whose owner maps to
//! a current record moves to that record's hashed path, `calendars/__uids__/N0N1/N2N3/<NEWGUID>/`.
//! When the new home already exists (the user logged in after the migration and the server made an
//! empty one), the old collections move into it, a clashing name becoming `<name>-migrated` —
//! except `dropbox`: the plan points the events' dropbox links at
//! `/calendars/__uids__/<NEWGUID>/dropbox/<x>.dropbox/...`, so the old dropbox's folders are merged
//! into the new home's `dropbox` (an entry whose name is taken there stays where it was, noted).
//! Properties that name the old home by href (the inbox's `calendar-free-busy-set`,
//! `schedule-default-calendar-URL`) are pointed at the new one.
//!
//! Every step is a journal step ([`HomeStep`]): recorded before it is taken, idempotent when
//! retried after a crash, and reversible by [`undo`].

use crate::error::{Error, Result};
use crate::store::confined::Dir;
use crate::store::xattrs;
use base64::Engine as _;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// One filesystem step of an adoption.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HomeStep {
    /// Create a folder, owned and moded like `like` (a folder relative to the store).
    Mkdir {
        /// The folder to create, relative to the store.
        rel: String,
        /// Owner uid to give it.
        uid: u32,
        /// Owner gid to give it.
        gid: u32,
        /// Permission bits to give it (e.g. `0o755`).
        mode: u32,
    },
    /// Rename a home or collection folder.
    Move {
        /// The folder's path now, relative to the store.
        from: String,
        /// Its new path, relative to the store.
        to: String,
    },
    /// Replace one extended attribute's value (`old` = None when it did not exist).
    Xattr {
        /// The file or folder carrying it, relative to the store.
        rel: String,
        /// Full attribute name, prefix included (e.g. `user.…`).
        name: String,
        /// The value before the step; None when the attribute did not exist.
        old: Option<Vec<u8>>,
        /// The value the step writes.
        new: Vec<u8>,
    },
    /// Remove a folder left empty by a merge (its metadata kept for undo).
    Rmdir {
        /// The folder to remove, relative to the store.
        rel: String,
        /// Its owner uid, to recreate it on undo.
        uid: u32,
        /// Its owner gid, to recreate it on undo.
        gid: u32,
        /// Its permission bits, to recreate it on undo.
        mode: u32,
        /// Its extended attributes (name, value), to restore on undo.
        xattrs: Vec<(String, Vec<u8>)>,
    },
}

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(v)
}

fn unb64(s: &str) -> Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| Error::runtime(format!("journal: bad base64: {e}")))
}

impl HomeStep {
    /// The journal action word of this step (`mkdir`, `move`, `xattr`, `rmdir`).
    pub fn action(&self) -> &'static str {
        match self {
            HomeStep::Mkdir { .. } => "mkdir",
            HomeStep::Move { .. } => "move",
            HomeStep::Xattr { .. } => "xattr",
            HomeStep::Rmdir { .. } => "rmdir",
        }
    }

    /// The path the step acts on (a move: where it moves from), as the journal's `rel_path`.
    pub fn rel(&self) -> &str {
        match self {
            HomeStep::Mkdir { rel, .. }
            | HomeStep::Xattr { rel, .. }
            | HomeStep::Rmdir { rel, .. } => rel,
            HomeStep::Move { from, .. } => from,
        }
    }

    /// (rel_path, target_path, meta_json) as the journal stores them.
    pub fn to_row(&self) -> (String, Option<String>, String) {
        match self {
            HomeStep::Mkdir {
                rel,
                uid,
                gid,
                mode,
            } => (
                rel.clone(),
                None,
                serde_json::json!({ "uid": uid, "gid": gid, "mode": mode }).to_string(),
            ),
            HomeStep::Move { from, to } => (from.clone(), Some(to.clone()), "{}".into()),
            HomeStep::Xattr {
                rel,
                name,
                old,
                new,
            } => (
                rel.clone(),
                Some(name.clone()),
                serde_json::json!({ "old": old.as_deref().map(b64), "new": b64(new) }).to_string(),
            ),
            HomeStep::Rmdir {
                rel,
                uid,
                gid,
                mode,
                xattrs,
            } => (
                rel.clone(),
                None,
                serde_json::json!({
                    "uid": uid, "gid": gid, "mode": mode,
                    "xattrs": xattrs.iter().map(|(n, v)| (n.clone(), b64(v))).collect::<Vec<_>>()
                })
                .to_string(),
            ),
        }
    }

    /// Reads a step back from its journal row.
    pub fn from_row(
        action: &str,
        rel: String,
        target: Option<String>,
        meta: &str,
    ) -> Result<HomeStep> {
        let m: serde_json::Value = serde_json::from_str(meta)
            .map_err(|e| Error::runtime(format!("journal: bad step metadata: {e}")))?;
        let num = |k: &str| m[k].as_u64().unwrap_or(0) as u32;
        Ok(match action {
            "mkdir" => HomeStep::Mkdir {
                rel,
                uid: num("uid"),
                gid: num("gid"),
                mode: num("mode"),
            },
            "move" => HomeStep::Move {
                from: rel,
                to: target.unwrap_or_default(),
            },
            "xattr" => HomeStep::Xattr {
                rel,
                name: target.unwrap_or_default(),
                old: m["old"].as_str().map(unb64).transpose()?,
                new: unb64(m["new"].as_str().unwrap_or_default())?,
            },
            "rmdir" => {
                let mut attrs = Vec::new();
                for pair in m["xattrs"].as_array().into_iter().flatten() {
                    attrs.push((
                        pair[0].as_str().unwrap_or_default().to_string(),
                        unb64(pair[1].as_str().unwrap_or_default())?,
                    ));
                }
                HomeStep::Rmdir {
                    rel,
                    uid: num("uid"),
                    gid: num("gid"),
                    mode: num("mode"),
                    xattrs: attrs,
                }
            }
            other => {
                return Err(Error::runtime(format!(
                    "journal: unknown home step `{other}`"
                )))
            }
        })
    }
}

/// Every step opens its folders from the store root one component at a time without following a
/// link ([`Dir`]): a home or collection replaced by a symbolic link is refused, never written
/// through.
fn io_err(what: &str, root: &Dir, rel: &str, e: std::io::Error) -> Error {
    Error::io(what, &root.child(rel), e)
}

fn make_dir(root: &Dir, rel: &str, uid: u32, gid: u32, mode: u32) -> Result<()> {
    let (parent, name) = root
        .split(rel)
        .map_err(|e| io_err("cannot create folder", root, rel, e))?;
    match parent.stat(name) {
        Ok(st) if st.is_dir() => {}
        Ok(_) => {
            return Err(Error::runtime(format!(
                "{} exists and is not a folder (or is a link); not replaced",
                root.child(rel).display()
            )))
        }
        Err(_) => parent
            .mkdir(name, 0o700)
            .map_err(|e| io_err("cannot create folder", root, rel, e))?,
    }
    let dir = parent
        .sub(name)
        .map_err(|e| io_err("cannot open folder", root, rel, e))?;
    dir.chown(uid, gid)
        .map_err(|e| io_err("cannot set owner of", root, rel, e))?;
    dir.chmod(mode)
        .map_err(|e| io_err("cannot set mode of", root, rel, e))
}

/// Whether `rel` exists (its folder missing means no); a link on the way is an error.
fn exists(root: &Dir, rel: &str) -> Result<bool> {
    match root.split(rel) {
        Ok((d, n)) => Ok(d.exists(n)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("cannot open", root, rel, e)),
    }
}

fn rename(root: &Dir, from: &str, to: &str) -> Result<()> {
    match (exists(root, from)?, exists(root, to)?) {
        (true, false) => {
            let (fd, fname) = root
                .split(from)
                .map_err(|e| io_err("cannot move", root, from, e))?;
            let (td, tname) = root
                .split(to)
                .map_err(|e| io_err("cannot move to", root, to, e))?;
            fd.rename(fname, &td, tname)
                .map_err(|e| io_err("cannot move", root, from, e))
        }
        (false, true) => Ok(()),
        (true, true) => Err(Error::runtime(format!(
            "cannot move {from} to {to}: both exist"
        ))),
        (false, false) => Err(Error::runtime(format!("cannot move {from}: it is gone"))),
    }
}

/// Takes a step; safe to repeat after a crash (a step already taken is a no-op).
pub fn execute(root: &Dir, step: &HomeStep) -> Result<()> {
    match step {
        HomeStep::Mkdir {
            rel,
            uid,
            gid,
            mode,
        } => make_dir(root, rel, *uid, *gid, *mode),
        HomeStep::Move { from, to } => rename(root, from, to),
        HomeStep::Xattr { rel, name, new, .. } => root
            .walk(rel)
            .and_then(|d| d.set_xattr(name, new))
            .map_err(|e| io_err(&format!("cannot set attribute {name} of"), root, rel, e)),
        HomeStep::Rmdir { rel, .. } => {
            let (parent, name) = match root.split(rel) {
                Ok(x) => x,
                // Its parent is gone (removed by a later step), so is the folder.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io_err("cannot remove folder", root, rel, e)),
            };
            if parent.exists(name) {
                parent
                    .rmdir(name)
                    .map_err(|e| io_err("cannot remove folder", root, rel, e))?;
            }
            Ok(())
        }
    }
}

/// Reverses a step taken by [`execute`]; safe to repeat.
pub fn undo(root: &Dir, step: &HomeStep) -> Result<()> {
    match step {
        HomeStep::Mkdir { rel, .. } => {
            let (parent, name) = match root.split(rel) {
                Ok(x) => x,
                // Its parent is gone, so is the folder.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io_err("cannot remove folder", root, rel, e)),
            };
            let empty = parent
                .sub(name)
                .and_then(|d| d.names())
                .map(|n| n.is_empty())
                .unwrap_or(false);
            if empty {
                parent
                    .rmdir(name)
                    .map_err(|e| io_err("cannot remove folder", root, rel, e))?;
            }
            Ok(())
        }
        HomeStep::Move { from, to } => rename(root, to, from),
        HomeStep::Xattr { rel, name, old, .. } => root
            .walk(rel)
            .and_then(|d| match old {
                Some(v) => d.set_xattr(name, v),
                None => d.remove_xattr(name),
            })
            .map_err(|e| io_err(&format!("cannot restore attribute {name} of"), root, rel, e)),
        HomeStep::Rmdir {
            rel,
            uid,
            gid,
            mode,
            xattrs,
        } => {
            make_dir(root, rel, *uid, *gid, *mode)?;
            let d = root
                .walk(rel)
                .map_err(|e| io_err("cannot open folder", root, rel, e))?;
            for (n, v) in xattrs {
                d.set_xattr(n, v)
                    .map_err(|e| io_err("cannot restore attribute of", root, rel, e))?;
            }
            Ok(())
        }
    }
}

/// The hashed home path of a GUID, relative to the store.
pub fn hashed_home(guid: &str) -> String {
    hashed_home_in("calendars", guid)
}

/// The hashed home path of a GUID in `top` (`calendars` or `addressbooks`), relative to its root.
pub fn hashed_home_in(top: &str, guid: &str) -> String {
    format!("{top}/__uids__/{}/{}/{guid}", &guid[0..2], &guid[2..4])
}

/// The steps that adopt the home at `old_rel` into
/// `new_guid`'s hashed home, given the store as it is now. Empty when nothing is left to do.
/// Clashing collection names are reported in `notes`.
pub fn plan_adoption(
    store: &Path,
    old_rel: &str,
    new_guid: &str,
    notes: &mut Vec<String>,
) -> Result<Vec<HomeStep>> {
    plan_adoption_in(store, "calendars", old_rel, new_guid, notes)
}

/// [`plan_adoption`] for the homes in `top` (`calendars`, or `addressbooks` of an address-book
/// root `root`).
pub fn plan_adoption_in(
    store: &Path,
    top: &str,
    old_rel: &str,
    new_guid: &str,
    notes: &mut Vec<String>,
) -> Result<Vec<HomeStep>> {
    let mut steps = Vec::new();
    let target_rel = hashed_home_in(top, new_guid);
    let old = store.join(old_rel);
    // A home replaced by a link is not adopted (nothing is ever done through a link).
    if old_rel == target_rel || !std::fs::symlink_metadata(&old).is_ok_and(|m| m.is_dir()) {
        return Ok(steps);
    }
    let uids = store.join(format!("{top}/__uids__"));
    let like = std::fs::metadata(&uids).map_err(|e| Error::io("cannot read", &uids, e))?;
    let (a, b) = (&new_guid[0..2], &new_guid[2..4]);
    for rel in [
        format!("{top}/__uids__/{a}"),
        format!("{top}/__uids__/{a}/{b}"),
    ] {
        if !store.join(&rel).is_dir() {
            steps.push(HomeStep::Mkdir {
                rel,
                uid: like.uid(),
                gid: like.gid(),
                mode: like.mode() & 0o7777,
            });
        }
    }
    let target = store.join(&target_rel);
    if !target.exists() {
        steps.push(HomeStep::Move {
            from: old_rel.to_string(),
            to: target_rel.clone(),
        });
    } else {
        let mut names: Vec<String> = std::fs::read_dir(&old)
            .map_err(|e| Error::io("cannot read home", &old, e))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut kept = false;
        for name in &names {
            if name == "dropbox" && target.join(name).is_dir() {
                let (from, to) = (
                    format!("{old_rel}/dropbox"),
                    format!("{target_rel}/dropbox"),
                );
                kept |= !merge_into(store, &from, &to, &mut steps, notes)?;
                continue;
            }
            let mut dest = name.clone();
            let mut n = 1;
            while target.join(&dest).exists() {
                dest = if n == 1 {
                    format!("{name}-migrated")
                } else {
                    format!("{name}-migrated-{n}")
                };
                n += 1;
            }
            if &dest != name {
                notes.push(format!(
                    "{old_rel}/{name} merged into {target_rel} as {dest} (name clash)"
                ));
            }
            steps.push(HomeStep::Move {
                from: format!("{old_rel}/{name}"),
                to: format!("{target_rel}/{dest}"),
            });
        }
        let others = std::fs::read_dir(&old)
            .map_err(|e| Error::io("cannot read home", &old, e))?
            .filter_map(|e| e.ok())
            .any(|e| !e.file_type().map(|t| t.is_dir()).unwrap_or(false));
        if others {
            notes.push(format!(
                "{old_rel} kept: it holds files that are not collections"
            ));
        } else if kept {
            notes.push(format!(
                "{old_rel} kept: part of its dropbox could not be merged"
            ));
        } else {
            steps.push(rmdir_step(store, old_rel)?);
        }
    }
    Ok(steps)
}

/// The step that removes the folder `rel` once it is empty, keeping what undo needs to make it
/// again.
fn rmdir_step(store: &Path, rel: &str) -> Result<HomeStep> {
    let p = store.join(rel);
    let m = std::fs::metadata(&p).map_err(|e| Error::io("cannot read", &p, e))?;
    let attrs = xattrs::read_all(&p)
        .map_err(|e| Error::io("cannot read attributes of", &p, e))?
        .into_iter()
        .map(|x| (x.name, x.value))
        .collect();
    Ok(HomeStep::Rmdir {
        rel: rel.to_string(),
        uid: m.uid(),
        gid: m.gid(),
        mode: m.mode() & 0o7777,
        xattrs: attrs,
    })
}

/// Steps that move every entry of the folder `from_rel` into the existing folder `to_rel`,
/// descending into folders both have; an entry whose name is taken by a file there stays where
/// it is (noted). True when everything moves (the emptied folder is then removed too).
fn merge_into(
    store: &Path,
    from_rel: &str,
    to_rel: &str,
    steps: &mut Vec<HomeStep>,
    notes: &mut Vec<String>,
) -> Result<bool> {
    let from = store.join(from_rel);
    let mut entries: Vec<(String, bool)> = std::fs::read_dir(&from)
        .map_err(|e| Error::io("cannot read", &from, e))?
        .filter_map(|e| e.ok())
        .map(|e| {
            let dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
            (e.file_name().to_string_lossy().into_owned(), dir)
        })
        .collect();
    entries.sort();
    let mut all = true;
    for (name, is_dir) in entries {
        let (src, dst) = (format!("{from_rel}/{name}"), format!("{to_rel}/{name}"));
        match std::fs::symlink_metadata(store.join(&dst)) {
            Err(_) => steps.push(HomeStep::Move { from: src, to: dst }),
            Ok(m) if is_dir && m.is_dir() => all &= merge_into(store, &src, &dst, steps, notes)?,
            Ok(_) => {
                notes.push(format!("{src} kept: {dst} already exists"));
                all = false;
            }
        }
    }
    if all {
        steps.push(rmdir_step(store, from_rel)?);
    }
    Ok(all)
}

/// Steps that point properties of the (adopted) home at `home_rel` and its collections from the
/// old home's hrefs to the new GUID's.
pub fn plan_href_updates(
    store: &Path,
    home_rel: &str,
    old_hrefs: &[String],
    new_guid: &str,
) -> Result<Vec<HomeStep>> {
    let mut steps = Vec::new();
    let home = store.join(home_rel);
    if !std::fs::symlink_metadata(&home).is_ok_and(|m| m.is_dir()) {
        return Ok(steps);
    }
    let mut dirs = vec![home_rel.to_string()];
    for e in std::fs::read_dir(&home)
        .map_err(|e| Error::io("cannot read home", &home, e))?
        .flatten()
    {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            dirs.push(format!("{home_rel}/{}", e.file_name().to_string_lossy()));
        }
    }
    dirs.sort();
    let new_href = format!("/calendars/__uids__/{new_guid}/");
    for rel in dirs {
        let p = store.join(&rel);
        for x in xattrs::read_all(&p).map_err(|e| Error::io("cannot read attributes of", &p, e))? {
            let plain = xattrs::decode_value(&x.value);
            let text = String::from_utf8_lossy(&plain);
            let lower = text.to_ascii_lowercase();
            if !old_hrefs
                .iter()
                .any(|h| lower.contains(&h.to_ascii_lowercase()))
            {
                continue;
            }
            let mut out = text.into_owned();
            for h in old_hrefs {
                out = replace_ci(&out, h, &new_href);
            }
            let new = if plain == x.value {
                out.into_bytes()
            } else {
                xattrs::encode_value(out.as_bytes())
            };
            steps.push(HomeStep::Xattr {
                rel: rel.clone(),
                name: x.name.clone(),
                old: Some(x.value.clone()),
                new,
            });
        }
    }
    Ok(steps)
}

fn replace_ci(hay: &str, needle: &str, with: &str) -> String {
    let (lh, ln) = (hay.to_ascii_lowercase(), needle.to_ascii_lowercase());
    let mut out = String::with_capacity(hay.len());
    let mut i = 0;
    while let Some(at) = lh[i..].find(&ln) {
        out.push_str(&hay[i..i + at]);
        out.push_str(with);
        i += at + needle.len();
    }
    out.push_str(&hay[i..]);
    out
}

/// The hrefs that named a home in its old place.
pub fn old_hrefs(layout: &str, old_id: &str) -> Vec<String> {
    match layout {
        "users" => vec![
            format!("/calendars/users/{old_id}/"),
            format!("/calendars/__uids__/{old_id}/"),
        ],
        _ => vec![format!("/calendars/__uids__/{old_id}/")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_ci_keeps_the_rest() {
        assert_eq!(
            replace_ci(
                "<href>/calendars/__uids__/abc/calendar/</href>",
                "/calendars/__uids__/ABC/",
                "/x/"
            ),
            "<href>/x/calendar/</href>"
        );
    }

    /// Every path under `root` with the file contents ("" for folders).
    fn listing(root: &Path) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(p) = stack.pop() {
            for e in std::fs::read_dir(&p).unwrap() {
                let e = e.unwrap().path();
                let rel = e.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                if e.is_dir() {
                    stack.push(e);
                    out.push((rel, String::new()));
                } else {
                    out.push((rel, std::fs::read_to_string(&e).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    fn put(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn a_dropbox_merges_into_the_new_homes_dropbox() {
        const OLD: &str = "AAAAAAAA-0000-4000-8000-000000000001";
        const NEW: &str = "BBBBBBBB-0000-4000-8000-000000000002";
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path();
        let (old, new) = (hashed_home(OLD), hashed_home(NEW));
        put(store, &format!("{old}/calendar/e1.ics"), "event");
        put(store, &format!("{old}/dropbox/E1.dropbox/f.pdf"), "f");
        put(store, &format!("{old}/dropbox/E2.dropbox/g.pdf"), "g");
        std::fs::create_dir_all(store.join(format!("{new}/calendar"))).unwrap();
        put(store, &format!("{new}/dropbox/E2.dropbox/h.pdf"), "h");
        let before = listing(store);
        let mut notes = Vec::new();
        let steps = plan_adoption(store, &old, NEW, &mut notes).unwrap();
        for s in &steps {
            execute(&Dir::open(store).unwrap(), s).unwrap();
        }
        // Everything reachable under the new home's dropbox, where the rewritten links point.
        for (rel, text) in [
            ("dropbox/E1.dropbox/f.pdf", "f"),
            ("dropbox/E2.dropbox/g.pdf", "g"),
            ("dropbox/E2.dropbox/h.pdf", "h"),
            ("calendar-migrated/e1.ics", "event"),
        ] {
            assert_eq!(
                std::fs::read_to_string(store.join(format!("{new}/{rel}"))).unwrap(),
                text,
                "{rel}"
            );
        }
        assert!(!store.join(&new).join("dropbox-migrated").exists());
        assert!(!store.join(&old).exists(), "{notes:?}");
        // Steps taken again after a crash are no-ops; undo, newest first, restores the tree.
        for s in &steps {
            execute(&Dir::open(store).unwrap(), s).unwrap();
        }
        for s in steps.iter().rev() {
            undo(&Dir::open(store).unwrap(), s).unwrap();
        }
        assert_eq!(listing(store), before);

        // A file name taken in the new dropbox: that file stays, and so does the old home.
        put(store, &format!("{new}/dropbox/E2.dropbox/g.pdf"), "other g");
        let mut notes = Vec::new();
        let steps = plan_adoption(store, &old, NEW, &mut notes).unwrap();
        for s in &steps {
            execute(&Dir::open(store).unwrap(), s).unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(store.join(format!("{old}/dropbox/E2.dropbox/g.pdf"))).unwrap(),
            "g"
        );
        assert!(store
            .join(format!("{new}/dropbox/E1.dropbox/f.pdf"))
            .is_file());
        assert!(notes.iter().any(|n| n.contains("g.pdf kept")), "{notes:?}");
        assert!(
            notes
                .iter()
                .any(|n| n.contains("dropbox could not be merged")),
            "{notes:?}"
        );
        assert!(!steps
            .iter()
            .any(|s| matches!(s, HomeStep::Rmdir { rel, .. } if rel == &old)));
    }

    #[test]
    fn rows_round_trip() {
        for s in [
            HomeStep::Mkdir {
                rel: "a".into(),
                uid: 1,
                gid: 2,
                mode: 0o755,
            },
            HomeStep::Move {
                from: "a".into(),
                to: "b".into(),
            },
            HomeStep::Xattr {
                rel: "a".into(),
                name: "user.x".into(),
                old: None,
                new: vec![1, 2],
            },
            HomeStep::Rmdir {
                rel: "a".into(),
                uid: 1,
                gid: 2,
                mode: 0o700,
                xattrs: vec![("user.q".into(), vec![9])],
            },
        ] {
            let (rel, target, meta) = s.to_row();
            assert_eq!(
                HomeStep::from_row(s.action(), rel, target, &meta).unwrap(),
                s
            );
        }
    }
}
