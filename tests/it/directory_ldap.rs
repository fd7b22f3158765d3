//! The live LDAP pull against a real slapd started by the test (tests/support/slapd.rs).

use crate::support::slapd;

use principal_reconciler::address::RecordType;
use principal_reconciler::config::{Config, DirectoryConfig};
use principal_reconciler::directory::{load_current, load_current_with, Directory};
use principal_reconciler::error::{Error, ErrorKind};
use slapd::{guid, od_user, od_users, Slapd, BASE, ROOTDN, ROOTPW};
use std::path::Path;

/// A [directory] section parsed like the real configuration file.
fn cfg(url: &str, extra: &str) -> DirectoryConfig {
    let text = format!(
        "[directory]\nurl = \"{url}\"\nbase = \"{BASE}\"\n{extra}\n[store]\npath = \"s\"\n"
    );
    Config::parse(&text, Path::new("/tmp/pr-test.toml"))
        .expect("config")
        .directory
}

fn count(d: &Directory, k: RecordType) -> usize {
    d.records.iter().filter(|r| r.kind == k).count()
}

fn err(r: Result<Directory, Error>) -> Error {
    match r {
        Ok(d) => panic!("expected an error, got {} records", d.records.len()),
        Err(e) => {
            eprintln!("error message: {}", e.message);
            e
        }
    }
}

fn od_fixture() -> String {
    let mut s = String::new();
    s.push_str(&od_user("alice", 1, "Alice Liddell", "Alice@Example.COM"));
    s.push_str(&od_user("bob", 2, "Bob Builder", "bob@example.com"));
    s.push_str(&format!(
        "dn: cn=staff,cn=groups,{BASE}\nobjectClass: top\nobjectClass: posixGroup\nobjectClass: apple-group\ncn: staff\n\
         gidNumber: 20\napple-group-realname: Staff Members\napple-generateduid: {}\nmemberUid: alice\nmemberUid: bob\n\
         apple-group-memberguid: {}\napple-group-memberguid: {}\napple-group-nestedgroup: {}\n\n",
        guid(2, 1),
        guid(1, 1),
        guid(1, 2),
        guid(2, 2)
    ));
    s.push_str(&format!(
        "dn: cn=all,cn=groups,{BASE}\nobjectClass: top\nobjectClass: posixGroup\nobjectClass: apple-group\ncn: all\n\
         gidNumber: 21\napple-generateduid: {}\n\n",
        guid(2, 2)
    ));
    s.push_str(&format!(
        "dn: cn=room1,cn=places,{BASE}\nobjectClass: top\nobjectClass: apple-resource\ncn: room1\n\
         apple-realname: Board Room\napple-generateduid: {}\nmail: room1@example.com\napple-capacity: 12\n\n",
        guid(3, 1)
    ));
    s.push_str(&format!(
        "dn: cn=projector,cn=resources,{BASE}\nobjectClass: top\nobjectClass: apple-resource\ncn: projector\n\
         apple-generateduid: {}\n\n",
        guid(4, 1)
    ));
    // A user whose GUID is missing: skipped with a warning naming the DN.
    s.push_str(&format!(
        "dn: uid=noguid,cn=users,{BASE}\nobjectClass: top\nobjectClass: person\nobjectClass: organizationalPerson\n\
         objectClass: inetOrgPerson\nobjectClass: apple-user\nuid: noguid\ncn: No Guid\nsn: x\n\n"
    ));
    s
}

