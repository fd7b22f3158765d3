//! Reports a human checks before and after a run, written into `[report] dir`:
//! - `mapping.csv` — one row per distinct old address or GUID and how it resolved;
//! - `changes.csv` — one row per changed property;
//! - `summary.json` — counts by outcome and rule, unresolved lists, problems;
//! - `report.html` — one self-contained page (no network): figures, a chart of outcomes,
//!   sortable tables with ambiguous and unmatched addresses first, example diffs.
//!
//! Every file is written to a temporary name and renamed, so a report is never half-written.
//! CSV cells that a spreadsheet would run as a formula (`= + - @` first) are prefixed with `'`.

use crate::error::{Error, Result};
use crate::plan::PlanSummary;
use crate::state::report_rows::{self, HomeTable};
use crate::state::State;
use serde_json::json;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// How many changed resources the HTML page shows as diffs.
const EXAMPLE_DIFFS: usize = 12;
/// Kept here for the callers that still name it so (the plan helper's files).
pub use crate::fsutil::write_atomic;

/// A CSV cell a spreadsheet will not execute.
fn cell(s: &str) -> String {
    match s.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@') => format!("'{s}"),
        _ => s.to_string(),
    }
}

fn csv_bytes(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(header)
        .map_err(|e| Error::runtime(format!("CSV: {e}")))?;
    for r in rows {
        w.write_record(r.iter().map(|c| cell(c)))
            .map_err(|e| Error::runtime(format!("CSV: {e}")))?;
    }
    w.into_inner()
        .map_err(|e| Error::runtime(format!("CSV: {e}")))
}

/// The UTF-8 byte-order mark `[report] csv_bom` puts before every CSV.
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

/// A CSV file's bytes, with the byte-order mark when `[report] csv_bom` asks for it.
pub fn with_bom(bom: bool, bytes: Vec<u8>) -> Vec<u8> {
    if bom {
        let mut out = BOM.to_vec();
        out.extend(bytes);
        out
    } else {
        bytes
    }
}

/// Writes a CSV file atomically (header + rows; formula-like cells neutralised; a byte-order
/// mark first when `bom`).
pub fn write_csv(
    path: &Path,
    header: &[&str],
    rows: impl Iterator<Item = Vec<String>>,
    bom: bool,
) -> Result<PathBuf> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io("cannot create report folder", dir, e))?;
    }
    write_atomic(path, &with_bom(bom, csv_bytes(header, rows)?))?;
    Ok(path.to_path_buf())
}

pub use crate::state::report_rows::MappingRow;

impl MappingRow {
    const HEADER: [&'static str; 12] = [
        "old_value",
        "form",
        "outcome",
        "rule",
        "evidence",
        "new_guid",
        "new_short_name",
        "new_full_name",
        "record_type",
        "new_value",
        "resources",
        "candidates",
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.old_value.clone(),
            self.form.clone(),
            self.outcome.clone(),
            self.rule.clone(),
            self.evidence.clone(),
            self.new_guid.clone(),
            self.new_short_name.clone(),
            self.new_full_name.clone(),
            self.record_type.clone(),
            self.new_value.clone(),
            self.resources.to_string(),
            self.candidates.clone(),
        ]
    }
}

/// Reads a plan's mapping.csv rows from the state database, ordered by outcome then old value.
pub fn mapping_rows(state: &State, plan_id: i64) -> Result<Vec<MappingRow>> {
    report_rows::mapping_rows(&state.conn, plan_id)
}

/// The homes a plan moves: old home folder → new one (calendar homes relative to the store,
/// address-book homes relative to the address-book root, as resource paths are).
pub fn home_moves(
    state: &State,
    plan_id: i64,
) -> Result<std::collections::HashMap<String, String>> {
    let mut moves = std::collections::HashMap::new();
    for (table, top) in [
        (HomeTable::Calendar, "calendars"),
        (HomeTable::AddressBook, "addressbooks"),
    ] {
        for m in report_rows::home_moves(&state.conn, table, plan_id)? {
            moves.insert(m.rel_path, crate::homes::hashed_home_in(top, &m.new_guid));
        }
    }
    Ok(moves)
}

