//! The admin's mapping file through the CLI: `plan` writes mapping-todo.csv, the admin fills in
//! its last column (here: `-` for a person who left), plans again, and the store reaches exit 0.

use crate::support::world::{self, World};

/// A world in which the last person left: not in the new directory, still in the old export.
fn world_with_a_leaver() -> (World, world::Person) {
    let w = World::new(4, 40, 7);
    let people = &w.store.people;
    let leaver = people.last().unwrap().clone();
    let stayed: Vec<_> = people[..people.len() - 1].to_vec();
    std::fs::write(w.path("new.ldif"), world::ldif(&stayed, &w.new_guid)).unwrap();
    (w, leaver)
}

fn set_mapping_file(w: &World, rel: &str) {
    let cfg = std::fs::read_to_string(&w.config).unwrap();
    let cfg = cfg.replace(
        "[rewrite]\n",
        &format!("[rewrite]\nmapping_file = \"{rel}\"\n"),
    );
    std::fs::write(&w.config, cfg).unwrap();
}

fn json(w: &World, args: &[&str]) -> (i32, serde_json::Value) {
    let out = w.cmd().arg("--json").args(args).output().unwrap();
    let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "{args:?}: no JSON; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), doc)
}

#[test]
fn todo_file_filled_in_acknowledges_a_leaver_and_verify_reaches_exit_0() {
    let (w, leaver) = world_with_a_leaver();
    let (_, doc) = json(&w, &["plan"]);
    assert!(
        doc["plan"]["by_outcome"]["unmatched"].as_u64().unwrap() >= 1,
        "{doc}"
    );
    let todo = std::fs::read_to_string(w.path("reports/mapping-todo.csv")).unwrap();
    assert!(todo.starts_with("# Copy this file"), "{todo}");
    assert!(
        todo.contains(&leaver.guid),
        "the leaver's GUID has a row: {todo}"
    );
    // Without a decision the leaver's addresses stay problems after apply.
    w.cmd().arg("apply").assert().code(0);
    let (code, doc) = json(&w, &["verify"]);
    assert_eq!(code, 1, "{doc}");
    // The admin copies the file, writes `-` into the last column of every row, plans again.
    let filled: String = todo
        .lines()
        .map(|l| {
            if l.starts_with('#') || l.starts_with("old,") {
                format!("{l}\n")
            } else {
                format!("{l}-\n")
            }
        })
        .collect();
    std::fs::write(w.path("decisions.csv"), filled).unwrap();
    set_mapping_file(&w, "decisions.csv");
    let (code, doc) = json(&w, &["plan"]);
    assert_eq!(code, 0, "{doc}");
    let plan = &doc["plan"];
    assert_eq!(plan["by_outcome"]["unmatched"], 0, "{plan}");
    assert!(
        plan["by_outcome"]["acknowledged"].as_u64().unwrap() >= 1,
        "{plan}"
    );
    assert_eq!(
        plan["resources_changed"], 0,
        "nothing left to rewrite: {plan}"
    );
    let todo = std::fs::read_to_string(w.path("reports/mapping-todo.csv")).unwrap();
    assert_eq!(todo.lines().count(), 2, "nothing left to decide: {todo}");
    let (code, doc) = json(&w, &["verify"]);
    assert_eq!(code, 0, "acknowledged leavers are not problems: {doc}");
    // The leaver's addresses were left exactly as they were.
    let stored = world::resources(&w.store.root);
    assert!(stored
        .values()
        .any(|b| String::from_utf8_lossy(b).contains(&leaver.guid)));
}

#[test]
fn conflicting_rows_are_an_error_naming_both_lines_and_unused_rows_a_warning() {
    let (w, leaver) = world_with_a_leaver();
    let someone = &w.store.people[0];
    std::fs::write(
        w.path("decisions.csv"),
        format!(
            "\u{feff}old,new\n{mail},{a}\n# a comment\n\"{mail}\",{b}\n",
            mail = leaver.email,
            a = someone.short_name,
            b = w.store.people[1].short_name
        ),
    )
    .unwrap();
    set_mapping_file(&w, "decisions.csv");
    let out = w.cmd().arg("plan").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("decisions.csv:2 and") && err.contains("decisions.csv:4 map"),
        "{err}"
    );
    std::fs::write(
        w.path("decisions.csv"),
        format!(
            "old,new\nnobody@example.com,{}\n{},-\n",
            someone.short_name, leaver.email
        ),
    )
    .unwrap();
    let (code, doc) = json(&w, &["plan"]);
    assert_eq!(code, 0, "{doc}");
    let warnings = doc["plan"]["warnings"].to_string();
    assert!(
        warnings.contains("decisions.csv:2: mailto:nobody@example.com matches no address"),
        "{warnings}"
    );
}
