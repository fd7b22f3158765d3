//! Address books in a migration: what the plan finds and changes in them, the roots `apply` and
//! `rollback` work on (the journal adopts their homes: `crate::journal`), what `verify` and `scan`
//! report.
//!
//! - Homes (`addressbooks/__uids__/XX/YY/<GUID>/`) kept under an old GUID are adopted like
//!   calendar homes ([`crate::homes`]): moved to the new GUID's hashed path, or merged into a
//!   home the server already made for it (a clashing collection becoming `<name>-migrated`).
//! - Group cards name their members as `X-ADDRESSBOOKSERVER-MEMBER:urn:uuid:<uid>`. CalendarServer
//!   resolves the uid against the cards of the same address book (`ABO_MEMBERS` in the SQL store
//!   of 5.x); a uid that is no card there is kept as a "foreign member". Directory records appear
//!   as members that way (the directory gateway of 3.x gives a record's card the record's GUID as
//!   UID), so a member is rewritten only when it names no card of its address book and its uid is
//!   a GUID the mapping resolves to a record with another GUID. Card UIDs are never changed.
//! - A rewritten card gets a new `getcontentmd5` and its collection a new `getctag`
//!   ([`crate::store::write`]), exactly like a calendar resource; rollback restores it.

use crate::address::{CalAddress, Guid};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::mapping::{change_rows, home_address, home_finding, Mapper, Mapping, Observed, Verdict};
use crate::state::plan_rows::{self, PlanRows, ResourceRow};
use crate::store::addressbook::Roots;
pub use crate::store::addressbook::{survey, survey_reporting, GroupCard, Survey};
use crate::store::write::sha256_hex;
use crate::vcard::{self, Member};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// The address a member that may be a principal stands for: a `urn:uuid:` GUID that is no card.
fn principal_candidate(m: &Member, is_card: bool) -> Option<CalAddress> {
    if is_card {
        return None;
    }
    Guid::parse(m.uid()?).map(CalAddress::UrnUuid)
}

/// Adds to the plan's observations the owners of the address-book homes and the members that
/// may be principals (those the mapper resolves to one or more records, or that the mapping file
/// acknowledges as people who left: ordinary cards' uids stay out of the mapping). Each group card counts once per member it names.
pub fn observe(
    s: &Survey,
    mapper: &Mapper<'_>,
    observed: &mut BTreeMap<String, (CalAddress, Observed)>,
) {
    for h in &s.homes {
        let addr = home_address(h);
        observed
            .entry(addr.key())
            .or_insert_with(|| (addr, Observed::default()));
    }
    let mut nobody: HashSet<String> = HashSet::new();
    for g in &s.groups {
        let mut here = HashSet::new();
        for (m, c) in g.members.iter().zip(&g.is_card) {
            let Some(addr) = principal_candidate(m, *c) else {
                continue;
            };
            let key = addr.key();
            if !here.insert(key.clone()) || nobody.contains(&key) {
                continue;
            }
            if let Some(entry) = observed.get_mut(&key) {
                entry.1.resources += 1;
                continue;
            }
            let r = mapper.resolve(&addr, &Observed::default());
            if matches!(
                r.outcome,
                Verdict::Mapped | Verdict::Unchanged | Verdict::Ambiguous | Verdict::Acknowledged
            ) {
                observed.insert(
                    key,
                    (
                        addr,
                        Observed {
                            resources: 1,
                            ..Default::default()
                        },
                    ),
                );
            } else {
                nobody.insert(key);
            }
        }
    }
}

