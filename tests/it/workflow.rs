//! The admin's workflow through the CLI: rehearsals that can be inspected with their own
//! configuration, and a real migrate that asks before it changes the store.

use crate::support::world::{assert_same_tree, tree, World};
use predicates::prelude::*;

fn bin() -> assert_cmd::Command {
    let mut c = assert_cmd::Command::cargo_bin("principal-reconciler").unwrap();
    c.arg("--no-progress");
    c
}

#[test]
fn a_rehearsal_writes_a_configuration_that_every_command_can_use() {
    let w = World::new(3, 24, 31);
    let real = tree(&w.store.root);
    let dir = w.path("rehearsal");
    w.cmd()
        .args(["migrate", "--rehearse"])
        .arg(&dir)
        .assert()
        .code(0)
        .stdout(predicate::str::contains(format!(
            "--config {} verify",
            dir.join("principal-reconciler.toml").display()
        )));
    let cfg = dir.join("principal-reconciler.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        text.contains(&format!(
            "ldif = \"{}\"",
            dir.join("directory.ldif").display()
        )),
        "the directory is frozen into the rehearsal: {text}"
    );
    let on = |args: &[&str]| {
        let mut c = bin();
        // Run from elsewhere: every path in the file is whole.
        c.current_dir("/").arg("--config").arg(&cfg).args(args);
        c
    };
    on(&["verify"]).assert().code(0);
    on(&["doctor"]).assert().code(0);
    on(&["report"]).assert().code(0);
    let migrated = tree(&dir.join("store"));
    on(&["rollback"]).assert().code(0);
    let rolled_back = tree(&dir.join("store"));
    assert_ne!(migrated, rolled_back);
    // The rehearsal's rollback brought its copy back to the real store's state; the real store
    // was never touched.
    assert_same_tree(&rolled_back, &real, "rehearsal copy after its rollback");
    assert_same_tree(&tree(&w.store.root), &real, "the real store");
}

#[test]
fn a_real_migrate_asks_first_and_refuses_without_a_terminal() {
    let w = World::new(2, 10, 32);
    let before = tree(&w.store.root);
    w.cmd()
        .arg("migrate")
        .write_stdin("")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("pass --yes"));
    assert_same_tree(&tree(&w.store.root), &before, "refused: nothing changed");
    w.cmd().args(["migrate", "--yes"]).assert().code(0);
    assert_ne!(tree(&w.store.root), before);
}

/// On a terminal (a pseudo-terminal made by `script`), `n` changes nothing and `y` applies.
#[test]
fn a_real_migrate_on_a_terminal_applies_only_after_yes() {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "`script` (util-linux) is missing on CI"
        );
        eprintln!("!!! script(1) missing: terminal test SKIPPED");
        return;
    }
    let w = World::new(2, 10, 33);
    let before = tree(&w.store.root);
    let exe = assert_cmd::cargo::cargo_bin("principal-reconciler");
    let run = |answer: &str| {
        let line = format!(
            "{} --no-progress --config {} migrate",
            exe.display(),
            w.config.display()
        );
        let out = std::process::Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                // `script` passes stdin to the terminal; give the question time to be asked.
                std::thread::sleep(std::time::Duration::from_millis(300));
                c.stdin.take().unwrap().write_all(answer.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = run("n\n");
    assert!(text.contains("[y/N]"), "{text}");
    assert!(text.contains("not applied"), "{text}");
    assert_eq!(code, Some(1), "{text}");
    assert_same_tree(&tree(&w.store.root), &before, "answered no");
    let (code, text) = run("y\n");
    assert_eq!(code, Some(0), "{text}");
    assert_ne!(tree(&w.store.root), before, "answered yes: applied");
}

#[test]
fn diff_shows_one_resources_planned_change() {
    let w = World::new(2, 12, 34);
    w.cmd().arg("plan").assert().code(0);
    let changes = std::fs::read_to_string(w.path("reports/changes.csv")).unwrap();
    let rel = changes
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    let out = w.cmd().args(["diff", &rel]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("--- a/{rel}\n+++ b/{rel}\n@@ ")),
        "{text}"
    );
    let removed = text
        .lines()
        .filter(|l| l.starts_with('-') && !l.starts_with("---"))
        .count();
    let added = text
        .lines()
        .filter(|l| l.starts_with('+') && !l.starts_with("+++"))
        .count();
    assert!(removed > 0 && added > 0, "{text}");
    assert!(
        text.lines()
            .filter(|l| l.starts_with('+') && !l.starts_with("+++"))
            .all(|l| ["+ORGANIZER", "+ATTENDEE", "+ ", "+X-CALENDARSERVER"]
                .iter()
                .any(|p| l.starts_with(p))),
        "only address lines change: {text}"
    );
    // The whole path works as well as the store-relative one.
    let whole = w.store.root.join(&rel);
    w.cmd()
        .arg("diff")
        .arg(&whole)
        .assert()
        .code(0)
        .stdout(predicate::str::contains(format!("+++ b/{rel}")));
    // A resource the plan does not change is a usage error naming it.
    w.cmd()
        .args(["diff", "nowhere/x.ics"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("does not change nowhere/x.ics"));
}

#[test]
fn diff_says_when_a_resource_changed_since_the_plan() {
    let w = World::new(2, 12, 35);
    w.cmd().arg("plan").assert().code(0);
    let changes = std::fs::read_to_string(w.path("reports/changes.csv")).unwrap();
    let rel = changes
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    let path = w.store.root.join(&rel);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b"\r\n");
    std::fs::write(&path, bytes).unwrap();
    w.cmd()
        .args(["diff", &rel])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("changed since plan"));
}

