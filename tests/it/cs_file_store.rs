//! Real CalendarServer collections (`shared/corpus/cs-file-store`: 2.5's calendar.10, with plain
//! XML attribute values, and HEAD's calendar.10 / calendar.100, zlib values and the collection
//! properties of a 2010 server) with their real extended attributes, made into a 2.x store whose
//! owners got new GUIDs, then plan, apply, verify and rollback through the CLI.
//!
//! The corpus events have no ORGANIZER or ATTENDEE: what changes is where the homes live, the
//! collections' getctag, and one event per collection that names the owners (generated, but
//! carrying the real attributes of a corpus event). Everything else must come out byte for byte,
//! attributes included.

use crate::support::appledouble;
use crate::support::world::{self, assert_same_tree, tree};
use principal_reconciler::store::generate::{event, Person, Rng};
use principal_reconciler::store::{md5_hex, xattrs};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const OWNERS: [&str; 2] = [
    "0B1A7E5C-2E35-4C6B-9F0A-1D2C3B4A5F60",
    "5D4C3B2A-1F0E-4D9C-8B7A-695847362514",
];

fn hashed(guid: &str) -> String {
    format!("calendars/__uids__/{}/{}/{guid}", &guid[0..2], &guid[2..4])
}

fn chown_tree(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
    if p.is_dir() {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            chown_tree(&e.path(), uid, gid);
        }
    }
}