/// Where a resource will be once its home is adopted (a collection whose name clashes in a home
/// the server already made becomes `NAME-migrated` at apply); the same path when its home stays.
pub fn path_after_adoption(moves: &std::collections::HashMap<String, String>, rel: &str) -> String {
    // Homes are 3 (`calendars/__uids__/GUID`, `calendars/users/NAME`) or 5
    // (`calendars/__uids__/XX/YY/GUID`) components deep.
    for depth in [5, 3] {
        let mut ends = rel.match_indices('/').map(|(i, _)| i);
        if let Some(end) = ends.nth(depth - 1) {
            if let Some(new_home) = moves.get(&rel[..end]) {
                return format!("{new_home}{}", &rel[end..]);
            }
        }
    }
    rel.to_string()
}

/// `mapping-todo.csv`: one ready-to-edit row per ambiguous or unmatched address. The admin fills
/// in the last column and points `[rewrite] mapping_file` at the file (see [`crate::mapping_file`]:
/// its header row names the `old` and `new` columns, the comment line is skipped, rows left empty
/// are skipped).
pub fn mapping_todo(mapping: &[MappingRow]) -> Result<Vec<u8>> {
    let mut out = b"# Copy this file beside your configuration and fill in the last column: a GUID or short name (see candidates) or - for a person who left. Then name the copy in [rewrite] mapping_file and run plan again (plan rewrites this one).\n".to_vec();
    out.extend(csv_bytes(
        &[
            "old",
            "form",
            "outcome",
            "resources",
            "candidates",
            "evidence",
            "new",
        ],
        mapping
            .iter()
            .filter(|r| r.outcome == "ambiguous" || r.outcome == "unmatched")
            .map(|r| {
                vec![
                    r.old_value.clone(),
                    r.form.clone(),
                    r.outcome.clone(),
                    r.resources.to_string(),
                    r.candidates.clone(),
                    r.evidence.clone(),
                    String::new(),
                ]
            }),
    )?);
    Ok(out)
}

/// The stored summary of a plan.
pub fn plan_summary(state: &State, plan_id: i64) -> Result<PlanSummary> {
    let text = state.plan_text(plan_id, "summary_json")?;
    serde_json::from_str(&text)
        .map_err(|e| Error::runtime(format!("plan {plan_id}: stored summary unreadable: {e}")))
}

/// Writes every report of a plan into `dir`.
pub fn write_reports(
    state: &State,
    plan_id: i64,
    report: &crate::config::ReportConfig,
) -> Result<Vec<PathBuf>> {
    let (dir, bom) = (report.dir.as_path(), report.csv_bom);
    std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create report folder", dir, e))?;
    let summary = plan_summary(state, plan_id)?;
    let mapping = mapping_rows(state, plan_id)?;
    let mut written = Vec::new();

    let p = dir.join("mapping.csv");
    write_atomic(
        &p,
        &with_bom(
            bom,
            csv_bytes(&MappingRow::HEADER, mapping.iter().map(MappingRow::cells))?,
        ),
    )?;
    written.push(p);

    let p = dir.join("mapping-todo.csv");
    write_atomic(&p, &with_bom(bom, mapping_todo(&mapping)?))?;
    written.push(p);

    let p = dir.join("changes.csv");
    write_changes(state, plan_id, &p, bom)?;
    written.push(p);

    let p = dir.join("summary.json");
    let doc = json!({ "plan": summary });
    write_atomic(&p, serde_json::to_string_pretty(&doc)?.as_bytes())?;
    written.push(p);

    let p = dir.join("report.html");
    let homes = home_rows(state, plan_id)?;
    let ab_homes = crate::addressbooks::home_rows(state, plan_id)?;
    let diffs = example_diffs(state, plan_id)?;
    let provision: Vec<serde_json::Value> = match report_rows::provision_json(&state.conn, plan_id)?
    {
        Some(text) => serde_json::from_str(&text)?,
        None => Vec::new(),
    };
    let links = link_rows(state, plan_id)?;
    write_atomic(
        &p,
        html(
            &summary, &mapping, &homes, &ab_homes, &diffs, &provision, &links,
        )
        .as_bytes(),
    )?;
    written.push(p);
    Ok(written)
}

