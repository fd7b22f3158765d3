//! Benchmark of plan, apply and rollback on a generated 10.6 store (default 100,000 resources; set
//! PR_BENCH_N), against the I/O floor (reading every resource's bytes once) and against a short
//! Python script using the PyPI `icalendar` package (benches/icalendar_rewrite.py). More crash
//! kills than the test suite's 20: `PR_CRASH_KILLS=200 cargo test --release --test migrate apply_killed`.
//!
//! `cargo bench --bench migrate` prints the figures; nothing is asserted.

use principal_reconciler::store::generate::StoreBuilder;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn renewed(old: &str) -> String {
    let h = hex::encode_upper(Sha256::digest(old.as_bytes()));
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if e.file_name().to_string_lossy().ends_with(".ics") {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

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
        "{args:?} failed: {status}"
    );
    (secs, usage.ru_maxrss as f64 / 1024.0)
}

fn main() {
    let n: usize = std::env::var("PR_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let homes = (n / 200).clamp(4, 2000);
    let guard = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = guard.path().to_path_buf();
    // PR_BENCH_KEEP=1 leaves the generated world in place for a closer look.
    if std::env::var("PR_BENCH_KEEP").is_ok() {
        let _ = guard.keep();
        eprintln!("world kept in {}", root.display());
    }
    let t = Instant::now();
    let store = StoreBuilder::new(root.join("Documents"))
        .homes(homes)
        .resources(n)
        .seed(5)
        .build()
        .unwrap();
    eprintln!(
        "generated {} resources in {} homes in {:.1} s",
        store.resources,
        homes,
        t.elapsed().as_secs_f64()
    );
    let mut ldif = String::from("version: 1\n\n");
    let mut dsexport = String::from("0x0A 0x5C 0x3A 0x2C dsRecTypeStandard:Users 4 RecordName GeneratedUID RealName EMailAddress\n");
    let mut tsv = String::new();
    for p in &store.people {
        let new = renewed(&p.guid);
        ldif.push_str(&format!(
            "dn: uid={s},cn=users,dc=example,dc=com\nobjectClass: inetOrgPerson\nuid: {s}\ncn: {f}\nsn: {f}\nmail: {m}\napple-generateduid: {new}\n\n",
            s = p.short_name, f = p.full_name, m = p.email
        ));
        dsexport.push_str(&format!(
            "{}:{}:{}:{}\n",
            p.short_name, p.guid, p.full_name, p.email
        ));
        for old in [
            format!("urn:uuid:{}", p.guid.to_lowercase()),
            format!("mailto:{}", p.email),
        ] {
            tsv.push_str(&format!("{old}\turn:uuid:{new}\n"));
        }
    }
    std::fs::write(root.join("new.ldif"), ldif).unwrap();
    std::fs::write(root.join("old.txt"), dsexport).unwrap();
    std::fs::write(root.join("map.tsv"), tsv).unwrap();
    let config = root.join("c.toml");
    std::fs::write(
        &config,
        "[directory]\nldif = \"new.ldif\"\n[old_directory]\nfiles = [\"old.txt\"]\n[store]\npath = \"Documents\"\n[rewrite]\ninternal_domains = [\"example.com\"]\n[state]\npath = \"state\"\n[report]\ndir = \"reports\"\n",
    )
    .unwrap();

    // The I/O floor: every resource's bytes read once, on both cores, cache warm (after a warm-up).
    let paths = files(&store.root);
    let read_all = || {
        let t = Instant::now();
        let chunks: Vec<&[PathBuf]> = paths.chunks(paths.len().div_ceil(2).max(1)).collect();
        std::thread::scope(|s| {
            for c in chunks {
                s.spawn(move || {
                    c.iter()
                        .map(|p| std::fs::read(p).unwrap().len())
                        .sum::<usize>()
                });
            }
        });
        t.elapsed().as_secs_f64()
    };
    read_all();
    let floor = read_all();

    if std::env::var("PR_BENCH_GENERATE_ONLY").is_ok() {
        return;
    }
    let (plan_s, plan_rss) = run(&config, &["plan"]);
    let per = |s: f64| n as f64 / s;
    // The Python baseline on a sample (it is slow), compared per resource.
    let sample: Vec<String> = paths
        .iter()
        .step_by((paths.len() / 3000).max(1))
        .map(|p| p.display().to_string())
        .collect();
    std::fs::write(root.join("sample.txt"), sample.join("\n")).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/icalendar_rewrite.py");
    match Command::new("python3")
        .arg(&script)
        .arg(root.join("map.tsv"))
        .arg(root.join("sample.txt"))
        .output()
    {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let line = text.lines().last().unwrap_or_default();
            let rate: f64 = line
                .rsplit(", ")
                .next()
                .and_then(|s| s.split(' ').next())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0.0);
            println!("python icalendar: {line}");
            if rate > 0.0 {
                println!(
                    "plan vs python: {:.1}x faster per resource (goal >= 20x)",
                    per(plan_s) / rate
                );
            }
        }
        Ok(out) => println!(
            "python icalendar: skipped ({}); `pip install icalendar` to compare",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("failed")
        ),
        Err(e) => println!("python icalendar: skipped ({e})"),
    }
    let (apply_s, apply_rss) = run(&config, &["apply"]);
    let (rollback_s, rollback_rss) = run(&config, &["rollback"]);
    println!("resources: {n} in {homes} homes");
    println!("I/O floor (read every resource): {floor:.2} s");
    println!("plan:  {plan_s:.2} s, {:.0} resources/s, {:.2}x the I/O floor (goal <= 2x), peak RSS {plan_rss:.0} MB", per(plan_s), plan_s / floor);
    println!("apply: {apply_s:.2} s, {:.0} resources/s, {:.2}x plan's time (goal <= 3x), peak RSS {apply_rss:.0} MB", per(apply_s), apply_s / plan_s);
    println!("rollback: {rollback_s:.2} s, {:.0} resources/s, {:.2}x apply's time, peak RSS {rollback_rss:.0} MB", per(rollback_s), rollback_s / apply_s);
}
