//! Golden tests: what every command prints (human and `--json`), the reports it writes, its exit
//! code, and the store tree (bytes, owner, mode, attributes) after apply and after rollback — on the
//! shipped example and on a generated 10.6 store. They lock in behaviour so that a restructuring of
//! the code can be checked against it: after a move they must pass unchanged.
//!
//! The expected files live in `tests/golden/<scenario>/`. Values that differ from run to run are
//! normalised: the temporary folder (`<TMP>`), timestamps (`<TIME>`), durations (`<DURATION>`),
//! `getctag` values (`<CTAG>`), backup and temporary-file names are left as they are because they
//! are content addressed. A behaviour changed on purpose is re-recorded with
//! `PR_BLESS=1 cargo test --test it golden` and the diff reviewed like code.

use crate::support::world::{self, World};
use regex::Regex;
use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Compares (or with `PR_BLESS=1` records) the outputs of one scenario.
struct Golden {
    dir: PathBuf,
    tmp: String,
    bless: bool,
    seen: Vec<String>,
    mismatches: Vec<String>,
}

fn patterns() -> &'static [(Regex, &'static str)] {
    static P: OnceLock<Vec<(Regex, &'static str)>> = OnceLock::new();
    P.get_or_init(|| {
        [
            (
                r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)",
                "<TIME>",
            ),
            (r"\b\d+(\.\d+)?(ms|µs|ns|s)\b", "<DURATION>"),
            (r"\b\d{10}\.\d{9}-\d+-\d+\b", "<CTAG>"),
        ]
        .into_iter()
        .map(|(p, r)| (Regex::new(p).unwrap(), r))
        .collect()
    })
}

impl Golden {
    fn new(scenario: &str, tmp: &Path) -> Golden {
        Golden {
            dir: Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/golden")
                .join(scenario),
            tmp: tmp.to_string_lossy().into_owned(),
            bless: std::env::var("PR_BLESS").as_deref() == Ok("1"),
            seen: Vec::new(),
            mismatches: Vec::new(),
        }
    }

    fn normalise(&self, text: &str) -> String {
        let mut s = text.replace(&self.tmp, "<TMP>");
        for (re, with) in patterns() {
            s = re.replace_all(&s, *with).into_owned();
        }
        s
    }

    /// Checks one named output against its golden file.
    fn check(&mut self, name: &str, actual: &str) {
        assert!(
            !self.seen.iter().any(|n| n == name),
            "golden name {name} used twice"
        );
        self.seen.push(name.to_string());
        let actual = self.normalise(actual);
        let path = self.dir.join(name);
        if self.bless {
            std::fs::create_dir_all(&self.dir).unwrap();
            std::fs::write(&path, &actual).unwrap();
            return;
        }
        let want = match std::fs::read_to_string(&path) {
            Ok(w) => w,
            Err(e) => {
                self.mismatches.push(format!(
                    "{}: cannot read ({e}); record it with PR_BLESS=1",
                    path.display()
                ));
                return;
            }
        };
        if want != actual {
            let (n, w, a) = want
                .lines()
                .zip(actual.lines())
                .enumerate()
                .find(|(_, (w, a))| w != a)
                .map(|(i, (w, a))| (i + 1, w.to_string(), a.to_string()))
                .unwrap_or_else(|| {
                    (
                        want.lines().count().min(actual.lines().count()) + 1,
                        format!("({} lines)", want.lines().count()),
                        format!("({} lines)", actual.lines().count()),
                    )
                });
            self.mismatches.push(format!(
                "{name}, line {n}:\n    expected: {w}\n    actual:   {a}"
            ));
        }
    }

    /// Runs a command and checks its exit code and stdout (JSON re-printed with sorted keys).
    fn run(&mut self, name: &str, cmd: &mut assert_cmd::Command) -> serde_json::Value {
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let json: serde_json::Value =
            serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
        let shown = if json.is_null() {
            stdout
        } else {
            serde_json::to_string_pretty(&json).unwrap() + "\n"
        };
        self.check(
            name,
            &format!("exit: {:?}\n---\n{shown}", out.status.code()),
        );
        json
    }

    /// Checks every file of a report folder.
    fn reports(&mut self, prefix: &str, dir: &Path) {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        self.check(&format!("{prefix}.files"), &(names.join("\n") + "\n"));
        for n in names {
            let text = String::from_utf8_lossy(&std::fs::read(dir.join(&n)).unwrap()).into_owned();
            self.check(&format!("{prefix}.{n}"), &text);
        }
    }

    /// Checks the store tree: every path with its content hash, owner, group, mode and
    /// attributes (`getctag` values normalised: they must change on every write).
    fn tree(&mut self, name: &str, root: &Path) {
        let mut out = String::new();
        for (rel, (hash, _uid, _gid, mode, attrs)) in world::tree(root) {
            // Owners are the test runner's (root in CI, a user locally): compared against the
            // store's own owner instead of recorded.
            let m = std::fs::symlink_metadata(root.join(&rel)).unwrap();
            let owner = if (m.uid(), m.gid()) == owner_of(root) {
                "owner"
            } else {
                "OTHER-OWNER"
            };
            let _ = writeln!(out, "{rel} {hash} {owner} {mode:o}");
            for (k, v) in attrs {
                let _ = writeln!(
                    out,
                    "  {k} {}",
                    principal_reconciler::store::write::sha256_hex(&v)
                );
            }
            for k in ctag_names(&root.join(&rel)) {
                let _ = writeln!(out, "  {k} <CTAG>");
            }
        }
        self.check(name, &out);
    }

