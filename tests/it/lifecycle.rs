//! Run safety through the CLI, with real processes: one writer at a time, a run lifecycle that
//! never says "nothing to do" while the store differs, getctag renewal whatever instant a batch is
//! killed at, signals, leftovers, damaged backups and missing files.

use crate::support::child::spawn_paused;
use crate::support::world::{assert_same_tree, tree, World};
use std::collections::{BTreeMap, BTreeSet};
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

/// A world planned and applied without interruption: the store an interrupted run must end as.
fn applied_reference(homes: usize, resources: usize, seed: u64) -> World {
    let r = World::new(homes, resources, seed);
    ok(&r, &["plan"]);
    ok(&r, &["apply"]);
    r
}

/// The `getctag` value of every collection folder, by path.
fn ctags(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        if !m.is_dir() {
            continue;
        }
        for e in std::fs::read_dir(&p).unwrap() {
            stack.push(e.unwrap().path());
        }
        for n in xattr::list(&p).unwrap() {
            if n.to_string_lossy().contains("getctag") {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, xattr::get(&p, &n).unwrap().unwrap_or_default());
            }
        }
    }
    out
}

/// Collections (by path now) whose ctag is still one of `before`'s values.
fn kept(now: &BTreeMap<String, Vec<u8>>, before: &BTreeMap<String, Vec<u8>>) -> BTreeSet<String> {
    let old: BTreeSet<&Vec<u8>> = before.values().collect();
    now.iter()
        .filter(|(_, v)| old.contains(v))
        .map(|(k, _)| k.clone())
        .collect()
}

fn leftovers(root: &Path) -> Vec<String> {
    tree(root)
        .into_keys()
        .filter(|p| p.ends_with(".principal-reconciler.tmp"))
        .collect()
}

fn run_states(w: &World) -> Vec<(i64, String, String, Option<String>)> {
    let c = rusqlite::Connection::open(w.path("state/state.sqlite")).unwrap();
    let mut st = c
        .prepare("SELECT id, kind, status, state FROM runs ORDER BY id")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn a_second_writer_is_refused_at_once_naming_the_holder_and_a_crashed_holder_is_taken_over() {
    let reference = applied_reference(4, 1200, 31);
    let expected = tree(&reference.store.root);
    let w = World::new(4, 1200, 31);
    ok(&w, &["plan"]);
    let reports = tree(&w.path("reports"));
    let p = spawn_paused(&w.config, &["apply"], "apply-prepared");
    let pid = p.pid();
    for args in [
        &["apply"][..],
        &["plan"],
        &["rollback"],
        &["report"],
        &["verify"],
        &["migrate"],
        &["provision"],
    ] {
        let (code, out, err) = out_of(&w, args);
        assert_eq!(code, 3, "{args:?} must be refused: {out}\n{err}");
        for needle in [
            "is using the state folder",
            &format!("pid {pid}"),
            "`principal-reconciler --config",
            "apply`), since 20",
        ] {
            assert!(err.contains(needle), "{args:?}: `{needle}` not in: {err}");
        }
    }
    assert_same_tree(
        &tree(&w.path("reports")),
        &reports,
        "the reviewed reports are not overwritten",
    );
    // A second state folder on the same store is refused too (the store root is locked).
    let other = w.path("other.toml");
    std::fs::write(
        &other,
        std::fs::read_to_string(&w.config)
            .unwrap()
            .replace("path = \"state\"", "path = \"state2\"")
            .replace("dir = \"reports\"", "dir = \"reports2\""),
    )
    .unwrap();
    let out = assert_cmd::Command::cargo_bin("principal-reconciler")
        .unwrap()
        .arg("--config")
        .arg(&other)
        .arg("plan")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("the store"), "{err}");
    assert!(
        err.contains("in use by another principal-reconciler run"),
        "{err}"
    );
    assert!(err.contains(&format!("pid {pid}")), "{err}");
    // Read-only commands still run.
    assert_eq!(out_of(&w, &["scan"]).0, 0);
    // The holder crashes (kill -9): its lock goes with it; the next apply takes over and resumes.
    p.crash();
    let out = ok(&w, &["apply"]);
    assert!(out.contains("did not finish"), "{out}");
    assert!(out.contains("resuming it"), "{out}");
    assert_same_tree(&tree(&w.store.root), &expected, "resumed after the crash");
}

