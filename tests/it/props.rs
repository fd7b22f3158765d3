//! Server properties through the CLI: what a real CalendarServer 2.5 / 3.3 needs of a rewritten
//! store's extended attributes (scheduling-match-etags, scheduling-object-resource, schedule-tag,
//! getcontentmd5, inbox originator / recipient), planned, applied, verified and rolled back.

use crate::support::world::{assert_same_tree, tree, World};
use principal_reconciler::store::generate::{PropertyStyle, StoreBuilder};
use principal_reconciler::store::{md5_hex, props, xattrs};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn plan_json(w: &World) -> serde_json::Value {
    let out = w.cmd().args(["--json", "plan"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "plan: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every `.ics` under `root`, sorted.
fn ics_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "ics") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn in_inbox(p: &Path) -> bool {
    p.parent()
        .and_then(|d| d.file_name())
        .is_some_and(|n| n == "inbox")
}

/// Attribute name → raw value.
fn attrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    xattrs::read_all(p)
        .unwrap()
        .into_iter()
        .map(|x| (x.name, x.value))
        .collect()
}

/// The attributes holding `property` (any prefix, long or short name).
fn holding(p: &Path, property: &str) -> Vec<(String, Vec<u8>)> {
    attrs(p)
        .into_iter()
        .filter(|(n, _)| xattrs::decode_name(n).map(|(_, p)| p).as_deref() == Some(property))
        .collect()
}

fn hrefs(value: &[u8]) -> Vec<String> {
    let xml = String::from_utf8(xattrs::decode_value(value)).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    doc.descendants()
        .filter(|n| n.has_tag_name(("DAV:", "href")))
        .map(|n| n.text().unwrap_or_default().to_string())
        .collect()
}

/// Where a resource of an old home lives once `apply` moved the home to its new GUID.
fn moved(w: &World, rel: &str) -> PathBuf {
    let parts: Vec<&str> = rel.splitn(6, '/').collect();
    let new = &w.new_guid[parts[4]];
    w.store.root.join(format!(
        "calendars/__uids__/{}/{}/{new}/{}",
        &new[0..2],
        &new[2..4],
        parts[5]
    ))
}

fn rel(w: &World, p: &Path) -> String {
    p.strip_prefix(&w.store.root)
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn no_user_xattrs(dir: &Path) -> bool {
    let p = dir.join(".xattr-probe");
    std::fs::write(&p, b"x").unwrap();
    let ok = xattr::set(&p, "user.probe", b"1").is_ok();
    std::fs::remove_file(&p).unwrap();
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{} has no user.* extended attributes (CI=true)",
            dir.display()
        );
        eprintln!(
            "SKIPPED: no user.* extended attributes on {}",
            dir.display()
        );
    }
    !ok
}

