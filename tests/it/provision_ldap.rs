//! `provision` against a real slapd: an Open Directory style calendar access group that still
//! lists old GUIDs and lacks some new users; the report, `--apply`, a second run, and a bind
//! without write rights.

use crate::support::slapd;

use assert_cmd::Command;
use slapd::{guid, od_user, Slapd, BASE, ROOTDN, ROOTPW};
use std::path::{Path, PathBuf};

const OLD_ALICE: &str = "0A11CE00-0000-4000-8000-000000000001";
const OLD_GONE: &str = "0DEAD000-0000-4000-8000-000000000009";
const GROUP_DN: &str = "cn=com.apple.access_calendar,cn=groups,dc=example,dc=com";
const READER_DN: &str = "cn=reader,dc=example,dc=com";
const READER_PW: &str = "reader secret";

fn fixture() -> String {
    let mut s = String::new();
    s.push_str(&od_user("alice", 1, "Alice Liddell", "alice@example.com"));
    s.push_str(&od_user("bob", 2, "Bob Builder", "bob@example.com"));
    s.push_str(&od_user("carol", 3, "Carol Singer", "carol@example.com"));
    s.push_str(&od_user("dave", 4, "Dave Grohl", "dave@example.com"));
    // staff (nested in the access group) holds carol.
    s.push_str(&format!(
        "dn: cn=staff,cn=groups,{BASE}\nobjectClass: top\nobjectClass: posixGroup\nobjectClass: apple-group\ncn: staff\n\
         gidNumber: 30\napple-generateduid: {}\napple-group-memberguid: {}\n\n",
        guid(2, 1),
        guid(1, 3)
    ));
    // The access group: alice by her OLD GUID, bob by his new one, staff nested, a GUID of
    // someone who left; memberUid lists alice and bob.
    s.push_str(&format!(
        "dn: {GROUP_DN}\nobjectClass: top\nobjectClass: posixGroup\nobjectClass: apple-group\ncn: com.apple.access_calendar\n\
         gidNumber: 31\napple-group-realname: calendar access\napple-generateduid: {}\nmemberUid: alice\nmemberUid: bob\n\
         apple-group-memberguid: {OLD_ALICE}\napple-group-memberguid: {}\napple-group-memberguid: {OLD_GONE}\n\
         apple-group-nestedgroup: {}\n\n",
        guid(2, 9),
        guid(1, 2),
        guid(2, 1)
    ));
    s.push_str(&format!(
        "dn: cn=room1,cn=places,{BASE}\nobjectClass: top\nobjectClass: apple-resource\ncn: room1\n\
         apple-realname: Board Room\napple-generateduid: {}\nmail: room1@example.com\n\n",
        guid(3, 1)
    ));
    // A bind that may read but not write.
    s.push_str(&format!(
        "dn: {READER_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: reader\nuserPassword: {READER_PW}\n\n"
    ));
    s
}

const ACL: &str = "access to attrs=userPassword by anonymous auth by * none\naccess to * by * read";

fn start() -> Option<Slapd> {
    Slapd::builder().entries(&fixture()).acl(ACL).start()
}

/// A configuration directory: config file, password file, old export, report and state dirs.
fn setup(srv: &Slapd, bind_dn: &str, password: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("pw"), password).unwrap();
    std::fs::write(
        d.join("old-users.txt"),
        format!(
            "0x0A 0x5C 0x3A 0x2C dsRecTypeStandard:Users 4 dsAttrTypeStandard:RecordName dsAttrTypeStandard:GeneratedUID dsAttrTypeStandard:RealName dsAttrTypeStandard:EMailAddress\n\
             alice:{OLD_ALICE}:Alice Liddell:alice@example.com\n"
        ),
    )
    .unwrap();
    std::fs::create_dir(d.join("store")).unwrap();
    let cfg = d.join("principal-reconciler.toml");
    std::fs::write(
        &cfg,
        format!(
            "[directory]\nurl = \"{}\"\nbase = \"{BASE}\"\nbind_dn = \"{bind_dn}\"\npassword_file = \"pw\"\nallow_cleartext_bind = true\n\n\
             [old_directory]\nfiles = [\"old-users.txt\"]\n\n[store]\npath = \"store\"\n\n\
             [rewrite]\ninternal_domains = [\"example.com\"]\n\n\
             [provision]\naccess_group = \"com.apple.access_calendar\"\n",
            srv.url
        ),
    )
    .unwrap();
    (dir, cfg)
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

/// `attr: value` lines of the group, read with ldapsearch (an independent client).
fn group_values(srv: &Slapd, attr: &str) -> Vec<String> {
    let out = std::process::Command::new("ldapsearch")
        .args([
            "-x",
            "-LLL",
            "-o",
            "ldif-wrap=no",
            "-H",
            &srv.url,
            "-D",
            ROOTDN,
            "-w",
            ROOTPW,
        ])
        .args(["-b", GROUP_DN, "-s", "base", "(objectClass=*)", attr])
        .output()
        .expect("ldapsearch (ldap-utils)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{attr}: ")).map(str::to_string))
        .collect();
    v.sort();
    v
}

