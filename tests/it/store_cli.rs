//! `scan` and `doctor` through the real binary: output, JSON and exit codes.

use assert_cmd::Command;
use principal_reconciler::store::generate::StoreBuilder;
use principal_reconciler::store::xattrs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt as _;
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

/// A config file naming the store; `[directory] ldif` is required by the config but not read.
fn config(dir: &Path, store: &Path, kind: &str, owner: Option<&str>) -> PathBuf {
    let mut text = format!(
        "[directory]\nldif = \"x.ldif\"\n\n[store]\nkind = \"{kind}\"\npath = \"{}\"\n",
        store.display()
    );
    if let Some(o) = owner {
        text.push_str(&format!("owner = \"{o}\"\n"));
    }
    let p = dir.join("principal-reconciler.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn bin() -> Command {
    Command::cargo_bin("principal-reconciler").unwrap()
}

fn run_json(cfg: &Path, args: &[&str]) -> (i32, serde_json::Value) {
    let out = bin()
        .arg("-c")
        .arg(cfg)
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), doc)
}

#[test]
fn scan_of_a_clean_store_exits_0() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("Documents");
    let xa = user_xattrs_supported(tmp.path());
    let mut b = StoreBuilder::new(&root)
        .homes(3)
        .resources(40)
        .users_homes(1)
        .symlinks();
    if !xa {
        b = b.without_xattrs();
    }
    b.build().unwrap();
    let cfg = config(tmp.path(), &root, "calendarserver-fs", None);
    let out = bin().arg("-c").arg(&cfg).arg("scan").assert().code(0);
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(text.contains("Resources:    40"), "{text}");
    assert!(
        text.contains("hashed 3") && text.contains("users 1"),
        "{text}"
    );
    // symlinks are listed but are not unreadable or malformed resources
    assert!(text.contains("symlink"), "{text}");
    let (code, doc) = run_json(&cfg, &["scan"]);
    assert_eq!(code, 0);
    assert_eq!(doc["resources"], 40);
    assert_eq!(doc["homes"]["hashed"], 3);
    assert_eq!(doc["homes"]["users"], 1);
    assert_eq!(doc["problem_counts"]["symlink"], 2);
    assert_eq!(doc["exit_code"], 0);
}

#[test]
fn scan_exits_1_on_an_unreadable_resource() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("Documents");
    StoreBuilder::new(&root)
        .homes(2)
        .resources(10)
        .without_xattrs()
        .unreadable()
        .build()
        .unwrap();
    let cfg = config(tmp.path(), &root, "calendarserver-fs", None);
    let (code, doc) = run_json(&cfg, &["scan"]);
    assert_eq!(code, 1, "{doc}");
    assert_eq!(doc["problem_counts"]["unreadable"], 1);
    let p = &doc["problems"][0];
    assert!(
        p["path"].as_str().unwrap().ends_with("calendar/broken.ics"),
        "{p}"
    );
    let out = bin().arg("-c").arg(&cfg).arg("scan").assert().code(1);
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(
        text.contains("unreadable") && text.contains("broken.ics"),
        "{text}"
    );
}

/// Root reads everything, so run the scan as `nobody` over a store where one file is mode 000:
/// that is what an unreadable resource looks like to a service account.
#[test]
fn scan_as_another_user_reports_a_file_it_cannot_read() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = tmp.path().join("Documents");
    let g = StoreBuilder::new(&root)
        .homes(1)
        .resources(4)
        .without_xattrs()
        .build()
        .unwrap();
    let secret = g.homes[0].path.join("calendar/secret.ics");
    std::fs::write(&secret, b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();
    let cfg = config(tmp.path(), &root, "calendarserver-fs", None);
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("principal-reconciler"))
        .arg("-c")
        .arg(&cfg)
        .args(["--json", "scan"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(out.status.code(), Some(1), "{doc}");
    assert_eq!(doc["resources"], 4);
    assert_eq!(doc["problem_counts"]["unreadable"], 1);
    let p = &doc["problems"][0];
    assert!(p["path"].as_str().unwrap().ends_with("secret.ics"), "{p}");
    assert!(
        p["detail"].as_str().unwrap().contains("Permission denied"),
        "{p}"
    );
}
#[test]
fn scan_of_a_missing_store_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(
        tmp.path(),
        &tmp.path().join("nowhere"),
        "calendarserver-fs",
        None,
    );
    bin().arg("-c").arg(&cfg).arg("scan").assert().code(2);
}

/// Needs the real `ical::scan` (lands from the ical branch): with the placeholder, which accepts
/// everything and finds no address, this test fails.
#[test]
fn scan_lists_malformed_resources_and_exits_1() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("Documents");
    StoreBuilder::new(&root)
        .homes(2)
        .resources(10)
        .without_xattrs()
        .malformed(2)
        .build()
        .unwrap();
    let cfg = config(tmp.path(), &root, "calendarserver-fs", None);
    let (code, doc) = run_json(&cfg, &["scan"]);
    assert_eq!(code, 1, "{doc}");
    assert_eq!(doc["problem_counts"]["malformed"], 2, "{doc}");
    let p = &doc["problems"][0];
    assert!(p["path"].as_str().unwrap().contains("malformed-"), "{p}");
    assert!(p["detail"].as_str().unwrap().starts_with("line "), "{p}");
}

