//! `scan` on a database store: the same inventory as the file store's (homes, collections,
//! calendar objects, every calendar user address by form, the most used addresses, malformed
//! objects), read in one read-only snapshot through a server-side cursor. Changes nothing.
//! Homes are counted per home table (`calendar_home`, `addressbook_home`, `notification_home`).

use super::read;
use super::Db;
use crate::address::{AddressKind, CalAddress};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::finding::Finding;
use crate::progress::Progress;
use crate::store::scan::{AddrStat, Inventory, MAX_LISTED_PROBLEMS};
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};

/// One distinct address of an object.
struct Found {
    key: String,
    kind: AddressKind,
    domain: Option<String>,
    occurrences: u64,
}

/// One object's distinct addresses.
fn per_object(text: &str) -> std::result::Result<Vec<Found>, crate::ical::IcalError> {
    let info = crate::ical::scan(text.as_bytes())?;
    let mut out: Vec<Found> = Vec::new();
    for a in &info.addresses {
        let parsed = CalAddress::parse(&a.value);
        let key = parsed.key();
        match out.iter_mut().find(|r| r.key == key) {
            Some(r) => r.occurrences += 1,
            None => out.push(Found {
                key,
                kind: parsed.kind(),
                domain: parsed.domain().map(str::to_string),
                occurrences: 1,
            }),
        }
    }
    Ok(out)
}

/// The inventory of the database.
pub fn inventory(cfg: &Config, progress: &dyn Progress) -> Result<Inventory> {
    let mut db = Db::open(cfg)?;
    let label = db.target.label.clone();
    let mut inv = Inventory {
        store: label.clone(),
        kind: cfg.store.kind,
        ..Default::default()
    };
    let bar = progress.start("scan", None);
    let schema = db.schema.clone();
    let mut tx = db
        .snapshot()
        .map_err(|e| Error::runtime(format!("{label}: {}", super::connect::describe(&e))))?;
    for table in read::HOME_TABLES {
        let n = read::homes(&mut tx, &schema, table)?.len();
        inv.homes.insert(table.to_ascii_lowercase(), n);
    }
    let mut collections: HashSet<i64> = HashSet::new();
    let mut addrs: HashMap<String, AddrStat> = HashMap::new();
    read::all_objects(&mut tx, &mut |batch: Vec<read::ObjectText>| {
        let found: Vec<_> = batch
            .into_par_iter()
            .map(|o| {
                let r = per_object(&o.text);
                (o, r)
            })
            .collect();
        for (o, r) in found {
            let (id, cal, name, len) = (o.id, o.calendar_id, o.name, o.text.len());
            bar.inc(1);
            inv.resources += 1;
            inv.bytes += len as u64;
            collections.insert(cal);
            match r {
                Err(e) => {
                    *inv.problem_counts.entry("malformed".into()).or_insert(0) += 1;
                    if inv.problems.len() < MAX_LISTED_PROBLEMS {
                        inv.problems.push(Finding {
                            path: format!("CALENDAR_OBJECT {id} (calendar {cal}, {name})"),
                            kind: "malformed".into(),
                            detail: e.to_string(),
                            fixed: None,
                        });
                    }
                }
                Ok(found) => {
                    for f in found {
                        let n = f.occurrences;
                        inv.address_occurrences += n;
                        let st = addrs.entry(f.key).or_insert(AddrStat {
                            kind: f.kind,
                            domain: f.domain,
                            occurrences: 0,
                            resources: 0,
                        });
                        st.occurrences += n;
                        st.resources += 1;
                    }
                }
            }
        }
        Ok(())
    })?;
    tx.commit()
        .map_err(|e| Error::runtime(format!("{label}: {}", super::connect::describe(&e))))?;
    bar.finish();
    inv.collections = collections.len();
    inv.summarise(addrs);
    Ok(inv)
}