#[test]
fn od_records_are_read_with_the_right_fields() {
    let Some(srv) = Slapd::start(&od_fixture()) else {
        return;
    };
    let d = load_current(&cfg(&srv.url, "")).expect("pull");
    assert_eq!(count(&d, RecordType::User), 2, "{:?}", d.records);
    assert_eq!(count(&d, RecordType::Group), 2);
    assert_eq!(count(&d, RecordType::Location), 1);
    assert_eq!(count(&d, RecordType::Resource), 1);
    let alice = d
        .records
        .iter()
        .find(|r| r.short_names == ["alice"])
        .unwrap();
    assert_eq!(alice.guid.as_str(), guid(1, 1));
    assert_eq!(alice.full_name.as_deref(), Some("Alice Liddell"));
    assert_eq!(alice.emails, vec!["alice@example.com"]);
    assert_eq!(alice.source, format!("uid=alice,cn=users,{BASE}"));
    let staff = d
        .records
        .iter()
        .find(|r| r.short_names == ["staff"])
        .unwrap();
    assert_eq!(staff.kind, RecordType::Group);
    assert_eq!(staff.full_name.as_deref(), Some("Staff Members"));
    assert_eq!(staff.member_names, vec!["alice", "bob"]);
    let members: Vec<&str> = staff.member_guids.iter().map(|g| g.as_str()).collect();
    assert_eq!(members, vec![guid(1, 1), guid(1, 2)]);
    assert_eq!(staff.nested_guids[0].as_str(), guid(2, 2));
    let room = d
        .records
        .iter()
        .find(|r| r.kind == RecordType::Location)
        .unwrap();
    assert_eq!(room.full_name.as_deref(), Some("Board Room"));
    assert_eq!(room.short_names, vec!["room1"]);
    assert_eq!(room.emails, vec!["room1@example.com"]);
    let projector = d
        .records
        .iter()
        .find(|r| r.kind == RecordType::Resource)
        .unwrap();
    assert_eq!(
        projector.full_name.as_deref(),
        Some("projector"),
        "apple-realname missing: cn"
    );
    assert!(
        d.warnings
            .iter()
            .any(|w| w.contains(&format!("uid=noguid,cn=users,{BASE}"))),
        "{:?}",
        d.warnings
    );
}

#[test]
fn paging_gets_past_a_small_size_limit_when_the_server_allows_it() {
    let Some(srv) = Slapd::builder()
        .sizelimit(3)
        .prtotal_unlimited()
        .entries(&od_users(10))
        .start()
    else {
        return;
    };
    let d = load_current(&cfg(&srv.url, "page_size = 2")).expect("pull");
    assert_eq!(count(&d, RecordType::User), 10);
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
}

#[test]
fn a_size_limit_fails_the_pull_naming_the_limit() {
    let Some(srv) = Slapd::builder().sizelimit(3).entries(&od_users(10)).start() else {
        return;
    };
    let e = err(load_current(&cfg(&srv.url, "page_size = 2")));
    assert_eq!(e.kind, ErrorKind::Runtime);
    assert!(e.message.starts_with(&srv.url), "{}", e.message);
    assert!(
        e.message.contains("LDAP result 4 (sizeLimitExceeded)"),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("size.prtotal=unlimited"),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("maximum number of search results"),
        "{}",
        e.message
    );
    assert!(e.message.contains("allow_partial"), "{}", e.message);
    assert!(!e.message.contains('\n'), "one line: {}", e.message);
}

#[test]
fn allow_partial_turns_the_limit_into_a_warning() {
    let Some(srv) = Slapd::builder().sizelimit(3).entries(&od_users(10)).start() else {
        return;
    };
    let d =
        load_current(&cfg(&srv.url, "page_size = 2\nallow_partial = true")).expect("partial pull");
    let users = count(&d, RecordType::User);
    assert!(users > 0 && users < 10, "{users} users");
    assert!(
        d.warnings
            .iter()
            .any(|w| w.contains("sizeLimitExceeded") && w.contains("cut the list short")),
        "{:?}",
        d.warnings
    );
}