/// Needs the real `ical::scan` (see above).
#[test]
fn scan_counts_addresses_by_form() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("ics");
    std::fs::create_dir_all(root.join("cal")).unwrap();
    let g = "927107A3-92B4-4285-B153-A5C823369E24";
    let ev = format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Apple Inc.//iCal 4.0.4//EN\r\nBEGIN:VEVENT\r\nUID:a1\r\n\
DTSTART:20100101T100000Z\r\nDTSTAMP:20100101T100000Z\r\n\
ORGANIZER;CN=Anna:urn:uuid:{g}\r\n\
ATTENDEE;CN=Anna;PARTSTAT=ACCEPTED:urn:uuid:{g}\r\n\
ATTENDEE;CN=Bob:mailto:Bob@Example.com\r\n\
ATTENDEE:mailto:carol@other.org\r\n\
ATTENDEE:/principals/__uids__/{g}/\r\n\
ATTENDEE:/principals/users/dave/\r\n\
ATTENDEE:urn:x-uid:{g}\r\n\
ATTENDEE:tel:+331234\r\n\
END:VEVENT\r\nEND:VCALENDAR\r\n"
    );
    std::fs::write(root.join("cal/a.ics"), &ev).unwrap();
    std::fs::write(root.join("cal/b.ics"), ev.replace("UID:a1", "UID:b2")).unwrap();
    let cfg = config(tmp.path(), &root, "ics-dir", None);
    let (code, doc) = run_json(&cfg, &["scan"]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["resources"], 2);
    assert_eq!(doc["by_kind"]["urn:uuid"]["distinct"], 1, "{doc}");
    assert_eq!(doc["by_kind"]["urn:uuid"]["occurrences"], 4, "{doc}");
    assert_eq!(doc["by_kind"]["mailto"]["distinct"], 2);
    assert_eq!(doc["by_kind"]["principal-uid"]["distinct"], 1);
    assert_eq!(doc["by_kind"]["principal-name"]["distinct"], 1);
    assert_eq!(doc["by_kind"]["urn:x-uid"]["distinct"], 1);
    assert_eq!(doc["by_kind"]["other"]["distinct"], 1);
    let domains = doc["mailto_domains"].as_array().unwrap();
    assert!(
        domains.iter().any(|d| d["domain"] == "example.com"),
        "{domains:?}"
    );
    assert!(domains.iter().any(|d| d["domain"] == "other.org"));
    let top = &doc["top_addresses"][0];
    assert_eq!(top["address"], format!("urn:uuid:{g}"));
    assert_eq!(top["occurrences"], 4);
    assert_eq!(top["resources"], 2);
}

/// Runs the real `ical::scan` over the shared corpus (many real-world files): the scan must
/// complete, and count every file as a resource or a problem.
#[test]
fn scan_of_the_real_corpus_completes() {
    let Some(corpus) = crate::support::corpus::dir("ical-calcard") else {
        return;
    };
    let corpus = corpus.as_path();
    let files: Vec<PathBuf> = std::fs::read_dir(corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .to_lowercase()
                .ends_with(".ics")
        })
        .collect();
    let rejected = files
        .iter()
        .filter(|p| principal_reconciler::ical::scan(&std::fs::read(p).unwrap()).is_err())
        .count() as u64;
    assert!(rejected > 0, "the corpus holds broken files on purpose");
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), corpus, "ics-dir", None);
    let (code, doc) = run_json(&cfg, &["scan"]);
    assert_eq!(code, 1, "malformed resources are problems: {doc}");
    assert_eq!(
        doc["resources"].as_u64().unwrap(),
        files.len() as u64,
        "{doc}"
    );
    assert_eq!(
        doc["problem_counts"]["malformed"].as_u64(),
        Some(rejected),
        "{doc}"
    );
}

fn doctor_store(
    tmp: &Path,
    xa: bool,
) -> (
    PathBuf,
    principal_reconciler::store::generate::GeneratedStore,
) {
    let root = tmp.join("Documents");
    let mut b = StoreBuilder::new(&root)
        .homes(2)
        .resources(12)
        .owner(501, 20);
    if !xa {
        b = b.without_xattrs();
    }
    let g = b.build().unwrap();
    (root, g)
}

fn a_resource(g: &principal_reconciler::store::generate::GeneratedStore) -> PathBuf {
    let cal = g.homes[0].path.join("calendar");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&cal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ics"))
        .collect();
    v.sort();
    v.remove(0)
}

