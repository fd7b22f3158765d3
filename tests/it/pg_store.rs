//! The CalendarServer 3–9 PostgreSQL store, against a real PostgreSQL the tests start, loaded with
//! the real schemas of ../shared/corpus/cs-pg-schema (v6 = 3.3, v28 = 5.2, v66 = 9.x) and a
//! generated store imported into them: the same scenarios as the file store (tests/it/migrate.rs).

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
    version: u32,
    store: GeneratedStore,
    config: PathBuf,
    new_guid: BTreeMap<String, String>,
    imported: postgres::Imported,
}

impl PgWorld {
    fn new(pg: &Postgres, version: u32, homes: usize, resources: usize, seed: u64) -> PgWorld {
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
        let db = format!("cs{version}_{seed}_{}", std::process::id());
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
            version,
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
            .stdout(predicates::str::contains("nothing to do"));
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
