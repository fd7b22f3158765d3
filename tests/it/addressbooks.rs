//! Address books through the CLI: a 10.6 Address Book Server root beside the calendar store
//! (`[store] addressbook_root`) and a 3.x store with `addressbooks/` beside `calendars/`.
//!
//! The shared corpus holds no vCard written by a real client or server (no `.vcf`, no
//! `BEGIN:VCARD` under `../shared/corpus`): the cards here are generated in vCard 3.0 as Apple
//! Address Book 5 writes it (`store::generate_addressbooks`).

use crate::support::world::{self, assert_same_tree, tree, World};
use predicates::prelude::*;
use principal_reconciler::store::generate_addressbooks::{
    AddressBookBuilder, GeneratedAddressBooks, DEPARTED,
};
use principal_reconciler::store::xattrs;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout {
    /// Mac OS X Server 10.6: `/Library/AddressBookServer/Documents`, configured.
    Separate,
    /// CalendarServer 3.x: `addressbooks/` under `[store] path`, found by itself.
    UnderStore,
}

struct AbWorld {
    w: World,
    ab: GeneratedAddressBooks,
}

impl AbWorld {
    fn new(layout: Layout, homes: usize, events: usize, seed: u64, departed: bool) -> AbWorld {
        let w = World::new(homes, events, seed);
        let root = match layout {
            Layout::Separate => {
                let text = std::fs::read_to_string(&w.config).unwrap();
                let text = text.replace(
                    "path = \"Documents\"\n",
                    "path = \"Documents\"\naddressbook_root = \"AddressBookServer/Documents\"\n",
                );
                std::fs::write(&w.config, text).unwrap();
                w.path("AddressBookServer/Documents")
            }
            Layout::UnderStore => w.store.root.clone(),
        };
        let mut b = AddressBookBuilder::new(root, &w.store.people)
            .seed(seed)
            .contacts(3)
            .owner(501, 20);
        if departed {
            b = b.departed_member();
        }
        let ab = b.build().unwrap();
        AbWorld { w, ab }
    }

    fn new_guid(&self, old: &str) -> &str {
        &self.w.new_guid[&old.to_ascii_uppercase()]
    }

    /// The hashed address-book home of a GUID.
    fn home(&self, guid: &str) -> PathBuf {
        self.ab.root.join(format!(
            "addressbooks/__uids__/{}/{}/{guid}",
            &guid[0..2],
            &guid[2..4]
        ))
    }

    /// Both trees a run may touch, by root.
    fn trees(&self) -> (world::Tree, world::Tree) {
        (tree(&self.w.store.root), tree(&self.ab.root))
    }
}

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