#[test]
fn doctor_finds_and_fixes_ownership_md5_and_leftovers() {
    let tmp = tempfile::tempdir().unwrap();
    let xa = user_xattrs_supported(tmp.path());
    let (root, g) = doctor_store(tmp.path(), xa);
    let cfg = config(tmp.path(), &root, "calendarserver-fs", Some("501:20"));
    let (code, doc) = run_json(&cfg, &["doctor"]);
    assert_eq!(code, 0, "a fresh store is clean: {doc}");
    assert_eq!(doc["remaining"], 0);

    // What a `sudo` edit or restore leaves behind.
    let res = a_resource(&g);
    std::os::unix::fs::chown(&res, Some(0), Some(0)).unwrap();
    let stale = g.homes[1].path.join("calendar");
    let stale_res = a_resource(&principal_reconciler::store::generate::GeneratedStore {
        homes: vec![g.homes[1].clone()],
        ..g.clone()
    });
    let mut bytes = std::fs::read(&stale_res).unwrap();
    bytes.extend_from_slice(b"X-EDITED-BY-HAND:1\r\n");
    // edited in place (attributes stay, so getcontentmd5 goes stale)
    std::fs::write(&stale_res, &bytes).unwrap();
    let leftover = res.with_file_name(format!(
        ".{}.principal-reconciler.tmp",
        res.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&leftover, b"half").unwrap();
    std::os::unix::fs::chown(&leftover, Some(501), Some(20)).unwrap();
    let ctag_name = "user.{http:%2F%2Fcalendarserver.org%2Fns%2F}getctag";
    let ctag_before = xattr::get(&stale, ctag_name).unwrap();

    let (code, doc) = run_json(&cfg, &["doctor"]);
    assert_eq!(code, 1, "{doc}");
    assert_eq!(doc["found"]["owner"], 1, "{doc}");
    assert_eq!(doc["found"]["leftover"], 1, "{doc}");
    if xa {
        assert_eq!(doc["found"]["md5-stale"], 1, "{doc}");
    }
    let owner = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "owner")
        .unwrap();
    assert!(
        owner["detail"]
            .as_str()
            .unwrap()
            .contains("owned by 0:0, expected 501:20"),
        "{owner}"
    );
    assert!(leftover.exists(), "without --fix nothing changes");
    assert_eq!(std::fs::metadata(&res).unwrap().uid(), 0);

    let out = bin()
        .arg("-c")
        .arg(&cfg)
        .args(["doctor", "--fix"])
        .assert()
        .code(0);
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(
        text.contains("fixed") && text.contains("now owned by 501:20"),
        "{text}"
    );
    assert!(text.contains("All problems fixed"), "{text}");
    let m = std::fs::metadata(&res).unwrap();
    assert_eq!((m.uid(), m.gid()), (501, 20));
    assert!(!leftover.exists());
    if xa {
        let v = xattr::get(
            &stale_res,
            "user.{http:%2F%2Ftwistedmatrix.com%2Fxml_namespace%2Fdav%2F}getcontentmd5",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            xattrs::text_of(&xattrs::decode_value(&v)).unwrap(),
            principal_reconciler::store::md5_hex(&bytes)
        );
        assert_ne!(
            xattr::get(&stale, ctag_name).unwrap(),
            ctag_before,
            "ctag changed with the ETag"
        );
    }
    let (code, doc) = run_json(&cfg, &["doctor"]);
    assert_eq!(code, 0, "clean after --fix: {doc}");
}

#[test]
fn doctor_reports_what_it_cannot_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let xa = user_xattrs_supported(tmp.path());
    let (root, g) = doctor_store(tmp.path(), xa);
    let cfg = config(tmp.path(), &root, "calendarserver-fs", Some("501:20"));
    let res = a_resource(&g);
    std::fs::set_permissions(&res, std::fs::Permissions::from_mode(0o666)).unwrap();
    let link = g.homes[0].path.join("calendar/elsewhere.ics");
    std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(501), Some(20)).unwrap();
    let (code, doc) = run_json(&cfg, &["doctor", "--fix"]);
    assert_eq!(code, 1, "{doc}");
    assert_eq!(doc["found"]["mode"], 1, "{doc}");
    assert_eq!(doc["found"]["symlink"], 1, "{doc}");
    assert_eq!(doc["remaining"], 2);
    assert!(link.symlink_metadata().is_ok(), "never removes a symlink");
    assert_eq!(
        std::fs::metadata(&res).unwrap().mode() & 0o777,
        0o666,
        "modes are not changed"
    );
}

#[test]
fn doctor_resolves_owner_names() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("Documents");
    StoreBuilder::new(&root)
        .homes(1)
        .resources(2)
        .without_xattrs()
        .build()
        .unwrap();
    // generated as root:root
    let cfg = config(tmp.path(), &root, "calendarserver-fs", Some("root:root"));
    let (code, doc) = run_json(&cfg, &["doctor"]);
    assert_eq!(code, 1, "{doc}");
    assert_eq!(doc["expected_owner"], "0:0");
    assert!(doc["found"].get("owner").is_none(), "{doc}");
    assert_eq!(doc["found"]["md5-missing"], 2, "{doc}");
    let cfg = config(
        tmp.path(),
        &root,
        "calendarserver-fs",
        Some("no-such-user-xyz:root"),
    );
    let out = bin().arg("-c").arg(&cfg).arg("doctor").assert().code(2);
    assert!(
        String::from_utf8_lossy(&out.get_output().stderr).contains("no user `no-such-user-xyz`")
    );
}
