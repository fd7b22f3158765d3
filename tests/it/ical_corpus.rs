//! Every file of the shared iCalendar corpus: scanned and rewritten without panic, an empty
//! mapping leaves it byte-identical, and a mapping of every ORGANIZER/ATTENDEE changes exactly
//! those logical lines.

use principal_reconciler::address::{AddressForm, CalAddress, Guid, Principal, RecordType};
use principal_reconciler::ical::{self, line, RewriteOptions};
use std::collections::{BTreeSet, HashMap};

fn corpus() -> Vec<(String, Vec<u8>)> {
    let Some(dir) = crate::support::corpus::dir("ical-calcard") else {
        return Vec::new();
    };
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ics"))
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        301,
        "corpus in {} should hold 301 files",
        dir.display()
    );
    files
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

fn opts(form: AddressForm) -> RewriteOptions {
    RewriteOptions { form }
}

#[test]
fn empty_mapping_leaves_every_file_byte_identical() {
    let empty: HashMap<String, Principal> = HashMap::new();
    let mut ok = 0;
    for (name, bytes) in corpus() {
        let scanned = ical::scan(&bytes);
        let rewritten = ical::rewrite(&bytes, &empty, &opts(AddressForm::UrnUuid));
        match (scanned, rewritten) {
            (Ok(_), Ok(r)) => {
                assert!(r.changes.is_empty(), "{name}");
                assert!(
                    r.bytes == bytes,
                    "{name}: bytes changed with an empty mapping"
                );
                ok += 1;
            }
            (Err(a), Err(b)) => {
                assert_eq!(a, b, "{name}");
                assert!(!a.reason.is_empty());
            }
            (s, r) => panic!("{name}: scan {:?} but rewrite {:?}", s.err(), r.err()),
        }
    }
    eprintln!("{ok} calendar objects, the rest rejected with a reason");
}

fn principal(i: usize) -> Principal {
    Principal {
        guid: Guid::parse(&format!("00000000-0000-4000-8000-{i:012X}")).unwrap(),
        kind: if i % 5 == 0 {
            RecordType::Location
        } else {
            RecordType::User
        },
        short_name: format!("user{i}"),
        full_name: match i % 3 {
            0 => None,
            1 => Some(format!(
                "Prénom Ñame-{i}, Jr.: \"the 3rd\"; Ørsted ^ and a very long tail to force folding"
            )),
            _ => Some(format!("User {i}")),
        },
        emails: if i % 4 == 0 {
            vec![]
        } else {
            vec![
                format!("user{i}@principal.test"),
                format!("u{i}@alias.principal.test"),
            ]
        },
    }
}

/// Maps every ORGANIZER and ATTENDEE address in `info` to a principal.
fn map_all(info: &ical::CalendarInfo) -> HashMap<String, Principal> {
    let mut m = HashMap::new();
    for a in &info.addresses {
        if a.property == "ORGANIZER" || a.property == "ATTENDEE" {
            let key = CalAddress::parse(&a.value).key();
            let n = m.len();
            m.entry(key).or_insert_with(|| principal(n));
        }
    }
    m
}

fn icalendar_parses(bytes: &[u8]) -> bool {
    match std::str::from_utf8(bytes) {
        Ok(s) => icalendar::parser::read_calendar(&icalendar::parser::unfold(s)).is_ok(),
        Err(_) => false,
    }
}

