//! Nothing written outside the store, and inputs that must stop a run, through the CLI: a folder
//! swapped for a symbolic link, a hard link from outside the store, a cleartext bind, external
//! addresses, an empty directory, TLS failures in words, a zero timeout.

use crate::support::slapd::{self, Slapd, BASE, ROOTDN, ROOTPW};
use crate::support::world::{assert_same_tree, tree, World};
use std::path::{Path, PathBuf};

fn run(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = assert_cmd::Command::cargo_bin("principal-reconciler")
        .unwrap()
        .arg("--config")
        .arg(config)
        .arg("--no-progress")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn planned_rels(w: &World) -> Vec<String> {
    let c = rusqlite::Connection::open(w.path("state/state.sqlite")).unwrap();
    let mut st = c
        .prepare("SELECT rel_path FROM plan_resources ORDER BY rel_path")
        .unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn a_folder_or_file_swapped_for_a_symlink_after_plan_is_never_written_through() {
    let w = World::new(3, 30, 51);
    assert_eq!(run(&w.config, &["plan"]).0, 0);
    let rels = planned_rels(&w);
    // A whole collection moved outside the store and linked back in its place...
    let coll = Path::new(&rels[0]).parent().unwrap().to_path_buf();
    let outside = w.path("outside");
    std::fs::create_dir(&outside).unwrap();
    let moved = outside.join("calendar");
    std::fs::rename(w.store.root.join(&coll), &moved).unwrap();
    std::os::unix::fs::symlink(&moved, w.store.root.join(&coll)).unwrap();
    // ... and, in another collection, one resource replaced by a link to a file outside.
    let other = rels
        .iter()
        .find(|r| !Path::new(r).starts_with(&coll))
        .unwrap()
        .clone();
    let victim = outside.join("victim.ics");
    std::fs::rename(w.store.root.join(&other), &victim).unwrap();
    std::os::unix::fs::symlink(&victim, w.store.root.join(&other)).unwrap();
    let outside_before = tree(&outside);
    let (code, out, err) = run(&w.config, &["apply"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("is a symbolic link; not followed"), "{out}");
    assert!(
        out.contains(&format!("skipped {other}: cannot read")),
        "{out}"
    );
    assert_same_tree(
        &tree(&outside),
        &outside_before,
        "outside the store after apply",
    );
    let (code, out, err) = run(&w.config, &["rollback"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_same_tree(
        &tree(&outside),
        &outside_before,
        "outside the store after rollback",
    );

    // A collection swapped for a link after apply: rollback does not write through it either.
    let w = World::new(2, 12, 55);
    assert_eq!(run(&w.config, &["plan"]).0, 0);
    assert_eq!(run(&w.config, &["apply"]).0, 0);
    let ics = tree(&w.store.root)
        .into_keys()
        .find(|p| p.ends_with(".ics"))
        .unwrap();
    let coll = Path::new(&ics).parent().unwrap().to_path_buf();
    let outside = w.path("outside");
    std::fs::create_dir(&outside).unwrap();
    let moved = outside.join("calendar");
    std::fs::rename(w.store.root.join(&coll), &moved).unwrap();
    std::os::unix::fs::symlink(&moved, w.store.root.join(&coll)).unwrap();
    let outside_before = tree(&outside);
    let (code, out, err) = run(&w.config, &["rollback", "--force"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("is a symbolic link; not followed"), "{out}");
    assert_same_tree(
        &tree(&outside),
        &outside_before,
        "outside the store after rollback",
    );
}

#[test]
fn doctor_fix_leaves_a_file_hard_linked_from_outside_the_store_alone_and_reports_it() {
    let w = World::new(1, 6, 52);
    let res: Vec<PathBuf> = tree(&w.store.root)
        .into_keys()
        .filter(|p| p.ends_with(".ics"))
        .map(|p| w.store.root.join(p))
        .collect();
    let (linked, plain) = (&res[0], &res[1]);
    // Another name for the first resource, outside the store, with a wrong owner and no MD5.
    let outside = w.path("outside.ics");
    std::fs::hard_link(linked, &outside).unwrap();
    for p in [linked, plain] {
        std::os::unix::fs::chown(p, Some(0), Some(0)).unwrap();
        for n in xattr::list(p).unwrap() {
            if n.to_string_lossy().contains("getcontentmd5") {
                xattr::remove(p, &n).unwrap();
            }
        }
    }
    let attrs = |p: &Path| -> Vec<String> {
        xattr::list(p)
            .unwrap()
            .map(|n| n.to_string_lossy().into_owned())
            .collect()
    };
    let outside_attrs = attrs(&outside);
    let (code, out, err) = run(&w.config, &["--json", "doctor", "--fix"]);
    assert_eq!(code, 1, "{out}\n{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rel = linked
        .strip_prefix(&w.store.root)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let f = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "hardlink")
        .unwrap_or_else(|| panic!("no hardlink finding: {doc}"));
    assert_eq!(f["path"], rel.as_str());
    assert!(
        f["detail"].as_str().unwrap().contains("2 hard links"),
        "{f}"
    );
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(&outside).unwrap();
    assert_eq!(
        (m.uid(), m.gid()),
        (0, 0),
        "the outside file keeps its owner"
    );
    assert_eq!(attrs(&outside), outside_attrs, "and its attributes");
    // The plain file is repaired as before.
    let m = std::fs::metadata(plain).unwrap();
    assert_eq!((m.uid(), m.gid()), (501, 20));
    assert!(attrs(plain).iter().any(|n| n.contains("getcontentmd5")));
}

fn ldap_config(dir: &Path, directory: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("store")).unwrap();
    std::fs::write(dir.join("pw"), format!("{ROOTPW}\n")).unwrap();
    let cfg = dir.join("principal-reconciler.toml");
    std::fs::write(
        &cfg,
        format!("[directory]\n{directory}\n\n[store]\npath = \"store\"\n\n[rewrite]\ninternal_domains = [\"example.com\"]\n"),
    )
    .unwrap();
    cfg
}

#[test]
fn a_cleartext_bind_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("ldap://127.0.0.1:{port}");
    let section = format!(
        "url = \"{url}\"\nbase = \"{BASE}\"\nbind_dn = \"{ROOTDN}\"\npassword_file = \"pw\""
    );
    let cfg = ldap_config(dir.path(), &section);
    let (code, _, err) = run(&cfg, &["directory", "pull"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("would send the password in clear"), "{err}");
    assert!(err.contains("allow_cleartext_bind = true"), "{err}");
    // StartTLS, or the explicit unsafe switch, pass the check (and then meet the closed port).
    for extra in ["starttls = true", "allow_cleartext_bind = true"] {
        let cfg = ldap_config(dir.path(), &format!("{section}\n{extra}"));
        let (code, _, err) = run(&cfg, &["directory", "pull"]);
        assert_eq!(code, 3, "{extra}: {err}");
        assert!(err.contains("connect failed"), "{extra}: {err}");
    }
    // The commented example documents the switch as unsafe.
    let (_, example, _) = run(&cfg, &["config"]);
    let line = example
        .lines()
        .find(|l| l.contains("allow_cleartext_bind"))
        .expect("allow_cleartext_bind in the example");
    assert!(line.to_lowercase().contains("unsafe"), "{line}");
}

#[test]
fn a_zero_timeout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ldap_config(
        dir.path(),
        &format!("url = \"ldap://127.0.0.1:9\"\nbase = \"{BASE}\"\ntimeout = 0"),
    );
    let (code, _, err) = run(&cfg, &["directory", "pull"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("timeout must be at least 1"), "{err}");
}

/// Adds an attendee to the first VEVENT of a resource (keeping its line endings).
fn add_attendee(path: &Path, line: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    let eol = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let at = text.find("END:VEVENT").unwrap();
    let new = format!("{}{line}{eol}{}", &text[..at], &text[at..]);
    std::fs::write(path, new).unwrap();
}

#[test]
fn external_addresses_are_never_rewritten_and_internal_domains_is_required() {
    let w = World::new(3, 20, 53);
    // Someone at a partner company, who also has a record in the directory.
    let ldif = w.path("new.ldif");
    let mut text = std::fs::read_to_string(&ldif).unwrap();
    text.push_str("dn: uid=chris,cn=users,dc=example,dc=com\nobjectClass: inetOrgPerson\nobjectClass: apple-user\nuid: chris\ncn: Chris Partner\nsn: Partner\nmail: chris@partner.org\napple-generateduid: 0C0C0C0C-0000-4000-8000-00000000C0C0\n\n");
    std::fs::write(&ldif, text).unwrap();
    let ics = tree(&w.store.root)
        .into_keys()
        .find(|p| p.ends_with(".ics"))
        .unwrap();
    add_attendee(
        &w.store.root.join(&ics),
        "ATTENDEE;CN=Chris Partner;PARTSTAT=NEEDS-ACTION:mailto:chris@partner.org",
    );
    let config = std::fs::read_to_string(&w.config).unwrap();
    // No [rewrite] section at all, or an empty list: a usage error naming the key.
    for variant in [
        config.replace("[rewrite]\ninternal_domains = [\"example.com\"]\n", ""),
        config.replace(
            "internal_domains = [\"example.com\"]",
            "internal_domains = []",
        ),
    ] {
        std::fs::write(&w.config, &variant).unwrap();
        let (code, out, err) = run(&w.config, &["plan"]);
        assert_eq!(code, 2, "{out}\n{err}");
        assert!(
            err.contains("[rewrite] internal_domains is not set"),
            "{err}"
        );
        assert!(err.contains("example.com (6)"), "{err}");
        assert!(err.contains("partner.org (1)"), "{err}");
    }
    std::fs::write(&w.config, &config).unwrap();
    let (code, out, err) = run(&w.config, &["plan"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let mapping = std::fs::read_to_string(w.path("reports/mapping.csv")).unwrap();
    let row = mapping
        .lines()
        .find(|l| l.starts_with("mailto:chris@partner.org,"))
        .unwrap_or_else(|| panic!("no row for chris: {mapping}"));
    assert!(row.contains(",external,"), "{row}");
}

#[test]
fn an_empty_snapshot_is_an_error_unless_allowed() {
    let w = World::new(1, 3, 54);
    std::fs::write(
        w.path("new.ldif"),
        format!(
            "version: 1\n\ndn: {BASE}\nobjectClass: top\nobjectClass: dcObject\ndc: example\n\n"
        ),
    )
    .unwrap();
    for args in [&["directory", "pull"][..], &["plan"]] {
        let (code, out, err) = run(&w.config, args);
        assert_eq!(code, 3, "{args:?}: {out}\n{err}");
        assert!(
            err.contains(
                "new.ldif: the LDIF snapshot holds no user, group, place or resource record"
            ),
            "{err}"
        );
        assert!(err.contains("allow_empty = true"), "{err}");
    }
    let snap = w.path("snap.ldif");
    let (code, _, err) = run(
        &w.config,
        &["directory", "export", "--ldif", snap.to_str().unwrap()],
    );
    assert_eq!(code, 3, "{err}");
    assert!(!snap.exists(), "no empty snapshot written");
    let text = std::fs::read_to_string(&w.config).unwrap();
    std::fs::write(
        &w.config,
        text.replace(
            "ldif = \"new.ldif\"",
            "ldif = \"new.ldif\"\nallow_empty = true",
        ),
    )
    .unwrap();
    assert_eq!(run(&w.config, &["directory", "pull"]).0, 0);
}

#[test]
fn an_empty_live_directory_names_the_base_or_the_guid_attribute() {
    let Some(srv) = Slapd::start(&slapd::od_users(3)) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = ldap_config(
        dir.path(),
        &format!("url = \"{}\"\nbase = \"dc=exmple,dc=com\"", srv.url),
    );
    let (code, _, err) = run(&cfg, &["directory", "pull"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("returned no user, group, place or resource record"),
        "{err}"
    );
    assert!(err.contains("cn=users,dc=exmple,dc=com"), "{err}");
    assert!(err.contains("check [directory] base"), "{err}");
    let cfg = ldap_config(
        dir.path(),
        &format!(
            "url = \"{}\"\nbase = \"{BASE}\"\n[directory.attributes]\nguid = \"apple-generateduidx\"",
            srv.url
        ),
    );
    let (code, _, err) = run(&cfg, &["directory", "pull"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("3 entries were skipped for want of the GUID attribute `apple-generateduidx`"),
        "{err}"
    );
}

#[test]
fn tls_failures_are_explained_in_words_with_what_to_check() {
    let Some(bad) = Slapd::builder()
        .tls_with_ca_as_server_cert()
        .entries(&slapd::od_users(1))
        .start()
    else {
        return;
    };
    let Some(other) = Slapd::builder().tls().entries(&slapd::od_users(1)).start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ldaps = bad.ldaps_url.clone().unwrap();
    // The server presents its CA certificate as its own; tls_ca_file is that CA.
    let cfg = ldap_config(
        dir.path(),
        &format!(
            "url = \"{ldaps}\"\nbase = \"{BASE}\"\ntls_ca_file = \"{}\"",
            bad.ca_file.as_ref().unwrap().display()
        ),
    );
    let (code, _, err) = run(&cfg, &["directory", "pull"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains(&format!("{ldaps}: TLS handshake failed")),
        "{err}\nslapd log: {}",
        bad.log()
    );
    assert!(
        err.contains("presents a CA certificate as its own certificate"),
        "{err}"
    );
    assert!(
        err.contains("openssl s_client -connect 127.0.0.1:"),
        "{err}"
    );
    assert!(!err.contains("Other("), "{err}");
    assert!(
        !err.contains("give the CA"),
        "advises setting what is set: {err}"
    );
    // A tls_ca_file that holds the wrong CA says so, naming the file.
    let wrong = bad.ca_file.as_ref().unwrap();
    let cfg = ldap_config(
        dir.path(),
        &format!(
            "url = \"{}\"\nbase = \"{BASE}\"\nstarttls = true\ntls_ca_file = \"{}\"",
            other.url,
            wrong.display()
        ),
    );
    let (code, _, err) = run(&cfg, &["directory", "pull"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("starttls failed"), "{err}");
    assert!(
        err.contains(&format!(
            "not issued by the CA certificate(s) in tls_ca_file {}",
            wrong.display()
        )),
        "{err}"
    );
    assert!(err.contains("-starttls ldap"), "{err}");
}
