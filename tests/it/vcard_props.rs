//! Property tests of the vCard member rewriter: lossless whatever the folding, line endings and
//! other properties of the card.

use principal_reconciler::ical::line;
use principal_reconciler::vcard;
use proptest::prelude::*;
use std::collections::HashMap;

/// A GUID from a seed (upper case, as Open Directory spells them).
fn guid(n: u64) -> String {
    let h = format!("{:016X}{:016X}", n.wrapping_mul(0x9E37_79B9_7F4A_7C15), !n);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// One physical layout of a logical line: folded at the given widths with the given breaks.
fn physical(line: &str, cuts: &[(usize, bool, bool)], crlf: bool) -> Vec<u8> {
    let b = line.as_bytes();
    let mut out = Vec::new();
    let mut at = 0;
    for &(w, tab, lf) in cuts {
        let end = (at + 1 + w % 40).min(b.len());
        if end >= b.len() || !line.is_char_boundary(end) {
            break;
        }
        out.extend_from_slice(&b[at..end]);
        out.extend_from_slice(if lf || !crlf { b"\n" } else { b"\r\n" });
        out.push(if tab { b'\t' } else { b' ' });
        at = end;
    }
    out.extend_from_slice(&b[at..]);
    out.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
    out
}

fn other_line() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("N:Müller;Jürgen;;;".to_string()),
        Just("FN:Jürgen Müller".to_string()),
        Just("EMAIL;type=INTERNET;type=WORK;type=pref:jm@example.com".to_string()),
        Just("item1.ADR;type=HOME;type=pref:;;1 rue des Lilas;Paris;;75011;France".to_string()),
        Just("item1.X-ABADR:fr".to_string()),
        Just("item2.X-ABLabel:_$!<Friend>!$_".to_string()),
        Just("PHOTO;BASE64:/9j/4AAQSkZJRgABAQAAAQABAAD/7QA8UGhvdG9zaG9wIDMuMAA4QklNBAQAAAAAAB8cAVoAAx".to_string()),
        Just("X-UNKNOWN;X-P=\"a:b;c\":urn:uuid:not-a-member".to_string()),
        "[a-z ]{0,90}".prop_map(|t| format!("NOTE:{t}")),
    ]
}

/// A member line: (group prefix, parameters, `urn:uuid:` spelling, GUID seed).
fn member_line() -> impl Strategy<Value = (bool, bool, u8, u64)> {
    (any::<bool>(), any::<bool>(), 0u8..3, 0u64..12)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Rewriting members to other GUIDs and back gives the card back byte for byte (folding,
    /// line endings, every other line), and only member lines ever differ in between.
    #[test]
    fn member_rewrite_round_trips_byte_for_byte(
        lines in prop::collection::vec(prop_oneof![
            3 => other_line().prop_map(Err),
            2 => member_line().prop_map(Ok),
        ], 0..14),
        cuts in prop::collection::vec(prop::collection::vec((any::<usize>(), any::<bool>(), any::<bool>()), 0..4), 16),
        crlf in any::<bool>(),
        mapped in prop::collection::btree_set(0u64..12, 0..12),
    ) {
        let mut card = Vec::new();
        let mut member_lines = 0;
        let mut logical = vec!["BEGIN:VCARD".to_string(), "VERSION:3.0".to_string()];
        for l in &lines {
            logical.push(match l {
                Err(text) => text.clone(),
                Ok((group, params, spelling, seed)) => {
                    member_lines += 1;
                    format!(
                        "{}X-ADDRESSBOOKSERVER-MEMBER{}:{}{}",
                        if *group { "item7." } else { "" },
                        if *params { ";X-ORDER=1" } else { "" },
                        ["urn:uuid:", "URN:UUID:", "urn:UUID:"][*spelling as usize],
                        guid(*seed)
                    )
                }
            });
        }
        logical.push("UID:5C1E3D9A-7E8B-4A55-9C66-0A1B2C3D4E5F".to_string());
        logical.push("END:VCARD".to_string());
        for (i, l) in logical.iter().enumerate() {
            card.extend_from_slice(&physical(l, &cuts[i % cuts.len()], crlf));
        }
        let info = vcard::scan(&card).unwrap();
        prop_assert_eq!(info.members.len(), member_lines);
        let forward: HashMap<String, String> = mapped.iter().map(|s| (guid(*s), guid(s + 100))).collect();
        let back: HashMap<String, String> = forward.iter().map(|(a, b)| (b.clone(), a.clone())).collect();
        let there = vcard::rewrite(&card, &|u| forward.get(u).cloned()).unwrap();
        let expected_changes = lines.iter().filter(|l| matches!(l, Ok((_, _, _, s)) if mapped.contains(s))).count();
        prop_assert_eq!(there.changes.len(), expected_changes);
        let a = line::unfold(&card).unwrap();
        let b = line::unfold(&there.bytes).unwrap();
        prop_assert_eq!(a.len(), b.len());
        for ((ia, la), (ib, lb)) in a.iter().zip(&b) {
            // Same physical layout everywhere (the uids keep their length).
            prop_assert_eq!(ia.physical_lines, ib.physical_lines);
            prop_assert_eq!(ia.eol, ib.eol);
            if la != lb {
                prop_assert!(String::from_utf8_lossy(la).contains("X-ADDRESSBOOKSERVER-MEMBER"));
            }
        }
        let again = vcard::rewrite(&there.bytes, &|u| back.get(u).cloned()).unwrap();
        prop_assert_eq!(again.bytes, card);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// Whatever the bytes, scan and rewrite never panic, agree on what is malformed, and a
    /// rewrite that changes nothing gives the input back.
    #[test]
    fn scan_and_rewrite_are_total(
        pieces in prop::collection::vec(prop_oneof![
            Just(b"BEGIN:VCARD\r\n".to_vec()),
            Just(b"END:VCARD\r\n".to_vec()),
            Just(b"X-ADDRESSBOOKSERVER-MEMBER:urn:uuid:".to_vec()),
            Just(b"item1.X-ADDRESSBOOKSERVER-MEMBER;A;B=\"x:y\":URN:UUID:".to_vec()),
            Just(b"AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE".to_vec()),
            Just(b"\r\n ".to_vec()),
            Just(b"\n\t".to_vec()),
            Just(b"\r\n".to_vec()),
            prop::collection::vec(any::<u8>(), 0..8),
        ], 0..24),
    ) {
        let data = pieces.concat();
        let scanned = vcard::scan(&data);
        let same = vcard::rewrite(&data, &|_| None);
        match (&scanned, &same) {
            (Ok(_), Ok(r)) => prop_assert_eq!(&r.bytes, &data),
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            _ => prop_assert!(false, "scan and rewrite disagree"),
        }
        if let Ok(r) = vcard::rewrite(&data, &|u| Some(format!("{u}-NEW"))) {
            let info = vcard::scan(&r.bytes).unwrap();
            prop_assert_eq!(info.members.len(), scanned.unwrap().members.len());
        }
    }
}
