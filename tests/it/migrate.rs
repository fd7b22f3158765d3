//! End to end through the CLI: plan, apply, rollback, migrate on generated 10.6 stores.

use crate::support::child::{kill_after, xorshift};
use crate::support::world;

use predicates::prelude::*;
use world::{assert_same_tree, resources, tree, World};

fn plan_json(w: &World) -> serde_json::Value {
    let out = w.cmd().args(["--json", "plan"]).output().unwrap();
    assert!(
        out.status.code() == Some(0),
        "plan failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn plan_maps_everyone_and_changes_nothing_in_the_store() {
    let w = World::new(6, 60, 11);
    let before = tree(&w.store.root);
    let doc = plan_json(&w);
    let plan = &doc["plan"];
    assert_eq!(plan["resources_scanned"], 60);
    assert!(plan["resources_changed"].as_u64().unwrap() > 0);
    assert_eq!(plan["by_outcome"]["ambiguous"], 0);
    assert_eq!(plan["by_outcome"]["unmatched"], 0);
    assert!(plan["by_outcome"]["mapped"].as_u64().unwrap() >= 6);
    assert_eq!(plan["homes"]["moved"], 6, "{plan}");
    assert_same_tree(
        &tree(&w.store.root),
        &before,
        "plan must not touch the store",
    );
    // Reports: one changes.csv row per changed property, a mapping row per distinct address.
    let changes = std::fs::read_to_string(w.path("reports/changes.csv")).unwrap();
    assert_eq!(
        changes.lines().count() as u64 - 1,
        plan["properties_changed"].as_u64().unwrap()
    );
    let mapping = std::fs::read_to_string(w.path("reports/mapping.csv")).unwrap();
    assert!(mapping.starts_with("old_value,form,outcome,rule,evidence,new_guid"));
    for (old, new) in &w.new_guid {
        let row = mapping
            .lines()
            .find(|l| l.starts_with(&format!("urn:uuid:{old},")))
            .unwrap_or_else(|| panic!("no mapping row for {old}"));
        assert!(row.contains(",mapped,old-export-guid,"), "{row}");
        assert!(row.contains(new.as_str()), "{row}");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(w.path("reports/summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["plan"]["plan_id"], plan["plan_id"]);
    assert!(std::fs::read_to_string(w.path("reports/report.html"))
        .unwrap()
        .contains("<table id=\"mapping\""));
}

#[test]
fn apply_rewrites_to_new_guids_idempotently_and_rollback_restores_every_byte() {
    let w = World::new(5, 40, 12);
    let before = tree(&w.store.root);
    w.cmd().arg("plan").assert().code(0);
    w.cmd()
        .arg("apply")
        .assert()
        .code(0)
        .stdout(predicate::str::contains("resources written"));
    let after = resources(&w.store.root);
    let text: String = after
        .values()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    for (old, new) in &w.new_guid {
        assert!(!text.contains(old.as_str()) || text.contains(new.as_str()));
        assert!(
            text.contains(new.as_str()),
            "new GUID {new} missing after apply"
        );
    }
    // Owners and modes kept, MD5 attribute equals the new bytes.
    for (rel, (_, uid, gid, _, attrs)) in tree(&w.store.root) {
        assert_eq!((uid, gid), (501, 20), "{rel} changed owner");
        if rel.ends_with(".ics") {
            if let Some((_, v)) = attrs.iter().find(|(k, _)| k.contains("getcontentmd5")) {
                let xml = principal_reconciler::store::xattrs::decode_value(v);
                let md5 = hex::encode(<md5::Md5 as sha2::Digest>::digest(
                    std::fs::read(w.store.root.join(&rel)).unwrap(),
                ));
                assert!(
                    String::from_utf8_lossy(&xml).contains(&md5),
                    "{rel}: stale getcontentmd5"
                );
            }
        }
    }
    // Applying again, or planning again, changes nothing (and says what it checked).
    w.cmd()
        .arg("apply")
        .assert()
        .code(0)
        .stdout(predicate::str::contains("Nothing is left to apply"));
    let again = plan_json(&w);
    assert_eq!(
        again["plan"]["resources_changed"], 0,
        "a fresh plan after apply must be empty"
    );
    w.cmd().arg("apply").assert().code(0);
    assert_eq!(resources(&w.store.root), after);
    // Rollback of the first run restores the store byte for byte, owners, modes and attributes.
    // The empty apply of the second plan (run 2) came after run 1 on the same store: it is
    // undone first, then run 1.
    w.cmd()
        .args(["rollback", "--run", "1"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("rollback run 3 of run 2"))
        .stdout(predicate::str::contains(
            "rollback run 4 of run 1: 40 files restored",
        ));
    assert_same_tree(&tree(&w.store.root), &before, "store");
    w.cmd()
        .args(["rollback", "--run", "1"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains(
            "run 1 was already rolled back by run",
        ))
        .stdout(predicate::str::contains("Nothing is left to undo"));
}

#[test]
fn a_resource_changed_between_plan_and_apply_is_skipped_and_reported() {
    let w = World::new(3, 20, 13);
    w.cmd().arg("plan").assert().code(0);
    let state = rusqlite::Connection::open(w.path("state/state.sqlite")).unwrap();
    let rel: String = state
        .query_row(
            "SELECT rel_path FROM plan_resources ORDER BY rel_path LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let path = w.store.root.join(&rel);
    let mut edited = std::fs::read(&path).unwrap();
    edited.extend_from_slice(b"\r\n");
    std::fs::write(&path, &edited).unwrap();
    w.cmd()
        .arg("apply")
        .assert()
        .code(1)
        .stdout(predicate::str::contains(format!(
            "skipped {rel}: changed since plan"
        )))
        .stdout(predicate::str::contains("plan` again"));
    // The home moved to its new GUID; the edited file moved with it, untouched.
    let parts: Vec<&str> = rel.splitn(6, '/').collect();
    let new = &w.new_guid[parts[4]];
    let moved = w.store.root.join(format!(
        "calendars/__uids__/{}/{}/{new}/{}",
        &new[0..2],
        &new[2..4],
        parts[5]
    ));
    assert_eq!(
        std::fs::read(&moved).unwrap(),
        edited,
        "a concurrent change must never be overwritten"
    );
}

#[test]
fn apply_refuses_while_the_server_runs() {
    let w = World::new(2, 5, 14);
    w.cmd().arg("plan").assert().code(0);
    let pid = w.store.root.join("caldavd.pid");
    std::fs::write(&pid, format!("{}\n", std::process::id())).unwrap();
    w.cmd()
        .arg("apply")
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "calendar server seems to be running",
        ));
    w.cmd().args(["apply", "--force"]).assert().code(0);
}

#[test]
fn apply_and_report_need_a_plan() {
    let w = World::new(1, 2, 15);
    w.cmd()
        .arg("apply")
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "run `principal-reconciler plan` first",
        ));
    w.cmd().arg("report").assert().code(2);
}

/// Kill `apply` with SIGKILL at random instants, resume it, and compare with an uninterrupted run.
#[test]
fn apply_killed_at_random_points_resumes_to_the_same_store() {
    let kills: usize = std::env::var("PR_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let reference = World::new(8, 1500, 21);
    reference.cmd().arg("plan").assert().code(0);
    let started = std::time::Instant::now();
    reference.cmd().arg("apply").assert().code(0);
    let full = started.elapsed().as_micros().max(1000) as u64;
    let expected = tree(&reference.store.root);

    let mut seed = 0x5eed_u64;
    let mut interrupted = 0;
    let mut attempts = 0;
    while interrupted < kills {
        attempts += 1;
        assert!(
            attempts <= 4 * kills,
            "only {interrupted} of {attempts} kills hit a running apply"
        );
        let w = World::new(8, 1500, 21);
        w.cmd().arg("plan").assert().code(0);
        // A uniformly random instant within a full run's duration.
        let delay = std::time::Duration::from_micros(xorshift(&mut seed) % full);
        if !kill_after(&w.config, "apply", delay) {
            continue; // it finished before the kill: not a crash
        }
        interrupted += 1;
        w.cmd().arg("apply").assert().code(0);
        // Identical resources, folders and metadata, and no leftover temporary files.
        assert_same_tree(
            &tree(&w.store.root),
            &expected,
            &format!("kill {interrupted}"),
        );
    }
}

/// Kill `rollback` with SIGKILL at random instants, resume it, and compare with the original store.
/// One world: after each rollback the plan is applied again (a new run) for the next kill.
#[test]
fn rollback_killed_at_random_points_resumes_to_the_original_store() {
    let kills: usize = std::env::var("PR_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let w = World::new(8, 1500, 23);
    let original = tree(&w.store.root);
    w.cmd().arg("plan").assert().code(0);
    w.cmd().arg("apply").assert().code(0);
    let started = std::time::Instant::now();
    w.cmd().arg("rollback").assert().code(0);
    let full = started.elapsed().as_micros().max(1000) as u64;
    assert_same_tree(&tree(&w.store.root), &original, "uninterrupted rollback");
    let mut seed = 0x0b5e_55ed_u64;
    let mut interrupted = 0;
    let mut attempts = 0;
    while interrupted < kills {
        attempts += 1;
        assert!(
            attempts <= 4 * kills,
            "only {interrupted} of {attempts} kills hit a running rollback"
        );
        w.cmd().arg("apply").assert().code(0);
        let delay = std::time::Duration::from_micros(xorshift(&mut seed) % full);
        if !kill_after(&w.config, "rollback", delay) {
            continue; // it finished before the kill: the store is rolled back already
        }
        interrupted += 1;
        w.cmd().arg("rollback").assert().code(0);
        assert_same_tree(
            &tree(&w.store.root),
            &original,
            &format!("rollback kill {interrupted}"),
        );
    }
}

#[test]
fn verify_fails_before_and_passes_after_apply() {
    let w = World::new(3, 25, 16);
    w.cmd()
        .arg("verify")
        .assert()
        .code(1)
        .stdout(predicate::str::contains("not-canonical"))
        .stdout(predicate::str::contains("orphan-home"));
    let csv = std::fs::read_to_string(w.path("reports/verify.csv")).unwrap();
    assert!(csv.starts_with("kind,path,line,detail\n"), "{csv}");
    // A resource's line number stands in its own column, the path without it.
    assert!(
        csv.lines().any(|l| l.starts_with("not-canonical,")
            && l.contains(".ics,")
            && l.split(',')
                .nth(2)
                .is_some_and(|n| n.parse::<u32>().is_ok())),
        "{csv}"
    );
    w.cmd().arg("plan").assert().code(0);
    w.cmd().arg("apply").assert().code(0);
    w.cmd()
        .arg("verify")
        .assert()
        .code(0)
        .stdout(predicate::str::contains("no problems"));
}

#[test]
fn homes_merge_into_a_new_home_the_server_already_made_and_rollback_separates_them() {
    let w = World::new(2, 10, 17);
    let before = tree(&w.store.root);
    // The first user logged in after the migration: the server made an empty home under the new GUID.
    let old = &w.store.people[0].guid;
    let new = &w.new_guid[old];
    let fresh = w.store.root.join(format!(
        "calendars/__uids__/{}/{}/{new}",
        &new[0..2],
        &new[2..4]
    ));
    std::fs::create_dir_all(fresh.join("calendar")).unwrap();
    std::fs::create_dir_all(fresh.join("inbox")).unwrap();
    // ... owned by the calendar service account, like everything the server writes.
    let mut p = fresh.join("inbox");
    while p != w.store.root.join("calendars/__uids__") {
        std::os::unix::fs::chown(&p, Some(501), Some(20)).unwrap();
        p = p.parent().unwrap().to_path_buf();
    }
    std::os::unix::fs::chown(fresh.join("calendar"), Some(501), Some(20)).unwrap();
    let with_fresh = tree(&w.store.root);
    assert_ne!(before, with_fresh);
    w.cmd().arg("plan").assert().code(0);
    w.cmd()
        .arg("apply")
        .assert()
        .code(0)
        .stdout(predicate::str::contains(
            "as calendar-migrated (name clash)",
        ));
    let old_home = w.store.root.join(format!(
        "calendars/__uids__/{}/{}/{old}",
        &old[0..2],
        &old[2..4]
    ));
    assert!(!old_home.exists(), "the emptied old home is removed");
    let migrated: Vec<_> = std::fs::read_dir(fresh.join("calendar-migrated"))
        .unwrap()
        .collect();
    assert!(!migrated.is_empty(), "the old calendar moved in");
    assert!(fresh.join("calendar").is_dir() && fresh.join("inbox-migrated").is_dir());
    w.cmd().arg("verify").assert().code(0);
    w.cmd().arg("rollback").assert().code(0);
    assert_same_tree(
        &tree(&w.store.root),
        &with_fresh,
        "rollback must separate the homes again",
    );
}

#[test]
fn rollback_after_a_killed_apply_restores_the_original_store() {
    let w = World::new(6, 1200, 18);
    let before = tree(&w.store.root);
    w.cmd().arg("plan").assert().code(0);
    crate::support::child::kill_apply_after_first_step(
        &w.config,
        &w.path("state/state.sqlite"),
        "journal",
        2000,
    );
    w.cmd().arg("rollback").assert().code(0);
    assert_same_tree(&tree(&w.store.root), &before, "store");
}

#[test]
fn delegates_and_auto_accept_survive_the_guid_change_and_roll_back() {
    let w = World::new(3, 10, 19);
    let data = w.path("Data");
    std::fs::create_dir_all(&data).unwrap();
    let people: Vec<String> = w.store.people.iter().map(|p| p.guid.clone()).collect();
    let gone = "FFFFFFFF-0000-4000-8000-00000000DEAD";
    let proxy = rusqlite::Connection::open(data.join("calendaruserproxy.sqlite")).unwrap();
    proxy
        .execute_batch("CREATE TABLE GROUPS (GROUPNAME text, MEMBER text); CREATE INDEX GROUPNAMES on GROUPS (GROUPNAME); CREATE INDEX MEMBERS on GROUPS (MEMBER);")
        .unwrap();
    for (g, m) in [
        (
            format!("{}#calendar-proxy-write", people[0]),
            people[1].clone(),
        ),
        (
            format!("{}#calendar-proxy-read", people[1]),
            people[2].clone(),
        ),
        (
            format!("{}#calendar-proxy-read", people[2]),
            gone.to_string(),
        ),
    ] {
        proxy
            .execute("INSERT INTO GROUPS VALUES (?1, ?2)", [g, m])
            .unwrap();
    }
    drop(proxy);
    let before = std::fs::read(data.join("calendaruserproxy.sqlite")).unwrap();
    let out = w.cmd().args(["--json", "plan"]).output().unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let db = &doc["plan"]["databases"][0];
    assert_eq!(db["kind"], "proxy", "{doc}");
    assert_eq!(db["changes"], 3);
    assert_eq!(
        db["unmatched"], 1,
        "the departed member's row is kept and reported"
    );
    assert_eq!(
        std::fs::read(data.join("calendaruserproxy.sqlite")).unwrap(),
        before,
        "plan changes nothing"
    );
    w.cmd().arg("apply").assert().code(0);
    let proxy = rusqlite::Connection::open(data.join("calendaruserproxy.sqlite")).unwrap();
    let rows: Vec<(String, String)> = proxy
        .prepare("SELECT GROUPNAME, MEMBER FROM GROUPS ORDER BY GROUPNAME")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    drop(proxy);
    let n = |i: usize| w.new_guid[&people[i]].clone();
    let mut expected = vec![
        (format!("{}#calendar-proxy-write", n(0)), n(1)),
        (format!("{}#calendar-proxy-read", n(1)), n(2)),
        (format!("{}#calendar-proxy-read", n(2)), gone.to_string()),
    ];
    expected.sort();
    assert_eq!(rows, expected);
    w.cmd().arg("rollback").assert().code(0);
    assert_eq!(
        std::fs::read(data.join("calendaruserproxy.sqlite")).unwrap(),
        before
    );
}

#[test]
fn a_rehearsal_never_writes_the_real_store_or_its_databases() {
    let w = World::new(2, 8, 20);
    let data = w.path("Data");
    std::fs::create_dir_all(&data).unwrap();
    let people: Vec<String> = w.store.people.iter().map(|p| p.guid.clone()).collect();
    let proxy = rusqlite::Connection::open(data.join("calendaruserproxy.sqlite")).unwrap();
    proxy
        .execute_batch("CREATE TABLE GROUPS (GROUPNAME text, MEMBER text);")
        .unwrap();
    proxy
        .execute(
            "INSERT INTO GROUPS VALUES (?1, ?2)",
            [
                format!("{}#calendar-proxy-write", people[0]),
                people[1].clone(),
            ],
        )
        .unwrap();
    drop(proxy);
    let real_db = std::fs::read(data.join("calendaruserproxy.sqlite")).unwrap();
    let real_store = tree(&w.store.root);
    let rehearsal = w.path("rehearsal");
    w.cmd()
        .args(["migrate", "--rehearse"])
        .arg(&rehearsal)
        .assert()
        .code(0);
    assert_eq!(
        std::fs::read(data.join("calendaruserproxy.sqlite")).unwrap(),
        real_db
    );
    assert_same_tree(&tree(&w.store.root), &real_store, "the real store");
    let copy = rusqlite::Connection::open(rehearsal.join("Data/calendaruserproxy.sqlite")).unwrap();
    let member: String = copy
        .query_row("SELECT MEMBER FROM GROUPS", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        member, w.new_guid[&people[1]],
        "the rehearsal's copy is rewritten"
    );
}

#[test]
fn an_ics_folder_is_rewritten_without_calendarserver_properties() {
    let w = World::with(|root| {
        principal_reconciler::store::generate::StoreBuilder::ics_dir(root)
            .homes(3)
            .resources(12)
            .seed(22)
    });
    let text = std::fs::read_to_string(&w.config).unwrap();
    std::fs::write(
        &w.config,
        text.replace("kind = \"calendarserver-fs\"", "kind = \"ics-dir\""),
    )
    .unwrap();
    let before = tree(&w.store.root);
    w.cmd().arg("plan").assert().code(0);
    w.cmd().arg("apply").assert().code(0);
    let after = tree(&w.store.root);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "no file added, moved or removed"
    );
    assert!(
        after.values().all(|(_, _, _, _, attrs)| attrs.is_empty()),
        "no attribute added to a plain folder"
    );
    assert_ne!(before, after, "the events were rewritten");
    w.cmd().arg("rollback").assert().code(0);
    assert_same_tree(&tree(&w.store.root), &before, "ics-dir after rollback");
}
