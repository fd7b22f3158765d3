//! The state folder stays bounded: old plans dropped after each plan (`[state] keep_plans`), and
//! `state prune` dropping plans and, on request, the journal and backups of finished runs —
//! never a backup another run still needs, never anything with `--dry-run`.

use crate::support::world::{assert_same_tree, tree, World};
use std::path::Path;

fn out_of(w: &World, args: &[&str]) -> (i32, String, String) {
    let out = w.cmd().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(w: &World, args: &[&str]) -> String {
    let (code, out, err) = out_of(w, args);
    assert_eq!(code, 0, "{args:?}: {out}\n{err}");
    out
}

fn keep_plans(w: &World, n: usize) {
    let text = std::fs::read_to_string(&w.config).unwrap();
    let text = text.replace(
        "[state]\npath = \"state\"\n",
        &format!("[state]\npath = \"state\"\nkeep_plans = {n}\n"),
    );
    std::fs::write(&w.config, text).unwrap();
}

fn db(w: &World) -> rusqlite::Connection {
    rusqlite::Connection::open(w.path("state/state.sqlite")).unwrap()
}

/// (plan id, status, planned resources) of every plan.
fn plans(w: &World) -> Vec<(i64, String, i64)> {
    let c = db(w);
    let mut st = c
        .prepare("SELECT id, status, (SELECT COUNT(*) FROM plan_resources r WHERE r.plan_id = p.id) FROM plans p ORDER BY id")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

fn backup_files(state: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let dir = state.join("backups");
    for sub in std::fs::read_dir(&dir).unwrap() {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            out.push(f.unwrap().file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    out
}

fn kept_ids(p: &[(i64, String, i64)]) -> Vec<i64> {
    p.iter()
        .filter(|(_, s, _)| s != "pruned")
        .map(|(id, _, _)| *id)
        .collect()
}

#[test]
fn seven_plans_leave_the_configured_number_and_a_pruned_plan_is_refused() {
    let w = World::new(3, 30, 71);
    keep_plans(&w, 3);
    for i in 1..=7 {
        let out = ok(&w, &["plan"]);
        if i > 3 {
            assert!(
                out.contains(&format!(
                    "Older plans dropped ([state] keep_plans = 3): {}",
                    i - 3
                )),
                "{out}"
            );
        }
    }
    let p = plans(&w);
    assert_eq!(kept_ids(&p), vec![5, 6, 7], "{p:?}");
    for (id, status, resources) in &p {
        if *id < 5 {
            assert_eq!((status.as_str(), *resources), ("pruned", 0), "{p:?}");
        } else {
            assert!(*resources > 0, "{p:?}");
        }
    }
    let c = db(&w);
    for t in ["plan_changes", "plan_mappings", "plan_homes"] {
        let n: i64 = c
            .query_row(
                &format!("SELECT COUNT(*) FROM {t} WHERE plan_id < 5"),
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 0, "{t}");
    }
    drop(c);
    let before = tree(&w.store.root);
    let (code, _, err) = out_of(&w, &["apply", "--plan", "2"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("plan 2 was pruned"), "{err}");
    let (code, _, err) = out_of(&w, &["report", "--plan", "2"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("plan 2 was pruned"), "{err}");
    assert_same_tree(&tree(&w.store.root), &before, "nothing applied");

    // On demand, down to one plan: the database file shrinks (VACUUM).
    let (code, out, err) = out_of(&w, &["--json", "state", "prune", "--keep-plans", "1"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    let dropped: Vec<i64> = j["prune"]["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["plan_id"].as_i64().unwrap())
        .collect();
    assert_eq!(dropped, vec![5, 6]);
    let (b, a) = (
        j["prune"]["database_bytes_before"].as_u64().unwrap(),
        j["prune"]["database_bytes_after"].as_u64().unwrap(),
    );
    assert!(a < b, "database {b} -> {a} bytes");
    assert_eq!(kept_ids(&plans(&w)), vec![7]);
    ok(&w, &["apply"]);
}

#[test]
fn a_plan_whose_run_can_still_be_rolled_back_is_kept() {
    let w = World::new(2, 16, 72);
    keep_plans(&w, 2);
    ok(&w, &["plan"]);
    ok(&w, &["apply"]); // run 1 on plan 1
    for _ in 0..4 {
        ok(&w, &["plan"]);
    }
    assert_eq!(kept_ids(&plans(&w)), vec![1, 4, 5]);
    let before_apply = {
        let r = World::new(2, 16, 72);
        tree(&r.store.root)
    };
    ok(&w, &["rollback", "--run", "1"]);
    assert_same_tree(&tree(&w.store.root), &before_apply, "rolled back");
    // Rolled back: its plan is no longer needed.
    ok(&w, &["plan"]);
    assert_eq!(kept_ids(&plans(&w)), vec![5, 6]);
}

#[test]
fn dropping_a_runs_backups_removes_them_and_its_rollback_is_refused() {
    let w = World::new(2, 16, 73);
    ok(&w, &["plan"]);
    ok(&w, &["apply"]); // run 1, applied: the admin acknowledges it
    ok(&w, &["plan"]); // plan 2: plan 1 is needed only by run 1 now
    let files = backup_files(&w.path("state"));
    assert!(!files.is_empty());
    let db_before = std::fs::metadata(w.path("state/state.sqlite"))
        .unwrap()
        .len();

    // --dry-run says what it frees and changes nothing.
    let plans_before = plans(&w);
    let (code, out, err) = out_of(
        &w,
        &[
            "state",
            "prune",
            "--dry-run",
            "--all-backups",
            "--keep-plans",
            "1",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("would drop the journal of 1 (1 (applied))"),
        "{out}"
    );
    assert!(
        out.contains(&format!("{} backup files", files.len())),
        "{out}"
    );
    assert!(out.contains("Nothing was changed (--dry-run)"), "{out}");
    assert_eq!(backup_files(&w.path("state")), files);
    assert_eq!(plans(&w), plans_before);
    let steps: i64 = db(&w)
        .query_row("SELECT COUNT(*) FROM journal WHERE run_id = 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(steps > 0);
    assert_eq!(
        std::fs::metadata(w.path("state/state.sqlite"))
            .unwrap()
            .len(),
        db_before
    );

    let (code, out, err) = out_of(
        &w,
        &[
            "--json",
            "state",
            "prune",
            "--backups-of-run",
            "1",
            "--keep-plans",
            "1",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        j["prune"]["backups"].as_u64().unwrap() as usize,
        files.len()
    );
    assert_eq!(j["prune"]["runs"][0]["steps"].as_i64().unwrap(), steps);
    assert!(backup_files(&w.path("state")).is_empty());
    assert_eq!(j["prune"]["plans"][0]["plan_id"], 1, "{j}");
    assert_eq!(kept_ids(&plans(&w)), vec![2]);
    let after = tree(&w.store.root);
    let (code, _, err) = out_of(&w, &["rollback", "--run", "1"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("run 1 can no longer be rolled back: its journal and backups were dropped by `principal-reconciler state prune`"),
        "{err}"
    );
    assert_same_tree(&tree(&w.store.root), &after, "nothing restored");
    let (code, _, err) = out_of(&w, &["state", "prune", "--backups-of-run", "1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("already dropped"), "{err}");
}

#[test]
fn a_backup_shared_by_two_runs_survives_dropping_one() {
    let w = World::new(2, 16, 74);
    let original = tree(&w.store.root);
    ok(&w, &["plan"]);
    ok(&w, &["apply"]); // run 1
    ok(&w, &["rollback"]); // run 2 undoes run 1
    ok(&w, &["plan"]);
    ok(&w, &["apply"]); // run 3: the same originals, the same backups
    let files = backup_files(&w.path("state"));
    // Run 1 (rolled back) shares every backup with run 3 (applied): none is deleted.
    let (code, out, err) = out_of(&w, &["state", "prune", "--backups-of-run", "1"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("0 backup files"), "{out}");
    assert!(
        out.contains(&format!(
            "({} kept: another run's journal refers to them)",
            files.len()
        )),
        "{out}"
    );
    assert_eq!(backup_files(&w.path("state")), files);
    let (code, _, err) = out_of(&w, &["rollback", "--run", "1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("run 1 can no longer be rolled back"), "{err}");
    // Run 3 still rolls back byte for byte from the shared backups.
    ok(&w, &["rollback", "--run", "3"]);
    assert_same_tree(&tree(&w.store.root), &original, "run 3 undone");
}

#[test]
fn an_unfinished_run_keeps_its_journal() {
    let w = World::new(2, 12, 75);
    ok(&w, &["plan"]);
    ok(&w, &["apply"]);
    db(&w)
        .execute(
            "UPDATE runs SET state = 'applying', status = 'running' WHERE id = 1",
            [],
        )
        .unwrap();
    let (code, _, err) = out_of(&w, &["state", "prune", "--backups-of-run", "1"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("run 1 is applying (running): finish it first"),
        "{err}"
    );
    let (code, out, _) = out_of(&w, &["state", "prune", "--all-backups"]);
    assert_eq!(code, 0);
    assert!(!out.contains("Runs:"), "{out}");
    assert!(!backup_files(&w.path("state")).is_empty());
}

#[test]
fn keep_plans_zero_is_refused_and_the_example_documents_the_key() {
    let w = World::new(1, 4, 76);
    keep_plans(&w, 0);
    let (code, _, err) = out_of(&w, &["plan"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("[state] keep_plans must be at least 1"),
        "{err}"
    );
    assert!(!w.path("state/state.sqlite").exists());
    let example = ok(&w, &["config"]);
    assert!(example.contains("# keep_plans = 5"), "{example}");
}