#[test]
fn starttls_and_ldaps_are_verified_against_the_ca() {
    let Some(srv) = Slapd::builder().tls().entries(&od_fixture()).start() else {
        return;
    };
    let ca = srv.ca_file.clone().unwrap();
    let ldaps = srv.ldaps_url.clone().unwrap();
    let with_ca = format!("tls_ca_file = \"{}\"", ca.display());
    let d = load_current(&cfg(&srv.url, &format!("starttls = true\n{with_ca}"))).expect("starttls");
    assert_eq!(count(&d, RecordType::User), 2);
    let d = load_current(&cfg(&ldaps, &with_ca)).expect("ldaps");
    assert_eq!(count(&d, RecordType::User), 2);

    // Without the CA the certificate is unknown: one clear TLS line, runtime error.
    let e = err(load_current(&cfg(&ldaps, "")));
    assert_eq!(e.kind, ErrorKind::Runtime);
    assert!(
        e.message
            .starts_with(&format!("{ldaps}: TLS handshake failed:")),
        "{}",
        e.message
    );
    assert!(e.message.contains("tls_ca_file"), "{}", e.message);
    let e = err(load_current(&cfg(&srv.url, "starttls = true")));
    assert!(
        e.message
            .starts_with(&format!("{}: starttls failed:", srv.url)),
        "{}",
        e.message
    );
    assert!(
        e.message.to_lowercase().contains("certificate"),
        "{}",
        e.message
    );

    // Only when asked for: no verification.
    let d = load_current(&cfg(&ldaps, "tls_insecure = true")).expect("insecure");
    assert_eq!(count(&d, RecordType::User), 2);
}

#[test]
fn a_wrong_password_names_result_49() {
    let Some(srv) = Slapd::start(&od_fixture()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "not the password\n").unwrap();
    let c = cfg(
        &srv.url,
        &format!(
            "bind_dn = \"{ROOTDN}\"\npassword_file = \"{}\"\nallow_cleartext_bind = true",
            pw.display()
        ),
    );
    let e = err(load_current(&c));
    assert_eq!(e.kind, ErrorKind::Runtime);
    assert!(
        e.message.contains(&format!("bind as {ROOTDN} failed")),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("LDAP result 49 (invalidCredentials)"),
        "{}",
        e.message
    );
    assert!(
        !e.message.contains("not the password"),
        "password leaked: {}",
        e.message
    );
    // The right one (trailing newline of the file ignored) binds as the rootdn.
    std::fs::write(&pw, format!("{ROOTPW}\n")).unwrap();
    assert_eq!(count(&load_current(&c).expect("bind"), RecordType::User), 2);
}

#[test]
fn an_unreachable_server_fails_at_connect() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("ldap://127.0.0.1:{port}");
    let e = err(load_current(&cfg(&url, "timeout = 5")));
    assert_eq!(e.kind, ErrorKind::Runtime);
    assert!(
        e.message.starts_with(&format!("{url}: connect failed:")),
        "{}",
        e.message
    );
    assert!(e.message.contains("refused"), "{}", e.message);
}

