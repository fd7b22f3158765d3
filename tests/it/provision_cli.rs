//! `provision` from an LDIF snapshot: augments.xml round trip (untouched bytes stay identical,
//! new records added, stale GUIDs replaced, file well-formed), the dsimport file for the access
//! group, provision.csv content and exit codes 0/1/2.

use assert_cmd::Command;
use std::path::{Path, PathBuf};

const BASE: &str = "dc=example,dc=com";
const ALICE: &str = "A1000000-0000-4000-8000-000000000001";
const OLD_ALICE: &str = "0A11CE00-0000-4000-8000-000000000001";
const BOB: &str = "B0B00000-0000-4000-8000-000000000002";
const NOMAIL: &str = "C0000000-0000-4000-8000-000000000003";
const ROOM: &str = "D0000000-0000-4000-8000-000000000004";
const OLD_GONE: &str = "0DEAD000-0000-4000-8000-000000000009";
const GROUP: &str = "E0000000-0000-4000-8000-000000000005";

fn user(short: &str, guid: &str, mail: Option<&str>) -> String {
    let mail = mail.map(|m| format!("mail: {m}\n")).unwrap_or_default();
    format!(
        "dn: uid={short},cn=users,{BASE}\nobjectClass: inetOrgPerson\nobjectClass: apple-user\nuid: {short}\ncn: {short} full\nsn: {short}\n{mail}apple-generateduid: {guid}\n\n"
    )
}

fn ldif(extra: &str) -> String {
    let mut s = String::from("version: 1\n\n");
    s.push_str(&user("alice", ALICE, Some("alice@example.com")));
    s.push_str(&user("bob", BOB, Some("bob@example.com")));
    s.push_str(&user("nomail", NOMAIL, None));
    s.push_str(&format!(
        "dn: cn=room1,cn=places,{BASE}\nobjectClass: apple-resource\ncn: room1\napple-realname: Board Room\nmail: room1@example.com\napple-generateduid: {ROOM}\n\n"
    ));
    s.push_str(&format!(
        "dn: cn=com.apple.access_calendar,cn=groups,{BASE}\nobjectClass: posixGroup\nobjectClass: apple-group\ncn: com.apple.access_calendar\ngidNumber: 31\napple-generateduid: {GROUP}\nmemberUid: bob\napple-group-memberguid: {BOB}\napple-group-memberguid: {OLD_ALICE}\n\n"
    ));
    s.push_str(extra);
    s
}

/// The augments file as an admin left it: a comment, odd spacing, a record for an old GUID, a
/// record for one that matches nobody, a wildcard, and a Default that disables calendaring.
fn augments() -> String {
    let text = r#"<?xml version="1.0" encoding="utf-8"?>
<!DOCTYPE augments SYSTEM "augments.dtd">
<!-- site augments: hand-edited, keep this comment -->
<augments>
  <record>
    <uid>Default</uid>
    <enable>true</enable>
    <enable-calendar>false</enable-calendar>
  </record>
  <!-- alice (old GUID) -->
  <record>
    <uid>OLD_ALICE</uid>
    <enable>true</enable>
    <enable-calendar>true</enable-calendar>
    <enable-addressbook>true</enable-addressbook>
  </record>
  <record><uid>OLD_GONE</uid><enable>true</enable><enable-calendar>true</enable-calendar></record>
  <record>
    <uid>B0*</uid>
    <enable>true</enable>
    <enable-calendar>true</enable-calendar>
  </record>
</augments>
"#;
    text.replace("OLD_ALICE", OLD_ALICE)
        .replace("OLD_GONE", OLD_GONE)
}

struct Env {
    dir: tempfile::TempDir,
    cfg: PathBuf,
}

fn env(provision: &str, extra_ldif: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("new.ldif"), ldif(extra_ldif)).unwrap();
    std::fs::write(
        d.join("old-users.txt"),
        format!("0x0A 0x5C 0x3A 0x2C dsRecTypeStandard:Users 3 dsAttrTypeStandard:RecordName dsAttrTypeStandard:GeneratedUID dsAttrTypeStandard:EMailAddress\nalice:{OLD_ALICE}:alice@example.com\n"),
    )
    .unwrap();
    std::fs::write(d.join("augments.xml"), augments()).unwrap();
    std::fs::create_dir(d.join("store")).unwrap();
    let cfg = d.join("principal-reconciler.toml");
    std::fs::write(
        &cfg,
        format!(
            "[directory]\nldif = \"new.ldif\"\nbase = \"{BASE}\"\n\n[old_directory]\nfiles = [\"old-users.txt\"]\n\n\
             [store]\npath = \"store\"\n\n[rewrite]\ninternal_domains = [\"example.com\"]\n\n[provision]\n{provision}\n"
        ),
    )
    .unwrap();
    Env { dir, cfg }
}

