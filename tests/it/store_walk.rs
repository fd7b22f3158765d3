//! The store walker over generated CalendarServer 2.x stores and .ics folders.

use principal_reconciler::config::{StoreConfig, StoreKind};
use principal_reconciler::finding::Finding;
use principal_reconciler::store::generate::StoreBuilder;
use principal_reconciler::store::{self, HomeLayout, Item, Resource};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn cfg(root: &Path, kind: StoreKind) -> StoreConfig {
    StoreConfig {
        kind,
        path: root.to_path_buf(),
        owner: None,
        xattr_prefix: None,
        data_root: None,
        addressbook_root: None,
        ..Default::default()
    }
}

struct Walked {
    homes: Vec<store::Home>,
    resources: Vec<Resource>,
    problems: Vec<Finding>,
}

fn walk_all(c: &StoreConfig) -> Walked {
    let mut w = Walked {
        homes: vec![],
        resources: vec![],
        problems: vec![],
    };
    let bar = Counted::default();
    store::walk(
        c,
        &bar,
        |res, bytes| {
            // map sees exactly the resource's bytes
            assert_eq!(hex::encode(Sha256::digest(bytes)), res.sha256);
            bytes.len()
        },
        |item| {
            match item {
                Item::Home(h) => w.homes.push(h),
                Item::Resource(r, n) => {
                    assert_eq!(n as u64, r.size);
                    w.resources.push(r)
                }
                Item::Problem(p) => w.problems.push(p),
            }
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(
        bar.0.load(std::sync::atomic::Ordering::Relaxed),
        (w.resources.len() + w.problems.iter().filter(|p| p.kind == "unreadable").count()) as u64
    );
    w
}

/// A progress bar that counts what the walker reports.
#[derive(Default)]
struct Counted(std::sync::atomic::AtomicU64);

impl principal_reconciler::progress::Bar for Counted {
    fn inc(&self, n: u64) {
        self.0.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
    fn finish(&self) {}
}

/// Root can set user.* attributes here? The tests that need them say so loudly when not.
pub fn user_xattrs_supported(dir: &Path) -> bool {
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

#[test]
fn walks_every_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("Documents");
    let xattrs = user_xattrs_supported(tmp.path());
    let mut b = StoreBuilder::new(&root)
        .seed(3)
        .homes(4)
        .resources(57)
        .flat_uids_homes(1)
        .users_homes(2);
    if !xattrs {
        b = b.without_xattrs();
    }
    let g = b.build().unwrap();
    let w = walk_all(&cfg(&root, StoreKind::CalendarserverFs));
    assert!(w.problems.is_empty(), "{:?}", w.problems);
    let mut by_layout: BTreeMap<String, usize> = BTreeMap::new();
    for h in &w.homes {
        *by_layout.entry(format!("{:?}", h.layout)).or_default() += 1;
    }
    assert_eq!(by_layout.get("Hashed"), Some(&4));
    assert_eq!(by_layout.get("FlatUids"), Some(&1));
    assert_eq!(by_layout.get("Users"), Some(&2));
    let ids: BTreeSet<String> = w.homes.iter().map(|h| h.id.clone()).collect();
    let expected: BTreeSet<String> = g.homes.iter().map(|h| h.id.clone()).collect();
    assert_eq!(ids, expected);
    for h in &w.homes {
        match h.layout {
            HomeLayout::Hashed => assert_eq!(
                h.rel_path,
                format!(
                    "calendars/__uids__/{}/{}/{}",
                    &h.id[0..2],
                    &h.id[2..4],
                    h.id
                )
            ),
            HomeLayout::FlatUids => assert_eq!(h.rel_path, format!("calendars/__uids__/{}", h.id)),
            HomeLayout::Users => assert_eq!(h.rel_path, format!("calendars/users/{}", h.id)),
        }
    }
    assert_eq!(w.resources.len() as u64, g.resources);
    let paths: BTreeSet<&str> = w.resources.iter().map(|r| r.rel_path.as_str()).collect();
    assert_eq!(paths.len(), w.resources.len(), "each resource exactly once");
    for r in &w.resources {
        let home = r.home.as_ref().expect("every resource has its home");
        assert!(
            r.rel_path
                .starts_with(&format!("{}/{}/", home.rel_path, r.collection)),
            "{}",
            r.rel_path
        );
        assert!(r.rel_path.ends_with(".ics"));
        let bytes = std::fs::read(&r.path).unwrap();
        assert_eq!(r.size, bytes.len() as u64);
        assert_eq!(r.sha256, hex::encode(Sha256::digest(&bytes)));
        assert_eq!(
            r.mode,
            std::fs::metadata(&r.path).unwrap().permissions().mode() & 0o7777
        );
        if xattrs {
            let md5 = r
                .xattrs
                .iter()
                .find(|x| {
                    x.property().as_deref()
                        == Some("{http://twistedmatrix.com/xml_namespace/dav/}getcontentmd5")
                })
                .expect("getcontentmd5 attribute");
            assert!(md5.name.starts_with("user.{http:%2F%2F"), "{}", md5.name);
            let text = String::from_utf8(md5.decoded_value()).unwrap();
            assert!(text.contains(&store::md5_hex(&bytes)), "{text}");
        }
    }
    // Collections seen: calendar and inbox at least, plus the extra calendars of some homes.
    let colls: BTreeSet<&str> = w.resources.iter().map(|r| r.collection.as_str()).collect();
    assert!(
        colls.contains("calendar") && colls.contains("inbox"),
        "{colls:?}"
    );
    // .db.sqlite and other dot files are never resources.
    assert!(w.resources.iter().all(|r| !r.rel_path.contains("/.")));
}

#[test]
fn accepts_the_calendars_folder_itself_as_root() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("Documents");
    StoreBuilder::new(&root)
        .homes(2)
        .resources(5)
        .without_xattrs()
        .build()
        .unwrap();
    let w = walk_all(&cfg(&root.join("calendars"), StoreKind::CalendarserverFs));
    assert_eq!(w.resources.len(), 5);
    assert!(w.resources[0].rel_path.starts_with("__uids__/"));
}

#[test]
fn rejects_a_folder_that_is_not_a_store() {
    let tmp = tempfile::tempdir().unwrap();
    let bar = principal_reconciler::progress::NoBar;
    let err = store::walk(
        &cfg(tmp.path(), StoreKind::CalendarserverFs),
        &bar,
        |_, _| (),
        |_| Ok(()),
    )
    .unwrap_err();
    assert!(
        err.message.contains("no calendars/ folder"),
        "{}",
        err.message
    );
    assert_eq!(
        err.exit_status(),
        principal_reconciler::error::ExitStatus::Usage
    );
    std::fs::create_dir(tmp.path().join("real")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("real"), tmp.path().join("calendars")).unwrap();
    let err = store::walk(
        &cfg(tmp.path(), StoreKind::CalendarserverFs),
        &bar,
        |_, _| (),
        |_| Ok(()),
    )
    .unwrap_err();
    assert!(err.message.contains("symbolic link"), "{}", err.message);
    let err = store::walk(
        &cfg(&tmp.path().join("nope"), StoreKind::IcsDir),
        &bar,
        |_, _| (),
        |_| Ok(()),
    )
    .unwrap_err();
    assert!(err.message.contains("nope"), "{}", err.message);
}

#[test]
fn symlinks_are_reported_never_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("Documents");
    let g = StoreBuilder::new(&root)
        .homes(2)
        .resources(6)
        .without_xattrs()
        .symlinks()
        .build()
        .unwrap();
    assert_eq!(g.symlinks.len(), 2);
    let w = walk_all(&cfg(&root, StoreKind::CalendarserverFs));
    assert_eq!(w.resources.len(), 6, "nothing read through a symlink");
    let links: Vec<&Finding> = w.problems.iter().filter(|p| p.kind == "symlink").collect();
    assert_eq!(links.len(), 2, "{:?}", w.problems);
    let out = links
        .iter()
        .find(|p| p.path.ends_with("calendar/outside.ics"))
        .expect("file symlink reported");
    assert!(
        out.detail.contains("/etc/hostname") && out.detail.contains("outside the store"),
        "{}",
        out.detail
    );
    assert!(links.iter().any(|p| p.path.ends_with("/linked")));
    assert!(w
        .resources
        .iter()
        .all(|r| !r.rel_path.contains("linked") && !r.rel_path.ends_with("outside.ics")));
}

#[test]
fn a_folder_named_like_a_resource_is_unreadable() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("Documents");
    StoreBuilder::new(&root)
        .homes(1)
        .resources(3)
        .without_xattrs()
        .unreadable()
        .build()
        .unwrap();
    let w = walk_all(&cfg(&root, StoreKind::CalendarserverFs));
    assert_eq!(w.resources.len(), 3);
    assert_eq!(w.problems.len(), 1, "{:?}", w.problems);
    assert_eq!(w.problems[0].kind, "unreadable");
    assert!(w.problems[0].path.ends_with("calendar/broken.ics"));
    assert!(
        w.problems[0].detail.contains("is a folder"),
        "{}",
        w.problems[0].detail
    );
}

