//! Test data others wrote (`../shared/corpus/external-ics/`: CalendarServer's and CalDAVTester's
//! test vectors, iCal 3/4 request bodies kept by DAViCal, Radicale's events), read at test time:
//! every file goes through scan and rewrite losslessly; CalendarServer 2.5's own upgrade
//! before/after pair and calverify's bad-CUA inputs agree with what the server (or calverify)
//! writes; a store built around them goes through plan, apply and rollback.

use crate::support::corpus;
use principal_reconciler::address::{AddressForm, CalAddress, Guid, Principal, RecordType};
use principal_reconciler::ical::{self, dropbox::HomeRef, line, Resolve, RewriteOptions};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

// ---- the corpus ----

/// CalDAVTester's substitution table (`scripts/server/serverinfo.xml`): `$key:` → value, in the
/// order defined, each value expanded with the ones before it, `<repeat count="N">` blocks
/// defined for 1..=N (`%d`, `%02d`).
fn substitutions(serverinfo: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(serverinfo).unwrap();
    let doc = roxmltree::Document::parse_with_options(
        &text,
        roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        },
    )
    .unwrap();
    let subs = doc
        .descendants()
        .find(|n| n.has_tag_name("substitutions"))
        .unwrap();
    fn child<'a>(n: roxmltree::Node<'a, 'a>, tag: &str) -> Option<&'a str> {
        n.children()
            .find(|c| c.has_tag_name(tag))
            .map(|c| c.text().unwrap_or(""))
    }
    let fill = |s: &str, i: usize| {
        s.replace("%02d", &format!("{i:02}"))
            .replace("%d", &i.to_string())
    };
    let mut out: Vec<(String, String)> = Vec::new();
    let define = |key: String, value: String, out: &mut Vec<(String, String)>| {
        let value = expand(&value, out);
        out.push((key, value));
    };
    for n in subs.children().filter(|n| n.is_element()) {
        if n.has_tag_name("substitution") {
            if let (Some(k), Some(v)) = (child(n, "key"), child(n, "value")) {
                define(k.to_string(), v.to_string(), &mut out);
            }
        } else if n.has_tag_name("repeat") {
            let count: usize = n.attribute("count").unwrap().parse().unwrap();
            for i in 1..=count {
                for s in n.children().filter(|c| c.has_tag_name("substitution")) {
                    if let (Some(k), Some(v)) = (child(s, "key"), child(s, "value")) {
                        define(fill(k, i), fill(v, i), &mut out);
                    }
                }
            }
        }
    }
    out
}

/// `text` with every `$key:` of `subs` replaced (until nothing changes).
fn expand(text: &str, subs: &[(String, String)]) -> String {
    let mut text = text.to_string();
    for _ in 0..8 {
        let before = text.clone();
        for (k, v) in subs {
            if text.contains(k.as_str()) {
                text = text.replace(k.as_str(), v);
            }
        }
        if text == before {
            break;
        }
    }
    text
}

/// (path relative to `external-ics/`, bytes)
type Files = Vec<(String, Vec<u8>)>;

/// Every calendar file of the external corpus (CalDAVTester templates with their placeholders
/// filled in), by path relative to `external-ics/`.
fn external() -> Option<(PathBuf, Files)> {
    let root = corpus::dir("external-ics")?;
    let subs =
        substitutions(&root.join("ccs-caldavtester/9f82110945/scripts/server/serverinfo.xml"));
    let mut out = Vec::new();
    for p in corpus::files(&root) {
        let rel = p
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if !(rel.ends_with(".ics") || rel.ends_with(".data")) {
            continue;
        }
        let mut bytes = std::fs::read(&p).unwrap();
        if rel.starts_with("ccs-caldavtester/") {
            if let Ok(text) = std::str::from_utf8(&bytes) {
                bytes = expand(text, &subs).into_bytes();
            }
        }
        out.push((rel, bytes));
    }
    Some((root, out))
}

