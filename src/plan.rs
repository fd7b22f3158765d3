//! The change plan: for every resource the exact new bytes the rewriter produces, its old hash and
//! every line it changes, stored in the state database so `apply` runs exactly what was reviewed.
//! Nothing in the store changes; nothing is written outside `state.path` and `report.dir`.

use crate::address::{CalAddress, Guid, Principal, RecordType};
use crate::config::Config;
use crate::directory::{self, Directory};
use crate::error::{Error, Result};
use crate::ical::{self, dropbox::HomeRef, RewriteOptions};
use crate::mapping::{self, Mapper, Mapping, Observed};
use crate::progress::Progress;
use crate::state::plan_rows::{self, PlanRows};
use crate::state::{now_rfc3339, State};
use crate::store::write::sha256_hex;
use crate::store::{self, Home, Item};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::RwLock;

pub use crate::finding::Finding;
pub use crate::mapping::{change_rows, home_address, home_finding, HomeFinding};

/// The result of planning, as summarised for humans and scripts.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PlanSummary {
    /// Row id of the plan in the state database.
    pub plan_id: i64,
    /// When the plan was made (RFC 3339).
    pub created_at: String,
    /// `[store] kind` word (e.g. `calendarserver-fs`).
    pub store_kind: String,
    /// The store's data root as planned.
    pub store_path: String,
    /// Where the current directory came from (LDAP URL or LDIF file).
    pub directory_origin: String,
    /// Current directory records per record type word (`user`, `group`, ...).
    pub directory_counts: BTreeMap<String, usize>,
    /// Records read from the old directory exports.
    pub old_records: usize,
    /// Warnings from loading the directories and from the mapper (unused overrides included).
    pub warnings: Vec<String>,
    /// Resources read from the store.
    pub resources_scanned: u64,
    /// Resources the plan rewrites.
    pub resources_changed: u64,
    /// Properties (ORGANIZER, ATTENDEE, ...) the plan rewrites.
    pub properties_changed: u64,
    /// Resolved addresses per outcome word.
    pub by_outcome: BTreeMap<String, usize>,
    /// Resolved addresses per rule word.
    pub by_rule: BTreeMap<String, usize>,
    /// Keys of the addresses that resolved `ambiguous`.
    pub ambiguous: Vec<String>,
    /// Keys of the addresses that resolved `unmatched`.
    pub unmatched: Vec<String>,
    /// Calendar homes per home outcome (`current`, `moved`, `ambiguous`, `unmatched`).
    pub homes: BTreeMap<String, usize>,
    /// Resources that could not be planned (malformed, unreadable, ...).
    pub problems: Vec<Finding>,
    /// Delegate and auto-accept databases and what the plan changes in them.
    #[serde(default)]
    pub databases: Vec<DatabaseSummary>,
    /// Provisioning findings by problem (when `[provision]` names an access group or augments).
    #[serde(default)]
    pub provision: BTreeMap<String, usize>,
    /// The address books, when the store has some (`[store] addressbook_root`, or 3.x).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addressbooks: Option<crate::addressbooks::AddressBookSummary>,
}

/// What a plan changes in one principal database.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct DatabaseSummary {
    /// Path of the SQLite database (`calendaruserproxy.sqlite` or `resourceinfo.sqlite`).
    pub path: String,
    /// Which database it is: `proxy` or `resourceinfo`.
    pub kind: String,
    /// Rows read from it.
    pub rows: usize,
    /// Rows the plan rewrites.
    pub changes: usize,
    /// GUID values that match no current record (their rows are kept as they are).
    pub unmatched: usize,
    /// Rows the rewrite would duplicate, which the plan deletes.
    pub dropped: usize,
}

/// Loads the current and old directories as configured.
pub fn load_directories(cfg: &Config) -> Result<(Directory, Directory)> {
    let current = directory::load_current(&cfg.directory)?;
    let old = directory::load_old(&cfg.old_directory.files)?;
    Ok((current, old))
}

/// How many changed resources keep their whole old and new lines (for the report's diffs).
const EXAMPLE_LINES: u64 = 50;

pub use crate::state::plan_rows::pack;

/// Observations of the first pass over the store.
#[derive(Default)]
struct Survey {
    observed: BTreeMap<String, (CalAddress, Observed)>,
    homes: Vec<Home>,
    problems: Vec<Finding>,
    resources: u64,
}

