//! The command-line contract: help, the example configuration, exit codes of bad usage.

use predicates::prelude::*;

fn cmd() -> assert_cmd::Command {
    assert_cmd::Command::cargo_bin("principal-reconciler").unwrap()
}

#[test]
fn help_lists_every_command_and_the_exit_codes() {
    let out = cmd()
        .arg("--help")
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    for c in [
        "scan",
        "plan",
        "apply",
        "rollback",
        "verify",
        "provision",
        "doctor",
        "report",
        "migrate",
        "directory",
        "config",
    ] {
        assert!(
            text.contains(&format!("  {c}")),
            "--help does not list {c}:\n{text}"
        );
    }
    assert!(text.contains("Exit codes: 0 ok, 1 problems found, 2"));
}

#[test]
fn config_prints_a_commented_configuration_that_parses() {
    let out = cmd()
        .arg("config")
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.lines()
            .filter(|l| l.trim_start().starts_with('#'))
            .count()
            > 20,
        "not commented"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("principal-reconciler.toml");
    std::fs::write(&path, &text).unwrap();
    let cfg = principal_reconciler::config::Config::load(&path).unwrap();
    assert_eq!(cfg.directory.page_size, 500);
}

#[test]
fn bad_usage_exits_2_with_a_clear_message() {
    cmd().arg("frobnicate").assert().code(2);
    let dir = tempfile::tempdir().unwrap();
    cmd()
        .current_dir(dir.path())
        .arg("scan")
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "principal-reconciler.toml not found",
        ));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[directory]\nldif = \"x.ldif\"\n[store]\npath = \"s\"\n[rewrite]\naddress_form = \"urn:uuid\"\ninternal_domain = [\"x\"]\n").unwrap();
    cmd()
        .arg("--config")
        .arg(&bad)
        .args(["--json", "plan"])
        .assert()
        .code(2)
        .stdout(
            predicate::str::contains("\"exit_code\": 2")
                .and(predicate::str::contains("\"schema_version\": 1")),
        )
        .stderr(
            predicate::str::contains("bad.toml:7:")
                .and(predicate::str::contains("internal_domain")),
        );
}

#[test]
fn completions_and_man_page_come_from_the_same_definition() {
    for shell in ["bash", "zsh", "fish"] {
        cmd()
            .args(["completions", shell])
            .assert()
            .code(0)
            .stdout(predicate::str::contains("rollback").and(predicate::str::contains("rehearse")));
    }
    cmd().args(["completions", "tcsh"]).assert().code(2);
    cmd().arg("man").assert().code(0).stdout(
        predicate::str::starts_with(".ie")
            .and(predicate::str::contains(".TH principal-reconciler 1")),
    );
}

#[test]
fn apply_help_documents_the_staged_migration() {
    let out = cmd().args(["apply", "--help"]).output().unwrap();
    // Words as clap wraps them, joined again.
    let text = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    for want in [
        "--home <USER>",
        "the home's old GUID, its new GUID or the user's short name",
        "--limit <N>",
        "stage that leaves no home pending",
        "dropbox",
        "database store",
    ] {
        assert!(text.contains(want), "{want}:\n{text}");
    }
    cmd()
        .args(["apply", "--home", "bob", "--limit", "3"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cannot be used with"));
}

/// A database store refuses a staged apply before it connects (the database here is nowhere).
#[test]
fn a_staged_apply_is_refused_on_a_database_store() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("d.ldif"), "version: 1\n\n").unwrap();
    std::fs::write(
        dir.path().join("principal-reconciler.toml"),
        "[directory]\nldif = \"d.ldif\"\n[store]\nkind = \"calendarserver-pg\"\ndsn = \"postgresql://caldav@127.0.0.1:1/caldav\"\n[state]\npath = \"state\"\n[report]\ndir = \"reports\"\n",
    )
    .unwrap();
    for args in [["apply", "--home", "bob"], ["apply", "--limit", "3"]] {
        cmd()
            .current_dir(dir.path())
            .args(args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains("not yet on a database store"));
    }
}

/// `--json` lists what a run skipped as `{"path", "why"}` objects, not `[path, why]` pairs.
#[test]
fn json_lists_skipped_resources_as_objects() {
    let w = crate::support::world::World::new(2, 10, 41);
    w.cmd().arg("plan").assert().code(0);
    let changes = std::fs::read_to_string(w.path("reports/changes.csv")).unwrap();
    let rel = changes.lines().nth(1).unwrap().split(',').next().unwrap();
    let file = w.store.root.join(rel);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.extend_from_slice(b"\r\n");
    std::fs::write(&file, bytes).unwrap();
    let out = w.cmd().args(["--json", "apply"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let skipped = doc["run"]["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{doc}");
    assert_eq!(skipped[0]["path"], rel, "{doc}");
    assert_eq!(skipped[0]["why"], "changed since plan", "{doc}");
    // apply again: the run is finished; its check lists differing files as objects too.
    let out = w.cmd().args(["--json", "apply"]).output().unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc["run"]["already_done"].as_bool().unwrap(), "{doc}");
    assert!(doc["run"]["checked"]["differing"].is_array(), "{doc}");
    assert!(doc["run"]["skipped"][0]["why"].is_string(), "{doc}");
}
