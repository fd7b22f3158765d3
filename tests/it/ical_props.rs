//! Property tests of the content-line layer and the rewriter.

use principal_reconciler::address::{AddressForm, CalAddress, Guid, Principal, RecordType};
use principal_reconciler::ical::{self, line, RewriteOptions};
use proptest::prelude::*;
use std::collections::{BTreeSet, HashMap};

fn eol_strategy() -> impl Strategy<Value = line::Eol> {
    prop_oneof![Just(line::Eol::CrLf), Just(line::Eol::Lf)]
}

/// A line's bytes: anything but LF, CR and NUL, weighted towards multi-byte UTF-8 and junk.
fn line_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        3 => any::<u8>().prop_filter("no line breaks or NUL", |b| !matches!(b, b'\n' | b'\r' | 0)).prop_map(|b| vec![b]),
        2 => any::<char>().prop_filter("no line breaks or NUL", |c| !matches!(c, '\n' | '\r' | '\0')).prop_map(|c| c.to_string().into_bytes()),
        1 => Just("€".as_bytes().to_vec()),
        1 => Just("𝄞".as_bytes().to_vec()),
    ];
    prop::collection::vec(piece, 0..max).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn unfold_of_fold_is_identity(line in line_bytes(120), eol in eol_strategy(), cr in any::<bool>()) {
        prop_assume!(!line.starts_with(b"\xEF\xBB\xBF"), "a BOM is not text at the start of a file");
        let mut line = line;
        if cr && eol == line::Eol::CrLf {
            // A bare CR inside the line (never before the final LF of an LF line).
            line.insert(line.len() / 2, b'\r');
        }
        let mut file = Vec::new();
        line::fold(&line, eol, &mut file);
        file.extend_from_slice(eol.as_bytes());
        let lines = line::unfold(&file).unwrap();
        prop_assert_eq!(lines.len(), 1);
        prop_assert_eq!(&lines[0].1, &line);
        prop_assert_eq!(lines[0].0.end, file.len());
        if !line.contains(&b'\r') {
            for phys in file.split(|&b| b == b'\n') {
                let phys = phys.strip_suffix(b"\r").unwrap_or(phys);
                prop_assert!(phys.len() <= line::FOLD_AT, "physical line of {} octets", phys.len());
            }
        }
        if let Ok(s) = std::str::from_utf8(&line) {
            // No break inside a UTF-8 sequence: every physical line is UTF-8 on its own.
            let _ = s;
            for phys in file.split(|&b| b == b'\n') {
                prop_assert!(std::str::from_utf8(phys).is_ok());
            }
        }
    }

    #[test]
    fn many_folded_lines_unfold_to_themselves(
        lines in prop::collection::vec((line_bytes(100), eol_strategy()), 1..12),
    ) {
        let lines: Vec<_> = lines.into_iter().filter(|(l, _)| !matches!(l.first(), Some(b' ' | b'\t'))).collect();
        prop_assume!(!lines.first().is_some_and(|(l, _)| l.starts_with(b"\xEF\xBB\xBF")));
        let mut file = Vec::new();
        for (l, eol) in &lines {
            line::fold(l, *eol, &mut file);
            file.extend_from_slice(eol.as_bytes());
        }
        let got = line::unfold(&file).unwrap();
        prop_assert_eq!(got.len(), lines.len());
        for ((info, text), (l, eol)) in got.iter().zip(&lines) {
            prop_assert_eq!(text, l);
            prop_assert_eq!(info.eol, *eol);
        }
    }

    #[test]
    fn params_add_up_to_the_parameter_text(
        parts in prop::collection::vec(prop::sample::select(&["A", "b", "=", ";", ",", ":", "\"", "^", "x"][..]), 0..40),
    ) {
        let text = format!("ATTENDEE;{}", parts.concat());
        if let Ok(cl) = line::split(text.as_bytes()) {
            let joined: Vec<u8> = cl.params().flat_map(|p| p.raw.iter().copied()).collect();
            prop_assert_eq!(joined, cl.params.to_vec());
            for p in cl.params() {
                prop_assert!(p.raw.starts_with(b";"));
                let _ = p.decoded();
            }
        }
    }

    #[test]
    fn unfold_of_anything_covers_the_input(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        match line::unfold(&bytes) {
            Ok(lines) => {
                let mut at = 0;
                for (info, text) in &lines {
                    prop_assert_eq!(info.start, at);
                    prop_assert!(info.end > info.start);
                    prop_assert!(text.len() <= info.end - info.start);
                    at = info.end;
                    if let Ok(cl) = line::split(text) {
                        // The parameters, as written, add up to the parameter text.
                        let joined: Vec<u8> = cl.params().flat_map(|p| p.raw.iter().copied()).collect();
                        prop_assert_eq!(joined, cl.params.to_vec());
                    }
                }
                prop_assert_eq!(at, bytes.len());
            }
            Err(nul) => prop_assert!(bytes.contains(&0) && nul.line >= 1),
        }
        // Neither scan nor rewrite panics on anything.
        let empty: HashMap<String, Principal> = HashMap::new();
        if let Ok(r) = ical::rewrite(&bytes, &empty, &RewriteOptions { form: AddressForm::UrnUuid }) {
            prop_assert_eq!(r.bytes, bytes);
        }
    }
}