/// Counts one resource's addresses into the observations; returns the keys it holds.
pub(crate) fn observe(
    observed: &mut BTreeMap<String, (CalAddress, Observed)>,
    info: &ical::CalendarInfo,
) -> BTreeSet<String> {
    let mut here = BTreeSet::new();
    // Old CUAs too (when they are addresses at all): they name principals the mapping must know.
    let old_cuas = info
        .old_cuas
        .iter()
        .filter(|f| !matches!(mapping::parse_found(&f.value), CalAddress::Other(_)));
    for f in info.addresses.iter().chain(old_cuas) {
        let addr = mapping::parse_found(&f.value);
        let key = addr.key();
        let entry = observed
            .entry(key.clone())
            .or_insert_with(|| (addr, Observed::default()));
        if let Some(e) = &f.email {
            *entry.1.emails.entry(e.trim().to_lowercase()).or_default() += 1;
        }
        if here.insert(key) {
            entry.1.resources += 1;
        }
    }
    here
}

/// Counts the addresses found in a resource's principal properties (inbox `originator` /
/// `recipient` hrefs) into the observations, like those of its calendar data.
fn observe_hrefs(
    observed: &mut BTreeMap<String, (CalAddress, Observed)>,
    hrefs: &[String],
    here: &mut BTreeSet<String>,
) {
    for h in hrefs {
        let addr = mapping::parse_found(h);
        let key = addr.key();
        let entry = observed
            .entry(key.clone())
            .or_insert_with(|| (addr, Observed::default()));
        if here.insert(key) {
            entry.1.resources += 1;
        }
    }
}

/// Resolves addresses as the walk meets them (rules 1–5, which need no view of the whole store),
/// shared by the worker threads. Rule 6 (store evidence) is settled after the walk.
pub(crate) struct LazyResolver<'m, 'a> {
    mapper: &'m Mapper<'a>,
    principals: Vec<Principal>,
    by_guid: HashMap<Guid, usize>,
    memo: RwLock<HashMap<String, Option<usize>>>,
}

impl<'m, 'a> LazyResolver<'m, 'a> {
    pub(crate) fn new(mapper: &'m Mapper<'a>, current: &Directory) -> Self {
        let principals: Vec<Principal> = current.records.iter().map(|r| r.principal()).collect();
        let by_guid = principals
            .iter()
            .enumerate()
            .map(|(i, p)| (p.guid.clone(), i))
            .collect();
        LazyResolver {
            mapper,
            principals,
            by_guid,
            memo: RwLock::new(HashMap::new()),
        }
    }

    /// Whether the walk left this address unresolved.
    pub(crate) fn unresolved(&self, key: &str) -> bool {
        !matches!(
            self.memo.read().map(|m| m.get(key).copied()),
            Ok(Some(Some(_)))
        )
    }
}

impl ical::Resolve for LazyResolver<'_, '_> {
    fn resolve(&self, addr: &CalAddress) -> Option<&Principal> {
        let key = addr.key();
        if let Some(hit) = self.memo.read().ok().and_then(|m| m.get(&key).copied()) {
            return hit.map(|i| &self.principals[i]);
        }
        let r = self.mapper.resolve(addr, &Observed::default());
        let idx = match r.outcome {
            mapping::Verdict::Mapped | mapping::Verdict::Unchanged => {
                r.target.and_then(|p| self.by_guid.get(&p.guid).copied())
            }
            _ => None,
        };
        if let Ok(mut m) = self.memo.write() {
            m.insert(key, idx);
        }
        idx.map(|i| &self.principals[i])
    }

    /// While walking, the homes are not all known yet: a home is taken to move when its owner
    /// resolves to another GUID. [`FinalResolver::moved_home`] decides once they are; resources
    /// whose links it decides otherwise are read again.
    fn moved_home(&self, home: &HomeRef) -> Option<Guid> {
        let p = ical::Resolve::resolve(self, &home.owner())?;
        (!home.is_uid_of(&p.guid)).then(|| p.guid.clone())
    }
}

/// The `/calendars/...` URL segment that names a home in the store.
pub fn home_ref(h: &Home) -> HomeRef {
    match h.layout {
        store::HomeLayout::Users => HomeRef::Name {
            kind: h
                .rel_path
                .split('/')
                .nth(1)
                .and_then(RecordType::from_collection)
                .unwrap_or(RecordType::User),
            short: h.id.clone(),
        },
        _ => HomeRef::uid(&h.id),
    }
}

/// Resolves once the whole store is known: addresses as the finished mapping says (rule 6
/// included), addresses it never saw (old CUAs that were not addresses, ...) as the walk did;
/// dropbox links into a home `apply` adopts name the GUID it moves to.
struct FinalResolver<'r, 'm, 'a> {
    map: HashMap<String, Principal>,
    mapping: &'r Mapping,
    lazy: &'r LazyResolver<'m, 'a>,
    /// Every home in the store by its URL: the GUID its URL becomes, if it changes.
    homes: HashMap<HomeRef, Option<Guid>>,
    /// The GUIDs homes are adopted into.
    targets: HashSet<Guid>,
}

