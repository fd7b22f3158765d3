//! Delegates (`calendaruserproxy.sqlite`) and auto-accept (`resourceinfo.sqlite`) moved to new
//! GUIDs, on real SQLite files made with CalendarServer 2.x's schema.

use principal_reconciler::address::Guid;
use principal_reconciler::provision::{apply_db_rewrite, plan_db_rewrite, DbKind, DbRow};
use rusqlite::Connection;
use std::collections::HashMap;
use std::path::Path;

const A_OLD: &str = "0A000000-0000-4000-8000-000000000001";
const A_NEW: &str = "1A000000-0000-4000-8000-000000000001";
const B_OLD: &str = "0B000000-0000-4000-8000-000000000002";
const B_NEW: &str = "1B000000-0000-4000-8000-000000000002";
const C_CUR: &str = "1C000000-0000-4000-8000-000000000003";
const GONE: &str = "0D000000-0000-4000-8000-000000000004";

/// The schema CalendarServer 2.x creates (metadata table CALDAV, data table, indexes).
fn proxy_db(path: &Path, rows: &[(&str, &str)]) {
    let c = Connection::open(path).unwrap();
    c.execute_batch(
        "create table CALDAV (KEY text unique, VALUE text unique);
         insert into CALDAV (KEY, VALUE) values ('SCHEMA_VERSION', '4');
         insert into CALDAV (KEY, VALUE) values ('TYPE', 'CALENDARUSERPROXY');
         create table GROUPS (GROUPNAME text, MEMBER text);
         create index GROUPNAMES on GROUPS (GROUPNAME);
         create index MEMBERS on GROUPS (MEMBER);",
    )
    .unwrap();
    for (g, m) in rows {
        c.execute(
            "insert into GROUPS (GROUPNAME, MEMBER) values (?1, ?2)",
            [g, m],
        )
        .unwrap();
    }
}

fn resourceinfo_db(path: &Path, rows: &[(&str, i64)]) {
    let c = Connection::open(path).unwrap();
    c.execute_batch(
        "create table CALDAV (KEY text unique, VALUE text unique);
         insert into CALDAV (KEY, VALUE) values ('SCHEMA_VERSION', '1');
         insert into CALDAV (KEY, VALUE) values ('TYPE', 'RESOURCEINFO');
         create table RESOURCEINFO (GUID text, AUTOSCHEDULE integer);
         create index RESOURCEGUIDS on RESOURCEINFO (GUID);",
    )
    .unwrap();
    for (g, a) in rows {
        c.execute(
            "insert into RESOURCEINFO (GUID, AUTOSCHEDULE) values (?1, ?2)",
            rusqlite::params![g, a],
        )
        .unwrap();
    }
}

fn resolver() -> impl Fn(&Guid) -> Option<Guid> {
    // Like the mapping: old GUIDs to new ones, current GUIDs to themselves, the rest to nothing.
    let map: HashMap<Guid, Guid> = [
        (A_OLD, A_NEW),
        (B_OLD, B_NEW),
        (A_NEW, A_NEW),
        (B_NEW, B_NEW),
        (C_CUR, C_CUR),
    ]
    .iter()
    .map(|(o, n)| (Guid::parse(o).unwrap(), Guid::parse(n).unwrap()))
    .collect();
    move |g: &Guid| map.get(g).cloned()
}

fn proxy_rows(path: &Path) -> Vec<(String, String)> {
    let c = Connection::open(path).unwrap();
    let mut st = c
        .prepare("select GROUPNAME, MEMBER from GROUPS order by GROUPNAME, MEMBER")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|x| x.unwrap())
        .collect()
}

fn w(g: &str) -> String {
    format!("{g}#calendar-proxy-write")
}
fn r(g: &str) -> String {
    format!("{g}#calendar-proxy-read")
}

#[test]
fn proxy_rows_move_to_new_guids() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calendaruserproxy.sqlite");
    let lower_b = B_OLD.to_lowercase();
    proxy_db(
        &path,
        &[
            (&w(A_OLD), B_OLD),    // both columns change
            (&r(A_OLD), C_CUR),    // owner changes
            (&w(C_CUR), &lower_b), // member changes (stored lower case)
            (&w(A_OLD), GONE),     // owner changes, member unmatched (kept)
            (&r(GONE), A_OLD),     // owner unmatched (kept), member changes
            (&w(C_CUR), B_NEW),    // already there: the rewrite of row 3 would duplicate it
            (&r(C_CUR), "not-a-guid"),
        ],
    );
    let plan = plan_db_rewrite(&path, &resolver()).unwrap();
    assert_eq!(plan.kind, DbKind::Proxy);
    assert_eq!(plan.rows, 7);
    let changes: Vec<(i64, DbRow)> = plan
        .changes
        .iter()
        .map(|c| (c.rowid, c.new.clone()))
        .collect();
    let row = |g: String, m: &str| DbRow::Proxy {
        group_name: g,
        member: m.to_string(),
    };
    assert_eq!(
        changes,
        [
            (1, row(w(A_NEW), B_NEW)),
            (2, row(r(A_NEW), C_CUR)),
            (4, row(w(A_NEW), GONE)),
            (5, row(r(GONE), A_NEW)),
        ]
    );
    assert_eq!(plan.dropped.len(), 1);
    assert_eq!(plan.dropped[0].rowid, 3);
    assert_eq!(plan.dropped[0].kept_rowid, 6);
    let unmatched: Vec<(i64, &str, &str)> = plan
        .unmatched
        .iter()
        .map(|u| (u.rowid, u.column, u.value.as_str()))
        .collect();
    assert_eq!(
        unmatched,
        [
            (4, "MEMBER", GONE),
            (5, "GROUPNAME", GONE),
            (7, "MEMBER", "not-a-guid")
        ]
    );
    assert!(plan.unmatched[2].reason.contains("not a GUID"));
    // Planning wrote nothing.
    assert_eq!(proxy_rows(&path).len(), 7);

    apply_db_rewrite(&path, &plan).unwrap();
    let mut want = vec![
        (w(A_NEW), B_NEW.to_string()),
        (r(A_NEW), C_CUR.to_string()),
        (w(A_NEW), GONE.to_string()),
        (r(GONE), A_NEW.to_string()),
        (w(C_CUR), B_NEW.to_string()),
        (r(C_CUR), "not-a-guid".to_string()),
    ];
    want.sort();
    assert_eq!(proxy_rows(&path), want);
    // The metadata table is untouched and a second plan changes nothing.
    let c = Connection::open(&path).unwrap();
    let v: String = c
        .query_row("select VALUE from CALDAV where KEY = 'TYPE'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(v, "CALENDARUSERPROXY");
    let again = plan_db_rewrite(&path, &resolver()).unwrap();
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(again.unmatched.len(), 3, "unmatched rows stay reported");
}

