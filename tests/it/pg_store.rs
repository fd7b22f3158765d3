//! The CalendarServer 3–9 PostgreSQL store, against a real PostgreSQL the tests start, loaded with
//! the real schemas of ../shared/corpus/cs-pg-schema (v6 = 3.3, v28 = 5.2, v66 = 9.x) and a
//! generated store imported into them: the same scenarios as the file store (tests/it/migrate.rs).

use crate::support::child::{kill_after, xorshift};
use crate::support::postgres::{self, Postgres};
use crate::support::world;
use principal_reconciler::config::{StoreConfig, StoreKind};
use principal_reconciler::store::generate::{GeneratedStore, StoreBuilder};
use principal_reconciler::store::pg::{Db, Target};
use std::collections::BTreeMap;
use std::path::PathBuf;

const VERSIONS: [u32; 3] = [6, 28, 66];
/// Bookkeeping a run may renew: revision numbers and modification times.
const BOOKKEEPING: [&str; 3] = ["REVISION", "MODIFIED", "ACCESSED"];

fn pg() -> Option<Postgres> {
    if !postgres::schemas_available() {
        return None;
    }
    Postgres::start()
}

fn store_config(dsn: &str) -> StoreConfig {
    StoreConfig {
        kind: StoreKind::CalendarserverPg,
        dsn: Some(dsn.to_string()),
        ..Default::default()
    }
}

/// A migration world on PostgreSQL: a generated store imported into a database of one schema
/// version, whose people all got new GUIDs; the new directory as LDIF, the old as dsexport.
struct PgWorld {
    dir: tempfile::TempDir,
    db: String,
    store: GeneratedStore,
    config: PathBuf,
    new_guid: BTreeMap<String, String>,
    imported: postgres::Imported,
}

impl PgWorld {
    fn new(pg: &Postgres, version: u32, homes: usize, resources: usize, seed: u64) -> PgWorld {
        Self::with_tag(pg, version, homes, resources, seed, "w")
    }

    fn with_tag(
        pg: &Postgres,
        version: u32,
        homes: usize,
        resources: usize,
        seed: u64,
        tag: &str,
    ) -> PgWorld {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreBuilder::new(dir.path().join("generated"))
            .homes(homes)
            .resources(resources)
            .seed(seed)
            .without_xattrs()
            .build()
            .unwrap();
        let new_guid: BTreeMap<String, String> = store
            .people
            .iter()
            .map(|p| (p.guid.clone(), world::renewed(&p.guid)))
            .collect();
        let db = format!("cs{version}_{seed}_{tag}");
        let mut c = pg.create_store(&db, version);
        let imported = postgres::import(&mut c, version, &store);
        std::fs::write(
            dir.path().join("new.ldif"),
            world::ldif(&store.people, &new_guid),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("old-users.txt"),
            world::dsexport(&store.people),
        )
        .unwrap();
        let data = dir.path().join("Data");
        std::fs::create_dir_all(&data).unwrap();
        let form = if version >= 66 {
            "urn:x-uid"
        } else {
            "urn:uuid"
        };
        let config = dir.path().join("principal-reconciler.toml");
        std::fs::write(
            &config,
            format!(
                "[directory]\nldif = \"new.ldif\"\n\n[old_directory]\nfiles = [\"old-users.txt\"]\n\n\
                 [store]\nkind = \"calendarserver-pg\"\ndsn = \"{}\"\ndata_root = \"Data\"\n\n\
                 [rewrite]\naddress_form = \"{form}\"\ninternal_domains = [\"example.com\"]\n\n\
                 [state]\npath = \"state\"\n\n[report]\ndir = \"reports\"\n",
                pg.socket_dsn(&db)
            ),
        )
        .unwrap();
        PgWorld {
            dir,
            db,
            store,
            config,
            new_guid,
            imported,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn cmd(&self) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::cargo_bin("principal-reconciler").unwrap();
        c.arg("--config").arg(&self.config).arg("--no-progress");
        c
    }
}

/// The DSN is the database backend's to check: the configuration reads without it, the command
/// refuses a DSN holding a password (exit 2, naming the file) before anything is connected.
#[test]
fn a_password_in_the_dsn_is_refused_by_the_command_before_anything_connects() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("new.ldif"), "").unwrap();
    let config = dir.path().join("pg.toml");
    for (dsn, says) in [
        (
            "postgresql://caldav:secret@localhost/caldav",
            "dsn must not hold the password",
        ),
        (
            "postgresql://h:notaport/db",
            "is not a libpq connection string",
        ),
    ] {
        std::fs::write(
            &config,
            format!(
                "[directory]\nldif = \"new.ldif\"\n\n[store]\nkind = \"calendarserver-pg\"\ndsn = \"{dsn}\"\n\n[state]\npath = \"state\"\n"
            ),
        )
        .unwrap();
        let cfg = principal_reconciler::config::Config::load(&config).unwrap();
        let err = principal_reconciler::store::pg::connect::check_dsn(
            &cfg.store,
            &config.display().to_string(),
        )
        .unwrap_err();
        assert!(err.message.contains(says), "{}", err.message);
        let out = assert_cmd::Command::cargo_bin("principal-reconciler")
            .unwrap()
            .arg("--config")
            .arg(&config)
            .arg("--no-progress")
            .arg("plan")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
        assert!(stderr.contains(&config.display().to_string()), "{stderr}");
        assert!(!dir.path().join("state").exists(), "nothing was made");
    }
}

