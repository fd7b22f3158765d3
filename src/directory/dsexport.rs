//! The old directory's exports: dsexport / Workgroup Manager character-delimited files.
//!
//! Header: end-of-record, escape, field and value separators in hex (`0x0A 0x5C 0x3A 0x2C`), the
//! record type, the attribute count and the attribute names (with or without the
//! `dsAttrTypeStandard:` prefix), or the shorthand `StandardUserRecord` / `StandardGroupRecord`.
//! Body: one record per line; `\,` `\:` and backslash-newline are escapes, other backslashes are
//! kept; multi-valued fields are joined by the value separator; rows shorter than the header are
//! padded (dsexport writes early rows before the header's attribute list is complete), longer rows
//! are rejected; `#` lines are comments. Bytes that are not UTF-8 are read as Latin-1, with a
//! warning naming the line.

use super::DirectoryRecord;
use crate::address::{Guid, RecordType};
use crate::error::{Error, Result};
use base64::Engine;
use std::io::BufRead;

/// The parsed header of an export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// End-of-record byte (usually `0x0A`, newline).
    pub end_of_record: u8,
    /// Escape byte (usually `0x5C`, backslash).
    pub escape: u8,
    /// Field separator byte (usually `0x3A`, colon).
    pub field_sep: u8,
    /// Value separator byte within a field (usually `0x2C`, comma).
    pub value_sep: u8,
    /// `None` for record types that carry no calendar principals (computers, mounts, ...).
    pub kind: Option<RecordType>,
    /// The record type as written in the header (the fifth token).
    pub record_type: String,
    /// Attribute names without their `dsAttrTypeStandard:` / `dsAttrTypeNative:` prefix.
    pub attributes: Vec<String>,
    /// Per attribute: values are base64 (`base64:` prefix).
    pub base64: Vec<bool>,
}

/// What a first line says the file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A dsexport / Workgroup Manager character-delimited file.
    DsExport,
    /// An LDIF file.
    Ldif,
}

/// Detects the format from the first line that is neither blank nor a `#` comment.
pub fn detect(first_line: &str) -> Option<Format> {
    let t = first_line.trim_start_matches('\u{feff}').trim();
    let lower = t.to_ascii_lowercase();
    if lower.starts_with("standarduserrecord") || lower.starts_with("standardgrouprecord") {
        return Some(Format::DsExport);
    }
    let mut tokens = t.split_whitespace();
    if tokens
        .by_ref()
        .take(4)
        .filter(|tok| parse_hex(tok).is_some())
        .count()
        == 4
    {
        return Some(Format::DsExport);
    }
    if lower.starts_with("dn:") || lower.starts_with("version:") {
        return Some(Format::Ldif);
    }
    None
}

fn parse_hex(tok: &str) -> Option<u8> {
    let h = tok.strip_prefix("0x").or_else(|| tok.strip_prefix("0X"))?;
    u8::from_str_radix(h, 16).ok()
}

fn record_kind(t: &str) -> Option<RecordType> {
    let name = t.rsplit(':').next().unwrap_or(t).to_ascii_lowercase();
    match name.as_str() {
        "users" | "user" => Some(RecordType::User),
        "groups" | "group" => Some(RecordType::Group),
        "places" | "locations" => Some(RecordType::Location),
        "resources" => Some(RecordType::Resource),
        _ => None,
    }
}

fn strip_attr_prefix(name: &str) -> (String, bool) {
    let mut n = name;
    let mut b64 = false;
    loop {
        let lower = n.to_ascii_lowercase();
        if lower.starts_with("base64:") {
            b64 = true;
            n = &n[7..];
        } else if lower.starts_with("externalbinary:") {
            n = &n[15..];
        } else if lower.starts_with("dsattrtypestandard:") {
            n = &n[19..];
        } else if lower.starts_with("dsattrtypenative:") {
            n = &n[17..];
        } else {
            return (n.to_string(), b64);
        }
    }
}