impl<'r, 'm, 'a> FinalResolver<'r, 'm, 'a> {
    fn new(mapping: &'r Mapping, lazy: &'r LazyResolver<'m, 'a>, homes: &[Home]) -> Self {
        let mut by_ref: HashMap<HomeRef, Option<Guid>> = HashMap::new();
        let mut targets = HashSet::new();
        for h in homes {
            let f = home_finding(mapping, h);
            let adopted = f
                .new_guid
                .as_deref()
                .filter(|_| f.outcome == "moved" || h.layout != store::HomeLayout::Hashed)
                .and_then(Guid::from_any);
            let r = home_ref(h);
            if let Some(g) = &adopted {
                targets.insert(g.clone());
            }
            let to = adopted.filter(|g| !r.is_uid_of(g));
            let slot = by_ref.entry(r).or_default();
            if slot.is_none() {
                *slot = to;
            }
        }
        FinalResolver {
            map: mapping.resolver(),
            mapping,
            lazy,
            homes: by_ref,
            targets,
        }
    }
}

impl ical::Resolve for FinalResolver<'_, '_, '_> {
    fn resolve(&self, addr: &CalAddress) -> Option<&Principal> {
        let key = addr.key();
        if self.mapping.entries.contains_key(&key) {
            self.map.get(&key)
        } else {
            self.lazy.resolve(addr)
        }
    }

    /// A home in the store: where `apply` moves it. A home the store lacks (a link into a
    /// home kept under another URL, as a 1.x `/calendars/users/<short>/` one): the home its owner's
    /// GUID is adopted into, if any.
    fn moved_home(&self, home: &HomeRef) -> Option<Guid> {
        match self.homes.get(home) {
            Some(to) => to.clone(),
            None => {
                let p = self.resolve(&home.owner())?;
                self.targets.contains(&p.guid).then(|| p.guid.clone())
            }
        }
    }
}

/// A resource the walk rewrote with what it knew then.
struct Recheck {
    path: std::path::PathBuf,
    rel: String,
    sha: String,
    /// GUID-bearing addresses the walk could not resolve.
    open: BTreeSet<String>,
    /// Homes its dropbox links name.
    homes: BTreeSet<HomeRef>,
}

/// Records what a resolver answers while a pass of the plan rewrites, so that `apply` can replay
/// the same rewrite of a resource from the file itself (plans keep hashes, not new bytes).
pub(crate) struct Recorder<'r> {
    inner: &'r (dyn ical::Resolve + Sync),
    addresses: std::sync::Mutex<HashMap<String, Principal>>,
    homes: std::sync::Mutex<HashMap<String, Guid>>,
}

impl<'r> Recorder<'r> {
    pub(crate) fn new(inner: &'r (dyn ical::Resolve + Sync)) -> Self {
        Recorder {
            inner,
            addresses: Default::default(),
            homes: Default::default(),
        }
    }

    /// Stores the answers that changed something, as pass `pass` of plan `plan_id`.
    pub(crate) fn store(
        &self,
        tx: &rusqlite::Transaction<'_>,
        plan_id: i64,
        pass: i64,
    ) -> Result<()> {
        use crate::state::plan_rows::{RewriteKind, RewriteRow};
        let mut rows = Vec::new();
        let addresses = self
            .addresses
            .lock()
            .map_err(|_| Error::runtime("resolver poisoned"))?;
        for (k, p) in addresses.iter() {
            rows.push(RewriteRow {
                pass,
                kind: RewriteKind::Address,
                key: k.clone(),
                value: serde_json::to_string(p)?,
            });
        }
        let homes = self
            .homes
            .lock()
            .map_err(|_| Error::runtime("resolver poisoned"))?;
        for (k, g) in homes.iter() {
            rows.push(RewriteRow {
                pass,
                kind: RewriteKind::Home,
                key: k.clone(),
                value: g.as_str().to_string(),
            });
        }
        plan_rows::insert_rewrites(tx, plan_id, &rows)
    }
}

impl ical::Resolve for Recorder<'_> {
    fn resolve(&self, addr: &CalAddress) -> Option<&Principal> {
        let p = self.inner.resolve(addr)?;
        if let Ok(mut m) = self.addresses.lock() {
            m.entry(addr.key()).or_insert_with(|| p.clone());
        }
        Some(p)
    }

    fn moved_home(&self, home: &HomeRef) -> Option<Guid> {
        let g = self.inner.moved_home(home)?;
        if let Ok(mut m) = self.homes.lock() {
            m.entry(home.to_string()).or_insert_with(|| g.clone());
        }
        Some(g)
    }
}

