//! verify — a calverify for migrations: checks the store against the current directory and lists
//! what is still wrong, by kind, with paths. It reports and never deletes.
//!
//! Problem kinds:
//! - `unresolved-address` — an internal address that names no current record (people who left);
//!   `dark-organizer` when it is an ORGANIZER (scheduling goes nowhere); `ambiguous-address` when it
//!   names several;
//! - `not-canonical` — an address of a current record not in the configured form, compared
//!   exactly, case included, for ORGANIZER / ATTENDEE / VOTER (the server would answer 403
//!   `valid-attendee-change` when the event is edited);
//! - `organizer-mismatch` — copies of one UID that name different organizers;
//! - `orphan-home` / `home-not-adopted` — a home whose folder names no current record, or an old
//!   GUID or layout that maps to one;
//! - `dropbox-home-missing` — an X-APPLE-DROPBOX or ATTACH link into `/calendars/.../dropbox/` (path
//!   or URL of any host) naming a home the store does not have: the attachment answers 404;
//! - `malformed`, `unreadable`, `symlink` — resources that are not calendar objects (or cards);
//! - address books: the same home kinds for address-book homes, and `member-not-canonical` /
//!   `unresolved-member` — a group member that names a record by an old GUID, or names no card
//!   of its address book and no current record;
//! - from the doctor: `owner`, `mode`, `md5-stale` (every `getcontentmd5` attribute, long or short
//!   name), `match-etags-stale` (a `scheduling-match-etags` that does not name the current ETag:
//!   CalendarServer 2.5 refuses every edit with 412), `leftover`.

use crate::address::{CalAddress, Guid};
// Only to hand on to the database store's verify, which still takes the command context.
use crate::config::{Config, StoreKind};
use crate::directory::Directory;
use crate::error::Result;
use crate::finding::Finding;
use crate::ical::{self, dropbox::HomeRef};
use crate::mapping::{self, Mapper, Observed, Verdict};
use crate::progress::{NoProgress, Progress};
use crate::store::{self, HomeLayout, Item};
use std::collections::{BTreeMap, HashMap, HashSet};

/// How many problems of one kind the terminal summary lists.
const LISTED: usize = 8;

/// One problem as `verify --json` lists it: kind first (one row of verify.csv).
#[derive(serde::Serialize)]
struct Listed<'a> {
    kind: &'a str,
    path: &'a str,
    detail: &'a str,
}

fn kind_first<S: serde::Serializer>(
    problems: &[Finding],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(problems.iter().map(|p| Listed {
        kind: &p.kind,
        path: &p.path,
        detail: &p.detail,
    }))
}

#[derive(Clone, Debug, Default, serde::Serialize)]
/// What `verify` found: problems that keep the exit code at 1, and notes.
pub struct VerifyReport {
    /// Resources read.
    pub resources: u64,
    /// Calendar homes found.
    pub homes: u64,
    /// Problems per kind.
    pub by_kind: BTreeMap<String, u64>,
    /// Every problem, in the order found (kinds as counted in `by_kind`, e.g. `not-canonical`,
    /// `home-not-adopted`, `malformed`; the path of the resource or home it is about).
    #[serde(serialize_with = "kind_first")]
    pub problems: Vec<Finding>,
    /// Things worth knowing that are not problems (e.g. resources without an MD5 attribute).
    pub notes: BTreeMap<String, u64>,
}

impl VerifyReport {
    pub(crate) fn add(&mut self, kind: &str, path: &str, detail: String) {
        *self.by_kind.entry(kind.to_string()).or_default() += 1;
        self.problems.push(Finding::new(path, kind, detail));
    }
}

/// Checks the store as configured against the current directory: the database store's own
/// check, or [`verify_files`].
pub fn verify(progress: &dyn Progress, cfg: &Config, current: &Directory) -> Result<VerifyReport> {
    if cfg.store.kind == StoreKind::CalendarserverPg {
        return crate::db::verify::verify(progress, cfg, current);
    }
    verify_files(progress, cfg, current)
}

/// The mapper's verdict on an address (and the value it would write), asked once per address key.
pub(crate) fn memo_resolver<'m>(
    mapper: &'m Mapper<'_>,
) -> impl FnMut(&CalAddress) -> (Verdict, Option<String>) + 'm {
    let mut memo: HashMap<String, (Verdict, Option<String>)> = HashMap::new();
    move |addr: &CalAddress| {
        memo.entry(addr.key())
            .or_insert_with(|| {
                let r = mapper.resolve(addr, &Observed::default());
                (r.outcome, r.new_value)
            })
            .clone()
    }
}

