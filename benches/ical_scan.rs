//! Throughput of `ical::scan` and `ical::rewrite` (prints figures; no assertions).
//! Run: `cargo bench --bench ical_scan`.

use principal_reconciler::address::{AddressForm, CalAddress, Guid, Principal, RecordType};
use principal_reconciler::ical::{self, RewriteOptions};
use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

/// A typical CalendarServer event: VTIMEZONE, a few attendees, folded description.
fn synthetic(i: usize) -> Vec<u8> {
    let mut s = String::from(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//CALENDARSERVER.ORG//NONSGML Version 1//EN\r\n\
         BEGIN:VTIMEZONE\r\nTZID:Europe/Berlin\r\nBEGIN:DAYLIGHT\r\nTZOFFSETFROM:+0100\r\nTZOFFSETTO:+0200\r\n\
         DTSTART:19810329T020000\r\nRRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU\r\nTZNAME:CEST\r\nEND:DAYLIGHT\r\n\
         BEGIN:STANDARD\r\nTZOFFSETFROM:+0200\r\nTZOFFSETTO:+0100\r\nDTSTART:19961027T030000\r\n\
         RRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU\r\nTZNAME:CET\r\nEND:STANDARD\r\nEND:VTIMEZONE\r\nBEGIN:VEVENT\r\n",
    );
    s += &format!("UID:{i:08X}-1234-4567-89AB-CDEF01234567\r\nDTSTAMP:20100101T000000Z\r\n");
    s += "DTSTART;TZID=Europe/Berlin:20100105T100000\r\nDTEND;TZID=Europe/Berlin:20100105T110000\r\n";
    s += "SUMMARY:Weekly planning meeting\r\nDESCRIPTION:Agenda: status\\, budget\\, next steps. Please bring yo\r\n ur numbers for the quarter and the open issues list.\r\n";
    s += &format!("ORGANIZER;CN=Jane Doe;EMAIL=jane{i}@example.com:mailto:jane{i}@example.com\r\n");
    for a in 0..6 {
        s += &format!(
            "ATTENDEE;CN=Person {a};CUTYPE=INDIVIDUAL;EMAIL=p{a}@example.com;PARTSTAT=ACCEPTED;ROLE=REQ-PARTICIPANT:\r\n urn:uuid:{a:08X}-0000-4000-8000-{i:012X}\r\n"
        );
    }
    s += "END:VEVENT\r\nEND:VCALENDAR\r\n";
    s.into_bytes()
}

fn corpus() -> Vec<Vec<u8>> {
    for dir in [
        concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus/ical-calcard"),
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/corpus/ical-calcard"
        ),
    ] {
        if let Ok(rd) = std::fs::read_dir(dir) {
            return rd
                .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
                .collect();
        }
    }
    Vec::new()
}

fn measure(what: &str, files: &[Vec<u8>], rounds: usize, mut f: impl FnMut(&[u8])) {
    let bytes: usize = files.iter().map(Vec::len).sum();
    let t = Instant::now();
    for _ in 0..rounds {
        for b in files {
            f(b);
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let n = (files.len() * rounds) as f64;
    println!(
        "{what:<40} {:>10.0} files/s {:>8.1} MB/s  ({} files × {rounds}, {:.1} KB avg)",
        n / secs,
        (bytes * rounds) as f64 / secs / 1e6,
        files.len(),
        bytes as f64 / files.len().max(1) as f64 / 1e3
    );
}

fn main() {
    let synth: Vec<Vec<u8>> = (0..2000).map(synthetic).collect();
    let corpus = corpus();
    let empty: HashMap<String, Principal> = HashMap::new();
    let mut m = HashMap::new();
    for i in 0..2000usize {
        m.insert(
            CalAddress::parse(&format!("mailto:jane{i}@example.com")).key(),
            Principal {
                guid: Guid::parse(&format!("11111111-0000-4000-8000-{i:012X}")).unwrap(),
                kind: RecordType::User,
                short_name: format!("jane{i}"),
                full_name: Some("Jane Doe".into()),
                emails: vec![format!("jane{i}@example.com")],
            },
        );
    }
    let opts = RewriteOptions {
        form: AddressForm::UrnUuid,
    };
    measure("scan, synthetic CalendarServer events", &synth, 20, |b| {
        black_box(ical::scan(b).ok());
    });
    measure("rewrite, empty mapping", &synth, 20, |b| {
        black_box(ical::rewrite(b, &empty, &opts).ok());
    });
    measure("rewrite, organizer resolved", &synth, 20, |b| {
        black_box(ical::rewrite(b, &m, &opts).ok());
    });
    if corpus.is_empty() {
        println!("(corpus ../shared/corpus/ical-calcard not found: skipped)");
    } else {
        measure("scan, shared corpus (incl. rejected)", &corpus, 50, |b| {
            black_box(ical::scan(b).ok());
        });
    }
}