#[test]
fn a_fifo_named_like_a_resource_does_not_hang_the_walk() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("Documents");
    let g = StoreBuilder::new(&root)
        .homes(1)
        .resources(2)
        .without_xattrs()
        .build()
        .unwrap();
    let fifo = g.homes[0].path.join("calendar/pipe.ics");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let w = walk_all(&cfg(&root, StoreKind::CalendarserverFs));
    assert_eq!(w.resources.len(), 2);
    assert_eq!(w.problems.len(), 1);
    assert!(
        w.problems[0].detail.contains("not a regular file"),
        "{}",
        w.problems[0].detail
    );
}

#[test]
fn ics_dir_walks_any_folder_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("export");
    StoreBuilder::ics_dir(&root)
        .homes(3)
        .resources(10)
        .build()
        .unwrap();
    std::fs::write(
        root.join("top.ics"),
        b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n",
    )
    .unwrap();
    std::fs::create_dir_all(root.join(".Radicale.cache/item")).unwrap();
    std::fs::write(root.join(".Radicale.cache/item/x.ics"), b"cache").unwrap();
    std::fs::write(root.join("user00/calendar/.hidden.ics"), b"x").unwrap();
    std::fs::write(root.join("user00/calendar/notes.txt"), b"x").unwrap();
    let w = walk_all(&cfg(&root, StoreKind::IcsDir));
    assert!(w.homes.is_empty());
    assert_eq!(w.resources.len(), 11);
    assert!(w.resources.iter().all(|r| r.home.is_none()));
    let top = w
        .resources
        .iter()
        .find(|r| r.rel_path == "top.ics")
        .unwrap();
    assert_eq!(top.collection, "export");
    assert!(w
        .resources
        .iter()
        .filter(|r| r.rel_path != "top.ics")
        .all(|r| r.collection == "calendar"));
}