/// What a plan found and changes in the address books.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct AddressBookSummary {
    /// The address-book root (absolute).
    pub root: String,
    /// Homes by outcome (`current`, `moved`, `unmatched`, `ambiguous`).
    pub homes: BTreeMap<String, usize>,
    /// Card files read.
    pub cards: u64,
    /// Group cards (cards that name members).
    pub groups: u64,
    /// Members named by all group cards.
    pub members: u64,
    /// Members naming cards of their own address book (never changed).
    pub card_members: u64,
    /// Members naming a directory record.
    pub principal_members: u64,
    /// Members naming people who left, as the mapping file or `[rewrite] leavers` acknowledge them.
    #[serde(default)]
    pub acknowledged_members: u64,
    /// Members naming neither a card of their address book nor a record.
    pub unresolved_members: u64,
    /// Group cards the plan rewrites.
    pub cards_changed: u64,
    /// Members the plan rewrites to new GUIDs.
    pub members_changed: u64,
}

/// The uid a member of `g` is rewritten to, if any (see the module documentation).
fn new_member_uid(cards: &HashSet<String>, mapping: &Mapping, uid: &str) -> Option<String> {
    if cards.contains(&uid.to_ascii_uppercase()) {
        return None;
    }
    let guid = Guid::parse(uid)?;
    let r = mapping
        .entries
        .get(&CalAddress::UrnUuid(guid.clone()).key())?;
    if !matches!(r.outcome, Verdict::Mapped | Verdict::Unchanged) {
        return None;
    }
    let target = r.target.as_ref()?;
    (target.guid != guid).then(|| target.guid.to_string())
}

/// Plans the address books: homes into `plan_addressbook_homes`, rewritten group cards into
/// `plan_resources`/`plan_changes` (paths relative to the address-book root, `addressbooks/...`).
/// `changed`/`props` are the plan's running counts (the first changed resources keep their whole
/// lines for the report's diffs).
#[allow(clippy::too_many_arguments)]
pub fn plan(
    tx: &rusqlite::Transaction<'_>,
    plan_id: i64,
    s: &Survey,
    mapping: &Mapping,
    rows: &mut PlanRows<'_>,
    changed: &mut u64,
    props: &mut u64,
    example_lines: u64,
) -> Result<AddressBookSummary> {
    let root = s.root.canonicalize().unwrap_or_else(|_| s.root.clone());
    plan_rows::set_addressbook_path(tx, plan_id, &root.to_string_lossy())?;
    let mut sum = AddressBookSummary {
        root: root.to_string_lossy().into_owned(),
        cards: s.cards,
        groups: s.groups.len() as u64,
        members: s.members(),
        ..Default::default()
    };
    let found: Vec<_> = s
        .homes
        .iter()
        .map(|h| {
            let layout = serde_json::to_value(h.layout)?
                .as_str()
                .unwrap_or_default()
                .to_string();
            Ok((h, home_finding(mapping, h), layout))
        })
        .collect::<Result<_>>()?;
    for (_, f, _) in &found {
        *sum.homes.entry(f.outcome.to_string()).or_default() += 1;
    }
    plan_rows::insert_homes(
        tx,
        plan_id,
        plan_rows::HomeTable::AddressBook,
        found.iter().map(|(h, f, layout)| plan_rows::HomeRow {
            rel_path: &h.rel_path,
            layout,
            old_id: &h.id,
            outcome: f.outcome,
            new_guid: f.new_guid.as_deref(),
        }),
    )?;
    for g in &s.groups {
        for (m, c) in g.members.iter().zip(&g.is_card) {
            if *c {
                sum.card_members += 1;
                continue;
            }
            let outcome = principal_candidate(m, false)
                .and_then(|a| mapping.entries.get(&a.key()))
                .map(|r| r.outcome);
            match outcome {
                Some(Verdict::Mapped | Verdict::Unchanged) => sum.principal_members += 1,
                Some(Verdict::Acknowledged) => sum.acknowledged_members += 1,
                _ => sum.unresolved_members += 1,
            }
        }
        let cards = g.card_uids();
        let bytes = std::fs::read(&g.path).map_err(|e| Error::io("cannot read", &g.path, e))?;
        if sha256_hex(&bytes) != g.sha256 {
            return Err(Error::runtime(format!(
                "{} changed while it was being planned; plan again with the address book server stopped",
                g.path.display()
            )));
        }
        let rw = vcard::rewrite(&bytes, &|uid| new_member_uid(&cards, mapping, uid))
            .map_err(|e| Error::runtime(format!("{}: {e}", g.path.display())))?;
        if rw.changes.is_empty() {
            continue;
        }
        *changed += 1;
        *props += rw.changes.len() as u64;
        sum.cards_changed += 1;
        sum.members_changed += rw.changes.len() as u64;
        rows.insert(
            &ResourceRow {
                rel_path: &g.rel_path,
                old_sha256: &g.sha256,
                new_sha256: &sha256_hex(&rw.bytes),
                new_bytes: Some(&plan_rows::pack(&rw.bytes)),
                rewrite_pass: None,
                attr_edits: None,
            },
            &change_rows(&rw.changes, *changed <= example_lines),
        )?;
    }
    Ok(sum)
}

