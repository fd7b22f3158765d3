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
    if !script_available() {
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

/// A copy of the shipped example as the README's walkthrough makes it: state and reports inside
/// the copy (`./state`, `./reports`).
fn example_copy() -> (tempfile::TempDir, std::path::PathBuf) {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/snow-leopard");
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("sl");
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(&example)
        .arg(&dir)
        .status()
        .unwrap();
    assert!(ok.success());
    let cfg = dir.join("principal-reconciler.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("../../target/snow-leopard-state"), "{text}");
    std::fs::write(&cfg, text.replace("../../target/snow-leopard-", "./")).unwrap();
    (scratch, dir)
}

/// Runs a command in the copy (its configuration is `./principal-reconciler.toml`, as in the
/// README): exit code and stdout.
fn run_in(dir: &std::path::Path, args: &[&str]) -> (i32, String) {
    let out = bin().current_dir(dir).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), format!("{text}{err}"))
}

fn json_in(dir: &std::path::Path, args: &[&str]) -> (i32, serde_json::Value) {
    let out = bin()
        .current_dir(dir)
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), doc)
}

/// README "Walkthrough: a staged migration of the shipped example", step by step: what it shows
/// must stay true.
#[test]
fn the_readme_walkthrough_holds_on_the_shipped_example() {
    let (_scratch, dir) = example_copy();
    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    // 1. plan: one ambiguous and one unmatched address to decide.
    let (code, out) = run_in(&dir, &["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("Addresses: 13 mapped, 1 unchanged, 1 ambiguous, 1 unmatched, 1 external."),
        "{out}"
    );
    // 2. fill mapping-todo.csv: samantha for sales@, `-` (left) for the unmatched GUID.
    let todo = std::fs::read_to_string(dir.join("reports/mapping-todo.csv")).unwrap();
    let filled: String = todo
        .lines()
        .map(|l| {
            if l.starts_with("mailto:sales@example.com,") {
                format!("{l}samantha\n")
            } else if l.starts_with("urn:uuid:C6138F16") {
                format!("{l}-\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(dir.join("mapping.csv"), filled).unwrap();
    let cfg = dir.join("principal-reconciler.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replacen(
            "[rewrite]\n",
            "[rewrite]\nmapping_file = \"mapping.csv\"\n",
            1,
        ),
    )
    .unwrap();
    assert!(readme.contains("mapping_file = \"mapping.csv\""));
    // 3. plan again: nothing left to decide (the truncated file stays a problem: exit 1).
    let (code, out) = run_in(&dir, &["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("Plan 2 —"), "{out}");
    assert!(
        out.contains("0 ambiguous, 0 unmatched, 1 external, 1 acknowledged"),
        "{out}"
    );
    // 4. apply --home bob: his home and its resources only.
    let (code, out) = run_in(&dir, &["apply", "--home", "bob"]);
    assert_eq!(code, 0, "{out}");
    let want =
        "apply run 1: 3 resources written, 0 already as planned, 0 skipped, 1 home(s) moved.";
    assert!(out.contains(want), "{out}");
    assert!(readme.contains(want), "README shows: {want}");
    let want =
        "Plan 2: applied: 1 of 11 homes, 3 of 31 resources; pending: 10 home(s), 28 resources";
    assert!(out.contains(want), "{out}");
    assert!(readme.contains(want));
    assert!(out.contains("dropbox and attachment links"), "{out}");
    assert!(dir
        .join("store/calendars/__uids__/F9/9C/F99C1AA3-2E02-4197-824F-3B67AE6B9F3D")
        .is_dir());
    assert!(dir
        .join("store/calendars/__uids__/12/29/1229DD2E-77E0-4C2C-838E-B64590F2ED55")
        .is_dir());
    // 5. verify: the plan is partly applied; the pending homes' problems are all listed.
    let (code, out) = run_in(&dir, &["verify"]);
    assert_eq!(code, 1, "{out}");
    let want = "Plan 2 is partly applied (a staged migration, run 1)";
    assert!(out.contains(want), "{out}");
    assert!(readme.contains(want));
    assert!(out.contains("28 resources are pending"), "{out}");
    assert!(out.contains("orphan-home: 8"), "{out}");
    assert!(out.contains("not-canonical: "), "{out}");
    // 6. apply: the rest, by a new run of the same plan.
    let (code, out) = run_in(&dir, &["apply"]);
    assert_eq!(code, 0, "{out}");
    let want =
        "apply run 2: 28 resources written, 0 already as planned, 0 skipped, 8 home(s) moved.";
    assert!(out.contains(want), "{out}");
    assert!(readme.contains(want));
    assert!(
        out.contains("Plan 2: applied: 11 of 11 homes, 31 of 31 resources."),
        "{out}"
    );
    let (code, out) = run_in(&dir, &["verify"]);
    assert_eq!(code, 1, "only the truncated file is left: {out}");
    assert!(out.contains("1 problems.\n  malformed: 1\n"), "{out}");
    assert!(!out.contains("partly applied"), "{out}");
    // 7. runs: both stages of plan 2.
    let (code, out) = run_in(&dir, &["runs"]);
    assert_eq!(code, 0, "{out}");
    for want in [
        "applied: 11 of 11 homes, 31 of 31 resources",
        "apply of plan 2",
        "`rollback` would undo run 2 now.",
    ] {
        assert!(out.contains(want), "{want}: {out}");
        assert!(readme.contains(want), "README: {want}");
    }
    // And `apply` once more: nothing left.
    let (code, out) = run_in(&dir, &["apply"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("applied in 2 stages, by runs 1, 2"), "{out}");
}

/// `--home` takes the old GUID, the new GUID or the short name; `runs --json` and `verify --json`
/// say what is applied and what is pending.
#[test]
fn apply_home_accepts_old_guid_new_guid_and_short_name() {
    let (_scratch, dir) = example_copy();
    assert_eq!(run_in(&dir, &["plan"]).0, 1);
    let (code, doc) = json_in(
        &dir,
        &[
            "apply",
            "--home",
            "0a6ca719-9a7f-4228-8101-443281247370", // frank's old GUID, in lower case
            "--home",
            "9891E31A-C4E7-4C6F-8286-E4A8C676CDD6", // jane's new GUID
            "--home",
            "kim",
        ],
    );
    assert_eq!(code, 0, "{doc}");
    let stage = &doc["run"]["stage"];
    assert_eq!(stage["homes_applied"], 3, "{doc}");
    assert_eq!(stage["homes"], 11);
    assert_eq!(doc["run"]["homes_adopted"], 3);
    let pending: Vec<&str> = stage["pending_homes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for gone in ["frank", "jane", "kim"] {
        assert!(!pending.contains(&gone), "{pending:?}");
    }
    assert!(pending.contains(&"bob"), "{pending:?}");
    let (_, runs) = json_in(&dir, &["runs"]);
    let plan = &runs["history"]["plans"][0];
    assert_eq!(plan["progress"]["homes_applied"], 3, "{runs}");
    assert_eq!(
        plan["progress"]["pending_homes"].as_array().unwrap().len(),
        8
    );
    assert_eq!(runs["history"]["apply_would_carry_out"], 1, "{runs}");
    let (code, v) = json_in(&dir, &["verify"]);
    assert_eq!(code, 1);
    assert_eq!(v["partly_applied"]["homes_applied"], 3, "{v}");
    assert!(v["partly_applied"]["resources_pending"].as_u64().unwrap() > 0);
    // A name that is no home of the plan, or a home already applied: exit 2, nothing done.
    let (code, out) = run_in(&dir, &["apply", "--home", "nobody"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--home nobody"), "{out}");
    let (code, out) = run_in(&dir, &["apply", "--home", "kim"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("already applied by run 1"), "{out}");
    assert!(run_in(&dir, &["apply", "--help"]).1.contains("old GUID"));
}

/// `--limit N` takes whole homes up to N resources; rolling back a stage undoes only it, and
/// `apply` then does it again; the stage that leaves no home pending rewrites the databases.
#[test]
fn apply_limit_stages_whole_homes_and_a_stage_rolls_back_alone() {
    let (_scratch, dir) = example_copy();
    assert_eq!(run_in(&dir, &["plan"]).0, 1);
    let store = dir.join("store");
    let before = tree(&store);
    let (code, doc) = json_in(&dir, &["apply", "--limit", "5"]);
    assert_eq!(code, 0, "{doc}");
    let first = doc["run"]["stage"].clone();
    let written = doc["run"]["written"].as_u64().unwrap();
    assert!(written <= 5 && written > 0, "{doc}");
    assert!(first["homes_applied"].as_u64().unwrap() >= 1);
    assert_eq!(first["resources_applied"], written);
    assert_eq!(
        doc["run"]["databases"], 0,
        "databases wait for the last stage: {doc}"
    );
    let after_first = tree(&store);
    let (code, doc) = json_in(&dir, &["apply", "--limit", "5"]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["run"]["run_id"], 2);
    assert!(
        doc["run"]["stage"]["homes_applied"].as_u64().unwrap()
            > first["homes_applied"].as_u64().unwrap()
    );
    // rollback undoes the latest stage only: the store is as after the first one.
    let (code, out) = run_in(&dir, &["rollback"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("of run 2"), "{out}");
    assert_same_tree(&tree(&store), &after_first, "after rolling back stage 2");
    // apply takes it again (a new run), then the rest.
    let (code, doc) = json_in(&dir, &["apply", "--limit", "5"]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["run"]["run_id"], 4);
    let (code, doc) = json_in(&dir, &["apply"]);
    assert_eq!(code, 0, "{doc}");
    let stage = &doc["run"]["stage"];
    assert_eq!(stage["homes_applied"], stage["homes"], "{doc}");
    assert_eq!(stage["resources_applied"], 31);
    assert_eq!(stage["rest_applied"], true);
    let (_, v) = json_in(&dir, &["verify"]);
    assert!(v.get("partly_applied").is_none(), "{v}");
    // What a whole apply leaves: the undecided addresses, the truncated file, the unmatched home.
    assert!(v["verify"]["by_kind"].get("not-canonical").is_none(), "{v}");
    assert_eq!(v["verify"]["by_kind"]["orphan-home"], 1, "{v}");
    // Every stage undone, newest first: the store is as it was.
    for _ in 0..3 {
        let (code, out) = run_in(&dir, &["rollback"]);
        assert_eq!(code, 0, "{out}");
    }
    assert_same_tree(&tree(&store), &before, "every stage rolled back");
}

/// A stage killed mid-way is resumed by the next `apply` with the homes it took, not the whole
/// plan; the apply after that does the rest. The end is what one whole apply leaves.
#[test]
fn a_killed_stage_resumes_with_its_own_homes() {
    let reference = World::new(4, 200, 46);
    reference.cmd().arg("plan").assert().code(0);
    reference.cmd().arg("apply").assert().code(0);
    let w = World::new(4, 200, 46);
    w.cmd().arg("plan").assert().code(0);
    crate::support::child::spawn_paused(&w.config, &["apply", "--limit", "1"], "apply-batch")
        .crash();
    let out = w.cmd().args(["--json", "apply"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let run = &doc["run"];
    assert_eq!(run["run_id"], 1, "{doc}");
    assert_eq!(run["resumed"], true);
    assert_eq!(run["homes_adopted"], 1, "only the stage's home: {doc}");
    assert_eq!(run["stage"]["homes_applied"], 1, "{doc}");
    let pending = run["stage"]["pending_homes"].as_array().unwrap().len();
    assert!(pending >= 3, "{doc}");
    let out = w.cmd().args(["--json", "apply"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["run"]["run_id"], 2, "{doc}");
    assert_eq!(doc["run"]["homes_adopted"], pending as u64, "{doc}");
    assert_eq!(
        doc["run"]["stage"]["resources_applied"],
        doc["run"]["stage"]["resources"]
    );
    assert_same_tree(
        &tree(&w.store.root),
        &tree(&reference.store.root),
        "two stages (the first killed and resumed) against one whole apply",
    );
}

/// A stage takes a user's calendar home and address-book home together (3.x: `addressbooks/`
/// beside `calendars/`); the other users' homes of both kinds stay where they were.
#[test]
fn a_stage_moves_the_users_address_book_home_with_the_calendar_home() {
    use principal_reconciler::store::generate_addressbooks::AddressBookBuilder;
    let w = World::new(3, 24, 47);
    let ab = AddressBookBuilder::new(w.store.root.clone(), &w.store.people)
        .seed(47)
        .contacts(2)
        .owner(501, 20)
        .build()
        .unwrap();
    w.cmd().arg("plan").assert().code(0);
    let person = &w.store.people[0];
    let old = person.guid.to_ascii_uppercase();
    let new = w.new_guid[&old].clone();
    let hashed = |kind: &str, g: &str| {
        w.store
            .root
            .join(format!("{kind}/__uids__/{}/{}/{g}", &g[0..2], &g[2..4]))
    };
    let out = w
        .cmd()
        .args(["--json", "apply", "--home", &person.short_name])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["run"]["stage"]["homes_applied"], 1, "{doc}");
    assert!(hashed("calendars", &new).is_dir(), "calendar home moved");
    assert!(
        hashed("addressbooks", &new).is_dir(),
        "address-book home moved"
    );
    let others: Vec<_> = ab
        .homes
        .iter()
        .filter(|h| !h.id.eq_ignore_ascii_case(&old))
        .collect();
    assert_eq!(others.len(), 2);
    for h in &others {
        assert!(h.path.is_dir(), "{} is not this stage's", h.path.display());
    }
    w.cmd().arg("apply").assert().code(0);
    for h in &others {
        assert!(
            !h.path.exists(),
            "{} moved by the last stage",
            h.path.display()
        );
    }
    w.cmd().arg("verify").assert().code(0);
}

/// On a terminal `plan` shows a bar with its total (the store's resources, counted from folder
/// listings first) and an ETA, not a spinner.
#[test]
fn plan_on_a_terminal_shows_a_bar_with_a_total() {
    if !script_available() {
        return;
    }
    let (_scratch, dir) = example_copy();
    let exe = assert_cmd::cargo::cargo_bin("principal-reconciler");
    let out = std::process::Command::new("script")
        .args(["-qec", &format!("{} plan", exe.display()), "/dev/null"])
        .current_dir(&dir)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // 32 calendar objects and the truncated file: 33 files the walk reads.
    assert!(text.contains("planning ["), "{text}");
    assert!(text.contains("33/33"), "{text}");
    assert!(text.contains(" eta "), "{text}");
    assert!(text.contains("Plan 1 —"), "{text}");
}

/// Whether `script` (util-linux, which makes the pseudo-terminal) is here; missing on CI fails.
fn script_available() -> bool {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_ok()
    {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "`script` (util-linux) is missing on CI"
    );
    eprintln!("!!! script(1) missing: terminal test SKIPPED");
    false
}