/// Parses a header line (`file:line` in errors).
pub fn parse_header(line: &str, at: &str) -> Result<Header> {
    let t = line.trim_start_matches('\u{feff}').trim();
    let lower = t.to_ascii_lowercase();
    let shorthand = |kind, names: &[&str]| Header {
        end_of_record: b'\n',
        escape: b'\\',
        field_sep: b':',
        value_sep: b',',
        kind: Some(kind),
        record_type: format!(
            "dsRecTypeStandard:{}",
            if kind == RecordType::User {
                "Users"
            } else {
                "Groups"
            }
        ),
        attributes: names.iter().map(|s| s.to_string()).collect(),
        base64: vec![false; names.len()],
    };
    if lower.starts_with("standarduserrecord") {
        return Ok(shorthand(
            RecordType::User,
            &[
                "RecordName",
                "Password",
                "UniqueID",
                "PrimaryGroupID",
                "RealName",
                "NFSHomeDirectory",
                "UserShell",
            ],
        ));
    }
    if lower.starts_with("standardgrouprecord") {
        return Ok(shorthand(
            RecordType::Group,
            &[
                "RecordName",
                "Password",
                "PrimaryGroupID",
                "GroupMembership",
            ],
        ));
    }
    let tokens: Vec<&str> = t.split_whitespace().collect();
    let bad = |msg: String| Error::usage(format!("{at}: {msg}"));
    if tokens.len() < 6 {
        return Err(bad(format!(
            "export header needs four separators, a record type and an attribute count, found `{t}`"
        )));
    }
    let mut seps = [0u8; 4];
    for (i, s) in seps.iter_mut().enumerate() {
        *s = parse_hex(tokens[i])
            .ok_or_else(|| bad(format!("`{}` is not a hex separator like 0x3A", tokens[i])))?;
    }
    let record_type = tokens[4].to_string();
    let count: usize = tokens[5]
        .parse()
        .map_err(|_| bad(format!("attribute count `{}` is not a number", tokens[5])))?;
    let names = &tokens[6..];
    if names.len() != count {
        return Err(bad(format!(
            "header says {count} attributes but names {}",
            names.len()
        )));
    }
    let (attributes, base64): (Vec<String>, Vec<bool>) =
        names.iter().map(|n| strip_attr_prefix(n)).unzip();
    Ok(Header {
        end_of_record: seps[0],
        escape: seps[1],
        field_sep: seps[2],
        value_sep: seps[3],
        kind: record_kind(&record_type),
        record_type,
        attributes,
        base64,
    })
}

/// Splits one record (already joined across escaped end-of-record characters) into fields of
/// values, unescaping `\<field sep>`, `\<value sep>`, `\<end of record>` and `\\`; other
/// backslashes are kept as they are.
pub fn split_record(rec: &[u8], h: &Header) -> Vec<Vec<Vec<u8>>> {
    let mut fields: Vec<Vec<Vec<u8>>> = vec![vec![Vec::new()]];
    let mut i = 0;
    while i < rec.len() {
        let c = rec[i];
        if c == h.escape {
            match rec.get(i + 1) {
                Some(&n)
                    if n == h.field_sep
                        || n == h.value_sep
                        || n == h.end_of_record
                        || n == h.escape =>
                {
                    fields.last_mut().unwrap().last_mut().unwrap().push(n);
                    i += 2;
                    continue;
                }
                _ => {
                    fields.last_mut().unwrap().last_mut().unwrap().push(c);
                    i += 1;
                    continue;
                }
            }
        }
        if c == h.field_sep {
            fields.push(vec![Vec::new()]);
        } else if c == h.value_sep {
            fields.last_mut().unwrap().push(Vec::new());
        } else {
            fields.last_mut().unwrap().last_mut().unwrap().push(c);
        }
        i += 1;
    }
    fields
}

/// Records and warnings read from one export.
#[derive(Debug, Default)]
pub struct Parsed {
    /// The records read, in file order.
    pub records: Vec<DirectoryRecord>,
    /// Warnings met while reading (Latin-1 lines, padded rows, ...).
    pub warnings: Vec<String>,
}

fn decode_text(bytes: &[u8], warn: &mut Option<String>, at: &str) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => {
            if warn.is_none() {
                *warn = Some(format!("{at}: bytes that are not UTF-8, read as Latin-1 (check the names on this line)"));
            }
            bytes.iter().map(|&b| b as char).collect()
        }
    }
}