/// What we expect to be refused, by file: CalendarServer could not have stored these either.
const REJECTED: &[(&str, &str)] = &[
    // A NUL byte: CalDAVTester's "bad data" upload.
    ("ccs-caldavtester/9f82110945/Resource/CalDAV/errors/41.ics", "NUL byte"),
    // calverify's unparseable OLD-CUA (a whole line pasted in, quotes unescaped).
    (
        "ccs-calendarserver/CalendarServer-5.2/calendarserver/tools/test/test_calverify/L00725_test_fixBadCuaLines.ics",
        "calverify --badcua",
    ),
];

// ---- a resolver that maps everything ----

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
                "Prénom Ñame-{i}, \"Q\"; a long tail that forces folding"
            )),
            _ => Some(format!("User {i}")),
        },
        emails: if i % 4 == 0 {
            vec![]
        } else {
            vec![format!("user{i}@principal.test")]
        },
    }
}

/// Maps every ORGANIZER/ATTENDEE address and every old CUA to a principal, and moves every home
/// a dropbox link names.
#[derive(Clone, Default)]
struct Everything {
    map: HashMap<String, Principal>,
    homes: HashMap<HomeRef, Guid>,
}

impl Resolve for Everything {
    fn resolve(&self, addr: &CalAddress) -> Option<&Principal> {
        self.map.get(&addr.key())
    }
    fn moved_home(&self, home: &HomeRef) -> Option<Guid> {
        self.homes.get(home).cloned()
    }
}

impl Everything {
    fn of(info: &ical::CalendarInfo) -> Everything {
        let mut e = Everything::default();
        let addrs = info
            .addresses
            .iter()
            .filter(|a| a.property == "ORGANIZER" || a.property == "ATTENDEE")
            .chain(&info.old_cuas);
        for a in addrs {
            let n = e.map.len();
            e.map
                .entry(CalAddress::parse(&a.value).key())
                .or_insert_with(|| principal(n));
        }
        for l in &info.links {
            let n = e.homes.len();
            e.homes
                .entry(l.home.clone())
                .or_insert_with(|| principal(900 + n).guid);
        }
        e
    }