/// Checks a file store (calendars, address books and the doctor's findings) against the current
/// directory, reporting its walk to `progress`.
pub fn verify_files(
    progress: &dyn Progress,
    cfg: &Config,
    current: &Directory,
) -> Result<VerifyReport> {
    let old = Directory::default();
    let mapper = Mapper::new(cfg, current, &old)?;
    let mut resolve = memo_resolver(&mapper);
    let mut report = VerifyReport::default();
    let mut organizers: Organizers = HashMap::new();
    let mut homes_present: HashSet<HomeRef> = HashSet::new();
    let mut links: Vec<(String, ical::FoundLink)> = Vec::new();
    let bar = progress.start("verifying", None);
    store::walk_with(
        &cfg.store,
        store::WalkOptions { xattrs: false },
        // `bar` counts the resources delivered (the walker's own count includes homes).
        &crate::progress::NoBar,
        |_, bytes| ical::scan(bytes),
        |item| {
            if !matches!(item, Item::Home(_)) {
                bar.inc(1);
            }
            match item {
                Item::Problem(p) => report.add(&p.kind, &p.path, p.detail),
                Item::Home(h) => {
                    report.homes += 1;
                    homes_present.insert(crate::plan::home_ref(&h));
                    let addr = crate::plan::home_address(&h);
                    match resolve(&addr) {
                        (Verdict::Unchanged, _) if h.layout == HomeLayout::Hashed => {}
                        (Verdict::Acknowledged, _) => {}
                        (Verdict::Unchanged | Verdict::Mapped, Some(v)) => report.add(
                            "home-not-adopted",
                            &h.rel_path,
                            format!(
                                "belongs to {v}; `apply` moves it to the hashed home of that GUID"
                            ),
                        ),
                        _ => report.add(
                            "orphan-home",
                            &h.rel_path,
                            format!("{} names no current record", h.id),
                        ),
                    }
                }
                Item::Resource(res, Err(e)) => {
                    report.add("malformed", &res.rel_path, e.to_string())
                }
                Item::Resource(res, Ok(info)) => {
                    report.resources += 1;
                    for l in &info.links {
                        links.push((format!("{}:{}", res.rel_path, l.line), l.clone()));
                    }
                    check_resource(
                        &mut report,
                        &mapper,
                        &mut resolve,
                        &mut organizers,
                        &res.rel_path,
                        &info,
                    );
                }
            }
            Ok(())
        },
    )?;
    bar.finish();
    dropbox_links(&mut report, &links, &homes_present, &mapper);
    address_books(progress, cfg, current, &mut report)?;
    if cfg.store.kind == StoreKind::CalendarserverFs {
        let doctor = store::doctor::run(
            &cfg.store,
            &store::doctor::DoctorOptions { fix: false },
            &NoProgress,
        )?;
        for f in doctor.findings {
            match f.kind.as_str() {
                // Without the attribute the server falls back to an inode/size/mtime ETag: not an error.
                "md5-missing" => *report.notes.entry(f.kind).or_default() += 1,
                // Already reported by the walk above.
                "symlink" | "unreadable" => {}
                _ => report.add(&f.kind, &f.path, f.detail),
            }
        }
    }
    report
        .problems
        .sort_by(|a, b| (&a.kind, &a.path).cmp(&(&b.kind, &b.path)));
    Ok(report)
}

/// UIDs seen so far with their ORGANIZER (key) and where: copies must agree.
pub(crate) type Organizers = HashMap<String, (String, String)>;

