//! report.html opens in a real browser (headless Chromium): tables render, the sorting script runs,
//! the chart is there, and nothing is fetched from the network.

use crate::support::world;

use std::process::Command;
use world::World;

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
}

#[test]
fn report_renders_in_headless_chromium() {
    let Some(browser) = chromium() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("chromium is not installed (CI installs it in .ci/run)");
        }
        eprintln!("SKIPPED: chromium not found; install Debian's `chromium` to run this test");
        return;
    };
    let w = World::new(4, 30, 31);
    // One address nobody has, so the "needs a decision" table has a row.
    let rel = w.store.root.join("calendars");
    let some = walk_first_ics(&rel);
    let text = std::fs::read_to_string(&some).unwrap();
    std::fs::write(
        &some,
        text.replacen(
            "ATTENDEE;",
            "ATTENDEE;CN=Left Company:mailto:gone@example.com\r\nATTENDEE;",
            1,
        ),
    )
    .unwrap();
    w.cmd().arg("plan").assert().code(0);
    let html = w.path("reports/report.html");
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", html.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    // The script ran in the browser and marked every table sortable.
    let tables = dom.matches("class=\"sortable\"").count();
    assert!(
        tables >= 3,
        "expected the decision, homes and mapping tables: {tables}"
    );
    assert_eq!(
        dom.matches("data-sortable=\"ready\"").count(),
        tables,
        "the sorting script did not run"
    );
    assert!(
        dom.contains("mailto:gone@example.com"),
        "the unmatched address is not in the page"
    );
    assert!(dom.contains("id=\"outcome-chart\""));
    assert!(dom.matches("<tr").count() > 10);
    let source = std::fs::read_to_string(&html).unwrap();
    for fetch in [
        "src=\"http",
        "href=\"http",
        "<link",
        "@import",
        "url(",
        "fetch(",
    ] {
        assert!(
            !source.contains(fetch),
            "the page must not load anything ({fetch})"
        );
    }
}

fn walk_first_ics(dir: &std::path::Path) -> std::path::PathBuf {
    let mut stack = vec![dir.to_path_buf()];
    let mut found = Vec::new();
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if e.file_name().to_string_lossy().ends_with(".ics")
                && e.path().components().any(|c| c.as_os_str() == "calendar")
            {
                found.push(e.path());
            }
        }
    }
    found.sort();
    found.into_iter().next().unwrap()
}