/// Stores one planned calendar resource: hashes, how to recompute it (`pass`), its changes.
fn insert_planned(
    rows: &mut PlanRows<'_>,
    rel: &str,
    old_sha: &str,
    p: &Planned,
    pass: i64,
    keep_lines: bool,
) -> Result<()> {
    rows.insert(
        &plan_rows::ResourceRow {
            rel_path: rel,
            old_sha256: old_sha,
            new_sha256: &p.new_sha,
            new_bytes: None,
            rewrite_pass: Some(pass),
            attr_edits: p.attr_edits.as_deref(),
        },
        &change_rows(&p.changes, keep_lines),
    )
}

/// A resource the plan changes: its changed properties (lines and attributes), new bytes and
/// attribute edits.
struct Planned {
    changes: Vec<ical::Change>,
    new_sha: String,
    attr_edits: Option<String>,
}

impl Planned {
    /// `None` when neither the bytes nor an attribute change.
    fn of(rw: ical::Rewritten, attrs: store::props::PrincipalScan) -> Option<Planned> {
        if rw.changes.is_empty() && attrs.edits.is_empty() {
            return None;
        }
        let mut changes = rw.changes;
        changes.extend(attrs.changes);
        Some(Planned {
            changes,
            new_sha: sha256_hex(&rw.bytes),
            attr_edits: store::props::edits_json(&attrs.edits),
        })
    }
}

/// The principal properties (`originator`, `recipient`) of a resource, planned with `resolver`:
/// read only for inbox items of a CalendarServer file store (see [`store::props`]).
fn plan_attributes(
    cfg: &Config,
    path: &std::path::Path,
    collection: &str,
    resolver: &dyn ical::Resolve,
    opts: &RewriteOptions,
) -> std::result::Result<store::props::PrincipalScan, String> {
    if cfg.store.kind != crate::config::StoreKind::CalendarserverFs
        || !store::props::reads_attributes(collection)
    {
        return Ok(Default::default());
    }
    let attrs = store::xattrs::read_all(path)
        .map_err(|e| format!("cannot read extended attributes: {e}"))?;
    Ok(store::props::scan_principals(&attrs, &|value| {
        let addr = CalAddress::parse(value);
        resolver
            .resolve(&addr)
            .map(|p| p.canonical_address(opts.form, &addr))
    }))
}

/// The collection folder of a resource's relative path (`.../inbox/x.ics` → `inbox`).
fn collection_of(rel: &str) -> &str {
    rel.rsplit('/').nth(1).unwrap_or("")
}

/// A plan's running counts: the resources and the properties it changes.
#[derive(Default)]
struct Counts {
    changed: u64,
    props: u64,
}

/// What the walk's worker threads make of one resource.
struct Read {
    info: ical::CalendarInfo,
    planned: Option<Planned>,
    /// Principal hrefs of its attributes (inbox items).
    hrefs: Vec<String>,
    /// Why its attributes could not be read.
    unreadable: Option<String>,
}

/// What the walk gathers beside the rows it stores.
#[derive(Default)]
struct Walked {
    survey: Survey,
    seen_problem: BTreeSet<String>,
    recheck: Vec<Recheck>,
    counts: Counts,
}

impl Walked {
    /// Notes a problem (once per path).
    fn problem(&mut self, path: String, kind: String, detail: String) {
        if self.seen_problem.insert(path.clone()) {
            self.survey.problems.push(Finding {
                path,
                kind,
                detail,
                fixed: None,
            });
        }
    }

    /// Takes one item of the walk.
    fn take(
        &mut self,
        item: Item<std::result::Result<Read, ical::IcalError>>,
        rows: &mut PlanRows<'_>,
        lazy: &LazyResolver<'_, '_>,
    ) -> Result<()> {
        match item {
            Item::Home(h) => self.survey.homes.push(h),
            Item::Problem(p) => self.problem(p.path, p.kind, p.detail),
            Item::Resource(res, Err(e)) => {
                self.problem(res.rel_path, "malformed".into(), e.to_string())
            }
            Item::Resource(res, Ok(read)) => self.take_resource(res, read, rows, lazy)?,
        }
        Ok(())
    }

