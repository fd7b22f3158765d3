//! A throwaway PostgreSQL server for tests (Debian's `postgresql`, e.g. 15): `initdb` into a
//! temporary folder, `postgres` listening on a free loopback port and a Unix-socket folder, stopped
//! by its pid on Drop. initdb refuses to run as root, so as root (CI) the server runs as the
//! `postgres` system user, its folder owned by it. Password authentication (scram) on TCP, trust
//! on the socket; `.tls()` adds a test CA and server certificate (`ssl = on`).
//!
//! Also: loading the real CalendarServer schemas from `../shared/corpus/cs-pg-schema/`, and
//! importing a generated store (`principal_reconciler::store::generate`) into them as
//! CalendarServer would hold it.
//!
//! When PostgreSQL is missing the helper prints a loud SKIPPED line and returns `None`, except with
//! `CI=true`, where it panics.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SUPERUSER: &str = "postgres";
pub const PASSWORD: &str = "pg test secret";

/// A running PostgreSQL; stopped (by its pid) when dropped.
pub struct Postgres {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// Folder holding the Unix socket (`.s.PGSQL.<port>`).
    pub socket_dir: PathBuf,
    /// The test CA's PEM (with `.tls()`).
    pub ca_file: Option<PathBuf>,
    pub bin: PathBuf,
    child: Option<Child>,
    run_as: Option<(u32, u32)>,
    /// Schema versions whose template database exists.
    templates: std::sync::Mutex<Vec<u32>>,
}

/// The newest `/usr/lib/postgresql/*/bin` with an initdb.
pub fn bin_dir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

fn skip_or_fail(why: &str) -> Option<Postgres> {
    if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
        panic!("CI=true and the test PostgreSQL cannot run: {why}");
    }
    eprintln!("\n!!!!!!!!!! SKIPPED: {why} (install Debian's postgresql to run the PostgreSQL store tests) !!!!!!!!!!\n");
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// uid and gid of the `postgres` system user.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&"postgres") && f.len() > 3)
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
            .flatten()
    })
}

#[derive(Default)]
pub struct Builder {
    tls: bool,
}

impl Builder {
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    pub fn start(self) -> Option<Postgres> {
        let Some(bin) = bin_dir() else {
            return skip_or_fail("no /usr/lib/postgresql/*/bin/initdb");
        };
        // SAFETY: getuid has no preconditions.
        let root = unsafe { libc::getuid() } == 0;
        let run_as = if root {
            match postgres_user() {
                Some(u) => Some(u),
                None => return skip_or_fail("running as root and there is no `postgres` user"),
            }
        } else {
            None
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let data = d.join("data");
        let socket_dir = d.join("sock");
        std::fs::create_dir(&socket_dir).unwrap();
        std::fs::write(d.join("pwfile"), format!("{PASSWORD}\n")).unwrap();
        let mut ca_file = None;
        if self.tls {
            let certs = d.join("certs");
            std::fs::create_dir(&certs).unwrap();
            ca_file = Some(super::slapd::make_certs(&certs, false));
        }
        if let Some((uid, gid)) = run_as {
            for e in walk(d) {
                std::os::unix::fs::chown(&e, Some(uid), Some(gid)).unwrap();
            }
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", SUPERUSER, "-E", "UTF8", "--locale=C", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", d.join("pwfile").display()));
        let out = as_user(&mut initdb, run_as).output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let mut conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 40\n\
             shared_buffers = 64MB\nlog_min_messages = warning\n",
            socket_dir.display()
        );
        if self.tls {
            let c = d.join("certs");
            conf.push_str(&format!(
                "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
                c.join("server.pem").display(),
                c.join("server.key").display()
            ));
            if let Some((uid, gid)) = run_as {
                for f in ["server.pem", "server.key"] {
                    std::os::unix::fs::chown(c.join(f), Some(uid), Some(gid)).unwrap();
                }
            }
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(c.join("server.key"), std::fs::Permissions::from_mode(0o600))
                .unwrap();
        }
        let auto = data.join("postgresql.auto.conf");
        std::fs::write(&auto, conf).unwrap();
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&auto, Some(uid), Some(gid)).unwrap();
        }
        let log = std::fs::File::create(d.join("postgres.log")).unwrap();
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(d.join("postgres.log"), Some(uid), Some(gid)).unwrap();
        }
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = as_user(&mut cmd, run_as).spawn().expect("start postgres");
        let pg = Postgres {
            dir,
            port,
            socket_dir,
            ca_file,
            bin,
            child: Some(child),
            run_as,
            templates: Default::default(),
        };
        pg.wait_ready();
        Some(pg)
    }
}

