//! Dropbox attachments follow their home through the CLI: an organizer's event with a dropbox
//! attachment and the attendees' copies, the organizer's home adopted to a new GUID (merged into
//! the home the server already made, which has a dropbox of its own): plan, apply, verify and
//! rollback.

use crate::support::world::{assert_same_tree, tree, World};
use principal_reconciler::ical;
use std::path::{Path, PathBuf};

fn hashed(root: &Path, guid: &str) -> PathBuf {
    root.join(format!(
        "calendars/__uids__/{}/{}/{guid}",
        &guid[0..2],
        &guid[2..4]
    ))
}

/// Writes `bytes` (creating folders), everything owned by the calendar service account.
fn put(root: &Path, path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
    let mut p = path.to_path_buf();
    while p != root {
        std::os::unix::fs::chown(&p, Some(501), Some(20)).unwrap();
        p = p.parent().unwrap().to_path_buf();
    }
}

/// One event with a dropbox attachment, as iCal 4 writes it (lines longer than 75 octets folded).
fn event(uid: &str, org: &str, attendees: &[&str], links: &[String], eol: &str) -> Vec<u8> {
    let mut lines = vec![
        "BEGIN:VCALENDAR".to_string(),
        "VERSION:2.0".into(),
        "PRODID:-//Apple Inc.//iCal 4.0.4//EN".into(),
        "BEGIN:VEVENT".into(),
        format!("UID:{uid}"),
        "DTSTART:20100310T100000Z".into(),
        "DTEND:20100310T110000Z".into(),
        "SUMMARY:Budget review (agenda attached)".into(),
        format!("ORGANIZER;CN=Old Name:urn:uuid:{org}"),
    ];
    for a in attendees {
        lines.push(format!(
            "ATTENDEE;CUTYPE=INDIVIDUAL;PARTSTAT=ACCEPTED:urn:uuid:{a}"
        ));
    }
    lines.extend(links.iter().cloned());
    lines.extend([
        "X-UNKNOWN;X-ODD=\"keep:me\":as written".into(),
        "END:VEVENT".into(),
        "END:VCALENDAR".into(),
    ]);
    let mut out = String::new();
    for l in lines {
        principal_reconciler::store::generate::fold_line(&mut out, &l);
    }
    out.replace("\r\n", eol).into_bytes()
}

/// The file a `/calendars/__uids__/<GUID>/...` URL (or path) names in the store.
fn on_disk(root: &Path, value: &str) -> PathBuf {
    let path = &value[value.find("/calendars/").unwrap()..];
    let rest = path.strip_prefix("/calendars/__uids__/").unwrap();
    let (guid, tail) = rest.split_once('/').unwrap();
    hashed(root, guid).join(tail.replace("%20", " "))
}

const UID: &str = "5D3A0F4C-1D7B-4E8A-9C2E-D50B0C000001";

fn json(w: &World, args: &[&str]) -> (i32, serde_json::Value) {
    let out = w.cmd().arg("--json").args(args).output().unwrap();
    let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), doc)
}

