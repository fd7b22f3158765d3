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
use crate::state::{now_rfc3339, State};
use crate::store::write::sha256_hex;
use crate::store::{self, Home, Item};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::RwLock;

pub use crate::finding::Finding;

/// What a home's owner resolved to.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HomeFinding {
    /// The calendar home.
    pub home: Home,
    /// `current` (owner GUID unchanged), `moved` (maps to another GUID), `ambiguous` or `unmatched`.
    pub outcome: &'static str,
    /// The current owner's GUID; None when ambiguous or unmatched.
    pub new_guid: Option<String>,
}

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

/// The planned bytes as stored (zlib: calendar text packs three to four times smaller).
pub fn pack(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::ZlibEncoder::new(
        Vec::with_capacity(bytes.len() / 2),
        flate2::Compression::fast(),
    );
    let _ = z.write_all(bytes);
    z.finish().unwrap_or_default()
}

/// The planned bytes back, checked against their planned SHA-256.
pub fn unpack(blob: &[u8], sha256: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::with_capacity(blob.len() * 4);
    flate2::read::ZlibDecoder::new(blob)
        .read_to_end(&mut out)
        .map_err(|e| {
            Error::runtime(format!(
                "state database: a planned resource is damaged: {e}"
            ))
        })?;
    if sha256_hex(&out) != sha256 {
        return Err(Error::runtime(
            "state database: a planned resource does not match its hash; plan again",
        ));
    }
    Ok(out)
}

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