#[test]
fn apply_after_rollback_applies_the_plan_again_and_every_message_names_the_right_run() {
    let w = World::new(3, 30, 32);
    let before = tree(&w.store.root);
    ok(&w, &["plan"]);
    ok(&w, &["apply"]);
    let applied = tree(&w.store.root);
    ok(&w, &["rollback"]);
    assert_same_tree(&tree(&w.store.root), &before, "after the first rollback");
    // Before: "run 1 already finished; nothing to do." with the store unmigrated.
    let out = ok(&w, &["apply"]);
    assert!(out.contains("applied again by a new run"), "{out}");
    assert!(out.contains("apply run 3: 30 resources written"), "{out}");
    assert_same_tree(&tree(&w.store.root), &applied, "applied again");
    let out = ok(&w, &["rollback"]);
    assert!(out.contains("rollback run 4 of run 3"), "{out}");
    assert_same_tree(&tree(&w.store.root), &before, "after the second rollback");
    // Before: "run 4 already finished" (run 4 being the rollback).
    let out = ok(&w, &["rollback"]);
    assert!(
        out.contains("run 3 was already rolled back by run 4"),
        "{out}"
    );
    assert!(
        out.contains("all 30 files it had rewritten hold their original bytes"),
        "{out}"
    );
    let out = ok(&w, &["rollback", "--run", "1"]);
    assert!(
        out.contains("run 1 was already rolled back by run 2"),
        "{out}"
    );
    // A rollback run is not something to roll back.
    let (code, _, err) = out_of(&w, &["rollback", "--run", "4"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("run 4 is a rollback (of run 3)"), "{err}");
    let states: Vec<Option<String>> = run_states(&w).into_iter().map(|r| r.3).collect();
    assert_eq!(
        states,
        [
            Some("rolled-back".to_string()),
            None,
            Some("rolled-back".to_string()),
            None
        ]
    );
}

#[test]
fn an_interrupted_apply_that_was_rolled_back_is_never_resumed_and_stays_undoable() {
    let reference = applied_reference(6, 1500, 33);
    let applied = tree(&reference.store.root);
    let w = World::new(6, 1500, 33);
    let before = tree(&w.store.root);
    ok(&w, &["plan"]);
    // Killed after its first batch of 1024 was written.
    spawn_paused(&w.config, &["apply"], "apply-batch").crash();
    ok(&w, &["rollback"]);
    assert_same_tree(
        &tree(&w.store.root),
        &before,
        "rollback of the killed apply",
    );
    // Before: this silently resumed the rolled-back run 1 and left the store mixed.
    let out = ok(&w, &["apply"]);
    assert!(!out.contains("resuming"), "{out}");
    assert!(out.contains("apply run 3: 1500 resources written"), "{out}");
    assert_same_tree(&tree(&w.store.root), &applied, "applied by a new run");
    // Before: "nothing to do" with the store still migrated.
    let out = ok(&w, &["rollback"]);
    assert!(
        out.contains("rollback run 4 of run 3: 1500 files restored"),
        "{out}"
    );
    assert_same_tree(&tree(&w.store.root), &before, "rolled back");
    let out = ok(&w, &["rollback", "--run", "1", "--force"]);
    assert!(
        out.contains("run 1 was already rolled back by run 2"),
        "{out}"
    );
    assert_same_tree(&tree(&w.store.root), &before, "still the original");
    let r = run_states(&w);
    assert_eq!(r[0].3.as_deref(), Some("rolled-back"));
    assert_eq!(r[2].3.as_deref(), Some("rolled-back"));
}

#[test]
fn rollback_of_an_earlier_run_undoes_the_runs_made_after_it_first() {
    let w = World::new(3, 30, 34);
    let before = tree(&w.store.root);
    ok(&w, &["plan"]);
    ok(&w, &["apply"]);
    ok(&w, &["rollback"]);
    ok(&w, &["apply"]); // run 3, plan 1 again
                        // `rollback --run 1` undoes run 1 whatever happened after: here run 3 holds the changes.
    let out = ok(&w, &["rollback", "--run", "1"]);
    assert!(
        out.contains("rollback run 4 of run 3: 30 files restored"),
        "{out}"
    );
    assert!(
        out.contains("run 1 was already rolled back by run 2"),
        "{out}"
    );
    assert_same_tree(&tree(&w.store.root), &before, "every run undone");
}

#[test]
fn a_plan_is_not_applied_again_over_a_store_that_changed_since() {
    let w = World::new(2, 12, 35);
    ok(&w, &["plan"]);
    ok(&w, &["apply"]);
    ok(&w, &["rollback"]);
    let c = rusqlite::Connection::open(w.path("state/state.sqlite")).unwrap();
    let rel: String = c
        .query_row(
            "SELECT rel_path FROM plan_resources ORDER BY rel_path LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let p = w.store.root.join(&rel);
    let mut b = std::fs::read(&p).unwrap();
    b.extend_from_slice(b"\r\n");
    std::fs::write(&p, &b).unwrap();
    let before = tree(&w.store.root);
    let (code, _, err) = out_of(&w, &["apply"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("plan 1 cannot be applied again"), "{err}");
    assert!(err.contains(&rel), "{err}");
    assert!(err.contains("Run `principal-reconciler plan`"), "{err}");
    assert_same_tree(&tree(&w.store.root), &before, "nothing written");
}

#[test]
fn a_plan_that_failed_is_never_applied_and_plain_apply_takes_the_latest_complete_plan() {
    let w = World::new(2, 12, 36);
    let before = tree(&w.store.root);
    ok(&w, &["plan"]);
    // The second plan cannot write its reports (the folder is a file now): exit 3.
    std::fs::remove_dir_all(w.path("reports")).unwrap();
    std::fs::write(w.path("reports"), b"not a folder").unwrap();
    let (code, _, err) = out_of(&w, &["plan"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("plan 2 was not finished"), "{err}");
    let (code, _, err) = out_of(&w, &["apply", "--plan", "2"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("plan 2 did not finish (failed"), "{err}");
    assert!(err.contains("can never be applied"), "{err}");
    assert_same_tree(&tree(&w.store.root), &before, "nothing applied");
    let out = ok(&w, &["apply"]);
    assert!(out.contains("plan 2 did not finish (failed"), "{out}");
    assert!(out.contains("plan 1 is the latest complete plan"), "{out}");
    assert!(out.contains("apply run 1"), "{out}");
    let c = rusqlite::Connection::open(w.path("state/state.sqlite")).unwrap();
    let plan: i64 = c
        .query_row("SELECT plan_id FROM runs WHERE id = 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(plan, 1);
}

/// Kills a run at `phase` (inside a batch), resumes it, and checks that exactly the collections an
/// uninterrupted run renews got a new getctag.
fn ctag_after_kill(phase: &str) {
    let reference = World::new(8, 1500, 37);
    let base = ctags(&reference.store.root);
    ok(&reference, &["plan"]);
    ok(&reference, &["apply"]);
    let kept_ref = kept(&ctags(&reference.store.root), &base);
    assert!(
        kept_ref.len() < base.len(),
        "the reference renews some ctags"
    );
    let w = World::new(8, 1500, 37);
    let base = ctags(&w.store.root);
    ok(&w, &["plan"]);
    spawn_paused(&w.config, &["apply"], phase).crash();
    ok(&w, &["apply"]);
    assert_same_tree(&tree(&w.store.root), &tree(&reference.store.root), phase);
    assert_eq!(
        kept(&ctags(&w.store.root), &base),
        kept_ref,
        "{phase}: collections that kept their old getctag after the resume"
    );
}

#[test]
fn resume_renews_every_getctag_when_killed_between_renames_and_ctags() {
    ctag_after_kill("apply-rename");
}

#[test]
fn resume_renews_every_getctag_when_killed_among_the_ctags() {
    ctag_after_kill("apply-ctag");
}

#[test]
fn a_rollback_killed_between_renames_and_ctags_renews_them_on_resume() {
    let reference = applied_reference(8, 1500, 38);
    let applied = ctags(&reference.store.root);
    ok(&reference, &["rollback"]);
    let kept_ref = kept(&ctags(&reference.store.root), &applied);
    let w = applied_reference(8, 1500, 38);
    let before_rollback = ctags(&w.store.root);
    spawn_paused(&w.config, &["rollback"], "rollback-rename").crash();
    let out = ok(&w, &["rollback"]);
    assert!(out.contains("did not finish; resuming it"), "{out}");
    assert_same_tree(
        &tree(&w.store.root),
        &tree(&reference.store.root),
        "rollback resumed",
    );
    assert_eq!(kept(&ctags(&w.store.root), &before_rollback), kept_ref);
}

#[test]
fn sigint_finishes_the_batch_removes_its_temporary_files_and_the_run_resumes_with_whole_counts() {
    let reference = applied_reference(6, 1500, 39);
    let w = World::new(6, 1500, 39);
    ok(&w, &["plan"]);
    let p = spawn_paused(&w.config, &["apply"], "apply-prepared");
    assert!(
        !leftovers(&w.store.root).is_empty(),
        "paused with the batch's temporary files in place"
    );
    let (code, out, err) = p.signal(libc::SIGINT);
    assert_eq!(code, Some(130), "{out}\n{err}");
    assert!(
        out.contains("stopped by SIGINT after a whole batch"),
        "{out}"
    );
    assert!(out.contains("1024 resources written so far"), "{out}");
    assert_eq!(leftovers(&w.store.root), Vec::<String>::new());
    let r = run_states(&w);
    assert_eq!(
        (r[0].2.as_str(), r[0].3.as_deref()),
        ("interrupted", Some("applying"))
    );
    let out = ok(&w, &["apply"]);
    assert!(
        out.contains("run 1 was stopped by SIGINT; resuming it"),
        "{out}"
    );
    // The whole run's counts, not this invocation's 476.
    assert!(
        out.contains("apply run 1 (resumed; counts are the whole run's): 1500 resources written"),
        "{out}"
    );
    assert_same_tree(
        &tree(&w.store.root),
        &tree(&reference.store.root),
        "resumed",
    );
    // SIGTERM stops a rollback the same way.
    let p = spawn_paused(&w.config, &["rollback"], "rollback-rename");
    let (code, out, _) = p.signal(libc::SIGTERM);
    assert_eq!(code, Some(130), "{out}");
    assert!(out.contains("stopped by SIGTERM"), "{out}");
    assert_eq!(leftovers(&w.store.root), Vec::<String>::new());
    ok(&w, &["rollback"]);
    let fresh = World::new(6, 1500, 39);
    assert_same_tree(
        &tree(&w.store.root),
        &tree(&fresh.store.root),
        "rolled back",
    );
}

#[test]
fn apply_removes_the_temporary_files_earlier_interrupted_runs_left() {
    let reference = applied_reference(3, 40, 40);
    let w = World::new(3, 40, 40);
    ok(&w, &["plan"]);
    // What an interrupted run of an earlier version left beside the resources.
    let c = rusqlite::Connection::open(w.path("state/state.sqlite")).unwrap();
    let rels: Vec<String> = c
        .prepare("SELECT rel_path FROM plan_resources")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for rel in rels.iter().take(7) {
        let p = w.store.root.join(rel);
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::write(
            p.with_file_name(format!(".{name}.principal-reconciler.tmp")),
            b"half",
        )
        .unwrap();
    }
    assert_eq!(leftovers(&w.store.root).len(), 7);
    let out = ok(&w, &["apply"]);
    assert!(out.contains("removed 7 temporary file(s)"), "{out}");
    assert_same_tree(
        &tree(&w.store.root),
        &tree(&reference.store.root),
        "no leftovers",
    );
}

#[test]
fn rollback_force_skips_a_damaged_backup_reports_it_and_restores_the_rest() {
    let w = World::new(3, 30, 41);
    let before = tree(&w.store.root);
    ok(&w, &["plan"]);
    ok(&w, &["apply"]);
    let c = rusqlite::Connection::open(w.path("state/state.sqlite")).unwrap();
    let (rel, sha): (String, String) = c
        .query_row(
            "SELECT rel_path, backup_sha256 FROM journal WHERE action = 'rewrite' AND backup_sha256 IS NOT NULL ORDER BY seq LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let backup = w.path(&format!("state/backups/{}/{sha}", &sha[..2]));
    std::fs::write(&backup, b"damaged").unwrap();
    let (code, _, err) = out_of(&w, &["rollback"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains(&rel), "{err}");
    assert!(err.contains("is damaged"), "{err}");
    assert!(err.contains("`rollback --force` skips this file"), "{err}");
    let (code, out, err) = out_of(&w, &["rollback", "--force"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains(&format!("not restored {rel}")), "{out}");
    assert!(
        out.contains("backup in the state folder is damaged"),
        "{out}"
    );
    assert!(out.contains("29 files restored"), "{out}");
    // Everything else is back as it was; that one file keeps the rewritten bytes.
    let mut now = tree(&w.store.root);
    let mut want = before.clone();
    now.remove(&rel);
    want.remove(&rel);
    assert_same_tree(&now, &want, "all but the damaged one");
}

#[test]
fn rollback_says_a_file_is_missing_and_gives_its_own_advice() {
    let w = World::new(2, 12, 42);
    let before = tree(&w.store.root);
    ok(&w, &["plan"]);
    ok(&w, &["apply"]);
    // A rewritten resource deleted after the run (at its place after the home moved).
    let c = rusqlite::Connection::open(w.path("state/state.sqlite")).unwrap();
    let rel: String = c
        .query_row(
            "SELECT rel_path FROM journal WHERE action = 'rewrite' AND backup_sha256 IS NOT NULL ORDER BY seq LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let parts: Vec<&str> = rel.splitn(6, '/').collect();
    let new = &w.new_guid[parts[4]];
    let now_at = format!(
        "calendars/__uids__/{}/{}/{new}/{}",
        &new[0..2],
        &new[2..4],
        parts[5]
    );
    std::fs::remove_file(w.store.root.join(&now_at)).unwrap();
    let (code, out, _) = out_of(&w, &["apply"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("changed {now_at}: missing")), "{out}");
    let (code, out, err) = out_of(&w, &["rollback"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        out.contains(&format!(
            "not restored {rel}: missing: deleted or moved after the run"
        )),
        "{out}"
    );
    assert!(!out.contains("sha256 )"), "{out}");
    assert!(
        out.contains("`principal-reconciler rollback --run 1 --force` restores them anyway"),
        "{out}"
    );
    assert!(!out.contains("apply the new plan"), "apply's advice: {out}");
    let out = ok(&w, &["rollback", "--run", "1", "--force"]);
    assert!(out.contains("1 files restored"), "{out}");
    assert_same_tree(&tree(&w.store.root), &before, "restored with --force");
}