/// Reads an export whose first content line (`header`, at line `header_line`) has been read;
/// `input` continues after it.
pub fn parse<R: BufRead>(
    mut input: R,
    name: &str,
    header: &str,
    header_line: usize,
) -> Result<Parsed> {
    let h = parse_header(header, &format!("{name}:{header_line}"))?;
    let mut out = Parsed::default();
    let Some(kind) = h.kind else {
        out.warnings.push(format!(
            "{name}:{header_line}: record type {} holds no calendar principals; file skipped",
            h.record_type
        ));
        return Ok(out);
    };
    let col = |n: &str| h.attributes.iter().position(|a| a.eq_ignore_ascii_case(n));
    let cols = Cols {
        record_name: col("RecordName"),
        real_name: col("RealName"),
        guid: col("GeneratedUID").or_else(|| col("apple-generateduid")),
        email: col("EMailAddress").or_else(|| col("mail")),
        membership: col("GroupMembership").or_else(|| col("memberUid")),
        members: col("GroupMembers").or_else(|| col("apple-group-memberguid")),
        nested: col("NestedGroups").or_else(|| col("apple-group-nestedgroup")),
    };
    let mut line = header_line;
    let mut no_guid: Vec<String> = Vec::new();
    loop {
        let start = line + 1;
        let Some(rec) = read_record(&mut input, &h, &mut line, name)? else {
            break;
        };
        if rec.iter().all(|c| c.is_ascii_whitespace()) || rec.first() == Some(&b'#') {
            continue;
        }
        let at = format!("{name}:{start}");
        let fields = split_record(&rec, &h);
        if fields.len() > h.attributes.len() {
            return Err(Error::usage(format!(
                "{at}: {} fields but the header names {} attributes (an unescaped `{}` in a value?)",
                fields.len(),
                h.attributes.len(),
                h.field_sep as char
            )));
        }
        let mut latin1 = None;
        match record(&fields, &h, &cols, kind, at, &mut latin1) {
            Ok(r) => {
                if let Some(w) = latin1 {
                    out.warnings.push(w);
                }
                out.records.push(r);
            }
            Err(skipped) => {
                no_guid.push(skipped);
                if let Some(w) = latin1 {
                    out.warnings.push(w);
                }
            }
        }
    }
    if !no_guid.is_empty() {
        let shown: Vec<&str> = no_guid.iter().take(5).map(String::as_str).collect();
        out.warnings.push(format!(
            "{name}: {} record(s) without a GeneratedUID skipped (stored events cannot name them by GUID; \
             their short names and e-mail addresses are matched against the new directory directly): {}{}",
            no_guid.len(),
            shown.join(", "),
            if no_guid.len() > 5 { ", ..." } else { "" }
        ));
    }
    Ok(out)
}

/// Reads one record: physical lines joined while the end-of-record char is escaped (`line`
/// counts them). `None` at the end of the input.
fn read_record<R: BufRead>(
    input: &mut R,
    h: &Header,
    line: &mut usize,
    name: &str,
) -> Result<Option<Vec<u8>>> {
    let mut rec: Vec<u8> = Vec::new();
    let mut got_any = false;
    loop {
        let mut buf = Vec::new();
        let n = input
            .read_until(h.end_of_record, &mut buf)
            .map_err(|e| Error::runtime(format!("cannot read {name}: {e}")))?;
        if n == 0 {
            break;
        }
        got_any = true;
        *line += 1;
        let ended = buf.last() == Some(&h.end_of_record);
        if ended {
            buf.pop();
            if h.end_of_record == b'\n' && buf.last() == Some(&b'\r') {
                buf.pop();
            }
        }
        let trailing = buf.iter().rev().take_while(|&&c| c == h.escape).count();
        rec.extend_from_slice(&buf);
        if ended && trailing % 2 == 1 {
            rec.push(h.end_of_record);
            continue;
        }
        break;
    }
    Ok(got_any.then_some(rec))
}