/// The done-when of issue 10 on a store with 2.5's properties: after apply no resource keeps a
/// scheduling-match-etags naming an old ETag, scheduling-object-resource and schedule-tag are
/// kept byte for byte, getcontentmd5 is the bytes' MD5, verify exits 0, and rollback restores
/// every property byte for byte (getctag renewed).
#[test]
fn after_apply_every_etag_list_names_the_current_bytes_and_rollback_restores_every_property() {
    for style in [PropertyStyle::Cs25, PropertyStyle::Mixed] {
        let w = World::with(|root| {
            StoreBuilder::new(root)
                .homes(5)
                .resources(80)
                .seed(31)
                .owner(501, 20)
                .property_style(style)
        });
        if no_user_xattrs(w.dir.path()) {
            return;
        }
        let before = tree(&w.store.root);
        let originals: BTreeMap<String, BTreeMap<String, Vec<u8>>> = ics_files(&w.store.root)
            .iter()
            .map(|p| (rel(&w, p), attrs(p)))
            .collect();
        let lists = originals
            .values()
            .filter(|a| {
                a.keys().any(|n| {
                    xattrs::decode_name(n).map(|(_, p)| p) == Some(xattrs::scheduling_match_etags())
                })
            })
            .count();
        assert!(
            lists > 50,
            "{style:?}: the generator writes the lists ({lists})"
        );
        let plan = plan_json(&w);
        assert!(plan["plan"]["resources_changed"].as_u64().unwrap() > 50);
        w.cmd().arg("apply").assert().code(0);
        let (mut rewritten, mut multi) = (0, 0);
        for (old_rel, old_attrs) in &originals {
            let p = moved(&w, old_rel);
            let bytes = std::fs::read(&p).unwrap();
            let md5 = md5_hex(&bytes);
            let now = attrs(&p);
            // No attribute appears or disappears, none changes its name.
            assert_eq!(
                now.keys().collect::<Vec<_>>(),
                old_attrs.keys().collect::<Vec<_>>(),
                "{old_rel}"
            );
            for (name, old) in old_attrs {
                let prop = xattrs::decode_name(name)
                    .map(|(_, p)| p)
                    .unwrap_or_default();
                let new = &now[name];
                if prop == xattrs::scheduling_match_etags() {
                    let list = props::match_etags(new).unwrap();
                    let was = props::match_etags(old).unwrap();
                    if new != old {
                        rewritten += 1;
                        multi += usize::from(was.len() > 1);
                        assert_eq!(list, std::slice::from_ref(&md5), "{old_rel}: {name}");
                        assert_eq!(
                            xattrs::decode_zlib(new).is_some(),
                            xattrs::decode_zlib(old).is_some(),
                            "encoding kept"
                        );
                    } else {
                        assert_eq!(list.last(), Some(&md5), "{old_rel}: untouched list");
                    }
                } else if prop == xattrs::getcontentmd5() {
                    assert_eq!(
                        xattrs::text_of(&xattrs::decode_value(new)).unwrap(),
                        md5,
                        "{old_rel}"
                    );
                } else if prop == xattrs::originator() || prop == xattrs::recipient() {
                    // inbox items: checked by the test below
                } else {
                    assert_eq!(new, old, "{old_rel}: {name} kept byte for byte");
                }
            }
            assert!(
                props::stale_match_etags(&xattrs::read_all(&p).unwrap(), &md5).is_none(),
                "{old_rel}"
            );
        }
        assert!(
            rewritten > 40 && multi > 10,
            "{style:?}: {rewritten} lists rewritten, {multi} of them had several entries"
        );
        w.cmd()
            .arg("verify")
            .assert()
            .code(0)
            .stdout(predicates::str::contains("no problems"));
        w.cmd().arg("rollback").assert().code(0);
        assert_same_tree(&tree(&w.store.root), &before, &format!("{style:?}"));
    }
}

