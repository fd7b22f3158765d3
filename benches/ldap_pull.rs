//! Pull speed against a real slapd: 20,000 Open Directory users loaded with slapadd, read through
//! the library (paged, 500 per page) and with `ldapsearch -x -LLL -E pr=500/noprompt` on the same
//! query. Prints records/s for both and the ratio (goal: the library within 1.3x of ldapsearch).

#[path = "../tests/it/support/slapd.rs"]
mod slapd;

use principal_reconciler::config::Config;
use principal_reconciler::directory::{load_current, presets::Schema};
use std::path::Path;
use std::time::Instant;

const USERS: u32 = 20_000;
const RUNS: usize = 3;

fn main() {
    let Some(srv) = slapd::Slapd::builder()
        .prtotal_unlimited()
        .entries(&slapd::od_users(USERS))
        .start()
    else {
        return;
    };
    let text = format!(
        "[directory]\nurl = \"{}\"\nbase = \"{}\"\npage_size = 500\n[store]\npath = \"s\"\n",
        srv.url,
        slapd::BASE
    );
    let cfg = Config::parse(&text, Path::new("bench.toml"))
        .expect("config")
        .directory;
    let users = Schema::from_config(&cfg).types[0].clone();
    let attrs = users.requested_attributes();
    let filter = users.filter.clone().unwrap();
    let base = format!("{},{}", users.container, slapd::BASE);

    let mut lib_best = f64::MAX;
    let mut tool_best = f64::MAX;
    for _ in 0..RUNS {
        let t = Instant::now();
        let d = load_current(&cfg).expect("pull");
        lib_best = lib_best.min(t.elapsed().as_secs_f64());
        assert_eq!(d.records.len(), USERS as usize);

        let t = Instant::now();
        let out = std::process::Command::new("ldapsearch")
            .args([
                "-x",
                "-LLL",
                "-E",
                "pr=500/noprompt",
                "-H",
                &srv.url,
                "-b",
                &base,
                &filter,
            ])
            .args(&attrs)
            .output()
            .expect("ldapsearch");
        tool_best = tool_best.min(t.elapsed().as_secs_f64());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let n = out.stdout.windows(4).filter(|w| w == b"\ndn:").count() + 1;
        assert_eq!(n, USERS as usize);
    }
    let lib = f64::from(USERS) / lib_best;
    let tool = f64::from(USERS) / tool_best;
    println!("ldap_pull: {USERS} OD users, page size 500, best of {RUNS}");
    println!(
        "  library (load_current, all 4 record types): {lib:>10.0} records/s ({lib_best:.3}s)"
    );
    println!(
        "  ldapsearch -x -LLL -E pr=500/noprompt:       {tool:>10.0} records/s ({tool_best:.3}s)"
    );
    println!(
        "  ratio ldapsearch/library: {:.2}x (goal <= 1.3x)",
        lib_best / tool_best
    );
}