/// Stores one planned resource and its changed properties.
#[allow(clippy::too_many_arguments)]
pub(crate) fn insert_resource(
    ins_res: &mut rusqlite::Statement<'_>,
    ins_chg: &mut rusqlite::Statement<'_>,
    plan_id: i64,
    rel: &str,
    old_sha: &str,
    new_sha: &str,
    packed: &[u8],
    changes: &[ical::Change],
    keep_lines: bool,
    attr_edits: Option<&str>,
) -> Result<()> {
    ins_res.execute(rusqlite::params![
        plan_id,
        rel,
        old_sha,
        new_sha,
        packed,
        changes.len() as i64,
        attr_edits
    ])?;
    for c in changes {
        // Whole logical lines are kept for the report's example diffs only.
        ins_chg.execute(rusqlite::params![
            plan_id,
            rel,
            c.line as i64,
            c.property,
            c.old_value,
            c.new_value,
            if keep_lines { c.old_line.as_str() } else { "" },
            if keep_lines { c.new_line.as_str() } else { "" }
        ])?;
    }
    Ok(())
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
        let mut ins = tx.prepare(
            "INSERT OR REPLACE INTO plan_rewrites (plan_id, pass, kind, key, value) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let addresses = self
            .addresses
            .lock()
            .map_err(|_| Error::runtime("resolver poisoned"))?;
        for (k, p) in addresses.iter() {
            ins.execute(rusqlite::params![
                plan_id,
                pass,
                "address",
                k,
                serde_json::to_string(p)?
            ])?;
        }
        let homes = self
            .homes
            .lock()
            .map_err(|_| Error::runtime("resolver poisoned"))?;
        for (k, g) in homes.iter() {
            ins.execute(rusqlite::params![plan_id, pass, "home", k, g.as_str()])?;
        }
        Ok(())
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

/// One pass of a plan's resolver as stored: answers the questions the plan asked, as it did.
#[derive(Default)]
struct Replay {
    addresses: HashMap<String, Principal>,
    homes: HashMap<String, Guid>,
}

impl ical::Resolve for Replay {
    fn resolve(&self, addr: &CalAddress) -> Option<&Principal> {
        self.addresses.get(&addr.key())
    }

    fn moved_home(&self, home: &HomeRef) -> Option<Guid> {
        self.homes.get(&home.to_string()).cloned()
    }
}

/// How a planned resource's new bytes are obtained.
#[derive(Clone, Debug)]
pub enum NewBytes {
    /// Stored in the plan (zlib), as plans before state schema 10 and address-book cards keep them.
    Stored(Vec<u8>),
    /// Recomputed from the file with pass N of the plan's resolver.
    Rewrite(i64),
}

/// A plan's rewrites, to recompute a resource's new bytes from its current bytes.
pub struct PlannedRewrites {
    passes: [Replay; 2],
    opts: RewriteOptions,
}

impl PlannedRewrites {
    /// Loads plan `plan_id`'s stored resolver answers.
    pub fn load(state: &State, plan_id: i64) -> Result<PlannedRewrites> {
        let form: String = state.plan_text(plan_id, "address_form")?;
        let form =
            serde_json::from_value(serde_json::Value::String(form.clone())).map_err(|_| {
                Error::runtime(format!(
                    "state database: plan {plan_id} has an unknown address form `{form}`"
                ))
            })?;
        let mut passes: [Replay; 2] = Default::default();
        let mut st = state
            .conn
            .prepare("SELECT pass, kind, key, value FROM plan_rewrites WHERE plan_id = ?1")?;
        let mut rows = st.query([plan_id])?;
        while let Some(r) = rows.next()? {
            let pass: i64 = r.get(0)?;
            let kind: String = r.get(1)?;
            let key: String = r.get(2)?;
            let value: String = r.get(3)?;
            let Some(replay) = passes.get_mut(pass as usize) else {
                return Err(Error::runtime(format!(
                    "state database: plan {plan_id} has a rewrite pass {pass} this program does not know"
                )));
            };
            if kind == "home" {
                let g = Guid::from_any(&value).ok_or_else(|| {
                    Error::runtime(format!(
                        "state database: plan {plan_id}: `{value}` is not a GUID"
                    ))
                })?;
                replay.homes.insert(key, g);
            } else {
                replay.addresses.insert(key, serde_json::from_str(&value)?);
            }
        }
        Ok(PlannedRewrites {
            passes,
            opts: RewriteOptions { form },
        })
    }

    /// The planned new bytes of a resource whose bytes are now `current`: the stored ones, or the
    /// plan's rewrite of `current`. The caller checks them against the planned hash.
    pub fn new_bytes(&self, how: &NewBytes, current: &[u8], new_sha: &str) -> Result<Vec<u8>> {
        match how {
            NewBytes::Stored(blob) => unpack(blob, new_sha),
            NewBytes::Rewrite(pass) => {
                let replay = self.passes.get(*pass as usize).ok_or_else(|| {
                    Error::runtime(format!("state database: unknown rewrite pass {pass}"))
                })?;
                Ok(ical::rewrite(current, replay, &self.opts)
                    .map_err(|e| Error::runtime(e.to_string()))?
                    .bytes)
            }
        }
    }
}

/// How plan `plan_id` obtains the new bytes of `rel`, and its attribute edits (JSON); `None` when
/// the plan does not change it.
pub fn planned_resource(
    state: &State,
    plan_id: i64,
    rel: &str,
) -> Result<Option<(NewBytes, Option<String>)>> {
    let row: Option<(Vec<u8>, Option<i64>, Option<String>)> = state
        .conn
        .query_row(
            "SELECT new_bytes, rewrite_pass, attr_edits FROM plan_resources WHERE plan_id = ?1 AND rel_path = ?2",
            rusqlite::params![plan_id, rel],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })?;
    Ok(row.map(|(blob, pass, edits)| {
        (
            match pass {
                Some(p) => NewBytes::Rewrite(p),
                None => NewBytes::Stored(blob),
            },
            edits,
        )
    }))
}

/// Writes a plan's changed properties compactly (`plan_change_rows`, texts once in
/// `plan_strings`); readers see them through the `plan_changes` view.
pub(crate) struct ChangeRows<'c> {
    plan_id: i64,
    ins_str: rusqlite::Statement<'c>,
    sel_str: rusqlite::Statement<'c>,
    ins_row: rusqlite::Statement<'c>,
    del: rusqlite::Statement<'c>,
    ids: HashMap<String, i64>,
}