    /// Counts a resource's addresses, notes it for a second reading if the finished mapping may
    /// rewrite it otherwise, and stores what the walk planned for it.
    fn take_resource(
        &mut self,
        res: store::Resource,
        read: Read,
        rows: &mut PlanRows<'_>,
        lazy: &LazyResolver<'_, '_>,
    ) -> Result<()> {
        self.survey.resources += 1;
        if let Some(detail) = read.unreadable {
            self.problem(res.rel_path.clone(), "unreadable".into(), detail);
        }
        let observed = &mut self.survey.observed;
        let mut keys = observe(observed, &read.info);
        observe_hrefs(observed, &read.hrefs, &mut keys);
        let open: BTreeSet<String> = keys
            .into_iter()
            .filter(|k| observed[k].0.guid().is_some() && lazy.unresolved(k))
            .collect();
        let homes: BTreeSet<HomeRef> = read.info.links.iter().map(|l| l.home.clone()).collect();
        if !open.is_empty() || !homes.is_empty() {
            self.recheck.push(Recheck {
                path: res.path.clone(),
                rel: res.rel_path.clone(),
                sha: res.sha256.clone(),
                open,
                homes,
            });
        }
        if let Some(p) = read.planned {
            self.counts.changed += 1;
            self.counts.props += p.changes.len() as u64;
            let keep = self.counts.changed <= EXAMPLE_LINES;
            insert_planned(rows, &res.rel_path, &res.sha256, &p, 0, keep)?;
        }
        Ok(())
    }
}

/// The walk: every resource is read once, its addresses counted and rewritten with what rules
/// 1–5 resolve. Resources naming a GUID left unresolved are noted: once the whole store is
/// known, rule 6 (store evidence) may resolve it, and only those are read again.
fn walk_store(
    progress: &dyn Progress,
    cfg: &Config,
    rows: &mut PlanRows<'_>,
    lazy: &LazyResolver<'_, '_>,
    walk_resolver: &Recorder<'_>,
    opts: &RewriteOptions,
) -> Result<Walked> {
    let mut walked = Walked::default();
    // A bar with a total and an ETA: the store's folders listed first (see crate::precount).
    let total = progress
        .shown()
        .then(|| crate::precount::calendar_resources(&cfg.store))
        .flatten();
    let bar = progress.start("planning", total);
    store::walk_with(
        &cfg.store,
        store::WalkOptions { xattrs: false },
        &*bar,
        |res, bytes| -> std::result::Result<_, ical::IcalError> {
            let (info, rw) = ical::scan_and_rewrite(bytes, walk_resolver, opts)?;
            let (attrs, unreadable) =
                match plan_attributes(cfg, &res.path, &res.collection, walk_resolver, opts) {
                    Ok(a) => (a, None),
                    Err(e) => (Default::default(), Some(e)),
                };
            let hrefs = attrs.hrefs.clone();
            Ok(Read {
                info,
                planned: Planned::of(rw, attrs),
                hrefs,
                unreadable,
            })
        },
        |item| walked.take(item, rows, lazy),
    )?;
    bar.finish();
    Ok(walked)
}

/// Address books: their home owners and the group members that may be principals are
/// resolved with the rest.
fn survey_addressbooks(
    progress: &dyn Progress,
    cfg: &Config,
    mapper: &Mapper<'_>,
    walked: &mut Walked,
) -> Result<Option<crate::addressbooks::Survey>> {
    let Some(root) = store::addressbook::locate(&cfg.store)? else {
        return Ok(None);
    };
    let bar = progress.start("planning address books", None);
    let ab = crate::addressbooks::survey(&root, &*bar)?;
    bar.finish();
    crate::addressbooks::observe(&ab, mapper, &mut walked.survey.observed);
    for p in &ab.problems {
        walked.problem(p.path.clone(), p.kind.clone(), p.detail.clone());
    }
    walked.survey.resources += ab.cards;
    Ok(Some(ab))
}

/// The second reading: the resources the finished mapping (rule 6, the homes `apply` adopts)
/// rewrites otherwise than the walk did are rewritten again with `final_resolver`.
fn reread_late(
    cfg: &Config,
    walked: &mut Walked,
    rows: &mut PlanRows<'_>,
    lazy: &LazyResolver<'_, '_>,
    resolver: &FinalResolver<'_, '_, '_>,
    final_resolver: &Recorder<'_>,
    opts: &RewriteOptions,
) -> Result<()> {
    let late: BTreeSet<String> = resolver
        .map
        .keys()
        .filter(|k| lazy.unresolved(k))
        .cloned()
        .collect();
    let moved_otherwise = |homes: &BTreeSet<HomeRef>| {
        homes
            .iter()
            .any(|h| ical::Resolve::moved_home(lazy, h) != ical::Resolve::moved_home(resolver, h))
    };
    let counts = &mut walked.counts;
    for Recheck { path, rel, sha, .. } in walked
        .recheck
        .iter()
        .filter(|r| !r.open.is_disjoint(&late) || moved_otherwise(&r.homes))
    {
        let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read", path, e))?;
        if sha256_hex(&bytes) != *sha {
            return Err(Error::runtime(format!(
                "{} changed while it was being planned; plan again with the calendar server stopped",
                path.display()
            )));
        }
        let rw = ical::rewrite(&bytes, final_resolver, opts)
            .map_err(|e| Error::runtime(format!("{}: {e}", path.display())))?;
        let attrs = plan_attributes(cfg, path, collection_of(rel), final_resolver, opts)
            .map_err(|e| Error::runtime(format!("{}: {e}", path.display())))?;
        let before = rows.remove(rel)?;
        if before > 0 {
            counts.changed -= 1;
            counts.props -= before;
        }
        if let Some(p) = Planned::of(rw, attrs) {
            counts.changed += 1;
            counts.props += p.changes.len() as u64;
            insert_planned(rows, rel, sha, &p, 1, false)?;
        }
    }
    Ok(())
}

