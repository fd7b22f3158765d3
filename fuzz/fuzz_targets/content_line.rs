//! The content-line layer on arbitrary bytes: unfold, split, parameter decoding and fold never
//! panic; fold∘unfold gives back every line; scan/rewrite never panic and an empty mapping gives
//! back the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use principal_reconciler::address::{AddressForm, CalAddress, Guid, Principal, RecordType};
use principal_reconciler::ical::{self, line, Resolve, RewriteOptions};
use std::collections::HashMap;

/// Resolves every address to one principal, to drive the rewriting paths too.
struct Everyone(Principal);

impl Resolve for Everyone {
    fn resolve(&self, _: &CalAddress) -> Option<&Principal> {
        Some(&self.0)
    }
}

fuzz_target!(|data: &[u8]| {
    // Unfold and split whatever comes.
    if let Ok(lines) = line::unfold(data) {
        let mut at = 0;
        for (info, text) in &lines {
            assert_eq!(info.start, at);
            at = info.end;
            if let Ok(cl) = line::split(text) {
                let joined: Vec<u8> = cl.params()
                    .flat_map(|p| p.raw.iter().copied())
                    .collect();
                assert_eq!(joined, cl.params);
                for p in cl.params() {
                    let _ = p.decoded();
                }
            }
            // fold∘unfold: fold the logical line again and read it back.
            if !text.starts_with(b"\xEF\xBB\xBF") && !matches!(text.first(), Some(b' ' | b'\t')) {
                let mut out = Vec::new();
                line::fold(text, line::Eol::CrLf, &mut out);
                out.extend_from_slice(b"\r\n");
                let back = line::unfold(&out).expect("no NUL in a logical line");
                assert_eq!(back.len(), 1);
                assert_eq!(&back[0].1, text);
            }
        }
        assert_eq!(at, data.len());
    }

    let empty: HashMap<String, Principal> = HashMap::new();
    let opts = RewriteOptions {
        form: AddressForm::UrnUuid,
    };
    let scanned = ical::scan(data);
    match ical::rewrite(data, &empty, &opts) {
        Ok(r) => {
            assert!(scanned.is_ok());
            assert!(r.changes.is_empty());
            assert_eq!(r.bytes, data);
            let everyone = Everyone(Principal {
                guid: Guid::parse("11111111-2222-4333-8444-555555555555").unwrap(),
                kind: RecordType::User,
                short_name: "fuzz".into(),
                full_name: Some("Fuzz, \"Q\" ^ Ünïcode".into()),
                emails: vec!["fuzz@example.com".into()],
            });
            let r = ical::rewrite(data, &everyone, &opts).expect("a calendar object stays one");
            let again =
                ical::scan(&r.bytes).expect("the rewritten file is still a calendar object");
            assert_eq!(again.addresses.len(), scanned.unwrap().addresses.len());
        }
        Err(e) => assert_eq!(Err(e), scanned.map(|_| ())),
    }
});