/// Inbox items: originator and recipient hrefs naming local users get their canonical address,
/// planned (changes.csv), applied losslessly, outside addresses left; rollback undoes them.
#[test]
fn inbox_originator_and_recipient_are_planned_applied_and_undone() {
    let w = World::new(4, 80, 32);
    if no_user_xattrs(w.dir.path()) {
        return;
    }
    let before = tree(&w.store.root);
    let inbox: Vec<PathBuf> = ics_files(&w.store.root)
        .into_iter()
        .filter(|p| in_inbox(p))
        .collect();
    assert!(inbox.len() >= 8, "{} inbox items", inbox.len());
    let plan = plan_json(&w);
    let changes = std::fs::read_to_string(w.path("reports/changes.csv")).unwrap();
    let rows: Vec<&str> = changes
        .lines()
        .filter(|l| l.contains(",{urn:ietf:params:xml:ns:caldav}"))
        .collect();
    assert!(
        rows.iter().any(|l| l.contains("}originator,"))
            && rows.iter().any(|l| l.contains("}recipient,")),
        "changes.csv lists the properties: {rows:?}"
    );
    assert!(rows
        .iter()
        .all(|l| l.contains("/inbox/") && l.contains(",0,")));
    assert_eq!(
        changes.lines().count() as u64 - 1,
        plan["plan"]["properties_changed"].as_u64().unwrap()
    );
    w.cmd().arg("apply").assert().code(0);
    let by_mail: BTreeMap<String, String> = w
        .store
        .people
        .iter()
        .map(|p| (p.email.clone(), w.new_guid[&p.guid].clone()))
        .collect();
    let mut seen = 0;
    for old in &inbox {
        let old_rel = rel(&w, old);
        let p = moved(&w, &old_rel);
        for prop in [xattrs::originator(), xattrs::recipient()] {
            let was = before[&old_rel].4.iter().find(|(n, _)| {
                xattrs::decode_name(n).map(|(_, q)| q).as_deref() == Some(prop.as_str())
            });
            let (name, was) = was.expect("the generator writes both");
            let now = &attrs(&p)[name];
            let (old_href, new_href) = (hrefs(was).remove(0), hrefs(now).remove(0));
            seen += 1;
            if old_href.contains("outside.example.net") {
                assert_eq!(now, was, "an outside address is left alone");
                continue;
            }
            let guid = w
                .new_guid
                .iter()
                .find(|(o, _)| old_href.contains(o.as_str()))
                .map(|(_, n)| n.clone())
                .or_else(|| {
                    by_mail
                        .iter()
                        .find(|(m, _)| old_href.ends_with(m.as_str()))
                        .map(|(_, n)| n.clone())
                })
                .or_else(|| {
                    w.store
                        .people
                        .iter()
                        .find(|p| old_href.contains(&format!("/users/{}/", p.short_name)))
                        .map(|p| w.new_guid[&p.guid].clone())
                })
                .unwrap_or_else(|| panic!("{old_rel}: who is {old_href}?"));
            assert_eq!(new_href, format!("urn:uuid:{guid}"), "{old_rel}: {name}");
            // Only the href text changed, the value still zlib.
            let (was_xml, now_xml) = (
                String::from_utf8(xattrs::decode_zlib(was).unwrap()).unwrap(),
                String::from_utf8(xattrs::decode_zlib(now).unwrap()).unwrap(),
            );
            assert_eq!(now_xml, was_xml.replace(&old_href, &new_href));
        }
    }
    assert_eq!(seen, inbox.len() * 2);
    w.cmd().arg("verify").assert().code(0);
    w.cmd().arg("rollback").assert().code(0);
    assert_same_tree(&tree(&w.store.root), &before, "rollback");
}