/// Writes changes.csv (every planned property change, with the resource's path after its home
/// moves), streamed row by row: a large store has millions of changed properties.
fn write_changes(state: &State, plan_id: i64, p: &Path, bom: bool) -> Result<()> {
    let tmp = p.with_extension("tmp-principal-reconciler");
    let file =
        std::fs::File::create(&tmp).map_err(|e| Error::io("cannot write report", &tmp, e))?;
    let mut file = std::io::BufWriter::new(file);
    if bom {
        std::io::Write::write_all(&mut file, BOM)
            .map_err(|e| Error::io("cannot write report", &tmp, e))?;
    }
    let mut w = csv::Writer::from_writer(file);
    let csv_err = |e: csv::Error| Error::runtime(format!("{}: {e}", tmp.display()));
    w.write_record([
        "resource",
        "line",
        "property",
        "old_value",
        "new_value",
        "resource_after_adoption",
    ])
    .map_err(csv_err)?;
    let moves = home_moves(state, plan_id)?;
    report_rows::for_each_change(&state.conn, plan_id, |c| {
        let after = path_after_adoption(&moves, &c.rel_path);
        let cells = [
            c.rel_path,
            c.line.to_string(),
            c.property,
            c.old_value,
            c.new_value,
            after,
        ];
        w.write_record(cells.iter().map(|c| cell(c)))
            .map_err(csv_err)
    })?;
    let mut inner = w
        .into_inner()
        .map_err(|e| Error::runtime(format!("{}: {e}", tmp.display())))?;
    std::io::Write::flush(&mut inner).map_err(|e| Error::io("cannot write report", &tmp, e))?;
    drop(inner);
    std::fs::rename(&tmp, p).map_err(|e| Error::io("cannot write report", p, e))?;
    Ok(())
}

fn home_rows(state: &State, plan_id: i64) -> Result<Vec<[String; 4]>> {
    Ok(report_rows::home_rows(&state.conn, plan_id)?
        .into_iter()
        .map(|h| [h.rel_path, h.layout, h.outcome, h.new_guid])
        .collect())
}

/// How many dropbox link changes the HTML report lists (changes.csv has them all).
const LINK_ROWS: i64 = 500;

/// (total, first rows) of the planned X-APPLE-DROPBOX / ATTACH changes: resource, line, old, new.
fn link_rows(state: &State, plan_id: i64) -> Result<(i64, Vec<Vec<String>>)> {
    let (total, rows) = report_rows::link_changes(&state.conn, plan_id, LINK_ROWS)?;
    let rows = rows
        .into_iter()
        .map(|c| vec![c.rel_path, c.line.to_string(), c.old_value, c.new_value])
        .collect();
    Ok((total, rows))
}

/// (resource, [(line, old logical line, new logical line)]) for the first few changed resources.
type Diff = (String, Vec<(i64, String, String)>);

