//! Plans of a file store keep hashes, not new bytes (#15): apply replays the plan's rewrite on
//! each file and writes only bytes that hash to what was planned.

use crate::support::world::{self, World};
use predicates::prelude::*;

fn state(w: &World) -> rusqlite::Connection {
    rusqlite::Connection::open(w.path("state/state.sqlite")).unwrap()
}

#[test]
fn a_plan_keeps_hashes_and_compact_changes_and_apply_recomputes_the_planned_bytes() {
    let w = World::new(4, 40, 31);
    let before = world::tree(&w.store.root);
    w.cmd().arg("plan").assert().code(0);
    let db = state(&w);
    let (rows, stored, recomputed): (i64, i64, i64) = db
        .query_row(
            "SELECT COUNT(*), COALESCE(SUM(length(new_bytes)), 0), COUNT(rewrite_pass) FROM plan_resources",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert!(rows > 0);
    assert_eq!(stored, 0, "no new bytes are stored");
    assert_eq!(recomputed, rows, "every resource is recomputed at apply");
    let answers: i64 = db
        .query_row("SELECT COUNT(*) FROM plan_rewrites", [], |r| r.get(0))
        .unwrap();
    assert!(answers > 0, "the resolver's answers are kept");
    // changes.csv has one row per changed property, read through the plan_changes view.
    let changes: i64 = db
        .query_row("SELECT COUNT(*) FROM plan_changes", [], |r| r.get(0))
        .unwrap();
    let csv = std::fs::read_to_string(w.path("reports/changes.csv")).unwrap();
    assert_eq!(csv.lines().count() as i64 - 1, changes);
    drop(db);
    // Apply writes exactly the planned bytes (their hashes), and rollback restores the store.
    w.cmd().arg("apply").assert().code(0);
    let db = state(&w);
    let mut st = db
        .prepare("SELECT rel_path, new_sha256 FROM plan_resources")
        .unwrap();
    let planned: Vec<(String, String)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let after_shas: std::collections::BTreeSet<String> = db
        .prepare("SELECT after_sha256 FROM journal WHERE action = 'rewrite' AND state = 'done'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (rel, sha) in &planned {
        assert!(after_shas.contains(sha), "{rel} was not written as planned");
    }
    let written: std::collections::BTreeSet<String> = world::resources(&w.store.root)
        .values()
        .map(|b| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b)))
        .collect();
    for (rel, sha) in &planned {
        assert!(
            written.contains(sha),
            "{rel}: the store does not hold the planned bytes"
        );
    }
    w.cmd().arg("rollback").assert().code(0);
    world::assert_same_tree(&world::tree(&w.store.root), &before, "store after rollback");
}

#[test]
fn a_rewrite_that_no_longer_gives_the_planned_bytes_is_skipped_not_written() {
    let w = World::new(3, 20, 32);
    w.cmd().arg("plan").assert().code(0);
    let db = state(&w);
    let rel: String = db
        .query_row(
            "SELECT rel_path FROM plan_resources ORDER BY rel_path LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let original = std::fs::read(w.store.root.join(&rel)).unwrap();
    // The file still holds what the plan was made from, but the plan's resolver answers are
    // gone: the replayed rewrite gives other bytes than planned, which must never be written.
    db.execute("DELETE FROM plan_rewrites", []).unwrap();
    drop(db);
    w.cmd()
        .arg("apply")
        .assert()
        .code(1)
        .stdout(predicate::str::contains(format!(
        "skipped {rel}: changed since plan (its planned rewrite no longer gives the planned bytes)"
    )));
    let parts: Vec<&str> = rel.splitn(6, '/').collect();
    let new = &w.new_guid[parts[4]];
    let moved = w.store.root.join(format!(
        "calendars/__uids__/{}/{}/{new}/{}",
        &new[0..2],
        &new[2..4],
        parts[5]
    ));
    assert_eq!(std::fs::read(&moved).unwrap(), original, "left as it was");
}

#[test]
fn diff_shows_the_recomputed_change_before_and_after_apply() {
    let w = World::new(2, 10, 33);
    w.cmd().arg("plan").assert().code(0);
    let rel: String = state(&w)
        .query_row(
            "SELECT rel_path FROM plan_resources ORDER BY rel_path LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let out = w.cmd().args(["diff", &rel]).output().unwrap();
    let planned = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(planned.contains(&format!("+++ b/{rel}")), "{planned}");
    let new_guid = w.new_guid.values().any(|g| planned.contains(g.as_str()));
    assert!(new_guid, "the diff names a new GUID: {planned}");
}