/// Stores the calendar homes and what their owners resolved to; returns them counted by outcome.
fn store_homes(
    tx: &rusqlite::Transaction<'_>,
    plan_id: i64,
    mapping: &Mapping,
    homes: &[Home],
) -> Result<BTreeMap<String, usize>> {
    let mut homes_count: BTreeMap<String, usize> = BTreeMap::new();
    let found: Vec<(&Home, HomeFinding)> = homes
        .iter()
        .map(|h| (h, home_finding(mapping, h)))
        .collect();
    let layouts: Vec<String> = homes
        .iter()
        .map(|h| {
            Ok(serde_json::to_value(h.layout)?
                .as_str()
                .unwrap_or_default()
                .to_string())
        })
        .collect::<Result<_>>()?;
    for (_, f) in &found {
        *homes_count.entry(f.outcome.to_string()).or_default() += 1;
    }
    plan_rows::insert_homes(
        tx,
        plan_id,
        plan_rows::HomeTable::Calendar,
        found
            .iter()
            .zip(&layouts)
            .map(|((h, f), layout)| plan_rows::HomeRow {
                rel_path: &h.rel_path,
                layout,
                old_id: &h.id,
                outcome: f.outcome,
                new_guid: f.new_guid.as_deref(),
            }),
    )?;
    Ok(homes_count)
}

/// Opens the plan's row in `tx`; returns its id.
fn begin(
    tx: &rusqlite::Transaction<'_>,
    cfg: &Config,
    current: &Directory,
    created_at: &str,
    store_path: &std::path::Path,
) -> Result<i64> {
    plan_rows::begin_plan(
        tx,
        &plan_rows::NewPlan {
            created_at,
            store_kind: serde_json::to_value(cfg.store.kind)?
                .as_str()
                .unwrap_or_default(),
            store_path: &store_path.to_string_lossy(),
            address_form: serde_json::to_value(cfg.rewrite.address_form)?
                .as_str()
                .unwrap_or_default(),
            directory: &current.origin,
        },
    )
}

/// The mapping of every address the walk met, the home owners' included.
fn map_all(mapper: &Mapper<'_>, walked: &mut Walked, started: std::time::Instant) -> Mapping {
    // Home owners are principals too: make sure each one is resolved.
    let survey = &mut walked.survey;
    for h in &survey.homes {
        let addr = home_address(h);
        survey
            .observed
            .entry(addr.key())
            .or_insert_with(|| (addr, Observed::default()));
    }
    let mapping = Mapping::build(mapper, &survey.observed);
    tracing::info!(
        "walk: {} resources, {} distinct addresses, {} to change, at {:.2?}",
        survey.resources,
        survey.observed.len(),
        walked.counts.changed,
        started.elapsed()
    );
    mapping
}

/// What a plan stored, for its summary.
struct Stored {
    plan_id: i64,
    created_at: String,
    store_path: std::path::PathBuf,
    walked: Walked,
    mapping: Mapping,
    homes: BTreeMap<String, usize>,
    problems: Vec<Finding>,
    databases: Vec<DatabaseSummary>,
    provision: BTreeMap<String, usize>,
    addressbooks: Option<crate::addressbooks::AddressBookSummary>,
}

/// The summary of a file store's plan.
fn summary(
    cfg: &Config,
    (current, old): (&Directory, &Directory),
    mapper: &Mapper<'_>,
    s: Stored,
) -> Result<PlanSummary> {
    let mut warnings = current.warnings.clone();
    warnings.extend(old.warnings.iter().cloned());
    warnings.extend(mapper.warnings.iter().cloned());
    warnings.extend(mapper.unused_overrides(&s.mapping));
    let counts = MappingCounts::of(&s.mapping);
    Ok(PlanSummary {
        plan_id: s.plan_id,
        created_at: s.created_at,
        store_kind: serde_json::to_value(cfg.store.kind)?
            .as_str()
            .unwrap_or_default()
            .to_string(),
        store_path: s.store_path.to_string_lossy().into_owned(),
        directory_origin: current.origin.clone(),
        directory_counts: directory_counts(current),
        old_records: old.records.len(),
        warnings,
        resources_scanned: s.walked.survey.resources,
        resources_changed: s.walked.counts.changed,
        properties_changed: s.walked.counts.props,
        by_outcome: counts.by_outcome,
        by_rule: counts.by_rule,
        ambiguous: counts.ambiguous,
        unmatched: counts.unmatched,
        homes: s.homes,
        problems: s.problems,
        databases: s.databases,
        provision: s.provision,
        addressbooks: s.addressbooks,
    })
}