fn as_user(cmd: &mut Command, run_as: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid);
        cmd.env("HOME", "/tmp");
    }
    cmd
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if out[i].is_dir() {
            for e in std::fs::read_dir(&out[i]).unwrap().flatten() {
                out.push(e.path());
            }
        }
        i += 1;
    }
    out
}

impl Postgres {
    pub fn builder() -> Builder {
        Builder::default()
    }

    pub fn start() -> Option<Postgres> {
        Builder::default().start()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.try_client("postgres").is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!("PostgreSQL did not start; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// `host=<socket dir> port=<port> user=postgres dbname=<db>` (trust: no password).
    pub fn socket_dsn(&self, db: &str) -> String {
        format!(
            "host={} port={} user={SUPERUSER} dbname={db}",
            self.socket_dir.display(),
            self.port
        )
    }

    /// `postgresql://postgres@127.0.0.1:<port>/<db>` (needs the password).
    pub fn tcp_dsn(&self, db: &str) -> String {
        format!("postgresql://{SUPERUSER}@127.0.0.1:{}/{db}", self.port)
    }

    fn try_client(&self, db: &str) -> Result<postgres::Client, postgres::Error> {
        postgres::Client::connect(&self.socket_dsn(db), postgres::NoTls)
    }

    /// A superuser connection over the socket.
    pub fn client(&self, db: &str) -> postgres::Client {
        self.try_client(db)
            .unwrap_or_else(|e| panic!("connect to {db}: {e}\n{}", self.log()))
    }

    /// A fresh database holding one of the real CalendarServer schemas (`vNN_...sql` by version),
    /// copied from a template database loaded once per server and version.
    pub fn create_store(&self, db: &str, version: u32) -> postgres::Client {
        let template = format!("tmpl_v{version}");
        {
            let mut made = self.templates.lock().unwrap();
            if !made.contains(&version) {
                let mut admin = self.client("postgres");
                admin
                    .batch_execute(&format!(
                        "CREATE DATABASE {template} TEMPLATE template0 ENCODING 'UTF8'"
                    ))
                    .unwrap();
                let mut c = self.client(&template);
                c.batch_execute(&schema_sql(version))
                    .unwrap_or_else(|e| panic!("schema v{version}: {e}"));
                made.push(version);
            }
        }
        let mut admin = self.client("postgres");
        // One copy at a time: a template must have no other session while it is copied.
        let _one = self.templates.lock().unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {db} TEMPLATE {template}"))
            .unwrap();
        drop(_one);
        self.client(db)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGQUIT: immediate shutdown of this server only (by its pid).
            // SAFETY: kill on the pid of the child we started.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGQUIT);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `../shared/corpus/cs-pg-schema` (CI layout) or `../../shared/...` (worktree layout).
pub fn schema_dir() -> Option<PathBuf> {
    [
        concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus/cs-pg-schema"),
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/corpus/cs-pg-schema"
        ),
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_dir())
}

/// The real schema file of a version (`v06_…`, `v28_…`, `v66_…`).
pub fn schema_sql(version: u32) -> String {
    let dir = schema_dir().expect("../shared/corpus/cs-pg-schema is missing");
    let prefix = format!("v{version:02}_");
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".sql"))
        })
        .unwrap_or_else(|| panic!("no schema {prefix}*.sql in {}", dir.display()));
    std::fs::read_to_string(file).unwrap()
}

/// Whether the schemas are there; with CI=true their absence fails the test.
pub fn schemas_available() -> bool {
    if schema_dir().is_some() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true and ../shared/corpus/cs-pg-schema is missing");
    }
    eprintln!("\n!!!!!!!!!! SKIPPED: ../shared/corpus/cs-pg-schema not found !!!!!!!!!!\n");
    false
}