/// Checks one calendar object's addresses against the directory, and its ORGANIZER against other
/// copies of the same UID (shared by the file and the database stores).
pub(crate) fn check_resource(
    report: &mut VerifyReport,
    mapper: &Mapper<'_>,
    resolve: &mut dyn FnMut(&CalAddress) -> (Verdict, Option<String>),
    organizers: &mut Organizers,
    rel_path: &str,
    info: &ical::CalendarInfo,
) {
    for f in &info.addresses {
        let addr = mapping::parse_found(&f.value);
        match &addr {
            CalAddress::Other(_) => continue,
            CalAddress::Mailto(_) if !mapper.is_internal(addr.domain().unwrap_or("")) => continue,
            _ => {}
        }
        let at = format!("{rel_path}:{}", f.line);
        match resolve(&addr) {
            (Verdict::Unchanged | Verdict::Mapped, Some(v))
                if compared_exactly(&f.property) && v != f.value =>
            {
                report.add(
                    "not-canonical",
                    &at,
                    not_canonical(&f.property, &f.value, &v),
                )
            }
            (Verdict::Unchanged, _) => {}
            (Verdict::Mapped, Some(v)) => report.add(
                "not-canonical",
                &at,
                format!("{} {} should be {v}", f.property, f.value),
            ),
            (Verdict::External | Verdict::Acknowledged, _) => {}
            (Verdict::Ambiguous, _) => report.add(
                "ambiguous-address",
                &at,
                format!(
                    "{} {} names several current records; settle it in [rewrite] mapping_file",
                    f.property, f.value
                ),
            ),
            _ if f.property == "ORGANIZER" => report.add(
                "dark-organizer",
                &at,
                format!(
                    "ORGANIZER {} names no current record: scheduling for this event goes nowhere",
                    f.value
                ),
            ),
            _ => report.add(
                "unresolved-address",
                &at,
                format!("{} {} names no current record", f.property, f.value),
            ),
        }
    }
    if let (Some(uid), Some(org)) = (&info.uid, &info.organizer) {
        let key = mapping::parse_found(org).key();
        match organizers.get(uid) {
            Some((first, path)) if *first != key => report.add(
                "organizer-mismatch",
                rel_path,
                format!("UID {uid}: ORGANIZER {org} here, {first} in {path}"),
            ),
            Some(_) => {}
            None => {
                organizers.insert(uid.clone(), (key, rel_path.to_string()));
            }
        }
    }
}

/// Properties whose value CalendarServer compares as a string with the one it would write
/// (`urn:uuid:` + the GUID as the directory spells it, upper case for Open Directory): any other
/// spelling of the same principal, case included, gets 403 `valid-attendee-change` or a
/// CANCEL + REQUEST pair when the event is edited.
fn compared_exactly(property: &str) -> bool {
    matches!(property, "ORGANIZER" | "ATTENDEE" | "VOTER")
}

fn not_canonical(property: &str, value: &str, canonical: &str) -> String {
    if value.eq_ignore_ascii_case(canonical) {
        format!("{property} {value} should be {canonical} (the server compares the value exactly, case included)")
    } else {
        format!("{property} {value} should be {canonical}")
    }
}

/// Reports the dropbox links that name a home the store does not have. A home counts under
/// either of its URLs: `/calendars/__uids__/<GUID>/` and, for a current record, the 1.x
/// `/calendars/<type>/<short>/` one.
fn dropbox_links(
    report: &mut VerifyReport,
    links: &[(String, ical::FoundLink)],
    present: &HashSet<HomeRef>,
    mapper: &Mapper<'_>,
) {
    let mut known: HashMap<&HomeRef, bool> = HashMap::new();
    for (at, link) in links {
        let exists = *known.entry(&link.home).or_insert_with(|| {
            present.contains(&link.home) || {
                let r = mapper.resolve(&link.home.owner(), &Observed::default());
                match (r.outcome, r.target) {
                    (Verdict::Mapped | Verdict::Unchanged, Some(p)) => {
                        let other = match &link.home {
                            HomeRef::Uid(_) => HomeRef::Name {
                                kind: p.kind,
                                short: p.short_name.clone(),
                            },
                            HomeRef::Name { .. } => HomeRef::Uid(p.guid.to_string()),
                        };
                        // The other URL names the same home only when it is this record's.
                        (link.home.is_uid_of(&p.guid) || matches!(link.home, HomeRef::Name { .. }))
                            && present.contains(&other)
                    }
                    _ => false,
                }
            }
        });
        if !exists {
            report.add(
                "dropbox-home-missing",
                at,
                format!(
                    "{} {} points into {}, a home this store does not have",
                    link.property, link.value, link.home
                ),
            );
        }
    }
}