/// Builds a plan: survey, mapping, rewrite of every resource, stored in the state database.
pub fn build(
    progress: &dyn Progress,
    cfg: &Config,
    current: &Directory,
    old: &Directory,
    provision: Option<&ProvisionFindings>,
) -> Result<PlanSummary> {
    if cfg.store.kind == crate::config::StoreKind::CalendarserverPg {
        return crate::db::plan::plan(progress, cfg, current, old, provision);
    }
    let mapper = Mapper::new(cfg, current, old)?;
    let started = std::time::Instant::now();
    let opts = RewriteOptions {
        form: cfg.rewrite.address_form,
    };
    let lazy = LazyResolver::new(&mapper, current);
    // What the walk's resolver answers: apply replays it (the plan keeps no new bytes).
    let walk_resolver = Recorder::new(&lazy);

    let mut state = State::open(&cfg.state.path)?;
    let created_at = now_rfc3339();
    let store_path = cfg
        .store
        .path
        .canonicalize()
        .unwrap_or_else(|_| cfg.store.path.clone());
    let tx = state.conn.transaction()?;
    let plan_id = begin(&tx, cfg, current, &created_at, &store_path)?;
    let (mut walked, mapping, ab_summary) = {
        let mut rows = PlanRows::new(&tx, plan_id)?;
        let mut walked = walk_store(progress, cfg, &mut rows, &lazy, &walk_resolver, &opts)?;
        let addressbooks = survey_addressbooks(progress, cfg, &mapper, &mut walked)?;
        let mapping = map_all(&mapper, &mut walked, started);
        let resolver = FinalResolver::new(&mapping, &lazy, &walked.survey.homes);
        let final_resolver = Recorder::new(&resolver);
        let w = &mut walked;
        reread_late(cfg, w, &mut rows, &lazy, &resolver, &final_resolver, &opts)?;
        walk_resolver.store(&tx, plan_id, 0)?;
        final_resolver.store(&tx, plan_id, 1)?;
        let ab_summary = match &addressbooks {
            Some(ab) => Some(crate::addressbooks::plan(
                &tx,
                plan_id,
                ab,
                &mapping,
                &mut rows,
                &mut walked.counts.changed,
                &mut walked.counts.props,
                EXAMPLE_LINES,
            )?),
            None => None,
        };
        rows.finish()?;
        (walked, mapping, ab_summary)
    };
    insert_mappings(&tx, plan_id, &mapping)?;
    let homes = store_homes(&tx, plan_id, &mapping, &walked.survey.homes)?;
    let mut problems = std::mem::take(&mut walked.survey.problems);
    problems.sort_by(|a, b| a.path.cmp(&b.path));
    tracing::info!(
        "rewrite pass: {} resources to change, at {:.2?}",
        walked.counts.changed,
        started.elapsed()
    );
    let databases = plan_databases(&tx, plan_id, cfg, &mapper)?;
    let provision = plan_provision(&tx, plan_id, provision)?;
    store_problems(&tx, plan_id, &problems)?;
    let summary = summary(
        cfg,
        (current, old),
        &mapper,
        Stored {
            plan_id,
            created_at,
            store_path,
            walked,
            mapping,
            homes,
            problems,
            databases,
            provision,
            addressbooks: ab_summary,
        },
    )?;
    plan_rows::set_summary(&tx, plan_id, &serde_json::to_string(&summary)?)?;
    tx.commit()?;
    // The plan was one transaction: its write-ahead log is as large as the plan; give it back.
    plan_rows::checkpoint(&state);
    tracing::info!("plan {plan_id} stored at {:.2?}", started.elapsed());
    Ok(summary)
}

/// The plan's problems (`plan_problems`), for the file and the database store alike.
pub(crate) fn store_problems(
    tx: &rusqlite::Connection,
    plan_id: i64,
    problems: &[Finding],
) -> Result<()> {
    plan_rows::insert_problems(
        tx,
        plan_id,
        problems.iter().map(|p| plan_rows::ProblemRow {
            path: &p.path,
            kind: &p.kind,
            detail: &p.detail,
        }),
    )
}

/// The current directory's records counted by kind (the summary's `directory_counts`).
pub(crate) fn directory_counts(current: &Directory) -> BTreeMap<String, usize> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in &current.records {
        *counts.entry(r.kind.as_str().to_string()).or_default() += 1;
    }
    counts
}

