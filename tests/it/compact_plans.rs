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

/// The state schema before packed plans (migrations 1–10), as an older version left it.
const OLD_SCHEMA: &[&str] = &[
    include_str!("../../migrations/0001_plans.sql"),
    include_str!("../../migrations/0002_journal.sql"),
    include_str!("../../migrations/0003_databases.sql"),
    include_str!("../../migrations/0004_addressbooks.sql"),
    include_str!("../../migrations/0005_attr_edits.sql"),
    include_str!("../../migrations/0006_lifecycle.sql"),
    include_str!("../../migrations/0007_prune.sql"),
    include_str!("../../migrations/0008_pg_store.sql"),
    include_str!("../../migrations/0009_stages.sql"),
    include_str!("../../migrations/0010_compact_plans.sql"),
];

/// Rewrites the state database as schema 10 would hold the same plan: its tables copied, its
/// resources into the plan_resources table and its changes through the schema's plan_changes
/// view (which files them into plan_change_rows and plan_strings).
fn downgrade_to_schema_10(w: &World) {
    let path = w.path("state/state.sqlite");
    let old_path = w.path("state/old.sqlite");
    {
        let old = rusqlite::Connection::open(&old_path).unwrap();
        old.execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL);",
        )
        .unwrap();
        for (i, sql) in OLD_SCHEMA.iter().enumerate() {
            old.execute_batch(sql).unwrap();
            old.execute(
                "INSERT INTO schema_migrations VALUES (?1, 't')",
                [i as i64 + 1],
            )
            .unwrap();
        }
        old.execute("ATTACH DATABASE ?1 AS n", [path.to_string_lossy()])
            .unwrap();
        for t in [
            "plans",
            "plan_mappings",
            "plan_homes",
            "plan_problems",
            "plan_databases",
            "plan_addressbook_homes",
            "plan_rewrites",
        ] {
            old.execute(&format!("INSERT INTO main.{t} SELECT * FROM n.{t}"), [])
                .unwrap();
        }
        old.execute_batch(
            "INSERT INTO main.plan_resources (plan_id, rel_path, old_sha256, new_sha256, new_bytes, changes, attr_edits, rewrite_pass)
                 SELECT plan_id, rel_path, old_sha256, new_sha256, new_bytes, changes, attr_edits, rewrite_pass FROM n.plan_resources;
             INSERT INTO main.plan_changes (plan_id, rel_path, line, property, old_value, new_value, old_line, new_line)
                 SELECT plan_id, rel_path, line, property, old_value, new_value, old_line, new_line
                   FROM n.plan_changes ORDER BY rel_path, seq;
             DETACH DATABASE n;",
        )
        .unwrap();
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(w.path(&format!("state/state.sqlite{suffix}")));
    }
    std::fs::rename(&old_path, &path).unwrap();
}

#[test]
fn a_plan_made_before_packed_plans_still_reports_diffs_applies_and_rolls_back() {
    let w = World::new(4, 40, 34);
    let before = world::tree(&w.store.root);
    w.cmd().arg("plan").assert().code(0);
    let changes_csv = std::fs::read(w.path("reports/changes.csv")).unwrap();
    let (rows, changes): (i64, i64) = state(&w)
        .query_row(
            "SELECT (SELECT COUNT(*) FROM plan_resources), (SELECT COUNT(*) FROM plan_changes)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(rows > 0 && changes > rows);
    downgrade_to_schema_10(&w);
    let old: i64 = state(&w)
        .query_row("SELECT COUNT(*) FROM plan_change_rows", [], |r| r.get(0))
        .unwrap();
    assert_eq!(old, changes, "the schema 10 plan holds every change");

    // The next command migrates it: the same resources and changes, the same report.
    std::fs::remove_dir_all(w.path("reports")).unwrap();
    w.cmd().arg("report").assert().code(0);
    assert_eq!(
        std::fs::read(w.path("reports/changes.csv")).unwrap(),
        changes_csv,
        "changes.csv of the migrated plan"
    );
    let db = state(&w);
    let (items, hex_ok, viewed): (i64, i64, i64) = db
        .query_row(
            "SELECT (SELECT COUNT(*) FROM plan_items),
                    (SELECT COUNT(*) FROM plan_items WHERE typeof(old_sha) = 'blob' AND length(new_sha) = 32),
                    (SELECT COUNT(*) FROM plan_changes)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((items, hex_ok, viewed), (rows, rows, changes));
    let rel: String = db
        .query_row(
            "SELECT rel_path FROM plan_resources ORDER BY rel_path LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    drop(db);
    let out = w.cmd().args(["diff", &rel]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("+++ b/{rel}")));

    // Apply writes the planned bytes; rollback gives the store back.
    w.cmd().arg("apply").assert().code(0);
    let planned: Vec<String> = state(&w)
        .prepare("SELECT new_sha256 FROM plan_resources")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let written: std::collections::BTreeSet<String> = world::resources(&w.store.root)
        .values()
        .map(|b| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b)))
        .collect();
    assert!(
        planned.iter().all(|s| written.contains(s)),
        "planned bytes written"
    );
    w.cmd().arg("rollback").assert().code(0);
    world::assert_same_tree(&world::tree(&w.store.root), &before, "store after rollback");
}

#[test]
fn a_new_plan_packs_its_changes_into_one_row_per_resource() {
    let w = World::new(4, 40, 35);
    w.cmd().arg("plan").assert().code(0);
    let db = state(&w);
    let (items, packed, folders, whole): (i64, i64, i64, i64) = db
        .query_row(
            "SELECT (SELECT COUNT(*) FROM plan_items),
                    (SELECT COUNT(*) FROM plan_items WHERE packed IS NOT NULL AND length(old_sha) = 32),
                    (SELECT COUNT(*) FROM plan_folders),
                    (SELECT COUNT(DISTINCT name) FROM plan_item_changes)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert!(items > 0);
    assert_eq!(
        packed + whole,
        items,
        "packed, or kept whole for the report's examples"
    );
    assert!(
        whole <= 50 && folders < items,
        "{whole} whole, {folders} folders"
    );
    let stale: i64 = db
        .query_row("SELECT COUNT(*) FROM plan_change_rows", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stale, 0, "no change rows for a file store's resources");
}