fn example_diffs(state: &State, plan_id: i64) -> Result<Vec<Diff>> {
    Ok(
        report_rows::example_diffs(&state.conn, plan_id, EXAMPLE_DIFFS as i64)?
            .into_iter()
            .map(|(p, lines)| {
                let lines = lines
                    .into_iter()
                    .map(|l| (l.line, l.old_line, l.new_line))
                    .collect();
                (p, lines)
            })
            .collect(),
    )
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const OUTCOME_COLOURS: [(&str, &str); 6] = [
    ("ambiguous", "#d9822b"),
    ("unmatched", "#c23030"),
    ("mapped", "#0f9960"),
    ("unchanged", "#5c7080"),
    ("external", "#8a9ba8"),
    ("acknowledged", "#b3a369"),
];

fn chart(summary: &PlanSummary) -> String {
    let max = summary
        .by_outcome
        .values()
        .copied()
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    // One 30-pixel row per outcome, 10 pixels of margin at both ends.
    let height = 20 + 30 * OUTCOME_COLOURS.len();
    let mut svg = format!(
        r#"<svg id="outcome-chart" role="img" aria-label="Addresses by outcome" width="520" height="{height}" viewBox="0 0 520 {height}">"#,
    );
    for (i, (name, colour)) in OUTCOME_COLOURS.iter().enumerate() {
        let n = summary.by_outcome.get(*name).copied().unwrap_or(0);
        let w = (n as f64 / max * 330.0).round();
        let y = 10 + i * 30;
        let _ = write!(
            svg,
            r#"<text x="95" y="{ty}" text-anchor="end">{name}</text><rect class="bar" data-outcome="{name}" x="105" y="{y}" width="{w}" height="22" fill="{colour}"/><text x="{tx}" y="{ty}">{n}</text>"#,
            ty = y + 16,
            tx = 111.0 + w,
        );
    }
    svg.push_str("</svg>");
    svg
}

fn table(
    id: &str,
    header: &[&str],
    rows: impl Iterator<Item = Vec<String>>,
    classes: Option<usize>,
) -> String {
    let mut t = format!(r#"<table id="{id}" class="sortable"><thead><tr>"#);
    for h in header {
        let _ = write!(t, "<th>{}</th>", esc(h));
    }
    t.push_str("</tr></thead><tbody>");
    let mut n = 0;
    for r in rows {
        n += 1;
        match classes.and_then(|c| r.get(c)) {
            Some(c) => {
                let _ = write!(t, r#"<tr class="o-{}">"#, esc(c));
            }
            None => t.push_str("<tr>"),
        }
        for c in &r {
            let _ = write!(t, "<td>{}</td>", esc(c));
        }
        t.push_str("</tr>");
    }
    if n == 0 {
        let _ = write!(
            t,
            r#"<tr class="empty"><td colspan="{}">none</td></tr>"#,
            header.len()
        );
    }
    t.push_str("</tbody></table>");
    t
}

fn html(
    summary: &PlanSummary,
    mapping: &[MappingRow],
    homes: &[[String; 4]],
    ab_homes: &[[String; 4]],
    diffs: &[Diff],
    provision: &[serde_json::Value],
    links: &(i64, Vec<Vec<String>>),
) -> String {
    let mut body = String::new();
    html_overview(&mut body, summary);
    html_needs_decision(&mut body, mapping);
    html_store(&mut body, summary, homes, ab_homes);
    html_links_and_databases(&mut body, summary, links);
    html_provision(&mut body, provision);
    html_every_address(&mut body, mapping);
    html_example_diffs(&mut body, summary, diffs);

    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>principal-reconciler — plan {id}</title>
<style>{CSS}</style></head>
<body>{body}
<footer>Written by principal-reconciler {version}. Click a column heading to sort.</footer>
<script>{JS}</script></body></html>
"#,
        id = summary.plan_id,
        version = env!("CARGO_PKG_VERSION"),
    )
}

/// The page's header: the plan, its figures, warnings and the chart of outcomes.
fn html_overview(body: &mut String, summary: &PlanSummary) {
    let o = |k: &str| summary.by_outcome.get(k).copied().unwrap_or(0);
    let _ = write!(
        body,
        r#"<header><h1>principal-reconciler — plan {id}</h1><p>{created} · store <code>{store}</code> ({kind}) · directory <code>{dir}</code></p></header>"#,
        id = summary.plan_id,
        created = esc(&summary.created_at),
        store = esc(&summary.store_path),
        kind = esc(&summary.store_kind),
        dir = esc(&summary.directory_origin),
    );
    body.push_str(r#"<section class="figures">"#);
    for (label, value) in [
        ("resources scanned", summary.resources_scanned.to_string()),
        ("resources to change", summary.resources_changed.to_string()),
        (
            "properties to change",
            summary.properties_changed.to_string(),
        ),
        ("ambiguous addresses", o("ambiguous").to_string()),
        ("unmatched addresses", o("unmatched").to_string()),
        ("problems", summary.problems.len().to_string()),
    ] {
        let _ = write!(
            body,
            r#"<div class="fig"><b>{}</b><span>{}</span></div>"#,
            esc(&value),
            esc(label)
        );
    }
    body.push_str("</section>");
    for w in &summary.warnings {
        let _ = write!(body, r#"<p class="warning">⚠ {}</p>"#, esc(w));
    }
    let _ = write!(
        body,
        "<section><h2>Addresses by outcome</h2>{}</section>",
        chart(summary)
    );
}

/// The ambiguous and unmatched addresses, first.
fn html_needs_decision(body: &mut String, mapping: &[MappingRow]) {
    let needs: Vec<&MappingRow> = mapping
        .iter()
        .filter(|r| r.outcome == "ambiguous" || r.outcome == "unmatched")
        .collect();
    let _ = write!(
        body,
        "<section><h2>Needs a decision ({})</h2><p>Ambiguous addresses are never rewritten: settle them in <code>[rewrite] mapping_file</code> (<code>mapping-todo.csv</code> beside this page has a row for each, ready to fill in). Unmatched ones stay as they are (people who left, typos): a <code>-</code> in the file acknowledges a person who left.</p>{}</section>",
        needs.len(),
        table(
            "needs-decision",
            &["old value", "form", "outcome", "rule", "evidence", "candidates", "resources"],
            needs.iter().map(|r| vec![
                r.old_value.clone(),
                r.form.clone(),
                r.outcome.clone(),
                r.rule.clone(),
                r.evidence.clone(),
                r.candidates.clone(),
                r.resources.to_string()
            ]),
            Some(2),
        )
    );
}

/// What the store holds: problems, calendar homes, address books.
fn html_store(
    body: &mut String,
    summary: &PlanSummary,
    homes: &[[String; 4]],
    ab_homes: &[[String; 4]],
) {
    if !summary.problems.is_empty() {
        let _ = write!(
            body,
            "<section><h2>Problems ({})</h2>{}</section>",
            summary.problems.len(),
            table(
                "problems",
                &["resource", "kind", "detail"],
                summary.problems.iter().map(|p| vec![
                    p.path.clone(),
                    p.kind.clone(),
                    p.detail.clone()
                ]),
                None
            )
        );
    }
    if !homes.is_empty() {
        let _ = write!(
            body,
            "<section><h2>Calendar homes ({})</h2>{}</section>",
            homes.len(),
            table(
                "homes",
                &["home", "layout", "owner", "new GUID"],
                homes.iter().map(|h| h.to_vec()),
                Some(2)
            )
        );
    }
    if let Some(ab) = &summary.addressbooks {
        let _ = write!(
            body,
            "<section id=\"addressbooks\"><h2>Address books ({} homes)</h2><p>Root <code>{}</code>: {} cards, {} group cards naming {} members — {} cards of their own address book (never changed), {} directory records, {} people who left (acknowledged), {} nobody. {} members to rewrite in {} cards.</p>{}</section>",
            ab_homes.len(),
            esc(&ab.root),
            ab.cards,
            ab.groups,
            ab.members,
            ab.card_members,
            ab.principal_members,
            ab.acknowledged_members,
            ab.unresolved_members,
            ab.members_changed,
            ab.cards_changed,
            table(
                "addressbook-homes",
                &["home", "layout", "owner", "new GUID"],
                ab_homes.iter().map(|h| h.to_vec()),
                Some(2)
            )
        );
    }
}

/// Dropbox links that follow a moved home, and the delegate and auto-accept databases.
fn html_links_and_databases(
    body: &mut String,
    summary: &PlanSummary,
    links: &(i64, Vec<Vec<String>>),
) {
    if links.0 > 0 {
        let _ = write!(
            body,
            "<section><h2>Dropbox links ({})</h2><p>Attachments follow their home to its new GUID: the X-APPLE-DROPBOX and ATTACH values that name a moved home are pointed at the new one{}.</p>{}</section>",
            links.0,
            if links.0 as usize > links.1.len() {
                format!(" (the first {} here, all in changes.csv)", links.1.len())
            } else {
                String::new()
            },
            table(
                "links",
                &["resource", "line", "old value", "new value"],
                links.1.iter().cloned(),
                None
            )
        );
    }
    if !summary.databases.is_empty() {
        let _ = write!(
            body,
            "<section><h2>Delegates and auto-accept</h2><p>Rows whose GUIDs match nobody are kept as they are.</p>{}</section>",
            table(
                "databases",
                &["database", "kind", "rows", "rows rewritten", "unmatched", "duplicates dropped"],
                summary.databases.iter().map(|d| vec![
                    d.path.clone(),
                    d.kind.clone(),
                    d.rows.to_string(),
                    d.changes.to_string(),
                    d.unmatched.to_string(),
                    d.dropped.to_string()
                ]),
                None
            )
        );
    }
}

/// Directory records without a principal.
fn html_provision(body: &mut String, provision: &[serde_json::Value]) {
    if !provision.is_empty() {
        let field =
            |f: &serde_json::Value, k: &str| f[k].as_str().map(str::to_string).unwrap_or_default();
        let _ = write!(
            body,
            "<section><h2>Provisioning ({})</h2><p>Directory records the calendar server will not give a principal; <code>provision --apply</code> fixes those marked fix.</p>{}</section>",
            provision.len(),
            table(
                "provision",
                &["GUID", "short name", "full name", "type", "problem", "severity", "detail", "action"],
                provision.iter().map(|f| vec![
                    field(f, "guid"),
                    field(f, "short_name"),
                    field(f, "full_name"),
                    field(f, "type"),
                    field(f, "problem"),
                    field(f, "severity"),
                    field(f, "detail"),
                    field(f, "action")
                ]),
                None
            )
        );
    }
}

/// Every address and how it resolved.
fn html_every_address(body: &mut String, mapping: &[MappingRow]) {
    let _ = write!(
        body,
        "<section><h2>Every address ({})</h2>{}</section>",
        mapping.len(),
        table(
            "mapping",
            &[
                "old value",
                "form",
                "outcome",
                "rule",
                "new value",
                "new short name",
                "full name",
                "type",
                "resources"
            ],
            mapping.iter().map(|r| vec![
                r.old_value.clone(),
                r.form.clone(),
                r.outcome.clone(),
                r.rule.clone(),
                r.new_value.clone(),
                r.new_short_name.clone(),
                r.new_full_name.clone(),
                r.record_type.clone(),
                r.resources.to_string()
            ]),
            Some(2),
        )
    );
}

/// Example changes, as line diffs.
fn html_example_diffs(body: &mut String, summary: &PlanSummary, diffs: &[Diff]) {
    let _ = write!(
        body,
        "<section><h2>Example changes ({} of {} resources)</h2>",
        diffs.len(),
        summary.resources_changed
    );
    for (path, lines) in diffs {
        let _ = write!(body, r#"<div class="diff"><h3>{}</h3><pre>"#, esc(path));
        for (line, old, new) in lines {
            // Line 0: a server property (extended attribute) of the resource, not a line of it.
            let line = if *line == 0 {
                "attr".to_string()
            } else {
                line.to_string()
            };
            let _ = write!(
                body,
                "<span class=\"ln\">{line}</span><del>- {}</del>\n<span class=\"ln\"></span><ins>+ {}</ins>\n",
                esc(old),
                esc(new)
            );
        }
        body.push_str("</pre></div>");
    }
    body.push_str("</section>");
}

const CSS: &str = r#"
body{font:14px/1.45 -apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0 auto;max-width:1200px;padding:1em 2em;color:#182026}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccd;padding-bottom:.2em}
code{background:#f0f2f5;padding:0 .3em;border-radius:3px}
.figures{display:flex;flex-wrap:wrap;gap:.8em}.fig{background:#f5f8fa;border:1px solid #dde;border-radius:6px;padding:.6em 1em;min-width:9em}
.fig b{display:block;font-size:1.6em}.fig span{color:#5c7080}
.warning{background:#fff4e5;border-left:4px solid #d9822b;padding:.4em .8em}
table{border-collapse:collapse;width:100%;margin:.5em 0;font-size:13px}th,td{border:1px solid #dde;padding:.25em .5em;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{background:#eef1f5;cursor:pointer;user-select:none;white-space:nowrap}th.asc::after{content:" ▲"}th.desc::after{content:" ▼"}
tr.o-ambiguous td:nth-child(3),tr.o-ambiguous td{background:#fff4e5}tr.o-unmatched td{background:#fdecec}tr.o-moved td{background:#eef9f3}
svg text{font-size:13px;fill:#182026}
.diff pre{background:#f8f9fb;border:1px solid #dde;padding:.5em;overflow-x:auto;font-size:12px}
del{color:#a82a2a;text-decoration:none}ins{color:#0d8050;text-decoration:none}.ln{display:inline-block;width:3em;color:#8a9ba8}
footer{margin-top:2em;color:#8a9ba8;font-size:12px}
"#;

const JS: &str = r#"
(function(){
  function key(td){var t=td?td.textContent:'';var n=Number(t);return t!==''&&!isNaN(n)?n:t.toLowerCase();}
  document.querySelectorAll('table.sortable').forEach(function(table){
    table.querySelectorAll('th').forEach(function(th,col){
      th.addEventListener('click',function(){
        var asc=!th.classList.contains('asc');
        table.querySelectorAll('th').forEach(function(h){h.classList.remove('asc','desc');});
        th.classList.add(asc?'asc':'desc');
        var body=table.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
        rows.sort(function(a,b){var x=key(a.cells[col]),y=key(b.cells[col]);return (x<y?-1:x>y?1:0)*(asc?1:-1);});
        rows.forEach(function(r){body.appendChild(r);});
      });
    });
    table.setAttribute('data-sortable','ready');
  });
})();
"#;

/// Writes a stored plan's reports; only then is the plan complete (appliable). A plan whose
/// reports could not be written is marked failed, with the reason, and can never be applied.
pub fn finish_plan(
    state: &State,
    plan_id: i64,
    report: &crate::config::ReportConfig,
) -> Result<()> {
    use crate::state::PlanStatus;
    match write_reports(state, plan_id, report) {
        Ok(_) => state.set_plan_status(plan_id, PlanStatus::Complete, ""),
        Err(e) => {
            let _ = state.set_plan_status(plan_id, PlanStatus::Failed, &e.message);
            Err(e.context(format!(
                "plan {plan_id} was not finished (its reports could not be written) and can never be applied; fix this and run `plan` again"
            )))
        }
    }
}