/// A resource whose calendar data needs nothing but whose originator does: planned, applied
/// (bytes, getcontentmd5 and the other attributes untouched), resumed after a crash after and
/// before its write, and rolled back.
#[test]
fn a_resource_whose_only_change_is_a_property() {
    let w = World::new(2, 20, 33);
    if no_user_xattrs(w.dir.path()) {
        return;
    }
    // Migrate first: the homes move to their new GUIDs (run 1).
    w.cmd().arg("plan").assert().code(0);
    w.cmd().arg("apply").assert().code(0);
    // An inbox item from an outside organizer, nothing in its bytes to rewrite, whose originator
    // property still names a local user by an old GUID, in lower case and plain XML as older
    // servers stored it.
    let item = ics_files(&w.store.root)
        .into_iter()
        .find(|p| in_inbox(p))
        .unwrap();
    let text = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:outside-1\r\nDTSTART:20100301T100000Z\r\nORGANIZER:mailto:partner@outside.example.net\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    std::fs::write(&item, text).unwrap();
    principal_reconciler::store::write::set_md5_attr(&item, &md5_hex(text.as_bytes()), "user.")
        .unwrap();
    let person = &w.store.people[1];
    let (from_name, _) = holding(&item, &xattrs::originator()).remove(0);
    let xml = format!("<?xml version='1.0' encoding='UTF-8'?><originator xmlns='urn:ietf:params:xml:ns:caldav'><href xmlns='DAV:'>urn:uuid:{}</href></originator>", person.guid.to_lowercase());
    xattr::set(&item, &from_name, xml.as_bytes()).unwrap();
    let (to_name, _) = holding(&item, &xattrs::recipient()).remove(0);
    xattr::set(
        &item,
        &to_name,
        &xattrs::encode_value(b"<?xml version='1.0' encoding='UTF-8'?>\r\n<recipient xmlns='urn:ietf:params:xml:ns:caldav'><href xmlns='DAV:'>mailto:partner2@outside.example.net</href></recipient>\r\n"),
    )
    .unwrap();
    let before = tree(&w.store.root);
    let item_rel = rel(&w, &item);
    let attrs_before = attrs(&item);

    let plan = plan_json(&w);
    assert_eq!(plan["plan"]["resources_changed"], 1, "{plan}");
    let state = rusqlite::Connection::open(w.path("state/state.sqlite")).unwrap();
    let (old_sha, new_sha, edits): (String, String, Option<String>) = state
        .query_row(
            "SELECT old_sha256, new_sha256, attr_edits FROM plan_resources WHERE plan_id = 2 AND rel_path = ?1",
            [&item_rel],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(old_sha, new_sha, "the bytes stay");
    let edits = props::edits_from_json(edits.as_deref()).unwrap();
    assert_eq!(edits.len(), 1);
    assert_eq!(edits[0].name, from_name);

    w.cmd().arg("apply").assert().code(0); // run 2
    assert_eq!(std::fs::read(&item).unwrap(), text.as_bytes());
    let want = xml.replace(
        &format!("urn:uuid:{}", person.guid.to_lowercase()),
        &format!("urn:uuid:{}", w.new_guid[&person.guid]),
    );
    let now = attrs(&item);
    assert_eq!(now[&from_name], want.as_bytes(), "plain stays plain");
    for (k, v) in &attrs_before {
        if *k != from_name {
            assert_eq!(&now[k], v, "{k} untouched: the bytes did not change");
        }
    }

    // A crash after the write, before the step was marked done: apply again finds it done.
    let seq: i64 = state
        .query_row(
            "SELECT seq FROM journal WHERE run_id = 2 AND rel_path = ?1",
            [&item_rel],
            |r| r.get(0),
        )
        .unwrap();
    let crash = format!(
        "UPDATE journal SET state = 'pending' WHERE run_id = 2 AND seq = {seq}; UPDATE runs SET status = 'running', state = 'applying' WHERE id = 2;"
    );
    state.execute_batch(&crash).unwrap();
    w.cmd()
        .arg("apply")
        .assert()
        .code(0)
        .stdout(predicates::str::contains("resumed"));
    assert_eq!(attrs(&item)[&from_name], want.as_bytes());
    // A crash before the write: the attribute still old, the step pending. Apply redoes it.
    xattr::set(&item, &from_name, xml.as_bytes()).unwrap();
    state.execute_batch(&crash).unwrap();
    w.cmd().arg("apply").assert().code(0);
    assert_eq!(attrs(&item)[&from_name], want.as_bytes(), "redone");
    let done: String = state
        .query_row(
            &format!("SELECT state FROM journal WHERE run_id = 2 AND seq = {seq}"),
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(done, "done");
    drop(state);
    // A new plan has nothing left for it; rollback of run 2 puts the old value back (the bytes
    // are the same before and after: the attributes decide).
    let again = plan_json(&w);
    assert_eq!(again["plan"]["resources_changed"], 0, "{again}");
    w.cmd()
        .args(["rollback", "--run", "2"])
        .assert()
        .code(0)
        .stdout(predicates::str::contains("1 files restored"));
    assert_same_tree(&tree(&w.store.root), &before, "rollback");
    assert_eq!(attrs(&item)[&from_name], xml.as_bytes());
}

/// An attribute changed between plan and apply is never overwritten: the resource is skipped.
#[test]
fn a_property_changed_since_the_plan_is_not_overwritten() {
    let w = World::new(2, 20, 34);
    if no_user_xattrs(w.dir.path()) {
        return;
    }
    plan_json(&w);
    let item = ics_files(&w.store.root)
        .into_iter()
        .find(|p| in_inbox(p))
        .unwrap();
    let item_rel = rel(&w, &item);
    let (name, _) = holding(&item, &xattrs::recipient()).remove(0);
    let theirs = xattrs::encode_value(b"<?xml version='1.0' encoding='UTF-8'?>\r\n<recipient xmlns='urn:ietf:params:xml:ns:caldav'><href xmlns='DAV:'>mailto:someone@else.example.com</href></recipient>\r\n");
    xattr::set(&item, &name, &theirs).unwrap();
    let bytes = std::fs::read(&item).unwrap();
    w.cmd()
        .arg("apply")
        .assert()
        .code(1)
        .stdout(predicates::str::contains(format!(
            "skipped {item_rel}: changed since plan"
        )));
    let p = moved(&w, &item_rel);
    assert_eq!(std::fs::read(&p).unwrap(), bytes);
    assert_eq!(attrs(&p)[&name], theirs);
}

/// A store CalendarServer 3.3 wrote keeps its short attribute names: nothing is added under the
/// long ones, every value that must change does, and rollback restores them.
#[test]
fn a_store_with_3_3_short_names_keeps_them() {
    let w = World::with(|root| {
        StoreBuilder::new(root)
            .homes(3)
            .resources(40)
            .seed(35)
            .owner(501, 20)
            .property_style(PropertyStyle::Cs33)
    });
    if no_user_xattrs(w.dir.path()) {
        return;
    }
    let before = tree(&w.store.root);
    for (path, (_, _, _, _, a)) in &before {
        for n in a.keys().filter(|n| n.starts_with("user.{")) {
            assert!(
                n.starts_with("user.{TDP:}")
                    || n.starts_with("user.{TD:}")
                    || n.starts_with("user.{CALDAV:}")
                    || n.starts_with("user.{CS:}")
                    || n.starts_with("user.{DAV:}"),
                "{path}: {n} is not a 3.3 name"
            );
        }
    }
    w.cmd().arg("plan").assert().code(0);
    w.cmd().arg("apply").assert().code(0);
    for p in ics_files(&w.store.root) {
        let names: Vec<String> = attrs(&p).into_keys().collect();
        assert!(
            !names.iter().any(|n| n.contains("%2F")),
            "{}: a long name appeared: {names:?}",
            p.display()
        );
        let md5 = md5_hex(&std::fs::read(&p).unwrap());
        let md5_attr = &holding(&p, &xattrs::getcontentmd5())[0];
        assert_eq!(md5_attr.0, "user.{TD:}getcontentmd5");
        assert_eq!(
            xattrs::text_of(&xattrs::decode_value(&md5_attr.1)).unwrap(),
            md5
        );
        if !in_inbox(&p) {
            let list = &holding(&p, &xattrs::scheduling_match_etags())[0];
            assert_eq!(list.0, "user.{TDP:}scheduling-match-etags");
            assert!(props::match_etags(&list.1).unwrap().contains(&md5));
        }
    }
    w.cmd().arg("verify").assert().code(0);
    w.cmd().arg("rollback").assert().code(0);
    assert_same_tree(&tree(&w.store.root), &before, "rollback");
}

/// verify predicts what a 2.x server would refuse, resource by resource: an ORGANIZER spelled in
/// lower case, an ETag list without the current ETag, a stale getcontentmd5 under the short name
/// 3.x reads. `doctor --fix` repairs the two attributes; the address is the plan's to fix.
#[test]
fn verify_predicts_what_the_server_refuses() {
    let w = World::new(3, 30, 36);
    if no_user_xattrs(w.dir.path()) {
        return;
    }
    w.cmd().arg("plan").assert().code(0);
    w.cmd().arg("apply").assert().code(0);
    w.cmd().arg("verify").assert().code(0);
    let calendar: Vec<PathBuf> = ics_files(&w.store.root)
        .into_iter()
        .filter(|p| !in_inbox(p))
        .collect();
    let with_organizer = |p: &PathBuf| {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .any(|l| l.starts_with("ORGANIZER") && l.contains(":urn:uuid:"))
    };
    // 1. ORGANIZER value in lower case (bytes, MD5 and list kept consistent: only the case is wrong).
    let a = calendar.iter().find(|p| with_organizer(p)).unwrap();
    let text = std::fs::read_to_string(a).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("ORGANIZER"))
        .unwrap()
        .to_string();
    let (head, value) = line.rsplit_once(':').unwrap();
    let lower = text.replacen(&line, &format!("{head}:{}", value.to_lowercase()), 1);
    std::fs::write(a, &lower).unwrap();
    let md5 = md5_hex(lower.as_bytes());
    principal_reconciler::store::write::set_md5_attr(a, &md5, "user.").unwrap();
    principal_reconciler::store::write::set_match_etags_attr(a, &md5).unwrap();
    // 2. An ETag list naming two old ETags only.
    let b = &calendar[calendar.len() - 1];
    assert_ne!(a, b);
    let (list_name, _) = holding(b, &xattrs::scheduling_match_etags()).remove(0);
    let stale = format!("<?xml version='1.0' encoding='UTF-8'?>\r\n<scheduling-match-etags xmlns='{}'><getetag xmlns='DAV:'>0123</getetag><getetag xmlns='DAV:'>4567</getetag></scheduling-match-etags>\r\n", xattrs::TWISTED_PRIVATE_NS);
    xattr::set(b, &list_name, &xattrs::encode_value(stale.as_bytes())).unwrap();
    // 3. A stale getcontentmd5 under 3.x's short name beside the right long one.
    let c = &calendar[calendar.len() - 2];
    assert!(c != a && c != b);
    xattr::set(
        c,
        "user.{TD:}getcontentmd5",
        &xattrs::text_property_value(&xattrs::getcontentmd5(), "ffffffffffffffffffffffffffffffff"),
    )
    .unwrap();

    let out = w.cmd().args(["--json", "verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems = doc["verify"]["problems"].as_array().unwrap();
    let found: Vec<(String, String)> = problems
        .iter()
        .map(|p| {
            (
                p["kind"].as_str().unwrap().to_string(),
                p["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let at = |kind: &str, p: &Path| {
        found
            .iter()
            .any(|(k, path)| k == kind && path.starts_with(&rel(&w, p)))
    };
    assert!(at("not-canonical", a), "{found:?}");
    assert!(at("match-etags-stale", b), "{found:?}");
    assert!(at("md5-stale", c), "{found:?}");
    assert_eq!(found.len(), 3, "nothing else: {found:?}");
    let detail = |kind: &str| {
        problems.iter().find(|p| p["kind"] == kind).unwrap()["detail"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(detail("not-canonical").contains("case included"));
    assert!(detail("match-etags-stale").contains("412"));
    assert!(detail("md5-stale").contains("{TD:}getcontentmd5"));

    w.cmd().args(["doctor", "--fix"]).assert().code(0);
    let out = w.cmd().args(["--json", "verify"]).output().unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<&str> = doc["verify"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["not-canonical"]);
    // Plan and apply fix the address (and the list and MD5 with it).
    w.cmd().arg("plan").assert().code(0);
    w.cmd().arg("apply").assert().code(0);
    w.cmd().arg("verify").assert().code(0);
}