// ---- generated calendars ----

const POOL: &[&str] = &[
    "mailto:alice@x.test",
    "MAILTO:Bob@X.test",
    "urn:uuid:5E0A4C31-7D3B-4B6E-9F43-1A2B3C4D5E6F",
    "urn:uuid:9b2e6a1c-0d4f-4e8a-b7c6-112233445566",
    "urn:x-uid:ABCDEF01-2345-4678-9ABC-DEF012345678",
    "/principals/users/carol/",
    "http://cal.x.test:8008/principals/__uids__/0F1E2D3C-4B5A-4968-8776-655443322110/",
    "mailto:gone@elsewhere.test",
    "tel:+15551234",
];

fn address() -> impl Strategy<Value = String> {
    prop::sample::select(POOL).prop_map(str::to_string)
}

fn param_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"Jane Doe".to_vec()),
        Just(b"\"Doe, Jane: PhD; MD\"".to_vec()),
        Just("\"Zoë ^'Q^' ^^ Ørsted\"".as_bytes().to_vec()),
        Just(b"Caf\xE9".to_vec()),
        Just(b"alice@x.test".to_vec()),
        Just(b"ROOM".to_vec()),
        Just(b"\"mailto:a@x.test\",\"mailto:b@x.test\"".to_vec()),
        // What pycalendar reads and CalendarServer's own data holds: escaped quotes in quotes.
        Just(b"\"say \\\"hi\\\"; then: go\"".to_vec()),
        // CALENDARSERVER-OLD-CUA values: base64 (as the server writes them) and plain.
        Just(b"base64-L3ByaW5jaXBhbHMvdXNlcnMvY2Fyb2wv".to_vec()),
        Just(
            b"\"http://cal.x.test:8008/principals/__uids__/0F1E2D3C-4B5A-4968-8776-655443322110/\""
                .to_vec()
        ),
    ]
}

fn params() -> impl Strategy<Value = Vec<u8>> {
    let name = prop::sample::select(
        &[
            "CN",
            "cn",
            "EMAIL",
            "Email",
            "CUTYPE",
            "ROLE",
            "PARTSTAT",
            "X-ODD",
            "MEMBER",
            "_TZID",
            "CALENDARSERVER-OLD-CUA",
        ][..],
    );
    prop::collection::vec((name, param_value()), 0..5).prop_map(|ps| {
        let mut out = Vec::new();
        for (n, v) in ps {
            out.push(b';');
            out.extend_from_slice(n.as_bytes());
            out.push(b'=');
            out.extend_from_slice(&v);
        }
        out
    })
}

fn prop_line() -> impl Strategy<Value = Vec<u8>> {
    let addr_name = prop::sample::select(
        &[
            "ORGANIZER",
            "ATTENDEE",
            "attendee",
            "Organizer",
            "VOTER",
            "X-CALENDARSERVER-MODIFIED-BY",
        ][..],
    );
    prop_oneof![
        3 => (prop::sample::select(&["SUMMARY", "DESCRIPTION", "X-JUNK", "x-lower", "LOCATION"][..]), line_bytes(90))
            .prop_map(|(n, v)| [n.as_bytes(), b":", &v].concat()),
        4 => (addr_name, params(), address()).prop_map(|(n, p, a)| [n.as_bytes(), &p, b":", a.as_bytes()].concat()),
        1 => (address(), line_bytes(30)).prop_map(|(a, t)| {
            [&b"X-CALENDARSERVER-ATTENDEE-COMMENT;X-CALENDARSERVER-DTSTAMP=20100101T000000Z;X-CALENDARSERVER-ATTENDEE-REF=\""[..],
             a.as_bytes(), b"\":", &t].concat()
        }),
        1 => prop::sample::select(&["5e0a4c31-7d3b-4b6e-9f43-1a2b3c4d5e6f", "ABCDEF01-2345-4678-9ABC-DEF012345678", "carol"][..])
            .prop_map(|u| format!("X-CALENDARSERVER-PERUSER-UID:{u}").into_bytes()),
        // Dropbox links: a map-only resolver moves no home, so they never change here.
        1 => prop::sample::select(&[
            "X-APPLE-DROPBOX:/calendars/__uids__/5E0A4C31-7D3B-4B6E-9F43-1A2B3C4D5E6F/dropbox/E.dropbox",
            "ATTACH;VALUE=URI:http://cal.x.test:8008/calendars/__uids__/5E0A4C31-7D3B-4B6E-9F43-1A2B3C4D5E6F/dropbox/E.dropbox/f%20g.pdf",
            "ATTACH:https://cal.x.test:8443/calendars/users/carol/dropbox/E.dropbox/x",
        ][..]).prop_map(|l| l.as_bytes().to_vec()),
    ]
}

