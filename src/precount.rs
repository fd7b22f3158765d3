//! A cheap count of a store's calendar resources before a walk, so `plan` shows a bar with an ETA
//! instead of a spinner: folder listings only (the homes, their collections), no file opened or
//! read, no `stat` beyond what the listing gives. The walk reads these listings again right after,
//! from the kernel's cache.

use crate::config::{StoreConfig, StoreKind};
use crate::store::walk::{calendars_dir, is_resource_name};
use std::fs;
use std::path::Path;

/// The names and kinds (folder or not) of a folder's entries, hidden ones left out.
fn entries(dir: &Path) -> Vec<(String, bool)> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let is_dir = e.file_type().ok()?.is_dir();
            (!name.starts_with('.')).then_some((name, is_dir))
        })
        .collect()
}

/// Resources in a home's collections, as the walk counts them.
fn home(dir: &Path) -> u64 {
    entries(dir)
        .into_iter()
        .filter(|(_, d)| *d)
        .map(|(c, _)| {
            entries(&dir.join(c))
                .into_iter()
                .filter(|(n, _)| is_resource_name(n))
                .count() as u64
        })
        .sum()
}

fn ics_dir(dir: &Path) -> u64 {
    entries(dir)
        .into_iter()
        .map(|(n, d)| {
            if d {
                ics_dir(&dir.join(n))
            } else {
                is_resource_name(&n) as u64
            }
        })
        .sum()
}

/// How many calendar resources a walk of the store will read (`None`: no calendar folder).
pub fn calendar_resources(cfg: &StoreConfig) -> Option<u64> {
    if cfg.kind == StoreKind::IcsDir {
        return Some(ics_dir(&cfg.path));
    }
    let cal = calendars_dir(&cfg.path)?;
    let mut n = 0;
    let uids = cal.join("__uids__");
    for (n1, d1) in entries(&uids) {
        if !d1 {
            continue;
        }
        let p1 = uids.join(&n1);
        if n1.len() == 2 {
            for (n2, d2) in entries(&p1) {
                if d2 && n2.len() == 2 {
                    let p2 = p1.join(n2);
                    for (n3, d3) in entries(&p2) {
                        if d3 {
                            n += home(&p2.join(n3));
                        }
                    }
                }
            }
        } else {
            n += home(&p1);
        }
    }
    for kind in ["users", "groups", "locations", "resources"] {
        let dir = cal.join(kind);
        for (h, d) in entries(&dir) {
            if d {
                n += home(&dir.join(h));
            }
        }
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::generate::StoreBuilder;

    /// The count is the walk's: every resource of a generated store (hashed, flat and 1.x homes).
    #[test]
    fn counts_what_the_walk_reads() {
        let dir = tempfile::tempdir().unwrap();
        let n = std::env::var("PR_PRECOUNT_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300);
        StoreBuilder::new(dir.path().join("Documents"))
            .homes(n / 30 + 1)
            .flat_uids_homes(2)
            .users_homes(2)
            .resources(n)
            .seed(3)
            .build()
            .unwrap();
        let cfg = StoreConfig {
            path: dir.path().join("Documents"),
            ..Default::default()
        };
        let t = std::time::Instant::now();
        let counted = calendar_resources(&cfg).unwrap();
        let took = t.elapsed();
        let mut walked = 0u64;
        crate::store::walk_with(
            &cfg,
            crate::store::WalkOptions { xattrs: false },
            &crate::progress::NoBar,
            |_, _| (),
            |item| {
                if let crate::store::Item::Resource(..) = item {
                    walked += 1;
                }
                Ok(())
            },
        )
        .unwrap();
        eprintln!("pre-count of {counted} resources: {took:.2?}");
        assert_eq!(counted, walked);
    }
}
