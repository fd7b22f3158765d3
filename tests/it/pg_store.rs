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