/// Logical lines of a calendar object (outside-VTIMEZONE ones may name principals).
fn calendar_lines() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let event = prop::collection::vec(prop_line(), 0..8);
    (
        any::<bool>(),
        prop::collection::vec(prop_line(), 0..3),
        prop::collection::vec(event, 1..4),
    )
        .prop_map(|(tz, tz_lines, events)| {
            let mut out: Vec<Vec<u8>> = vec![b"BEGIN:VCALENDAR".to_vec(), b"VERSION:2.0".to_vec()];
            if tz {
                out.push(b"BEGIN:VTIMEZONE".to_vec());
                out.push(b"TZID:Europe/Berlin".to_vec());
                out.extend(tz_lines);
                out.push(b"END:VTIMEZONE".to_vec());
            }
            for (i, e) in events.into_iter().enumerate() {
                out.push(b"BEGIN:VEVENT".to_vec());
                out.push(format!("UID:event-{i}").into_bytes());
                out.extend(e);
                out.push(b"end:vevent".to_vec());
            }
            out.push(b"END:VCALENDAR".to_vec());
            out
        })
}

/// Serialises logical lines with random endings and random folds (at any byte, even inside a
/// UTF-8 sequence), an optional BOM, blank lines and trailing white space.
fn calendar() -> impl Strategy<Value = Vec<u8>> {
    calendar_lines().prop_flat_map(|lines| {
        let n = lines.len();
        (
            Just(lines),
            prop::collection::vec(
                (
                    eol_strategy(),
                    prop::collection::vec(1usize..200, 0..3),
                    any::<bool>(),
                ),
                n,
            ),
            any::<bool>(),
            prop::sample::select(&["", "\r\n", "\n  \n", "\t"][..]),
            any::<bool>(),
        )
            .prop_map(|(lines, shapes, bom, tail, final_eol)| {
                let mut out = Vec::new();
                if bom {
                    out.extend_from_slice(b"\xEF\xBB\xBF");
                }
                let last = lines.len() - 1;
                for (i, (l, (eol, folds, tab))) in lines.iter().zip(shapes).enumerate() {
                    let mut cuts: Vec<usize> = folds.into_iter().filter(|&c| c < l.len()).collect();
                    cuts.sort();
                    cuts.dedup();
                    let mut at = 0;
                    for c in cuts {
                        out.extend_from_slice(&l[at..c]);
                        out.extend_from_slice(eol.as_bytes());
                        out.push(if tab { b'\t' } else { b' ' });
                        at = c;
                    }
                    out.extend_from_slice(&l[at..]);
                    if i < last || final_eol || !tail.is_empty() {
                        out.extend_from_slice(eol.as_bytes());
                    }
                }
                out.extend_from_slice(tail.as_bytes());
                out
            })
    })
}

fn principal(i: usize) -> Principal {
    Principal {
        guid: Guid::parse(&format!("00000000-0000-4000-8000-{i:012X}")).unwrap(),
        kind: if i == 3 {
            RecordType::Location
        } else {
            RecordType::User
        },
        short_name: format!("p{i}"),
        full_name: match i % 3 {
            0 => None,
            1 => Some(format!(
                "Prénom {i}, \"Q\"; long name that needs folding when it is written out ^"
            )),
            _ => Some(format!("P {i}")),
        },
        emails: if i % 4 == 0 {
            vec![]
        } else {
            vec![format!("p{i}@new.test"), "alice@x.test".into()]
        },
    }
}