#[test]
fn dropbox_links_follow_the_adopted_home_and_roll_back() {
    let w = World::new(3, 12, 41);
    let root = w.store.root.clone();
    let [org, a1, a2] = [0, 1, 2].map(|i| w.store.people[i].guid.clone());
    let org_short = w.store.people[0].short_name.clone();
    let new_org = w.new_guid[&org].clone();
    let link = |host: &str, guid: &str, file: &str| {
        format!("ATTACH;VALUE=URI:{host}/calendars/__uids__/{guid}/dropbox/EV1.dropbox/{file}")
    };
    let dropbox = format!("X-APPLE-DROPBOX:/calendars/__uids__/{org}/dropbox/EV1.dropbox");
    let links = vec![
        link("http://cal.example.com:8008", &org, "agenda%20Q1.pdf"),
        // A 1.x URL of the same home, by short name.
        format!("ATTACH:http://cal.example.com:8008/calendars/users/{org_short}/dropbox/EV1.dropbox/minutes.txt"),
        dropbox.clone(),
        // Inline data is never a link.
        "ATTACH;ENCODING=BASE64;VALUE=BINARY;FMTTYPE=text/plain:aGVsbG8=".into(),
    ];
    let organizer_copy = hashed(&root, &org).join("calendar/budget.ics");
    put(
        &root,
        &organizer_copy,
        &event(UID, &org, &[&org, &a1, &a2], &links, "\r\n"),
    );
    // Attendee copies point at the organizer's dropbox (another host name of the server, LF).
    let a1_copy = hashed(&root, &a1).join("calendar/budget.ics");
    put(
        &root,
        &a1_copy,
        &event(
            UID,
            &org,
            &[&org, &a1, &a2],
            &[
                link("https://calendar.example.com:8443", &org, "agenda%20Q1.pdf"),
                dropbox.clone(),
            ],
            "\n",
        ),
    );
    let a2_invite = hashed(&root, &a2).join("inbox/invite-budget.ics");
    put(
        &root,
        &a2_invite,
        &event(UID, &org, &[&org, &a1, &a2], &links[..1], "\r\n"),
    );
    // A link into a home this store never had: left alone, reported by verify.
    let stray = hashed(&root, &a2).join("calendar/stray.ics");
    put(
        &root,
        &stray,
        &event(
            "stray",
            &a2,
            &[&a2],
            &["X-APPLE-DROPBOX:/calendars/__uids__/DEADBEEF-0000-4000-8000-000000000000/dropbox/X.dropbox".into()],
            "\r\n",
        ),
    );
    let old_box = hashed(&root, &org).join("dropbox/EV1.dropbox");
    put(&root, &old_box.join("agenda Q1.pdf"), b"%PDF-1.4 agenda");
    put(&root, &old_box.join("minutes.txt"), b"minutes");
    // The organizer logged in after the rebuild: the server made a home with a dropbox.
    let new_home = hashed(&root, &new_org);
    put(&root, &new_home.join("dropbox/NEW.dropbox/x.txt"), b"new");
    std::fs::create_dir_all(new_home.join("calendar")).unwrap();
    std::os::unix::fs::chown(new_home.join("calendar"), Some(501), Some(20)).unwrap();
    let before = tree(&root);
    let originals = [&organizer_copy, &a1_copy, &a2_invite].map(|p| std::fs::read(p).unwrap());

    let (code, doc) = json(&w, &["plan"]);
    assert_eq!(code, 0, "{doc}");
    let changes = std::fs::read_to_string(w.path("reports/changes.csv")).unwrap();
    let rel = |p: &Path| {
        p.strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    let link_rows: Vec<&str> = changes
        .lines()
        .filter(|l| l.contains(",X-APPLE-DROPBOX,") || l.contains(",ATTACH,"))
        .collect();
    assert_eq!(link_rows.len(), 3 + 2 + 1, "{link_rows:#?}");
    for r in &link_rows {
        assert!(
            r.contains(&format!(
                "/calendars/__uids__/{new_org}/dropbox/EV1.dropbox"
            )),
            "{r}"
        );
        assert!(!r.contains(&rel(&stray)), "{r}");
    }
    assert!(std::fs::read_to_string(w.path("reports/report.html"))
        .unwrap()
        .contains("Dropbox links (6)"));

    let (code, doc) = json(&w, &["apply"]);
    assert_eq!(code, 0, "{doc}");
    // Merged into the existing dropbox, not renamed beside it.
    assert!(!new_home.join("dropbox-migrated").exists());
    assert!(new_home.join("dropbox/NEW.dropbox/x.txt").is_file());
    assert!(
        !hashed(&root, &org).exists(),
        "the emptied old home is removed"
    );
    // Every link of every copy (now in the adopted homes) resolves to what is on disk.
    let org_now = new_home.join("calendar-migrated/budget.ics");
    let a1_now = hashed(&root, &w.new_guid[&a1]).join("calendar/budget.ics");
    let a2_now = hashed(&root, &w.new_guid[&a2]).join("inbox/invite-budget.ics");
    for (old, now, links) in [
        (&originals[0], &org_now, 3),
        (&originals[1], &a1_now, 2),
        (&originals[2], &a2_now, 1),
    ] {
        let bytes = std::fs::read(now).unwrap();
        let info = ical::scan(&bytes).unwrap();
        assert_eq!(info.links.len(), links, "{}", now.display());
        for l in &info.links {
            assert!(
                l.value.contains(&format!(
                    "/calendars/__uids__/{new_org}/dropbox/EV1.dropbox"
                )),
                "{l:?}"
            );
            let target = on_disk(&root, &l.value);
            if l.property == "ATTACH" {
                assert!(target.is_file(), "{} for {l:?}", target.display());
            } else {
                assert!(target.is_dir(), "{} for {l:?}", target.display());
            }
        }
        // Only address and link lines changed; every other byte (folding, line ends) as before.
        let (b, a) = (
            ical::line::unfold(old).unwrap(),
            ical::line::unfold(&bytes).unwrap(),
        );
        assert_eq!(b.len(), a.len());
        for ((bi, bl), (ai, _)) in b.iter().zip(&a) {
            let text = String::from_utf8_lossy(bl);
            let may = ["ORGANIZER", "ATTENDEE", "X-APPLE-DROPBOX", "ATTACH"]
                .iter()
                .any(|p| text.starts_with(p))
                && !text.contains("BASE64");
            if may {
                assert_eq!(bi.eol, ai.eol, "{text}");
            } else {
                assert_eq!(old[bi.start..bi.end], bytes[ai.start..ai.end], "{text}");
            }
        }
    }
    // verify: the stray link is the only problem left.
    let (code, doc) = json(&w, &["verify"]);
    assert_eq!(code, 1, "{doc}");
    let v = &doc["verify"];
    assert_eq!(
        v["by_kind"],
        serde_json::json!({ "dropbox-home-missing": 1 }),
        "{v}"
    );
    assert!(v["problems"][0]["path"]
        .as_str()
        .unwrap()
        .starts_with(&format!(
            "{}:",
            rel(&hashed(&root, &w.new_guid[&a2]).join("calendar/stray.ics"))
        )));

    let (code, doc) = json(&w, &["rollback"]);
    assert_eq!(code, 0, "{doc}");
    assert_same_tree(&tree(&root), &before, "rollback");
}

#[test]
fn dropboxes_of_1x_layouts_move_with_their_homes() {
    use principal_reconciler::store::generate::StoreBuilder;
    let w = World::with(|root| {
        StoreBuilder::new(root)
            .homes(1)
            .flat_uids_homes(1)
            .users_homes(1)
            .resources(9)
            .seed(42)
            .owner(501, 20)
    });
    let root = w.store.root.clone();
    let flat = &w.store.people[1];
    let users = &w.store.people[2];
    let flat_home = root.join(format!("calendars/__uids__/{}", flat.guid));
    let users_home = root.join(format!("calendars/users/{}", users.short_name));
    assert!(flat_home.is_dir() && users_home.is_dir());
    let flat_links = vec![
        format!("X-APPLE-DROPBOX:/calendars/__uids__/{}/dropbox/F.dropbox", flat.guid),
        format!(
            "ATTACH;VALUE=URI:http://cal.example.com:8008/calendars/__uids__/{}/dropbox/F.dropbox/a.txt",
            flat.guid
        ),
    ];
    let users_links = vec![
        format!(
            "X-APPLE-DROPBOX:/calendars/users/{}/dropbox/U.dropbox",
            users.short_name
        ),
        format!(
            "ATTACH:http://cal.example.com:8008/calendars/users/{}/dropbox/U.dropbox/b.txt",
            users.short_name
        ),
    ];
    put(
        &root,
        &flat_home.join("calendar/f.ics"),
        &event("flat-1", &flat.guid, &[&flat.guid], &flat_links, "\r\n"),
    );
    put(&root, &flat_home.join("dropbox/F.dropbox/a.txt"), b"a");
    put(
        &root,
        &users_home.join("calendar/u.ics"),
        &event("users-1", &users.guid, &[&users.guid], &users_links, "\n"),
    );
    put(&root, &users_home.join("dropbox/U.dropbox/b.txt"), b"b");
    let before = tree(&root);

    w.cmd().arg("plan").assert().code(0);
    w.cmd().arg("apply").assert().code(0);
    for (person, name, links) in [(flat, "f.ics", 2), (users, "u.ics", 2)] {
        let new = &w.new_guid[&person.guid];
        let bytes = std::fs::read(hashed(&root, new).join("calendar").join(name)).unwrap();
        let info = ical::scan(&bytes).unwrap();
        assert_eq!(info.links.len(), links);
        for l in &info.links {
            assert!(
                l.value
                    .contains(&format!("/calendars/__uids__/{new}/dropbox/")),
                "{l:?}"
            );
            assert!(on_disk(&root, &l.value).exists(), "{l:?}");
        }
    }
    assert!(!flat_home.exists() && !users_home.exists());
    w.cmd().arg("verify").assert().code(0);
    w.cmd().arg("rollback").assert().code(0);
    assert_same_tree(&tree(&root), &before, "rollback");
}