impl<'c> ChangeRows<'c> {
    pub(crate) fn new(tx: &'c rusqlite::Transaction<'_>, plan_id: i64) -> Result<Self> {
        Ok(ChangeRows {
            plan_id,
            ins_str: tx.prepare("INSERT OR IGNORE INTO plan_strings (plan_id, text) VALUES (?1, ?2)")?,
            sel_str: tx.prepare("SELECT id FROM plan_strings WHERE plan_id = ?1 AND text = ?2")?,
            ins_row: tx.prepare(
                "INSERT INTO plan_change_rows (plan_id, res_id, path_id, seq, line, property_id, old_id, new_id, old_line, new_line) VALUES (?1, ?2, 0, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?,
            del: tx.prepare(
                "DELETE FROM plan_change_rows WHERE plan_id = ?1 AND path_id = 0 AND res_id = (SELECT rowid FROM plan_resources WHERE plan_id = ?1 AND rel_path = ?2)",
            )?,
            ids: HashMap::new(),
        })
    }

    fn id(&mut self, text: &str) -> Result<i64> {
        if let Some(&id) = self.ids.get(text) {
            return Ok(id);
        }
        if self.ids.len() >= 100_000 {
            // Memory stays flat on stores with many distinct values (dropbox links).
            self.ids.clear();
        }
        let id = match self.ins_str.insert(rusqlite::params![self.plan_id, text]) {
            Ok(id) => id,
            // Stored already (by the `plan_changes` view's trigger).
            Err(rusqlite::Error::StatementChangedRows(0)) => self
                .sel_str
                .query_row(rusqlite::params![self.plan_id, text], |r| r.get(0))?,
            Err(e) => return Err(e.into()),
        };
        self.ids.insert(text.to_string(), id);
        Ok(id)
    }

    /// Stores the changes of the plan_resources row `res`.
    fn insert(&mut self, res: i64, changes: &[ical::Change], keep_lines: bool) -> Result<()> {
        for (seq, c) in changes.iter().enumerate() {
            let (k, o, n) = (
                self.id(&c.property)?,
                self.id(&c.old_value)?,
                self.id(&c.new_value)?,
            );
            self.ins_row.execute(rusqlite::params![
                self.plan_id,
                res,
                seq as i64 + 1,
                c.line as i64,
                k,
                o,
                n,
                if keep_lines { c.old_line.as_str() } else { "" },
                if keep_lines { c.new_line.as_str() } else { "" }
            ])?;
        }
        Ok(())
    }

    /// Drops the changes stored for `rel` (before its plan_resources row); returns how many.
    fn remove(&mut self, rel: &str) -> Result<u64> {
        Ok(self.del.execute(rusqlite::params![self.plan_id, rel])? as u64)
    }
}

/// Stores one planned calendar resource: hashes, how to recompute it (`pass`), its changes.
#[allow(clippy::too_many_arguments)]
fn insert_planned(
    ins_res: &mut rusqlite::Statement<'_>,
    rows: &mut ChangeRows<'_>,
    plan_id: i64,
    rel: &str,
    old_sha: &str,
    p: &Planned,
    pass: i64,
    keep_lines: bool,
) -> Result<()> {
    let res = ins_res.insert(rusqlite::params![
        plan_id,
        rel,
        old_sha,
        p.new_sha,
        &[] as &[u8],
        p.changes.len() as i64,
        p.attr_edits.as_deref(),
        pass
    ])?;
    rows.insert(res, &p.changes, keep_lines)
}

/// The address a home's folder name stands for.
pub fn home_address(h: &Home) -> CalAddress {
    match h.layout {
        store::HomeLayout::Users => CalAddress::PrincipalName {
            kind: RecordType::User,
            short: h.id.clone(),
            base: None,
        },
        _ => match Guid::parse(&h.id) {
            Some(g) => CalAddress::UrnUuid(g),
            None => CalAddress::UrnXUid(h.id.clone()),
        },
    }
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

/// Builds a plan: survey, mapping, rewrite of every resource, stored in the state database.
pub fn build(
    progress: &dyn Progress,
    cfg: &Config,
    current: &Directory,
    old: &Directory,
) -> Result<PlanSummary> {
    if cfg.store.kind == crate::config::StoreKind::CalendarserverPg {
        return crate::db::plan::plan(progress, cfg, current, old);
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
    tx.execute(
        "INSERT INTO plans (created_at, store_kind, store_path, address_form, directory, status) VALUES (?1, ?2, ?3, ?4, ?5, 'building')",
        rusqlite::params![
            created_at,
            serde_json::to_value(cfg.store.kind)?.as_str().unwrap_or_default(),
            store_path.to_string_lossy(),
            serde_json::to_value(cfg.rewrite.address_form)?.as_str().unwrap_or_default(),
            current.origin,
        ],
    )?;
    let plan_id = tx.last_insert_rowid();

    // One walk: every resource is read once, its addresses counted and rewritten with what rules
    // 1–5 resolve. Resources naming a GUID left unresolved are noted: once the whole store is
    // known, rule 6 (store evidence) may resolve it, and only those are read again.
    let mut survey = Survey::default();
    let mut seen_problem = BTreeSet::new();
    let mut recheck: Vec<Recheck> = Vec::new();
    let (mut changed, mut props) = (0u64, 0u64);
    let mapping;
    let mut ab_summary = None;
    {
        let mut ins_res = tx.prepare(
            "INSERT INTO plan_resources (plan_id, rel_path, old_sha256, new_sha256, new_bytes, changes, attr_edits) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let mut ins_chg = tx.prepare(
            "INSERT INTO plan_changes (plan_id, rel_path, line, property, old_value, new_value, old_line, new_line) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut ins_cal = tx.prepare(
            "INSERT INTO plan_resources (plan_id, rel_path, old_sha256, new_sha256, new_bytes, changes, attr_edits, rewrite_pass) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut rows = ChangeRows::new(&tx, plan_id)?;
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
                let (info, rw) = ical::scan_and_rewrite(bytes, &walk_resolver, &opts)?;
                let (attrs, unreadable) =
                    match plan_attributes(cfg, &res.path, &res.collection, &walk_resolver, &opts) {
                        Ok(a) => (a, None),
                        Err(e) => (Default::default(), Some(e)),
                    };
                let hrefs = attrs.hrefs.clone();
                Ok((info, Planned::of(rw, attrs), hrefs, unreadable))
            },
            |item| {
                match item {
                    Item::Home(h) => survey.homes.push(h),
                    Item::Problem(p) => {
                        if seen_problem.insert(p.path.clone()) {
                            survey.problems.push(Finding {
                                path: p.path,
                                kind: p.kind,
                                detail: p.detail,
                                fixed: None,
                            });
                        }
                    }
                    Item::Resource(res, Err(e)) => {
                        if seen_problem.insert(res.rel_path.clone()) {
                            survey.problems.push(Finding {
                                path: res.rel_path,
                                kind: "malformed".into(),
                                detail: e.to_string(),
                                fixed: None,
                            });
                        }
                    }
                    Item::Resource(res, Ok((info, planned, hrefs, unreadable))) => {
                        survey.resources += 1;
                        if let Some(detail) = unreadable {
                            if seen_problem.insert(res.rel_path.clone()) {
                                survey.problems.push(Finding {
                                    path: res.rel_path.clone(),
                                    kind: "unreadable".into(),
                                    detail,
                                    fixed: None,
                                });
                            }
                        }
                        let mut keys = observe(&mut survey.observed, &info);
                        observe_hrefs(&mut survey.observed, &hrefs, &mut keys);
                        let open: BTreeSet<String> = keys
                            .into_iter()
                            .filter(|k| survey.observed[k].0.guid().is_some() && lazy.unresolved(k))
                            .collect();
                        let homes: BTreeSet<HomeRef> =
                            info.links.iter().map(|l| l.home.clone()).collect();
                        if !open.is_empty() || !homes.is_empty() {
                            recheck.push(Recheck {
                                path: res.path.clone(),
                                rel: res.rel_path.clone(),
                                sha: res.sha256.clone(),
                                open,
                                homes,
                            });
                        }
                        if let Some(p) = planned {
                            changed += 1;
                            props += p.changes.len() as u64;
                            insert_planned(
                                &mut ins_cal,
                                &mut rows,
                                plan_id,
                                &res.rel_path,
                                &res.sha256,
                                &p,
                                0,
                                changed <= EXAMPLE_LINES,
                            )?;
                        }
                    }
                }
                Ok(())
            },
        )?;
        bar.finish();
        // Address books: their home owners and the group members that may be principals are
        // resolved with the rest.
        let addressbooks = match store::addressbook::locate(&cfg.store)? {
            Some(root) => {
                let bar = progress.start("planning address books", None);
                let ab = crate::addressbooks::survey(&root, &*bar)?;
                bar.finish();
                crate::addressbooks::observe(&ab, &mapper, &mut survey.observed);
                for p in &ab.problems {
                    if seen_problem.insert(p.path.clone()) {
                        survey.problems.push(Finding {
                            path: p.path.clone(),
                            kind: p.kind.clone(),
                            detail: p.detail.clone(),
                            fixed: None,
                        });
                    }
                }
                survey.resources += ab.cards;
                Some(ab)
            }
            None => None,
        };
        // Home owners are principals too: make sure each one is resolved.
        for h in &survey.homes {
            let addr = home_address(h);
            survey
                .observed
                .entry(addr.key())
                .or_insert_with(|| (addr, Observed::default()));
        }
        mapping = Mapping::build(&mapper, &survey.observed);
        tracing::info!(
            "walk: {} resources, {} distinct addresses, {changed} to change, at {:.2?}",
            survey.resources,
            survey.observed.len(),
            started.elapsed()
        );
        let resolver = FinalResolver::new(&mapping, &lazy, &survey.homes);
        let final_resolver = Recorder::new(&resolver);
        let late: BTreeSet<String> = resolver
            .map
            .keys()
            .filter(|k| lazy.unresolved(k))
            .cloned()
            .collect();
        {
            let moved_otherwise = |homes: &BTreeSet<HomeRef>| {
                homes.iter().any(|h| {
                    ical::Resolve::moved_home(&lazy, h) != ical::Resolve::moved_home(&resolver, h)
                })
            };
            for Recheck { path, rel, sha, .. } in recheck
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
                let rw = ical::rewrite(&bytes, &final_resolver, &opts)
                    .map_err(|e| Error::runtime(format!("{}: {e}", path.display())))?;
                let attrs = plan_attributes(cfg, path, collection_of(rel), &final_resolver, &opts)
                    .map_err(|e| Error::runtime(format!("{}: {e}", path.display())))?;
                let before = rows.remove(rel)?;
                if before > 0 {
                    changed -= 1;
                    props -= before;
                }
                tx.execute(
                    "DELETE FROM plan_resources WHERE plan_id = ?1 AND rel_path = ?2",
                    rusqlite::params![plan_id, rel],
                )?;
                if let Some(p) = Planned::of(rw, attrs) {
                    changed += 1;
                    props += p.changes.len() as u64;
                    insert_planned(&mut ins_cal, &mut rows, plan_id, rel, sha, &p, 1, false)?;
                }
            }
        }
        walk_resolver.store(&tx, plan_id, 0)?;
        final_resolver.store(&tx, plan_id, 1)?;
        if let Some(ab) = &addressbooks {
            ab_summary = Some(crate::addressbooks::plan(
                &tx,
                plan_id,
                ab,
                &mapping,
                &mut crate::addressbooks::Inserts {
                    resources: &mut ins_res,
                    changes: &mut ins_chg,
                },
                &mut changed,
                &mut props,
                EXAMPLE_LINES,
            )?);
        }
    }

    insert_mappings(&tx, plan_id, &mapping)?;

    let mut homes_count: BTreeMap<String, usize> = BTreeMap::new();
    {
        let mut ins = tx.prepare(
            "INSERT OR REPLACE INTO plan_homes (plan_id, rel_path, layout, old_id, outcome, new_guid) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for h in &survey.homes {
            let f = home_finding(&mapping, h);
            *homes_count.entry(f.outcome.to_string()).or_default() += 1;
            ins.execute(rusqlite::params![
                plan_id,
                h.rel_path,
                serde_json::to_value(h.layout)?.as_str().unwrap_or_default(),
                h.id,
                f.outcome,
                f.new_guid
            ])?;
        }
    }

    let mut problems = survey.problems.clone();
    problems.sort_by(|a, b| a.path.cmp(&b.path));
    tracing::info!(
        "rewrite pass: {changed} resources to change, at {:.2?}",
        started.elapsed()
    );
    let databases = plan_databases(&tx, plan_id, cfg, &mapper)?;
    let provision = plan_provision(&tx, plan_id, cfg, current, old)?;
    store_problems(&tx, plan_id, &problems)?;

    let mut warnings = current.warnings.clone();
    warnings.extend(old.warnings.iter().cloned());
    warnings.extend(mapper.warnings.iter().cloned());
    warnings.extend(mapper.unused_overrides(&mapping));
    let counts = MappingCounts::of(&mapping);
    let summary = PlanSummary {
        plan_id,
        created_at,
        store_kind: serde_json::to_value(cfg.store.kind)?
            .as_str()
            .unwrap_or_default()
            .to_string(),
        store_path: store_path.to_string_lossy().into_owned(),
        directory_origin: current.origin.clone(),
        directory_counts: directory_counts(current),
        old_records: old.records.len(),
        warnings,
        resources_scanned: survey.resources,
        resources_changed: changed,
        properties_changed: props,
        by_outcome: counts.by_outcome,
        by_rule: counts.by_rule,
        ambiguous: counts.ambiguous,
        unmatched: counts.unmatched,
        homes: homes_count,
        problems,
        databases,
        provision,
        addressbooks: ab_summary,
    };
    tx.execute(
        "UPDATE plans SET summary_json = ?1 WHERE id = ?2",
        rusqlite::params![serde_json::to_string(&summary)?, plan_id],
    )?;
    tx.commit()?;
    // The plan was one transaction: its write-ahead log is as large as the plan; give it back.
    let _ = state.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
    tracing::info!("plan {plan_id} stored at {:.2?}", started.elapsed());
    Ok(summary)
}

/// The plan's problems (`plan_problems`), for the file and the database store alike.
pub(crate) fn store_problems(
    tx: &rusqlite::Connection,
    plan_id: i64,
    problems: &[Finding],
) -> Result<()> {
    let mut ins = tx.prepare(
        "INSERT INTO plan_problems (plan_id, path, kind, detail) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for p in problems {
        ins.execute(rusqlite::params![plan_id, p.path, p.kind, p.detail])?;
    }
    Ok(())
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
    let mut ins = tx.prepare(
        "INSERT INTO plan_mappings (plan_id, old_value, form, outcome, rule, evidence, new_guid, new_short, new_full_name, record_type, new_value, resources, candidates)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?;
    for (key, r) in &mapping.entries {
        let t = r.target.as_ref();
        ins.execute(rusqlite::params![
            plan_id,
            key,
            r.form,
            r.outcome.as_str(),
            r.rule.as_str(),
            r.evidence,
            t.map(|p| p.guid.to_string()),
            t.map(|p| p.short_name.clone()),
            t.and_then(|p| p.full_name.clone()),
            t.map(|p| p.kind.as_str()),
            r.new_value,
            r.resources as i64,
            r.candidates.join("; "),
        ])?;
    }
    Ok(())
}

/// Plans the rewrite of the delegate and auto-accept databases and stores it with the plan.
pub(crate) fn plan_databases(
    tx: &rusqlite::Transaction<'_>,
    plan_id: i64,
    cfg: &Config,
    mapper: &Mapper<'_>,
) -> Result<Vec<DatabaseSummary>> {
    let resolve = crate::provision::guid_resolver(mapper);
    let mut out = Vec::new();
    for path in cfg.principal_databases() {
        let bytes = std::fs::read(&path).map_err(|e| Error::io("cannot read", &path, e))?;
        let plan = crate::provision::proxy::plan_db_rewrite(&path, &resolve)?;
        let kind = serde_json::to_value(plan.kind)?
            .as_str()
            .unwrap_or_default()
            .to_string();
        tx.execute(
            "INSERT INTO plan_databases (plan_id, path, kind, old_sha256, changes, unmatched, dropped, plan_json)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            rusqlite::params![
                plan_id,
                path.to_string_lossy(),
                kind,
                sha256_hex(&bytes),
                plan.changes.len() as i64,
                plan.unmatched.len() as i64,
                plan.dropped.len() as i64,
                serde_json::to_string(&plan)?
            ],
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

/// Provisioning findings, when `[provision]` names an access group or an augments file.
pub(crate) fn plan_provision(
    tx: &rusqlite::Transaction<'_>,
    plan_id: i64,
    cfg: &Config,
    current: &Directory,
    old: &Directory,
) -> Result<BTreeMap<String, usize>> {
    if cfg.provision.access_group.is_none() && cfg.provision.augments_file.is_none() {
        return Ok(BTreeMap::new());
    }
    let report = crate::provision::analyse(cfg, current, old)?;
    tx.execute(
        "UPDATE plans SET provision_json = ?1 WHERE id = ?2",
        rusqlite::params![serde_json::to_string(&report.findings)?, plan_id],
    )?;
    let mut counts = BTreeMap::new();
    for f in &report.findings {
        *counts.entry(f.problem.to_string()).or_default() += 1;
    }
    Ok(counts)
}

pub(crate) fn home_finding(mapping: &Mapping, h: &Home) -> HomeFinding {
    let key = home_address(h).key();
    let (outcome, new_guid) = match mapping.entries.get(&key) {
        Some(r) => match (&r.target, r.outcome) {
            (Some(p), _) if Some(&p.guid) == Guid::parse(&h.id).as_ref() => {
                ("current", Some(p.guid.to_string()))
            }
            (Some(p), _) => ("moved", Some(p.guid.to_string())),
            (None, mapping::Verdict::Ambiguous) => ("ambiguous", None),
            (None, _) => ("unmatched", None),
        },
        None => ("unmatched", None),
    };
    HomeFinding {
        home: h.clone(),
        outcome,
        new_guid,
    }
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