#[test]
fn two_old_rows_becoming_one_keep_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calendaruserproxy.sqlite");
    // B_OLD and its lower-case spelling are one GUID: both rows become (w(C), B_NEW).
    proxy_db(
        &path,
        &[(&w(C_CUR), B_OLD), (&w(C_CUR), &B_OLD.to_lowercase())],
    );
    let plan = plan_db_rewrite(&path, &resolver()).unwrap();
    assert_eq!(plan.changes.len(), 1);
    assert_eq!(plan.changes[0].rowid, 1);
    assert_eq!(plan.dropped.len(), 1);
    assert_eq!((plan.dropped[0].rowid, plan.dropped[0].kept_rowid), (2, 1));
    apply_db_rewrite(&path, &plan).unwrap();
    assert_eq!(proxy_rows(&path), [(w(C_CUR), B_NEW.to_string())]);
}

#[test]
fn resourceinfo_moves_and_a_changed_row_aborts_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resourceinfo.sqlite");
    resourceinfo_db(
        &path,
        &[(A_OLD, 1), (B_OLD, 0), (B_NEW, 1), (GONE, 1), (C_CUR, 0)],
    );
    let plan = plan_db_rewrite(&path, &resolver()).unwrap();
    assert_eq!(plan.kind, DbKind::ResourceInfo);
    assert_eq!(plan.changes.len(), 1);
    assert_eq!(
        plan.changes[0].new,
        DbRow::ResourceInfo {
            guid: A_NEW.into(),
            auto_schedule: Some(1)
        }
    );
    // B_OLD would duplicate the row B_NEW already has: the existing one stays, the old is dropped
    // with both values reported.
    assert_eq!(plan.dropped.len(), 1);
    assert_eq!(plan.dropped[0].rowid, 2);
    assert_eq!(
        plan.dropped[0].kept,
        DbRow::ResourceInfo {
            guid: B_NEW.into(),
            auto_schedule: Some(1)
        }
    );
    assert_eq!(plan.unmatched.len(), 1);
    assert_eq!(plan.unmatched[0].value, GONE);

    // Someone changes row 1 after the plan: nothing is written.
    let c = Connection::open(&path).unwrap();
    c.execute(
        "update RESOURCEINFO set AUTOSCHEDULE = 0 where rowid = 1",
        [],
    )
    .unwrap();
    let before: i64 = c
        .query_row("select count(*) from RESOURCEINFO", [], |r| r.get(0))
        .unwrap();
    let err = apply_db_rewrite(&path, &plan).unwrap_err();
    assert!(
        err.message.contains("row 1") && err.message.contains("changed since"),
        "{}",
        err.message
    );
    let rows: Vec<(String, i64)> = {
        let mut st = c
            .prepare("select GUID, AUTOSCHEDULE from RESOURCEINFO order by rowid")
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(|x| x.unwrap())
            .collect()
    };
    assert_eq!(
        rows.len() as i64,
        before,
        "the dropped row was not deleted either"
    );
    assert_eq!(rows[0], (A_OLD.to_string(), 0));

    // Plan again and apply.
    let plan = plan_db_rewrite(&path, &resolver()).unwrap();
    apply_db_rewrite(&path, &plan).unwrap();
    let mut st = c
        .prepare("select GUID, AUTOSCHEDULE from RESOURCEINFO order by GUID")
        .unwrap();
    let rows: Vec<(String, i64)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|x| x.unwrap())
        .collect();
    let mut want = vec![
        (A_NEW.to_string(), 0),
        (B_NEW.to_string(), 1),
        (GONE.to_string(), 1),
        (C_CUR.to_string(), 0),
    ];
    want.sort();
    assert_eq!(rows, want);
}

#[test]
fn wrong_files_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = plan_db_rewrite(&dir.path().join("nope.sqlite"), &resolver()).unwrap_err();
    assert!(missing.message.contains("not found"));
    let other = dir.path().join("other.sqlite");
    Connection::open(&other)
        .unwrap()
        .execute_batch("create table X (a text)")
        .unwrap();
    let e = plan_db_rewrite(&other, &resolver()).unwrap_err();
    assert_eq!(
        e.exit_status(),
        principal_reconciler::error::ExitStatus::Usage
    );
    assert!(e.message.contains("GROUPS") && e.message.contains("RESOURCEINFO"));
}
