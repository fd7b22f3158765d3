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
