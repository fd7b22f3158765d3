//! Safe writes: owner, mode and attributes kept, MD5 and ctag updated, concurrent changes refused.

use principal_reconciler::store::generate::StoreBuilder;
use principal_reconciler::store::xattrs;
use principal_reconciler::store::{self, FileMeta, WriteError, WriteOptions};
use sha2::{Digest, Sha256};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

fn user_xattrs_supported(dir: &Path) -> bool {
    let p = dir.join(".xattr-probe");
    std::fs::write(&p, b"x").unwrap();
    let ok = xattr::set(&p, "user.probe", b"1").is_ok();
    std::fs::remove_file(&p).unwrap();
    if !ok {
        eprintln!(
            "!!! {} does not support user.* extended attributes: attribute checks are SKIPPED",
            dir.display()
        );
    }
    ok
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// A generated store owned by 501:20, and one resource in it with a raw attribute besides the
/// properties 2.5 writes (the generator puts it on the first event of a home).
fn setup(tmp: &Path, xattrs: bool) -> (PathBuf, PathBuf) {
    let root = tmp.join("Documents");
    let mut b = StoreBuilder::new(&root)
        .seed(5)
        .homes(1)
        .resources(12)
        .owner(501, 20);
    if !xattrs {
        b = b.without_xattrs();
    }
    let g = b.build().unwrap();
    let cal = g.homes[0].path.join("calendar");
    let mut pick = None;
    for e in std::fs::read_dir(&cal).unwrap() {
        let p = e.unwrap().path();
        if !p.to_string_lossy().ends_with(".ics") {
            continue;
        }
        let names: Vec<String> = xattr::list(&p)
            .unwrap()
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        if !xattrs
            || (names.iter().any(|n| n.ends_with("test.raw"))
                && names
                    .iter()
                    .any(|n| n.contains("scheduling-object-resource")))
        {
            pick = Some(p);
            break;
        }
    }
    let p = pick.expect("a resource with both attributes");
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    (cal, p)
}

fn attr_map(p: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    xattrs::read_all(p)
        .unwrap()
        .into_iter()
        .map(|x| (x.name, x.value))
        .collect()
}

#[test]
fn write_keeps_owner_mode_attributes_and_updates_md5_and_ctag() {
    let tmp = tempfile::tempdir().unwrap();
    let xa = user_xattrs_supported(tmp.path());
    let (cal, p) = setup(tmp.path(), xa);
    let old = std::fs::read(&p).unwrap();
    let before = attr_map(&p);
    let ctag_before = attr_map(&cal);
    let index = cal.join(".db.sqlite");
    let index_bytes = std::fs::read(&index).unwrap();
    let index_meta = std::fs::metadata(&index).unwrap();
    let new = String::from_utf8(old.clone())
        .unwrap()
        .replace("SEQUENCE:", "X-TEST:1\r\nSEQUENCE:");
    assert_ne!(new.as_bytes(), &old[..]);

    let w =
        store::write_resource(&p, &sha(&old), new.as_bytes(), &WriteOptions::default()).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), new.as_bytes());
    assert_eq!(w.old_sha256, sha(&old));
    assert_eq!(w.new_sha256, sha(new.as_bytes()));
    let m = std::fs::symlink_metadata(&p).unwrap();
    assert_eq!(
        (m.uid(), m.gid(), m.mode() & 0o7777),
        (501, 20, 0o640),
        "owner and mode kept (we run as root)"
    );
    // no temp file left behind
    let leftovers: Vec<_> = std::fs::read_dir(&cal)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .ends_with(".principal-reconciler.tmp")
        })
        .collect();
    assert!(leftovers.is_empty());
    // index untouched
    assert_eq!(std::fs::read(&index).unwrap(), index_bytes);
    let im = std::fs::metadata(&index).unwrap();
    assert_eq!(
        (im.ino(), im.mtime(), im.mtime_nsec()),
        (
            index_meta.ino(),
            index_meta.mtime(),
            index_meta.mtime_nsec()
        )
    );
    if !xa {
        return;
    }
    let after = attr_map(&p);
    let md5_name = "user.{http:%2F%2Ftwistedmatrix.com%2Fxml_namespace%2Fdav%2F}getcontentmd5";
    let private = "user.{http:%2F%2Ftwistedmatrix.com%2Fxml_namespace%2Fdav%2Fprivate%2F}";
    let sched = format!("{private}scheduling-object-resource");
    let etags = format!("{private}scheduling-match-etags");
    let tag = "user.{urn:ietf:params:xml:ns:caldav}schedule-tag";
    for k in [&sched, &etags, &md5_name.to_string(), &tag.to_string()] {
        assert!(before.contains_key(k), "the generator writes {k}");
    }
    assert_eq!(
        after[&sched], before[&sched],
        "scheduling-object-resource kept"
    );
    assert_eq!(after[tag], before[tag], "schedule-tag kept");
    // The ETag list names the new bytes alone, in the encoding and shape it had.
    let list = String::from_utf8(xattrs::decode_value(&after[&etags])).unwrap();
    let old_list = String::from_utf8(xattrs::decode_value(&before[&etags])).unwrap();
    assert_eq!(
        principal_reconciler::store::props::match_etags(&after[&etags]).unwrap(),
        [store::md5_hex(new.as_bytes())]
    );
    assert!(old_list.starts_with(&list[..list.find("<getetag").unwrap()]));
    assert!(
        list.ends_with("</getetag></scheduling-match-etags>\r\n"),
        "{list}"
    );
    let md5_xml = String::from_utf8(xattrs::decode_value(&after[md5_name])).unwrap();
    assert_eq!(
        md5_xml,
        format!(
            "<?xml version='1.0' encoding='UTF-8'?>\r\n<getcontentmd5 xmlns='http://twistedmatrix.com/xml_namespace/dav/'>{}</getcontentmd5>\r\n",
            store::md5_hex(new.as_bytes())
        )
    );
    assert_eq!(w.new_md5, store::md5_hex(new.as_bytes()));
    // Every other attribute byte for byte, the raw non-zlib one included.
    for (k, v) in &before {
        if k != md5_name && *k != etags {
            assert_eq!(after.get(k), Some(v), "attribute {k} kept");
        }
    }
    assert_eq!(after.len(), before.len());
    assert!(after.keys().any(|k| k.ends_with("test.raw")));
    // ctag changed, same attribute name, and it is what the write said
    let ctag_name = "user.{http:%2F%2Fcalendarserver.org%2Fns%2F}getctag";
    let ctag_after = attr_map(&cal);
    assert_ne!(ctag_after[ctag_name], ctag_before[ctag_name]);
    assert_eq!(
        xattrs::text_of(&xattrs::decode_value(&ctag_after[ctag_name])).unwrap(),
        w.ctag
    );
    for (k, v) in &ctag_before {
        if k != ctag_name {
            assert_eq!(ctag_after.get(k), Some(v), "collection attribute {k} kept");
        }
    }
    let m = std::fs::metadata(&cal).unwrap();
    assert_eq!((m.uid(), m.gid()), (501, 20), "collection owner kept");

    // A second write gives yet another ctag.
    let w2 =
        store::write_resource(&p, &sha(new.as_bytes()), &old, &WriteOptions::default()).unwrap();
    assert_ne!(w2.ctag, w.ctag);
}