/// The address-book homes of a plan: (home, layout, owner outcome, new GUID), what needs a human first.
pub fn home_rows(state: &crate::state::State, plan_id: i64) -> Result<Vec<[String; 4]>> {
    let mut st = state.conn.prepare(
        "SELECT rel_path, layout, outcome, COALESCE(new_guid,'') FROM plan_addressbook_homes WHERE plan_id = ?1
         ORDER BY CASE outcome WHEN 'ambiguous' THEN 0 WHEN 'unmatched' THEN 1 WHEN 'moved' THEN 2 ELSE 3 END, rel_path",
    )?;
    let rows = st.query_map([plan_id], |r| {
        Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?])
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The roots `apply` writes: the configured ones. Refuses a plan made for other address books (or
/// with address books this configuration no longer names), except in a rehearsal (a copy).
pub fn apply_roots(
    state: &crate::state::State,
    plan_id: i64,
    cfg: &Config,
    rehearsal: bool,
) -> Result<Roots> {
    let roots = Roots::of(&cfg.store)?;
    let planned: Option<String> = state.conn.query_row(
        "SELECT addressbook_path FROM plans WHERE id = ?1",
        [plan_id],
        |r| r.get(0),
    )?;
    let has_work: bool = state.conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM plan_resources WHERE plan_id = ?1 AND rel_path LIKE 'addressbooks/%')
             OR EXISTS (SELECT 1 FROM plan_addressbook_homes WHERE plan_id = ?1 AND new_guid IS NOT NULL)",
        [plan_id],
        |r| r.get(0),
    )?;
    match (&planned, &roots.addressbooks) {
        (Some(p), None) if has_work => Err(Error::usage(format!(
            "plan {plan_id} changes the address books in {p}, but this configuration finds no address books; set [store] addressbook_root or plan again"
        ))),
        (Some(p), Some(now)) if !rehearsal && Path::new(p) != now => Err(Error::usage(format!(
            "plan {plan_id} was made for the address books in {p}, not {}; plan again for these",
            now.display()
        ))),
        _ => Ok(roots),
    }
}

/// Records the address-book root a run writes (read back by [`run_roots`] for rollback).
pub fn record_run_root(state: &crate::state::State, run_id: i64, roots: &Roots) -> Result<()> {
    if let Some(ab) = &roots.addressbooks {
        state.conn.execute(
            "UPDATE runs SET addressbook_path = ?1 WHERE id = ?2",
            rusqlite::params![ab.to_string_lossy(), run_id],
        )?;
    }
    Ok(())
}

/// The roots a run wrote.
pub fn run_roots(state: &crate::state::State, run_id: i64, store: PathBuf) -> Result<Roots> {
    let ab: Option<String> = state.conn.query_row(
        "SELECT addressbook_path FROM runs WHERE id = ?1",
        [run_id],
        |r| r.get(0),
    )?;
    Ok(Roots {
        store,
        addressbooks: ab.map(PathBuf::from),
    })
}
