//! The layer rule: a module of the library imports only modules of its own layer or below, and
//! nothing outside `cli` imports `cli`. Reads every `src/**/*.rs`, finds each `crate::MODULE`
//! reference (use statements and paths, comments left out) and maps both ends to a layer.
//!
//! The violations that remain (in modules whose move is still to come) are listed in
//! [`KNOWN`]; each must still exist, so the list shrinks as they are fixed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first. A module is placed by the longest entry its path starts with.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "foundations",
        &[
            "error",
            "finding",
            "fsutil",
            "address",
            "config",
            "progress",
            "state",
            "lock",
            "interrupt",
        ],
    ),
    ("formats", &["ical", "vcard"]),
    ("directory", &["directory"]),
    // What the library reads and writes: the calendar store, the directory-side files and
    // services provisioning edits, and the state folder's upkeep.
    (
        "backends",
        &[
            "store",
            "provision::access",
            "provision::augments",
            "provision::proxy",
            "prune",
            // the store-side count of calendar resources a plan sizes its work by
            "precount",
            // home adoption's file work (`store::homes`, re-exported as `crate::homes`)
            "homes",
        ],
    ),
    // `db` (the database store's workflow) only declares its parts, each placed with its kind;
    // `db::rewrite` is the mapping of database rows that its plan and apply share.
    (
        "mapping",
        &["mapping", "mapping_file", "replay", "db", "db::rewrite"],
    ),
    ("rehearse", &["rehearse", "db::rehearse"]),
    ("addressbooks", &["addressbooks"]),
    // apply and its choice of the homes each stage carries out
    (
        "journal",
        &["journal", "stage", "db::apply", "db::rollback"],
    ),
    ("plan", &["plan", "db::plan"]),
    ("report", &["report"]),
    ("provision", &["provision"]),
    ("verify", &["verify", "db::verify"]),
    ("queries", &["diff", "history"]),
    ("cli", &["cli"]),
];

/// Modules that must not import each other in either direction: they meet only through the
/// state database (the plan rows `plan` writes and `journal` carries out).
const APART: &[(&str, &str)] = &[
    ("plan", "journal"),
    ("plan", "db::apply"),
    ("plan", "db::rollback"),
    ("db::plan", "journal"),
    ("db::plan", "db::apply"),
    ("db::plan", "db::rollback"),
];

/// Violations still to fix (phase 2): (importing module, imported module as placed in
/// [`LAYERS`]).
const KNOWN: &[(&str, &str)] = &[
    // plan and journal must meet only through the plan rows of the state database.
];

fn layer_of(path: &str) -> Option<(usize, &'static str)> {
    let mut best: Option<(usize, &'static str)> = None;
    for (i, (_, mods)) in LAYERS.iter().enumerate() {
        for m in *mods {
            let hit = path == *m || path.starts_with(&format!("{m}::"));
            if hit && best.is_none_or(|(_, b)| m.len() > b.len()) {
                best = Some((i, m));
            }
        }
    }
    best
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/a/b.rs` → `a::b`, `src/a/mod.rs` → `a`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// Every `crate::a::b…` path on a line of code (comments left out).
fn crate_paths(line: &str) -> Vec<String> {
    let code = line.trim_start();
    if code.starts_with("//") {
        return Vec::new();
    }
    let code = match code.find(" //") {
        Some(i) => &code[..i],
        None => code,
    };
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let path = rest[..end].trim_end_matches(':').to_string();
        if !path.is_empty() {
            out.push(path);
        }
    }
    out
}

#[test]
fn modules_import_only_their_layer_or_below_and_nothing_imports_the_cli() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut unplaced = BTreeSet::new();
    let mut found: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" || module == "main" {
            continue; // the crate root declares the modules; the binary only calls cli
        }
        let Some((from_layer, placed)) = layer_of(&module) else {
            unplaced.insert(module);
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read");
        // A file's unit tests (its `#[cfg(test)]` module, last in the file by the project's
        // habit) are not part of the library's graph: they may build data with any layer.
        let code_lines = text
            .lines()
            .position(|l| l.trim() == "#[cfg(test)]")
            .unwrap_or(usize::MAX);
        for (n, line) in text.lines().enumerate().take(code_lines) {
            for path in crate_paths(line) {
                let Some((to_layer, to)) = layer_of(&path) else {
                    unplaced.insert(path);
                    continue;
                };
                let into_cli = to == "cli" && placed != "cli";
                let apart = APART
                    .iter()
                    .any(|&(a, b)| (placed, to) == (a, b) || (placed, to) == (b, a));
                if to_layer > from_layer || into_cli || apart {
                    let why = if into_cli {
                        "the CLI"
                    } else if apart {
                        "kept apart"
                    } else {
                        "upward"
                    };
                    found
                        .entry((module.clone(), to.to_string()))
                        .or_default()
                        .push(format!(
                            "src/{}:{}: {module} imports {path} ({why}: {} -> {})",
                            file.strip_prefix(&src).unwrap().display(),
                            n + 1,
                            LAYERS[from_layer].0,
                            LAYERS[to_layer].0
                        ));
                }
            }
        }
    }
    assert!(
        unplaced.is_empty(),
        "modules in no layer (add them to LAYERS): {unplaced:?}"
    );
    let known: BTreeSet<(String, String)> = KNOWN
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let mut new = Vec::new();
    for (pair, lines) in &found {
        for l in lines {
            let tag = if known.contains(pair) { "known" } else { "NEW" };
            println!("{tag}: {l}");
        }
        if !known.contains(pair) {
            new.extend(lines.iter().cloned());
        }
    }
    let fixed: Vec<&(String, String)> = known.iter().filter(|k| !found.contains_key(*k)).collect();
    assert!(
        new.is_empty(),
        "imports against the layer rule:\n{}",
        new.join("\n")
    );
    assert!(
        fixed.is_empty(),
        "listed in KNOWN but no longer found (remove them from the list): {fixed:?}"
    );
}

#[test]
fn the_layer_map_places_modules_by_their_longest_entry() {
    assert_eq!(layer_of("store::walk").map(|l| l.1), Some("store"));
    assert_eq!(
        layer_of("provision::proxy::DbPlan").map(|l| l.1),
        Some("provision::proxy")
    );
    assert_eq!(
        layer_of("provision::analyse").map(|l| l.1),
        Some("provision")
    );
    assert_eq!(layer_of("planner"), None);
    assert_eq!(
        crate_paths("use crate::cli::{Context, Outcome}; // crate::x"),
        vec!["cli".to_string()]
    );
    assert!(crate_paths("/// see [`crate::plan`]").is_empty());
    assert_eq!(
        crate_paths("f($crate::a, crate::b::c)"),
        vec!["b::c".to_string()]
    );
}