// ---------------------------------------------------------------------------------------------
// Importing a generated store as CalendarServer keeps it.

/// What [`import`] put into the database.
#[derive(Debug, Default, Clone)]
pub struct Imported {
    pub homes: usize,
    pub objects: usize,
    /// Calendar home RESOURCE_ID by owner GUID.
    pub home_ids: std::collections::BTreeMap<String, i64>,
}

/// The ETag CalendarServer stores: md5 of the text, plus the schedule tag from schema 9 on.
pub fn etag(version: u32, text: &str, schedule_tag: Option<&str>) -> String {
    use md5::Digest;
    let mut h = md5::Md5::new();
    h.update(text.as_bytes());
    if version >= 9 {
        if let Some(t) = schedule_tag {
            h.update(t.as_bytes());
        }
    }
    hex::encode(h.finalize())
}

fn collections(home: &Path) -> Vec<(String, Vec<(String, String)>)> {
    let mut out = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(home).unwrap().flatten().collect();
    dirs.sort_by_key(|e| e.file_name());
    for d in dirs {
        let name = d.file_name().to_string_lossy().into_owned();
        if !d.path().is_dir() || ["dropbox", "freebusy", "outbox"].contains(&name.as_str()) {
            continue;
        }
        let mut files: Vec<(String, String)> = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".ics"))
            .filter_map(|e| {
                let text = std::fs::read_to_string(e.path()).ok()?;
                Some((e.file_name().to_string_lossy().into_owned(), text))
            })
            .collect();
        files.sort();
        out.push((name, files));
    }
    out
}