#[test]
fn each_real_schema_loads_and_its_version_is_recognised_and_others_refused() {
    let Some(pg) = pg() else { return };
    for v in VERSIONS {
        let db = format!("ver{v}");
        pg.create_store(&db, v);
        let dbh = Db::open_target(Target::from_config(&store_config(&pg.socket_dsn(&db))).unwrap())
            .unwrap_or_else(|e| panic!("v{v}: {}", e.message));
        assert_eq!(dbh.schema.version, v);
    }
    // Real schemas of versions this build does not support: refused, naming the version.
    for v in [3, 12] {
        let db = format!("ver{v}");
        pg.create_store(&db, v);
        let err = Db::open_target(Target::from_config(&store_config(&pg.socket_dsn(&db))).unwrap())
            .err()
            .unwrap();
        assert!(
            err.message
                .contains(&format!("schema version {v} is not supported")),
            "{}",
            err.message
        );
        assert_eq!(
            err.exit_status(),
            principal_reconciler::error::ExitStatus::Usage
        );
    }
    // A database that is no CalendarServer store at all.
    let err =
        Db::open_target(Target::from_config(&store_config(&pg.socket_dsn("postgres"))).unwrap())
            .err()
            .unwrap();
    assert!(
        err.message.contains("no CALENDARSERVER table"),
        "{}",
        err.message
    );
}

#[test]
fn password_from_a_file_or_the_environment_and_tls_when_the_server_offers_it() {
    if !postgres::schemas_available() {
        return;
    }
    let Some(pg) = Postgres::builder().tls().start() else {
        return;
    };
    pg.create_store("tlsdb", 66);
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, format!("{}\n", postgres::PASSWORD)).unwrap();
    let mut cfg = store_config(&pg.tcp_dsn("tlsdb"));
    cfg.tls_ca_file = pg.ca_file.clone();
    // No password: the server's refusal, with where to put one.
    let err = Db::open_target(Target::from_config(&cfg).unwrap())
        .err()
        .unwrap();
    assert!(err.message.contains("password"), "{}", err.message);
    assert_eq!(
        err.exit_status(),
        principal_reconciler::error::ExitStatus::Runtime
    );
    cfg.password_file = Some(pw.clone());
    let mut dbh = Db::open_target(Target::from_config(&cfg).unwrap()).unwrap();
    let ssl: bool = dbh
        .client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(ssl, "the server offers TLS: the connection must use it");
    // A certificate nobody vouches for is refused, with a hint.
    cfg.tls_ca_file = None;
    let err = Db::open_target(Target::from_config(&cfg).unwrap())
        .err()
        .unwrap();
    assert!(err.message.contains("tls_ca_file"), "{}", err.message);
}