fn csv_rows(dir: &Path) -> Vec<csv::StringRecord> {
    let mut r = csv::Reader::from_path(dir.join("reports/provision.csv")).unwrap();
    assert_eq!(
        r.headers().unwrap().iter().collect::<Vec<_>>(),
        [
            "guid",
            "short_name",
            "full_name",
            "type",
            "problem",
            "severity",
            "detail",
            "action",
            "rule",
            "evidence"
        ]
    );
    r.records().map(|x| x.unwrap()).collect()
}

#[test]
fn reports_then_fixes_the_access_group_then_finds_nothing() {
    let Some(srv) = start() else { return };
    let (dir, cfg) = setup(&srv, ROOTDN, ROOTPW);

    // 1. Report only: exactly alice (old GUID), dave and room1 (missing); the leaver is a note.
    let (code, stdout, stderr) = run(&cfg, &[]);
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let rows = csv_rows(dir.path());
    let mut needs: Vec<(String, String)> = rows
        .iter()
        .filter(|r| r[5] == *"fix" || r[5] == *"error")
        .map(|r| (r[1].to_string(), r[4].to_string()))
        .collect();
    needs.sort();
    assert_eq!(
        needs,
        [
            (
                "alice".to_string(),
                "stale-guid-in-access-group".to_string()
            ),
            ("dave".to_string(), "not-in-access-group".to_string()),
            ("room1".to_string(), "not-in-access-group".to_string()),
        ]
    );
    let alice = rows.iter().find(|r| &r[1] == "alice").unwrap();
    assert_eq!(&alice[0], guid(1, 1));
    assert_eq!(&alice[8], "old-export-guid", "rule column");
    assert!(
        alice[7].contains(OLD_ALICE) && alice[7].contains(&guid(1, 1)),
        "{:?}",
        alice
    );
    let gone = rows
        .iter()
        .find(|r| &r[0] == OLD_GONE)
        .expect("leaver reported");
    assert_eq!(
        (&gone[4], &gone[5]),
        ("unmatched-guid-in-access-group", "note")
    );
    assert!(
        !rows.iter().any(|r| &r[1] == "bob" || &r[1] == "carol"),
        "bob is a member, carol via staff"
    );
    // Nothing was written to the directory.
    assert!(group_values(&srv, "apple-group-memberguid").contains(&OLD_ALICE.to_string()));

    // 2. --apply fixes the group.
    let (code, stdout, stderr) = run(&cfg, &["--apply"]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let mut want = vec![
        guid(1, 1),
        guid(1, 2),
        guid(1, 4),
        guid(3, 1),
        OLD_GONE.to_string(),
    ];
    want.sort();
    assert_eq!(group_values(&srv, "apple-group-memberguid"), want);
    assert_eq!(group_values(&srv, "memberUid"), ["alice", "bob", "dave"]);
    assert_eq!(group_values(&srv, "apple-group-nestedgroup"), [guid(2, 1)]);

    // 3. A second run finds nothing to do.
    let (code, stdout, stderr) = run(&cfg, &[]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let (code, _, _) = run(&cfg, &["--apply", "--json"]);
    assert_eq!(code, 0);
}

#[test]
fn a_bind_without_write_rights_fails_cleanly() {
    let Some(srv) = start() else { return };
    let (dir, cfg) = setup(&srv, READER_DN, READER_PW);
    let before = group_values(&srv, "apple-group-memberguid");
    let (code, stdout, stderr) = run(&cfg, &["--apply"]);
    assert_eq!(code, 3, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains(&srv.url), "{stderr}");
    assert!(
        stderr.contains(&format!("modify of {GROUP_DN}")),
        "{stderr}"
    );
    assert!(
        stderr.contains("LDAP result 50 (insufficientAccessRights)"),
        "{stderr}"
    );
    assert!(stderr.contains(READER_DN), "{stderr}");
    assert_eq!(group_values(&srv, "apple-group-memberguid"), before);
    // The report was still written before the failed write.
    assert!(dir.path().join("reports/provision.csv").exists());
    // --json carries the same error and exit code.
    let (code, stdout, _) = run(&cfg, &["--apply", "--json"]);
    assert_eq!(code, 3);
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["exit_code"], 3);
    assert!(
        doc["error"].as_str().unwrap().contains("rc")
            || doc["error"].as_str().unwrap().contains("result 50")
    );
}

#[test]
fn many_missing_members_go_in_batches() {
    // 250 users, none in the group: three modifies of at most 100 values for the GUIDs.
    let mut entries = fixture();
    for n in 100..350 {
        entries.push_str(&od_user(
            &format!("u{n}"),
            n,
            &format!("U {n}"),
            &format!("u{n}@example.com"),
        ));
    }
    let Some(srv) = Slapd::builder().entries(&entries).acl(ACL).start() else {
        return;
    };
    let (_dir, cfg) = setup(&srv, ROOTDN, ROOTPW);
    let (code, stdout, stderr) = run(&cfg, &["--apply", "--json"]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let ldap = &doc["applied"]["ldap"];
    // GUIDs: 253 added (250 + dave + room1 + alice's new one) in 3 requests; names: 251 in 3;
    // one removal of the old GUID.
    assert_eq!(ldap["values_added"], 253 + 251, "{ldap}");
    assert_eq!(ldap["values_removed"], 1, "{ldap}");
    assert_eq!(ldap["requests"], 3 + 3 + 1, "{ldap}");
    assert_eq!(group_values(&srv, "apple-group-memberguid").len(), 2 + 253);
    let (code, _, _) = run(&cfg, &[]);
    assert_eq!(code, 0);
}