/// The values of column `c` of a record: base64 decoded where the header says so, trimmed,
/// empty ones and repeats left out (`latin1`: the warning for bytes that are not UTF-8).
fn column_values(
    fields: &[Vec<Vec<u8>>],
    h: &Header,
    c: Option<usize>,
    at: &str,
    latin1: &mut Option<String>,
) -> Vec<String> {
    let Some(c) = c else { return Vec::new() };
    let Some(f) = fields.get(c) else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for v in f {
        let bytes = if h.base64[c] {
            base64::engine::general_purpose::STANDARD
                .decode(v.trim_ascii())
                .unwrap_or_else(|_| v.clone())
        } else {
            v.clone()
        };
        let s = decode_text(&bytes, latin1, at).trim().to_string();
        if !s.is_empty() && !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// One record from its fields, or (`Err`) where it is and who, for a record without a
/// GeneratedUID.
fn record(
    fields: &[Vec<Vec<u8>>],
    h: &Header,
    cols: &Cols,
    kind: RecordType,
    at: String,
    latin1: &mut Option<String>,
) -> std::result::Result<DirectoryRecord, String> {
    let mut values = |c: Option<usize>| column_values(fields, h, c, &at, latin1);
    let short_names = values(cols.record_name);
    let guid_text = values(cols.guid);
    let guid = guid_text.iter().find_map(|g| Guid::parse(g));
    let Some(guid) = guid else {
        let who = short_names
            .first()
            .cloned()
            .unwrap_or_else(|| "(no name)".into());
        return Err(format!("{at} ({who})"));
    };
    let mut emails: Vec<String> = Vec::new();
    for e in values(cols.email) {
        let e = e.to_lowercase();
        if !emails.contains(&e) {
            emails.push(e);
        }
    }
    let mut member_guids: Vec<Guid> = values(cols.members)
        .iter()
        .filter_map(|g| Guid::parse(g))
        .collect();
    let mut member_names = Vec::new();
    // GroupMembership holds short names; CalendarServer's own dsimport dumps put GUIDs there.
    for m in values(cols.membership) {
        match Guid::parse(&m) {
            Some(g) => {
                if !member_guids.contains(&g) {
                    member_guids.push(g)
                }
            }
            None => member_names.push(m),
        }
    }
    let nested_guids = values(cols.nested)
        .iter()
        .filter_map(|g| Guid::parse(g))
        .collect();
    let full_name = values(cols.real_name).into_iter().next();
    Ok(DirectoryRecord {
        kind,
        guid,
        short_names,
        full_name,
        emails,
        member_guids,
        member_names,
        nested_guids,
        source: at,
    })
}

struct Cols {
    record_name: Option<usize>,
    real_name: Option<usize>,
    guid: Option<usize>,
    email: Option<usize>,
    membership: Option<usize>,
    members: Option<usize>,
    nested: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &[u8]) -> Result<Parsed> {
        let mut input = text;
        let mut first = Vec::new();
        input.read_until(b'\n', &mut first).unwrap();
        parse(input, "old.txt", std::str::from_utf8(&first).unwrap(), 1)
    }

    const G1: &str = "11111111-2222-3333-4444-555555555555";
    const G2: &str = "AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE";

    #[test]
    fn header_with_and_without_prefix() {
        let h = parse_header(
            "0x0A 0x5C 0x3A 0x2C dsRecTypeStandard:Users 3 dsAttrTypeStandard:RecordName GeneratedUID base64:dsAttrTypeNative:x",
            "f:1",
        )
        .unwrap();
        assert_eq!(h.kind, Some(RecordType::User));
        assert_eq!(h.attributes, vec!["RecordName", "GeneratedUID", "x"]);
        assert_eq!(h.base64, vec![false, false, true]);
        let e = parse_header(
            "0x0A 0x5C 0x3A 0x2C dsRecTypeStandard:Users 3 RecordName",
            "f:1",
        )
        .unwrap_err();
        assert!(e.message.starts_with("f:1: header says 3"), "{}", e.message);
        assert_eq!(
            detect("0x0A 0x5C 0x3A 0x2C DSRecTypeStandard:Groups 1 RecordName"),
            Some(Format::DsExport)
        );
        assert_eq!(detect("StandardUserRecord"), Some(Format::DsExport));
        assert_eq!(detect("dn: uid=a,dc=x"), Some(Format::Ldif));
        assert_eq!(detect("hello"), None);
    }

    #[test]
    fn escapes_multivalue_padding_comments() {
        let text = format!(
            "0x0A 0x5C 0x3A 0x2C dsRecTypeStandard:Users 5 dsAttrTypeStandard:RecordName dsAttrTypeStandard:RealName dsAttrTypeStandard:GeneratedUID dsAttrTypeStandard:EMailAddress dsAttrTypeStandard:Comment\n\
             # a comment\n\
             alice,al:Smith\\, Alice:{G1}:Alice@Example.com,a2@example.com:C\\:\\\\share\\x\n\
             bob:Bob \\\n\
             Two:{G2}\n\
             \n\
             carol:Carol\n"
        );
        let p = parse_text(text.as_bytes()).unwrap();
        assert_eq!(p.records.len(), 2);
        let a = &p.records[0];
        assert_eq!(a.short_names, vec!["alice", "al"]);
        assert_eq!(a.full_name.as_deref(), Some("Smith, Alice"));
        assert_eq!(a.emails, vec!["alice@example.com", "a2@example.com"]);
        assert_eq!(a.source, "old.txt:3");
        let b = &p.records[1];
        assert_eq!(b.full_name.as_deref(), Some("Bob \nTwo"));
        assert_eq!(b.source, "old.txt:4");
        // carol: short row, padded, but no GeneratedUID -> skipped with a warning naming the line
        assert_eq!(p.warnings.len(), 1);
        assert!(
            p.warnings[0].contains("old.txt:7 (carol)"),
            "{:?}",
            p.warnings
        );
        // the lone backslash in the comment field is kept (checked through split_record)
        let h = parse_header(
            "0x0A 0x5C 0x3A 0x2C dsRecTypeStandard:Users 1 Comment",
            "f:1",
        )
        .unwrap();
        assert_eq!(
            split_record(b"C\\:\\\\share\\x", &h),
            vec![vec![b"C:\\share\\x".to_vec()]]
        );
    }

    #[test]
    fn long_rows_rejected_with_line() {
        let text = format!("0x0A 0x5C 0x3A 0x2C dsRecTypeStandard:Users 2 RecordName GeneratedUID\nok:{G1}\nbad:{G2}:extra\n");
        let e = parse_text(text.as_bytes()).unwrap_err();
        assert!(
            e.message
                .starts_with("old.txt:3: 3 fields but the header names 2"),
            "{}",
            e.message
        );
    }

    #[test]
    fn groups_members_and_shorthand() {
        let text = format!(
            "0x0A 0x5C 0x3A 0x2C dsRecTypeStandard:Groups 5 RecordName GeneratedUID GroupMembership GroupMembers NestedGroups\nstaff:{G1}:alice,bob,{G2}:{G2}:{G1}\n"
        );
        let p = parse_text(text.as_bytes()).unwrap();
        let g = &p.records[0];
        assert_eq!(g.kind, RecordType::Group);
        assert_eq!(g.member_names, vec!["alice", "bob"]);
        assert_eq!(g.member_guids, vec![Guid::parse(G2).unwrap()]);
        assert_eq!(g.nested_guids, vec![Guid::parse(G1).unwrap()]);
        let p = parse_text(b"StandardUserRecord\nalice:pw:501:20:Alice:/Users/alice:/bin/bash\n")
            .unwrap();
        assert!(p.records.is_empty());
        assert!(p.warnings[0].contains("without a GeneratedUID"));
    }

    #[test]
    fn latin1_bytes_are_read_with_a_warning() {
        let mut text = "0x0A 0x5C 0x3A 0x2C dsRecTypeStandard:Places 3 RecordName RealName GeneratedUID\nroom:Salle ".as_bytes().to_vec();
        text.push(0xE9); // é in Latin-1
        text.extend_from_slice(format!(":{G1}\n").as_bytes());
        let p = parse_text(&text).unwrap();
        assert_eq!(p.records[0].kind, RecordType::Location);
        assert_eq!(p.records[0].full_name.as_deref(), Some("Salle é"));
        assert!(
            p.warnings[0].starts_with("old.txt:2:") && p.warnings[0].contains("Latin-1"),
            "{:?}",
            p.warnings
        );
    }

    #[test]
    fn other_record_types_are_skipped() {
        let p = parse_text(b"0x0A 0x5C 0x3A 0x2C dsRecTypeStandard:Computers 1 RecordName\nmac1\n")
            .unwrap();
        assert!(p.records.is_empty());
        assert!(p.warnings[0].contains("Computers"));
    }
}