fn cards_of(book: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(book)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".vcf"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn property(path: &Path, property: &str) -> Option<String> {
    let attrs = principal_reconciler::store::xattrs::read_all(path).unwrap();
    xattrs::property_text(&attrs, property).flatten()
}

/// The group card as it must read after the migration: only the uids of the members that name
/// directory records change, to their new GUID as the directory spells it.
fn expected_group(a: &AbWorld, i: usize) -> Vec<u8> {
    let mut text = String::from_utf8(std::fs::read(&a.ab.groups[i].path).unwrap()).unwrap();
    for p in &a.ab.groups[i].principals {
        text = text.replace(
            &format!("X-ADDRESSBOOKSERVER-MEMBER:urn:uuid:{p}\r\n"),
            &format!("X-ADDRESSBOOKSERVER-MEMBER:urn:uuid:{}\r\n", a.new_guid(p)),
        );
    }
    text.into_bytes()
}

fn plan_changes_nothing_and_reports(layout: Layout) {
    let a = AbWorld::new(layout, 4, 20, 31, true);
    let n = a.ab.homes.len() as u64;
    let before = a.trees();
    let (code, doc) = json(&a.w, &["plan"]);
    assert_eq!(code, 0, "{doc}");
    let ab = &doc["plan"]["addressbooks"];
    assert_eq!(ab["homes"]["moved"], n, "{ab}");
    assert_eq!(ab["cards"], a.ab.cards);
    assert_eq!(ab["groups"], n);
    let principals: u64 = a.ab.groups.iter().map(|g| g.principals.len() as u64).sum();
    let cards: u64 = a.ab.groups.iter().map(|g| g.cards.len() as u64).sum();
    assert_eq!(ab["principal_members"], principals, "{ab}");
    assert_eq!(ab["card_members"], cards, "{ab}");
    assert_eq!(
        ab["unresolved_members"], n,
        "one departed member per group: {ab}"
    );
    assert_eq!(ab["members_changed"], principals);
    assert_eq!(ab["cards_changed"], n);
    let after = a.trees();
    assert_same_tree(&after.0, &before.0, "plan must not touch the store");
    assert_same_tree(&after.1, &before.1, "plan must not touch the address books");
    // changes.csv: one row per rewritten member (and per calendar property), at the card's path.
    let changes = std::fs::read_to_string(a.w.path("reports/changes.csv")).unwrap();
    assert_eq!(
        changes.lines().count() as u64 - 1,
        doc["plan"]["properties_changed"].as_u64().unwrap()
    );
    let member_rows: Vec<&str> = changes
        .lines()
        .filter(|l| l.contains(",X-ADDRESSBOOKSERVER-MEMBER,"))
        .collect();
    assert_eq!(member_rows.len() as u64, principals);
    for (g, home) in a.ab.groups.iter().zip(&a.ab.homes) {
        let rel = g
            .path
            .strip_prefix(&a.ab.root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(rel.starts_with("addressbooks/__uids__/"), "{rel}");
        assert!(rel.contains(&home.id));
        for p in &g.principals {
            let row = format!("{rel},");
            assert!(
                member_rows.iter().any(|r| r.starts_with(&row)
                    && r.contains(&format!("urn:uuid:{p},urn:uuid:{}", a.new_guid(p)))),
                "no changes.csv row for {p} in {rel}"
            );
        }
    }
    // mapping.csv: the members that are directory records are in the mapping; the uids of
    // ordinary cards and of the departed member are not (they are no addresses of anyone).
    let mapping = std::fs::read_to_string(a.w.path("reports/mapping.csv")).unwrap();
    for g in &a.ab.groups {
        for c in g.cards.iter().filter(|c| !a.w.new_guid.contains_key(*c)) {
            assert!(!mapping.contains(c.as_str()), "card uid {c} in mapping.csv");
        }
        for p in &g.principals {
            let key = format!("urn:uuid:{},", p.to_ascii_uppercase());
            assert!(
                mapping
                    .lines()
                    .any(|l| l.starts_with(&key) && l.contains(",mapped,")),
                "{p}"
            );
        }
    }
    assert!(!mapping.contains(DEPARTED));
    let html = std::fs::read_to_string(a.w.path("reports/report.html")).unwrap();
    assert!(
        html.contains("<section id=\"addressbooks\">"),
        "report.html"
    );
    assert!(html.contains("<table id=\"addressbook-homes\""));
    for h in &a.ab.homes {
        assert!(html.contains(&format!(
            "addressbooks/__uids__/{}/{}/{}",
            &h.id[0..2],
            &h.id[2..4],
            h.id
        )));
    }
    let text = a.w.cmd().arg("plan").assert().code(0);
    let out = String::from_utf8_lossy(&text.get_output().stdout).into_owned();
    assert!(
        out.contains(&format!(
            "Address books: {} cards in {n} homes ({n} moved)",
            a.ab.cards
        )),
        "{out}"
    );
}

#[test]
fn plan_of_a_10_6_address_book_server_changes_nothing_and_reports_it() {
    plan_changes_nothing_and_reports(Layout::Separate);
}

#[test]
fn plan_of_3x_address_books_beside_the_calendars_changes_nothing_and_reports_it() {
    plan_changes_nothing_and_reports(Layout::UnderStore);
}

fn apply_and_rollback(layout: Layout) {
    let a = AbWorld::new(layout, 4, 20, 32, false);
    let before = a.trees();
    let ctag_before: Vec<Option<String>> =
        a.ab.homes
            .iter()
            .map(|h| property(&h.path.join("addressbook"), &xattrs::getctag()))
            .collect();
    let expected: Vec<Vec<u8>> = (0..a.ab.groups.len())
        .map(|i| expected_group(&a, i))
        .collect();
    let originals: Vec<BTreeMap<String, Vec<u8>>> =
        a.ab.homes
            .iter()
            .map(|h| cards_of(&h.path.join("addressbook")))
            .collect();
    a.w.cmd().arg("plan").assert().code(0);
    a.w.cmd()
        .arg("apply")
        .assert()
        .code(0)
        .stdout(predicate::str::contains("resources written"));
    let mut ctag_applied = Vec::new();
    for (i, h) in a.ab.homes.iter().enumerate() {
        assert!(
            !h.path.exists(),
            "{} left under its old GUID",
            h.path.display()
        );
        let new = a.new_guid(&h.id);
        let book = a.home(new).join("addressbook");
        let now = cards_of(&book);
        assert_eq!(
            now.keys().collect::<Vec<_>>(),
            originals[i].keys().collect::<Vec<_>>(),
            "every card moved with its home"
        );
        let group_name = a.ab.groups[i]
            .path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        for (name, bytes) in &now {
            if *name == group_name {
                assert_eq!(
                    String::from_utf8_lossy(bytes),
                    String::from_utf8_lossy(&expected[i]),
                    "group card of home {i}"
                );
                assert_ne!(bytes, &originals[i][name], "the group card was rewritten");
                let md5 = principal_reconciler::store::md5_hex(bytes);
                assert_eq!(
                    property(&book.join(name), &xattrs::getcontentmd5()).as_deref(),
                    Some(md5.as_str()),
                    "getcontentmd5 of the rewritten card"
                );
            } else {
                assert_eq!(bytes, &originals[i][name], "{name} must not change");
            }
        }
        // The members that are cards of the book (one of them named by an old GUID) stayed.
        let text = String::from_utf8_lossy(&now[&group_name]).into_owned();
        for c in &a.ab.groups[i].cards {
            assert!(
                text.contains(&format!("urn:uuid:{c}\r\n")),
                "card member {c}"
            );
        }
        let ctag = property(&book, &xattrs::getctag());
        assert!(ctag.is_some());
        assert_ne!(ctag, ctag_before[i], "getctag renewed");
        ctag_applied.push(ctag);
        // Owner and mode kept on the moved home and its cards.
        for e in std::fs::read_dir(&book).unwrap() {
            let m = e.unwrap().metadata().unwrap();
            assert_eq!((m.uid(), m.gid()), (501, 20));
        }
        let m = std::fs::metadata(a.home(new)).unwrap();
        assert_eq!((m.uid(), m.gid()), (501, 20));
    }
    // The card copied from the directory keeps its name and bytes, and its old GUID as UID.
    let copied = &a.ab.groups[0].cards[2];
    let new0 = a.new_guid(&a.ab.homes[0].id);
    assert!(a
        .home(new0)
        .join(format!("addressbook/{copied}.vcf"))
        .is_file());
    a.w.cmd()
        .arg("verify")
        .assert()
        .code(0)
        .stdout(predicate::str::contains("no problems"));
    // A fresh plan finds nothing more to do.
    let (_, doc) = json(&a.w, &["plan"]);
    assert_eq!(doc["plan"]["resources_changed"], 0, "{doc}");
    assert_eq!(
        doc["plan"]["addressbooks"]["homes"]["current"],
        a.ab.homes.len()
    );
    // Rollback: every byte, owner, mode and attribute back; the collections' ctags renewed again.
    a.w.cmd().args(["rollback", "--run", "1"]).assert().code(0);
    let after = a.trees();
    assert_same_tree(&after.0, &before.0, "calendar store after rollback");
    assert_same_tree(&after.1, &before.1, "address books after rollback");
    for (i, h) in a.ab.homes.iter().enumerate() {
        let ctag = property(&h.path.join("addressbook"), &xattrs::getctag());
        assert_ne!(
            ctag, ctag_applied[i],
            "rollback renews the ctag of a restored card's collection"
        );
        assert_ne!(ctag, ctag_before[i]);
    }
}

#[test]
fn apply_adopts_10_6_address_book_homes_rewrites_members_and_rollback_restores_them() {
    apply_and_rollback(Layout::Separate);
}

#[test]
fn apply_adopts_3x_address_book_homes_rewrites_members_and_rollback_restores_them() {
    apply_and_rollback(Layout::UnderStore);
}

#[test]
fn an_address_book_home_merges_into_the_one_the_server_made_and_rollback_separates_them() {
    let a = AbWorld::new(Layout::Separate, 2, 8, 33, false);
    let old = a.ab.homes[0].id.clone();
    let new = a.new_guid(&old).to_string();
    // The user opened Address Book after the rebuild: an empty home under the new GUID.
    let fresh = a.home(&new);
    std::fs::create_dir_all(fresh.join("addressbook")).unwrap();
    let mut p = fresh.join("addressbook");
    while p != a.ab.root.join("addressbooks/__uids__") {
        std::os::unix::fs::chown(&p, Some(501), Some(20)).unwrap();
        p = p.parent().unwrap().to_path_buf();
    }
    let with_fresh = a.trees();
    let cards = cards_of(&a.ab.homes[0].path.join("addressbook"));
    a.w.cmd().arg("plan").assert().code(0);
    a.w.cmd()
        .arg("apply")
        .assert()
        .code(0)
        .stdout(predicate::str::contains(
            "as addressbook-migrated (name clash)",
        ));
    assert!(
        !a.ab.homes[0].path.exists(),
        "the emptied old home is removed"
    );
    assert!(fresh.join("addressbook").is_dir());
    assert_eq!(
        cards_of(&fresh.join("addressbook-migrated"))
            .keys()
            .collect::<Vec<_>>(),
        cards.keys().collect::<Vec<_>>()
    );
    a.w.cmd().arg("verify").assert().code(0);
    a.w.cmd().arg("rollback").assert().code(0);
    let after = a.trees();
    assert_same_tree(
        &after.1,
        &with_fresh.1,
        "rollback must separate the homes again",
    );
    assert_same_tree(&after.0, &with_fresh.0, "calendar store");
}

#[test]
fn verify_reports_address_book_homes_under_old_guids_and_members_that_name_nobody() {
    let a = AbWorld::new(Layout::Separate, 3, 12, 34, true);
    let (code, doc) = json(&a.w, &["verify"]);
    assert_eq!(code, 1, "{doc}");
    let problems = doc["verify"]["problems"].as_array().unwrap();
    let of = |kind: &str| -> Vec<String> {
        problems
            .iter()
            .filter(|p| {
                p["kind"] == kind && p["path"].as_str().unwrap().starts_with("addressbooks/")
            })
            .map(|p| p["path"].as_str().unwrap().to_string())
            .collect()
    };
    let homes = of("orphan-home");
    assert_eq!(homes.len(), a.ab.homes.len(), "{problems:#?}");
    for h in &a.ab.homes {
        let rel = h
            .path
            .strip_prefix(&a.ab.root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(homes.contains(&rel), "{rel} not reported");
    }
    // Before the migration the principal members name old GUIDs nobody has any more, and the
    // departed member names nobody at all; the cards of the book are fine.
    let members = of("unresolved-member");
    let principals: usize = a.ab.groups.iter().map(|g| g.principals.len()).sum();
    assert_eq!(
        members.len(),
        principals + a.ab.groups.len(),
        "{members:#?}"
    );
    a.w.cmd()
        .arg("verify")
        .assert()
        .code(1)
        .stdout(predicate::str::contains("orphan-home"))
        .stdout(predicate::str::contains("unresolved-member"))
        .stdout(predicate::str::contains("addressbooks/__uids__/"));
    a.w.cmd().arg("plan").assert().code(0);
    a.w.cmd().arg("apply").assert().code(0);
    // After it, only the departed member is left for a human.
    let (code, doc) = json(&a.w, &["verify"]);
    assert_eq!(code, 1);
    let problems = doc["verify"]["problems"].as_array().unwrap();
    assert_eq!(problems.len(), a.ab.groups.len(), "{problems:#?}");
    for p in problems {
        assert_eq!(p["kind"], "unresolved-member");
        assert!(p["detail"].as_str().unwrap().contains(DEPARTED), "{p}");
    }
    // A home the run could not adopt (a copy put back under the old GUID) is reported again.
    let old = &a.ab.homes[1];
    std::fs::create_dir_all(old.path.join("addressbook")).unwrap();
    let (_, doc) = json(&a.w, &["verify"]);
    let rel = old
        .path
        .strip_prefix(&a.ab.root)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        doc["verify"]["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["kind"] == "orphan-home" && p["path"] == rel.as_str()),
        "{doc}"
    );
}

#[test]
fn a_plan_made_without_the_address_books_leaves_them_and_verify_says_so() {
    let a = AbWorld::new(Layout::Separate, 2, 8, 35, false);
    let with = std::fs::read_to_string(&a.w.config).unwrap();
    let without = with.replace("addressbook_root = \"AddressBookServer/Documents\"\n", "");
    std::fs::write(&a.w.config, &without).unwrap();
    let ab_before = tree(&a.ab.root);
    a.w.cmd().arg("plan").assert().code(0);
    a.w.cmd().arg("apply").assert().code(0);
    assert_same_tree(
        &tree(&a.ab.root),
        &ab_before,
        "address books not configured: untouched",
    );
    // A plan made with address books cannot be applied once the configuration loses them.
    std::fs::write(&a.w.config, &with).unwrap();
    a.w.cmd()
        .arg("verify")
        .assert()
        .code(1)
        .stdout(predicate::str::contains("orphan-home"));
    a.w.cmd().arg("plan").assert().code(0);
    std::fs::write(&a.w.config, &without).unwrap();
    a.w.cmd()
        .arg("apply")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("addressbook_root"));
    assert_same_tree(&tree(&a.ab.root), &ab_before, "refused: nothing written");
    std::fs::write(&a.w.config, &with).unwrap();
    a.w.cmd().arg("apply").assert().code(0);
    a.w.cmd().arg("verify").assert().code(0);
}

#[test]
fn scan_lists_the_address_books() {
    let a = AbWorld::new(Layout::Separate, 3, 9, 36, false);
    let (code, doc) = json(&a.w, &["scan"]);
    assert_eq!(code, 0, "{doc}");
    let ab = &doc["addressbooks"];
    assert_eq!(ab["cards"], a.ab.cards, "{ab}");
    assert_eq!(ab["homes"]["hashed"], a.ab.homes.len());
    assert_eq!(ab["groups"], a.ab.groups.len());
    assert_eq!(ab["collections"], a.ab.homes.len());
    let cards: usize = a.ab.groups.iter().map(|g| g.cards.len()).sum();
    assert_eq!(ab["card_members"], cards);
    let out = a.w.cmd().arg("scan").assert().code(0);
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(text.contains("Address books: "), "{text}");
    assert!(
        text.contains(&format!("Cards:        {} (", a.ab.cards)),
        "{text}"
    );
}

#[test]
fn a_malformed_card_is_reported_with_its_line_and_left_alone() {
    let a = AbWorld::new(Layout::Separate, 2, 6, 37, false);
    let bad = a.ab.homes[0].path.join("addressbook/truncated.vcf");
    let bytes = b"BEGIN:VCARD\r\nVERSION:3.0\r\nN:Cut;Off;;;\r\nFN:Off Cut\r\n";
    std::fs::write(&bad, bytes).unwrap();
    let (code, doc) = json(&a.w, &["plan"]);
    assert_eq!(code, 1, "{doc}");
    let p = doc["plan"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            p["path"]
                .as_str()
                .unwrap()
                .ends_with("addressbook/truncated.vcf")
        })
        .unwrap_or_else(|| panic!("{doc}"))
        .clone();
    assert_eq!(p["kind"], "malformed");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .starts_with("line 4: truncated"),
        "{p}"
    );
    let (code, doc) = json(&a.w, &["scan"]);
    assert_eq!(code, 1);
    assert_eq!(doc["problem_counts"]["malformed"], 1, "{doc}");
    a.w.cmd().arg("apply").assert().code(0);
    let new = a.new_guid(&a.ab.homes[0].id);
    assert_eq!(
        std::fs::read(a.home(new).join("addressbook/truncated.vcf")).unwrap(),
        bytes,
        "moved with its home, never rewritten"
    );
}