/// The summary's counts of the mapping: by outcome and rule, the ambiguous and the unmatched.
pub(crate) struct MappingCounts {
    pub(crate) by_outcome: BTreeMap<String, usize>,
    pub(crate) by_rule: BTreeMap<String, usize>,
    pub(crate) ambiguous: Vec<String>,
    pub(crate) unmatched: Vec<String>,
}

impl MappingCounts {
    /// Counts `mapping`.
    pub(crate) fn of(mapping: &Mapping) -> MappingCounts {
        let keys = |v: mapping::Verdict| -> Vec<String> {
            mapping
                .with_outcome(v)
                .into_iter()
                .map(String::from)
                .collect()
        };
        MappingCounts {
            by_outcome: mapping
                .counts_by_outcome()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            by_rule: mapping
                .counts_by_rule()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            ambiguous: keys(mapping::Verdict::Ambiguous),
            unmatched: keys(mapping::Verdict::Unmatched),
        }
    }
}

/// Stores how every address resolved (the report's mapping table).
pub(crate) fn insert_mappings(
    tx: &rusqlite::Transaction<'_>,
    plan_id: i64,
    mapping: &Mapping,
) -> Result<()> {
    plan_rows::insert_mappings(
        tx,
        plan_id,
        mapping.entries.iter().map(|(key, r)| {
            let t = r.target.as_ref();
            plan_rows::MappingRow {
                old_value: key,
                form: r.form,
                outcome: r.outcome.as_str(),
                rule: r.rule.as_str(),
                evidence: &r.evidence,
                new_guid: t.map(|p| p.guid.to_string()),
                new_short: t.map(|p| p.short_name.as_str()),
                new_full_name: t.and_then(|p| p.full_name.as_deref()),
                record_type: t.map(|p| p.kind.as_str()),
                new_value: r.new_value.as_deref(),
                resources: r.resources as i64,
                candidates: r.candidates.join("; "),
            }
        }),
    )
}

/// Plans the rewrite of the delegate and auto-accept databases and stores it with the plan.
pub(crate) fn plan_databases(
    tx: &rusqlite::Transaction<'_>,
    plan_id: i64,
    cfg: &Config,
    mapper: &Mapper<'_>,
) -> Result<Vec<DatabaseSummary>> {
    let resolve = mapper.guid_resolver();
    let mut out = Vec::new();
    for path in cfg.principal_databases() {
        let bytes = std::fs::read(&path).map_err(|e| Error::io("cannot read", &path, e))?;
        let plan = crate::provision::proxy::plan_db_rewrite(&path, &resolve)?;
        let kind = serde_json::to_value(plan.kind)?
            .as_str()
            .unwrap_or_default()
            .to_string();
        plan_rows::insert_database(
            tx,
            plan_id,
            &plan_rows::DatabaseRow {
                path: &path.to_string_lossy(),
                kind: &kind,
                old_sha256: &sha256_hex(&bytes),
                changes: plan.changes.len() as i64,
                unmatched: plan.unmatched.len() as i64,
                dropped: plan.dropped.len() as i64,
                plan_json: &serde_json::to_string(&plan)?,
            },
        )?;
        out.push(DatabaseSummary {
            path: path.to_string_lossy().into_owned(),
            kind,
            rows: plan.rows,
            changes: plan.changes.len(),
            unmatched: plan.unmatched.len(),
            dropped: plan.dropped.len(),
        });
    }
    Ok(out)
}

/// Provisioning findings as a plan stores them (`[provision]` names an access group or an
/// augments file); the command layer computes them (see `provision::analyse`).
pub struct ProvisionFindings {
    /// The findings, as JSON (the plan's `provision_json`).
    pub json: String,
    /// Findings by problem word (the summary's `provision`).
    pub counts: BTreeMap<String, usize>,
}

/// Stores the provisioning findings, when there are some; returns their counts by problem.
pub(crate) fn plan_provision(
    tx: &rusqlite::Transaction<'_>,
    plan_id: i64,
    findings: Option<&ProvisionFindings>,
) -> Result<BTreeMap<String, usize>> {
    let Some(f) = findings else {
        return Ok(BTreeMap::new());
    };
    plan_rows::set_provision(tx, plan_id, &f.json)?;
    Ok(f.counts.clone())
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Error {
        Error::runtime(format!("JSON: {e}"))
    }
}

/// After a successful plan: drops the planned changes of plans older than the newest `keep`
/// ([`crate::prune`]); the freed pages are reused by the next plan, so the file stops growing.
pub fn prune_after_plan(state: &mut State, keep: usize) -> Result<Vec<i64>> {
    Ok(crate::prune::prune_plans(state, keep, false)?
        .into_iter()
        .map(|p| p.plan_id)
        .collect())
}