    /// The same, knowing every principal by its own addresses too (a second pass must find
    /// nothing to do).
    fn with_own_addresses(&self) -> Everything {
        let mut e = self.clone();
        for p in self.map.values() {
            let g = &p.guid;
            let own = [
                format!("urn:uuid:{g}"),
                format!("/principals/__uids__/{g}/"),
                format!("/principals/{}/{}/", p.kind.collection(), p.short_name),
            ];
            for a in own
                .into_iter()
                .chain(p.emails.iter().map(|m| format!("mailto:{m}")))
            {
                e.map.insert(CalAddress::parse(&a).key(), p.clone());
            }
        }
        e
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

const URN: RewriteOptions = RewriteOptions {
    form: AddressForm::UrnUuid,
};

#[test]
fn every_external_file_is_scanned_and_rewritten_losslessly() {
    let Some((_, files)) = external() else {
        return;
    };
    assert!(files.len() >= 300, "{} files", files.len());
    let mut rejected = BTreeMap::new();
    let (mut objects, mut rewritten, mut lines, mut links, mut old_cuas) = (0, 0, 0, 0, 0);
    for (name, bytes) in &files {
        let empty: HashMap<String, Principal> = HashMap::new();
        let info = match ical::scan(bytes) {
            Ok(info) => info,
            Err(e) => {
                assert_eq!(ical::rewrite(bytes, &empty, &URN).unwrap_err(), e);
                rejected.insert(name.clone(), e.to_string());
                continue;
            }
        };
        objects += 1;
        let r = ical::rewrite(bytes, &empty, &URN).unwrap();
        assert!(
            r.changes.is_empty() && r.bytes == *bytes,
            "{name}: empty mapping changed it"
        );

        let all = Everything::of(&info);
        // The lines that may change: those naming a mapped principal (ORGANIZER/ATTENDEE, and
        // the ATTENDEE-REF / PERUSER-UID / MODIFIED-BY naming the same), and the links.
        let targets: BTreeSet<usize> = info
            .addresses
            .iter()
            .filter(|a| all.map.contains_key(&key_of(a)))
            .map(|a| a.line)
            .chain(info.links.iter().map(|l| l.line))
            .collect();
        let r = ical::rewrite(bytes, &all, &URN).unwrap_or_else(|e| panic!("{name}: {e}"));
        let changed: BTreeSet<usize> = r.changes.iter().map(|c| c.line).collect();
        assert!(
            changed.is_subset(&targets),
            "{name}: {changed:?} outside {targets:?}"
        );
        // Every other line byte for byte (folding and line ending included).
        let (before, after) = (
            line::unfold(bytes).unwrap(),
            line::unfold(&r.bytes).unwrap(),
        );
        assert_eq!(before.len(), after.len(), "{name}");
        for ((bi, _), (ai, al)) in before.iter().zip(&after) {
            if changed.contains(&bi.line) {
                assert_eq!(bi.eol, ai.eol, "{name}: line {}", bi.line);
                for phys in r.bytes[ai.start..ai.end].split(|&b| b == b'\n') {
                    let phys = phys.strip_suffix(b"\r").unwrap_or(phys);
                    assert!(phys.len() <= line::FOLD_AT, "{name}: line {}", bi.line);
                }
                let c = r.changes.iter().find(|c| c.line == bi.line).unwrap();
                assert_eq!(c.new_line.as_bytes(), &al[..], "{name}");
            } else {
                assert_eq!(
                    bytes[bi.start..bi.end],
                    r.bytes[ai.start..ai.end],
                    "{name}: line {}",
                    bi.line
                );
            }
        }
        // Now every mapped address is canonical, every link names its new home, and every old
        // CUA left names its record by the record's own address.
        let again =
            ical::scan(&r.bytes).unwrap_or_else(|e| panic!("{name}: rewritten file rejected: {e}"));
        assert_eq!(again.addresses.len(), info.addresses.len(), "{name}");
        for (old, new) in info.addresses.iter().zip(&again.addresses) {
            if let (true, Some(p)) = (
                old.property == "ORGANIZER" || old.property == "ATTENDEE",
                all.resolve(&CalAddress::parse(&old.value)),
            ) {
                assert_eq!(
                    new.value,
                    format!("urn:uuid:{}", p.guid),
                    "{name}: line {}",
                    old.line
                );
                assert_eq!(new.cn, p.full_name, "{name}: line {}", old.line);
                assert_eq!(new.cutype, old.cutype, "{name}");
            }
        }
        assert_eq!(again.links.len(), info.links.len(), "{name}");
        for (old, new) in info.links.iter().zip(&again.links) {
            let g = &all.homes[&old.home];
            assert!(new.home.is_uid_of(g), "{name}: {new:?}");
            links += usize::from(old.value != new.value);
        }
        let own = all.with_own_addresses();
        assert_eq!(
            again.old_cuas.len(),
            info.old_cuas.len(),
            "{name}: every old CUA resolved"
        );
        for o in &again.old_cuas {
            let addr = CalAddress::parse(&o.value);
            let p = own
                .resolve(&addr)
                .unwrap_or_else(|| panic!("{name}: {o:?}"));
            assert!(p.owns(&addr), "{name}: {o:?} still names an old principal");
        }
        old_cuas += info.old_cuas.len();
        // A second pass finds nothing to do; the icalendar crate still reads what it read.
        let twice = ical::rewrite(&r.bytes, &own, &URN).unwrap();
        assert!(
            twice.changes.is_empty(),
            "{name}: second pass changed {:?}",
            twice.changes
        );
        if icalendar_parses(bytes) {
            assert!(
                icalendar_parses(&r.bytes),
                "{name}: the icalendar crate no longer parses it"
            );
        }
        rewritten += usize::from(!r.changes.is_empty());
        lines += r.changes.len();
    }
    eprintln!(
        "external corpus: {} files, {objects} calendar objects, {rewritten} rewritten ({lines} lines, {links} dropbox links, {old_cuas} old CUAs seen), {} rejected: {rejected:#?}",
        files.len(),
        rejected.len()
    );
    let want: BTreeMap<String, &str> = REJECTED.iter().map(|(f, r)| (f.to_string(), *r)).collect();
    assert_eq!(
        rejected.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{rejected:#?}"
    );
    for (f, why) in &rejected {
        assert!(why.contains(want[f]), "{f}: {why}");
    }
    assert!(
        links >= 20,
        "the CalDAVTester dropbox templates have links: {links}"
    );
}

fn icalendar_parses(bytes: &[u8]) -> bool {
    match std::str::from_utf8(bytes) {
        Ok(s) => icalendar::parser::read_calendar(&icalendar::parser::unfold(s)).is_ok(),
        Err(_) => false,
    }
}

/// The awkward lines CalendarServer's own data holds (read at test time, never copied here):
/// seeds for a property test that mutates them. Whatever comes out, split and the parameter
/// iterator never panic and cover the line, and a calendar made of it scans and rewrites the way
/// the content-line layer says.
#[test]
fn awkward_corpus_lines_survive_mutation() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let Some((_, files)) = external() else {
        return;
    };
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    for (_, bytes) in &files {
        let Ok(lines) = line::unfold(bytes) else {
            continue;
        };
        for (_, l) in lines {
            let awkward = l.windows(2).any(|w| w == b"\\\"")
                || l.starts_with(b"ATTACH")
                || l.starts_with(b"X-APPLE-DROPBOX")
                || memchr_find(&l, b"OLD-CUA")
                || memchr_find(&l, b";_");
            if awkward && !seeds.contains(&l) {
                seeds.push(l);
            }
        }
    }
    assert!(seeds.len() >= 10, "{} seeds", seeds.len());
    let mut runner = TestRunner::new(Config {
        cases: 512,
        ..Config::default()
    });
    let n = seeds.len();
    let strategy = (
        0..n,
        prop::collection::vec(
            (
                any::<prop::sample::Index>(),
                prop::sample::select(&[b'"', b'\\', b';', b':', b',', b'=', b'^', b'x', b' '][..]),
                0u8..3,
            ),
            0..4,
        ),
    );
    runner
        .run(&strategy, |(i, edits)| {
            let mut l = seeds[i].clone();
            for (at, byte, op) in edits {
                let pos = at.index(l.len() + 1);
                match op {
                    0 => l.insert(pos, byte),
                    1 if pos < l.len() => {
                        l.remove(pos);
                    }
                    _ => l.truncate(pos),
                }
            }
            if let Ok(cl) = line::split(&l) {
                let joined: Vec<u8> = cl.params().flat_map(|p| p.raw.iter().copied()).collect();
                prop_assert_eq!(joined, cl.params.to_vec());
                for p in cl.params() {
                    let _ = p.decoded();
                }
            }
            let mut cal = b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\n".to_vec();
            line::fold(&l, line::Eol::CrLf, &mut cal);
            cal.extend_from_slice(b"\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n");
            let scanned = ical::scan(&cal);
            prop_assert_eq!(
                scanned.is_ok(),
                line::split(&l).is_ok() || l.trim_ascii().is_empty()
            );
            if let Ok(info) = scanned {
                let all = Everything::of(&info);
                let r = ical::rewrite(&cal, &all, &URN).unwrap();
                prop_assert!(ical::scan(&r.bytes).is_ok());
                let twice = ical::rewrite(&r.bytes, &all.with_own_addresses(), &URN).unwrap();
                prop_assert!(twice.changes.is_empty(), "{:?}", twice.changes);
            }
            Ok(())
        })
        .unwrap();
}

fn memchr_find(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

// ---- CalendarServer's directories, as a current directory (LDIF) and an old one (dsexport) ----

#[derive(Clone, Debug)]
struct Account {
    short: String,
    guid: String,
    name: String,
    email: Option<String>,
}

/// The `<user>` records of a CalendarServer XML directory (`accounts.xml`) that have a GUID.
fn accounts(xml: &Path) -> Vec<Account> {
    let text = std::fs::read_to_string(xml).unwrap();
    let doc = roxmltree::Document::parse_with_options(
        &text,
        roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        },
    )
    .unwrap();
    let field = |n: roxmltree::Node, tag: &str| {
        n.children()
            .find(|c| c.has_tag_name(tag))
            .and_then(|c| c.text())
            .map(str::to_string)
    };
    doc.descendants()
        .filter(|n| n.has_tag_name("user") && n.attribute("repeat").is_none())
        .filter_map(|n| {
            let guid = field(n, "guid")?;
            Guid::parse(&guid)?;
            Some(Account {
                short: field(n, "uid")?,
                guid,
                name: field(n, "name")?,
                email: field(n, "email-address"),
            })
        })
        .collect()
}

/// An Open Directory LDIF snapshot of `accounts`, each under the GUID `guid` gives it.
fn ldif(accounts: &[Account], guid: impl Fn(&Account) -> String) -> String {
    let mut s = String::from("version: 1\n\n");
    for a in accounts {
        s.push_str(&format!(
            "dn: uid={short},cn=users,dc=example,dc=com\nobjectClass: inetOrgPerson\nobjectClass: apple-user\nuid: {short}\ncn: {name}\nsn: {name}\n",
            short = a.short,
            name = a.name
        ));
        if let Some(m) = &a.email {
            s.push_str(&format!("mail: {m}\n"));
        }
        s.push_str(&format!("apple-generateduid: {}\n\n", guid(a)));
    }
    s
}

/// A Workgroup Manager export of `accounts` as they were.
fn dsexport(accounts: &[Account]) -> String {
    let mut s = String::from("0x0A 0x5C 0x3A 0x2C dsRecTypeStandard:Users 4 dsAttrTypeStandard:RecordName dsAttrTypeStandard:GeneratedUID dsAttrTypeStandard:RealName dsAttrTypeStandard:EMailAddress\n");
    for a in accounts {
        s.push_str(&format!(
            "{}:{}:{}:{}\n",
            a.short,
            a.guid,
            a.name,
            a.email.as_deref().unwrap_or("")
        ));
    }
    s
}

/// A store, its directories and a configuration in a temporary folder.
struct Site {
    dir: tempfile::TempDir,
    config: PathBuf,
    store: PathBuf,
}

impl Site {
    /// `kind` is `ics-dir` or `calendarserver-fs`; with `renew`, everyone has a new GUID and the
    /// old directory is the export of `accounts` as they were.
    fn new(accounts: &[Account], renew: bool, kind: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let new_guid = |a: &Account| {
            if renew {
                crate::support::world::renewed(&a.guid)
            } else {
                a.guid.clone()
            }
        };
        std::fs::write(dir.path().join("new.ldif"), ldif(accounts, new_guid)).unwrap();
        let mut cfg = "[directory]\nldif = \"new.ldif\"\n\n".to_string();
        if renew {
            std::fs::write(dir.path().join("old-users.txt"), dsexport(accounts)).unwrap();
            cfg.push_str("[old_directory]\nfiles = [\"old-users.txt\"]\n\n");
        }
        cfg.push_str(&format!(
            "[store]\nkind = \"{kind}\"\npath = \"Documents\"\n\n[rewrite]\ninternal_domains = [\"example.com\"]\n\n[state]\npath = \"state\"\n\n[report]\ndir = \"reports\"\n"
        ));
        let config = dir.path().join("principal-reconciler.toml");
        std::fs::write(&config, cfg).unwrap();
        let store = dir.path().join("Documents");
        std::fs::create_dir_all(&store).unwrap();
        Site { dir, config, store }
    }

    fn put(&self, rel: &str, bytes: &[u8]) {
        let p = self.store.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    fn run(&self, args: &[&str]) -> (i32, serde_json::Value) {
        let out = assert_cmd::Command::cargo_bin("principal-reconciler")
            .unwrap()
            .arg("--config")
            .arg(&self.config)
            .args(["--no-progress", "--json"])
            .args(args)
            .output()
            .unwrap();
        let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{e}: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap(), doc)
    }

    /// changes.csv as (resource, line, property, old, new).
    fn changes(&self) -> Vec<(String, usize, String, String, String)> {
        let mut r = csv::Reader::from_path(self.dir.path().join("reports/changes.csv")).unwrap();
        r.records()
            .map(|rec| {
                let rec = rec.unwrap();
                (
                    rec[0].to_string(),
                    rec[1].parse().unwrap(),
                    rec[2].to_string(),
                    rec[3].to_string(),
                    rec[4].to_string(),
                )
            })
            .collect()
    }
}

/// (property, value, CN, EMAIL) of every ORGANIZER and ATTENDEE, sorted.
fn principals_of(bytes: &[u8]) -> Vec<(String, String, Option<String>, Option<String>)> {
    let mut v: Vec<_> = ical::scan(bytes)
        .unwrap()
        .addresses
        .into_iter()
        .filter(|a| a.property == "ORGANIZER" || a.property == "ATTENDEE")
        .map(|a| (a.property, a.value, a.cn, a.email))
        .collect();
    v.sort();
    v
}

fn calendarserver(root: &Path, rel: &str) -> PathBuf {
    root.join("ccs-calendarserver").join(rel)
}

#[test]
fn calendarserver_2_5_upgrade_pair_agrees_with_ours() {
    let Some(root) = corpus::dir("external-ics") else {
        return;
    };
    let dir = calendarserver(&root, "CalendarServer-2.5/twistedcaldav");
    let accts = accounts(&dir.join("directory/test/accounts.xml"));
    assert!(accts.iter().any(|a| a.short == "cdaboo"), "{accts:?}");
    let before =
        std::fs::read(dir.join("test/test_upgrade/L01214_module_event01_before.ics")).unwrap();
    let after =
        std::fs::read(dir.join("test/test_upgrade/L01254_module_event01_after.ics")).unwrap();
    // The 1.x → 2.x normalisation against the same directory: mailto: → urn:uuid:, CN, EMAIL.
    let site = Site::new(&accts, false, "ics-dir");
    site.put("calendar/event01.ics", &before);
    let (code, doc) = site.run(&["plan"]);
    assert_eq!(code, 0, "{doc}");
    let (code, doc) = site.run(&["apply"]);
    assert_eq!(code, 0, "{doc}");
    let ours = std::fs::read(site.store.join("calendar/event01.ics")).unwrap();
    assert_eq!(principals_of(&ours), principals_of(&after));
    assert_ne!(principals_of(&before), principals_of(&after));
    // ... touching nothing else (the server's own upgrade rewrote the whole file).
    let changed: BTreeSet<usize> = site.changes().iter().map(|c| c.1).collect();
    assert_eq!(changed.len(), 3);
    let (b, a) = (line::unfold(&before).unwrap(), line::unfold(&ours).unwrap());
    for ((bi, _), (ai, _)) in b.iter().zip(&a) {
        if !changed.contains(&bi.line) {
            assert_eq!(before[bi.start..bi.end], ours[ai.start..ai.end]);
        }
    }
}

/// Values calverify (CalendarServer 5.2) repairs: http principal URLs, /principals paths, bare
/// and mailto: addresses, CALENDARSERVER-OLD-CUA, lines with escaped quotes.
#[test]
fn calverify_inputs_are_repaired_as_calverify_does_and_follow_a_guid_change() {
    let Some(root) = corpus::dir("external-ics") else {
        return;
    };
    let tools = calendarserver(&root, "CalendarServer-5.2/calendarserver/tools/test");
    let accts = accounts(&tools.join("calverify/accounts.xml"));
    assert_eq!(accts.len(), 4);
    let inputs: Vec<(String, Vec<u8>)> = corpus::files(&tools.join("test_calverify"))
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    assert_eq!(inputs.len(), 13);
    let broken = "L00725_test_fixBadCuaLines.ics";
    for renew in [false, true] {
        let site = Site::new(&accts, renew, "ics-dir");
        for (name, bytes) in &inputs {
            site.put(&format!("calendar/{name}"), bytes);
        }
        let before = crate::support::world::tree(&site.store);
        let (code, doc) = site.run(&["plan"]);
        assert_eq!(code, 1, "{doc}");
        let problems = doc["plan"]["problems"].as_array().unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0]["path"], format!("calendar/{broken}"));
        let (code, doc) = site.run(&["apply"]);
        assert_eq!(code, 0, "{doc}");
        let guid_of = |a: &Account| {
            if renew {
                crate::support::world::renewed(&a.guid)
            } else {
                a.guid.clone()
            }
        };
        let (mut values, mut old_cuas) = (0, 0);
        for (name, old) in &inputs {
            let now = std::fs::read(site.store.join("calendar").join(name)).unwrap();
            if name == broken {
                assert_eq!(&now, old, "a malformed resource is never written");
                continue;
            }
            let (was, is) = (ical::scan(old).unwrap(), ical::scan(&now).unwrap());
            for (o, n) in was.addresses.iter().zip(&is.addresses) {
                let addr = CalAddress::parse(&o.value);
                let who = accts.iter().find(|a| match &addr {
                    CalAddress::Mailto(m) => a.email.as_deref() == Some(m.as_str()),
                    CalAddress::PrincipalName { short, .. } => *short == a.short,
                    other => other.guid().is_some_and(|g| g.as_str() == a.guid),
                });
                match who {
                    // As calverify --fix leaves it (and the server would write it).
                    Some(a) => {
                        assert_eq!(n.value, format!("urn:uuid:{}", guid_of(a)), "{name}: {o:?}");
                        assert_eq!(n.cn.as_deref(), Some(a.name.as_str()), "{name}");
                        assert_eq!(n.email, a.email, "{name}");
                        values += 1;
                    }
                    // Cyrus and John Smith are in no directory here: left alone.
                    None => assert_eq!((&n.value, &n.cn, &n.email), (&o.value, &o.cn, &o.email)),
                }
            }
            // OLD-CUA naming a principal follows it, in its own (http) form, base64 as the
            // server writes it; one that already names the current principal stays as written.
            for (o, n) in was.old_cuas.iter().zip(&is.old_cuas) {
                let moved = accts
                    .iter()
                    .find(|a| o.value.contains(&a.guid))
                    .filter(|_| renew);
                match moved {
                    Some(a) => {
                        assert_eq!(
                            n.value,
                            format!("http://demo.com:8008/principals/__uids__/{}/", guid_of(a)),
                            "{name}"
                        );
                        old_cuas += 1;
                    }
                    None => assert_eq!(n.value, o.value, "{name}"),
                }
            }
            assert_eq!(was.old_cuas.len(), is.old_cuas.len(), "{name}");
            if renew {
                let text = String::from_utf8_lossy(&now);
                for a in &accts {
                    assert!(!text.contains(&a.guid), "{name}: old GUID {} left", a.guid);
                }
            }
        }
        assert!(values >= 20, "{values}");
        assert_eq!(old_cuas, if renew { 4 } else { 0 });
        let (code, doc) = site.run(&["rollback"]);
        assert_eq!(code, 0, "{doc}");
        crate::support::world::assert_same_tree(
            &crate::support::world::tree(&site.store),
            &before,
            "rollback",
        );
    }
}

