//! `principal-reconciler directory pull|export` end to end: a temporary config file, a real slapd
//! or an LDIF, counts, messages and exit codes.

use crate::support::slapd;

use assert_cmd::Command;
use slapd::{od_user, od_users, Slapd, BASE};
use std::path::{Path, PathBuf};

fn config(dir: &Path, directory: &str, old: &[PathBuf]) -> PathBuf {
    let files: Vec<String> = old.iter().map(|p| format!("\"{}\"", p.display())).collect();
    let text = format!(
        "[directory]\n{directory}\n\n[old_directory]\nfiles = [{}]\n\n[store]\npath = \"store\"\n",
        files.join(", ")
    );
    let path = dir.join("pr.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn run(cfg: &Path, args: &[&str]) -> (i32, serde_json::Value, String) {
    let out = Command::cargo_bin("principal-reconciler")
        .unwrap()
        .arg("--config")
        .arg(cfg)
        .args(args)
        .env_remove("PRINCIPAL_RECONCILER_BIND_PASSWORD")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let json = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    (
        out.status.code().unwrap_or(-1),
        json,
        String::from_utf8_lossy(&out.stderr).to_string() + &stdout,
    )
}

fn od_directory() -> String {
    let mut s = od_users(5);
    s.push_str(&format!(
        "dn: cn=room1,cn=places,{BASE}\nobjectClass: apple-resource\ncn: room1\napple-generateduid: 33333333-0000-4000-8000-000000000001\n\n"
    ));
    s
}

#[test]
fn pull_json_against_slapd_with_old_exports_then_export_and_pull_the_snapshot() {
    let Some(srv) = Slapd::start(&od_directory()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old-users.txt");
    std::fs::write(
        &old,
        "0x0A 0x5C 0x3A 0x2C dsRecTypeStandard:Users 3 RecordName RealName GeneratedUID\n\
         alice:Alice:AAAAAAAA-0000-4000-8000-000000000001\nbob:Bob\n",
    )
    .unwrap();
    let cfg = config(
        dir.path(),
        &format!("url = \"{}\"\nbase = \"{BASE}\"", srv.url),
        std::slice::from_ref(&old),
    );
    let (code, json, all) = run(&cfg, &["--json", "directory", "pull"]);
    assert_eq!(code, 0, "{all}");
    assert_eq!(json["current"]["counts"]["user"], 5, "{json}");
    assert_eq!(json["current"]["counts"]["location"], 1);
    assert_eq!(json["current"]["counts"]["group"], 0);
    assert!(json["current"]["origin"]
        .as_str()
        .unwrap()
        .starts_with(&srv.url));
    assert_eq!(json["old"]["counts"]["user"], 1);
    let warnings = json["old"]["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("old-users.txt:3 (bob)")),
        "{json}"
    );

    // Human output: a short table.
    let (code, _, all) = run(&cfg, &["directory", "pull"]);
    assert_eq!(code, 0);
    assert!(all.contains("users") && all.contains("      5"), "{all}");

    // Snapshot, then the snapshot alone gives the same counts with the server gone.
    let snap = dir.path().join("snap.ldif");
    let (code, json, all) = run(
        &cfg,
        &[
            "--json",
            "directory",
            "export",
            "--ldif",
            snap.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{all}");
    assert_eq!(json["current"]["records"], 6);
    drop(srv);
    let cfg2 = config(dir.path(), &format!("ldif = \"{}\"", snap.display()), &[]);
    let (code, json, all) = run(&cfg2, &["--json", "directory", "pull"]);
    assert_eq!(code, 0, "{all}");
    assert_eq!(json["current"]["counts"]["user"], 5);
    assert_eq!(json["current"]["counts"]["location"], 1);
    assert!(json["old"].is_null());
}

#[test]
fn a_bad_ldif_exits_2_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let ldif = dir.path().join("bad.ldif");
    std::fs::write(&ldif, format!("dn: uid=a,cn=users,{BASE}\nuid: a\n\ndn: uid=b,cn=users,{BASE}\nchangetype: add\nuid: b\n")).unwrap();
    let cfg = config(dir.path(), &format!("ldif = \"{}\"", ldif.display()), &[]);
    let (code, json, all) = run(&cfg, &["--json", "directory", "pull"]);
    assert_eq!(code, 2, "{all}");
    let msg = json["error"].as_str().unwrap();
    assert!(msg.starts_with(&format!("{}:5:", ldif.display())), "{msg}");
    assert!(msg.contains("change record"), "{msg}");
}

#[test]
fn an_unreachable_server_exits_3() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("ldap://127.0.0.1:{port}");
    let cfg = config(
        dir.path(),
        &format!("url = \"{url}\"\nbase = \"{BASE}\"\ntimeout = 5"),
        &[],
    );
    let snap = dir.path().join("never.ldif");
    let (code, _, all) = run(
        &cfg,
        &["directory", "export", "--ldif", snap.to_str().unwrap()],
    );
    assert_eq!(code, 3, "{all}");
    assert!(
        all.contains(&format!("error: {url}: connect failed: connection refused")),
        "{all}"
    );
    assert!(!snap.exists(), "nothing written");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "only the config file"
    );
}

#[test]
fn a_truncated_directory_exits_3_through_the_cli() {
    let mut ldif = od_users(6);
    ldif.push_str(&od_user("extra", 99, "Extra", "extra@example.com"));
    let Some(srv) = Slapd::builder().sizelimit(2).entries(&ldif).start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!("url = \"{}\"\nbase = \"{BASE}\"\npage_size = 3", srv.url),
        &[],
    );
    let (code, json, all) = run(&cfg, &["--json", "directory", "pull"]);
    assert_eq!(code, 3, "{all}");
    assert!(
        json["error"]
            .as_str()
            .unwrap()
            .contains("sizeLimitExceeded"),
        "{json}"
    );
}