fn run(cfg: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::cargo_bin("principal-reconciler")
        .unwrap()
        .arg("--config")
        .arg(cfg)
        .arg("--no-progress")
        .arg("provision")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn rows(dir: &Path) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_path(dir.join("reports/provision.csv")).unwrap();
    r.records()
        .map(|x| x.unwrap().iter().map(str::to_string).collect())
        .collect()
}

fn find<'a>(rows: &'a [Vec<String>], guid: &str, problem: &str) -> &'a Vec<String> {
    rows.iter()
        .find(|r| r[0] == guid && r[4] == problem)
        .unwrap_or_else(|| panic!("no {problem} row for {guid}: {rows:#?}"))
}

#[test]
fn augments_round_trip() {
    let e = env(
        "augments_file = \"augments.xml\"\nenable_addressbook = true\n",
        "",
    );
    let path = e.dir.path().join("augments.xml");
    let original = std::fs::read_to_string(&path).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();

    // Report: alice's record has her old GUID; nomail and room1 have no record under a
    // disabling Default; bob is covered by the B0* wildcard.
    let (code, stdout, stderr) = run(&e.cfg, &[]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let r = rows(e.dir.path());
    let alice = find(&r, ALICE, "stale-augment-record");
    assert_eq!(alice[5], "fix");
    assert_eq!(alice[8], "old-export-guid");
    assert!(alice[6].contains("augments.xml:11"), "{alice:?}");
    assert_eq!(find(&r, NOMAIL, "no-augment-record")[5], "fix");
    assert_eq!(find(&r, ROOM, "no-augment-record")[3], "location");
    assert_eq!(find(&r, NOMAIL, "no-email")[5], "warning");
    assert_eq!(find(&r, OLD_GONE, "unmatched-augment-record")[5], "note");
    assert!(
        !r.iter().any(|x| x[0] == BOB),
        "bob is enabled by B0*: {r:#?}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        original,
        "report only"
    );

    // Apply.
    let (code, stdout, stderr) = run(&e.cfg, &["--apply"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let edited = std::fs::read_to_string(&path).unwrap();
    // Well-formed, checked by a real XML parser.
    let doc = roxmltree::Document::parse_with_options(
        &edited,
        roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        },
    )
    .expect("well-formed");
    let uids: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("uid"))
        .map(|n| n.text().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        uids,
        ["Default", ALICE, OLD_GONE, "B0*", NOMAIL, ROOM],
        "stale uid rewritten in place, new records at the end"
    );
    // Everything before the new records is the original with one uid changed, byte for byte.
    let close = original.rfind("</augments>").unwrap();
    let head = original[..close].replace(OLD_ALICE, ALICE);
    assert!(edited.starts_with(&head), "{edited}");
    assert!(edited.ends_with("</augments>\n"));
    let added = &edited[head.len()..edited.len() - "</augments>\n".len()];
    let expected = r#"  <record>
    <uid>NOMAIL</uid>
    <enable>true</enable>
    <enable-calendar>true</enable-calendar>
    <enable-addressbook>true</enable-addressbook>
  </record>
  <record>
    <uid>ROOM</uid>
    <enable>true</enable>
    <enable-calendar>true</enable-calendar>
    <enable-addressbook>true</enable-addressbook>
    <auto-schedule>true</auto-schedule>
  </record>
"#;
    assert_eq!(
        added,
        expected.replace("NOMAIL", NOMAIL).replace("ROOM", ROOM)
    );
    // Mode kept; the original is in the state folder's backups.
    let mode = std::fs::metadata(&path).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o7777,
        0o640
    );
    use sha2::Digest;
    let sha = hex::encode(sha2::Sha256::digest(original.as_bytes()));
    let backup = e
        .dir
        .path()
        .join("principal-reconciler-state/backups")
        .join(&sha[..2])
        .join(&sha);
    assert_eq!(std::fs::read_to_string(backup).unwrap(), original);
    assert!(stdout.contains(&sha), "{stdout}");

    // A second run finds nothing to do (warnings and notes do not count) and writes nothing.
    let (code, stdout, stderr) = run(&e.cfg, &["--apply"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), edited);
    let r = rows(e.dir.path());
    assert!(
        r.iter().all(|x| x[5] == "warning" || x[5] == "note"),
        "{r:#?}"
    );

    // The write was journaled: rollback restores the original byte for byte.
    let out = Command::cargo_bin("principal-reconciler")
        .unwrap()
        .arg("--config")
        .arg(&e.cfg)
        .args(["--no-progress", "rollback"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), original);
}

