//! Store scan benchmark: generates a CalendarServer 2.x store of N resources (default 100,000;
//! `cargo bench --bench store_scan -- 250000` or `STORE_SCAN_N=250000`), then prints
//! - the scan rate (the whole `scan` inventory: walk + `ical::scan` + counting),
//! - its wall time over the I/O floor (reading every resource's bytes on as many threads, after a
//!   warm-up, in the same run; goal ≤ 1.5×),
//! - the peak RSS of the scan (VmHWM, reset before it; goal ≤ 150 MB and flat in N).
//!
//! `STORE_SCAN_DIR=/path` generates the store there (kept, and reused by the next run when it
//! exists) instead of in a temporary folder.

use crossbeam_channel::bounded;
use principal_reconciler::config::{StoreConfig, StoreKind};
use principal_reconciler::store::generate::StoreBuilder;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Reads every `*.ics` file's bytes under `root`: one lister thread, `threads` readers.
fn read_all(root: &Path, threads: usize) -> (u64, u64) {
    let (tx, rx) = bounded::<PathBuf>(1024);
    std::thread::scope(|s| {
        let lister = s.spawn(move || {
            let mut stack = vec![root.to_path_buf()];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).unwrap().flatten() {
                    let ft = e.file_type().unwrap();
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    if ft.is_dir() {
                        stack.push(e.path());
                    } else if ft.is_file() && name.ends_with(".ics") && !name.starts_with('.') {
                        tx.send(e.path()).unwrap();
                    }
                }
            }
        });
        let readers: Vec<_> = (0..threads)
            .map(|_| {
                let rx = rx.clone();
                s.spawn(move || {
                    let (mut n, mut bytes) = (0u64, 0u64);
                    for p in rx {
                        bytes += std::fs::read(&p).unwrap().len() as u64;
                        n += 1;
                    }
                    (n, bytes)
                })
            })
            .collect();
        drop(rx);
        lister.join().unwrap();
        readers
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    })
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.replace('_', "").parse().ok())
        .or_else(|| {
            std::env::var("STORE_SCAN_N")
                .ok()
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(100_000);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let tmp = tempfile::tempdir().expect("temporary folder");
    let root = match std::env::var_os("STORE_SCAN_DIR") {
        Some(d) => PathBuf::from(d),
        None => tmp.path().join("Documents"),
    };
    let homes = (n / 200).max(1);
    println!(
        "store_scan: N = {n} resources in {homes} homes, {threads} threads, store at {}",
        root.display()
    );

    if root.join("calendars").is_dir() {
        println!(
            "generate:    reusing the store already at {}",
            root.display()
        );
    } else {
        let t = Instant::now();
        StoreBuilder::new(&root)
            .seed(42)
            .homes(homes)
            .resources(n)
            .build()
            .expect("generate");
        let gen = t.elapsed().as_secs_f64();
        println!(
            "generate:    {gen:8.2} s  ({:.0} resources/s)",
            n as f64 / gen
        );
    }
    println!(
        "peak RSS after generating: {:.1} MB",
        status_kb("VmHWM:") as f64 / 1024.0
    );

    // Warm-up: bring the store into the page cache. Then alternate the I/O floor and the scan
    // (ROUNDS times each, best of each kept: the machine is shared).
    const ROUNDS: usize = 3;
    let _ = read_all(&root, threads);
    let cfg = StoreConfig {
        kind: StoreKind::CalendarserverFs,
        path: root.clone(),
        owner: None,
        xattr_prefix: None,
        data_root: None,
        addressbook_root: None,
        ..Default::default()
    };
    let bar = principal_reconciler::progress::NoBar;
    let reset = reset_peak_rss();
    let rss_before = status_kb("VmRSS:");
    let (mut floor, mut scan, mut full, mut bare, mut read_bytes) =
        (f64::MAX, f64::MAX, f64::MAX, f64::MAX, 0);
    let mut inv = None;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let (read_n, bytes) = read_all(&root, threads);
        floor = floor.min(t.elapsed().as_secs_f64());
        assert_eq!(read_n as usize, n);
        read_bytes = bytes;
        let t = Instant::now();
        let i = principal_reconciler::store::scan::inventory(
            &cfg,
            &principal_reconciler::progress::NoProgress,
        )
        .expect("scan");
        scan = scan.min(t.elapsed().as_secs_f64());
        assert_eq!(i.resources as usize, n);
        inv = Some(i);
        // The full walk apply/plan use: bytes, sha256, owner/mode, every attribute, ical::scan.
        let t = Instant::now();
        let mut count = 0usize;
        principal_reconciler::store::walk(
            &cfg,
            &bar,
            |_, bytes| principal_reconciler::ical::scan(bytes).map(|i| i.addresses.len()),
            |item| {
                if let principal_reconciler::store::Item::Resource(r, _) = item {
                    assert!(!r.xattrs.is_empty());
                    count += 1;
                }
                Ok(())
            },
        )
        .expect("walk");
        full = full.min(t.elapsed().as_secs_f64());
        assert_eq!(count, n);
        // The walk alone (read, hash, stat, attributes; no parsing): the store module's own cost.
        let t = Instant::now();
        let mut count = 0usize;
        principal_reconciler::store::walk(
            &cfg,
            &bar,
            |_, bytes| bytes.len(),
            |item| {
                if let principal_reconciler::store::Item::Resource(..) = item {
                    count += 1;
                }
                Ok(())
            },
        )
        .expect("walk");
        bare = bare.min(t.elapsed().as_secs_f64());
        assert_eq!(count, n);
    }
    let inv = inv.expect("one round");
    println!(
        "read floor:  {floor:8.3} s  ({:.0} resources/s, {:.1} MB/s; best of {ROUNDS})",
        n as f64 / floor,
        read_bytes as f64 / floor / 1e6
    );
    println!(
        "scan:        {scan:8.3} s  ({:.0} resources/s; best of {ROUNDS}; {} distinct addresses, {} occurrences)",
        n as f64 / scan,
        inv.distinct_addresses,
        inv.address_occurrences
    );
    println!("scan / read floor: {:.2}x  (goal <= 1.5x)", scan / floor);
    println!(
        "full walk (+ every xattr) + ical::scan: {full:.3} s ({:.0} resources/s), {:.2}x the read floor",
        n as f64 / full,
        full / floor
    );
    println!(
        "walk alone (bytes + sha256 + stat + every xattr, no parsing): {bare:.3} s ({:.0} resources/s), {:.2}x the read floor",
        n as f64 / bare,
        bare / floor
    );
    println!(
        "peak RSS during scan: {:.1} MB{}  (RSS before: {:.1} MB; goal <= 150 MB, flat in N)",
        status_kb("VmHWM:") as f64 / 1024.0,
        if reset {
            ""
        } else {
            " (could not reset VmHWM: includes generation)"
        },
        rss_before as f64 / 1024.0
    );
}