#[test]
fn mapping_every_address_changes_only_those_lines() {
    let mut files_changed = 0;
    let mut lines_changed = 0;
    for (name, bytes) in corpus() {
        let Ok(info) = ical::scan(&bytes) else {
            continue;
        };
        let m = map_all(&info);
        let targets: BTreeSet<usize> = info
            .addresses
            .iter()
            .filter(|a| a.property == "ORGANIZER" || a.property == "ATTENDEE")
            .map(|a| a.line)
            .collect();
        for form in [AddressForm::UrnUuid, AddressForm::Mailto, AddressForm::Keep] {
            let r =
                ical::rewrite(&bytes, &m, &opts(form)).unwrap_or_else(|e| panic!("{name}: {e}"));
            let changed: BTreeSet<usize> = r.changes.iter().map(|c| c.line).collect();
            assert!(
                changed.is_subset(&targets),
                "{name}: changed {changed:?} outside {targets:?}"
            );
            // Logical lines: same count, same order; outside the changed set identical down to
            // the raw bytes (folding and line ending included).
            let before = line::unfold(&bytes).unwrap();
            let after = line::unfold(&r.bytes).unwrap();
            assert_eq!(before.len(), after.len(), "{name}");
            for ((bi, bl), (ai, al)) in before.iter().zip(&after) {
                if changed.contains(&bi.line) {
                    assert_eq!(bi.eol, ai.eol, "{name}: line {} keeps its ending", bi.line);
                    let change = r.changes.iter().find(|c| c.line == bi.line).unwrap();
                    assert_eq!(change.new_line.as_bytes(), &al[..], "{name}");
                    assert_eq!(String::from_utf8_lossy(bl), change.old_line, "{name}");
                    if ai.physical_lines > 1 {
                        for phys in r.bytes[ai.start..ai.end].split(|&b| b == b'\n') {
                            let phys = phys.strip_suffix(b"\r").unwrap_or(phys);
                            assert!(
                                phys.len() <= line::FOLD_AT,
                                "{name}: over-long physical line"
                            );
                        }
                    }
                } else {
                    assert_eq!(bl, al, "{name}: line {} changed", bi.line);
                    assert_eq!(
                        bytes[bi.start..bi.end],
                        r.bytes[ai.start..ai.end],
                        "{name}: line {}",
                        bi.line
                    );
                }
            }
            // The result is still a calendar object, now naming every principal canonically,
            // and a second pass changes nothing.
            let again = ical::scan(&r.bytes)
                .unwrap_or_else(|e| panic!("{name}: rewritten file rejected: {e}"));
            assert_eq!(again.addresses.len(), info.addresses.len(), "{name}");
            for (old, new) in info.addresses.iter().zip(&again.addresses) {
                if let Some(p) = m.get(&CalAddress::parse(&old.value).key()) {
                    let want = p.canonical_address(form, &CalAddress::parse(&old.value));
                    assert_eq!(new.value, want, "{name}: line {}", old.line);
                    assert_eq!(new.cn, p.full_name, "{name}: line {}", old.line);
                    assert_eq!(new.cutype, old.cutype, "{name}: CUTYPE untouched");
                }
            }
            // The current directory also knows each principal by its own addresses.
            let mut m2 = m.clone();
            for p in m.values() {
                let g = &p.guid;
                let own = [
                    format!("urn:uuid:{g}"),
                    format!("urn:x-uid:{g}"),
                    format!("/principals/__uids__/{g}/"),
                    format!("/principals/{}/{}/", p.kind.collection(), p.short_name),
                ];
                for a in own
                    .into_iter()
                    .chain(p.emails.iter().map(|e| format!("mailto:{e}")))
                {
                    m2.insert(CalAddress::parse(&a).key(), p.clone());
                }
            }
            let twice = ical::rewrite(&r.bytes, &m2, &opts(form)).unwrap();
            assert!(
                twice.changes.is_empty(),
                "{name}: second pass changed {:?}",
                twice.changes
            );
            if icalendar_parses(&bytes) {
                assert!(
                    icalendar_parses(&r.bytes),
                    "{name}: the icalendar crate no longer parses it"
                );
            }
            if form == AddressForm::UrnUuid {
                files_changed += usize::from(!r.changes.is_empty());
                lines_changed += r.changes.len();
            }
        }
    }
    eprintln!("{files_changed} files, {lines_changed} lines rewritten");
}

#[test]
fn one_pass_scan_and_rewrite_equals_the_two_separately() {
    for (name, bytes) in corpus() {
        let scanned = ical::scan(&bytes);
        let map = match &scanned {
            Ok(info) => map_all(info),
            Err(_) => HashMap::new(),
        };
        let o = opts(AddressForm::UrnUuid);
        let rewritten = ical::rewrite(&bytes, &map, &o);
        match ical::scan_and_rewrite(&bytes, &map, &o) {
            Ok((info, rw)) => {
                assert_eq!(Ok(&info), scanned.as_ref(), "{name}: scan differs");
                assert_eq!(Ok(&rw), rewritten.as_ref(), "{name}: rewrite differs");
            }
            Err(e) => {
                assert_eq!(
                    scanned.err().as_ref(),
                    Some(&e),
                    "{name}: scan error differs"
                );
                assert_eq!(
                    rewritten.err().as_ref(),
                    Some(&e),
                    "{name}: rewrite error differs"
                );
            }
        }
    }
}