/// `verify` over the address books: homes kept under an old GUID (or naming nobody), members
/// that name an old GUID or resolve to nobody, cards that are not one vCard. Adds to `report`.
fn address_books(
    progress: &dyn Progress,
    cfg: &Config,
    current: &Directory,
    report: &mut VerifyReport,
) -> Result<()> {
    let Some(root) = store::addressbook::locate(&cfg.store)? else {
        return Ok(());
    };
    let bar = progress.start("verifying address books", None);
    let s = store::addressbook::survey_reporting(&root, &*bar)?;
    bar.finish();
    let old = Directory::default();
    let mapper = Mapper::new(cfg, current, &old)?;
    let mut memo: HashMap<String, mapping::Resolution> = HashMap::new();
    let mut resolve = |addr: &CalAddress| {
        memo.entry(addr.key())
            .or_insert_with(|| mapper.resolve(addr, &Observed::default()))
            .clone()
    };
    for p in &s.problems {
        report.add(&p.kind, &p.path, p.detail.clone());
    }
    report.resources += s.cards;
    report.homes += s.homes.len() as u64;
    for h in &s.homes {
        let r = resolve(&crate::plan::home_address(h));
        let current_guid = Guid::parse(&h.id);
        match (&r.target, r.outcome) {
            (_, Verdict::Acknowledged) => {}
            (Some(p), Verdict::Mapped | Verdict::Unchanged)
                if h.layout == HomeLayout::Hashed && current_guid.as_ref() == Some(&p.guid) => {}
            (Some(p), Verdict::Mapped | Verdict::Unchanged) => report.add(
                "home-not-adopted",
                &h.rel_path,
                format!(
                    "address-book home of {}; `apply` moves it to that GUID's hashed home",
                    p.guid
                ),
            ),
            _ => report.add(
                "orphan-home",
                &h.rel_path,
                format!("address-book home {} names no current record", h.id),
            ),
        }
    }
    for g in &s.groups {
        for (m, c) in g.members.iter().zip(&g.is_card) {
            if *c {
                continue;
            }
            let Some(uid) = m.uid() else {
                continue; // not a urn:uuid: member: nothing this tool reads
            };
            let at = format!("{}:{}", g.rel_path, m.line);
            let r = Guid::parse(uid).map(|g| resolve(&CalAddress::UrnUuid(g)));
            match r.as_ref().map(|r| (r.outcome, r.target.as_ref())) {
                Some((Verdict::Mapped | Verdict::Unchanged, Some(p)))
                    if Guid::parse(uid).as_ref() == Some(&p.guid) => {}
                Some((Verdict::Mapped | Verdict::Unchanged, Some(p))) => report.add(
                    "member-not-canonical",
                    &at,
                    format!("X-ADDRESSBOOKSERVER-MEMBER {} names {}, whose GUID is now {}", m.value, p.short_name, p.guid),
                ),
                Some((Verdict::Acknowledged, _)) => {}
                Some((Verdict::Ambiguous, _)) => report.add(
                    "unresolved-member",
                    &at,
                    format!("X-ADDRESSBOOKSERVER-MEMBER {} names several current records", m.value),
                ),
                _ => report.add(
                    "unresolved-member",
                    &at,
                    format!("X-ADDRESSBOOKSERVER-MEMBER {} names no card of this address book and no current record", m.value),
                ),
            }
        }
    }
    Ok(())
}

/// The terminal summary.
pub fn human(r: &VerifyReport) -> String {
    let mut out = format!("Verified {} resources in {} homes: ", r.resources, r.homes);
    if r.problems.is_empty() {
        out.push_str("no problems.\n");
    } else {
        out.push_str(&format!("{} problems.\n", r.problems.len()));
        for (kind, n) in &r.by_kind {
            out.push_str(&format!("  {kind}: {n}\n"));
            for p in r.problems.iter().filter(|p| &p.kind == kind).take(LISTED) {
                out.push_str(&format!("    {}  {}\n", p.path, p.detail));
            }
            if *n as usize > LISTED {
                out.push_str(&format!(
                    "    … {} more in verify.csv\n",
                    *n as usize - LISTED
                ));
            }
        }
    }
    for (k, n) in &r.notes {
        out.push_str(&format!("Note: {n} resources have {k} (the server falls back to another ETag; `doctor --fix` sets it).\n"));
    }
    out
}

/// Writes verify.csv into the report folder.
pub fn write_csv(
    r: &VerifyReport,
    report: &crate::config::ReportConfig,
) -> Result<std::path::PathBuf> {
    // `path:line` as two columns, so a spreadsheet can sort and filter by file.
    let split = |at: &str| match at.rsplit_once(':') {
        Some((path, line)) if !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit()) => {
            (path.to_string(), line.to_string())
        }
        _ => (at.to_string(), String::new()),
    };
    crate::report::write_csv(
        &report.dir.join("verify.csv"),
        &["kind", "path", "line", "detail"],
        r.problems.iter().map(|p| {
            let (path, line) = split(&p.path);
            vec![p.kind.clone(), path, line, p.detail.clone()]
        }),
        report.csv_bom,
    )
}

/// The plan whose runs in force carried out only part of it (a staged migration), if any: the
/// plan of the latest apply run that is not rolled back.
pub fn staged(cfg: &Config) -> Result<Option<crate::stage::Tally>> {
    if cfg.store.kind == StoreKind::CalendarserverPg
        || !cfg.state.path.join(crate::state::DB_FILE).exists()
    {
        return Ok(None);
    }
    let state = crate::state::State::open_existing(&cfg.state.path)?;
    match state.plan_in_force()? {
        Some(id) => Ok(Some(crate::stage::progress(&state, id)?).filter(|p| p.partial())),
        None => Ok(None),
    }
}