#[test]
fn sink_error_stops_the_walk() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("Documents");
    StoreBuilder::new(&root)
        .homes(2)
        .resources(3000)
        .without_xattrs()
        .build()
        .unwrap();
    let bar = principal_reconciler::progress::NoBar;
    let mut seen = 0;
    let err = store::walk(
        &cfg(&root, StoreKind::CalendarserverFs),
        &bar,
        |_, _| (),
        |item| {
            if let Item::Resource(..) = item {
                seen += 1;
                if seen == 10 {
                    return Err(principal_reconciler::error::Error::runtime("stop here"));
                }
            }
            Ok(())
        },
    )
    .unwrap_err();
    assert_eq!(err.message, "stop here");
    assert_eq!(seen, 10);
}

#[test]
fn generator_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let a = StoreBuilder::new(tmp.path().join("a"))
        .seed(9)
        .homes(3)
        .resources(20)
        .without_xattrs()
        .build()
        .unwrap();
    let b = StoreBuilder::new(tmp.path().join("b"))
        .seed(9)
        .homes(3)
        .resources(20)
        .without_xattrs()
        .build()
        .unwrap();
    let list = |root: &Path| {
        let w = walk_all(&cfg(root, StoreKind::CalendarserverFs));
        w.resources
            .iter()
            .map(|r| (r.rel_path.clone(), r.sha256.clone()))
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(a.people, b.people);
    assert_eq!(list(&a.root), list(&b.root));
}

#[test]
fn a_home_under_the_wrong_hash_folders_is_reported_and_still_read() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("Documents");
    let g = StoreBuilder::new(&root)
        .homes(2)
        .resources(6)
        .without_xattrs()
        .build()
        .unwrap();
    let home = &g.homes[0].path;
    let wrong = root.join("calendars/__uids__/00/00").join(&g.homes[0].id);
    std::fs::create_dir_all(wrong.parent().unwrap()).unwrap();
    std::fs::rename(home, &wrong).unwrap();
    let w = walk_all(&cfg(&root, StoreKind::CalendarserverFs));
    assert_eq!(w.resources.len(), 6);
    assert_eq!(w.homes.len(), 2);
    assert_eq!(w.problems.len(), 1, "{:?}", w.problems);
    assert_eq!(w.problems[0].kind, "misplaced-home");
    assert!(
        w.problems[0].detail.contains("under 00/00/"),
        "{}",
        w.problems[0].detail
    );
}
