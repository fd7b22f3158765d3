//! LDIF snapshots: write -> read is identity on the record model (proptest), and old-directory
//! exports are detected by content.

use principal_reconciler::address::{Guid, RecordType};
use principal_reconciler::config::Preset;
use principal_reconciler::directory::presets::Schema;
use principal_reconciler::directory::{
    load_ldif, load_old, write_snapshot, Directory, DirectoryRecord,
};
use proptest::prelude::*;

const BASE: &str = "dc=example,dc=com";

fn guid_strategy() -> impl Strategy<Value = Guid> {
    any::<[u8; 16]>().prop_map(|b| {
        let h = hex::encode_upper(b);
        Guid::parse(&format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        ))
        .unwrap()
    })
}

/// Trimmed, non-empty text, including characters LDIF must base64 (non-ASCII, `:`, `<`, ...).
fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9:<#=,+ éü\u{4e2d}\\\\*()-]{1,24}"
        .prop_map(|s| s.trim().to_string())
        .prop_filter("non-empty", |s| !s.is_empty())
}

fn unique(v: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in v {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

fn record(idx: usize) -> impl Strategy<Value = DirectoryRecord> {
    (
        0..4usize,
        guid_strategy(),
        proptest::collection::vec("[a-z][a-z0-9._-]{0,12}", 1..3),
        proptest::option::of(text()),
        proptest::collection::vec("[a-z0-9._-]{1,10}@[a-z]{1,8}\\.(com|org)", 0..3),
        proptest::collection::vec(guid_strategy(), 0..3),
        proptest::collection::vec("[a-z][a-z0-9]{0,8}", 0..3),
        proptest::collection::vec(guid_strategy(), 0..2),
    )
        .prop_map(move |(k, guid, shorts, full, emails, mg, mn, ng)| {
            let kind = RecordType::ALL[k];
            let shorts = unique(shorts);
            let container = match kind {
                RecordType::User => "cn=users",
                RecordType::Group => "cn=groups",
                RecordType::Location => "cn=places",
                RecordType::Resource => "cn=resources",
            };
            let rdn = if kind == RecordType::User {
                "uid"
            } else {
                "cn"
            };
            let is_group = kind == RecordType::Group;
            // Places and resources without apple-realname read cn (their short name) as full name.
            let full = match kind {
                RecordType::Location | RecordType::Resource => {
                    Some(full.unwrap_or_else(|| shorts[0].clone()))
                }
                _ => full,
            };
            DirectoryRecord {
                kind,
                guid,
                source: format!("{rdn}={}-{idx},{container},{BASE}", shorts[0]),
                short_names: shorts,
                full_name: full,
                emails: unique(emails),
                member_guids: if is_group { mg } else { vec![] },
                member_names: if is_group { unique(mn) } else { vec![] },
                nested_guids: if is_group { ng } else { vec![] },
            }
        })
}

fn records() -> impl Strategy<Value = Vec<DirectoryRecord>> {
    (0..12usize)
        .prop_flat_map(|n| (0..n).map(record).collect::<Vec<_>>())
        .prop_map(|mut v| {
            // GUIDs are unique in a directory (a duplicate is skipped with a warning on read).
            let mut seen = std::collections::HashSet::new();
            v.retain(|r| seen.insert(r.guid.clone()));
            for r in &mut v {
                r.member_guids.dedup();
                r.nested_guids.dedup();
            }
            v
        })
}

fn round_trip(recs: &[DirectoryRecord], preset: Preset) -> Vec<DirectoryRecord> {
    let m = Schema::preset(preset);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snap.ldif");
    let d = Directory {
        records: recs.to_vec(),
        origin: "test".into(),
        warnings: vec![],
    };
    write_snapshot(&path, &d, &m, Some(BASE)).unwrap();
    let back = load_ldif(&path, &m, Some(BASE)).unwrap();
    assert!(back.warnings.is_empty(), "{:?}", back.warnings);
    back.records
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn od_snapshot_write_then_read_is_identity(recs in records()) {
        let back = round_trip(&recs, Preset::OpenDirectory);
        prop_assert_eq!(back, recs);
    }
}

#[test]
fn ad_snapshot_keeps_binary_guids() {
    let g = Guid::parse("e5e19767-b5ec-4f15-960f-865c28c015fa").unwrap();
    let r = DirectoryRecord {
        kind: RecordType::User,
        guid: g,
        short_names: vec!["jdoe".into()],
        full_name: Some("John Doe".into()),
        emails: vec!["jdoe@example.com".into()],
        member_guids: vec![],
        member_names: vec![],
        nested_guids: vec![],
        source: format!("CN=John Doe,OU=Staff,{BASE}"),
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ad.ldif");
    let m = Schema::preset(Preset::ActiveDirectory);
    write_snapshot(
        &path,
        &Directory {
            records: vec![r.clone()],
            ..Default::default()
        },
        &m,
        Some(BASE),
    )
    .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("objectGUID:: Z5fh5ey1FU+WD4ZcKMAV+g=="),
        "{text}"
    );
    assert_eq!(load_ldif(&path, &m, Some(BASE)).unwrap().records, vec![r]);
}

#[test]
fn old_exports_are_detected_by_content() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dir.path().join("users.ldif"); // a dsexport file, whatever its name says
    std::fs::write(
        &ds,
        "# exported by dsexport\n0x0A 0x5C 0x3A 0x2C dsRecTypeStandard:Users 4 dsAttrTypeStandard:RecordName dsAttrTypeStandard:RealName dsAttrTypeStandard:GeneratedUID dsAttrTypeStandard:EMailAddress\nalice:Alice:11111111-2222-3333-4444-555555555555:alice@old.example.com\n",
    )
    .unwrap();
    let ld = dir.path().join("export.txt"); // LDIF
    std::fs::write(
        &ld,
        format!("# slapcat\ndn: cn=room,cn=places,{BASE}\nobjectClass: apple-resource\ncn: room\napple-generateduid: 22222222-2222-3333-4444-555555555555\n"),
    )
    .unwrap();
    let d = load_old(&[ds.clone(), ld.clone()]).unwrap();
    assert_eq!(d.records.len(), 2, "{:?}", d.warnings);
    assert_eq!(d.records[0].source, format!("{}:3", ds.display()));
    assert_eq!(d.records[0].emails, vec!["alice@old.example.com"]);
    assert_eq!(d.records[1].kind, RecordType::Location);
    let junk = dir.path().join("junk.csv");
    std::fs::write(&junk, "\nname,guid\n").unwrap();
    let e = load_old(std::slice::from_ref(&junk)).unwrap_err();
    assert!(
        e.message.starts_with(&format!("{}:2:", junk.display())),
        "{}",
        e.message
    );
}
