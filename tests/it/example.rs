//! The shipped example (README's first command) migrates on a rehearsal copy, shows every
//! outcome, and leaves the example itself untouched.

use crate::support::world;

use predicates::prelude::*;

/// Tests that run on the shipped example in place, one at a time: a rehearsal holds the lock of
/// the store it copies (and of the example's state folder), so a second one at the same instant
/// is refused (exit 3) by design.
static IN_PLACE: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn snow_leopard_example_migrates_on_a_rehearsal() {
    let _one_at_a_time = IN_PLACE.lock().unwrap_or_else(|e| e.into_inner());
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/snow-leopard");
    let before = world::tree(&example);
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("rehearsal");
    let out = assert_cmd::Command::cargo_bin("principal-reconciler")
        .unwrap()
        .arg("--config")
        .arg(example.join("principal-reconciler.toml"))
        .args(["--json", "migrate", "--rehearse"])
        .arg(&dir)
        .output()
        .unwrap();
    // Problems a human must look at remain by design (an ambiguous address, a truncated file).
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let plan = &doc["plan"];
    for outcome in ["unchanged", "mapped", "ambiguous", "unmatched", "external"] {
        assert!(
            plan["by_outcome"][outcome].as_u64().unwrap() >= 1,
            "no {outcome} address: {plan}"
        );
    }
    for rule in [
        "same-guid",
        "old-export-guid",
        "principal-name",
        "old-export-mail",
        "domain-alias",
        "store-evidence",
    ] {
        assert!(
            plan["by_rule"][rule].as_u64().unwrap_or(0) >= 1,
            "rule {rule} never used: {plan}"
        );
    }
    assert_eq!(plan["problems"].as_array().unwrap().len(), 1);
    assert!(plan["problems"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("line 8"));
    assert_eq!(doc["run"]["skipped"].as_array().unwrap().len(), 0);
    // Everything that could be mapped was rewritten, store evidence (rule 6) included: what verify
    // still finds is only what needs a human (Gina left; sales@ is ambiguous; a truncated file).
    let kinds: Vec<&str> = doc["verify"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert!(!kinds.contains(&"not-canonical"), "{kinds:?}");
    assert!(!kinds.contains(&"home-not-adopted"), "{kinds:?}");
    assert!(
        kinds.contains(&"dark-organizer")
            && kinds.contains(&"ambiguous-address")
            && kinds.contains(&"malformed"),
        "{kinds:?}"
    );
    assert_eq!(
        world::tree(&example),
        before,
        "the example must stay as it is"
    );
    // The copy was rewritten: Jane's old GUID is gone from her organizer copy.
    let copy = dir.join("store");
    let jane_old = "1229DD2E-77E0-4C2C-838E-B64590F2ED55";
    let jane_new = "9891E31A-C4E7-4C6F-8286-E4A8C676CDD6";
    assert!(
        !copy
            .join(format!("calendars/__uids__/12/29/{jane_old}"))
            .exists(),
        "old home not adopted"
    );
    let organizer = std::fs::read_to_string(copy.join(format!(
        "calendars/__uids__/98/91/{jane_new}/calendar/965B42D3-A109-4340-8517-135B2744F44E.ics"
    )))
    .unwrap();
    assert!(
        !organizer.contains(&format!("urn:uuid:{jane_old}")),
        "{organizer}"
    );
    assert!(organizer.contains("CN=\"Jane Appleseed\""));
    // Frank's old GUID was resolved only by store evidence (rule 6): no event names it any more.
    let frank_old = "0A6CA719-9A7F-4228-8101-443281247370";
    for (path, bytes) in world::resources(&copy) {
        assert!(
            !String::from_utf8_lossy(&bytes).contains(frank_old),
            "{path} still names {frank_old}"
        );
    }
    // A second rehearsal into the same folder replaces the first.
    assert_cmd::Command::cargo_bin("principal-reconciler")
        .unwrap()
        .arg("--config")
        .arg(example.join("principal-reconciler.toml"))
        .args(["migrate", "--dry-run", "--rehearse"])
        .arg(&dir)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("dry run"));
}

#[test]
fn a_rehearsal_refuses_a_folder_that_holds_other_things() {
    let _one_at_a_time = IN_PLACE.lock().unwrap_or_else(|e| e.into_inner());
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/snow-leopard");
    let scratch = tempfile::tempdir().unwrap();
    std::fs::write(scratch.path().join("precious.txt"), "x").unwrap();
    assert_cmd::Command::cargo_bin("principal-reconciler")
        .unwrap()
        .arg("--config")
        .arg(example.join("principal-reconciler.toml"))
        .args(["migrate", "--rehearse"])
        .arg(scratch.path())
        .assert()
        .code(2)
        .stderr(predicate::str::contains("not empty"));
    assert!(scratch.path().join("precious.txt").exists());
}
