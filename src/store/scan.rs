//! `scan`: an inventory of the store — homes by layout, collections, resources, and every calendar
//! user address by form — read-only.

use super::{HomeLayout, Item};
use crate::address::{AddressKind, CalAddress};
use crate::config::{StoreConfig, StoreKind};
use crate::error::Result;
use crate::finding::Finding;
use crate::ical::{CalendarInfo, IcalError};
use crate::progress::Progress;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};

/// How many problems an inventory keeps in detail (all are counted).
pub const MAX_LISTED_PROBLEMS: usize = 10_000;
/// How many of the most used addresses an inventory lists.
pub const TOP_ADDRESSES: usize = 50;

#[derive(Clone, Debug, Default, Serialize)]
/// How many addresses of one form the store holds.
pub struct KindCount {
    /// Distinct addresses of this form.
    pub distinct: usize,
    /// Times they appear (ORGANIZER, ATTENDEE, ... lines).
    pub occurrences: u64,
}

#[derive(Clone, Debug, Serialize)]
/// How many `mailto:` addresses of one mail domain the store holds.
pub struct DomainCount {
    /// The mail domain, lower-cased.
    pub domain: String,
    /// Distinct addresses in it.
    pub distinct: usize,
    /// Times they appear.
    pub occurrences: u64,
}

#[derive(Clone, Debug, Serialize)]
/// One of the most used addresses and how often it appears.
pub struct AddressCount {
    /// The normalised address ([`CalAddress::key`]).
    pub address: String,
    /// Its address form.
    pub kind: AddressKind,
    /// Times it appears.
    pub occurrences: u64,
    /// Resources it appears in.
    pub resources: u64,
}

/// What `scan` found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Inventory {
    /// The store's data root, as configured.
    pub store: String,
    /// `[store] kind`.
    pub kind: StoreKind,
    /// Homes per layout (`hashed`, `flat-uids`, `users`).
    pub homes: BTreeMap<String, usize>,
    /// Folders holding at least one resource.
    pub collections: usize,
    /// Resources (`.ics` files or calendar objects) read.
    pub resources: u64,
    /// Bytes of resources read.
    pub bytes: u64,
    /// Distinct calendar user addresses found.
    pub distinct_addresses: usize,
    /// Calendar user address occurrences in all resources.
    pub address_occurrences: u64,
    /// Per form: `mailto`, `urn:uuid`, `urn:x-uid`, `principal-uid`, `principal-name`, `other`.
    pub by_kind: BTreeMap<String, KindCount>,
    /// `mailto:` addresses per domain, most used first.
    pub mailto_domains: Vec<DomainCount>,
    /// The most used addresses, most used first.
    pub top_addresses: Vec<AddressCount>,
    /// Problems per kind (`unreadable`, `malformed`, `symlink`).
    pub problem_counts: BTreeMap<String, u64>,
    /// The problems, up to [`MAX_LISTED_PROBLEMS`] (address-book ones relative to their root).
    pub problems: Vec<Finding>,
    /// The address books, when the store has some (`[store] addressbook_root`, or 3.x).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addressbooks: Option<super::addressbook::Inventory>,
}

impl Inventory {
    /// Unreadable or malformed resources were found.
    pub fn has_bad_resources(&self) -> bool {
        self.problem_counts.get("unreadable").copied().unwrap_or(0) > 0
            || self.problem_counts.get("malformed").copied().unwrap_or(0) > 0
    }
}

fn layout_name(l: HomeLayout) -> &'static str {
    match l {
        HomeLayout::Hashed => "hashed",
        HomeLayout::FlatUids => "flat-uids",
        HomeLayout::Users => "users",
    }
}

/// One distinct address of one resource, counted there.
struct ResourceAddress {
    key: String,
    kind: AddressKind,
    domain: Option<String>,
    occurrences: u64,
}

fn per_resource(info: &CalendarInfo) -> Vec<ResourceAddress> {
    let mut out: Vec<ResourceAddress> = Vec::new();
    for a in &info.addresses {
        let parsed = CalAddress::parse(&a.value);
        let key = parsed.key();
        match out.iter_mut().find(|r| r.key == key) {
            Some(r) => r.occurrences += 1,
            None => out.push(ResourceAddress {
                key,
                kind: parsed.kind(),
                domain: parsed.domain().map(str::to_string),
                occurrences: 1,
            }),
        }
    }
    out
}

/// One distinct address's counts while a store is read (file or database).
pub(crate) struct AddrStat {
    /// Its form.
    pub(crate) kind: AddressKind,
    /// A `mailto:` address's domain.
    pub(crate) domain: Option<String>,
    /// How often it appears.
    pub(crate) occurrences: u64,
    /// In how many resources.
    pub(crate) resources: u64,
}

/// Walks the store and builds its inventory (memory grows with distinct addresses and
/// collections, not with resources).
pub fn inventory(cfg: &StoreConfig, progress: &dyn Progress) -> Result<Inventory> {
    let bar = progress.start("scan", None);
    let inv = inventory_with(cfg, &*bar);
    bar.finish();
    inv
}