/// The lookup key of a found address (PERUSER-UID is a bare uid).
fn key_of(a: &ical::FoundAddress) -> String {
    if a.property == "X-CALENDARSERVER-PERUSER-UID" {
        match Guid::parse(&a.value) {
            Some(g) => CalAddress::UrnUuid(g).key(),
            None => CalAddress::UrnXUid(a.value.clone()).key(),
        }
    } else {
        CalAddress::parse(&a.value).key()
    }
}

fn form_strategy() -> impl Strategy<Value = AddressForm> {
    prop_oneof![
        Just(AddressForm::UrnUuid),
        Just(AddressForm::UrnXUid),
        Just(AddressForm::Mailto),
        Just(AddressForm::Keep)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn empty_mapping_returns_the_input(cal in calendar()) {
        let info = ical::scan(&cal);
        prop_assert!(info.is_ok(), "{:?}", info.err());
        let empty: HashMap<String, Principal> = HashMap::new();
        let r = ical::rewrite(&cal, &empty, &RewriteOptions { form: AddressForm::UrnUuid }).unwrap();
        prop_assert!(r.changes.is_empty());
        prop_assert_eq!(r.bytes, cal);
    }

    #[test]
    fn rewrite_changes_exactly_the_targeted_lines(cal in calendar(), mask in 0u32..(1 << POOL.len()), form in form_strategy()) {
        let info = ical::scan(&cal).unwrap();
        let mut m = HashMap::new();
        let mut uids = HashMap::new();
        for (i, a) in POOL.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0) {
            let addr = CalAddress::parse(a);
            m.insert(addr.key(), principal(i));
            if let Some(g) = addr.guid() {
                uids.insert(CalAddress::UrnUuid(g).key(), principal(i));
            }
        }
        // PERUSER-UID names a GUID bare; "carol" as urn:x-uid.
        if mask & (1 << 5) != 0 {
            m.insert(CalAddress::UrnXUid("carol".into()).key(), principal(5));
        }
        for (k, p) in uids {
            m.entry(k).or_insert(p);
        }
        let resolvable: BTreeSet<usize> = info.addresses.iter().filter(|a| m.contains_key(&key_of(a))).map(|a| a.line).collect();
        let r = ical::rewrite(&cal, &m, &RewriteOptions { form }).unwrap();
        let changed: BTreeSet<usize> = r.changes.iter().map(|c| c.line).collect();
        prop_assert_eq!(changed.len(), r.changes.len(), "one change per line");
        prop_assert!(changed.is_subset(&resolvable));

        let before = line::unfold(&cal).unwrap();
        let after = line::unfold(&r.bytes).unwrap();
        prop_assert_eq!(before.len(), after.len());
        for ((bi, bl), (ai, al)) in before.iter().zip(&after) {
            if changed.contains(&bi.line) {
                prop_assert_eq!(bi.eol, ai.eol);
                prop_assert!(bl != al);
            } else {
                prop_assert_eq!(bl, al);
                prop_assert_eq!(&cal[bi.start..bi.end], &r.bytes[ai.start..ai.end]);
            }
        }
        // Every resolvable address now has its canonical value; no other address moved.
        let again = ical::scan(&r.bytes).unwrap();
        prop_assert_eq!(again.addresses.len(), info.addresses.len());
        for (old, new) in info.addresses.iter().zip(&again.addresses) {
            match m.get(&key_of(old)) {
                Some(p) if old.property == "X-CALENDARSERVER-PERUSER-UID" => prop_assert_eq!(&new.value, p.guid.as_str()),
                Some(p) => {
                    let want = p.canonical_address(form, &CalAddress::parse(&old.value));
                    prop_assert_eq!(&new.value, &want);
                    if matches!(old.property.as_str(), "ORGANIZER" | "ATTENDEE" | "VOTER") {
                        prop_assert_eq!(&new.cn, &p.full_name);
                        prop_assert_eq!(&new.cutype, &old.cutype);
                        if p.emails.is_empty() {
                            prop_assert_eq!(&new.email, &None);
                        } else {
                            let e = new.email.as_deref().unwrap_or_default().to_lowercase();
                            prop_assert!(p.emails.contains(&e), "EMAIL {:?}", new.email);
                        }
                    }
                }
                None => prop_assert_eq!(
                    (&new.property, &new.value, &new.cn, &new.email, &new.cutype),
                    (&old.property, &old.value, &old.cn, &old.email, &old.cutype)
                ),
            }
        }
    }
}