#[test]
fn a_server_stopped_mid_pull_is_a_clear_error() {
    let Some(mut srv) = Slapd::builder().entries(&od_users(200)).start() else {
        return;
    };
    let pid = srv.pid().unwrap() as i32;
    let seen = std::sync::atomic::AtomicUsize::new(0);
    let kill_after_five = || {
        if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 4 {
            // SIGKILL by pid: the next page request finds the server gone.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    };
    let e = err(load_current_with(
        &cfg(&srv.url, "page_size = 1\ntimeout = 10"),
        &kill_after_five,
    ));
    srv.stop();
    assert_eq!(e.kind, ErrorKind::Runtime);
    assert!(
        e.message
            .starts_with(&format!("{}: search of cn=users,{BASE}", srv.url)),
        "{}",
        e.message
    );
    assert!(e.message.contains("after 5 user entries"), "{}", e.message);
}

#[test]
fn filter_overrides_with_special_characters_are_escaped() {
    let odd = "Star*(Paren)\\Back";
    let mut ldif = od_users(3);
    ldif.push_str(&od_user("odd", 9, odd, "odd@example.com"));
    ldif.push_str(&od_user("star", 10, "Star", "star@example.com"));
    let Some(srv) = Slapd::start(&ldif) else {
        return;
    };
    let filter = format!(
        "(&(objectClass=apple-user)(cn={}))",
        ldap3::ldap_escape(odd)
    );
    assert_eq!(
        filter,
        "(&(objectClass=apple-user)(cn=Star\\2a\\28Paren\\29\\5cBack))"
    );
    let toml_filter = filter.replace('\\', "\\\\");
    let d = load_current(&cfg(
        &srv.url,
        &format!("[directory.filters]\nuser = \"{toml_filter}\""),
    ))
    .expect("pull");
    let users: Vec<&str> = d
        .records
        .iter()
        .filter(|r| r.kind == RecordType::User)
        .map(|r| r.short_names[0].as_str())
        .collect();
    assert_eq!(users, vec!["odd"]);
    // A broken override is a usage error naming the type.
    let e = err(load_current(&cfg(
        &srv.url,
        "[directory.filters]\nuser = \"(cn=a(b)\"",
    )));
    assert_eq!(e.kind, ErrorKind::Usage, "{}", e.message);
    assert!(e.message.contains("user filter"), "{}", e.message);
}

#[test]
fn openldap_preset_reads_entry_uuid() {
    let Some(srv) = Slapd::start(&od_users(4)) else {
        return;
    };
    let d = load_current(&cfg(&srv.url, "preset = \"openldap\"")).expect("pull");
    assert_eq!(count(&d, RecordType::User), 4);
    let out = std::process::Command::new("ldapsearch")
        .args([
            "-x",
            "-LLL",
            "-H",
            &srv.url,
            "-b",
            &format!("uid=user0,cn=users,{BASE}"),
            "-s",
            "base",
            "entryUUID",
        ])
        .output()
        .expect("ldapsearch");
    let text = String::from_utf8_lossy(&out.stdout);
    let uuid = text
        .lines()
        .find_map(|l| l.strip_prefix("entryUUID: "))
        .expect("entryUUID")
        .to_uppercase();
    let user0 = d
        .records
        .iter()
        .find(|r| r.short_names == ["user0"])
        .unwrap();
    assert_eq!(user0.guid.as_str(), uuid);
    assert_ne!(
        user0.guid.as_str(),
        guid(1, 0),
        "must not read apple-generateduid"
    );
}

#[test]
fn binary_guids_are_read_little_endian_from_attrs_or_bin_attrs() {
    use base64::Engine;
    // One id that is not UTF-8 (arrives in bin_attrs), one that is plain ASCII (arrives in attrs).
    let ids: [[u8; 16]; 2] = [
        [
            0x67, 0x97, 0xe1, 0xe5, 0xec, 0xb5, 0x15, 0x4f, 0x96, 0x0f, 0x86, 0x5c, 0x28, 0xc0,
            0x15, 0xfa,
        ],
        *b"ABCDEFGHIJKLMNOP",
    ];
    let mut ldif = String::new();
    for (i, id) in ids.iter().enumerate() {
        ldif.push_str(&format!(
            "dn: uid=ad{i},cn=users,{BASE}\nobjectClass: inetOrgPerson\nobjectClass: testGuidObject\nuid: ad{i}\ncn: AD {i}\nsn: x\n\
             testBinaryGuid:: {}\n\n",
            base64::engine::general_purpose::STANDARD.encode(id)
        ));
    }
    let Some(srv) = Slapd::start(&ldif) else {
        return;
    };
    let c = cfg(
        &srv.url,
        "preset = \"active-directory\"\n[directory.attributes]\nguid = \"testBinaryGuid\"\nshort_name = \"uid\"\n\
         [directory.filters]\nuser = \"(objectClass=testGuidObject)\"\ngroup = \"(objectClass=groupOfNames)\"",
    );
    let d = load_current(&c).expect("pull");
    let mut got: Vec<(String, String)> = d
        .records
        .iter()
        .map(|r| (r.short_names[0].clone(), r.guid.as_str().to_string()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (
                "ad0".to_string(),
                "E5E19767-B5EC-4F15-960F-865C28C015FA".to_string()
            ),
            (
                "ad1".to_string(),
                "44434241-4645-4847-494A-4B4C4D4E4F50".to_string()
            ),
        ],
        "{:?}",
        d.warnings
    );
}