/// Imports a generated 2.x store (its homes, collections and .ics files) into a database holding
/// schema `version`, as that CalendarServer would hold it: homes with metadata, calendars bound
/// to their home, objects with their ORGANIZER column, ETag and revisions, a time range each
/// (and per-user transparency for the owner), display names in RESOURCE_PROPERTY keyed by the
/// owner, notification and address-book homes with a group card naming people by `urn:uuid:`,
/// IMIP tokens and push subscriptions where the version has them, and for 9.x a delegate.
pub fn import(
    c: &mut postgres::Client,
    version: u32,
    store: &principal_reconciler::store::generate::GeneratedStore,
) -> Imported {
    let mut imp = Imported::default();
    let mut tx = c.transaction().unwrap();
    let people = &store.people;
    for (hi, home) in store.homes.iter().enumerate() {
        let owner = home.id.clone();
        let hid: i64 = tx
            .query_one(
                "INSERT INTO CALENDAR_HOME (OWNER_UID) VALUES ($1) RETURNING RESOURCE_ID::bigint",
                &[&owner],
            )
            .unwrap()
            .get(0);
        tx.execute(
            "INSERT INTO CALENDAR_HOME_METADATA (RESOURCE_ID, QUOTA_USED_BYTES) VALUES ($1::bigint, 0)",
            &[&hid],
        )
        .unwrap();
        imp.home_ids.insert(owner.clone(), hid);
        imp.homes += 1;
        for (cname, files) in collections(&home.path) {
            let cid: i64 = tx
                .query_one(
                    "INSERT INTO CALENDAR DEFAULT VALUES RETURNING RESOURCE_ID::bigint",
                    &[],
                )
                .unwrap()
                .get(0);
            if version >= 66 {
                let child_type: i32 = if cname == "inbox" { 1 } else { 0 };
                tx.execute(
                    "INSERT INTO CALENDAR_METADATA (RESOURCE_ID, SUPPORTED_COMPONENTS, CHILD_TYPE) VALUES ($1::bigint, 'VEVENT,VTODO', $2)",
                    &[&cid, &child_type],
                )
                .unwrap();
            } else if version >= 28 {
                tx.execute(
                    "INSERT INTO CALENDAR_METADATA (RESOURCE_ID, SUPPORTED_COMPONENTS) VALUES ($1::bigint, 'VEVENT,VTODO')",
                    &[&cid],
                )
                .unwrap();
            }
            if version < 28 {
                tx.execute(
                    "INSERT INTO CALENDAR_BIND (CALENDAR_HOME_RESOURCE_ID, CALENDAR_RESOURCE_ID, CALENDAR_RESOURCE_NAME, BIND_MODE, BIND_STATUS, SEEN_BY_OWNER, SEEN_BY_SHAREE) VALUES ($1::bigint, $2::bigint, $3, 0, 1, true, true)",
                    &[&hid, &cid, &cname],
                )
                .unwrap();
            } else {
                tx.execute(
                    "INSERT INTO CALENDAR_BIND (CALENDAR_HOME_RESOURCE_ID, CALENDAR_RESOURCE_ID, CALENDAR_RESOURCE_NAME, BIND_MODE, BIND_STATUS) VALUES ($1::bigint, $2::bigint, $3, 0, 1)",
                    &[&hid, &cid, &cname],
                )
                .unwrap();
            }
            tx.execute(
                "INSERT INTO CALENDAR_OBJECT_REVISIONS (CALENDAR_HOME_RESOURCE_ID, CALENDAR_RESOURCE_ID, CALENDAR_NAME, RESOURCE_NAME, DELETED) VALUES ($1::bigint, $2::bigint, $3, NULL, false)",
                &[&hid, &cid, &cname],
            )
            .unwrap();
            let display = format!(
                "<?xml version='1.0' encoding='UTF-8'?>\r\n<displayname xmlns='DAV:'>{cname} of {}</displayname>",
                people[hi].full_name
            );
            tx.execute(
                "INSERT INTO RESOURCE_PROPERTY (RESOURCE_ID, NAME, VALUE, VIEWER_UID) VALUES ($1::bigint, '{DAV:}displayname', $2, $3)",
                &[&cid, &display, &owner],
            )
            .unwrap();
            if cname == "inbox" {
                let fb = format!("<?xml version='1.0' encoding='UTF-8'?>\r\n<calendar-free-busy-set xmlns='urn:ietf:params:xml:ns:caldav'><href xmlns='DAV:'>/calendars/__uids__/{owner}/calendar/</href></calendar-free-busy-set>");
                tx.execute(
                    "INSERT INTO RESOURCE_PROPERTY (RESOURCE_ID, NAME, VALUE, VIEWER_UID) VALUES ($1::bigint, '{urn:ietf:params:xml:ns:caldav}calendar-free-busy-set', $2, $3)",
                    &[&cid, &fb, &owner],
                )
                .unwrap();
            }
            let (mut names, mut texts, mut uids, mut orgs, mut md5s, mut tags) =
                (vec![], vec![], vec![], vec![], vec![], vec![]);
            for (k, (name, text)) in files.iter().enumerate() {
                let info = principal_reconciler::ical::scan(text.as_bytes()).ok();
                let uid = info
                    .as_ref()
                    .and_then(|i| i.uid.clone())
                    .unwrap_or_else(|| name.trim_end_matches(".ics").to_string());
                let org = info.and_then(|i| i.organizer).unwrap_or_default();
                let tag = (version >= 28 && k % 3 == 0).then(|| format!("tag-{hi}-{k}"));
                md5s.push(etag(version, text, tag.as_deref()));
                names.push(name.clone());
                texts.push(text.clone());
                uids.push(uid);
                orgs.push(org);
                tags.push(tag);
            }
            if names.is_empty() {
                continue;
            }
            let ids: Vec<(i64, String)> = tx
                .query(
                    "INSERT INTO CALENDAR_OBJECT (CALENDAR_RESOURCE_ID, RESOURCE_NAME, ICALENDAR_TEXT, ICALENDAR_UID, ICALENDAR_TYPE, ORGANIZER, MD5, SCHEDULE_TAG, SCHEDULE_OBJECT)
                     SELECT $1::bigint, n, t, u, 'VEVENT', o, m, g, g IS NOT NULL
                     FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[]) AS v(n, t, u, o, m, g)
                     RETURNING RESOURCE_ID::bigint, RESOURCE_NAME",
                    &[&cid, &names, &texts, &uids, &orgs, &md5s, &tags],
                )
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            imp.objects += ids.len();
            let oids: Vec<i64> = ids.iter().map(|(i, _)| *i).collect();
            let onames: Vec<String> = ids.iter().map(|(_, n)| n.clone()).collect();
            tx.execute(
                "INSERT INTO CALENDAR_OBJECT_REVISIONS (CALENDAR_HOME_RESOURCE_ID, CALENDAR_RESOURCE_ID, RESOURCE_NAME, DELETED)
                 SELECT $1::bigint, $2::bigint, n, false FROM unnest($3::text[]) AS v(n)",
                &[&hid, &cid, &onames],
            )
            .unwrap();
            let instances: Vec<i64> = tx
                .query(
                    "INSERT INTO TIME_RANGE (CALENDAR_RESOURCE_ID, CALENDAR_OBJECT_RESOURCE_ID, FLOATING, START_DATE, END_DATE, FBTYPE, TRANSPARENT)
                     SELECT $1::bigint, o, false, timestamp '2010-06-01 10:00' + (o % 100) * interval '1 day', timestamp '2010-06-01 11:00' + (o % 100) * interval '1 day', 2, false
                     FROM unnest($2::bigint[]) AS v(o) RETURNING INSTANCE_ID::bigint",
                    &[&cid, &oids],
                )
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            let some: Vec<i64> = instances.iter().copied().step_by(4).collect();
            let per_user = if version >= 66 {
                "PERUSER"
            } else {
                "TRANSPARENCY"
            };
            tx.execute(
                &format!(
                    "INSERT INTO {per_user} (TIME_RANGE_INSTANCE_ID, USER_ID, TRANSPARENT) SELECT i, $1, true FROM unnest($2::bigint[]) AS v(i)"
                ),
                &[&owner, &some],
            )
            .unwrap();
        }
        // Notification and address-book homes of the same principal.
        tx.execute(
            "INSERT INTO NOTIFICATION_HOME (OWNER_UID) VALUES ($1)",
            &[&owner],
        )
        .unwrap();
        let ahid: i64 = tx
            .query_one(
                "INSERT INTO ADDRESSBOOK_HOME (OWNER_UID) VALUES ($1) RETURNING RESOURCE_ID::bigint",
                &[&owner],
            )
            .unwrap()
            .get(0);
        let other = &people[(hi + 1) % people.len()];
        let local_uid = format!("local-card-{hi}");
        let card = format!(
            "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:{local_uid}\r\nFN:A local card\r\nN:Card;A;;;\r\nEND:VCARD\r\n"
        );
        let group = format!(
            "BEGIN:VCARD\r\nVERSION:3.0\r\nPRODID:-//Apple Inc.//AddressBook 6.1//EN\r\nUID:group-{hi}\r\nFN:Team {hi}\r\nN:Team {hi};;;;\r\nX-ADDRESSBOOKSERVER-KIND:group\r\nX-ADDRESSBOOKSERVER-MEMBER:urn:uuid:{}\r\nX-ADDRESSBOOKSERVER-MEMBER:urn:uuid:{local_uid}\r\nX-ADDRESSBOOKSERVER-MEMBER:urn:uuid:{}\r\nEND:VCARD\r\n",
            people[hi].guid, other.guid
        );
        let cards = [
            (format!("{local_uid}.vcf"), local_uid.clone(), card, 0i32),
            (
                format!("group-{hi}.vcf"),
                format!("group-{hi}"),
                group,
                1i32,
            ),
        ];
        if version < 28 {
            let abid: i64 = tx
                .query_one(
                    "INSERT INTO ADDRESSBOOK DEFAULT VALUES RETURNING RESOURCE_ID::bigint",
                    &[],
                )
                .unwrap()
                .get(0);
            tx.execute(
                "INSERT INTO ADDRESSBOOK_BIND (ADDRESSBOOK_HOME_RESOURCE_ID, ADDRESSBOOK_RESOURCE_ID, ADDRESSBOOK_RESOURCE_NAME, BIND_MODE, BIND_STATUS, SEEN_BY_OWNER, SEEN_BY_SHAREE) VALUES ($1::bigint, $2::bigint, 'addressbook', 0, 1, true, true)",
                &[&ahid, &abid],
            )
            .unwrap();
            for (name, uid, text, _) in &cards {
                tx.execute(
                    "INSERT INTO ADDRESSBOOK_OBJECT (ADDRESSBOOK_RESOURCE_ID, RESOURCE_NAME, VCARD_TEXT, VCARD_UID, MD5) VALUES ($1::bigint, $2, $3, $4, md5($3))",
                    &[&abid, name, text, uid],
                )
                .unwrap();
                tx.execute(
                    "INSERT INTO ADDRESSBOOK_OBJECT_REVISIONS (ADDRESSBOOK_HOME_RESOURCE_ID, ADDRESSBOOK_RESOURCE_ID, RESOURCE_NAME, DELETED) VALUES ($1::bigint, $2::bigint, $3, false)",
                    &[&ahid, &abid, name],
                )
                .unwrap();
            }
        } else {
            for (name, uid, text, kind) in &cards {
                tx.execute(
                    "INSERT INTO ADDRESSBOOK_OBJECT (ADDRESSBOOK_HOME_RESOURCE_ID, RESOURCE_NAME, VCARD_TEXT, VCARD_UID, KIND, MD5) VALUES ($1::bigint, $2, $3, $4, $5, md5($3))",
                    &[&ahid, name, text, uid, kind],
                )
                .unwrap();
                tx.execute(
                    "INSERT INTO ADDRESSBOOK_OBJECT_REVISIONS (ADDRESSBOOK_HOME_RESOURCE_ID, OWNER_HOME_RESOURCE_ID, RESOURCE_NAME, DELETED) VALUES ($1::bigint, $1::bigint, $2, false)",
                    &[&ahid, name],
                )
                .unwrap();
            }
        }
        tx.execute(
            "INSERT INTO APN_SUBSCRIPTIONS (TOKEN, RESOURCE_KEY, MODIFIED, SUBSCRIBER_GUID) VALUES ($1, $2, 1300000000, $3)",
            &[&format!("token-{hi}"), &format!("/CalDAV/cal.example.com/{owner}/"), &owner],
        )
        .unwrap();
        if version >= 28 {
            tx.execute(
                "INSERT INTO IMIP_TOKENS (TOKEN, ORGANIZER, ATTENDEE, ICALUID) VALUES ($1, $2, 'mailto:partner@outside.example.net', $3)",
                &[&format!("imip-{hi}"), &format!("urn:uuid:{owner}"), &format!("uid-{hi}")],
            )
            .unwrap();
        }
        if version >= 66 {
            tx.execute(
                "INSERT INTO DELEGATES (DELEGATOR, DELEGATE, READ_WRITE) VALUES ($1, $2, 1)",
                &[&owner, &other.guid],
            )
            .unwrap();
        }
    }
    tx.commit().unwrap();
    imp
}

