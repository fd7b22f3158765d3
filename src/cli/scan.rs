//! `scan`: the inventory of the store ([`crate::store::scan`]), rendered.

use super::{Context, Outcome};
use crate::config::StoreKind;
use crate::error::{ExitStatus, Result};
use crate::store::scan::Inventory;
use std::fmt::Write as _;

/// `scan`: exit 1 when some resources are unreadable or malformed.
pub fn run(ctx: &Context) -> Result<Outcome> {
    let inv = if ctx.config.store.kind == StoreKind::CalendarserverPg {
        crate::store::pg::scan::inventory(&ctx.config, ctx)?
    } else {
        crate::store::scan::inventory(&ctx.config.store, ctx)?
    };
    let status = if inv.has_bad_resources() {
        ExitStatus::Problems
    } else {
        ExitStatus::Ok
    };
    let json = serde_json::to_value(&inv).unwrap_or_default();
    Ok(Outcome {
        status,
        human: render(&inv),
        json,
    })
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The human summary of an inventory.
pub fn render(inv: &Inventory) -> String {
    let mut s = String::new();
    let kind = match inv.kind {
        StoreKind::CalendarserverFs => "calendarserver-fs",
        StoreKind::CalendarserverPg => "calendarserver-pg",
        StoreKind::IcsDir => "ics-dir",
    };
    let _ = writeln!(s, "Store {} ({kind})", inv.store);
    if inv.kind != StoreKind::IcsDir {
        let total: usize = inv.homes.values().sum();
        let parts: Vec<String> = inv.homes.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(s, "Homes:        {total} ({})", parts.join(", "));
    }
    let _ = writeln!(s, "Collections:  {} with resources", inv.collections);
    let _ = writeln!(
        s,
        "Resources:    {} ({})",
        inv.resources,
        human_bytes(inv.bytes)
    );
    let _ = writeln!(
        s,
        "Addresses:    {} distinct, {} occurrences",
        inv.distinct_addresses, inv.address_occurrences
    );
    for (k, c) in &inv.by_kind {
        let _ = writeln!(
            s,
            "  {k:<15} {:>8} distinct {:>10} occurrences",
            c.distinct, c.occurrences
        );
        if k == "mailto" {
            for d in inv.mailto_domains.iter().take(20) {
                let _ = writeln!(
                    s,
                    "    @{:<30} {:>6} distinct {:>10} occurrences",
                    d.domain, d.distinct, d.occurrences
                );
            }
            if inv.mailto_domains.len() > 20 {
                let _ = writeln!(
                    s,
                    "    … {} more domains (see --json)",
                    inv.mailto_domains.len() - 20
                );
            }
        }
    }
    if !inv.top_addresses.is_empty() {
        let _ = writeln!(s, "Most used addresses:");
        for a in inv.top_addresses.iter().take(20) {
            let _ = writeln!(
                s,
                "  {:>10}  {:<15} {}",
                a.occurrences,
                a.kind.as_str(),
                a.address
            );
        }
    }
    if let Some(ab) = &inv.addressbooks {
        let total: usize = ab.homes.values().sum();
        let parts: Vec<String> = ab.homes.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(s, "Address books: {}", ab.root);
        let _ = writeln!(s, "  Homes:        {total} ({})", parts.join(", "));
        let _ = writeln!(
            s,
            "  Cards:        {} ({}) in {} address books",
            ab.cards,
            human_bytes(ab.bytes),
            ab.collections
        );
        let _ = writeln!(
            s,
            "  Groups:       {} naming {} members ({} cards of their own address book, {} other: directory records or cards that are gone)",
            ab.groups, ab.members, ab.card_members, ab.other_members
        );
    }
    let total_problems: u64 = inv.problem_counts.values().sum();
    if total_problems == 0 {
        let _ = writeln!(s, "Problems:     none");
    } else {
        let parts: Vec<String> = inv
            .problem_counts
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(s, "Problems:     {total_problems} ({})", parts.join(", "));
        for p in inv.problems.iter().take(200) {
            let _ = writeln!(s, "  {:<10} {}: {}", p.kind, p.path, p.detail);
        }
        if inv.problems.len() > 200 {
            let _ = writeln!(s, "  … {} more (see --json)", total_problems - 200);
        }
    }
    if inv.has_bad_resources() {
        let _ = writeln!(s, "Some resources are unreadable or malformed: they are listed above and will not be rewritten.");
    }
    s
}