#[test]
fn concurrent_change_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let xa = user_xattrs_supported(tmp.path());
    let (cal, p) = setup(tmp.path(), xa);
    let planned = std::fs::read(&p).unwrap();
    let ctag_before = attr_map(&cal);
    // someone (the server, a client) changes it after the plan
    let theirs = [planned.clone(), b"X".to_vec()].concat();
    std::fs::write(&p, &theirs).unwrap();
    let err =
        store::write_resource(&p, &sha(&planned), b"ours", &WriteOptions::default()).unwrap_err();
    match &err {
        WriteError::Changed {
            expected, found, ..
        } => {
            assert_eq!(expected, &sha(&planned));
            assert_eq!(found, &sha(&theirs));
        }
        other => panic!("expected Changed, got {other}"),
    }
    assert!(
        err.to_string().contains("changed since it was planned"),
        "{err}"
    );
    assert!(err.to_string().contains("re-run plan"), "{err}");
    assert_eq!(std::fs::read(&p).unwrap(), theirs, "their change kept");
    assert_eq!(attr_map(&cal), ctag_before, "ctag untouched");
    // The simple API says the same.
    let e = store::safe_write(&p, &sha(&planned), b"ours").unwrap_err();
    assert!(
        e.message.contains("changed since it was planned"),
        "{}",
        e.message
    );
}

#[test]
fn write_refuses_a_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("target.ics");
    std::fs::write(&target, b"x").unwrap();
    let link = tmp.path().join("link.ics");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let err = store::write_resource(&link, &sha(b"x"), b"y", &WriteOptions::default()).unwrap_err();
    assert!(matches!(err, WriteError::Failed(_)), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), b"x");
}

#[test]
fn filemeta_snapshot_and_restore_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let xa = user_xattrs_supported(tmp.path());
    let (cal, p) = setup(tmp.path(), xa);
    let bytes = std::fs::read(&p).unwrap();
    let meta = FileMeta::of(&p).unwrap();
    assert_eq!((meta.uid, meta.gid, meta.mode), (501, 20, 0o640));
    // apply-like change
    store::write_resource(
        &p,
        &sha(&bytes),
        b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n",
        &WriteOptions::default(),
    )
    .unwrap();
    std::os::unix::fs::chown(&p, Some(0), Some(0)).unwrap();
    let ctag_before = attr_map(&cal);
    store::restore(&p, &bytes, &meta).unwrap();
    if xa {
        // clients that synced the rewritten bytes must see the collection change again
        let name = "user.{http:%2F%2Fcalendarserver.org%2Fns%2F}getctag";
        assert_ne!(attr_map(&cal).get(name), ctag_before.get(name));
    }
    assert_eq!(std::fs::read(&p).unwrap(), bytes);
    assert_eq!(
        FileMeta::of(&p).unwrap(),
        meta,
        "owner, mode and every attribute restored"
    );
    // restore also recreates a deleted file
    std::fs::remove_file(&p).unwrap();
    store::restore(&p, &bytes, &meta).unwrap();
    assert_eq!(FileMeta::of(&p).unwrap(), meta);
}