#[test]
fn csv_bom_puts_a_byte_order_mark_before_every_csv() {
    let w = World::new(2, 12, 36);
    w.cmd().arg("plan").assert().code(0);
    w.cmd().arg("verify").assert().code(1);
    for name in [
        "mapping.csv",
        "changes.csv",
        "mapping-todo.csv",
        "verify.csv",
    ] {
        let bytes = std::fs::read(w.path("reports").join(name)).unwrap();
        assert!(
            !bytes.starts_with(b"\xEF\xBB\xBF"),
            "{name} has no BOM by default"
        );
    }
    let cfg = std::fs::read_to_string(&w.config).unwrap();
    std::fs::write(
        &w.config,
        cfg.replace("[report]\n", "[report]\ncsv_bom = true\n"),
    )
    .unwrap();
    w.cmd().arg("plan").assert().code(0);
    w.cmd().arg("verify").assert().code(1);
    for name in [
        "mapping.csv",
        "changes.csv",
        "mapping-todo.csv",
        "verify.csv",
    ] {
        let bytes = std::fs::read(w.path("reports").join(name)).unwrap();
        assert!(
            bytes.starts_with(b"\xEF\xBB\xBF"),
            "{name} starts with a BOM"
        );
        assert!(!bytes[3..].starts_with(b"\xEF\xBB\xBF"), "{name}: one BOM");
    }
    // The todo file with its BOM still reads back as a mapping file.
    let cfg = std::fs::read_to_string(&w.config).unwrap();
    std::fs::copy(w.path("reports/mapping-todo.csv"), w.path("todo-copy.csv")).unwrap();
    std::fs::write(
        &w.config,
        cfg.replace(
            "[rewrite]\n",
            "[rewrite]\nmapping_file = \"todo-copy.csv\"\n",
        ),
    )
    .unwrap();
    w.cmd().arg("plan").assert().code(0);
}

#[test]
fn changes_csv_names_the_path_after_adoption_and_diff_follows_it() {
    let w = World::new(2, 12, 37);
    w.cmd().arg("plan").assert().code(0);
    let changes = std::fs::read_to_string(w.path("reports/changes.csv")).unwrap();
    let mut lines = changes.lines();
    assert_eq!(
        lines.next().unwrap(),
        "resource,line,property,old_value,new_value,resource_after_adoption"
    );
    let row = lines.next().unwrap();
    let rel = row.split(',').next().unwrap().to_string();
    let after = row.rsplit(',').next().unwrap().to_string();
    assert_ne!(rel, after, "every home of this world moves to its new GUID");
    let new_guid = w
        .new_guid
        .iter()
        .find(|(old, _)| rel.contains(old.as_str()))
        .map(|(_, new)| new.clone())
        .unwrap();
    assert!(after.contains(&new_guid), "{after}");
    w.cmd().arg("apply").assert().code(0);
    assert!(
        w.store.root.join(&after).is_file(),
        "{after} exists after apply"
    );
    assert!(!w.store.root.join(&rel).exists());
    w.cmd().args(["diff", &after]).assert().code(0).stdout(
        predicate::str::contains("is applied")
            .and(predicate::str::contains(format!("--- a/{rel}"))),
    );
}

#[test]
fn runs_lists_plans_and_runs_and_what_rollback_would_undo() {
    let w = World::new(2, 12, 38);
    w.cmd().arg("plan").assert().code(0);
    w.cmd()
        .arg("runs")
        .assert()
        .code(0)
        .stdout(
            predicate::str::contains("plan 1")
                .and(predicate::str::contains("Nothing for `rollback` to undo")),
        )
        .stdout(predicate::str::contains("`apply` would carry out plan 1"));
    w.cmd().arg("apply").assert().code(0);
    let out = w.cmd().args(["--json", "runs"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let h = &doc["history"];
    assert_eq!(h["plans"].as_array().unwrap().len(), 1, "{h}");
    let run = &h["runs"][0];
    assert_eq!(run["kind"], "apply");
    assert_eq!(run["plan_id"], 1);
    assert!(run["steps_done"].as_i64().unwrap() >= 12, "{run}");
    assert_eq!(h["rollback_would_undo"], run["id"]);
    assert!(h["apply_would_carry_out"].is_null(), "{h}");
    w.cmd().arg("rollback").assert().code(0);
    let out = w.cmd().args(["--json", "runs"]).output().unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let h = &doc["history"];
    assert_eq!(h["runs"].as_array().unwrap().len(), 2, "{h}");
    assert_eq!(h["runs"][1]["kind"], "rollback");
    assert!(
        h["rollback_would_undo"].is_null(),
        "after its rollback nothing is left to undo: {h}"
    );
    assert_eq!(
        h["apply_would_carry_out"], 1,
        "the plan can be applied again: {h}"
    );
}