fn inventory_with(cfg: &StoreConfig, bar: &dyn crate::progress::Bar) -> Result<Inventory> {
    let mut inv = Inventory {
        store: cfg.path.display().to_string(),
        kind: cfg.kind,
        ..Default::default()
    };
    for l in [HomeLayout::Hashed, HomeLayout::FlatUids, HomeLayout::Users] {
        inv.homes.insert(layout_name(l).into(), 0);
    }
    let mut collections: HashSet<String> = HashSet::new();
    let mut addrs: HashMap<String, AddrStat> = HashMap::new();
    // The inventory needs no attributes. Addresses are parsed and counted per resource on the
    // reader threads; the calling thread only merges.
    super::walk_with(
        cfg,
        super::WalkOptions { xattrs: false },
        // `bar` counts the resources delivered (the walker's own count includes homes).
        &crate::progress::NoBar,
        |_res, bytes| -> std::result::Result<Vec<ResourceAddress>, IcalError> {
            crate::ical::scan(bytes).map(|info| per_resource(&info))
        },
        |item| {
            if !matches!(item, Item::Home(_)) {
                bar.inc(1);
            }
            match item {
                Item::Home(h) => *inv.homes.entry(layout_name(h.layout).into()).or_insert(0) += 1,
                Item::Problem(p) => inv.note(p),
                Item::Resource(res, result) => {
                    inv.resources += 1;
                    inv.bytes += res.size;
                    let folder = res.rel_path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                    if !collections.contains(folder) {
                        collections.insert(folder.to_string());
                    }
                    match result {
                        Err(e) => inv.note(Finding::malformed(&res.rel_path, &e)),
                        Ok(found) => {
                            inv.address_occurrences += count_addresses(&mut addrs, found);
                        }
                    }
                }
            }
            Ok(())
        },
    )?;
    if let Some((ab, problems)) = super::addressbook::inventory(cfg, bar)? {
        for p in problems {
            inv.note(p);
        }
        inv.addressbooks = Some(ab);
    }
    inv.collections = collections.len();
    inv.summarise(addrs);
    Ok(inv)
}

/// Adds one resource's addresses to the per-address counts; returns their occurrences.
fn count_addresses(addrs: &mut HashMap<String, AddrStat>, found: Vec<ResourceAddress>) -> u64 {
    let mut occurrences = 0;
    for a in found {
        occurrences += a.occurrences;
        match addrs.get_mut(&a.key) {
            Some(st) => {
                st.occurrences += a.occurrences;
                st.resources += 1;
            }
            None => {
                addrs.insert(
                    a.key,
                    AddrStat {
                        kind: a.kind,
                        domain: a.domain,
                        occurrences: a.occurrences,
                        resources: 1,
                    },
                );
            }
        }
    }
    occurrences
}

impl Inventory {
    /// Counts a problem (and keeps it, up to [`MAX_LISTED_PROBLEMS`]).
    fn note(&mut self, p: Finding) {
        *self.problem_counts.entry(p.kind.clone()).or_insert(0) += 1;
        if self.problems.len() < MAX_LISTED_PROBLEMS {
            self.problems.push(p);
        }
    }

    /// The figures drawn from the per-address counts: by form, by mail domain, the most used;
    /// then the problems in order.
    pub(crate) fn summarise(&mut self, addrs: HashMap<String, AddrStat>) {
        let inv = self;
        inv.distinct_addresses = addrs.len();
        let mut domains: HashMap<String, DomainCount> = HashMap::new();
        for st in addrs.values() {
            let k = inv.by_kind.entry(st.kind.as_str().into()).or_default();
            k.distinct += 1;
            k.occurrences += st.occurrences;
            if let Some(d) = &st.domain {
                let dc = domains.entry(d.clone()).or_insert_with(|| DomainCount {
                    domain: d.clone(),
                    distinct: 0,
                    occurrences: 0,
                });
                dc.distinct += 1;
                dc.occurrences += st.occurrences;
            }
        }
        inv.mailto_domains = domains.into_values().collect();
        inv.mailto_domains.sort_by(|a, b| {
            b.occurrences
                .cmp(&a.occurrences)
                .then_with(|| a.domain.cmp(&b.domain))
        });
        let mut top: Vec<AddressCount> = addrs
            .into_iter()
            .map(|(k, st)| AddressCount {
                address: k,
                kind: st.kind,
                occurrences: st.occurrences,
                resources: st.resources,
            })
            .collect();
        top.sort_by(|a, b| {
            b.occurrences
                .cmp(&a.occurrences)
                .then_with(|| a.address.cmp(&b.address))
        });
        top.truncate(TOP_ADDRESSES);
        inv.top_addresses = top;
        inv.problems
            .sort_by(|a, b| a.kind.cmp(&b.kind).then_with(|| a.path.cmp(&b.path)));
    }
}