#[test]
fn real_collections_with_their_attributes_survive_plan_apply_and_rollback() {
    let Some(corpus) = crate::support::corpus::dir("cs-file-store") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let probe = tmp.path().join("probe");
    std::fs::write(&probe, b"").unwrap();
    if xattr::set(&probe, "user.probe", b"1").is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "no user.* extended attributes in {} (CI=true)",
            tmp.path().display()
        );
        eprintln!("SKIPPED: no user.* extended attributes");
        return;
    }
    let root = tmp.path().join("Documents");
    let people: Vec<Person> = OWNERS
        .iter()
        .enumerate()
        .map(|(i, g)| Person {
            guid: g.to_string(),
            short_name: format!("user{i:02}"),
            full_name: format!("Owner {i}"),
            email: format!("user{i:02}@example.com"),
        })
        .collect();
    let new_guid: BTreeMap<String, String> = OWNERS
        .iter()
        .map(|g| (g.to_string(), world::renewed(g)))
        .collect();
    // Home 0: HEAD's calendar.100 as `calendar`, HEAD's calendar.10 beside it; home 1: 2.5's
    // calendar.10 (plain XML values).
    let collections = [
        (
            0,
            "HEAD/twistedcaldav/test/data/calendar.100.tgz",
            "calendar",
        ),
        (0, "HEAD/twistedcaldav/test/data/calendar.10.tgz", "work"),
        (
            1,
            "CalendarServer-2.5/twistedcaldav/test/data/calendar.10.tgz",
            "calendar",
        ),
    ];
    let mut real_resources = 0;
    let mut donors = Vec::new();
    for (i, (owner, tgz, name)) in collections.iter().enumerate() {
        let x = appledouble::extract(&corpus.join(tgz), &tmp.path().join(format!("x{i}")));
        // Every file came with its attributes; the names are CalendarServer's, the values read.
        let resources: Vec<&(PathBuf, appledouble::Attrs)> = x
            .attributes
            .iter()
            .filter(|(p, _)| p.extension().is_some_and(|e| e == "ics"))
            .collect();
        assert!(
            resources.len() >= 10,
            "{tgz}: {} resources",
            resources.len()
        );
        for (p, attrs) in &resources {
            let ctype =
                xattrs::property_text(&xattrs::read_all(p).unwrap(), "{DAV:}getcontenttype");
            assert_eq!(
                ctype,
                Some(Some("text/calendar".to_string())),
                "{}: {attrs:?}",
                p.display()
            );
        }
        let coll: Vec<String> = xattrs::read_all(&x.root)
            .unwrap()
            .into_iter()
            .filter_map(|a| a.property())
            .collect();
        assert!(coll.contains(&"{DAV:}resourcetype".to_string()), "{coll:?}");
        if tgz.starts_with("HEAD") {
            assert!(coll.contains(&xattrs::getctag()), "{coll:?}");
        }
        real_resources += resources.len();
        let home = root.join(hashed(OWNERS[*owner]));
        std::fs::create_dir_all(&home).unwrap();
        let dest = home.join(name);
        std::fs::rename(&x.root, &dest).unwrap();
        donors.push((dest, resources[0].1.clone(), *owner));
    }
    // One event per collection naming the owners, with a corpus event's real attributes.
    let mut rng = Rng::new(40);
    let mut generated = Vec::new();
    for (k, (dir, attrs, owner)) in donors.iter().enumerate() {
        let uid = format!("generated-{k}");
        let text = event(&mut rng, &uid, *owner, &people, "example.com");
        let p = dir.join(format!("{uid}.ics"));
        std::fs::write(&p, &text).unwrap();
        for (n, v) in attrs {
            xattr::set(&p, n, v).unwrap();
        }
        generated.push(p);
    }
    chown_tree(&root, 501, 20);
    std::fs::write(tmp.path().join("new.ldif"), world::ldif(&people, &new_guid)).unwrap();
    std::fs::write(tmp.path().join("old.txt"), world::dsexport(&people)).unwrap();
    let config = tmp.path().join("c.toml");
    std::fs::write(
        &config,
        "[directory]\nldif = \"new.ldif\"\n\n[old_directory]\nfiles = [\"old.txt\"]\n\n[store]\nkind = \"calendarserver-fs\"\npath = \"Documents\"\n\n[rewrite]\ninternal_domains = [\"example.com\"]\n\n[state]\npath = \"state\"\n\n[report]\ndir = \"reports\"\n",
    )
    .unwrap();
    let cmd = || {
        let mut c = assert_cmd::Command::cargo_bin("principal-reconciler").unwrap();
        c.arg("--config").arg(&config).arg("--no-progress");
        c
    };
    let before = tree(&root);
    let ctags = |home: &Path| -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(home).unwrap().flatten() {
            for a in xattrs::read_all(&e.path()).unwrap() {
                if a.property().as_deref() == Some(xattrs::getctag().as_str()) {
                    v.push(a.value);
                }
            }
        }
        v
    };
    let ctags_before = ctags(&root.join(hashed(OWNERS[0])));

    let out = cmd().args(["--json", "plan"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let plan = &doc["plan"];
    assert_eq!(
        plan["resources_scanned"].as_u64().unwrap() as usize,
        real_resources + generated.len()
    );
    assert_eq!(
        plan["resources_changed"].as_u64().unwrap() as usize,
        generated.len(),
        "only the events naming the owners change: {plan}"
    );
    assert_eq!(plan["homes"]["moved"], 2, "{plan}");
    assert_eq!(plan["problems"].as_array().unwrap().len(), 0, "{plan}");

    cmd().arg("apply").assert().code(0);
    // Every real file at its new home, bytes and attributes as they were.
    let moved = |rel: &str| -> String {
        let mut r = rel.to_string();
        for (old, new) in &new_guid {
            r = r.replace(&hashed(old), &hashed(new));
        }
        r
    };
    let after = tree(&root);
    let generated_rel: Vec<String> = generated
        .iter()
        .map(|p| {
            p.strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let mut compared = 0;
    for (rel, entry) in &before {
        if generated_rel.contains(rel) || !rel.contains("__uids__/") || rel.matches('/').count() < 5
        {
            continue; // the hashed folders themselves are made and removed by the move
        }
        let now = after
            .get(&moved(rel))
            .unwrap_or_else(|| panic!("{rel} is not at {}", moved(rel)));
        assert_eq!(now, entry, "{rel}: bytes, owner, mode and attributes kept");
        compared += 1;
    }
    assert!(compared > real_resources, "{compared} entries compared");
    // The collections got new ctags (under the names they had), so clients re-sync.
    let ctags_after = ctags(&root.join(hashed(&new_guid[OWNERS[0]])));
    assert_eq!(ctags_after.len(), ctags_before.len());
    assert!(ctags_after.iter().all(|c| !ctags_before.contains(c)));
    // The generated events: rewritten, their real attributes kept, an MD5 attribute added.
    for rel in &generated_rel {
        let p = root.join(moved(rel));
        let text = std::fs::read_to_string(&p).unwrap();
        let unfolded = text.replace("\r\n ", "");
        for new in new_guid.values() {
            assert!(unfolded.contains(new.as_str()), "{rel}: {text}");
        }
        let attrs = xattrs::read_all(&p).unwrap();
        let (_, _, _, _, was) = &before[rel];
        for (n, v) in was {
            assert!(
                attrs.iter().any(|a| &a.name == n && &a.value == v),
                "{rel}: {n} kept"
            );
        }
        assert_eq!(
            xattrs::property_text(&attrs, &xattrs::getcontentmd5()),
            Some(Some(md5_hex(text.as_bytes())))
        );
    }
    // Nothing left to decide: the corpus resources without getcontentmd5 are notes, not problems.
    cmd()
        .arg("verify")
        .assert()
        .code(0)
        .stdout(predicates::str::contains("no problems"));

    cmd().arg("rollback").assert().code(0);
    assert_same_tree(&tree(&root), &before, "rollback of real collections");
}