fn plan_json(w: &PgWorld) -> serde_json::Value {
    let out = w.cmd().args(["--json", "plan"]).output().unwrap();
    assert!(
        out.status.code() == Some(0),
        "plan failed ({:?}): {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn client(pg: &Postgres, w: &PgWorld) -> ::postgres::Client {
    pg.client(&w.db)
}

/// ICALENDAR_TEXT, MD5, ORGANIZER, MODIFIED and revision of every calendar object, by RESOURCE_ID.
fn objects(c: &mut ::postgres::Client) -> BTreeMap<i64, (String, String, String, i64)> {
    c.query(
        "SELECT o.RESOURCE_ID::bigint, o.ICALENDAR_TEXT, o.MD5, COALESCE(o.ORGANIZER, ''), COALESCE(r.REVISION, -1)::bigint
         FROM CALENDAR_OBJECT o LEFT JOIN CALENDAR_OBJECT_REVISIONS r ON r.CALENDAR_RESOURCE_ID = o.CALENDAR_RESOURCE_ID AND r.RESOURCE_NAME = o.RESOURCE_NAME",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4))))
    .collect()
}

/// A dump of the world's database over a connection closed right after (apply refuses to run
/// while other sessions are connected).
fn dump(pg: &Postgres, w: &PgWorld, skip: &[&str]) -> BTreeMap<String, Vec<String>> {
    postgres::dump(&mut client(pg, w), skip)
}

#[test]
fn plan_changes_nothing_apply_rewrites_in_place_second_apply_is_a_no_op_and_rollback_is_exact() {
    let Some(pg) = pg() else { return };
    for v in VERSIONS {
        let w = PgWorld::new(&pg, v, 4, 40, 30 + v as u64);
        let before_all = dump(&pg, &w, &[]);
        let before_data = dump(&pg, &w, &BOOKKEEPING);
        let doc = plan_json(&w);
        let plan = &doc["plan"];
        assert_eq!(plan["resources_scanned"], 40, "v{v}: {plan}");
        assert!(plan["resources_changed"].as_u64().unwrap() > 0, "v{v}");
        assert_eq!(plan["by_outcome"]["ambiguous"], 0, "v{v}");
        assert_eq!(
            plan["homes"]["moved"], 12,
            "v{v}: 4 people × 3 kinds of home: {plan}"
        );
        postgres::assert_same_db(
            &dump(&pg, &w, &[]),
            &before_all,
            &format!("v{v}: plan must change nothing"),
        );
        let changes = std::fs::read_to_string(w.path("reports/changes.csv")).unwrap();
        assert_eq!(
            changes.lines().count() as u64 - 1,
            plan["properties_changed"].as_u64().unwrap(),
            "v{v}"
        );

        let objs_before = objects(&mut client(&pg, &w));
        let ranges_before = dump(&pg, &w, &[])["time_range"].clone();
        w.cmd().arg("apply").assert().code(0);
        let objs_after = objects(&mut client(&pg, &w));
        // Same RESOURCE_IDs, their time ranges kept.
        assert_eq!(
            objs_before.keys().collect::<Vec<_>>(),
            objs_after.keys().collect::<Vec<_>>(),
            "v{v}"
        );
        assert_eq!(
            dump(&pg, &w, &[])["time_range"],
            ranges_before,
            "v{v}: TIME_RANGE rows kept"
        );
        let max_rev_before = objs_before.values().map(|o| o.3).max().unwrap();
        for (id, (text, md5, org, rev)) in &objs_after {
            let (old_text, _, _, old_rev) = &objs_before[id];
            let tag: Option<String> = client(&pg, &w)
                .query_one(
                    "SELECT SCHEDULE_TAG FROM CALENDAR_OBJECT WHERE RESOURCE_ID = $1::bigint",
                    &[id],
                )
                .unwrap()
                .get(0);
            assert_eq!(
                *md5,
                postgres::etag(v, text, tag.as_deref()),
                "v{v} {id}: MD5 follows the text"
            );
            let info = principal_reconciler::ical::scan(text.as_bytes()).unwrap();
            assert_eq!(
                *org,
                info.organizer.unwrap_or_default(),
                "v{v} {id}: ORGANIZER column follows the text"
            );
            if text == old_text {
                assert_eq!(
                    rev, old_rev,
                    "v{v} {id}: an unchanged object keeps its revision"
                );
            } else {
                assert!(
                    *rev > max_rev_before,
                    "v{v} {id}: a changed object gets a new revision"
                );
                for old in w.new_guid.keys() {
                    assert!(
                        !text.contains(old.as_str()),
                        "v{v} {id}: old GUID {old} left in\n{text}"
                    );
                }
            }
        }
        // Homes under the new GUIDs, properties re-keyed with them.
        for (old, new) in &w.new_guid {
            let n: i64 = client(&pg, &w)
                .query_one(
                    "SELECT COUNT(*) FROM CALENDAR_HOME WHERE OWNER_UID = $1",
                    &[new],
                )
                .unwrap()
                .get(0);
            assert_eq!(n, 1, "v{v}: home of {old} renamed to {new}");
            let props: i64 = client(&pg, &w)
                .query_one(
                    "SELECT COUNT(*) FROM RESOURCE_PROPERTY WHERE VIEWER_UID = $1",
                    &[old],
                )
                .unwrap()
                .get(0);
            assert_eq!(props, 0, "v{v}: properties of {old} re-keyed");
            let hrefs: i64 = client(&pg, &w)
                .query_one(
                    "SELECT COUNT(*) FROM RESOURCE_PROPERTY WHERE strpos(VALUE, $1) > 0",
                    &[old],
                )
                .unwrap()
                .get(0);
            assert_eq!(hrefs, 0, "v{v}: hrefs into the home of {old} follow it");
            let keys: Vec<String> = client(&pg, &w)
                .query(
                    "SELECT RESOURCE_KEY FROM APN_SUBSCRIPTIONS WHERE SUBSCRIBER_GUID = $1",
                    &[new],
                )
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            if w.imported.home_ids.contains_key(old) {
                assert_eq!(
                    keys,
                    vec![format!("/CalDAV/cal.example.com/{new}/")],
                    "v{v}: the push key follows the home of {old}"
                );
            }
        }
        let cards: Vec<String> = client(&pg, &w)
            .query("SELECT VCARD_TEXT FROM ADDRESSBOOK_OBJECT WHERE VCARD_TEXT LIKE '%X-ADDRESSBOOKSERVER-KIND:group%'", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        for card in &cards {
            assert!(
                card.contains("urn:uuid:local-card-"),
                "v{v}: local members stay"
            );
            for old in w.new_guid.keys() {
                assert!(
                    !card.contains(old.as_str()),
                    "v{v}: group member {old} left in {card}"
                );
            }
        }
        // A second apply, and a fresh plan, change nothing.
        let after_apply = dump(&pg, &w, &[]);
        w.cmd()
            .arg("apply")
            .assert()
            .code(0)
            .stdout(predicates::str::contains("Nothing is left to apply"));
        let again = plan_json(&w);
        assert_eq!(
            again["plan"]["resources_changed"], 0,
            "v{v}: a fresh plan after apply must be empty"
        );
        w.cmd().arg("apply").assert().code(0);
        postgres::assert_same_db(
            &dump(&pg, &w, &[]),
            &after_apply,
            &format!("v{v}: second apply"),
        );
        // Rollback restores every row; only bookkeeping is newer.
        w.cmd().args(["rollback", "--run", "1"]).assert().code(0);
        postgres::assert_same_db(
            &dump(&pg, &w, &BOOKKEEPING),
            &before_data,
            &format!("v{v}: rollback"),
        );
    }
}

#[test]
fn an_object_changed_between_plan_and_apply_is_skipped_and_reported_never_overwritten() {
    let Some(pg) = pg() else { return };
    let w = PgWorld::new(&pg, 28, 3, 20, 41);
    w.cmd().arg("plan").assert().code(0);
    let state = rusqlite::Connection::open(w.path("state/state.sqlite")).unwrap();
    let (id, label): (i64, String) = state
        .query_row(
            "SELECT resource_id, label FROM pg_plan_objects WHERE kind = 'calendar' ORDER BY resource_id LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    drop(state);
    // The server writes the object meanwhile: new text, new ETag.
    let mut c = client(&pg, &w);
    c.execute(
        "UPDATE CALENDAR_OBJECT SET ICALENDAR_TEXT = ICALENDAR_TEXT || E'\\r\\n', MD5 = md5(ICALENDAR_TEXT || E'\\r\\n' || COALESCE(SCHEDULE_TAG, '')) WHERE RESOURCE_ID = $1::bigint",
        &[&id],
    )
    .unwrap();
    let edited: String = c
        .query_one(
            "SELECT ICALENDAR_TEXT FROM CALENDAR_OBJECT WHERE RESOURCE_ID = $1::bigint",
            &[&id],
        )
        .unwrap()
        .get(0);
    drop(c);
    w.cmd()
        .arg("apply")
        .assert()
        .code(1)
        .stdout(predicates::str::contains(format!(
            "skipped {label}: changed since plan"
        )))
        .stdout(predicates::str::contains("plan` again"));
    let now: String = client(&pg, &w)
        .query_one(
            "SELECT ICALENDAR_TEXT FROM CALENDAR_OBJECT WHERE RESOURCE_ID = $1::bigint",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(now, edited, "a concurrent change must never be overwritten");
    // A new plan picks it up.
    let doc = plan_json(&w);
    assert!(doc["plan"]["resources_changed"].as_u64().unwrap() >= 1);
    w.cmd().arg("apply").assert().code(0);
}

#[test]
fn apply_refuses_while_calendarserver_is_connected_unless_forced() {
    let Some(pg) = pg() else { return };
    let w = PgWorld::new(&pg, 66, 2, 6, 42);
    w.cmd().arg("plan").assert().code(0);
    let server = client(&pg, &w); // stands for CalendarServer's connection pool
    w.cmd()
        .arg("apply")
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "calendar server seems to be running",
        ));
    w.cmd().args(["apply", "--force"]).assert().code(0);
    drop(server);
}

/// Kill `apply` with SIGKILL at random instants, apply again, and compare with an uninterrupted
/// run: every row the same but the bookkeeping (revision numbers, times).
#[test]
fn apply_killed_at_random_points_resumes_to_the_same_database() {
    let Some(pg) = pg() else { return };
    let kills: usize = std::env::var("PR_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    const SKIP: [&str; 4] = ["REVISION", "MODIFIED", "CREATED", "ACCESSED"];
    let mut expected = BTreeMap::new();
    let mut full = BTreeMap::new();
    for v in VERSIONS {
        let r = PgWorld::with_tag(&pg, v, 6, 800, 50, "ref");
        r.cmd().arg("plan").assert().code(0);
        let t = std::time::Instant::now();
        r.cmd().arg("apply").assert().code(0);
        full.insert(v, t.elapsed().as_micros().max(1000) as u64);
        expected.insert(v, dump(&pg, &r, &SKIP));
    }
    let mut seed = 0x5eed_u64;
    let (mut interrupted, mut attempts) = (0, 0);
    while interrupted < kills {
        attempts += 1;
        assert!(
            attempts <= 4 * kills,
            "only {interrupted} of {attempts} kills hit a running apply"
        );
        let v = VERSIONS[attempts % VERSIONS.len()];
        let w = PgWorld::with_tag(&pg, v, 6, 800, 50, &format!("k{attempts}"));
        w.cmd().arg("plan").assert().code(0);
        let original = objects(&mut client(&pg, &w));
        let max_rev = original.values().map(|o| o.3).max().unwrap();
        let delay = std::time::Duration::from_micros(xorshift(&mut seed) % full[&v]);
        if !kill_after(&w.config, "apply", delay) {
            continue; // it finished before the kill
        }
        interrupted += 1;
        // The killed client's session may linger a moment on the server.
        let mut tries = 0;
        loop {
            let out = w.cmd().arg("apply").output().unwrap();
            if out.status.code() == Some(0) {
                break;
            }
            tries += 1;
            assert!(
                tries < 50 && String::from_utf8_lossy(&out.stderr).contains("seems to be running"),
                "apply after kill {interrupted} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        postgres::assert_same_db(
            &dump(&pg, &w, &SKIP),
            &expected[&v],
            &format!("v{v} kill {interrupted}"),
        );
        // Every changed object got a new revision (newer than any before the run), every other
        // kept its own.
        let after = objects(&mut client(&pg, &w));
        for (id, (text, _, _, rev)) in &after {
            let (old_text, _, _, old_rev) = &original[id];
            if text == old_text {
                assert_eq!(rev, old_rev, "v{v} kill {interrupted}: {id} untouched");
            } else {
                assert!(
                    *rev > max_rev,
                    "v{v} kill {interrupted}: {id} has no new revision"
                );
            }
        }
        pg.client("postgres")
            .batch_execute(&format!("DROP DATABASE {}", w.db))
            .unwrap();
    }
}

#[test]
fn a_home_the_server_made_for_the_new_guid_is_merged_into_and_rollback_separates_them() {
    let Some(pg) = pg() else { return };
    for v in VERSIONS {
        let w = PgWorld::new(&pg, v, 2, 10, 60 + v as u64);
        let old = w.store.people[0].guid.clone();
        let new = w.new_guid[&old].clone();
        // The first user logged in after the rebuild: the server made a home with a calendar and
        // an inbox under the new GUID, and one event in it.
        let mut c = client(&pg, &w);
        let hid: i64 = c
            .query_one(
                "INSERT INTO CALENDAR_HOME (OWNER_UID) VALUES ($1) RETURNING RESOURCE_ID::bigint",
                &[&new],
            )
            .unwrap()
            .get(0);
        c.execute(
            "INSERT INTO CALENDAR_HOME_METADATA (RESOURCE_ID) VALUES ($1::bigint)",
            &[&hid],
        )
        .unwrap();
        for name in ["calendar", "inbox"] {
            let cid: i64 = c
                .query_one(
                    "INSERT INTO CALENDAR DEFAULT VALUES RETURNING RESOURCE_ID::bigint",
                    &[],
                )
                .unwrap()
                .get(0);
            if v >= 28 {
                c.execute(
                    "INSERT INTO CALENDAR_METADATA (RESOURCE_ID) VALUES ($1::bigint)",
                    &[&cid],
                )
                .unwrap();
                c.execute("INSERT INTO CALENDAR_BIND (CALENDAR_HOME_RESOURCE_ID, CALENDAR_RESOURCE_ID, CALENDAR_RESOURCE_NAME, BIND_MODE, BIND_STATUS) VALUES ($1::bigint, $2::bigint, $3, 0, 1)", &[&hid, &cid, &name]).unwrap();
            } else {
                c.execute("INSERT INTO CALENDAR_BIND (CALENDAR_HOME_RESOURCE_ID, CALENDAR_RESOURCE_ID, CALENDAR_RESOURCE_NAME, BIND_MODE, BIND_STATUS, SEEN_BY_OWNER, SEEN_BY_SHAREE) VALUES ($1::bigint, $2::bigint, $3, 0, 1, true, true)", &[&hid, &cid, &name]).unwrap();
            }
            c.execute("INSERT INTO CALENDAR_OBJECT_REVISIONS (CALENDAR_HOME_RESOURCE_ID, CALENDAR_RESOURCE_ID, CALENDAR_NAME, DELETED) VALUES ($1::bigint, $2::bigint, $3, false)", &[&hid, &cid, &name]).unwrap();
            if name == "calendar" {
                let text = format!("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:fresh\r\nDTSTART:20200101T100000Z\r\nORGANIZER:urn:x-uid:{new}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n");
                c.execute("INSERT INTO CALENDAR_OBJECT (CALENDAR_RESOURCE_ID, RESOURCE_NAME, ICALENDAR_TEXT, ICALENDAR_UID, ICALENDAR_TYPE, ORGANIZER, MD5) VALUES ($1::bigint, 'fresh.ics', $2, 'fresh', 'VEVENT', $3, md5($2))", &[&cid, &text, &format!("urn:x-uid:{new}")]).unwrap();
                c.execute("INSERT INTO CALENDAR_OBJECT_REVISIONS (CALENDAR_HOME_RESOURCE_ID, CALENDAR_RESOURCE_ID, RESOURCE_NAME, DELETED) VALUES ($1::bigint, $2::bigint, 'fresh.ics', false)", &[&hid, &cid]).unwrap();
            }
        }
        drop(c);
        let with_fresh = dump(&pg, &w, &BOOKKEEPING);
        let doc = plan_json(&w);
        assert!(doc["plan"]["homes"]["moved"].as_u64().unwrap() >= 3, "v{v}");
        w.cmd()
            .arg("apply")
            .assert()
            .code(0)
            .stdout(predicates::str::contains(
                "as calendar-migrated (name clash)",
            ));
        let mut c = client(&pg, &w);
        let homes: i64 = c
            .query_one(
                "SELECT COUNT(*) FROM CALENDAR_HOME WHERE OWNER_UID = $1 OR OWNER_UID = $2",
                &[&old, &new],
            )
            .unwrap()
            .get(0);
        assert_eq!(homes, 1, "v{v}: the emptied old home is removed");
        let names: Vec<String> = c
            .query("SELECT CALENDAR_RESOURCE_NAME FROM CALENDAR_BIND WHERE CALENDAR_HOME_RESOURCE_ID = $1::bigint ORDER BY 1", &[&hid])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        for n in ["calendar", "calendar-migrated", "inbox", "inbox-migrated"] {
            assert!(names.contains(&n.to_string()), "v{v}: {names:?}");
        }
        let in_new: i64 = c
            .query_one(
                "SELECT COUNT(*) FROM CALENDAR_OBJECT o JOIN CALENDAR_BIND b ON b.CALENDAR_RESOURCE_ID = o.CALENDAR_RESOURCE_ID WHERE b.CALENDAR_HOME_RESOURCE_ID = $1::bigint",
                &[&hid],
            )
            .unwrap()
            .get(0);
        assert!(
            in_new > 1,
            "v{v}: the old events moved in beside the fresh one"
        );
        let revs_old: i64 = c
            .query_one("SELECT COUNT(*) FROM CALENDAR_OBJECT_REVISIONS WHERE CALENDAR_HOME_RESOURCE_ID = $1::bigint", &[&w.imported.home_ids[&old]])
            .unwrap()
            .get(0);
        assert_eq!(revs_old, 0, "v{v}: revisions follow their calendars");
        drop(c);
        w.cmd().arg("verify").assert().code(0);
        w.cmd().arg("rollback").assert().code(0);
        postgres::assert_same_db(
            &dump(&pg, &w, &BOOKKEEPING),
            &with_fresh,
            &format!("v{v}: rollback separates the homes"),
        );
    }
}

#[test]
fn verify_fails_before_and_passes_after_apply_and_doctor_checks_md5_and_organizer_columns() {
    let Some(pg) = pg() else { return };
    let w = PgWorld::new(&pg, 66, 3, 25, 70);
    w.cmd()
        .arg("verify")
        .assert()
        .code(1)
        .stdout(predicates::str::contains("not-canonical"))
        .stdout(predicates::str::contains("orphan-home"));
    w.cmd()
        .arg("doctor")
        .assert()
        .code(0)
        .stdout(predicates::str::contains("no problems"));
    w.cmd().arg("plan").assert().code(0);
    w.cmd().arg("apply").assert().code(0);
    w.cmd()
        .arg("verify")
        .assert()
        .code(0)
        .stdout(predicates::str::contains("no problems"));
    // A stale ETag and an ORGANIZER column that disagrees with the text: doctor names both,
    // changes nothing.
    let mut c = client(&pg, &w);
    c.batch_execute(
        "UPDATE CALENDAR_OBJECT SET MD5 = '00000000000000000000000000000000' WHERE RESOURCE_ID = (SELECT MIN(RESOURCE_ID) FROM CALENDAR_OBJECT);
         UPDATE CALENDAR_OBJECT SET ORGANIZER = 'mailto:nobody@example.com' WHERE RESOURCE_ID = (SELECT MAX(RESOURCE_ID) FROM CALENDAR_OBJECT);",
    )
    .unwrap();
    drop(c);
    let before = dump(&pg, &w, &[]);
    w.cmd()
        .arg("doctor")
        .assert()
        .code(1)
        .stdout(predicates::str::contains("md5-stale"))
        .stdout(predicates::str::contains("organizer-column"));
    w.cmd().args(["doctor", "--fix"]).assert().code(2);
    w.cmd()
        .arg("verify")
        .assert()
        .code(1)
        .stdout(predicates::str::contains("md5-stale"));
    postgres::assert_same_db(
        &dump(&pg, &w, &[]),
        &before,
        "doctor and verify change nothing",
    );
}

#[test]
fn a_rehearsal_works_on_a_copy_and_never_writes_the_real_database() {
    let Some(pg) = pg() else { return };
    let w = PgWorld::new(&pg, 6, 2, 8, 80);
    // 3.3: delegates in proxies.sqlite in the data root.
    let people: Vec<String> = w.store.people.iter().map(|p| p.guid.clone()).collect();
    let proxy = rusqlite::Connection::open(w.path("Data/proxies.sqlite")).unwrap();
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
    let real = dump(&pg, &w, &[]);
    let real_data = dump(&pg, &w, &BOOKKEEPING);
    let real_proxies = std::fs::read(w.path("Data/proxies.sqlite")).unwrap();
    let rehearsal = w.path("rehearsal");
    w.cmd()
        .args(["migrate", "--rehearse"])
        .arg(&rehearsal)
        .assert()
        .code(0);
    postgres::assert_same_db(&dump(&pg, &w, &[]), &real, "the real database");
    assert_eq!(
        std::fs::read(w.path("Data/proxies.sqlite")).unwrap(),
        real_proxies
    );
    let mut copy = pg.client(&format!("{}_rehearsal", w.db));
    let owners: Vec<String> = copy
        .query("SELECT OWNER_UID FROM CALENDAR_HOME ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut want: Vec<String> = people.iter().map(|p| w.new_guid[p].clone()).collect();
    want.sort();
    assert_eq!(owners, want, "the rehearsal's copy is migrated");
    drop(copy);
    let p = rusqlite::Connection::open(rehearsal.join("Data/proxies.sqlite")).unwrap();
    let member: String = p
        .query_row("SELECT MEMBER FROM GROUPS", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        member, w.new_guid[&people[1]],
        "the copy of proxies.sqlite is rewritten"
    );
    drop(p);
    // A second rehearsal replaces the copy.
    w.cmd()
        .args(["migrate", "--rehearse"])
        .arg(&rehearsal)
        .assert()
        .code(0);
    // And the real migration, with its delegates.
    w.cmd().args(["migrate", "--yes"]).assert().code(0);
    let p = rusqlite::Connection::open(w.path("Data/proxies.sqlite")).unwrap();
    let member: String = p
        .query_row("SELECT MEMBER FROM GROUPS", [], |r| r.get(0))
        .unwrap();
    assert_eq!(member, w.new_guid[&people[1]]);
    drop(p);
    w.cmd().arg("rollback").assert().code(0);
    postgres::assert_same_db(
        &dump(&pg, &w, &BOOKKEEPING),
        &real_data,
        "rollback of the real migration",
    );
    assert_eq!(
        std::fs::read(w.path("Data/proxies.sqlite")).unwrap(),
        real_proxies,
        "rollback restores proxies.sqlite"
    );
}

#[test]
fn migrate_runs_end_to_end_on_each_schema_over_tcp_with_the_password_from_the_environment() {
    let Some(pg) = pg() else { return };
    for v in VERSIONS {
        let w = PgWorld::new(&pg, v, 3, 30, 90 + v as u64);
        let text = std::fs::read_to_string(&w.config).unwrap();
        std::fs::write(
            &w.config,
            text.replace(&pg.socket_dsn(&w.db), &pg.tcp_dsn(&w.db)),
        )
        .unwrap();
        w.cmd()
            .args(["migrate", "--yes"])
            .assert()
            .code(3)
            .stderr(predicates::str::contains("password"));
        w.cmd()
            .env("PRINCIPAL_RECONCILER_STORE_PASSWORD", postgres::PASSWORD)
            .args(["migrate", "--yes"])
            .assert()
            .code(0)
            .stdout(predicates::str::contains("verify: 0 problems"));
    }
}

#[test]
fn rollback_after_a_killed_apply_restores_the_original_database() {
    let Some(pg) = pg() else { return };
    let w = PgWorld::new(&pg, 28, 6, 1200, 95);
    let before = dump(&pg, &w, &BOOKKEEPING);
    w.cmd().arg("plan").assert().code(0);
    crate::support::child::kill_apply_after_first_step(
        &w.config,
        &w.path("state/state.sqlite"),
        "pg_journal",
        5000,
    );
    let mut tries = 0;
    loop {
        let out = w.cmd().arg("rollback").output().unwrap();
        if out.status.code() == Some(0) {
            break;
        }
        tries += 1;
        assert!(
            tries < 50 && String::from_utf8_lossy(&out.stderr).contains("seems to be running"),
            "rollback failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    postgres::assert_same_db(
        &dump(&pg, &w, &BOOKKEEPING),
        &before,
        "database after rollback of a killed apply",
    );
}

#[test]
fn state_prune_drops_the_database_stores_plan_tables_and_journal_of_pruned_plans_and_runs() {
    let Some(pg) = pg() else { return };
    let w = PgWorld::new(&pg, 66, 2, 12, 97);
    w.cmd().arg("plan").assert().code(0);
    w.cmd().arg("plan").assert().code(0);
    w.cmd().arg("apply").assert().code(0);
    let state = w.path("state/state.sqlite");
    let count = |sql: &str| -> i64 {
        rusqlite::Connection::open(&state)
            .unwrap()
            .query_row(sql, [], |r| r.get(0))
            .unwrap()
    };
    // `runs` counts the steps of a database run (they live in pg_journal).
    let runs = |w: &PgWorld| -> serde_json::Value {
        let out = w.cmd().args(["--json", "runs"]).output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let done = count("SELECT COUNT(*) FROM pg_journal WHERE run_id = 1 AND state = 'done'");
    assert!(done > 0);
    assert_eq!(runs(&w)["history"]["runs"][0]["steps_done"], done);
    w.cmd().arg("rollback").assert().code(0);
    assert_eq!(
        runs(&w)["history"]["runs"][1]["steps_done"],
        count("SELECT COUNT(*) FROM pg_journal WHERE run_id = 2 AND state = 'done'")
    );
    // A finished rollback asked again reports what it restored, checked against the database.
    let restored = count(
        "SELECT COUNT(*) FROM pg_journal WHERE run_id = 2 AND kind = 'undo' AND table_name IN ('calendar', 'vcard') AND state = 'done' AND detail = ''",
    );
    assert!(restored > 0);
    let out = w.cmd().args(["rollback", "--run", "1"]).output().unwrap();
    let again = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{again}");
    assert!(again.contains("already rolled back"), "{again}");
    assert!(again.contains(&format!("all {restored} ")), "{again}");
    let tables = [
        "pg_plan_objects",
        "pg_plan_principals",
        "pg_plan_homes",
        "pg_plan_values",
    ];
    for t in tables {
        assert!(
            count(&format!("SELECT COUNT(*) FROM {t} WHERE plan_id = 1")) > 0,
            "{t} of plan 1 before pruning"
        );
    }
    let journal = count("SELECT COUNT(*) FROM pg_journal");
    assert!(journal > 0);
    let out = w
        .cmd()
        .args(["state", "prune", "--keep-plans", "1", "--all-backups"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for t in tables {
        assert_eq!(
            count(&format!("SELECT COUNT(*) FROM {t} WHERE plan_id = 1")),
            0,
            "{t} of the pruned plan 1"
        );
    }
    // The latest plan stays whole (it can be applied again); the dropped runs' steps are gone.
    assert!(count("SELECT COUNT(*) FROM pg_plan_objects WHERE plan_id = 2") > 0);
    assert_eq!(count("SELECT COUNT(*) FROM pg_journal"), 0, "{text}");
    assert!(
        text.contains(&format!("{journal} steps")) || text.contains("steps"),
        "{text}"
    );
}

#[test]
fn scan_on_the_database_counts_addresses_by_form_as_the_file_store_scan_of_the_same_texts() {
    let Some(pg) = pg() else { return };
    let w = PgWorld::new(&pg, 66, 3, 30, 98);
    let before = dump(&pg, &w, &[]);
    let out = w.cmd().args(["--json", "scan"]).output().unwrap();
    assert!(
        out.status.code() == Some(0) || out.status.code() == Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(db["resources"], w.imported.objects as u64, "{db}");
    assert_eq!(db["homes"]["calendar_home"], 3, "{db}");
    assert!(db["distinct_addresses"].as_u64().unwrap() > 0);
    // The same texts as files: the file store's scan finds the same addresses.
    let fs_config = w.path("fs.toml");
    std::fs::write(
        &fs_config,
        format!(
            "[directory]\nldif = \"new.ldif\"\n[store]\nkind = \"calendarserver-fs\"\npath = \"{}\"\n[state]\npath = \"state-fs\"\n",
            w.store.root.display()
        ),
    )
    .unwrap();
    let out = assert_cmd::Command::cargo_bin("principal-reconciler")
        .unwrap()
        .arg("--config")
        .arg(&fs_config)
        .args(["--no-progress", "--json", "scan"])
        .output()
        .unwrap();
    let fs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(db["resources"], fs["resources"], "{fs}");
    assert_eq!(db["by_kind"], fs["by_kind"]);
    assert_eq!(db["address_occurrences"], fs["address_occurrences"]);
    assert_eq!(db["top_addresses"], fs["top_addresses"]);
    postgres::assert_same_db(&dump(&pg, &w, &[]), &before, "scan changes nothing");
}

#[test]
fn sigterm_during_a_database_apply_finishes_the_batch_records_the_run_interrupted_and_it_resumes() {
    use std::io::BufRead;
    let Some(pg) = pg() else { return };
    let w = PgWorld::new(&pg, 66, 3, 40, 99);
    let doc = plan_json(&w);
    let changed = doc["plan"]["resources_changed"].as_u64().unwrap();
    let mut child =
        std::process::Command::new(assert_cmd::cargo::cargo_bin("principal-reconciler"))
            .arg("--config")
            .arg(&w.config)
            .args(["--no-progress", "apply"])
            .env("PRINCIPAL_RECONCILER_TEST_PAUSE", "pg-apply-batch")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("paused at pg-apply-batch") {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "apply ended before its first batch"
        );
    }
    // A real signal, while the run is between two batches.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{stdout}");
    assert!(stdout.contains("stopped by SIGTERM"), "{stdout}");
    let state = rusqlite::Connection::open(w.path("state/state.sqlite")).unwrap();
    let (status, by): (String, String) = state
        .query_row(
            "SELECT status, stopped_by FROM runs WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((status.as_str(), by.as_str()), ("interrupted", "SIGTERM"));
    // The batch in hand was finished: its objects are written and journaled done, none pending.
    let (done, pending): (i64, i64) = state
        .query_row(
            "SELECT SUM(state = 'done'), SUM(state = 'pending') FROM pg_journal WHERE run_id = 1 AND kind = 'object'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let calendar: i64 = state
        .query_row(
            "SELECT COUNT(*) FROM pg_plan_objects WHERE plan_id = 1 AND kind = 'calendar'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(calendar > 0 && (calendar as u64) < changed);
    assert_eq!(
        (done, pending),
        (calendar, 0),
        "the first batch (calendar objects), whole"
    );
    // Homes were not reached; apply again resumes the same run and finishes it.
    let n: i64 = client(&pg, &w)
        .query_one(
            "SELECT COUNT(*) FROM CALENDAR_HOME WHERE OWNER_UID = ANY($1)",
            &[&w.new_guid.values().cloned().collect::<Vec<_>>()],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    let out = w.cmd().arg("apply").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("run 1 was stopped by SIGTERM; resuming it"),
        "{stdout}"
    );
    let runs: i64 = state
        .query_row("SELECT COUNT(*) FROM runs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(runs, 1);
    let again = plan_json(&w);
    assert_eq!(again["plan"]["resources_changed"], 0);
    assert_eq!(
        again["plan"]["homes"]["moved"].as_u64().unwrap_or(0),
        0,
        "{again}"
    );
}

#[test]
fn sharing_notifications_name_the_adopted_principals_and_rollback_restores_them() {
    let Some(pg) = pg() else { return };
    for v in VERSIONS {
        let w = PgWorld::with_tag(&pg, v, 2, 10, 60 + v as u64, "note");
        let uids: Vec<&String> = w.imported.home_ids.keys().collect();
        let (owner, sharee) = (uids[0].clone(), uids[1].clone());
        let (type_col, data_col) = if v >= 66 {
            ("NOTIFICATION_TYPE", "NOTIFICATION_DATA")
        } else {
            ("XML_TYPE", "XML_DATA")
        };
        let (kind, data) = if v >= 66 {
            (
                r#"{"notification-type": "invite-notification", "shared-type": "calendar"}"#
                    .to_string(),
                format!(
                    r#"{{"notification-type": "invite-notification", "shared-type": "calendar", "dtstamp": "20131113T153109Z", "owner": "{owner}", "sharee": "{sharee}", "uid": "invite-1", "status": 0, "access": 2, "name": "calendar", "summary": "Shared"}}"#
                ),
            )
        } else {
            (
                "<?xml version='1.0' encoding='UTF-8'?>\n<CS:notification xmlns:CS='http://calendarserver.org/ns/'>\n    <CS:invite-notification shared-type='calendar'/>\n</CS:notification>\n".to_string(),
                format!("<?xml version='1.0' encoding='UTF-8'?>\n<notification xmlns='http://calendarserver.org/ns/'>\n  <dtstamp>20131113T153109Z</dtstamp>\n  <invite-notification shared-type='calendar'>\n    <uid>invite-1</uid>\n    <href xmlns='DAV:'>urn:uuid:{sharee}</href>\n    <invite-noresponse/>\n    <access>\n      <read-write/>\n    </access>\n    <hosturl>\n      <href xmlns='DAV:'>/calendars/__uids__/{owner}/calendar</href>\n    </hosturl>\n    <organizer>\n      <href xmlns='DAV:'>urn:uuid:{owner}</href>\n      <common-name>User 01</common-name>\n    </organizer>\n    <summary>Shared</summary>\n  </invite-notification>\n</notification>\n"),
            )
        };
        {
            let mut c = client(&pg, &w);
            let home: i64 = c
                .query_one(
                    "SELECT RESOURCE_ID::bigint FROM NOTIFICATION_HOME WHERE OWNER_UID = $1",
                    &[&sharee],
                )
                .unwrap()
                .get(0);
            c.execute(
                &format!("INSERT INTO NOTIFICATION (NOTIFICATION_HOME_RESOURCE_ID, NOTIFICATION_UID, {type_col}, {data_col}, MD5) VALUES ($1::bigint, 'invite-1', $2, $3, md5($3))"),
                &[&home, &kind, &data],
            )
            .unwrap();
        }
        let before = dump(&pg, &w, &BOOKKEEPING);
        plan_json(&w);
        w.cmd().arg("apply").assert().code(0);
        let (now, md5): (String, String) = {
            let r = client(&pg, &w)
                .query_one(
                    &format!("SELECT {data_col}, MD5 FROM NOTIFICATION WHERE NOTIFICATION_UID = 'invite-1'"),
                    &[],
                )
                .unwrap();
            (r.get(0), r.get(1))
        };
        for old in [&owner, &sharee] {
            assert!(!now.contains(old.as_str()), "v{v}: {old} left in\n{now}");
            assert!(
                now.contains(&w.new_guid[old]),
                "v{v}: {} missing in\n{now}",
                w.new_guid[old]
            );
        }
        assert_eq!(
            md5.trim(),
            postgres::etag(6, &now, None),
            "v{v}: MD5 follows the data"
        );
        // Only the principal references changed: the rest of the text is as it was.
        assert_eq!(
            now.replace(&w.new_guid[&owner], &owner)
                .replace(&w.new_guid[&sharee], &sharee),
            data,
            "v{v}"
        );
        w.cmd().arg("rollback").assert().code(0);
        postgres::assert_same_db(
            &dump(&pg, &w, &BOOKKEEPING),
            &before,
            &format!("v{v}: rollback restores the notification"),
        );
    }
}