/// Every row of every table of the database, as text, by table (sorted): what "the database is
/// the same" means in tests. Columns named in `skip` (bookkeeping such as REVISION, MODIFIED) are
/// left out.
pub fn dump(
    c: &mut postgres::Client,
    skip: &[&str],
) -> std::collections::BTreeMap<String, Vec<String>> {
    let tables: Vec<String> = c
        .query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = std::collections::BTreeMap::new();
    for t in tables {
        let cols: Vec<String> = c
            .query(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
                &[&t],
            )
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .filter(|col| !skip.iter().any(|s| s.eq_ignore_ascii_case(col)))
            .collect();
        if cols.is_empty() {
            continue;
        }
        let expr = cols
            .iter()
            .map(|col| format!("COALESCE({col}::text, '<null>')"))
            .collect::<Vec<_>>()
            .join(" || '|' || ");
        let mut rows: Vec<String> = c
            .query(&format!("SELECT {expr} FROM {t}"), &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        rows.sort();
        out.insert(t, rows);
    }
    out
}

/// Asserts two dumps are equal, naming the tables and first rows that differ.
pub fn assert_same_db(
    got: &std::collections::BTreeMap<String, Vec<String>>,
    want: &std::collections::BTreeMap<String, Vec<String>>,
    what: &str,
) {
    let mut diffs = Vec::new();
    for (t, rows) in want {
        let g = got.get(t).cloned().unwrap_or_default();
        if &g != rows {
            let missing: Vec<&String> = rows.iter().filter(|r| !g.contains(r)).take(2).collect();
            let extra: Vec<&String> = g.iter().filter(|r| !rows.contains(r)).take(2).collect();
            diffs.push(format!("{t}: missing {missing:?}, extra {extra:?}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} tables differ: {diffs:#?}",
        diffs.len()
    );
}