    fn finish(self) {
        assert!(
            self.mismatches.is_empty(),
            "{} golden output(s) differ from {} (re-record on purpose with PR_BLESS=1 and review the diff):\n{}",
            self.mismatches.len(),
            self.dir.display(),
            self.mismatches.join("\n")
        );
    }
}

fn owner_of(root: &Path) -> (u32, u32) {
    let m = std::fs::metadata(root).unwrap();
    (m.uid(), m.gid())
}

/// Attribute names of `getctag` (left out of [`world::tree`]).
fn ctag_names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = xattr::list(p)
        .into_iter()
        .flatten()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| n.contains("getctag"))
        .collect();
    v.sort();
    v
}

fn bin() -> assert_cmd::Command {
    let mut c = assert_cmd::Command::cargo_bin("principal-reconciler").unwrap();
    c.arg("--no-progress").env("NO_COLOR", "1");
    c
}

/// Copies a folder (regular files and folders; the shipped example has nothing else).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Every command on the shipped example (copied, its state and reports kept beside it).
#[test]
fn golden_shipped_example() {
    let tmp = tempfile::tempdir().unwrap();
    let ex = tmp.path().join("ex");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/snow-leopard"),
        &ex,
    );
    let cfg_path = ex.join("principal-reconciler.toml");
    let cfg = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .replace("../../target/snow-leopard-state", "state")
        .replace("../../target/snow-leopard-reports", "reports");
    std::fs::write(&cfg_path, cfg).unwrap();
    let mut g = Golden::new("shipped-example", tmp.path());
    let c = || {
        let mut c = bin();
        c.arg("--config").arg(&cfg_path);
        c
    };
    let store = ex.join("store");
    g.tree("00-tree-before", &store);
    g.run("01-config", bin().arg("config"));
    g.run("02-scan", c().arg("scan"));
    g.run("03-scan.json", c().args(["--json", "scan"]));
    g.run("04-directory-pull", c().args(["directory", "pull"]));
    g.run(
        "05-directory-pull.json",
        c().args(["--json", "directory", "pull"]),
    );
    g.run("06-doctor", c().arg("doctor"));
    g.run("07-plan", c().arg("plan"));
    g.reports("08-plan-reports", &ex.join("reports"));
    g.run("09-plan.json", c().args(["--json", "plan"]));
    g.run("10-report", c().arg("report"));
    g.run("11-provision", c().arg("provision"));
    g.run("12-verify-before", c().arg("verify"));
    g.tree("13-tree-after-plan", &store);
    g.run("14-apply.json", c().args(["--json", "apply"]));
    g.tree("15-tree-after-apply", &store);
    g.run("16-verify-after", c().arg("verify"));
    g.run("17-verify-after.json", c().args(["--json", "verify"]));
    g.run("18-doctor-after", c().arg("doctor"));
    g.run("19-rollback", c().arg("rollback"));
    g.tree("20-tree-after-rollback", &store);
    g.run("21-migrate-dry-run", c().args(["migrate", "--dry-run"]));
    let rehearsal = tmp.path().join("rehearsal");
    g.run(
        "22-migrate-rehearse.json",
        c().args(["--json", "migrate", "--rehearse"])
            .arg(&rehearsal),
    );
    g.tree("23-rehearsal-tree", &rehearsal.join("store"));
    g.tree("24-tree-after-rehearsal", &store);
    g.finish();
}

/// Plan, apply, verify and rollback on a generated 10.6 store whose people all got new GUIDs.
#[test]
fn golden_generated_store() {
    let w = World::new(4, 40, 7);
    let mut g = Golden::new("generated-store", w.dir.path());
    let store = w.store.root.clone();
    g.tree("00-tree-before", &store);
    g.run("01-scan.json", w.cmd().args(["--json", "scan"]));
    g.run("02-plan", w.cmd().arg("plan"));
    g.run("03-plan.json", w.cmd().args(["--json", "plan"]));
    g.reports("04-plan-reports", &w.path("reports"));
    g.run("05-apply", w.cmd().arg("apply"));
    g.tree("06-tree-after-apply", &store);
    g.run("07-verify.json", w.cmd().args(["--json", "verify"]));
    g.run("08-doctor.json", w.cmd().args(["--json", "doctor"]));
    g.run("09-rollback.json", w.cmd().args(["--json", "rollback"]));
    g.tree("10-tree-after-rollback", &store);
    g.run("11-apply-again", w.cmd().arg("apply"));
    g.tree("12-tree-after-apply-again", &store);
    g.finish();
}