#[test]
fn doctor_checks_owners_and_md5_of_cards_in_a_separate_root() {
    let a = AbWorld::new(Layout::Separate, 2, 6, 38, false);
    a.w.cmd().arg("doctor").assert().code(0);
    let book = a.ab.homes[0].path.join("addressbook");
    let names: Vec<String> = cards_of(&book).into_keys().collect();
    let root_owned = book.join(&names[0]);
    std::os::unix::fs::chown(&root_owned, Some(0), Some(0)).unwrap();
    let stale = book.join(&names[1]);
    let mut edited = std::fs::read(&stale).unwrap();
    edited.extend_from_slice(b"\r\n");
    std::fs::write(&stale, &edited).unwrap();
    let rel = |p: &Path| {
        p.strip_prefix(&a.ab.root)
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    let (code, doc) = json(&a.w, &["doctor"]);
    assert_eq!(code, 1, "{doc}");
    let found = |kind: &str, path: &str| {
        doc["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == kind && f["path"] == path)
    };
    assert!(found("owner", &rel(&root_owned)), "{doc}");
    assert!(found("md5-stale", &rel(&stale)), "{doc}");
    a.w.cmd().args(["doctor", "--fix"]).assert().code(0);
    assert_eq!(std::fs::metadata(&root_owned).unwrap().uid(), 501);
    assert_eq!(
        property(&stale, &xattrs::getcontentmd5()),
        Some(principal_reconciler::store::md5_hex(&edited))
    );
    a.w.cmd().arg("doctor").assert().code(0);
}

#[test]
fn a_rehearsal_never_writes_the_real_address_books() {
    let a = AbWorld::new(Layout::Separate, 2, 8, 39, false);
    let real = a.trees();
    let rehearsal = a.w.path("rehearsal");
    a.w.cmd()
        .args(["migrate", "--rehearse"])
        .arg(&rehearsal)
        .assert()
        .code(0);
    let now = a.trees();
    assert_same_tree(&now.0, &real.0, "the real store");
    assert_same_tree(&now.1, &real.1, "the real address books");
    let copy = rehearsal.join("AddressBook");
    let new = a.new_guid(&a.ab.homes[0].id);
    let group = a.ab.groups[0].path.file_name().unwrap();
    let moved = copy.join(format!(
        "addressbooks/__uids__/{}/{}/{new}/addressbook",
        &new[0..2],
        &new[2..4]
    ));
    assert_eq!(
        std::fs::read(moved.join(group)).unwrap(),
        expected_group(&a, 0),
        "the rehearsal's copy is migrated"
    );
    // The rehearsal's own configuration names the copy: commands run with it stay in the copy.
    let cfg = rehearsal.join("principal-reconciler.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let want = format!("addressbook_root = \"{}\"", copy.display());
    assert!(text.contains(&want), "{text}");
    let run = |args: &[&str]| {
        assert_cmd::Command::cargo_bin("principal-reconciler")
            .unwrap()
            .arg("--config")
            .arg(&cfg)
            .arg("--no-progress")
            .args(args)
            .assert()
    };
    run(&["verify"]).code(0);
    run(&["rollback"]).code(0);
    let now = a.trees();
    assert_same_tree(
        &now.1,
        &real.1,
        "the real address books after the rehearsal's rollback",
    );
    assert_same_tree(&tree(&copy), &real.1, "the copy rolled back");
}

/// An apply interrupted with an address-book home step recorded but not taken (the crash window
/// of every journaled step) resumes it at the address-book root and ends where a whole run ends.
#[test]
fn an_interrupted_address_book_home_move_is_finished_by_the_next_apply() {
    let a = AbWorld::new(Layout::Separate, 3, 9, 40, false);
    a.w.cmd().arg("plan").assert().code(0);
    a.w.cmd().arg("apply").assert().code(0);
    let done = a.trees();
    let state = rusqlite::Connection::open(a.w.path("state/state.sqlite")).unwrap();
    let (seq, from, to): (i64, String, String) = state
        .query_row(
            "SELECT seq, rel_path, target_path FROM journal WHERE run_id = 1 AND action = 'move' AND rel_path LIKE 'addressbooks/%' ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    // Put the store back as it was just before that step, and the journal as the crash left it.
    let later: i64 = state
        .query_row(
            "SELECT COUNT(*) FROM journal WHERE run_id = 1 AND seq > ?1",
            [seq],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        later, 0,
        "the last address-book move is the run's last step"
    );
    std::fs::rename(a.ab.root.join(&to), a.ab.root.join(&from)).unwrap();
    state
        .execute(
            "UPDATE journal SET state = 'pending' WHERE run_id = 1 AND seq = ?1",
            [seq],
        )
        .unwrap();
    state
        .execute(
            "UPDATE runs SET status = 'running', state = 'applying', finished_at = NULL WHERE id = 1",
            [],
        )
        .unwrap();
    drop(state);
    a.w.cmd()
        .arg("apply")
        .assert()
        .code(0)
        .stdout(predicate::str::contains("resuming it"));
    let now = a.trees();
    assert_same_tree(&now.1, &done.1, "address books after the resumed apply");
    assert_same_tree(&now.0, &done.0, "calendar store after the resumed apply");
}

#[test]
fn a_member_acknowledged_as_someone_who_left_is_kept_and_not_a_problem() {
    let a = AbWorld::new(Layout::Separate, 2, 6, 41, true);
    a.w.cmd().arg("plan").assert().code(0);
    a.w.cmd().arg("apply").assert().code(0);
    a.w.cmd()
        .arg("verify")
        .assert()
        .code(1)
        .stdout(predicate::str::contains("unresolved-member"));
    let text = std::fs::read_to_string(&a.w.config).unwrap();
    let text = text.replace(
        "[rewrite]\n",
        &format!("[rewrite]\nleavers = [\"{DEPARTED}\"]\n"),
    );
    std::fs::write(&a.w.config, text).unwrap();
    a.w.cmd()
        .arg("verify")
        .assert()
        .code(0)
        .stdout(predicate::str::contains("no problems"));
    let (_, doc) = json(&a.w, &["plan"]);
    let ab = &doc["plan"]["addressbooks"];
    assert_eq!(ab["acknowledged_members"], a.ab.groups.len(), "{ab}");
    assert_eq!(ab["unresolved_members"], 0, "{ab}");
    assert_eq!(ab["members_changed"], 0, "{ab}");
    let mapping = std::fs::read_to_string(a.w.path("reports/mapping.csv")).unwrap();
    assert!(
        mapping.lines().any(
            |l| l.starts_with(&format!("urn:uuid:{DEPARTED},")) && l.contains(",acknowledged,")
        ),
        "{mapping}"
    );
}
