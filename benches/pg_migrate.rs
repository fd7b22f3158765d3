//! Benchmark of plan and apply on the PostgreSQL store (CalendarServer 9.x schema, v66), on a
//! PostgreSQL this bench starts (as the tests do): a generated store of 100,000 objects (set
//! PR_BENCH_N; a tenth of it is measured too, to show memory does not grow with the store),
//! against the floor of reading the same texts with `COPY (SELECT ICALENDAR_TEXT …) TO STDOUT`.
//!
//! `cargo bench --bench pg_migrate` prints the figures; nothing is asserted. Needs Debian's
//! postgresql (skipped with a message when missing). `PR_BENCH_HOLD=<size>` keeps the world of that
//! size and waits (for profiling by hand).

#[path = "../tests/it/support/postgres.rs"]
mod postgres;
#[path = "../tests/it/support/slapd.rs"]
mod slapd;
#[path = "../tests/it/support/world.rs"]
mod world;

use principal_reconciler::store::generate::StoreBuilder;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// Runs the tool; returns (seconds, peak RSS in MB).
#[allow(clippy::zombie_processes)] // reaped with wait4 below, which also gives its peak RSS
fn run(config: &Path, args: &[&str]) -> (f64, f64) {
    let start = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_principal-reconciler"))
        .arg("--config")
        .arg(config)
        .args(["--no-progress", "-q"])
        .args(args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child with valid out-pointers.
    unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let secs = start.elapsed().as_secs_f64();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) <= 1,
        "{args:?} failed with status {status}"
    );
    let cpu = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    eprintln!(
        "    {args:?}: {secs:.2} s wall, {:.2} s user, {:.2} s system",
        cpu(usage.ru_utime),
        cpu(usage.ru_stime)
    );
    (secs, usage.ru_maxrss as f64 / 1024.0)
}

struct Figures {
    objects: i64,
    copy: f64,
    plan: (f64, f64),
    apply: (f64, f64),
}

fn measure(pg: &postgres::Postgres, n: usize, version: u32) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let store = StoreBuilder::new(dir.path().join("generated"))
        .homes((n / 1000).max(2))
        .resources(n)
        .seed(7)
        .without_xattrs()
        .build()
        .unwrap();
    let db = format!("bench{n}");
    let mut c = pg.create_store(&db, version);
    let imported = postgres::import(&mut c, version, &store);
    c.batch_execute("VACUUM ANALYZE").unwrap();
    eprintln!(
        "  {n}: generated and imported {} objects in {} homes in {:.1?}",
        imported.objects,
        imported.homes,
        t.elapsed()
    );
    std::fs::remove_dir_all(dir.path().join("generated")).unwrap();
    let new_guid: BTreeMap<String, String> = store
        .people
        .iter()
        .map(|p| (p.guid.clone(), world::renewed(&p.guid)))
        .collect();
    std::fs::write(
        dir.path().join("new.ldif"),
        world::ldif(&store.people, &new_guid),
    )
    .unwrap();
    std::fs::write(dir.path().join("old.txt"), world::dsexport(&store.people)).unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[directory]\nldif = \"new.ldif\"\n[old_directory]\nfiles = [\"old.txt\"]\n[store]\nkind = \"calendarserver-pg\"\ndsn = \"{}\"\n[rewrite]\naddress_form = \"urn:x-uid\"\ninternal_domains = [\"example.com\"]\n[state]\npath = \"state\"\n[report]\ndir = \"reports\"\n",
            pg.socket_dsn(&db)
        ),
    )
    .unwrap();
    // The floor: the same texts, read once with COPY (best of three).
    let mut copy = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let mut r = c
            .copy_out("COPY (SELECT ICALENDAR_TEXT FROM CALENDAR_OBJECT) TO STDOUT")
            .unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0usize;
        loop {
            let k = r.read(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            total += k;
        }
        drop(r);
        copy = copy.min(t.elapsed().as_secs_f64());
        assert!(total > 0);
    }
    drop(c);
    if std::env::var("PR_BENCH_HOLD")
        .ok()
        .and_then(|v| v.parse().ok())
        == Some(n)
    {
        // For profiling by hand: the world stays until this process is stopped.
        eprintln!("holding: --config {}", config.display());
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
    let plan = run(&config, &["plan"]);
    let apply = run(&config, &["apply"]);
    pg.client("postgres")
        .batch_execute(&format!("DROP DATABASE {db}"))
        .unwrap();
    Figures {
        objects: imported.objects as i64,
        copy,
        plan,
        apply,
    }
}

fn main() {
    let n: usize = std::env::var("PR_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let Some(pg) = postgres::Postgres::start() else {
        eprintln!("pg_migrate: no PostgreSQL; nothing measured");
        return;
    };
    println!("PostgreSQL store, schema v66 (CalendarServer 9.x), on a local PostgreSQL:");
    for size in [n / 10, n] {
        let f = measure(&pg, size, 66);
        println!(
            "  {:>7} objects: COPY floor {:.2} s | plan {:.2} s ({:.0}/s, {:.2}x COPY, peak RSS {:.0} MB) | apply {:.2} s ({:.0}/s, {:.2}x plan, peak RSS {:.0} MB)",
            f.objects,
            f.copy,
            f.plan.0,
            f.objects as f64 / f.plan.0,
            f.plan.0 / f.copy,
            f.plan.1,
            f.apply.0,
            f.objects as f64 / f.apply.0,
            f.apply.0 / f.plan.0,
            f.apply.1
        );
    }
}
