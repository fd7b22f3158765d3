//! Benchmark of scan, plan, apply, verify and rollback on generated 10.6 stores of 10,000 and
//! 100,000 resources (or only PR_BENCH_N), each step beside the floors measured in the same run:
//! reading every resource's bytes once on both cores, and copying the store (`cp -a`, then `sync`).
//! Prints the growth factor between the two sizes, each step's peak RSS (the CLI runs as a child;
//! `wait4` gives its rusage), the state folder's size after plan and after apply, and a short
//! Python script using the PyPI `icalendar` package (benches/icalendar_rewrite.py) as a baseline. More crash
//! kills than the test suite's 20: `PR_CRASH_KILLS=200 cargo test --release --test migrate apply_killed`.
//!
//! `PR_BENCH_ONLY=scan,plan,verify` runs only the steps named (the copy floor goes with `apply`),
//! e.g. to measure 1M resources without a copy, apply and rollback.
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

/// Bytes of every file under `dir`.
fn bytes_under(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    total
}

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
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

/// One size's figures.
struct Figures {
    n: usize,
    read_floor: f64,
    copy_floor: f64,
    /// (step, seconds, peak RSS MB)
    steps: Vec<(&'static str, f64, f64)>,
    store_mb: f64,
    /// (state database MB, backups MB) after plan and after apply
    state_after_plan: (f64, f64),
    state_after_apply: (f64, f64),
}

fn state_size(root: &Path) -> (f64, f64) {
    let st = root.join("state");
    let all = bytes_under(&st);
    let backups = bytes_under(&st.join("backups"));
    (mb(all - backups), mb(backups))
}

fn measure(n: usize, python: bool) -> Option<Figures> {
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
        return None;
    }

    // PR_BENCH_ONLY=scan,plan,verify: only those steps (1M without the copy floor, apply and
    // rollback); the copy floor is measured with apply only.
    let only: Option<Vec<String>> = std::env::var("PR_BENCH_ONLY")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    let runs = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|s| s == name));
    // The copy floor: the whole store copied with owners, modes and attributes, then made durable.
    let copy_floor = if !runs("apply") {
        0.0
    } else {
        let t = Instant::now();
        let ok = Command::new("cp")
            .arg("-a")
            .arg(&store.root)
            .arg(root.join("copy"))
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cp -a failed");
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
        let s = t.elapsed().as_secs_f64();
        std::fs::remove_dir_all(root.join("copy")).unwrap();
        s
    };
    let store_mb = mb(bytes_under(&store.root));
    let mut steps = Vec::new();
    let mut step = |name: &'static str, args: &[&str]| {
        let (s, rss) = run(&config, args);
        steps.push((name, s, rss));
        s
    };
    let mut step = |name: &'static str, args: &[&str]| runs(name).then(|| step(name, args));
    step("scan", &["scan"]);
    let plan_s = step("plan", &["plan"]);
    let state_after_plan = state_size(&root);
    if let Some(plan_s) = plan_s.filter(|_| python) {
        python_baseline(&root, &paths, n as f64 / plan_s);
    }
    step("apply", &["apply"]);
    let state_after_apply = state_size(&root);
    step("verify", &["verify"]);
    step("rollback", &["rollback"]);
    Some(Figures {
        n,
        read_floor: floor,
        copy_floor,
        steps,
        store_mb,
        state_after_plan,
        state_after_apply,
    })
}

/// The Python `icalendar` script on a sample of the store (it is slow), compared per resource.
fn python_baseline(root: &Path, paths: &[PathBuf], plan_rate: f64) {
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
                    plan_rate / rate
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
}

fn print(f: &Figures) {
    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        println!("load average after {} resources: {}", f.n, l.trim());
    }
    println!(
        "resources: {} ({:.0} MB); floors: read {:.2} s (both cores, cache warm), copy {:.2} s (cp -a + sync)",
        f.n, f.store_mb, f.read_floor, f.copy_floor
    );
    for (name, s, rss) in &f.steps {
        println!(
            "  {name:<8} {s:>7.2} s  {:>8.0} resources/s  {:>5.1}x read floor  {:>5.2}x copy floor  peak RSS {rss:.0} MB",
            f.n as f64 / s,
            s / f.read_floor,
            s / f.copy_floor
        );
    }
    let t = |name: &str| f.steps.iter().find(|s| s.0 == name).map_or(0.0, |s| s.1);
    println!(
        "  rollback / apply: {:.2}x; apply / plan: {:.2}x",
        t("rollback") / t("apply"),
        t("apply") / t("plan")
    );
    println!(
        "  state after plan: database {:.1} MB, backups {:.1} MB; after apply: database {:.1} MB, backups {:.1} MB",
        f.state_after_plan.0, f.state_after_plan.1, f.state_after_apply.0, f.state_after_apply.1
    );
    // The goals of issue #15, side by side with what was measured.
    let copy = f.copy_floor.max(1e-9);
    println!(
        "  goals: plan / scan {:.2}x (<= 3x at 100k); apply / copy floor {:.2}x (<= 3x); state growth per plan {:.1} MB = {:.0}% of the {:.0} MB store (<= 10%); peak RSS max {:.0} MB (<= 100 MB)",
        t("plan") / t("scan").max(1e-9),
        t("apply") / copy,
        f.state_after_plan.0 + f.state_after_plan.1,
        100.0 * (f.state_after_plan.0 + f.state_after_plan.1) / f.store_mb.max(1e-9),
        f.store_mb,
        f.steps.iter().map(|s| s.2).fold(0.0, f64::max)
    );
}

fn main() {
    // The machine may be shared: the load average goes with the figures.
    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        println!("load average at start: {}", l.trim());
    }
    let sizes: Vec<usize> = match std::env::var("PR_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(n) => vec![n],
        None => vec![10_000, 100_000],
    };
    let mut all = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        // PR_BENCH_GENERATE_ONLY=1: generate the worlds and stop.
        if let Some(f) = measure(n, i + 1 == sizes.len()) {
            print(&f);
            all.push(f);
        }
    }
    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        println!("load average at end: {}", l.trim());
    }
    if let [a, b] = &all[..] {
        let k = b.n as f64 / a.n as f64;
        println!("growth {} -> {} resources ({k:.0}x more):", a.n, b.n);
        for ((name, sa, ra), (_, sb, rb)) in a.steps.iter().zip(&b.steps) {
            println!("  {name:<8} time {:.1}x, peak RSS {:.1}x", sb / sa, rb / ra);
        }
        println!(
            "  floors: read {:.1}x, copy {:.1}x; state after apply {:.1}x",
            b.read_floor / a.read_floor,
            b.copy_floor / a.copy_floor,
            (b.state_after_apply.0 + b.state_after_apply.1)
                / (a.state_after_apply.0 + a.state_after_apply.1)
        );
    }
}