#[test]
fn access_group_from_a_snapshot_becomes_a_dsimport_file() {
    let e = env(
        "access_group = \"com.apple.access_calendar\"\noutput = \"out/access.dsimport\"\n",
        "",
    );
    let (code, stdout, stderr) = run(&e.cfg, &[]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let r = rows(e.dir.path());
    let needs: Vec<(&str, &str)> = r
        .iter()
        .filter(|x| x[5] == "fix")
        .map(|x| (x[1].as_str(), x[4].as_str()))
        .collect();
    assert_eq!(
        needs,
        [
            ("room1", "not-in-access-group"),
            ("nomail", "not-in-access-group"),
            ("alice", "stale-guid-in-access-group")
        ]
    );
    assert!(!e.dir.path().join("out/access.dsimport").exists());

    let (code, stdout, stderr) = run(&e.cfg, &["--apply"]);
    // The file still has to be imported on the server: exit 1, and the summary says how.
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stdout.contains("dsimport"), "{stdout}");
    let text = std::fs::read_to_string(e.dir.path().join("out/access.dsimport")).unwrap();
    assert_eq!(
        text,
        format!(
            "0x0A 0x5C 0x3A 0x2C dsRecTypeStandard:Groups 4 dsAttrTypeStandard:RecordName dsAttrTypeStandard:GeneratedUID dsAttrTypeStandard:GroupMembers dsAttrTypeStandard:GroupMembership\n\
             com.apple.access_calendar:{GROUP}:{BOB},{ALICE},{NOMAIL},{ROOM}:bob,alice,nomail\n"
        )
    );
    // Our own dsexport reader reads it back as the same group.
    let dir =
        principal_reconciler::directory::load_old(&[e.dir.path().join("out/access.dsimport")])
            .unwrap();
    let g = &dir.records[0];
    assert_eq!(g.short_names, ["com.apple.access_calendar"]);
    assert_eq!(g.member_guids.len(), 4);
    assert_eq!(g.member_names, ["bob", "alice", "nomail"]);
}

#[test]
fn duplicates_are_errors_and_a_clean_directory_exits_0() {
    // Another record with bob's e-mail and another with alice's GUID.
    let extra = format!(
        "{}dn: uid=alice2,cn=users,{BASE}\nobjectClass: inetOrgPerson\nobjectClass: apple-user\nuid: alice2\ncn: x\nsn: x\nmail: a2@example.com\napple-generateduid: {ALICE}\n\n",
        user("bobby", "F0000000-0000-4000-8000-000000000006", Some("Bob@Example.com"))
    );
    let e = env("", &extra);
    let (code, stdout, stderr) = run(&e.cfg, &["--json"]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["counts"]["error"], 3, "{doc:#}");
    let r = rows(e.dir.path());
    let dup = find(&r, BOB, "duplicate-email");
    assert!(
        dup[6].contains("bob@example.com") && dup[6].contains("bobby"),
        "{dup:?}"
    );
    find(
        &r,
        "F0000000-0000-4000-8000-000000000006",
        "duplicate-email",
    );
    let g = find(&r, ALICE, "duplicate-guid");
    assert!(g[6].contains("uid=alice2"), "{g:?}");
    // --apply cannot fix errors: still 1.
    let (code, _, _) = run(&e.cfg, &["--apply"]);
    assert_eq!(code, 1);

    // Nothing configured and every record has an address: nothing to do.
    let e = env("", "");
    std::fs::write(
        e.dir.path().join("new.ldif"),
        format!(
            "version: 1\n\n{}",
            user("alice", ALICE, Some("alice@example.com"))
        ),
    )
    .unwrap();
    let (code, stdout, _) = run(&e.cfg, &[]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("Nothing to do"), "{stdout}");
    assert_eq!(rows(e.dir.path()).len(), 0);
}

#[test]
fn configuration_mistakes_exit_2() {
    let e = env("access_group = \"no-such-group\"\n", "");
    let (code, _, stderr) = run(&e.cfg, &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("no-such-group"), "{stderr}");

    let e = env("augments_file = \"missing.xml\"\n", "");
    let (code, _, stderr) = run(&e.cfg, &[]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("missing.xml") && stderr.contains("not found"),
        "{stderr}"
    );

    let e = env("augments_file = \"augments.xml\"\n", "");
    std::fs::write(
        e.dir.path().join("augments.xml"),
        "<augments>\n  <record>\n    <uid>x</uid>\n</augments>\n",
    )
    .unwrap();
    let (code, _, stderr) = run(&e.cfg, &["--apply"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("augments.xml:4:"), "{stderr}");
}
