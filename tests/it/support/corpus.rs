//! The shared test data beside the project (`../shared/corpus/<name>`): next to the crate in CI
//! (`CARGO_MANIFEST_DIR/../shared`), next to the worktree folder locally
//! (`CARGO_MANIFEST_DIR/../../shared`). Missing data fails the test when `CI=true`; elsewhere the
//! test prints a SKIPPED line and passes.
#![allow(dead_code)]

use std::path::PathBuf;

/// `../shared/corpus/<name>`, or `None` (after saying so) when it is not there outside CI.
pub fn dir(name: &str) -> Option<PathBuf> {
    let found = [
        format!("{}/../shared/corpus/{name}", env!("CARGO_MANIFEST_DIR")),
        format!("{}/../../shared/corpus/{name}", env!("CARGO_MANIFEST_DIR")),
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_dir());
    if found.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("the shared corpus ../shared/corpus/{name} is missing on CI");
        }
        eprintln!("\n!!!!! SKIPPED: shared corpus ../shared/corpus/{name} not found !!!!!\n");
    }
    found
}

/// Every file under `root` (recursively), sorted by path.
pub fn files(root: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let e = e.unwrap().path();
            if e.is_dir() {
                stack.push(e);
            } else {
                out.push(e);
            }
        }
    }
    out.sort();
    out
}