/// A 10.6 store whose homes (one per account of CalendarServer's own test directories, every
/// account with a new GUID since) hold CalendarServer's, DAViCal's iCal, Radicale's and
/// CalDAVTester's dropbox test data: plan, apply and rollback through the CLI.
#[test]
fn a_store_of_other_peoples_test_data_migrates_and_rolls_back() {
    use principal_reconciler::store::generate::StoreBuilder;
    let Some((root, files)) = external() else {
        return;
    };
    let mut accts = accounts(&calendarserver(
        &root,
        "CalendarServer-2.5/twistedcaldav/directory/test/accounts.xml",
    ));
    accts.extend(accounts(&calendarserver(
        &root,
        "CalendarServer-5.2/calendarserver/tools/test/calverify/accounts.xml",
    )));
    assert!(accts.len() >= 9, "{accts:?}");
    let site = Site::new(&accts, true, "calendarserver-fs");
    let guids: Vec<&str> = accts.iter().map(|a| a.guid.as_str()).collect();
    StoreBuilder::new(&site.store)
        .guids(&guids)
        .resources(0)
        .seed(7)
        .build()
        .unwrap();
    let chosen: Vec<&(String, Vec<u8>)> = files
        .iter()
        .filter(|(rel, _)| {
            rel.starts_with("ccs-calendarserver/")
                || rel.starts_with("radicale/")
                || rel.contains("/implicit/dropbox/")
                || (rel.starts_with("davical/") && (rel.contains("iCal") || rel.ends_with(".data")))
        })
        .collect();
    assert!(chosen.len() >= 150, "{}", chosen.len());
    let home = |guid: &str| format!("calendars/__uids__/{}/{}/{guid}", &guid[0..2], &guid[2..4]);
    let mut placed = Vec::new();
    for (i, (rel, bytes)) in chosen.iter().enumerate() {
        let a = &accts[i % accts.len()];
        let name = format!(
            "{i:03}-{}.ics",
            rel.rsplit('/').next().unwrap().trim_end_matches(".ics")
        );
        let path = format!("{}/calendar/{name}", home(&a.guid));
        site.put(&path, bytes);
        placed.push((path, a, bytes));
    }
    let before = crate::support::world::tree(&site.store);

    let (code, doc) = site.run(&["plan"]);
    assert_eq!(code, 1, "{doc}");
    let problems = doc["plan"]["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0]["path"]
        .as_str()
        .unwrap()
        .ends_with("-L00725_test_fixBadCuaLines.ics"));
    assert_eq!(doc["plan"]["homes"]["moved"], accts.len());
    let changes = site.changes();
    let allowed = [
        "ORGANIZER",
        "ATTENDEE",
        "X-CALENDARSERVER-ATTENDEE-COMMENT",
        "X-CALENDARSERVER-PERUSER-UID",
        "X-CALENDARSERVER-MODIFIED-BY",
        "X-APPLE-DROPBOX",
        "ATTACH",
    ];
    for c in &changes {
        assert!(allowed.contains(&c.2.as_str()), "{c:?}");
    }
    assert!(changes.len() >= 30, "{}", changes.len());
    let mut by_file: HashMap<&str, BTreeSet<usize>> = HashMap::new();
    for c in &changes {
        by_file.entry(c.0.as_str()).or_default().insert(c.1);
    }

    let (code, doc) = site.run(&["apply"]);
    assert_eq!(code, 0, "{doc}");
    let renewed = |g: &str| crate::support::world::renewed(g);
    let mut rewritten = 0;
    for (path, a, old) in &placed {
        let now_path = path.replace(&home(&a.guid), &home(&renewed(&a.guid)));
        let now = std::fs::read(site.store.join(&now_path)).unwrap();
        let lines = by_file.get(path.as_str()).cloned().unwrap_or_default();
        rewritten += usize::from(!lines.is_empty());
        if lines.is_empty() {
            assert_eq!(&now, *old, "{path}");
            continue;
        }
        let (b, n) = (line::unfold(old).unwrap(), line::unfold(&now).unwrap());
        assert_eq!(b.len(), n.len(), "{path}");
        for ((bi, _), (ni, _)) in b.iter().zip(&n) {
            if !lines.contains(&bi.line) {
                assert_eq!(
                    old[bi.start..bi.end],
                    now[ni.start..ni.end],
                    "{path}: line {}",
                    bi.line
                );
            }
        }
        // No ORGANIZER/ATTENDEE names an account by its old GUID any more.
        for f in ical::scan(&now).unwrap().addresses {
            if f.property == "ORGANIZER" || f.property == "ATTENDEE" {
                for acct in &accts {
                    assert!(!f.value.contains(&acct.guid), "{path}: {f:?}");
                }
            }
        }
    }
    assert!(rewritten >= 10, "{rewritten}");
    eprintln!(
        "store of external test data: {} resources in {} homes, {rewritten} rewritten ({} properties)",
        placed.len(),
        accts.len(),
        changes.len()
    );
    let (code, doc) = site.run(&["rollback"]);
    assert_eq!(code, 0, "{doc}");
    crate::support::world::assert_same_tree(
        &crate::support::world::tree(&site.store),
        &before,
        "rollback",
    );
}
